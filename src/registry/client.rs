//! A small client of the Confluent Schema Registry REST API: Millrace's own
//! registry, Confluent's, Karapace, Redpanda's, or any other that speaks
//! it. Used by `millrace schemas register/check`; generic enough for
//! pipelines that look schemas up.
//!
//! Blocking (reqwest's blocking client): call it from a plain thread, not
//! from inside an async task.

use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::records::{AVRO, Reference};

const ACCEPT: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Environment variable with the registry URL.
pub const ENV_URL: &str = "MILLRACE_REGISTRY_URL";
/// Environment variable with the basic-auth user.
pub const ENV_USER: &str = "MILLRACE_REGISTRY_USER";
/// Environment variable with the basic-auth password.
pub const ENV_PASSWORD: &str = "MILLRACE_REGISTRY_PASSWORD";

/// HTTP basic-auth credentials.
#[derive(Clone)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({}, ***)", self.user)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry URL `{url}`: {message}")]
    Url { url: String, message: String },
    /// The registry answered with an error body.
    #[error("{url}: HTTP {status}, error {code}: {message}")]
    Api {
        url: String,
        status: u16,
        code: i64,
        message: String,
    },
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// The Confluent `error_code` of an API error.
    pub fn code(&self) -> Option<i64> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
    #[serde(default)]
    pub references: Vec<Reference>,
}

/// A schema fetched by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SchemaText {
    pub schema: String,
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
    #[serde(default)]
    pub references: Vec<Reference>,
}

/// The answer to a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Compatibility {
    pub is_compatible: bool,
    #[serde(default)]
    pub messages: Vec<String>,
}

fn avro() -> String {
    AVRO.to_string()
}

/// A schema to send.
#[derive(Debug, Clone, Serialize)]
pub struct NewSchema<'a> {
    pub schema: &'a str,
    #[serde(rename = "schemaType")]
    pub schema_type: &'a str,
    #[serde(skip_serializing_if = "no_references")]
    pub references: &'a [Reference],
}

fn no_references(references: &&[Reference]) -> bool {
    references.is_empty()
}

impl<'a> NewSchema<'a> {
    /// An Avro schema without references.
    pub fn avro(schema: &'a str) -> NewSchema<'a> {
        NewSchema {
            schema,
            schema_type: AVRO,
            references: &[],
        }
    }
}

/// A registry client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: Url,
    auth: Option<BasicAuth>,
    http: Client,
}

impl RegistryClient {
    /// A client of the registry at `url`. Credentials come from `auth`, or
    /// else from the URL's user info (`http://user:password@host:8081`).
    pub fn new(url: &str, auth: Option<BasicAuth>) -> Result<RegistryClient, ClientError> {
        let bad = |message: String| ClientError::Url {
            url: url.to_string(),
            message,
        };
        let mut base = Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("use an http:// or https:// URL".into()));
        }
        let from_url = (!base.username().is_empty()).then(|| BasicAuth {
            user: decode(base.username()),
            password: base.password().map(decode).unwrap_or_default(),
        });
        // Credentials travel in a header, never in logged URLs.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            base,
            auth: auth.or(from_url),
            http,
        })
    }

    /// The same client with another bound on each request (30 s by
    /// default). Pipelines look schemas up while a transaction is open and
    /// must give up well before it times out.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<RegistryClient, ClientError> {
        self.http = Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Url {
                url: self.base.to_string(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(self)
    }

    /// The registry's base URL (without credentials).
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn url_of(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
        url: &Url,
    ) -> Result<T, ClientError> {
        let mut request = request.header(reqwest::header::ACCEPT, ACCEPT);
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.user, Some(&auth.password));
        }
        let shown = url.to_string();
        let response = request.send().map_err(|source| ClientError::Transport {
            url: shown.clone(),
            source,
        })?;
        let status = response.status();
        let text = response.text().map_err(|source| ClientError::Transport {
            url: shown.clone(),
            source,
        })?;
        if !status.is_success() {
            let body: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
            return Err(ClientError::Api {
                url: shown,
                status: status.as_u16(),
                code: body
                    .get("error_code")
                    .and_then(Json::as_i64)
                    .unwrap_or(i64::from(status.as_u16())),
                message: body
                    .get("message")
                    .and_then(Json::as_str)
                    .map_or_else(|| text.trim().to_string(), str::to_string),
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            url: shown,
            message: format!("{e}: {}", text.chars().take(200).collect::<String>()),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let mut url = self.url_of(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(self.http.get(url.clone()), &url)
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let mut url = self.url_of(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(bytes);
        self.send(request, &url)
    }

    /// Registers a schema under a subject (checked by the registry against
    /// the subject's compatibility level) and returns its id. Registering a
    /// schema the subject has already returns the existing id.
    pub fn register(&self, subject: &str, schema: &NewSchema<'_>) -> Result<u32, ClientError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let answer: Id = self.post(&["subjects", subject, "versions"], &[], schema)?;
        Ok(answer.id)
    }

    /// The version of `subject` holding this schema, or `None` when the
    /// subject or the schema is unknown.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &NewSchema<'_>,
    ) -> Result<Option<RegisteredSchema>, ClientError> {
        match self.post(&["subjects", subject], &[], schema) {
            Ok(found) => Ok(Some(found)),
            Err(e) if matches!(e.code(), Some(40401 | 40403)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema with this id.
    pub fn schema_by_id(&self, id: u32) -> Result<SchemaText, ClientError> {
        self.get(&["schemas", "ids", &id.to_string()], &[])
    }

    /// A version of a subject (`"latest"` or a number).
    pub fn version(&self, subject: &str, version: &str) -> Result<RegisteredSchema, ClientError> {
        self.get(&["subjects", subject, "versions", version], &[])
    }

    /// The live versions of a subject; empty when the subject is unknown.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, ClientError> {
        match self.get(&["subjects", subject, "versions"], &[]) {
            Ok(v) => Ok(v),
            Err(e) if e.code() == Some(40401) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The compatibility level that applies to a subject (its own, else
    /// the global one), as the registry names it (`BACKWARD`, ...).
    pub fn compatibility_level(&self, subject: &str) -> Result<String, ClientError> {
        #[derive(Deserialize)]
        struct Level {
            #[serde(rename = "compatibilityLevel")]
            level: String,
        }
        match self.get::<Level>(&["config", subject], &[("defaultToGlobal", "true")]) {
            Ok(l) => Ok(l.level),
            // Registries that ignore defaultToGlobal answer 40408 (or 40401).
            Err(e) if matches!(e.code(), Some(40408 | 40401)) => {
                Ok(self.get::<Level>(&["config"], &[])?.level)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks a schema against one version of a subject (`"latest"` or a
    /// number) under the subject's level, asking for the reasons.
    pub fn check_compatibility(
        &self,
        subject: &str,
        version: &str,
        schema: &NewSchema<'_>,
    ) -> Result<Compatibility, ClientError> {
        self.post(
            &["compatibility", "subjects", subject, "versions", version],
            &[("verbose", "true")],
            schema,
        )
    }

    /// The subjects with live versions.
    pub fn subjects(&self) -> Result<Vec<String>, ClientError> {
        self.get(&["subjects"], &[])
    }

    /// Sets a subject's compatibility level.
    pub fn set_compatibility_level(&self, subject: &str, level: &str) -> Result<(), ClientError> {
        let url = self.url_of(&["config", subject]);
        let request = self
            .http
            .put(url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "compatibility": level }).to_string());
        self.send::<Json>(request, &url).map(|_| ())
    }
}

/// Percent-decodes URL user info.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_basic_auth() {
        let c = RegistryClient::new("http://al%40ice:s%3Acret@registry:8081/base", None)
            .expect("valid");
        assert_eq!(c.url(), "http://registry:8081/base/");
        let auth = c.auth.expect("credentials");
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("al@ice", "s:cret")
        );
        // Explicit credentials win.
        let c = RegistryClient::new(
            "http://u:p@registry:8081",
            Some(BasicAuth {
                user: "x".into(),
                password: "y".into(),
            }),
        )
        .expect("valid");
        assert_eq!(c.auth.expect("credentials").user, "x");
    }

    #[test]
    fn subjects_are_path_encoded() {
        let c = RegistryClient::new("http://registry:8081", None).expect("valid");
        let url = c.url_of(&["subjects", "a/b c", "versions"]);
        assert_eq!(
            url.as_str(),
            "http://registry:8081/subjects/a%2Fb%20c/versions"
        );
    }

    /// Answers one HTTP request with `status` and `body`; returns the URL
    /// and the request as received (head and body).
    fn answer_once(
        status: &'static str,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("a header line");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().expect("a length");
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut request_body = vec![0; length];
            reader.read_exact(&mut request_body).expect("the body");
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("the answer");
            head + &String::from_utf8_lossy(&request_body)
        });
        (url, handle)
    }

    #[test]
    fn sends_basic_auth_and_confluent_headers_and_reads_error_bodies() {
        let (url, request) = answer_once(
            "409 Conflict",
            r#"{"error_code":409,"message":"Schema being registered is incompatible"}"#,
        );
        let client = RegistryClient::new(
            &url,
            Some(BasicAuth {
                user: "ci".into(),
                password: "s3cret".into(),
            }),
        )
        .expect("valid");
        let err = client
            .register("a/b", &NewSchema::avro(r#""int""#))
            .expect_err("409");
        assert_eq!(err.code(), Some(409));
        assert!(err.to_string().contains("incompatible"), "{err}");
        let request = request.join().expect("the server thread");
        let lower = request.to_ascii_lowercase();
        assert!(
            request.starts_with("POST /subjects/a%2Fb/versions HTTP/1.1"),
            "{request}"
        );
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
        assert!(
            lower.contains(&format!(
                "authorization: basic {}",
                token.to_ascii_lowercase()
            )),
            "{request}"
        );
        assert!(
            lower.contains("content-type: application/vnd.schemaregistry.v1+json"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"schema":"\"int\"","schemaType":"AVRO"}"#),
            "{request}"
        );
    }

    #[test]
    fn a_lookup_of_an_unknown_schema_is_none() {
        let (url, request) = answer_once(
            "404 Not Found",
            r#"{"error_code":40403,"message":"Schema not found"}"#,
        );
        let client = RegistryClient::new(&url, None).expect("valid");
        assert_eq!(
            client
                .lookup("s", &NewSchema::avro(r#""int""#))
                .expect("answered"),
            None
        );
        let request = request.join().expect("the server thread");
        assert!(
            request.starts_with("POST /subjects/s HTTP/1.1"),
            "{request}"
        );
        assert!(
            !request.to_ascii_lowercase().contains("authorization:"),
            "{request}"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(RegistryClient::new("registry:8081", None).is_err());
        assert!(RegistryClient::new("ftp://registry", None).is_err());
    }
}

//! A small blocking client of the Confluent Schema Registry REST API: the
//! three calls a pipeline needs (a schema by id, register, look up).
//!
//! Blocking is deliberate: the processing loop runs on its own OS thread
//! and a record cannot move on before its writer schema is known anyway.
//! The client is created lazily (see [`super::cache`]) because reqwest's
//! blocking client must not be created inside an async runtime.

use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The registry's media type; plain JSON is accepted too.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/json;q=0.9";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Registry error code: the subject does not exist.
pub const SUBJECT_NOT_FOUND: i64 = 40401;
/// Registry error code: the schema (id or content) does not exist.
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// A failed registry call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No HTTP answer (refused, reset, timed out, TLS).
    #[error("cannot reach the schema registry at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// An HTTP error answer, with the registry's error code when it sent one.
    #[error("the schema registry answered HTTP {status}{}: {message}", code_suffix(*.error_code))]
    Status {
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    /// A success answer that is not what the API documents.
    #[error("unexpected answer from the schema registry: {0}")]
    Invalid(String),
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(" (error code {c})"))
        .unwrap_or_default()
}

impl RegistryError {
    /// Whether asking again later may succeed: no answer, a server error,
    /// or throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RegistryError::Invalid(_) => false,
        }
    }

    /// Whether the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }
}

/// A schema as the registry returns it by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    /// The schema text.
    pub schema: String,
    /// `AVRO` (absent in answers means Avro), `PROTOBUF` or `JSON`.
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
    /// References to schemas under other subjects.
    #[serde(default)]
    pub references: Vec<serde_json::Value>,
}

fn avro() -> String {
    "AVRO".to_string()
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<i64>,
    message: Option<String>,
}

/// A registry at one base URL, with optional basic authentication.
pub struct RegistryClient {
    base: Url,
    credentials: Option<(String, Option<String>)>,
    http: Client,
}

impl RegistryClient {
    /// A client for the registry at `url` (`http://host:8081`, possibly with
    /// a path prefix).
    pub fn new(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<RegistryClient, RegistryError> {
        let base = parse_url(url).map_err(RegistryError::Invalid)?;
        let http = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| RegistryError::Unreachable {
                url: url.to_string(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(RegistryClient {
            base,
            credentials: username.map(|u| (u.to_string(), password.map(str::to_string))),
            http,
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /schemas/ids/{id}`.
    pub fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        let url = self.endpoint(&["schemas", "ids", &id.to_string()]);
        self.call(self.http.get(url))
    }

    /// `POST /subjects/{subject}/versions`: registers `schema` (Avro text)
    /// under `subject`, or finds it there, and returns its global id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = self.endpoint(&["subjects", subject, "versions"]);
        let body = serde_json::json!({ "schema": schema });
        self.call::<IdAnswer>(
            self.http
                .post(url)
                .json(&body)
                .header("content-type", MEDIA_TYPE),
        )
        .map(|a| a.id)
    }

    /// `POST /subjects/{subject}`: the id of `schema` if it is registered
    /// under `subject` (a 404 error otherwise).
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = self.endpoint(&["subjects", subject]);
        let body = serde_json::json!({ "schema": schema });
        self.call::<IdAnswer>(
            self.http
                .post(url)
                .json(&body)
                .header("content-type", MEDIA_TYPE),
        )
        .map(|a| a.id)
    }

    /// The base URL with `segments` appended, each percent-encoded (subject
    /// names may hold any character).
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, RegistryError> {
        let request = match &self.credentials {
            Some((user, password)) => request.basic_auth(user, password.as_deref()),
            None => request,
        };
        let response =
            request
                .header("accept", ACCEPT)
                .send()
                .map_err(|e| RegistryError::Unreachable {
                    url: self.base.to_string(),
                    message: error_chain(&e),
                })?;
        read_answer(response, &self.base)
    }
}

fn read_answer<T: DeserializeOwned>(response: Response, base: &Url) -> Result<T, RegistryError> {
    let status = response.status();
    let body = response.text().map_err(|e| RegistryError::Unreachable {
        url: base.to_string(),
        message: format!("reading the answer: {}", error_chain(&e)),
    })?;
    if status.is_success() {
        return serde_json::from_str(&body)
            .map_err(|e| RegistryError::Invalid(format!("{e} in {}", excerpt(&body))));
    }
    let (error_code, message) = match serde_json::from_str::<ErrorAnswer>(&body) {
        Ok(answer) => (
            answer.error_code,
            answer.message.unwrap_or_else(|| excerpt(&body)),
        ),
        Err(_) => (None, excerpt(&body)),
    };
    Err(RegistryError::Status {
        status: status.as_u16(),
        error_code,
        message,
    })
}

/// Checks a registry URL: absolute, `http` or `https`.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| format!("`{url}` is not a URL such as http://127.0.0.1:8081: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL with a host"
        ));
    }
    Ok(parsed)
}

/// reqwest's errors say little at the top level ("error sending request");
/// the cause (connection refused, timed out) is in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn excerpt(body: &str) -> String {
    let trimmed = body.trim();
    if trimmed.chars().count() > 200 {
        format!("{}...", trimmed.chars().take(200).collect::<String>())
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_a_path_prefix_and_encode_subjects() {
        let c = RegistryClient::new("http://reg:8081/api/", None, None).unwrap();
        assert_eq!(
            c.endpoint(&["subjects", "a b/c-value", "versions"])
                .as_str(),
            "http://reg:8081/api/subjects/a%20b%2Fc-value/versions"
        );
        let c = RegistryClient::new("https://reg", None, None).unwrap();
        assert_eq!(
            c.endpoint(&["schemas", "ids", "7"]).as_str(),
            "https://reg/schemas/ids/7"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("http://127.0.0.1:8081").is_ok());
        assert!(parse_url("127.0.0.1:8081").is_err());
        assert!(parse_url("ftp://host").is_err());
        assert!(parse_url("").is_err());
    }

    #[test]
    fn transient_errors_are_told_apart() {
        let status = |status| RegistryError::Status {
            status,
            error_code: None,
            message: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(status(404).is_not_found());
        assert!(!status(409).is_transient());
        let shown = RegistryError::Status {
            status: 404,
            error_code: Some(SCHEMA_NOT_FOUND),
            message: "Schema not found".into(),
        }
        .to_string();
        assert_eq!(
            shown,
            "the schema registry answered HTTP 404 (error code 40403): Schema not found"
        );
    }

    #[test]
    fn an_unreachable_registry_is_transient() {
        // Port 9 (discard) on loopback: nothing listens there in CI.
        let c = RegistryClient::new("http://127.0.0.1:9", None, None).unwrap();
        let e = c.schema_by_id(1).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
    }
}

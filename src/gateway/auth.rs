//! Who a client is and which topics it may read.
//!
//! Clients present a JWT as `Authorization: Bearer <token>`, or — for
//! browsers' `EventSource`, which cannot set headers — in a cookie
//! (`auth.cookie`, default `millrace_token`) or a query parameter
//! (`auth.query_param`, default `access_token`). Tokens are HS256 (shared
//! secret) or RS256 (public keys from a PEM file). The claims:
//!
//! ```json
//! {"sub": "ward-3-dashboard", "exp": 1793491200,
//!  "topics": ["vitals-clean", "alerts"], "key_prefixes": ["ward-3/"]}
//! ```
//!
//! - `exp` is required; `nbf`, `iss` and `aud` are checked when configured
//!   or present.
//! - `topics`: the topics the bearer may read; `"*"` means every bridged
//!   topic. Required.
//! - `key_prefixes` (optional): the bearer sees only records whose key
//!   starts with one of these, on every topic.
//!
//! No or a bad token is 401; a topic outside `topics` is 403. In `open` mode
//! every request may read everything.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::config::{AuthConfig, AuthMode};

/// What a verified client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Identity used for the per-token subscriber limit: the `sub` claim,
    /// else a hash of the token; the client address in open mode.
    pub subject: String,
    /// `None`: every topic.
    topics: Option<Vec<String>>,
    /// `None`: every key.
    pub key_prefixes: Option<Vec<Vec<u8>>>,
}

impl Principal {
    /// Whether the topic is within the token's claims.
    pub fn may_read(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|topics| topics.iter().any(|t| t == topic))
    }
}

/// Why a request is not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send `Authorization: Bearer <token>`, the `{cookie}` cookie or the \
         `{query}` query parameter"
    )]
    Missing { cookie: String, query: String },
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens.
pub struct Authenticator {
    mode: AuthMode,
    hs256: Option<DecodingKey>,
    rs256: Vec<DecodingKey>,
    validation_hs: Validation,
    validation_rs: Validation,
    cookie: String,
    query_param: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    topics: Vec<String>,
    #[serde(default)]
    key_prefixes: Option<Vec<String>>,
}

impl Authenticator {
    /// Builds from the config, reading the RS256 key file.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        let hs256 = config
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut rs256 = Vec::new();
        if let Some(path) = &config.rs256_public_keys {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "auth.rs256_public_keys: cannot read {}: {e}",
                    path.display()
                )
            })?;
            for (i, block) in pem_blocks(&text).into_iter().enumerate() {
                let key = DecodingKey::from_rsa_pem(block.as_bytes()).map_err(|e| {
                    format!(
                        "auth.rs256_public_keys: key {} in {} is not an RSA public key: {e}",
                        i + 1,
                        path.display()
                    )
                })?;
                rs256.push(key);
            }
            if rs256.is_empty() {
                return Err(format!(
                    "auth.rs256_public_keys: {} holds no PEM key",
                    path.display()
                ));
            }
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            match &config.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
            }
            v
        };
        Ok(Authenticator {
            mode: config.mode,
            hs256,
            rs256,
            validation_hs: validation(Algorithm::HS256),
            validation_rs: validation(Algorithm::RS256),
            cookie: config.cookie.clone(),
            query_param: config.query_param.clone(),
        })
    }

    /// Whether requests need no token.
    pub fn is_open(&self) -> bool {
        self.mode == AuthMode::Open
    }

    /// Authenticates a request from its headers and query parameters.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        if self.mode == AuthMode::Open {
            return Ok(Principal {
                subject: format!("addr:{client}"),
                topics: None,
                key_prefixes: None,
            });
        }
        let token = self
            .find_token(headers, query)
            .ok_or_else(|| AuthError::Missing {
                cookie: self.cookie.clone(),
                query: self.query_param.clone(),
            })?;
        self.verify(&token)
    }

    fn find_token(&self, headers: &HeaderMap, query: &[(String, String)]) -> Option<String> {
        if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let value = value.trim();
            if let Some(token) = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
            {
                return Some(token.trim().to_string());
            }
        }
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=')
                    && name == self.cookie
                {
                    return Some(value.trim_matches('"').to_string());
                }
            }
        }
        query
            .iter()
            .find(|(name, _)| *name == self.query_param)
            .map(|(_, v)| v.clone())
    }

    /// Verifies a token and reads its claims.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let result = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => decode::<Claims>(token, key, &self.validation_hs),
                None => return Err(AuthError::Invalid("HS256 tokens are not accepted".into())),
            },
            Algorithm::RS256 => {
                if self.rs256.is_empty() {
                    return Err(AuthError::Invalid("RS256 tokens are not accepted".into()));
                }
                let mut last = None;
                let mut found = None;
                for key in &self.rs256 {
                    match decode::<Claims>(token, key, &self.validation_rs) {
                        Ok(data) => {
                            found = Some(Ok(data));
                            break;
                        }
                        // Another key may verify it; any other failure
                        // (expiry, claims) is the token's, whatever the key.
                        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                        Err(e) => {
                            found = Some(Err(e));
                            break;
                        }
                    }
                }
                match (found, last) {
                    (Some(result), _) => result,
                    (None, Some(e)) => Err(e),
                    (None, None) => {
                        return Err(AuthError::Invalid("no key verifies the token".into()));
                    }
                }
            }
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted (HS256 or RS256)"
                )));
            }
        };
        let claims = match result {
            Ok(data) => data.claims,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::Json(_) => AuthError::Invalid(
                        "the claims must include `topics` (a list of topic names or \"*\")".into(),
                    ),
                    _ => AuthError::Invalid(e.to_string()),
                });
            }
        };
        let subject = claims.sub.unwrap_or_else(|| {
            let mut h = DefaultHasher::new();
            token.hash(&mut h);
            format!("token:{:016x}", h.finish())
        });
        let topics = (!claims.topics.iter().any(|t| t == "*")).then_some(claims.topics);
        Ok(Principal {
            subject,
            topics,
            key_prefixes: claims
                .key_prefixes
                .map(|p| p.into_iter().map(String::into_bytes).collect()),
        })
    }
}

/// Splits a PEM file into its `-----BEGIN ...-----` blocks.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some(block) = current.take()
        {
            blocks.push(block);
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some(SECRET.into()),
            rs256_public_keys: None,
            issuer: None,
            audience: None,
            cookie: "millrace_token".into(),
            query_param: "access_token".into(),
            leeway: Duration::from_secs(0),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_good_token_grants_its_topics_and_prefixes() {
        let auth = Authenticator::new(&config()).unwrap();
        let t = token(
            json!({"sub": "dash", "exp": now() + 60, "topics": ["a"], "key_prefixes": ["w3/"]}),
            SECRET,
        );
        let bearer = format!("Bearer {t}");
        let p = auth
            .authenticate(&headers(&[("authorization", &bearer)]), &[], CLIENT)
            .unwrap();
        assert_eq!(p.subject, "dash");
        assert!(p.may_read("a"));
        assert!(!p.may_read("b"));
        assert_eq!(p.key_prefixes, Some(vec![b"w3/".to_vec()]));
        // The same token from a cookie or the query string.
        let cookie = format!("theme=dark; millrace_token={t}");
        assert!(
            auth.authenticate(&headers(&[("cookie", &cookie)]), &[], CLIENT)
                .is_ok()
        );
        let query = vec![("access_token".to_string(), t.clone())];
        assert!(auth.authenticate(&HeaderMap::new(), &query, CLIENT).is_ok());
    }

    #[test]
    fn missing_expired_forged_and_claimless_tokens_are_refused() {
        let auth = Authenticator::new(&config()).unwrap();
        assert!(matches!(
            auth.authenticate(&HeaderMap::new(), &[], CLIENT),
            Err(AuthError::Missing { .. })
        ));
        let expired = token(json!({"exp": now() - 120, "topics": ["a"]}), SECRET);
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let forged = token(
            json!({"exp": now() + 60, "topics": ["a"]}),
            "another-secret-of-sufficient-length-xxxxxxxx",
        );
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
        let no_topics = token(json!({"exp": now() + 60}), SECRET);
        let err = auth.verify(&no_topics).unwrap_err();
        assert!(err.to_string().contains("topics"), "{err}");
        assert!(matches!(
            auth.verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
        let star = token(json!({"exp": now() + 60, "topics": ["*"]}), SECRET);
        let p = auth.verify(&star).unwrap();
        assert!(p.may_read("anything"));
        assert!(p.subject.starts_with("token:"));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut c = config();
        c.issuer = Some("millrace".into());
        c.audience = Some("gateway".into());
        let auth = Authenticator::new(&c).unwrap();
        let good = token(
            json!({"exp": now() + 60, "topics": ["a"], "iss": "millrace", "aud": "gateway"}),
            SECRET,
        );
        assert!(auth.verify(&good).is_ok());
        let bad = token(
            json!({"exp": now() + 60, "topics": ["a"], "iss": "other", "aud": "gateway"}),
            SECRET,
        );
        assert!(auth.verify(&bad).is_err());
    }

    #[test]
    fn open_mode_lets_everyone_read() {
        let mut c = config();
        c.mode = AuthMode::Open;
        c.hs256_secret = None;
        let auth = Authenticator::new(&c).unwrap();
        let p = auth.authenticate(&HeaderMap::new(), &[], CLIENT).unwrap();
        assert!(p.may_read("x"));
        assert_eq!(p.subject, "addr:127.0.0.1");
    }

    #[test]
    fn pem_files_hold_several_keys() {
        let text = "junk\n-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n\
                    -----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----\n";
        let blocks = pem_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains("BBB"));
    }
}

//! Writer schemas by id, fetched from the registry once and kept, and the
//! registration of sink schemas.
//!
//! Registered schemas never change, so a schema fetched for an id is kept
//! for the life of the process. When the registry cannot be reached the
//! cache backs off exponentially (0.5 s doubling to 30 s): lookups of ids
//! it has not seen fail fast with [`LookupError::Unavailable`] until the
//! next attempt is due, so the pipeline holds those records back instead
//! of dead-lettering them, while records whose schemas are cached flow on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::codec::{LookupError, WriterSchemas};
use super::schema::ParsedSchema;
use crate::config::RegistryConfig;
use crate::registry::client::{BasicAuth, ClientError, NewSchema, RegistryClient, SchemaText};

/// Wait after the first failed attempt; doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bound on one registry request. Lookups happen while a transaction is
/// open; waiting longer than its timeout (10 s by default) would get it
/// aborted by the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an id the registry did not know stays known as unknown: a flood
/// of records with a bogus id then costs one request, not one each. Short,
/// because a schema registered a moment later must become usable.
const UNKNOWN_TTL: Duration = Duration::from_secs(30);
/// Bound on remembered unknown ids (random bytes make random ids).
const MAX_UNKNOWN: usize = 10_000;

/// Schemas by id, and the registry they come from.
pub struct SchemaCache {
    registry: Option<Registry>,
    /// Ids the registry answered for: a usable schema, or why it is not one
    /// (both are permanent: ids are never reused).
    by_id: HashMap<u32, Result<Arc<ParsedSchema>, String>>,
    /// Ids the registry said it does not have, and when.
    unknown: HashMap<u32, (Instant, String)>,
    backoff: Backoff,
}

/// The registry's settings and, once needed, its client.
struct Registry {
    config: RegistryConfig,
    client: Option<RegistryClient>,
}

impl Registry {
    fn client(&mut self) -> Result<&RegistryClient, ClientError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => {
                let c = &self.config;
                let auth = c.username.as_ref().map(|user| BasicAuth {
                    user: user.clone(),
                    password: c.password.clone().unwrap_or_default(),
                });
                RegistryClient::new(&c.url, auth)?.with_timeout(REQUEST_TIMEOUT)?
            }
        };
        Ok(self.client.insert(client))
    }
}

/// Whether asking again later may succeed: no answer, a server error, or
/// throttling.
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        ClientError::Url { .. } | ClientError::Decode { .. } => false,
    }
}

/// Whether the registry said the thing asked for does not exist.
fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, .. })
}

/// Why a sink's schema could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// The registry could not be reached; try again after `retry_in`.
    Unavailable { message: String, retry_in: Duration },
    /// The registry refused (incompatible, invalid, not registered with
    /// `auto_register: false`, no permission): retrying will not help.
    Refused(String),
}

impl SchemaCache {
    /// A cache over the registry `config` describes; without one, every id
    /// not inserted by hand is unknown.
    pub fn new(config: Option<&RegistryConfig>) -> SchemaCache {
        SchemaCache {
            registry: config.map(|c| Registry {
                config: c.clone(),
                client: None,
            }),
            by_id: HashMap::new(),
            unknown: HashMap::new(),
            backoff: Backoff::default(),
        }
    }

    /// Makes `schema` the writer schema of `id` (a sink's own schema after
    /// registration, or a test's).
    pub fn insert(&mut self, id: u32, schema: Arc<ParsedSchema>) {
        self.unknown.remove(&id);
        self.by_id.insert(id, Ok(schema));
    }

    /// Registers `schema` under `subject` (or, without `auto_register`,
    /// looks it up there) and returns its id; the schema is then cached as
    /// that id's writer schema.
    pub fn register(
        &mut self,
        subject: &str,
        schema: &Arc<ParsedSchema>,
        auto_register: bool,
    ) -> Result<u32, RegisterError> {
        let Some(registry) = self.registry.as_mut() else {
            return Err(RegisterError::Refused(
                "no schema registry is configured (registry.url)".into(),
            ));
        };
        let text = NewSchema::avro(schema.text());
        let answer = registry.client().and_then(|client| {
            if auto_register {
                client.register(subject, &text).map(Some)
            } else {
                client
                    .lookup(subject, &text)
                    .map(|found| found.map(|v| v.id))
            }
        });
        match answer {
            Ok(Some(id)) => {
                self.backoff.succeeded();
                self.insert(id, schema.clone());
                Ok(id)
            }
            Ok(None) => {
                self.backoff.succeeded();
                Err(RegisterError::Refused(format!(
                    "the schema is not registered under subject `{subject}`, and \
                     auto_register is false"
                )))
            }
            Err(e) if is_transient(&e) => Err(RegisterError::Unavailable {
                retry_in: self.backoff.failed(&e),
                message: e.to_string(),
            }),
            Err(e) => Err(RegisterError::Refused(format!("subject `{subject}`: {e}"))),
        }
    }

    fn fetch(&mut self, id: u32) -> Result<Arc<ParsedSchema>, LookupError> {
        let Some(registry) = self.registry.as_mut() else {
            return Err(LookupError::Unknown(format!(
                "unknown schema id {id} (no schema registry is configured)"
            )));
        };
        let answer = registry.client().and_then(|c| c.schema_by_id(id));
        match answer {
            Ok(registered) => {
                self.backoff.succeeded();
                let usable = usable_schema(id, &registered);
                self.by_id.insert(id, usable.clone());
                usable.map_err(LookupError::Unknown)
            }
            Err(e) if is_not_found(&e) => {
                self.backoff.succeeded();
                let message = format!("unknown schema id {id}: {e}");
                if self.unknown.len() >= MAX_UNKNOWN {
                    self.unknown.clear();
                }
                self.unknown.insert(id, (Instant::now(), message.clone()));
                Err(LookupError::Unknown(message))
            }
            // Any other answer (an outage, bad credentials, a proxy's error
            // page) says nothing about the record: it waits.
            Err(e) => Err(LookupError::Unavailable {
                retry_in: self.backoff.failed(&e),
                message: e.to_string(),
            }),
        }
    }
}

impl WriterSchemas for SchemaCache {
    fn writer_schema(&mut self, id: u32) -> Result<Arc<ParsedSchema>, LookupError> {
        if let Some(known) = self.by_id.get(&id) {
            return known.clone().map_err(LookupError::Unknown);
        }
        if let Some((since, message)) = self.unknown.get(&id) {
            if since.elapsed() < UNKNOWN_TTL {
                return Err(LookupError::Unknown(message.clone()));
            }
            self.unknown.remove(&id);
        }
        if let Some(retry_in) = self.backoff.wait() {
            return Err(LookupError::Unavailable {
                message: "the schema registry is unavailable".into(),
                retry_in,
            });
        }
        self.fetch(id)
    }
}

/// Parses a registry answer, refusing what this decoder cannot use.
fn usable_schema(id: u32, registered: &SchemaText) -> Result<Arc<ParsedSchema>, String> {
    if !registered.schema_type.eq_ignore_ascii_case("AVRO") {
        return Err(format!(
            "schema id {id} is a {} schema; format avro reads Avro",
            registered.schema_type
        ));
    }
    if !registered.references.is_empty() {
        return Err(format!(
            "schema id {id} uses schema references, which Millrace does not resolve yet"
        ));
    }
    ParsedSchema::parse(&registered.schema)
        .map(Arc::new)
        .map_err(|e| format!("schema id {id}: {e}"))
}

/// Exponential backoff between registry attempts after failures.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_attempt: Option<Instant>,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: FIRST_BACKOFF,
            next_attempt: None,
            failures: 0,
        }
    }
}

impl Backoff {
    /// Time left before the next attempt is due; `None` when it is.
    fn wait(&self) -> Option<Duration> {
        let left = self.next_attempt?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Records a failure; returns the wait before the next attempt.
    fn failed(&mut self, error: &ClientError) -> Duration {
        let wait = self.delay;
        self.failures += 1;
        self.next_attempt = Some(Instant::now() + wait);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        warn!(
            error = %error,
            failures = self.failures,
            retry_in = ?wait,
            "schema registry unavailable; records that need a schema not seen yet wait"
        );
        wait
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            info!(failures = self.failures, "schema registry reachable again");
        }
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> SchemaCache {
        SchemaCache::new(Some(&RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            username: None,
            password: None,
        }))
    }

    #[test]
    fn offline_ids_are_unknown_unless_inserted() {
        let mut cache = SchemaCache::new(None);
        assert!(matches!(
            cache.writer_schema(3),
            Err(LookupError::Unknown(m)) if m.contains("3")
        ));
        let schema = Arc::new(ParsedSchema::parse(r#""long""#).unwrap());
        cache.insert(3, schema.clone());
        assert!(Arc::ptr_eq(&cache.writer_schema(3).unwrap(), &schema));
    }

    #[test]
    fn an_outage_backs_off_and_fails_fast() {
        let mut cache = unreachable();
        let first = cache.writer_schema(1).unwrap_err();
        let LookupError::Unavailable { retry_in, .. } = first else {
            panic!("{first:?}");
        };
        assert_eq!(retry_in, FIRST_BACKOFF);
        // Within the backoff no request is made, for any id: a request
        // would have failed again and counted a second failure.
        assert!(matches!(
            cache.writer_schema(2),
            Err(LookupError::Unavailable { .. })
        ));
        assert_eq!(cache.backoff.failures, 1);
        // Cached ids keep working during the outage.
        cache.insert(5, Arc::new(ParsedSchema::parse(r#""int""#).unwrap()));
        assert!(cache.writer_schema(5).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        let mut b = Backoff::default();
        let e = ClientError::Decode {
            url: "http://registry".into(),
            message: "x".into(),
        };
        let waits: Vec<Duration> = (0..9).map(|_| b.failed(&e)).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert_eq!(waits[8], MAX_BACKOFF);
        assert!(b.wait().is_some());
        b.succeeded();
        assert_eq!(b.wait(), None);
        assert_eq!(b.delay, FIRST_BACKOFF);
    }

    #[test]
    fn unusable_registry_answers_are_explained() {
        let answer = |schema_type: &str, references: serde_json::Value| -> SchemaText {
            serde_json::from_value(serde_json::json!({
                "schema": r#""string""#,
                "schemaType": schema_type,
                "references": references,
            }))
            .unwrap()
        };
        assert!(usable_schema(1, &answer("AVRO", serde_json::json!([]))).is_ok());
        let e = usable_schema(2, &answer("PROTOBUF", serde_json::json!([]))).unwrap_err();
        assert!(e.contains("PROTOBUF"), "{e}");
        let reference = serde_json::json!([{"name": "x", "subject": "x-value", "version": 1}]);
        let e = usable_schema(3, &answer("AVRO", reference)).unwrap_err();
        assert!(e.contains("references"), "{e}");
    }
}

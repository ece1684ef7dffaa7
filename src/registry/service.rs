//! What the registry does for each API call: reads answer from the
//! in-memory [`Store`]; writes are decided and committed by one writer at a
//! time (see [`super::log`]) and answered once the reader has applied the
//! record, so a client that wrote can read its write from this instance at
//! once.
//!
//! A write goes: take the writer lock of this instance; if this instance
//! does not hold the writer role, take it (fencing the previous writer)
//! and read the topic up to a record committed under the new role, so that
//! the state includes everything any writer committed before; decide
//! (allocate the id and version, check compatibility) on that state;
//! commit; wait until the reader has applied the commit. If another
//! instance took the role meanwhile the commit fails and the write starts
//! over from the new state. Every transaction ends with a NOOP record
//! carrying the highest id allocated (see [`Record::Noop`]).

use std::collections::HashSet;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tracing::{info, warn};

use super::compat::{self, CompatibilityLevel};
use super::error::RegistryError;
use super::log::{Progress, WriteError, Writer};
use super::metrics::RegistryMetrics;
use super::records::{AVRO, Record, Reference, SchemaValue};
use super::schema::{ParsedAvro, SUPPORTED_TYPES, identity};
use super::store::{Found, SchemaEntry, Store, VersionSpec};

/// Attempts of one write before giving up (each after losing the writer
/// role or an aborted transaction).
const WRITE_ATTEMPTS: u32 = 6;

/// Before taking the writer role, wait until no record has arrived for
/// this long: another instance that holds the role is then done with its
/// write, and taking the role does not make that write fail and start
/// over (two instances taking the role back and forth would otherwise
/// starve each other).
const QUIET: Duration = Duration::from_millis(250);

/// The longest wait for quiet: a busy writer yields the role after this.
const QUIET_MAX: Duration = Duration::from_secs(2);

/// How deep references may nest.
const MAX_REFERENCE_DEPTH: usize = 32;

/// A schema as clients send it (`POST /subjects/{subject}/versions`, lookup
/// and compatibility checks).
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaRequest {
    pub schema: String,
    #[serde(rename = "schemaType", default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Option<Vec<Reference>>,
    /// Only allowed in Confluent's IMPORT mode, which Millrace lacks.
    #[serde(default)]
    pub id: Option<Json>,
    #[serde(default)]
    pub version: Option<Json>,
}

/// A version of a subject, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(rename = "schemaType", skip_serializing_if = "is_avro")]
    pub schema_type: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

/// A schema by id, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaById {
    pub schema: String,
    #[serde(rename = "schemaType", skip_serializing_if = "is_avro")]
    pub schema_type: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

/// A (subject, version) pair using an id.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectVersionPair {
    pub subject: String,
    pub version: u32,
}

/// The answer to a compatibility check.
#[derive(Debug, Clone, Serialize)]
pub struct CompatibilityResult {
    pub is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<String>>,
}

fn is_avro(t: &str) -> bool {
    t == AVRO
}

fn subject_version(found: &Found<'_>) -> SubjectVersion {
    SubjectVersion {
        subject: found.subject.to_string(),
        version: found.version,
        id: found.id,
        schema: found.schema.schema.clone(),
        schema_type: found.schema.schema_type.clone(),
        references: found.schema.references.clone(),
    }
}

/// What a write decided.
enum Plan<T> {
    /// Nothing to write (e.g. the schema is registered already).
    Done(T),
    /// Commit these records, then answer `T`.
    Write(Vec<Record>, T),
}

/// A submitted schema, checked.
struct Candidate {
    /// The text to store: as submitted, or normalized.
    text: String,
    schema_type: String,
    references: Vec<Reference>,
    identity: String,
    parsed: ParsedAvro,
}

/// The registry behind the API.
pub struct Registry {
    store: Arc<RwLock<Store>>,
    writer: Arc<Mutex<Writer>>,
    progress: watch::Receiver<Progress>,
    metrics: Arc<RegistryMetrics>,
    write_timeout: Duration,
}

impl Registry {
    pub fn new(
        store: Arc<RwLock<Store>>,
        writer: Writer,
        progress: watch::Receiver<Progress>,
        metrics: Arc<RegistryMetrics>,
        write_timeout: Duration,
    ) -> Registry {
        Registry {
            store,
            writer: Arc::new(Mutex::new(writer)),
            progress,
            metrics,
            write_timeout,
        }
    }

    fn store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a consistent state: refused until the topic is replayed, so a
    /// restarting instance never answers from half a history.
    fn read<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        if !self.progress.borrow().replayed {
            return Err(RegistryError::NotReady);
        }
        f(&self.store())
    }

    pub fn schema_types(&self) -> Vec<&'static str> {
        SUPPORTED_TYPES.to_vec()
    }

    pub fn subjects(
        &self,
        deleted: bool,
        deleted_only: bool,
        prefix: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        self.read(|store| {
            Ok(store
                .subjects(deleted, deleted_only)
                .into_iter()
                .filter(|s| prefix.is_none_or(|p| s.starts_with(p)))
                .map(str::to_string)
                .collect())
        })
    }

    pub fn versions(
        &self,
        subject: &str,
        deleted: bool,
        deleted_only: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.read(|store| store.versions(subject, deleted, deleted_only))
    }

    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        self.read(|store| {
            store
                .version(subject, spec, deleted)
                .map(|f| subject_version(&f))
        })
    }

    pub fn referenced_by(
        &self,
        subject: &str,
        spec: VersionSpec,
    ) -> Result<Vec<u32>, RegistryError> {
        self.read(|store| {
            let found = store.version(subject, spec, false)?;
            Ok(store.referenced_by(subject, found.version))
        })
    }

    pub fn schema_by_id(&self, id: u32) -> Result<SchemaById, RegistryError> {
        self.read(|store| {
            let entry = store.schema(id).ok_or(RegistryError::SchemaNotFound(id))?;
            Ok(SchemaById {
                schema: entry.schema.clone(),
                schema_type: entry.schema_type.clone(),
                references: entry.references.clone(),
            })
        })
    }

    pub fn id_subjects(&self, id: u32, deleted: bool) -> Result<Vec<String>, RegistryError> {
        self.read(|store| {
            store.schema(id).ok_or(RegistryError::SchemaNotFound(id))?;
            let mut subjects: Vec<String> = store
                .usages(id, deleted)
                .into_iter()
                .map(|(s, _)| s.to_string())
                .collect();
            subjects.dedup();
            Ok(subjects)
        })
    }

    pub fn id_versions(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<SubjectVersionPair>, RegistryError> {
        self.read(|store| {
            store.schema(id).ok_or(RegistryError::SchemaNotFound(id))?;
            Ok(store
                .usages(id, deleted)
                .into_iter()
                .map(|(subject, version)| SubjectVersionPair {
                    subject: subject.to_string(),
                    version,
                })
                .collect())
        })
    }

    pub fn global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        self.read(|store| Ok(store.global_level()))
    }

    pub fn subject_level(
        &self,
        subject: &str,
        default_to_global: bool,
    ) -> Result<CompatibilityLevel, RegistryError> {
        self.read(|store| match store.subject_level(subject) {
            Some(level) => Ok(level),
            None if default_to_global => Ok(store.global_level()),
            None => Err(RegistryError::SubjectLevelNotConfigured(
                subject.to_string(),
            )),
        })
    }

    /// `POST /subjects/{subject}`: the version of `subject` holding this
    /// schema.
    pub fn lookup(
        &self,
        subject: &str,
        request: &SchemaRequest,
        normalize: bool,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        self.read(|store| {
            // An unknown subject is 40401 whatever the schema.
            store.version(subject, VersionSpec::Latest, deleted)?;
            let candidate = prepare(store, request, normalize)?;
            store
                .lookup(subject, &candidate.identity, deleted)
                .map(|f| subject_version(&f))
        })
    }

    /// `POST /compatibility/subjects/{subject}/versions[/{version}]`: checks
    /// a schema against one version (`Some`) or against the versions the
    /// subject's level names (`None`).
    pub fn test_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        request: &SchemaRequest,
        normalize: bool,
        verbose: bool,
    ) -> Result<CompatibilityResult, RegistryError> {
        self.read(|store| {
            let against = match version {
                Some(spec) => vec![store.version(subject, spec, false)?],
                None => {
                    let live = store.live_versions(subject);
                    if live.is_empty() {
                        return Err(RegistryError::SubjectNotFound(subject.to_string()));
                    }
                    live
                }
            };
            let candidate = prepare(store, request, normalize)?;
            let problems = check_against(store, subject, &candidate, &against);
            Ok(CompatibilityResult {
                is_compatible: problems.is_empty(),
                messages: verbose.then_some(problems),
            })
        })
    }

    /// `POST /subjects/{subject}/versions`: registers a schema (or returns
    /// the id it has under the subject already).
    pub async fn register(
        &self,
        subject: &str,
        request: &SchemaRequest,
        normalize: bool,
    ) -> Result<u32, RegistryError> {
        if request.id.is_some() || request.version.is_some() {
            return Err(RegistryError::OperationNotPermitted(
                "`id` and `version` may only be given in IMPORT mode, which Millrace does not offer"
                    .into(),
            ));
        }
        let candidate = self.read(|store| prepare(store, request, normalize))?;
        // Registered already: no write, no writer role needed.
        if let Ok(id) = self.read(|store| Ok(store.lookup(subject, &candidate.identity, false)?.id))
        {
            return Ok(id);
        }
        let id = self
            .write(|store| {
                if let Ok(found) = store.lookup(subject, &candidate.identity, false) {
                    return Ok(Plan::Done(found.id));
                }
                let live = store.live_versions(subject);
                let problems = check_against(store, subject, &candidate, &live);
                if !problems.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_string(),
                        details: problems,
                    });
                }
                let id = store.id_for(&candidate.identity)?;
                let version = store.next_version(subject);
                Ok(Plan::Write(
                    vec![Record::Schema {
                        subject: subject.to_string(),
                        version,
                        value: Some(SchemaValue {
                            subject: subject.to_string(),
                            version,
                            id,
                            schema: candidate.text.clone(),
                            deleted: false,
                            references: candidate.references.clone(),
                            schema_type: candidate.schema_type.clone(),
                        }),
                    }],
                    id,
                ))
            })
            .await?;
        info!(subject, id, "schema registered");
        Ok(id)
    }

    /// `DELETE /subjects/{subject}`: soft-deletes every live version, or
    /// with `permanent` forgets a soft-deleted subject. Returns the
    /// versions deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.write(|store| {
            let versions = store
                .all_versions(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            let live: Vec<u32> = versions
                .iter()
                .filter(|(_, e)| !e.deleted)
                .map(|(v, _)| *v)
                .collect();
            if permanent {
                if !live.is_empty() {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
                }
                let all: Vec<u32> = versions.keys().copied().collect();
                refuse_if_referenced(store, subject, &all)?;
                // Descending, as Confluent does, so intra-subject
                // references never dangle mid-way.
                let mut records: Vec<Record> = all
                    .iter()
                    .rev()
                    .map(|v| Record::Schema {
                        subject: subject.to_string(),
                        version: *v,
                        value: None,
                    })
                    .collect();
                if store.subject_level(subject).is_some() {
                    records.push(Record::Config {
                        subject: Some(subject.to_string()),
                        level: None,
                    });
                }
                Ok(Plan::Write(records, all))
            } else {
                let Some(last) = live.last().copied() else {
                    return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
                };
                refuse_if_referenced(store, subject, &live)?;
                Ok(Plan::Write(
                    vec![Record::DeleteSubject {
                        subject: subject.to_string(),
                        version: last,
                    }],
                    live,
                ))
            }
        })
        .await
    }

    /// `DELETE /subjects/{subject}/versions/{version}`: soft-deletes a
    /// version, or with `permanent` forgets a soft-deleted one.
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        self.write(|store| {
            let versions = store
                .all_versions(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            let (version, entry) = match spec {
                VersionSpec::Latest if permanent => versions.iter().next_back(),
                VersionSpec::Latest => versions.iter().rev().find(|(_, e)| !e.deleted),
                VersionSpec::Number(n) => versions.get_key_value(&n),
            }
            .map(|(v, e)| (*v, *e))
            .ok_or_else(|| {
                RegistryError::VersionNotFound(match spec {
                    VersionSpec::Latest => "latest".to_string(),
                    VersionSpec::Number(n) => n.to_string(),
                })
            })?;
            if permanent && !entry.deleted {
                return Err(RegistryError::VersionNotSoftDeleted(
                    subject.to_string(),
                    version,
                ));
            }
            if !permanent && entry.deleted {
                return Err(RegistryError::VersionSoftDeleted(
                    subject.to_string(),
                    version,
                ));
            }
            refuse_if_referenced(store, subject, &[version])?;
            let value = if permanent {
                None
            } else {
                let schema = store.schema(entry.id).ok_or_else(|| {
                    RegistryError::Store(format!("id {} holds no schema", entry.id))
                })?;
                Some(SchemaValue {
                    subject: subject.to_string(),
                    version,
                    id: entry.id,
                    schema: schema.schema.clone(),
                    deleted: true,
                    references: schema.references.clone(),
                    schema_type: schema.schema_type.clone(),
                })
            };
            Ok(Plan::Write(
                vec![Record::Schema {
                    subject: subject.to_string(),
                    version,
                    value,
                }],
                version,
            ))
        })
        .await
    }

    /// `PUT /config[/{subject}]`.
    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<CompatibilityLevel, RegistryError> {
        self.write(|_| {
            Ok(Plan::Write(
                vec![Record::Config {
                    subject: subject.map(str::to_string),
                    level: Some(level),
                }],
                level,
            ))
        })
        .await
    }

    /// `DELETE /config[/{subject}]`: removes a level; returns the one
    /// removed.
    pub async fn delete_level(
        &self,
        subject: Option<&str>,
    ) -> Result<CompatibilityLevel, RegistryError> {
        self.write(|store| {
            let previous = match subject {
                None => store.global_level(),
                Some(s) => match store.subject_level(s) {
                    Some(level) => level,
                    None if store.all_versions(s).is_none() => {
                        return Err(RegistryError::SubjectNotFound(s.to_string()));
                    }
                    None => return Err(RegistryError::SubjectLevelNotConfigured(s.to_string())),
                },
            };
            Ok(Plan::Write(
                vec![Record::Config {
                    subject: subject.map(str::to_string),
                    level: None,
                }],
                previous,
            ))
        })
        .await
    }

    /// Runs a write: see the module docs.
    async fn write<T: Send>(
        &self,
        plan: impl Fn(&Store) -> Result<Plan<T>, RegistryError> + Send + Sync,
    ) -> Result<T, RegistryError> {
        if !self.progress.borrow().replayed {
            return Err(RegistryError::NotReady);
        }
        let started = Instant::now();
        let mut writer = self.writer.clone().lock_owned().await;
        let mut last_error = String::new();
        for attempt in 1..=WRITE_ATTEMPTS {
            // Each Kafka call is bounded by write_timeout; so is the whole
            // write, give or take the attempt under way.
            if attempt > 1 && started.elapsed() >= self.write_timeout {
                break;
            }
            if attempt > 1 {
                self.metrics.writes.with_label_values(&["retried"]).inc();
                // A little randomness keeps two instances that retry at
                // the same moment from meeting again.
                let pause = rand::random_range(10..=50 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            if !writer.has_role() {
                self.wait_for_quiet().await;
                let (w, outcome) = self.take_role(writer).await?;
                writer = w;
                if let Err(e) = outcome {
                    warn!(error = %e, attempt, "cannot take the writer role");
                    last_error = e.to_string();
                    continue;
                }
            }
            let planned = plan(&self.store())?;
            let (mut records, answer) = match planned {
                Plan::Done(answer) => return Ok(answer),
                Plan::Write(records, answer) => (records, answer),
            };
            let mark = {
                let store = self.store();
                records
                    .iter()
                    .filter_map(|r| match r {
                        Record::Schema { value: Some(v), .. } => Some(v.id),
                        _ => None,
                    })
                    .fold(store.max_id(), u32::max)
            };
            records.push(Record::Noop { max_id: Some(mark) });
            let (w, outcome) = blocking(writer, move |w| w.commit(&records)).await?;
            writer = w;
            match outcome {
                Ok(offset) => {
                    self.wait_applied(offset).await?;
                    self.metrics.writes.with_label_values(&["committed"]).inc();
                    self.metrics
                        .write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(answer);
                }
                Err(WriteError::Retry(e)) => last_error = e,
            }
        }
        self.metrics.writes.with_label_values(&["failed"]).inc();
        Err(RegistryError::Store(format!(
            "cannot write to the schemas topic (gave up after {:?}): {last_error}",
            started.elapsed()
        )))
    }

    /// Takes the writer role and catches up: commits a NOOP under the new
    /// role and waits until the reader has applied it, so the state holds
    /// every record committed before. The mark it carries was computed
    /// before catching up; if catching up revealed a higher id, a second
    /// NOOP records that.
    async fn take_role(
        &self,
        writer: OwnedMutexGuard<Writer>,
    ) -> Result<(OwnedMutexGuard<Writer>, Result<(), WriteError>), RegistryError> {
        let started = Instant::now();
        let (mut writer, acquired) = blocking(writer, Writer::acquire).await?;
        if let Err(e) = acquired {
            return Ok((writer, Err(e)));
        }
        self.metrics.writer_epochs.inc();
        let acquired_in = started.elapsed();
        let mut mark = self.store().max_id();
        loop {
            let (w, synced) = blocking(writer, move |w| {
                w.commit(&[Record::Noop { max_id: Some(mark) }])
            })
            .await?;
            writer = w;
            match synced {
                Ok(offset) => self.wait_applied(offset).await?,
                Err(e) => return Ok((writer, Err(e))),
            }
            let max = self.store().max_id();
            if max <= mark {
                info!(?acquired_in, caught_up_in = ?started.elapsed(), "took the writer role");
                return Ok((writer, Ok(())));
            }
            mark = max;
        }
    }

    /// Waits until no record has arrived for [`QUIET`], at most
    /// [`QUIET_MAX`].
    async fn wait_for_quiet(&self) {
        let deadline = Instant::now() + QUIET_MAX;
        loop {
            let since = self
                .progress
                .borrow()
                .last_record_at
                .map_or(QUIET, |at| at.elapsed());
            let now = Instant::now();
            if since >= QUIET || now >= deadline {
                return;
            }
            tokio::time::sleep((QUIET - since).min(deadline - now)).await;
        }
    }

    /// Waits until the reader has applied the record at `offset`.
    async fn wait_applied(&self, offset: i64) -> Result<(), RegistryError> {
        let mut progress = self.progress.clone();
        match tokio::time::timeout(
            self.write_timeout,
            progress.wait_for(|p| p.next_offset > offset),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RegistryError::Store("the reader has stopped".into())),
            Err(_) => Err(RegistryError::Timeout(format!(
                "the record at offset {offset} was not read back within {:?}",
                self.write_timeout
            ))),
        }
    }
}

/// Runs a blocking writer call on a blocking thread, handing the lock
/// guard there and back.
async fn blocking<R: Send + 'static>(
    mut writer: OwnedMutexGuard<Writer>,
    call: impl FnOnce(&mut Writer) -> R + Send + 'static,
) -> Result<(OwnedMutexGuard<Writer>, R), RegistryError> {
    tokio::task::spawn_blocking(move || {
        let result = call(&mut writer);
        (writer, result)
    })
    .await
    .map_err(|e| RegistryError::Store(format!("the writer task failed: {e}")))
}

/// Checks a submitted schema: type, references, Avro syntax.
fn prepare(
    store: &Store,
    request: &SchemaRequest,
    normalize: bool,
) -> Result<Candidate, RegistryError> {
    let schema_type = request
        .schema_type
        .clone()
        .unwrap_or_else(|| AVRO.to_string())
        .to_ascii_uppercase();
    if !SUPPORTED_TYPES.contains(&schema_type.as_str()) {
        return Err(RegistryError::InvalidSchema(format!(
            "schema type {schema_type} is not supported; this registry supports {}",
            SUPPORTED_TYPES.join(", ")
        )));
    }
    let references = request.references.clone().unwrap_or_default();
    let referenced = referenced_texts(store, &references).map_err(RegistryError::InvalidSchema)?;
    let parsed = ParsedAvro::parse(&request.schema, &referenced)
        .map_err(|e| RegistryError::InvalidSchema(format!("Invalid AVRO schema: {e}")))?;
    let text = if normalize {
        parsed.normalized()
    } else {
        request.schema.trim().to_string()
    };
    Ok(Candidate {
        identity: identity(&schema_type, &text, &references),
        text,
        schema_type,
        references,
        parsed,
    })
}

/// The texts of every schema `references` reach, dependencies first.
fn referenced_texts(store: &Store, references: &[Reference]) -> Result<Vec<String>, String> {
    let mut texts = Vec::new();
    let mut seen = HashSet::new();
    collect_references(store, references, &mut seen, &mut texts, 0)?;
    Ok(texts)
}

fn collect_references(
    store: &Store,
    references: &[Reference],
    seen: &mut HashSet<(String, u32)>,
    texts: &mut Vec<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_REFERENCE_DEPTH {
        return Err("references nest too deeply (or form a cycle)".into());
    }
    for reference in references {
        if !seen.insert((reference.subject.clone(), reference.version)) {
            continue;
        }
        let found = store
            .version(
                &reference.subject,
                VersionSpec::Number(reference.version),
                true,
            )
            .map_err(|_| {
                format!(
                    "reference {} names {} version {}, which does not exist",
                    reference.name, reference.subject, reference.version
                )
            })?;
        if found.schema.schema_type != AVRO {
            return Err(format!(
                "reference {} is a {} schema",
                reference.name, found.schema.schema_type
            ));
        }
        collect_references(store, &found.schema.references, seen, texts, depth + 1)?;
        texts.push(found.schema.schema.clone());
    }
    Ok(())
}

/// Parses a stored schema for a compatibility check.
fn parse_stored(store: &Store, entry: &SchemaEntry) -> Result<ParsedAvro, String> {
    if entry.schema_type != AVRO {
        return Err(format!("it is a {} schema", entry.schema_type));
    }
    let referenced = referenced_texts(store, &entry.references)?;
    ParsedAvro::parse(&entry.schema, &referenced)
}

/// The problems of `candidate` against `versions` (live, oldest first)
/// under the subject's level; only the latest unless the level is
/// transitive.
fn check_against(
    store: &Store,
    subject: &str,
    candidate: &Candidate,
    versions: &[Found<'_>],
) -> Vec<String> {
    let level = store.level(subject);
    if level == CompatibilityLevel::None || versions.is_empty() {
        return Vec::new();
    }
    let chosen = if level.is_transitive() {
        versions
    } else {
        &versions[versions.len() - 1..]
    };
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for found in chosen {
        match parse_stored(store, found.schema) {
            Ok(p) => parsed.push((found.version, p)),
            Err(e) => problems.push(format!(
                "version {} cannot be compared with an Avro schema: {e}",
                found.version
            )),
        }
    }
    let earlier: Vec<(u32, &ParsedAvro)> = parsed.iter().map(|(v, p)| (*v, p)).collect();
    problems.extend(compat::check(level, &candidate.parsed, &earlier));
    problems
}

/// Refuses to delete versions other schemas reference.
fn refuse_if_referenced(
    store: &Store,
    subject: &str,
    versions: &[u32],
) -> Result<(), RegistryError> {
    for version in versions {
        if !store.referenced_by(subject, *version).is_empty() {
            return Err(RegistryError::ReferenceExists(
                subject.to_string(),
                *version,
            ));
        }
    }
    Ok(())
}

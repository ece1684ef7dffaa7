//! A pipeline as it runs: the steps built from the config, the sinks, and
//! [`Pipeline::process`], which turns one consumed record into the records
//! to produce, or into the reason it must go to the dead-letter topic.
//!
//! # Whose failure is it?
//!
//! A failure on the consumed record, or on what stateless steps made of
//! it, is the *input's*: the record goes to the dead-letter topic, none of
//! its outputs are produced and its state writes are undone. Once a
//! stateful step has taken the record in, what that step emits (a window's
//! results, a running aggregate, a timer's events) belongs to its *state*:
//! a later failure on one such record (an eval error in a later step, a
//! route to a missing sink, a value the sink cannot encode) is that
//! *output's*. It is returned in [`Produced::failed`], to be dead-lettered
//! alone, while the state writes and every other output stand. Undoing the
//! state instead would undo, say, a window's close, which every later
//! record of the partition would retry and fail on again.
//!
//! Nothing here touches Kafka; the runtime feeds records in and produces
//! what comes out, so this is tested without a broker.

use std::fmt;
use std::time::Duration;

use serde_json::Value as Json;

use tracing::info;

use crate::avro::{self, RegisterError, SchemaCache};
use crate::config::{Format, PipelineConfig, SinkConfig, SourceConfig, StartPosition, StepConfig};
use crate::expr::{Expr, Scope, json_to_key};
use crate::format::{AvroSink, DecodeFailure, ValueDecoder, ValueEncoder};
use crate::state::{StateError, TaskStores};
use crate::steps::{self, Operator, Origin, Record, StepContext, StepError, join};

/// A record ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
    /// The stateful step that emitted it, if one did: then a refusal of
    /// this output (by the broker's limits) is the output's own failure, not
    /// the input record's.
    pub emitted: Option<Emitted>,
}

/// What one consumed record, or one run of a task's timers, produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Produced {
    /// Records to produce.
    pub outputs: Vec<Output>,
    /// Outputs of stateful steps that failed on their way to a sink; each
    /// goes to the dead-letter topic on its own.
    pub failed: Vec<FailedOutput>,
}

/// Where a record emitted by a stateful step came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The step's index in `steps:`.
    pub step: usize,
    /// The step's keyword.
    pub kind: &'static str,
    /// The record's key as the step emitted it.
    pub key: Option<Vec<u8>>,
    /// The window `[start, end)` (ms) it is the result of, for a `window`.
    pub window: Option<(i64, i64)>,
}

impl Emitted {
    /// The step as `steps[i] (kind)`, as failures name steps.
    pub fn step_name(&self) -> String {
        format!("steps[{}] ({})", self.step, self.kind)
    }
}

/// An output of a stateful step that failed after the step emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedOutput {
    pub failure: Failure,
    pub emitted: Emitted,
    /// The record as it reached the failure: its value as JSON when a step
    /// or a sink failed on it; the encoded output when the broker's limits
    /// refused it.
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
}

impl FailedOutput {
    fn new(failure: Failure, emitted: Emitted, record: &Record) -> FailedOutput {
        FailedOutput {
            failure,
            emitted,
            // A JSON value always serializes; empty is only a fallback.
            payload: serde_json::to_vec(&record.value).unwrap_or_default(),
            timestamp: record.timestamp,
        }
    }
}

/// Why a record goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A short stable word for dashboards and alerts.
    pub reason: FailureReason,
    /// The step that failed, as `steps[i] (kind)`, or the sink.
    pub at: String,
    /// A human-readable explanation.
    pub message: String,
}

/// Kinds of dead-letter reasons; stable strings in the `millrace.reason`
/// header (docs/src/guarantees.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The value could not be decoded: invalid JSON, a tombstone, or an
    /// Avro body that does not follow its schema.
    Decode,
    /// Avro: the value does not start with the wire format's magic byte 0.
    WrongMagic,
    /// Avro: the value ends inside the 5-byte header or inside the body.
    Truncated,
    /// Avro: the registry does not know the schema id (or it is not an
    /// Avro schema).
    UnknownSchema,
    /// Avro: the writer schema does not resolve to the source's reader
    /// schema.
    IncompatibleSchema,
    /// An expression failed or returned the wrong type.
    Eval,
    /// A route named a sink that does not exist.
    Route,
    /// The result could not be encoded, or the broker refused it.
    Encode,
    /// The record arrived after its window closed (event time beyond grace).
    Late,
    /// The state the record would leave does not fit in a changelog record
    /// under the producer's `message.max.bytes`.
    StateTooLarge,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Decode => "decode",
            FailureReason::WrongMagic => "wrong_magic",
            FailureReason::Truncated => "truncated",
            FailureReason::UnknownSchema => "unknown_schema",
            FailureReason::IncompatibleSchema => "incompatible_schema",
            FailureReason::Eval => "eval",
            FailureReason::Route => "route",
            FailureReason::Encode => "encode",
            FailureReason::Late => "late",
            FailureReason::StateTooLarge => "state_too_large",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.reason.as_str(),
            self.at,
            self.message
        )
    }
}

/// Processing of a record was interrupted by something that is not the
/// record's fault; the record must be processed again later.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The state stores failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The record's writer schema could not be fetched because the schema
    /// registry is unavailable; try the record again after `retry_in`.
    #[error("schema registry unavailable: {message}")]
    RegistryUnavailable { message: String, retry_in: Duration },
}

struct Source {
    config: SourceConfig,
    decoder: ValueDecoder,
}

struct Sink {
    name: String,
    topic: String,
    format: Format,
    key: Option<Expr>,
    encoder: ValueEncoder,
}

/// The tables of a config, checked: each is named validly and read from
/// the start; each `join` names one and does not follow a `rekey` (the
/// table is partitioned by the key as read).
fn tables(config: &PipelineConfig, issues: &mut Vec<BuildIssue>) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        let Some(name) = &source.table else { continue };
        match join::table_store(name) {
            Ok(store) if tables.iter().any(|(_, t)| *t == store) => issues.push((
                format!("sources[{i}].table"),
                format!("table `{store}` is fed by two sources"),
            )),
            Ok(store) => tables.push((source.topic.clone(), store)),
            Err(e) => issues.push((format!("sources[{i}].table"), e)),
        }
        if source.start != StartPosition::Earliest {
            issues.push((
                format!("sources[{i}].start"),
                "a table is read from the earliest offset; remove `start`".to_string(),
            ));
        }
    }
    let mut rekeyed = false;
    for (i, step) in config.steps.iter().enumerate() {
        match step {
            StepConfig::Rekey(_) => rekeyed = true,
            StepConfig::Join(j) => {
                if !tables.iter().any(|(_, t)| *t == j.table) {
                    let known: Vec<&str> = tables.iter().map(|(_, t)| t.as_str()).collect();
                    issues.push((
                        format!("steps[{i}].join.table"),
                        format!(
                            "no source feeds a table named `{}` (tables: {}); add `table: {}` to its source",
                            j.table,
                            if known.is_empty() { "none".to_string() } else { known.join(", ") },
                            j.table
                        ),
                    ));
                }
                if rekeyed {
                    issues.push((
                        format!("steps[{i}].join"),
                        "a join looks up the key as read (the table is partitioned by it); \
                         move the `rekey` after the join"
                            .to_string(),
                    ));
                }
            }
            _ => {}
        }
    }
    tables
}

/// A record between steps, with the stateful step that emitted it (`None`
/// while it is the input record's own).
struct Flowing {
    record: Record,
    emitted: Option<Emitted>,
}

/// What ran through the steps: the records that came out of the last one,
/// and the outputs of stateful steps that failed on the way.
type Ran = (Vec<Flowing>, Vec<FailedOutput>);

/// Runs records through `steps[from..]`. A failure on an input's own record
/// is returned (it names the step); a failure on an emitted record is
/// collected and the others go on (see the module docs). A [`StateError`]
/// is returned apart (not the records' fault).
fn run_steps(
    steps: &mut [Box<dyn Operator>],
    from: usize,
    mut records: Vec<Flowing>,
    ctx: &mut StepContext<'_>,
) -> Result<Result<Ran, Failure>, StateError> {
    let mut failed = Vec::new();
    let mut out = Vec::new();
    for (i, step) in steps.iter_mut().enumerate().skip(from) {
        if records.is_empty() {
            break;
        }
        let mut next = Vec::with_capacity(records.len());
        let kind = step.kind();
        let emits_state = step.emits_state();
        for Flowing { record, emitted } in records {
            let failed_at = |reason, message| Failure {
                reason,
                at: format!("steps[{i}] ({kind})"),
                message,
            };
            // Kept for the dead letter only while it is an output of state
            // (rare next to input records, so the copy is cheap overall).
            let kept = emitted.as_ref().map(|_| record.clone());
            out.clear();
            let failure = match step.process(ctx, record, &mut out) {
                Ok(()) => {
                    for r in out.drain(..) {
                        let emitted = if emits_state {
                            Some(Emitted {
                                step: i,
                                kind,
                                key: r.key.clone(),
                                window: step.window_of(&r),
                            })
                        } else {
                            emitted.clone()
                        };
                        next.push(Flowing { record: r, emitted });
                    }
                    continue;
                }
                Err(StepError::Record(m)) => failed_at(FailureReason::Eval, m),
                Err(StepError::Late(m)) => failed_at(FailureReason::Late, m),
                Err(StepError::State(e)) => return Err(e),
            };
            match (emitted, kept) {
                (Some(emitted), Some(record)) => {
                    failed.push(FailedOutput::new(failure, emitted, &record))
                }
                _ => return Ok(Err(failure)),
            }
        }
        records = next;
    }
    Ok(Ok((records, failed)))
}

/// A built pipeline.
pub struct Pipeline {
    scope: Scope,
    sources: Vec<Source>,
    steps: Vec<Box<dyn Operator>>,
    sinks: Vec<Sink>,
    /// Sources that feed tables: (topic, table and store name).
    tables: Vec<(String, String)>,
    dead_letter_topic: String,
    /// Writer schemas of Avro sources, by id.
    schemas: SchemaCache,
}

/// A problem found while building, located by field path.
pub type BuildIssue = (String, String);

impl Pipeline {
    /// Builds the steps and sinks of a parsed config. Returns every problem
    /// found, each with its field path.
    pub fn build(config: &PipelineConfig) -> Result<Pipeline, Vec<BuildIssue>> {
        let mut issues = Vec::new();
        let mut steps_built = Vec::new();
        for (i, step) in config.steps.iter().enumerate() {
            match steps::build(step, i) {
                Ok(op) => steps_built.push(op),
                Err(e) => issues.push((format!("steps[{i}].{}", step.kind()), e)),
            }
        }
        let mut sources = Vec::new();
        for (i, source) in config.sources.iter().enumerate() {
            match source_decoder(source) {
                Ok(decoder) => sources.push(Source {
                    config: source.clone(),
                    decoder,
                }),
                Err(e) => issues.push((format!("sources[{i}].schema"), e)),
            }
        }
        let mut sinks = Vec::new();
        for (name, sink) in &config.sinks {
            let key = match sink.key.as_deref().map(Expr::compile).transpose() {
                Ok(key) => key,
                Err(e) => {
                    issues.push((format!("sinks.{name}.key"), e));
                    None
                }
            };
            let encoder = match sink_encoder(sink) {
                Ok(encoder) => encoder,
                Err((field, e)) => {
                    issues.push((format!("sinks.{name}.{field}"), e));
                    ValueEncoder::Json
                }
            };
            sinks.push(Sink {
                name: name.clone(),
                topic: sink.topic.clone(),
                format: sink.format,
                key,
                encoder,
            });
        }
        let tables = tables(config, &mut issues);
        // Indices line up with `config.steps` only when every step built.
        let built_all = steps_built.len() == config.steps.len();
        for (i, name) in steps::duplicate_stores(&steps_built)
            .into_iter()
            .filter(|_| built_all)
        {
            let kind = config.steps[i].kind();
            issues.push((
                format!("steps[{i}].{kind}"),
                format!("store name `{name}` is already used by an earlier step"),
            ));
        }
        if built_all {
            let step_stores: Vec<String> = steps_built.iter().flat_map(|s| s.stores()).collect();
            for (i, source) in config.sources.iter().enumerate() {
                if let Some(table) = &source.table
                    && step_stores.contains(table)
                {
                    issues.push((
                        format!("sources[{i}].table"),
                        format!("`{table}` is also the store name of a step; rename one"),
                    ));
                }
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Pipeline {
            tables,
            scope: Scope::default(),
            sources,
            steps: steps_built,
            sinks,
            dead_letter_topic: config.dead_letter_topic(),
            schemas: SchemaCache::new(config.registry.as_ref()),
        })
    }

    /// Registers the schema of every Avro sink not registered yet (or looks
    /// it up, with `auto_register: false`), so that its records carry the
    /// schema's id. Called at start, before any record; the caller retries
    /// [`RegisterError::Unavailable`].
    pub fn register_schemas(&mut self) -> Result<(), RegisterError> {
        for sink in &mut self.sinks {
            let ValueEncoder::Avro(avro_sink) = &mut sink.encoder else {
                continue;
            };
            if avro_sink.encoder.is_some() {
                continue;
            }
            let id = self
                .schemas
                .register(
                    &avro_sink.subject,
                    &avro_sink.schema,
                    avro_sink.auto_register,
                )
                .map_err(|e| match e {
                    RegisterError::Refused(m) => {
                        RegisterError::Refused(format!("sinks.{}: {m}", sink.name))
                    }
                    unavailable => unavailable,
                })?;
            info!(
                sink = %sink.name,
                subject = %avro_sink.subject,
                id,
                "sink schema registered"
            );
            avro_sink.encoder = Some(avro::Encoder::new(avro_sink.schema.clone(), id));
        }
        Ok(())
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_letter_topic
    }

    /// Every topic this pipeline writes to.
    pub fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.sinks.iter().map(|s| s.topic.clone()).collect();
        topics.push(self.dead_letter_topic.clone());
        topics.sort();
        topics.dedup();
        topics
    }

    /// Names of every state store: the steps' and the tables'.
    pub fn stores(&self) -> Vec<String> {
        let mut stores: Vec<String> = self.steps.iter().flat_map(|s| s.stores()).collect();
        stores.extend(self.tables.iter().map(|(_, table)| table.clone()));
        stores
    }

    /// The topics that feed tables.
    pub fn table_topics(&self) -> Vec<String> {
        self.tables.iter().map(|(topic, _)| topic.clone()).collect()
    }

    /// Applies a record of a table's topic to the table's store. Tables
    /// produce no output.
    fn update_table(
        &mut self,
        table: &str,
        origin: &Origin,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        stores: &mut dyn TaskStores,
    ) -> Result<Result<Produced, Failure>, ProcessError> {
        let at = format!("table {table} (source {})", origin.topic);
        let Some(key) = key else {
            return Ok(Err(Failure {
                reason: FailureReason::Decode,
                at,
                message: "a table record needs a key (the row it sets)".to_string(),
            }));
        };
        let row = match payload {
            // A tombstone deletes the row.
            None => None,
            Some(_) => match self.decode(origin, payload, &at)? {
                Ok(value) => Some(value),
                Err(failure) => return Ok(Err(failure)),
            },
        };
        join::apply_table_record(stores.store(table)?, key, row.as_ref());
        Ok(Ok(Produced::default()))
    }

    /// Decodes a consumed value with its source's decoder; `at` says where
    /// in a failure.
    fn decode(
        &mut self,
        origin: &Origin,
        payload: Option<&[u8]>,
        at: &str,
    ) -> Result<Result<Json, Failure>, ProcessError> {
        let failure = |reason, message| {
            Ok(Err(Failure {
                reason,
                at: at.to_string(),
                message,
            }))
        };
        // The subscription is the sources, so this only guards against a
        // caller feeding records from elsewhere.
        let Some(source) = self.sources.iter().find(|s| s.config.topic == origin.topic) else {
            return failure(
                FailureReason::Decode,
                "not a source topic of this pipeline".into(),
            );
        };
        match source.decoder.decode(payload, &mut self.schemas) {
            Ok(value) => Ok(Ok(value)),
            Err(DecodeFailure::Record { reason, message }) => failure(reason, message),
            Err(DecodeFailure::RegistryUnavailable { message, retry_in }) => {
                Err(ProcessError::RegistryUnavailable { message, retry_in })
            }
        }
    }

    /// Runs one consumed record through the steps and encodes what comes out
    /// for its sinks. On a [`Failure`] (the input's, see the module docs)
    /// the caller dead-letters the input record and produces none of its
    /// outputs; otherwise it produces [`Produced::outputs`] and
    /// dead-letters each of [`Produced::failed`]. A [`ProcessError`] is not
    /// the record's fault and is returned apart.
    pub fn process(
        &mut self,
        origin: &Origin,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
        stores: &mut dyn TaskStores,
    ) -> Result<Result<Produced, Failure>, ProcessError> {
        if let Some(table) = self
            .tables
            .iter()
            .find(|(t, _)| *t == origin.topic)
            .map(|(_, table)| table.clone())
        {
            return self.update_table(&table, origin, key, payload, stores);
        }
        let at = format!("source {}", origin.topic);
        let value = match self.decode(origin, payload, &at)? {
            Ok(value) => value,
            Err(failure) => return Ok(Err(failure)),
        };
        let records = vec![Flowing {
            record: Record {
                key: key.map(<[u8]>::to_vec),
                value,
                timestamp,
                route: None,
            },
            emitted: None,
        }];
        let mut ctx = StepContext {
            scope: &self.scope,
            origin,
            stores,
        };
        let (records, failed) = match run_steps(&mut self.steps, 0, records, &mut ctx)? {
            Ok(ran) => ran,
            Err(failure) => return Ok(Err(failure)),
        };
        Ok(self.encode_all(&ctx, records, failed))
    }

    /// Whether any step has timers (see [`Operator::on_tick`]).
    pub fn has_ticks(&self) -> bool {
        self.steps.iter().any(|s| s.wants_ticks())
    }

    /// Runs the timers of one task at wall-clock time `now_ms`: what a step
    /// emits continues through the steps after it to the sinks, as records
    /// do. Everything a timer emits comes from state, so a failure on it is
    /// that output's ([`Produced::failed`]); a [`Failure`] is a timer that
    /// failed itself, with no output to blame.
    pub fn tick(
        &mut self,
        task: i32,
        now_ms: i64,
        stores: &mut dyn TaskStores,
    ) -> Result<Result<Produced, Failure>, StateError> {
        let origin = Origin {
            topic: String::new(),
            partition: task,
            offset: -1,
        };
        let mut ctx = StepContext {
            scope: &self.scope,
            origin: &origin,
            stores,
        };
        let mut emitted = Vec::new();
        let mut failed = Vec::new();
        for i in 0..self.steps.len() {
            if !self.steps[i].wants_ticks() {
                continue;
            }
            let mut out = Vec::new();
            let kind = self.steps[i].kind();
            match self.steps[i].on_tick(&mut ctx, now_ms, &mut out) {
                Ok(()) => {}
                Err(StepError::State(e)) => return Err(e),
                Err(StepError::Record(m) | StepError::Late(m)) => {
                    return Ok(Err(Failure {
                        reason: FailureReason::Eval,
                        at: format!("steps[{i}] ({kind}) timer"),
                        message: m,
                    }));
                }
            }
            let step = &self.steps[i];
            let out = out
                .into_iter()
                .map(|record| Flowing {
                    emitted: Some(Emitted {
                        step: i,
                        kind,
                        key: record.key.clone(),
                        window: step.window_of(&record),
                    }),
                    record,
                })
                .collect();
            match run_steps(&mut self.steps, i + 1, out, &mut ctx)? {
                Ok((records, more)) => {
                    emitted.extend(records);
                    failed.extend(more);
                }
                // Unreachable (every record here was emitted by a step),
                // and handled like a timer's own failure if it happens.
                Err(failure) => return Ok(Err(failure)),
            }
        }
        Ok(self.encode_all(&ctx, emitted, failed))
    }

    /// Encodes records for their sinks. A failure on an input's own record
    /// fails it all; one on an emitted record joins `failed`.
    fn encode_all(
        &self,
        ctx: &StepContext<'_>,
        records: Vec<Flowing>,
        mut failed: Vec<FailedOutput>,
    ) -> Result<Produced, Failure> {
        let mut outputs = Vec::new();
        for Flowing { record, emitted } in records {
            let encoded = match &record.route {
                None => self
                    .sinks
                    .iter()
                    .map(|sink| encode_for(sink, &self.scope, ctx, &record, &emitted))
                    .collect::<Result<Vec<_>, _>>(),
                Some(name) => match self.sinks.iter().find(|s| &s.name == name) {
                    Some(sink) => {
                        encode_for(sink, &self.scope, ctx, &record, &emitted).map(|o| vec![o])
                    }
                    None => {
                        let known: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
                        Err(Failure {
                            reason: FailureReason::Route,
                            at: "route".to_string(),
                            message: format!(
                                "no sink named `{name}` (sinks: {})",
                                known.join(", ")
                            ),
                        })
                    }
                },
            };
            match (encoded, emitted) {
                (Ok(encoded), _) => outputs.extend(encoded),
                (Err(failure), Some(emitted)) => {
                    failed.push(FailedOutput::new(failure, emitted, &record))
                }
                (Err(failure), None) => return Err(failure),
            }
        }
        Ok(Produced { outputs, failed })
    }

    /// The operator graph, as `millrace validate` prints it.
    pub fn describe(&self, config: &PipelineConfig) -> String {
        let mut out = String::new();
        out.push_str(&format!("pipeline {}\n", config.pipeline));
        out.push_str(&format!(
            "  group {}, transactional id {}, commit every {:?}\n",
            config.group_id(),
            config.transactional_id(),
            config.commit.interval
        ));
        for Source { config: source, .. } in &self.sources {
            let schema = source
                .schema
                .as_ref()
                .map(|s| format!(", reader schema {}", s.display()))
                .unwrap_or_default();
            let table = source
                .table
                .as_ref()
                .map(|t| format!(" -> table {t}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  source  {} ({}{schema}, start {}){table}\n",
                source.topic, source.format, source.start
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("    [{i}] {}\n", step.describe()));
        }
        let routed = self.steps.iter().any(|s| s.kind() == "route");
        out.push_str(if routed {
            "  to the sink the route names:\n"
        } else {
            "  to every sink:\n"
        });
        for sink in &self.sinks {
            let key = sink
                .key
                .as_ref()
                .map(|k| format!(", key {k}"))
                .unwrap_or_default();
            let schema = match &sink.encoder {
                ValueEncoder::Avro(avro_sink) => format!(", subject {}", avro_sink.subject),
                ValueEncoder::Json | ValueEncoder::Waveform => String::new(),
            };
            out.push_str(&format!(
                "  sink    {} -> {} ({}{schema}{key})\n",
                sink.name, sink.topic, sink.format
            ));
        }
        out.push_str(&format!("  dead letters -> {}\n", self.dead_letter_topic));
        out
    }
}

/// The decoder of a source; the error is about its `schema` field.
fn source_decoder(source: &SourceConfig) -> Result<ValueDecoder, String> {
    match source.format {
        Format::Json => Ok(ValueDecoder::Json),
        Format::Waveform => Ok(ValueDecoder::Waveform),
        Format::Avro => {
            let reader = source
                .schema
                .as_deref()
                .map(avro::load_schema)
                .transpose()?;
            Ok(ValueDecoder::Avro(avro::Decoder::new(reader)))
        }
    }
}

/// The encoder of a sink (an Avro one still to be registered); the error
/// names the field it is about.
fn sink_encoder(sink: &SinkConfig) -> Result<ValueEncoder, (&'static str, String)> {
    match sink.format {
        Format::Json => Ok(ValueEncoder::Json),
        Format::Waveform => Ok(ValueEncoder::Waveform),
        Format::Avro => {
            let path = sink.schema.as_deref().ok_or((
                "schema",
                "required with format avro: the .avsc file records are written with".to_string(),
            ))?;
            let schema = avro::load_schema(path).map_err(|e| ("schema", e))?;
            let strategy = sink.subject_strategy.unwrap_or_default();
            let subject = avro::subject(strategy, &sink.topic, &schema)
                .map_err(|e| ("subject_strategy", e))?;
            Ok(ValueEncoder::Avro(AvroSink {
                schema,
                subject,
                auto_register: sink.auto_register.unwrap_or(true),
                encoder: None,
            }))
        }
    }
}

fn encode_for(
    sink: &Sink,
    scope: &Scope,
    ctx: &StepContext<'_>,
    record: &Record,
    emitted: &Option<Emitted>,
) -> Result<Output, Failure> {
    let key = match &sink.key {
        None => record.key.clone(),
        Some(expr) => {
            let value = expr
                .eval(scope, &ctx.input(record))
                .map_err(|message| Failure {
                    reason: FailureReason::Eval,
                    at: format!("sinks.{}.key", sink.name),
                    message,
                })?;
            json_to_key(&value)
        }
    };
    let payload = sink
        .encoder
        .encode(&record.value)
        .map_err(|message| Failure {
            reason: FailureReason::Encode,
            at: format!("sinks.{}", sink.name),
            message,
        })?;
    Ok(Output {
        topic: sink.topic.clone(),
        key,
        payload,
        timestamp: record.timestamp,
        emitted: emitted.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn pipeline(yaml: &str) -> Pipeline {
        let config = parse(yaml, Path::new("t.yaml"), &|_| None).expect("parses");
        Pipeline::build(&config).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn run(
        p: &mut Pipeline,
        key: Option<&[u8]>,
        payload: &[u8],
        ts: Option<i64>,
    ) -> Result<Vec<Output>, Failure> {
        p.process(
            &origin(),
            key,
            Some(payload),
            ts,
            &mut crate::state::NoStores { task: 1 },
        )
        .expect("no state involved")
        .map(outputs_only)
    }

    /// The outputs of a record none of whose outputs failed.
    fn outputs_only(produced: Produced) -> Vec<Output> {
        assert_eq!(produced.failed, []);
        produced.outputs
    }

    fn origin() -> Origin {
        Origin {
            topic: "in".into(),
            partition: 1,
            offset: 9,
        }
    }

    const ROUTED: &str = r#"
pipeline: p
sources: [{topic: in}]
steps:
  - filter: "value.v != 3"
  - set: {double: "value.v * 2"}
  - rekey: "value.device"
  - route: 'value.v > 5 ? "high" : (value.v < 0 ? "nowhere" : "low")'
sinks:
  high: {topic: out-high}
  low: {topic: out-low, key: '"fixed"'}
"#;

    #[test]
    fn records_flow_through_steps_to_the_routed_sink() {
        let mut p = pipeline(ROUTED);
        let out = run(&mut p, Some(b"k"), br#"{"v": 7, "device": "d1"}"#, Some(5)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "out-high");
        assert_eq!(out[0].key.as_deref(), Some(&b"d1"[..]));
        let v: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(v, serde_json::json!({"v": 7, "device": "d1", "double": 14}));
        assert_eq!(out[0].timestamp, Some(5));

        let out = run(&mut p, None, br#"{"v": 1, "device": "d1"}"#, None).unwrap();
        assert_eq!(out[0].topic, "out-low");
        assert_eq!(out[0].key.as_deref(), Some(&b"fixed"[..]));
    }

    #[test]
    fn filtered_records_produce_nothing() {
        let mut p = pipeline(ROUTED);
        let out = run(&mut p, None, br#"{"v": 3, "device": "d"}"#, None);
        assert_eq!(out, Ok(vec![]));
    }

    #[test]
    fn failures_say_where_and_why() {
        let mut p = pipeline(ROUTED);
        let e = run(&mut p, None, b"nope", None).unwrap_err();
        assert_eq!(e.reason, FailureReason::Decode);
        let e = run(&mut p, None, br#"{"w": 1}"#, None).unwrap_err();
        assert_eq!(
            (e.reason, e.at.as_str()),
            (FailureReason::Eval, "steps[0] (filter)")
        );
        let e = run(&mut p, None, br#"{"v": -1, "device": "d"}"#, None).unwrap_err();
        assert_eq!(e.reason, FailureReason::Route);
        assert!(e.message.contains("nowhere"), "{e}");
    }

    #[test]
    fn without_route_every_sink_gets_the_record() {
        let mut p = pipeline(
            "
pipeline: p
sources: [{topic: in}]
sinks: {a: {topic: ta}, b: {topic: tb}}
",
        );
        let out = run(&mut p, None, b"{}", None).unwrap();
        let topics: Vec<&str> = out.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["ta", "tb"]);
    }

    const READING: &str = r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "int"}
    ]}"#;

    const ALERT: &str = r#"{"type": "record", "name": "Alert", "namespace": "t", "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "long"},
        {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["WARN", "CRIT"]}}
    ]}"#;

    /// An Avro-to-Avro pipeline whose sink is registered as id 20 and whose
    /// source's writer schema is cached as id 10, so no registry is asked.
    fn avro_pipeline(dir: &Path) -> Pipeline {
        std::fs::write(dir.join("reading.avsc"), READING).unwrap();
        std::fs::write(dir.join("alert.avsc"), ALERT).unwrap();
        let yaml = format!(
            r#"
pipeline: p
registry: {{url: "http://127.0.0.1:9"}}
sources: [{{topic: in, format: avro, schema: "{dir}/reading.avsc"}}]
steps:
  - set: {{level: 'value.hr > 140 ? "CRIT" : "WARN"'}}
sinks:
  out: {{topic: alerts, format: avro, schema: "{dir}/alert.avsc", subject_strategy: record_name}}
"#,
            dir = dir.display()
        );
        let mut p = pipeline(&yaml);
        let reading = avro::load_schema(&dir.join("reading.avsc")).unwrap();
        p.schemas.insert(10, reading);
        for sink in &mut p.sinks {
            if let ValueEncoder::Avro(a) = &mut sink.encoder {
                assert_eq!(a.subject, "t.Alert");
                a.encoder = Some(avro::Encoder::new(a.schema.clone(), 20));
            }
        }
        p
    }

    #[test]
    fn avro_records_are_decoded_transformed_and_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = avro_pipeline(dir.path());
        let reader = avro::load_schema(&dir.path().join("reading.avsc")).unwrap();
        let input = avro::Encoder::new(reader, 10)
            .encode(&serde_json::json!({"device": "bed-7", "hr": 150}))
            .unwrap();
        let out = run(&mut p, None, &input, None).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload[..5], [0, 0, 0, 0, 20]);
        let mut schemas = SchemaCache::new(None);
        schemas.insert(
            20,
            avro::load_schema(&dir.path().join("alert.avsc")).unwrap(),
        );
        let back = avro::Decoder::new(None)
            .decode(&out[0].payload, &mut schemas)
            .unwrap();
        assert_eq!(
            back,
            serde_json::json!({"device": "bed-7", "hr": 150, "level": "CRIT"})
        );
    }

    #[test]
    fn avro_failures_have_distinct_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = avro_pipeline(dir.path());
        let reason = |p: &mut Pipeline, bytes: &[u8]| run(p, None, bytes, None).unwrap_err().reason;
        assert_eq!(reason(&mut p, b"{}"), FailureReason::WrongMagic);
        assert_eq!(reason(&mut p, &[0, 0, 0]), FailureReason::Truncated);
        assert_eq!(
            reason(&mut p, &[0, 0, 0, 0, 10, 2]),
            FailureReason::Truncated
        );
        assert_eq!(
            reason(&mut p, &[0, 0, 0, 0, 10, 0, 0, 0]),
            FailureReason::Decode
        );
        // The step sets a symbol the sink's enum lacks: an encode failure
        // naming the field.
        let mut bad = avro_pipeline(dir.path());
        bad.steps.clear();
        let reader = avro::load_schema(&dir.path().join("reading.avsc")).unwrap();
        let input = avro::Encoder::new(reader, 10)
            .encode(&serde_json::json!({"device": "d", "hr": 1}))
            .unwrap();
        let e = run(&mut bad, None, &input, None).unwrap_err();
        assert_eq!(e.reason, FailureReason::Encode);
        assert!(e.message.contains("field `level`"), "{e}");
    }

    #[test]
    fn an_unreachable_registry_holds_the_record_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = avro_pipeline(dir.path());
        // Schema id 11 is not cached; the registry at 127.0.0.1:9 does not
        // answer.
        let result = p.process(
            &origin(),
            None,
            Some(&[0, 0, 0, 0, 11, 2, 0x61, 4]),
            None,
            &mut crate::state::NoStores { task: 1 },
        );
        assert!(
            matches!(result, Err(ProcessError::RegistryUnavailable { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn the_avro_example_turns_readings_into_alerts() {
        // Paths in the example are relative to the repository root, where
        // unit tests run.
        let config = crate::config::load(Path::new("config/vitals-alerts-avro.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut p = Pipeline::build(&config).unwrap_or_else(|e| panic!("{e:?}"));
        let reading = avro::load_schema(Path::new("schemas/vitals-reading.avsc")).unwrap();
        let alert = avro::load_schema(Path::new("schemas/alert.avsc")).unwrap();
        p.schemas.insert(1, reading.clone());
        for sink in &mut p.sinks {
            if let ValueEncoder::Avro(a) = &mut sink.encoder {
                a.encoder = Some(avro::Encoder::new(a.schema.clone(), 2));
            }
        }
        let input = avro::Encoder::new(reading, 1)
            .encode(&serde_json::json!({
                "device": "bed-7", "ts": 1_767_225_600_000i64, "seq": 41, "hr": 152,
                "spo2": 97, "temp_c": 36.6, "resp_rate": null, "battery": 0.81
            }))
            .unwrap();
        let origin = Origin {
            topic: "vitals-avro".into(),
            partition: 0,
            offset: 0,
        };
        let out = p
            .process(
                &origin,
                None,
                Some(&input),
                None,
                &mut crate::state::NoStores { task: 0 },
            )
            .unwrap()
            .map(outputs_only)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.as_deref(), Some(&b"bed-7"[..]));
        let mut schemas = SchemaCache::new(None);
        schemas.insert(2, alert);
        let back = avro::Decoder::new(None)
            .decode(&out[0].payload, &mut schemas)
            .unwrap();
        assert_eq!(
            back,
            serde_json::json!({
                "device": "bed-7", "ts": 1_767_225_600_000i64, "kind": "TACHYCARDIA",
                "severity": "WARNING", "value": 152.0, "threshold": 140.0,
                "message": "heart rate 152 bpm outside 40-140 bpm"
            })
        );
    }

    const JOINED: &str = r#"
pipeline: p
sources:
  - {topic: in}
  - {topic: devices-topic, table: devices}
steps:
  - join: {table: devices, into: device}
sinks: {out: {topic: out}}
"#;

    fn process_from(
        p: &mut Pipeline,
        stores: &mut crate::state::MemStores,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<Vec<Output>, Failure> {
        let origin = Origin {
            topic: topic.into(),
            partition: 0,
            offset: 1,
        };
        p.process(&origin, Some(key), payload, Some(5), stores)
            .expect("memory stores do not fail")
            .map(outputs_only)
    }

    fn process_record(
        p: &mut Pipeline,
        stores: &mut crate::state::MemStores,
        key: &str,
        value: &str,
    ) -> Result<Produced, Failure> {
        let origin = Origin {
            topic: "in".into(),
            partition: 0,
            offset: 1,
        };
        p.process(
            &origin,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            Some(5),
            stores,
        )
        .expect("memory stores do not fail")
    }

    /// The (key, start, count) of window results.
    fn results(outputs: &[Output]) -> Vec<(String, i64, i64)> {
        outputs
            .iter()
            .map(|o| {
                let v: serde_json::Value = serde_json::from_slice(&o.payload).expect("json");
                (
                    v["key"].as_str().unwrap_or_default().to_string(),
                    v["start"].as_i64().unwrap_or(-1),
                    v["count"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    const WINDOW_ROUTED: &str = r#"
pipeline: p
sources: [{topic: in}]
steps:
  - filter: "value.t >= 0"
  - window: {type: tumbling, size: 10s, time: value.t, aggregates: [count]}
  - route: 'value.key == "bad" ? "nowhere" : "out"'
sinks: {out: {topic: out}}
"#;

    #[test]
    fn a_window_result_that_fails_is_dead_lettered_alone_and_the_window_closes() {
        let mut p = pipeline(WINDOW_ROUTED);
        let mut stores = crate::state::MemStores::default();
        for (key, t) in [("bad", 1), ("bad", 2), ("good", 3)] {
            let produced = process_record(&mut p, &mut stores, key, &format!(r#"{{"t": {t}}}"#));
            assert_eq!(produced, Ok(Produced::default()), "windows open");
        }
        // Closes both windows: good's result flows, bad's fails alone.
        let closing = process_record(&mut p, &mut stores, "good", r#"{"t": 10000}"#)
            .expect("not the input's failure");
        assert_eq!(results(&closing.outputs), [("good".to_string(), 0, 1)]);
        assert_eq!(closing.outputs[0].emitted.as_ref().map(|e| e.step), Some(1));
        let [failed] = closing.failed.as_slice() else {
            panic!("one failed output: {closing:?}");
        };
        assert_eq!(failed.failure.reason, FailureReason::Route);
        assert_eq!(failed.emitted.step_name(), "steps[1] (window)");
        assert_eq!(failed.emitted.key.as_deref(), Some(&b"bad"[..]));
        assert_eq!(failed.emitted.window, Some((0, 10_000)));
        assert_eq!(failed.timestamp, Some(10_000));
        let value: serde_json::Value = serde_json::from_slice(&failed.payload).expect("json");
        assert_eq!(value["count"], 2);
        // The close committed: later records of the partition go on, and
        // the window does not come back.
        let later = process_record(&mut p, &mut stores, "good", r#"{"t": 10001}"#);
        assert_eq!(later, Ok(Produced::default()));
        // A failure before the window is still the input's.
        let input = process_record(&mut p, &mut stores, "good", r#"{"t": "x"}"#);
        assert_eq!(
            input.map_err(|f| f.at),
            Err("steps[0] (filter)".to_string())
        );
    }

    #[test]
    fn a_failing_timer_output_does_not_hold_back_the_others() {
        let mut p = pipeline(
            r#"
pipeline: p
sources: [{topic: in}]
steps:
  - stale: {after: 1s}
  - set: {n: 'value.key == "eval" ? value.missing : 1'}
  - route: 'value.key == "bad" ? "nowhere" : "out"'
sinks: {out: {topic: out}}
"#,
        );
        let mut stores = crate::state::MemStores::default();
        for key in ["bad", "eval", "good"] {
            assert_eq!(
                process_record(&mut p, &mut stores, key, "{}"),
                Ok(Produced::default())
            );
        }
        let ticked = p
            .tick(0, 10_000, &mut stores)
            .expect("memory stores")
            .expect("not the timer's own failure");
        assert_eq!(ticked.outputs.len(), 1, "{ticked:?}");
        let failed: Vec<(FailureReason, &str)> = ticked
            .failed
            .iter()
            .map(|f| (f.failure.reason, f.failure.at.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                (FailureReason::Eval, "steps[1] (set)"),
                (FailureReason::Route, "route")
            ]
        );
        // The timer's state committed: nothing fires again.
        let again = p.tick(0, 11_000, &mut stores).expect("memory stores");
        assert_eq!(again, Ok(Produced::default()));
        // A record of a stale key triggers an event from state: a failure
        // on it is that output's too, and the record's other effects stand.
        let resumed = process_record(&mut p, &mut stores, "bad", "{}").expect("not the input's");
        assert_eq!(resumed.failed.len(), 1);
        assert_eq!(resumed.failed[0].emitted.step_name(), "steps[0] (stale)");
    }

    #[test]
    fn table_records_fill_the_table_and_joins_read_it() {
        let mut p = pipeline(JOINED);
        assert_eq!(p.stores(), ["devices"]);
        assert_eq!(p.table_topics(), ["devices-topic"]);
        let mut stores = crate::state::MemStores::default();
        let row = br#"{"ward": "A"}"#;
        let out = process_from(&mut p, &mut stores, "devices-topic", b"d1", Some(row));
        assert!(out.expect("applied").is_empty(), "tables produce nothing");
        let out =
            process_from(&mut p, &mut stores, "in", b"d1", Some(br#"{"hr": 61}"#)).expect("joined");
        let value: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"hr": 61, "device": {"ward": "A"}})
        );
        // A tombstone deletes the row.
        process_from(&mut p, &mut stores, "devices-topic", b"d1", None).expect("deleted");
        let out =
            process_from(&mut p, &mut stores, "in", b"d1", Some(br#"{"hr": 62}"#)).expect("joined");
        let value: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(value["device"], serde_json::Value::Null);
        // A bad table record is a dead letter, and the table is unchanged.
        let failure =
            process_from(&mut p, &mut stores, "devices-topic", b"d2", Some(b"{oops")).unwrap_err();
        assert_eq!(failure.reason, FailureReason::Decode);
    }

    #[test]
    fn join_configuration_mistakes_are_named() {
        let config = |yaml: &str| parse(yaml, Path::new("t.yaml"), &|_| None).expect("parses");
        let issues = |yaml: &str| match Pipeline::build(&config(yaml)) {
            Ok(_) => panic!("builds"),
            Err(issues) => issues,
        };
        let found = issues(
            r#"
pipeline: p
sources: [{topic: in}, {topic: t, table: devices, start: latest}]
steps:
  - rekey: value.other
  - join: {table: devicez}
  - join: {table: devices}
sinks: {out: {topic: out}}
"#,
        );
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sources[1].start",
                "steps[1].join.table",
                "steps[1].join",
                "steps[2].join"
            ],
            "{found:?}"
        );
        assert!(found[1].1.contains("tables: devices"), "{found:?}");
        let found = issues(
            r#"
pipeline: p
sources: [{topic: in}, {topic: t, table: dedup-0}]
steps:
  - dedup: {id: value.id, ttl: 1m}
sinks: {out: {topic: out}}
"#,
        );
        assert_eq!(found[0].0, "sources[1].table", "{found:?}");
    }
}

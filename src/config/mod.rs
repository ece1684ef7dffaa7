//! The pipeline file: what a user writes in `config/<pipeline>.yaml`.
//!
//! Every field is documented here, next to its default; the book's
//! configuration reference (docs/src/configuration.md) mirrors these docs.
//! Loading is two passes: [`load`] parses the YAML into these structs
//! (unknown fields are errors, so a typo never silently falls back to a
//! default), applies environment overrides, and then [`validate`](validate::validate) checks what serde
//! cannot: expressions compile, names are unique, sinks exist. Every error
//! names the file and the field path.

mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use validate::validate;
pub(crate) use validate::{check_name, check_topic};

/// Environment variable that overrides `kafka.bootstrap`.
pub const ENV_BOOTSTRAP: &str = "MILLRACE_BOOTSTRAP";
/// Environment variable that overrides `kafka.instance_id`.
pub const ENV_INSTANCE_ID: &str = "MILLRACE_INSTANCE_ID";
/// Environment variable that overrides `registry.url`.
pub const ENV_REGISTRY_URL: &str = "MILLRACE_REGISTRY_URL";
/// Environment variable that overrides `registry.username`.
pub const ENV_REGISTRY_USER: &str = "MILLRACE_REGISTRY_USER";
/// Environment variable that overrides `registry.password`.
pub const ENV_REGISTRY_PASSWORD: &str = "MILLRACE_REGISTRY_PASSWORD";

/// A whole pipeline: where records come from, what happens to them, where
/// they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name of the pipeline. Used in the default group id, the transactional
    /// id and the default dead-letter topic. Letters, digits, `.`, `_`, `-`.
    pub pipeline: String,
    /// How to reach Kafka and how this instance identifies itself.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topics to consume. At least one.
    pub sources: Vec<SourceConfig>,
    /// Steps applied in order to every record. May be empty (a copy pipeline).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Named outputs. Without a `route` step every record goes to every sink;
    /// with one, to the sink whose name the route expression returns.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Where records that cannot be decoded or evaluated go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Transaction cadence.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Partition and replication settings used by `millrace topics create`.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// The operations HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Local state of stateful steps.
    #[serde(default)]
    pub state: StateConfig,
    /// The Confluent-compatible schema registry that `format: avro` sources
    /// and sinks use. Required when any of them does.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
}

/// Where the schema registry is and how to authenticate to it.
///
/// ```yaml
/// registry:
///   url: http://127.0.0.1:8081
///   username: millrace
///   password: ${REGISTRY_PASSWORD}
/// ```
///
/// Every field may reference environment variables as `${NAME}`;
/// `MILLRACE_REGISTRY_URL`, `MILLRACE_REGISTRY_USER` and
/// `MILLRACE_REGISTRY_PASSWORD` override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the registry's REST API (`http://` or `https://`).
    pub url: String,
    /// User name for HTTP basic authentication. Default: none.
    pub username: Option<String>,
    /// Password for HTTP basic authentication (with `username`).
    pub password: Option<String>,
}

/// Where stateful steps keep their local state, and how much memory it may
/// use. The local state is a cache of the changelog topics: deleting it
/// costs a full restore, never data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the local stores; a pipeline's tasks live in
    /// `<dir>/<group_id>/task-<partition>`. Default
    /// `$XDG_STATE_HOME/millrace` (`~/.local/state/millrace`).
    pub dir: PathBuf,
    /// How long the local state of a task this instance no longer owns is
    /// kept (in case the task comes back, which saves a full restore)
    /// before it is deleted. Deleting it matters for correctness too: a
    /// copy kept for days could hold rows whose deletes were compacted out
    /// of the changelog meanwhile. Default 10 minutes (Kafka Streams'
    /// `state.cleanup.delay.ms`).
    #[serde(with = "humantime_serde")]
    pub cleanup_delay: Duration,
    /// RocksDB block cache shared by every store of the process, in bytes.
    /// Default 64 MiB.
    pub block_cache_bytes: usize,
    /// RocksDB write-buffer (memtable) budget shared by every store of the
    /// process, in bytes. Default 64 MiB.
    pub write_buffer_bytes: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        StateConfig {
            dir: base.join("millrace"),
            cleanup_delay: Duration::from_secs(600),
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
        }
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092`; `MILLRACE_BOOTSTRAP`
    /// overrides it.
    pub bootstrap: String,
    /// Consumer group id. Default `millrace-<pipeline>`. State belongs to
    /// the group: it names the changelog topics
    /// (`<group_id>-<store>-changelog`) and the state directory, so a new
    /// group id starts with empty state (and reprocesses from `start`).
    pub group_id: Option<String>,
    /// Stable identity of this instance, used for the transactional id
    /// (`millrace-<pipeline>-<instance_id>`) so that a restarted instance
    /// fences its previous incarnation at once. Default: the host name;
    /// `MILLRACE_INSTANCE_ID` overrides it. Two live instances of one
    /// pipeline must not share it.
    pub instance_id: Option<String>,
    /// Use `instance_id` as `group.instance.id` (KIP-345 static membership):
    /// an instance restarted after a crash takes its partitions back at
    /// once, where a dynamic member would first wait for the dead member's
    /// session to expire (`session.timeout.ms`, 45 s by default). The
    /// instance id is already stable and unique per live instance — the
    /// transactional id is built from it, and a restart must fence its
    /// predecessor — so it is fit for the group too. A graceful stop
    /// leaves the group unless `shutdown.leave_group` is `false`.
    /// Default `true`.
    pub static_membership: bool,
    /// Extra librdkafka properties for both the consumer and the producer
    /// (e.g. `security.protocol`, `sasl.username`). Values may reference
    /// environment variables as `${NAME}` so secrets stay out of the file.
    pub properties: BTreeMap<String, String>,
    /// Extra properties for the consumer only (e.g. `session.timeout.ms`).
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra properties for the producer only (e.g. `linger.ms`).
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:9092".to_string(),
            group_id: None,
            instance_id: None,
            static_membership: true,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

/// One consumed topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Topic name.
    pub topic: String,
    /// Encoding of record values. Default `json`.
    #[serde(default)]
    pub format: Format,
    /// `format: avro` only: the reader schema (an `.avsc` file; a relative
    /// path is relative to the working directory). Records written with
    /// another version of the schema are resolved to it by Avro's rules
    /// (added fields take their defaults, removed fields are dropped,
    /// `int` widens to `long`, `float` or `double`, ...), so steps always
    /// see the same shape. Default: each record is read with the schema it
    /// was written with.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Where a group with no committed offset starts: `earliest` (default),
    /// `latest`, or a point in time (RFC 3339 such as `2026-11-01T00:00:00Z`,
    /// or milliseconds since the epoch). Ignored once the group has committed.
    #[serde(default)]
    pub start: StartPosition,
    /// Makes this source a table named so: its records are not processed by
    /// the steps but keep the latest value per record key (a record without
    /// a value deletes the key) in a state store of that name, which `join`
    /// steps look up. Read it from a compacted topic co-partitioned with the
    /// other sources. A task reads its table partitions up to their end
    /// before its other sources, so a fresh start joins against the whole
    /// table.
    #[serde(default)]
    pub table: Option<String>,
}

/// Record value encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// UTF-8 JSON, one document per record.
    #[default]
    Json,
    /// Avro in the Confluent wire format (magic byte 0, the schema id as a
    /// big-endian 4-byte integer, the Avro binary body), with schemas in the
    /// schema registry (see [`RegistryConfig`]).
    Avro,
    /// Millrace's waveform batches: a header (device, first-sample time,
    /// sample rate) and little-endian f32 samples (see
    /// [`crate::telemetry::waveform`]); decoded as `{"device", "t0",
    /// "rate", "samples"}`.
    Waveform,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Json => f.write_str("json"),
            Format::Avro => f.write_str("avro"),
            Format::Waveform => f.write_str("waveform"),
        }
    }
}

/// Start position for a consumer group that has no committed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Timestamp(ms) => write!(f, "timestamp {ms} ms"),
        }
    }
}

impl StartPosition {
    /// Parses `earliest`, `latest`, an RFC 3339 time or epoch milliseconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "earliest" => return Ok(StartPosition::Earliest),
            "latest" => return Ok(StartPosition::Latest),
            _ => {}
        }
        if let Ok(ms) = text.parse::<i64>() {
            return if ms >= 0 {
                Ok(StartPosition::Timestamp(ms))
            } else {
                Err(format!("timestamp {ms} is negative"))
            };
        }
        let time = humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "`{text}` is not `earliest`, `latest`, an RFC 3339 time \
                 (2026-11-01T00:00:00Z) or milliseconds since the epoch"
            )
        })?;
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("`{text}` is before 1970"))?
            .as_millis();
        i64::try_from(ms)
            .map(StartPosition::Timestamp)
            .map_err(|_| format!("`{text}` is too far in the future"))
    }
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        StartPosition::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One step of the pipeline. Written in YAML as a one-key map, e.g.
/// `- filter: "value.temp > 30"`. Expressions are CEL
/// (<https://cel.dev>); they see `value`, `key`, `topic`, `partition`,
/// `offset` and `timestamp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StepConfig {
    /// Keep records for which the expression is `true`; drop the others.
    Filter(String),
    /// Replace the value with the expression's result
    /// (e.g. `{"id": value.id, "f": value.c * 1.8 + 32}`).
    Map(String),
    /// Keep only these fields of the value (dotted paths reach into objects).
    Project(Vec<String>),
    /// Set (add or overwrite) fields of the value, each to an expression.
    Set(BTreeMap<String, String>),
    /// Replace the record key with the expression's result (strings as UTF-8,
    /// numbers and booleans as text, objects and lists as JSON, null for none).
    Rekey(String),
    /// Choose the sink by name: the expression returns a sink name.
    Route(String),
    /// Aggregate per key over event-time windows (tumbling, hopping,
    /// session); see [`WindowConfig`].
    Window(WindowConfig),
    /// Drop records whose id was seen within a ttl; see [`DedupConfig`].
    Dedup(DedupConfig),
    /// Running aggregate per key; see [`ReduceConfig`].
    Reduce(ReduceConfig),
    /// Enrich with the latest value of a table; see [`JoinConfig`].
    Join(JoinConfig),
    /// Alert when a key goes silent, and when it resumes; see
    /// [`StaleConfig`].
    Stale(StaleConfig),
    /// Beats and heart rate from waveform batches; see [`RpeaksConfig`].
    Rpeaks(RpeaksConfig),
    /// Alert when a number crosses a limit; see [`ThresholdStepConfig`].
    Threshold(ThresholdStepConfig),
}

impl StepConfig {
    /// The step's keyword, as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::Filter(_) => "filter",
            StepConfig::Map(_) => "map",
            StepConfig::Project(_) => "project",
            StepConfig::Set(_) => "set",
            StepConfig::Rekey(_) => "rekey",
            StepConfig::Route(_) => "route",
            StepConfig::Window(_) => "window",
            StepConfig::Dedup(_) => "dedup",
            StepConfig::Reduce(_) => "reduce",
            StepConfig::Join(_) => "join",
            StepConfig::Stale(_) => "stale",
            StepConfig::Rpeaks(_) => "rpeaks",
            StepConfig::Threshold(_) => "threshold",
        }
    }
}

/// `window`: aggregates per record key over event-time windows.
///
/// ```yaml
/// - window:
///     type: tumbling
///     size: 10s
///     value: value.hr
///     aggregates: [count, mean, p99]
/// ```
///
/// Emits `{"key", "start", "end", <aggregates>}` keyed by the record key,
/// timestamped with the window end. Records need a key (use `rekey`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Name of the state store. Default `window-<index>` (the step's index
    /// in `steps`). Letters, digits, `.`, `_`, `-`; unique in the pipeline.
    #[serde(default)]
    pub name: Option<String>,
    /// `tumbling` (fixed, back-to-back windows of `size`), `hopping`
    /// (windows of `size` starting every `advance`, overlapping) or
    /// `session` (activity separated by more than `gap`). Required.
    #[serde(rename = "type")]
    pub window_type: WindowType,
    /// Length of tumbling and hopping windows (e.g. `10s`). Required for
    /// them, refused for sessions. Windows are aligned to the epoch:
    /// `[k * advance, k * advance + size)`.
    #[serde(default, with = "humantime_serde")]
    pub size: Option<Duration>,
    /// Hopping only: distance between window starts, `0 < advance <= size`.
    /// Required for hopping windows.
    #[serde(default, with = "humantime_serde")]
    pub advance: Option<Duration>,
    /// Session only: the inactivity that ends a session. Required for
    /// sessions.
    #[serde(default, with = "humantime_serde")]
    pub gap: Option<Duration>,
    /// Expression for the event time in milliseconds since the epoch (int
    /// or double). Default: the record timestamp (a record with neither is
    /// dead-lettered).
    #[serde(default)]
    pub time: Option<String>,
    /// Expression for the number to aggregate. Required unless
    /// `aggregates` is only `[count]`.
    #[serde(default)]
    pub value: Option<String>,
    /// What to compute: `count`, `sum`, `min`, `max`, `mean` and quantiles
    /// `p50`, `p95`, `p99` (any `p<x>`, 0 < x < 100, estimated within 1%).
    /// Default `[count]`.
    #[serde(default = "default_aggregates")]
    pub aggregates: Vec<crate::steps::Aggregate>,
    /// Allowed out-of-orderness: the watermark is the largest event time
    /// seen in the partition minus `lateness`. Default `0s`.
    #[serde(default, with = "humantime_serde")]
    pub lateness: Duration,
    /// How long a window keeps accepting records after its end: it closes
    /// when the watermark reaches `end + grace`. Default `0s`.
    #[serde(default, with = "humantime_serde")]
    pub grace: Duration,
    /// `final` (default): one output per key and window, when it closes.
    /// `update`: every record emits the updated aggregates of the windows
    /// it changed.
    #[serde(default)]
    pub emit: Emit,
}

/// The kinds of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    Tumbling,
    Hopping,
    Session,
}

/// When a window step emits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// Once per key and window, when the window closes.
    #[default]
    Final,
    /// On every record, for every window it updated.
    Update,
}

/// `dedup`: drops records whose id was seen shortly before.
///
/// ```yaml
/// - dedup:
///     id: value.reading_id
///     ttl: 10m
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Name of the state store. Default `dedup-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Expression for the id (a string or a number). Required.
    pub id: String,
    /// A record is dropped when a record with the same id was seen (in the
    /// same partition) less than `ttl` before it, in event time; every
    /// sighting restarts the ttl. Ids are forgotten once the partition's
    /// largest event time passes them by `ttl`. Required.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Expression for the event time in milliseconds. Default: the record
    /// timestamp.
    #[serde(default)]
    pub time: Option<String>,
}

/// `rpeaks`: R-peak detection on waveform batches (a `format: waveform`
/// source), per key; emits a record per beat with the instant and rolling
/// heart rate.
///
/// ```yaml
/// - rpeaks: {refractory: 200ms, rolling_beats: 8}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpeaksConfig {
    /// Name of the state store. Default `rpeaks-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Shortest time between two beats. Default 200 ms (300 bpm).
    #[serde(default = "default_refractory", with = "humantime_serde")]
    pub refractory: Duration,
    /// Beats averaged for the rolling heart rate. Default 8.
    #[serde(default = "default_rolling_beats")]
    pub rolling_beats: usize,
}

fn default_refractory() -> Duration {
    Duration::from_millis(200)
}

fn default_rolling_beats() -> usize {
    8
}

/// `threshold`: an alert when `value` stays beyond a limit for `for`, and a
/// clear event when it comes back inside by `hysteresis`.
///
/// ```yaml
/// - threshold: {value: value.hr_rolling, above: 140, hysteresis: 5, for: 10s}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdStepConfig {
    /// Name of the state store. Default `threshold-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Expression for the number watched. Required.
    pub value: String,
    /// Alert when the value is greater than this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Alert when the value is less than this.
    #[serde(default)]
    pub below: Option<f64>,
    /// How far back inside the limit the value must come to clear.
    /// Default 0.
    #[serde(default)]
    pub hysteresis: f64,
    /// How long (event time) the breach must hold before the alert.
    /// Default 0.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub min_duration: Duration,
    /// Expression for the event time in milliseconds. Default: the record
    /// timestamp.
    #[serde(default)]
    pub time: Option<String>,
}

/// `stale`: an event when a key has sent nothing for `after` (wall clock),
/// and another when it sends again.
///
/// ```yaml
/// - stale: {after: 30s}
/// ```
///
/// Emits `{"key", "state": "stale"|"resumed", "last_seen", "silent_ms"}`
/// keyed by the record key; records themselves are not passed on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleConfig {
    /// Name of the state store. Default `stale-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Silence (wall clock since the key's latest event time) that makes a
    /// key stale. Required.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Expression for the event time in milliseconds. Default: the record
    /// timestamp.
    #[serde(default)]
    pub time: Option<String>,
}

/// `join`: enriches each record with the latest value of a table (a source
/// with `table:`) under the record's key.
///
/// ```yaml
/// sources:
///   - topic: readings
///   - topic: devices        # compacted, keyed by device id
///     table: devices
/// steps:
///   - join: {table: devices, into: device, missing: keep}
/// ```
///
/// The lookup key is the record key as read, because a task only holds
/// the table rows of its own partition: a `rekey` before a `join` is
/// refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Name of the table (a source's `table`). Required.
    pub table: String,
    /// Field of the value (an object) that receives the table's value.
    /// Default: the table's name.
    #[serde(default)]
    pub into: Option<String>,
    /// What happens to a record whose key is not in the table: `keep`
    /// (default; the field is set to null, a left join) or `drop` (an
    /// inner join).
    #[serde(default)]
    pub missing: JoinMissing,
}

/// A `join`'s treatment of records without a table row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinMissing {
    /// Pass the record on with the field set to null.
    #[default]
    Keep,
    /// Drop the record.
    Drop,
}

/// `reduce`: a running aggregate per record key, emitted on every record.
///
/// ```yaml
/// - reduce:
///     value: value.amount
///     aggregates: [count, sum, mean]
/// ```
///
/// Emits `{"key", <aggregates>}` with the record's key and timestamp.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReduceConfig {
    /// Name of the state store. Default `reduce-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Expression for the number to aggregate. Required unless
    /// `aggregates` is only `[count]`.
    #[serde(default)]
    pub value: Option<String>,
    /// `count`, `sum`, `min`, `max`, `mean` (quantiles are for windows).
    /// Default `[count]`.
    #[serde(default = "default_aggregates")]
    pub aggregates: Vec<crate::steps::Aggregate>,
    /// Optional: a key not updated for `ttl` (event time) starts afresh,
    /// and keys idle that long are deleted. Default: keys live forever.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Expression for the event time in milliseconds, used with `ttl`.
    /// Default: the record timestamp.
    #[serde(default)]
    pub time: Option<String>,
}

fn default_aggregates() -> Vec<crate::steps::Aggregate> {
    vec![crate::steps::Aggregate::Count]
}

#[cfg(test)]
mod step_config_tests {
    use super::*;

    #[test]
    fn window_step_parses_with_defaults() {
        let text = r#"
pipeline: demo
sources: [{topic: in}]
steps:
  - rekey: value.device
  - window:
      name: hr-10s
      type: hopping
      size: 10s
      advance: 5s
      time: value.ts
      value: value.hr
      aggregates: [count, mean, p99]
      grace: 2s
sinks: {out: {topic: out}}
"#;
        let c = parse(text, Path::new("p.yaml"), &|_| None).expect("parses");
        let StepConfig::Window(w) = &c.steps[1] else {
            panic!("not a window: {:?}", c.steps[1]);
        };
        assert_eq!(c.steps[1].kind(), "window");
        assert_eq!(w.name.as_deref(), Some("hr-10s"));
        assert_eq!(w.window_type, WindowType::Hopping);
        assert_eq!(w.size, Some(Duration::from_secs(10)));
        assert_eq!(w.advance, Some(Duration::from_secs(5)));
        assert_eq!(w.gap, None);
        assert_eq!(w.time.as_deref(), Some("value.ts"));
        let names: Vec<&str> = w.aggregates.iter().map(|a| a.name()).collect();
        assert_eq!(names, ["count", "mean", "p99"]);
        assert_eq!(w.lateness, Duration::ZERO);
        assert_eq!(w.grace, Duration::from_secs(2));
        assert_eq!(w.emit, Emit::Final);
        assert!(validate(&c).is_empty(), "{:?}", validate(&c));
    }

    #[test]
    fn window_typos_name_their_field() {
        let text = r#"
pipeline: demo
sources: [{topic: in}]
steps:
  - window: {type: tumbling, size: 10s, aggregates: [count, meen]}
sinks: {out: {topic: out}}
"#;
        let err = parse(text, Path::new("p.yaml"), &|_| None).unwrap_err();
        assert_eq!(err.issues[0].path, "steps[0].window.aggregates[1]", "{err}");
        assert!(err.to_string().contains("meen"), "{err}");
        let text = text.replace("aggregates: [count, meen]", "sise: 3s");
        let err = parse(&text, Path::new("p.yaml"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("sise"), "{err}");
    }

    #[test]
    fn stateful_step_errors_surface_at_their_step() {
        let text = r#"
pipeline: demo
sources: [{topic: in}]
steps:
  - window: {type: hopping, size: 5s, advance: 10s}
  - dedup: {id: value.id, ttl: 10m}
  - reduce: {value: value.x, aggregates: [count, p99]}
sinks: {out: {topic: out}}
"#;
        let c = parse(text, Path::new("p.yaml"), &|_| None).expect("parses");
        let issues = validate(&c);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["steps[0].window", "steps[2].reduce"], "{issues:?}");
        assert!(issues[0].message.contains("advance"), "{issues:?}");
        assert!(issues[1].message.contains("p99"), "{issues:?}");
    }
}

/// One output topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Topic name.
    pub topic: String,
    /// Encoding of record values. Default `json`.
    #[serde(default)]
    pub format: Format,
    /// Expression for the output key. Default: the record key as it left the
    /// steps (the source key unless a `rekey` step changed it).
    #[serde(default)]
    pub key: Option<String>,
    /// `format: avro` only, and required there: the schema records are
    /// written with (an `.avsc` file; a relative path is relative to the
    /// working directory). Registered at start under the subject
    /// `subject_strategy` names.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// `format: avro` only: the registry subject of the schema.
    /// `topic_name` (default): `<topic>-value`; `record_name`: the schema's
    /// full name; `topic_record_name`: `<topic>-<full name>`.
    #[serde(default)]
    pub subject_strategy: Option<SubjectStrategy>,
    /// `format: avro` only: register the schema at start (default `true`).
    /// With `false` the schema must already be registered under the
    /// subject, and start-up fails if it is not (for registries where only
    /// a deployment pipeline may register).
    #[serde(default)]
    pub auto_register: Option<bool>,
}

/// How a sink's registry subject is named (the Confluent serializers'
/// `subject.name.strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value`: one schema lineage per topic.
    #[default]
    TopicName,
    /// The schema's full name (`namespace.Name`): one lineage per record
    /// type, shared by every topic that carries it.
    RecordName,
    /// `<topic>-<namespace.Name>`: one lineage per record type and topic.
    TopicRecordName,
}

impl fmt::Display for SubjectStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubjectStrategy::TopicName => "topic_name",
            SubjectStrategy::RecordName => "record_name",
            SubjectStrategy::TopicRecordName => "topic_record_name",
        })
    }
}

/// The dead-letter topic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Topic name. Default `<pipeline>-dead-letter`.
    pub topic: Option<String>,
}

/// Transaction cadence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// How often the open transaction commits (outputs and consumed offsets
    /// together). Default `100ms`. Shorter means lower end-to-end latency
    /// for `read_committed` readers and more transaction overhead.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Commit early once this many records were consumed in the open
    /// transaction, whatever the interval. Default 50000.
    pub max_records: usize,
    /// Upper bound for one commit (flush of outputs plus the broker's
    /// answer). Default `60s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Commit early once the open transaction's buffered state writes pass
    /// this many bytes, whatever the interval, so memory stays bounded.
    /// Default 64 MiB.
    pub max_buffer_bytes: usize,
    /// `exactly_once` (default): outputs, changelogs and offsets commit in
    /// one Kafka transaction. `at_least_once`: no transactions; outputs and
    /// changelogs are flushed, then the consumer commits its offsets, so a
    /// crash can repeat the records since the last commit but never loses
    /// one. For comparison and for sinks that deduplicate themselves.
    pub guarantee: Guarantee,
}

/// Processing guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            interval: Duration::from_millis(100),
            max_records: 50_000,
            timeout: Duration::from_secs(60),
            max_buffer_bytes: 64 << 20,
            guarantee: Guarantee::ExactlyOnce,
        }
    }
}

/// Settings for `millrace topics create`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Partitions for every topic the pipeline creates. Default 4.
    pub partitions: i32,
    /// Replication factor. Default: the broker's
    /// `default.replication.factor` (1 on a single development broker, 3
    /// on a production cluster), as Kafka Streams does since 3.0.
    pub replication_factor: Option<i32>,
    /// Topic-level configs applied at creation (e.g. `retention.ms`).
    pub config: BTreeMap<String, String>,
}

impl TopicsConfig {
    /// The replication factor to create topics with; -1 asks the broker
    /// for its default.
    pub fn replication(&self) -> i32 {
        self.replication_factor.unwrap_or(-1)
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            partitions: 4,
            replication_factor: None,
            config: BTreeMap::new(),
        }
    }
}

/// The operations endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address for `/metrics`, `/healthz` and `/readyz`. Default
    /// `127.0.0.1:9464`; port 0 picks a free port (logged at start).
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".to_string(),
        }
    }
}

/// Graceful shutdown on SIGTERM / SIGINT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time allowed to commit the open transaction and leave the group
    /// before the process gives up and exits with an error. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Whether a static member (`kafka.static_membership`) leaves the group
    /// when it stops gracefully. `true` (the default): its partitions move
    /// to the other instances at once, as a dynamic member's do — right for
    /// scaling in. `false`: the group keeps its partitions for it until
    /// `session.timeout.ms` passes, so a rolling restart that brings it back
    /// within that time moves no partitions and restores no state
    /// elsewhere (Kubernetes StatefulSets). A crash never leaves the group.
    pub leave_group: bool,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
            leave_group: true,
        }
    }
}

impl PipelineConfig {
    /// The consumer group id.
    pub fn group_id(&self) -> String {
        self.kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("millrace-{}", self.pipeline))
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}-dead-letter", self.pipeline))
    }

    /// This instance's identity (see [`KafkaConfig::instance_id`]).
    pub fn instance_id(&self) -> String {
        self.kafka
            .instance_id
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The transactional id of this instance's producer.
    pub fn transactional_id(&self) -> String {
        format!("millrace-{}-{}", self.pipeline, self.instance_id())
    }
}

/// A configuration problem, located by file and field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path such as `steps[2].filter`; empty for the whole document.
    pub path: String,
    pub message: String,
}

/// Why a pipeline file was rejected. Lists every problem found, each with
/// its field path.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.issues.as_slice() {
            [one] => write_issue(f, &file.to_string(), one),
            many => {
                write!(f, "{file}: {} problems", many.len())?;
                for issue in many {
                    f.write_str("\n  ")?;
                    write_issue(f, &file.to_string(), issue)?;
                }
                Ok(())
            }
        }
    }
}

fn write_issue(f: &mut fmt::Formatter<'_>, file: &str, issue: &ConfigIssue) -> fmt::Result {
    if issue.path.is_empty() {
        write!(f, "{file}: {}", issue.message)
    } else {
        write!(f, "{file}: {}: {}", issue.path, issue.message)
    }
}

impl ConfigError {
    /// `Ok` when nothing was found, else every issue as one error.
    pub(crate) fn unless_empty(file: &Path, issues: Vec<ConfigIssue>) -> Result<(), ConfigError> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: file.to_path_buf(),
                issues,
            })
        }
    }

    pub(crate) fn single(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// Reads, parses, applies environment overrides and validates a pipeline
/// file.
pub fn load(file: &Path) -> Result<PipelineConfig, ConfigError> {
    let text = read_file(file)?;
    let env = |name: &str| std::env::var(name).ok();
    let config = parse(&text, file, &env)?;
    ConfigError::unless_empty(file, validate(&config))?;
    Ok(config)
}

/// The text of a configuration file, or an error naming it.
pub(crate) fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file)
        .map_err(|e| ConfigError::single(file, "", format!("cannot read the file: {e}")))
}

/// Deserializes a YAML configuration. serde_path_to_error records where in
/// the document deserialization failed, so the error names the field (e.g.
/// `sinks.out.format`) and not only the line.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let mut failed_at = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            failed_at = e.path().to_string();
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let path = if failed_at == "." {
            String::new()
        } else {
            failed_at
        };
        ConfigError::single(file, path, e.to_string())
    })
}

/// Expands `${NAME}` in one configuration value in place (see
/// [`expand_env`]); an unset variable is an error at `path`.
pub(crate) fn expand_in_place(
    value: &mut String,
    file: &Path,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    *value = expand_env(value, env).map_err(|missing| {
        ConfigError::single(
            file,
            path,
            format!("environment variable `{missing}` is not set"),
        )
    })?;
    Ok(())
}

/// Parses YAML text and applies environment overrides (`env` looks a
/// variable up; injected so tests need not touch the process environment).
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigError> {
    let mut config: PipelineConfig = from_yaml(text, file)?;
    apply_env(&mut config, file, env)?;
    Ok(config)
}

fn apply_env(
    config: &mut PipelineConfig,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(bootstrap) = env(ENV_BOOTSTRAP).filter(|b| !b.trim().is_empty()) {
        config.kafka.bootstrap = bootstrap;
    }
    if let Some(id) = env(ENV_INSTANCE_ID).filter(|b| !b.trim().is_empty()) {
        config.kafka.instance_id = Some(id);
    }
    apply_registry_env(config, file, env)?;
    let sections = [
        ("kafka.properties", &mut config.kafka.properties),
        (
            "kafka.consumer_properties",
            &mut config.kafka.consumer_properties,
        ),
        (
            "kafka.producer_properties",
            &mut config.kafka.producer_properties,
        ),
    ];
    for (section, properties) in sections {
        for (name, value) in properties.iter_mut() {
            expand_in_place(value, file, &format!("{section}.{name}"), env)?;
        }
    }
    Ok(())
}

/// Expands `${NAME}` in the `registry` section, then applies the
/// `MILLRACE_REGISTRY_*` overrides (which create the section if the file has
/// none, so a deployment can point every pipeline at its registry).
fn apply_registry_env(
    config: &mut PipelineConfig,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(registry) = config.registry.as_mut() {
        let fields = [
            ("registry.url", Some(&mut registry.url)),
            ("registry.username", registry.username.as_mut()),
            ("registry.password", registry.password.as_mut()),
        ];
        for (path, value) in fields {
            let Some(value) = value else { continue };
            expand_in_place(value, file, path, env)?;
        }
    }
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(url) = set(ENV_REGISTRY_URL) {
        config.registry.get_or_insert_with(Default::default).url = url;
    }
    if let Some(user) = set(ENV_REGISTRY_USER) {
        config
            .registry
            .get_or_insert_with(Default::default)
            .username = Some(user);
    }
    if let Some(password) = set(ENV_REGISTRY_PASSWORD) {
        config
            .registry
            .get_or_insert_with(Default::default)
            .password = Some(password);
    }
    Ok(())
}

/// Replaces `${NAME}` with the variable's value; `$${` escapes a literal `${`.
/// Returns the name of the first unset variable as the error.
pub(crate) fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            // An unterminated reference is kept literally.
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&env(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = "
pipeline: demo
sources:
  - topic: in
sinks:
  out:
    topic: out
";

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = parse(MINIMAL, Path::new("p.yaml"), &no_env).expect("parses");
        assert_eq!(c.kafka.bootstrap, "127.0.0.1:9092");
        assert_eq!(c.group_id(), "millrace-demo");
        assert_eq!(c.dead_letter_topic(), "demo-dead-letter");
        assert_eq!(c.commit.interval, Duration::from_millis(100));
        assert_eq!(c.sources[0].format, Format::Json);
        assert_eq!(c.sources[0].start, StartPosition::Earliest);
        assert_eq!(c.topics.partitions, 4);
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn unknown_field_names_its_path() {
        let text = "
pipeline: demo
sources:
  - topic: in
    fromat: json
sinks:
  out:
    topic: out
";
        let err = parse(text, Path::new("config/p.yaml"), &no_env).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("config/p.yaml: sources[0]"), "{shown}");
        assert!(shown.contains("fromat"), "{shown}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let text = "
pipeline: demo
sources: [{topic: in}]
sinks: {out: {topic: out}}
topics:
  partitions: many
";
        let err = parse(text, Path::new("p.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "topics.partitions", "{err}");
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(StartPosition::parse("latest"), Ok(StartPosition::Latest));
        assert_eq!(
            StartPosition::parse("2026-11-01T00:00:00Z"),
            Ok(StartPosition::Timestamp(1_793_491_200_000))
        );
        assert_eq!(
            StartPosition::parse("1700000000000"),
            Ok(StartPosition::Timestamp(1_700_000_000_000))
        );
        assert!(StartPosition::parse("yesterday").is_err());
    }

    #[test]
    fn bad_start_names_its_path() {
        let text = "
pipeline: demo
sources: [{topic: in, start: yesterday}]
sinks: {out: {topic: out}}
";
        let err = parse(text, Path::new("p.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "sources[0].start", "{err}");
        assert!(err.to_string().contains("yesterday"));
    }

    #[test]
    fn environment_overrides_bootstrap_and_expands_secrets() {
        let text = "
pipeline: demo
kafka:
  bootstrap: kafka:9092
  properties:
    sasl.password: ${KAFKA_PASSWORD}
    note: literal $${NOT_A_VAR}
sources: [{topic: in}]
sinks: {out: {topic: out}}
";
        let env = |name: &str| match name {
            "MILLRACE_BOOTSTRAP" => Some("10.0.0.1:9092".to_string()),
            "KAFKA_PASSWORD" => Some("s3cret".to_string()),
            _ => None,
        };
        let c = parse(text, Path::new("p.yaml"), &env).expect("parses");
        assert_eq!(c.kafka.bootstrap, "10.0.0.1:9092");
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(c.kafka.properties["note"], "literal ${NOT_A_VAR}");
    }

    #[test]
    fn registry_settings_come_from_the_file_or_the_environment() {
        let text = "
pipeline: demo
registry:
  url: http://registry:8081
  username: millrace
  password: ${REGISTRY_PASSWORD}
sources: [{topic: in}]
sinks: {out: {topic: out}}
";
        let env = |name: &str| (name == "REGISTRY_PASSWORD").then(|| "s3cret".to_string());
        let c = parse(text, Path::new("p.yaml"), &env).expect("parses");
        let r = c.registry.expect("registry");
        assert_eq!(r.url, "http://registry:8081");
        assert_eq!(r.password.as_deref(), Some("s3cret"));

        let err = parse(text, Path::new("p.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "registry.password");

        let env = |name: &str| match name {
            "MILLRACE_REGISTRY_URL" => Some("http://other:8081".to_string()),
            "MILLRACE_REGISTRY_USER" => Some("ops".to_string()),
            _ => None,
        };
        let c = parse(MINIMAL, Path::new("p.yaml"), &env).expect("parses");
        let r = c.registry.expect("created by the environment");
        assert_eq!(r.url, "http://other:8081");
        assert_eq!(r.username.as_deref(), Some("ops"));
        assert!(
            parse(MINIMAL, Path::new("p.yaml"), &no_env)
                .unwrap()
                .registry
                .is_none()
        );
    }

    #[test]
    fn missing_secret_names_the_property() {
        let text = "
pipeline: demo
kafka:
  properties:
    sasl.password: ${KAFKA_PASSWORD}
sources: [{topic: in}]
sinks: {out: {topic: out}}
";
        let err = parse(text, Path::new("p.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "kafka.properties.sasl.password");
        assert!(err.to_string().contains("KAFKA_PASSWORD"));
    }
}

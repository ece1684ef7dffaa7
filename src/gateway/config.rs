//! The gateway file (`config/gateway.yaml`): which topics are bridged, how
//! clients authenticate, and the limits that protect the process.
//!
//! Loaded like a pipeline file: unknown fields are errors, every error
//! names the file and the field path, `MILLRACE_BOOTSTRAP` overrides
//! `kafka.bootstrap`, and `${NAME}` in Kafka properties and in
//! `auth.hs256_secret` reads an environment variable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::decode::TopicFormat;
use super::outbox::Policy;
use crate::config::{
    ConfigError, ConfigIssue, ENV_BOOTSTRAP, check_name, check_topic, expand_in_place, from_yaml,
    read_file,
};

/// A whole gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name of this gateway: its Kafka `client.id` is `millrace-gateway-<name>`.
    /// Letters, digits, `.`, `_`, `-`.
    pub gateway: String,
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The bridged topics. At least one.
    pub topics: Vec<TopicConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    /// How clients prove what they may read. Required: `mode: jwt` with keys,
    /// or `mode: open` for local demos.
    pub auth: AuthConfig,
    #[serde(default)]
    pub subscribers: SubscribersConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub latest: LatestConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// The schema registry, for `avro` topics: `{url, username,
    /// password}`; `MILLRACE_REGISTRY_URL`, `MILLRACE_REGISTRY_USER` and
    /// `MILLRACE_REGISTRY_PASSWORD` override it.
    #[serde(default)]
    pub registry: Option<crate::config::RegistryConfig>,
}

/// Kafka connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092`; `MILLRACE_BOOTSTRAP`
    /// overrides it.
    pub bootstrap: String,
    /// Extra librdkafka properties for every consumer of the gateway (e.g.
    /// `security.protocol`, `sasl.password: ${KAFKA_PASSWORD}`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// One bridged topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Kafka topic; also its name in the URLs (`/v1/topics/<topic>/...`).
    pub topic: String,
    /// `json` (default), `raw` (bytes passed through) or `avro`.
    #[serde(default)]
    pub format: TopicFormat,
    /// Policy for subscribers of this topic that fall behind, unless they
    /// ask for another with `?policy=`. Default: `subscribers.policy`.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// Start the live tail this far in the past (e.g. `10m`) so that the
    /// latest-value-per-key endpoint knows the keys written in that window
    /// at start. Default: the tail starts at the end.
    #[serde(default, with = "humantime_serde")]
    pub warm_up: Option<Duration>,
}

/// The HTTP side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of the API (and of `/metrics`, `/healthz`, `/readyz`
    /// unless `ops_listen` is set). Default `127.0.0.1:8080`; port 0 picks a
    /// free port (logged).
    pub listen: String,
    /// A separate listen address for `/metrics`, `/healthz` and `/readyz`.
    pub ops_listen: Option<String>,
    pub cors: CorsConfig,
    /// A client must send a request's headers within this long of
    /// connecting, and of its previous response on a kept-alive
    /// connection; otherwise the connection is closed. Bounds what a
    /// half-sent request (or an idle keep-alive) holds. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections open at once, subscribers included; more are accepted
    /// and closed at once. At least `limits.max_subscribers` (each holds
    /// one); keep it below the process's open-file limit. Default 12000.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64
    /// counts as one address). Addresses in `trusted_proxies` are exempt:
    /// they carry many clients. Default 256.
    pub max_connections_per_ip: usize,
    /// Addresses or CIDR blocks of reverse proxies (e.g. `10.0.0.5`,
    /// `10.0.0.0/8`, `fd00::/8`) whose `X-Forwarded-For` names the client
    /// for the rate limit and open-mode subjects. From any other peer the
    /// header is ignored (anyone can write it). Default: none.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            ops_listen: None,
            cors: CorsConfig::default(),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 12_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Cross-origin access for browser clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser, e.g.
    /// `https://dashboard.example.com`; `*` allows any. Default: none (no
    /// CORS headers: same-origin pages only).
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`, so that
    /// `EventSource(url, {withCredentials: true})` can send the token
    /// cookie. Needs explicit origins (not `*`). Default false.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

/// Authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Bearer JWTs (HS256 and/or RS256) whose claims list readable topics.
    Jwt,
    /// No authentication: anyone may read every bridged topic. For local
    /// demos; logged loudly at start.
    Open,
}

/// Bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Shared secret for HS256 tokens; `${NAME}` reads an environment
    /// variable (keep secrets out of the file).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// A PEM file of one or more RSA public keys for RS256 tokens; a token
    /// is accepted when any of them verifies it.
    #[serde(default)]
    pub rs256_public_keys: Option<PathBuf>,
    /// Required `iss` claim, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Cookie that may carry the token (browsers' `EventSource` cannot set
    /// headers). Default `millrace_token`.
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// Query parameter that may carry the token. Default `access_token`.
    #[serde(default = "default_query_param")]
    pub query_param: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default `30s`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_cookie() -> String {
    "millrace_token".into()
}
fn default_query_param() -> String {
    "access_token".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Per-subscriber behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscribersConfig {
    /// Records one subscriber may have waiting. Default 1000.
    pub buffer_events: usize,
    /// Bytes one subscriber may have waiting. Default 1 MiB.
    pub buffer_bytes: usize,
    /// What happens to a subscriber that falls behind: `disconnect`
    /// (default), `skip` or `conflate`.
    pub policy: Policy,
    /// Heartbeat interval: an SSE comment or a WebSocket ping when nothing
    /// else was sent. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A WebSocket client that answers no ping (and sends nothing) for this
    /// long is dead and disconnected. Default `45s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// A connection whose writes make no progress for this long (the client
    /// stopped reading, or vanished) is closed. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Records the live tail of a topic keeps for subscribers that are
    /// momentarily behind it (shared by all of them). A subscriber that falls
    /// further back re-reads from Kafka without a gap. Default 1024.
    pub live_buffer: usize,
    /// Reconnect delay suggested to SSE clients (`retry:`). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for SubscribersConfig {
    fn default() -> Self {
        SubscribersConfig {
            buffer_events: 1000,
            buffer_bytes: 1 << 20,
            policy: Policy::Disconnect,
            heartbeat: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(30),
            live_buffer: 1024,
            retry: Duration::from_secs(1),
        }
    }
}

/// Limits that protect the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Subscribers (SSE and WebSocket) at once. Default 10000.
    pub max_subscribers: usize,
    /// Subscribers at once per token subject (`sub`; the token itself when
    /// it has none; the client address in open mode). Default 100.
    pub max_subscribers_per_token: usize,
    /// New requests per second per client address (a token bucket).
    /// Default 20.
    pub requests_per_second: f64,
    /// Burst of the per-address bucket. Default 40.
    pub request_burst: u32,
    /// Longest filter expression, in bytes. Default 2048.
    pub max_filter_bytes: usize,
    /// Most keys one subscription may select. Default 256.
    pub max_keys: usize,
    /// Subscribers reading history from Kafka at once (each has its own
    /// consumer); the others wait their turn. Default 32.
    pub max_history_readers: usize,
    /// Longest wait for a history reader; then the request is refused
    /// with 503 and `Retry-After`. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub history_wait: Duration,
    /// A history reader whose subscriber takes no record for this long is
    /// given back for others; it reopens at the subscriber's position when
    /// the client reads again. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub history_stall_timeout: Duration,
    /// Most records one page of the records endpoint returns. Default 1000.
    pub max_page_records: usize,
    /// Most bytes of one REST response (`/latest`, `/records`): a page
    /// ends early at it, and `/latest` beyond it is refused (select keys).
    /// Default 16 MiB.
    pub max_response_bytes: usize,
    /// REST requests (`/latest`, `/records`) answered at once; more get
    /// 503 with `Retry-After`. Default 32.
    pub max_rest_requests: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_subscribers: 10_000,
            max_subscribers_per_token: 100,
            requests_per_second: 20.0,
            request_burst: 40,
            max_filter_bytes: 2048,
            max_keys: 256,
            max_history_readers: 32,
            history_wait: Duration::from_secs(5),
            history_stall_timeout: Duration::from_secs(10),
            max_page_records: 1000,
            max_response_bytes: 16 << 20,
            max_rest_requests: 32,
        }
    }
}

/// The latest value per key kept from each topic's live tail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatestConfig {
    /// Keys kept per topic; the least recently updated go first. Default
    /// 100000.
    pub max_keys: usize,
    /// Bytes kept per topic. Default 64 MiB.
    pub max_bytes: usize,
}

impl Default for LatestConfig {
    fn default() -> Self {
        LatestConfig {
            max_keys: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time for subscribers to be told to reconnect and for connections to
    /// close. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(10),
        }
    }
}

/// The live telemetry page at `/dashboard` (see [`super::dashboard`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the page. Default false.
    pub enabled: bool,
    /// Waveform batches (`format: raw`, one MRWF batch per record, keyed by
    /// device). Default `telemetry-waveforms`.
    pub waveform_topic: String,
    /// Beats with `hr_rolling` (the `rpeaks` step's output), keyed by
    /// device. Default `telemetry-heart-rate`.
    pub heart_rate_topic: String,
    /// Threshold and stale events, keyed by device. Default
    /// `telemetry-alerts`.
    pub alerts_topic: String,
    /// Heading and window title. Default `Millrace telemetry`.
    pub title: String,
    /// How far back the page replays alerts when it opens, so that an alert
    /// raised before it still shows. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub alerts_lookback: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: false,
            waveform_topic: "telemetry-waveforms".into(),
            heart_rate_topic: "telemetry-heart-rate".into(),
            alerts_topic: "telemetry-alerts".into(),
            title: "Millrace telemetry".into(),
            alerts_lookback: Duration::from_secs(3600),
        }
    }
}

impl GatewayConfig {
    /// The topic's settings, if it is bridged.
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.topic == name)
    }
}

/// librdkafka properties the gateway sets itself: reading only committed
/// records is what makes subscribers see exactly-once output.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
];

/// Reads, parses, applies environment overrides and validates a gateway
/// file.
pub fn load(file: &Path) -> Result<GatewayConfig, ConfigError> {
    let text = read_file(file)?;
    let env = |name: &str| std::env::var(name).ok();
    let config = parse(&text, file, &env)?;
    ConfigError::unless_empty(file, validate(&config))?;
    Ok(config)
}

/// Parses YAML text and applies environment overrides.
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GatewayConfig, ConfigError> {
    let mut config: GatewayConfig = from_yaml(text, file)?;
    if let Some(url) = env(crate::config::ENV_REGISTRY_URL).filter(|u| !u.trim().is_empty()) {
        config.registry.get_or_insert_with(Default::default).url = url;
    }
    if let Some(bootstrap) = env(ENV_BOOTSTRAP).filter(|b| !b.trim().is_empty()) {
        config.kafka.bootstrap = bootstrap;
    }
    for (name, value) in config.kafka.properties.iter_mut() {
        expand_in_place(value, file, &format!("kafka.properties.{name}"), env)?;
    }
    if let Some(secret) = config.auth.hs256_secret.as_mut() {
        expand_in_place(secret, file, "auth.hs256_secret", env)?;
    }
    Ok(config)
}

/// Every problem serde cannot see; empty means the file is good.
pub fn validate(config: &GatewayConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |path: &str, message: String| {
        issues.push(ConfigIssue {
            path: path.to_string(),
            message,
        })
    };
    if let Err(e) = check_name(&config.gateway) {
        issue("gateway", e);
    }
    if config.kafka.bootstrap.trim().is_empty() {
        issue("kafka.bootstrap", "must name at least one broker".into());
    }
    for name in config.kafka.properties.keys() {
        if MANAGED_PROPERTIES.contains(&name.as_str()) {
            issue(
                &format!("kafka.properties.{name}"),
                "is set by the gateway (subscribers must see only committed records)".into(),
            );
        }
    }
    if config.topics.is_empty() {
        issue("topics", "list at least one topic to bridge".into());
    }
    let mut seen = BTreeSet::new();
    for (i, topic) in config.topics.iter().enumerate() {
        if let Err(e) = check_topic(&topic.topic) {
            issue(&format!("topics[{i}].topic"), e);
        }
        if !seen.insert(topic.topic.as_str()) {
            issue(
                &format!("topics[{i}].topic"),
                format!("`{}` is listed twice", topic.topic),
            );
        }
        if topic.format == TopicFormat::Avro && config.registry.is_none() {
            issue(
                &format!("topics[{i}].format"),
                super::decode::avro_needs_registry(),
            );
        }
    }
    for (path, listen) in [
        ("http.listen", Some(&config.http.listen)),
        ("http.ops_listen", config.http.ops_listen.as_ref()),
    ] {
        if let Some(listen) = listen
            && listen.parse::<SocketAddr>().is_err()
        {
            issue(
                path,
                format!("`{listen}` is not an address such as 127.0.0.1:8080"),
            );
        }
    }
    if config.http.max_connections < config.limits.max_subscribers {
        issue(
            "http.max_connections",
            format!(
                "must be at least limits.max_subscribers ({}): each subscriber holds a connection",
                config.limits.max_subscribers
            ),
        );
    }
    if config.http.max_connections_per_ip > config.http.max_connections {
        issue(
            "http.max_connections_per_ip",
            "must not be above http.max_connections".into(),
        );
    }
    for (i, proxy) in config.http.trusted_proxies.iter().enumerate() {
        if let Err(e) = super::proxies::Cidr::parse(proxy) {
            issue(&format!("http.trusted_proxies[{i}]"), e);
        }
    }
    let cors = &config.http.cors;
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        issue(
            "http.cors.allow_credentials",
            "browsers refuse credentials with `*`: list the allowed origins".into(),
        );
    }
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
            issue(
                &format!("http.cors.allowed_origins[{i}]"),
                format!("`{origin}` is not a valid origin"),
            );
        }
    }
    let auth = &config.auth;
    match auth.mode {
        AuthMode::Jwt => {
            if auth.hs256_secret.is_none() && auth.rs256_public_keys.is_none() {
                issue(
                    "auth",
                    "mode `jwt` needs `hs256_secret` and/or `rs256_public_keys`".into(),
                );
            }
            if let Some(secret) = &auth.hs256_secret
                && secret.len() < 32
            {
                issue(
                    "auth.hs256_secret",
                    "must be at least 32 bytes (HS256 keys shorter than the hash are weak)".into(),
                );
            }
        }
        AuthMode::Open => {
            if auth.hs256_secret.is_some() || auth.rs256_public_keys.is_some() {
                issue(
                    "auth.mode",
                    "`open` ignores every key: remove them or use `jwt`".into(),
                );
            }
        }
    }
    for (path, name) in [
        ("auth.cookie", &auth.cookie),
        ("auth.query_param", &auth.query_param),
    ] {
        if let Err(e) = check_name(name) {
            issue(path, e);
        }
    }
    let s = &config.subscribers;
    for (path, value) in [
        ("subscribers.buffer_events", s.buffer_events),
        ("subscribers.buffer_bytes", s.buffer_bytes),
        ("subscribers.live_buffer", s.live_buffer),
        ("limits.max_subscribers", config.limits.max_subscribers),
        (
            "limits.max_subscribers_per_token",
            config.limits.max_subscribers_per_token,
        ),
        ("limits.max_filter_bytes", config.limits.max_filter_bytes),
        (
            "limits.max_history_readers",
            config.limits.max_history_readers,
        ),
        ("limits.max_page_records", config.limits.max_page_records),
        (
            "limits.max_response_bytes",
            config.limits.max_response_bytes,
        ),
        ("limits.max_rest_requests", config.limits.max_rest_requests),
        ("http.max_connections", config.http.max_connections),
        (
            "http.max_connections_per_ip",
            config.http.max_connections_per_ip,
        ),
        ("latest.max_keys", config.latest.max_keys),
        ("latest.max_bytes", config.latest.max_bytes),
    ] {
        if value == 0 {
            issue(path, "must be at least 1".into());
        }
    }
    for (path, value) in [
        ("subscribers.heartbeat", s.heartbeat),
        ("subscribers.pong_timeout", s.pong_timeout),
        ("subscribers.write_timeout", s.write_timeout),
        ("shutdown.timeout", config.shutdown.timeout),
        ("http.header_read_timeout", config.http.header_read_timeout),
        ("limits.history_wait", config.limits.history_wait),
        (
            "limits.history_stall_timeout",
            config.limits.history_stall_timeout,
        ),
    ] {
        if value < Duration::from_millis(100) {
            issue(path, "must be at least 100ms".into());
        }
    }
    if s.pong_timeout <= s.heartbeat {
        issue(
            "subscribers.pong_timeout",
            "must be longer than subscribers.heartbeat (a ping needs time to be answered)".into(),
        );
    }
    if !(config.limits.requests_per_second > 0.0 && config.limits.requests_per_second.is_finite()) {
        issue(
            "limits.requests_per_second",
            "must be a positive number".into(),
        );
    }
    if config.limits.request_burst == 0 {
        issue("limits.request_burst", "must be at least 1".into());
    }
    let d = &config.dashboard;
    if d.enabled {
        for (path, name, format) in [
            (
                "dashboard.waveform_topic",
                &d.waveform_topic,
                TopicFormat::Raw,
            ),
            (
                "dashboard.heart_rate_topic",
                &d.heart_rate_topic,
                TopicFormat::Json,
            ),
            ("dashboard.alerts_topic", &d.alerts_topic, TopicFormat::Json),
        ] {
            match config.topic(name) {
                None => issue(
                    path,
                    format!("`{name}` is not bridged: add it to `topics` (format: {format})"),
                ),
                Some(t) if t.format != format => issue(
                    path,
                    format!(
                        "`{name}` must be bridged with format: {format}, not {}",
                        t.format
                    ),
                ),
                Some(_) => {}
            }
        }
        if d.title.trim().is_empty() {
            issue("dashboard.title", "must not be empty".into());
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = "
gateway: demo
topics:
  - topic: vitals-clean
  - {topic: waveforms, format: raw, policy: skip}
auth:
  mode: open
";

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = parse(MINIMAL, Path::new("g.yaml"), &no_env).expect("parses");
        assert!(validate(&c).is_empty(), "{:?}", validate(&c));
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.topics[0].format, TopicFormat::Json);
        assert_eq!(c.topics[1].format, TopicFormat::Raw);
        assert_eq!(c.topics[1].policy, Some(Policy::Skip));
        assert_eq!(c.subscribers.policy, Policy::Disconnect);
        assert_eq!(c.subscribers.buffer_events, 1000);
        assert_eq!(c.auth.cookie, "millrace_token");
        assert_eq!(c.limits.max_subscribers, 10_000);
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.max_connections, 12_000);
        assert_eq!(c.http.max_connections_per_ip, 256);
        assert!(c.http.trusted_proxies.is_empty());
        assert_eq!(c.limits.history_wait, Duration::from_secs(5));
        assert_eq!(c.limits.max_response_bytes, 16 << 20);
    }

    #[test]
    fn connection_and_response_limits_are_checked() {
        let text = r#"
gateway: g
topics: [{topic: t}]
auth: {mode: open}
http:
  header_read_timeout: 1ms
  max_connections: 50
  max_connections_per_ip: 60
  trusted_proxies: ["10.0.0.0/8", "10.0.0.1/33", "proxy.example"]
limits: {max_response_bytes: 0, history_wait: 0s, max_rest_requests: 0}
"#;
        let c = parse(text, Path::new("g.yaml"), &no_env).expect("parses");
        let paths: Vec<String> = validate(&c).into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "http.max_connections",
                "http.max_connections_per_ip",
                "http.trusted_proxies[1]",
                "http.trusted_proxies[2]",
                "limits.max_response_bytes",
                "limits.max_rest_requests",
                "http.header_read_timeout",
                "limits.history_wait",
            ],
            "{:?}",
            validate(&c)
        );
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let text = "
gateway: demo
topics: [{topic: t}]
auth:
  mode: jwt
  hs256_secret: ${GW_SECRET}
";
        let env = |name: &str| (name == "GW_SECRET").then(|| "x".repeat(40));
        let c = parse(text, Path::new("g.yaml"), &env).expect("parses");
        assert_eq!(
            c.auth.hs256_secret.as_deref(),
            Some("x".repeat(40).as_str())
        );
        let err = parse(text, Path::new("g.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "auth.hs256_secret");
    }

    #[test]
    fn problems_name_their_fields() {
        let text = r#"
gateway: "bad name"
kafka: {properties: {isolation.level: read_uncommitted}}
topics: [{topic: a}, {topic: a, format: avro}]
http: {listen: nowhere, cors: {allowed_origins: ["*"], allow_credentials: true}}
auth: {mode: jwt, hs256_secret: short}
subscribers: {buffer_events: 0, heartbeat: 20s, pong_timeout: 10s}
"#;
        let c = parse(text, Path::new("g.yaml"), &no_env).expect("parses");
        let paths: Vec<String> = validate(&c).into_iter().map(|i| i.path).collect();
        for expected in [
            "gateway",
            "kafka.properties.isolation.level",
            "topics[1].topic",
            "topics[1].format",
            "http.listen",
            "http.cors.allow_credentials",
            "auth.hs256_secret",
            "subscribers.buffer_events",
            "subscribers.pong_timeout",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} not in {paths:?}"
            );
        }
    }

    #[test]
    fn dashboard_topics_must_be_bridged_with_their_formats() {
        let off = parse(MINIMAL, Path::new("g.yaml"), &no_env).expect("parses");
        assert!(!off.dashboard.enabled);
        assert_eq!(off.dashboard.waveform_topic, "telemetry-waveforms");
        let text = "
gateway: g
topics:
  - {topic: telemetry-waveforms, format: json}
  - {topic: telemetry-heart-rate}
auth: {mode: open}
dashboard: {enabled: true, title: Ward 3}
";
        let c = parse(text, Path::new("g.yaml"), &no_env).expect("parses");
        let issues = validate(&c);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["dashboard.waveform_topic", "dashboard.alerts_topic"],
            "{issues:?}"
        );
        assert!(issues[0].message.contains("raw"), "{issues:?}");
        assert!(issues[1].message.contains("not bridged"), "{issues:?}");
        let fixed = text.replace(
            "format: json}",
            "format: raw}\n  - {topic: telemetry-alerts}",
        );
        let c = parse(&fixed, Path::new("g.yaml"), &no_env).expect("parses");
        assert!(validate(&c).is_empty(), "{:?}", validate(&c));
        assert_eq!(c.dashboard.title, "Ward 3");
    }

    #[test]
    fn jwt_mode_needs_a_key_and_typos_are_caught() {
        let c = parse(
            "gateway: g\ntopics: [{topic: t}]\nauth: {mode: jwt}\n",
            Path::new("g.yaml"),
            &no_env,
        )
        .unwrap();
        assert_eq!(validate(&c)[0].path, "auth");
        let err = parse(
            "gateway: g\ntopics: [{topic: t, fromat: raw}]\nauth: {mode: open}\n",
            Path::new("g.yaml"),
            &no_env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("fromat"), "{err}");
    }
}

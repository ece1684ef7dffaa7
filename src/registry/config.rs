//! The registry's configuration: `config/registry.yaml`, or only flags.
//! Every field has a default; flags (`--listen`, `--bootstrap`,
//! `--topic`) and `MILLRACE_BOOTSTRAP` override the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::compat::CompatibilityLevel;
use crate::config::{ConfigError, ConfigIssue};

/// librdkafka properties the registry sets itself: its id allocation and
/// read-your-writes depend on them.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "isolation.level",
    "enable.idempotence",
    "enable.partition.eof",
    "auto.offset.reset",
];

/// A `millrace registry` instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Address of the REST API, which also serves `/metrics`, `/healthz`
    /// and `/readyz`. Default `127.0.0.1:8081` (Confluent's port); port 0
    /// picks one (logged).
    pub listen: String,
    /// How to reach Kafka.
    pub kafka: RegistryKafkaConfig,
    /// The compacted topic holding schemas, versions and configs. Default
    /// `_schemas`, the topic Confluent Schema Registry and Karapace use: an
    /// existing one is served as it is.
    pub topic: String,
    /// Replication factor when the registry creates the topic. Default:
    /// the broker's `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// The global compatibility level while the topic sets none. Default
    /// `BACKWARD`.
    pub compatibility: CompatibilityLevel,
    /// The transactional id every instance serving this topic writes
    /// with. Sharing it is what makes id allocation safe: a new writer
    /// fences the previous one (see docs/src/registry.md).
    /// Default `millrace-registry-<topic>`.
    pub writer_id: Option<String>,
    /// How long a write may take, from taking the writer role to reading
    /// the record back. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Time to finish requests on SIGTERM. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

/// Kafka settings of the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryKafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092`; `MILLRACE_BOOTSTRAP`
    /// and `--bootstrap` override it.
    pub bootstrap: String,
    /// Extra librdkafka properties for every client (security, SASL...);
    /// `${NAME}` reads an environment variable.
    pub properties: BTreeMap<String, String>,
}

impl Default for RegistryKafkaConfig {
    fn default() -> Self {
        RegistryKafkaConfig {
            bootstrap: "127.0.0.1:9092".to_string(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            listen: "127.0.0.1:8081".to_string(),
            kafka: RegistryKafkaConfig::default(),
            topic: "_schemas".to_string(),
            replication_factor: None,
            compatibility: CompatibilityLevel::Backward,
            writer_id: None,
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub bootstrap: Option<String>,
    pub topic: Option<String>,
}

impl RegistryConfig {
    /// The transactional id of the writer.
    pub fn writer_id(&self) -> String {
        self.writer_id
            .clone()
            .unwrap_or_else(|| format!("millrace-registry-{}", self.topic))
    }

    /// Loads a file (or the defaults without one), applies the overrides
    /// and validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<RegistryConfig, ConfigError> {
        let shown = file.unwrap_or(Path::new("<flags>"));
        let env = |name: &str| std::env::var(name).ok();
        let mut config = match file {
            None => RegistryConfig::default(),
            Some(path) => Self::parse(&crate::config::read_file(path)?, path, &env)?,
        };
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        if let Some(bootstrap) = overrides
            .bootstrap
            .as_ref()
            .filter(|b| !b.trim().is_empty())
        {
            config.kafka.bootstrap = bootstrap.clone();
        }
        if let Some(topic) = &overrides.topic {
            config.topic = topic.clone();
        }
        ConfigError::unless_empty(shown, config.validate())?;
        Ok(config)
    }

    /// Parses YAML text and expands `${NAME}` in properties (`env` looks a
    /// variable up).
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RegistryConfig, ConfigError> {
        let mut config: RegistryConfig = crate::config::from_yaml(text, file)?;
        if let Some(bootstrap) = env(crate::config::ENV_BOOTSTRAP).filter(|b| !b.trim().is_empty())
        {
            config.kafka.bootstrap = bootstrap;
        }
        for (name, value) in config.kafka.properties.iter_mut() {
            crate::config::expand_in_place(value, file, &format!("kafka.properties.{name}"), env)?;
        }
        Ok(config)
    }

    /// Every problem found; empty means good.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, message: String| {
            issues.push(ConfigIssue {
                path: path.to_string(),
                message,
            })
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            issue(
                "listen",
                format!("`{}` is not an address such as 127.0.0.1:8081", self.listen),
            );
        }
        if self.kafka.bootstrap.trim().is_empty() {
            issue(
                "kafka.bootstrap",
                "must name at least one broker (host:port)".into(),
            );
        }
        for name in self.kafka.properties.keys() {
            if MANAGED_PROPERTIES.contains(&name.as_str()) {
                issue(
                    &format!("kafka.properties.{name}"),
                    "is set by the registry (its id allocation depends on it)".into(),
                );
            }
        }
        if let Err(e) = crate::config::check_topic(&self.topic) {
            issue("topic", e);
        }
        if self.replication_factor.is_some_and(|n| n < 1) {
            issue("replication_factor", "must be at least 1".into());
        }
        if self
            .writer_id
            .as_deref()
            .is_some_and(|w| w.trim().is_empty())
        {
            issue("writer_id", "must not be empty".into());
        }
        if self.write_timeout < Duration::from_millis(100) {
            issue("write_timeout", "must be at least 100ms".into());
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/registry.yaml");
        let text = std::fs::read_to_string(&path).expect("config/registry.yaml");
        let config = RegistryConfig::parse(&text, &path, &no_env).expect("parses");
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(config.topic, "_schemas");
    }

    #[test]
    fn defaults_and_overrides() {
        let c = RegistryConfig::load(
            None,
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                bootstrap: Some("k:9092".into()),
                topic: None,
            },
        )
        .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.kafka.bootstrap, "k:9092");
        assert_eq!(c.topic, "_schemas");
        assert_eq!(c.writer_id(), "millrace-registry-_schemas");
        assert_eq!(c.compatibility, CompatibilityLevel::Backward);
    }

    #[test]
    fn bad_values_name_their_field() {
        let text = "compatibility: sideways\n";
        let err = RegistryConfig::parse(text, Path::new("r.yaml"), &no_env).unwrap_err();
        assert_eq!(err.issues[0].path, "compatibility", "{err}");
        let text =
            "listen: nowhere\ntopic: 'bad topic'\nkafka: {properties: {transactional.id: x}}\n";
        let config = RegistryConfig::parse(text, Path::new("r.yaml"), &no_env).expect("parses");
        let paths: Vec<String> = config.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            ["listen", "kafka.properties.transactional.id", "topic"]
        );
    }
}

//! Checks a parsed pipeline file for what serde cannot see: names, limits,
//! expressions that must compile, properties Millrace must own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigIssue, Format, PipelineConfig};
use crate::pipeline::Pipeline;

/// librdkafka properties that Millrace sets itself because exactly-once
/// depends on them; a user value would silently break the guarantee.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.idempotence",
    "auto.offset.reset",
    // Tasks rely on eager range assignment (see runtime::clients).
    "partition.assignment.strategy",
    "group.protocol",
];

/// Returns every problem found; empty means the file is good.
pub fn validate(config: &PipelineConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |path: &str, message: String| {
        issues.push(ConfigIssue {
            path: path.to_string(),
            message,
        })
    };

    if let Err(e) = check_name(&config.pipeline) {
        issue("pipeline", e);
    }
    if config.kafka.bootstrap.trim().is_empty() {
        issue(
            "kafka.bootstrap",
            "must name at least one broker (host:port)".into(),
        );
    }
    if let Some(Err(e)) = config.kafka.instance_id.as_deref().map(check_name) {
        issue("kafka.instance_id", e);
    }
    // The group names the changelog topics and the state directory.
    if let Some(Err(e)) = config.kafka.group_id.as_deref().map(check_name) {
        issue(
            "kafka.group_id",
            format!("{e} (the group id names the changelog topics and the state directory)"),
        );
    }
    let property_sections = [
        ("kafka.properties", &config.kafka.properties),
        (
            "kafka.consumer_properties",
            &config.kafka.consumer_properties,
        ),
        (
            "kafka.producer_properties",
            &config.kafka.producer_properties,
        ),
    ];
    for (section, properties) in property_sections {
        for name in properties.keys() {
            if MANAGED_PROPERTIES.contains(&name.as_str()) {
                issue(
                    &format!("{section}.{name}"),
                    "is set by Millrace (exactly-once depends on it); use the matching \
                     Millrace setting instead"
                        .into(),
                );
            }
        }
    }

    if config.sources.is_empty() {
        issue("sources", "list at least one source topic".into());
    }
    let mut source_topics = BTreeSet::new();
    for (i, source) in config.sources.iter().enumerate() {
        if let Err(e) = check_topic(&source.topic) {
            issue(&format!("sources[{i}].topic"), e);
        }
        if !source_topics.insert(source.topic.as_str()) {
            issue(
                &format!("sources[{i}].topic"),
                format!("`{}` is listed twice", source.topic),
            );
        }
        if source.format != Format::Avro && source.schema.is_some() {
            issue(
                &format!("sources[{i}].schema"),
                "is only used with `format: avro`".into(),
            );
        }
    }

    if config.sinks.is_empty() {
        issue("sinks", "name at least one sink".into());
    }
    for (name, sink) in &config.sinks {
        if let Err(e) = check_name(name) {
            issue(&format!("sinks.{name}"), format!("sink name: {e}"));
        }
        if let Err(e) = check_topic(&sink.topic) {
            issue(&format!("sinks.{name}.topic"), e);
        }
        if source_topics.contains(sink.topic.as_str()) {
            issue(
                &format!("sinks.{name}.topic"),
                format!(
                    "`{}` is also a source: the pipeline would read its own output",
                    sink.topic
                ),
            );
        }
        if sink.format != Format::Avro {
            let avro_only = [
                ("schema", sink.schema.is_some()),
                ("subject_strategy", sink.subject_strategy.is_some()),
                ("auto_register", sink.auto_register.is_some()),
            ];
            for (field, set) in avro_only {
                if set {
                    issue(
                        &format!("sinks.{name}.{field}"),
                        "is only used with `format: avro`".into(),
                    );
                }
            }
        }
    }
    let dead_letter = config.dead_letter_topic();
    if let Err(e) = check_topic(&dead_letter) {
        issue("dead_letter.topic", e);
    }
    if source_topics.contains(dead_letter.as_str()) {
        issue(
            "dead_letter.topic",
            format!("`{dead_letter}` is also a source topic"),
        );
    }

    check_registry(config, &mut issue);

    if config.commit.interval < Duration::from_millis(1) {
        issue("commit.interval", "must be at least 1ms".into());
    }
    if config.commit.interval > Duration::from_secs(600) {
        issue(
            "commit.interval",
            "must be at most 10m (transactions time out long before that)".into(),
        );
    }
    // The broker aborts a transaction open longer than its timeout; one
    // that routinely reaches it would abort forever and never progress.
    // Millrace's default is 10 s (runtime::clients); half of it leaves room
    // for the commit itself.
    let txn_timeout = config
        .kafka
        .producer_properties
        .get("transaction.timeout.ms")
        .or_else(|| config.kafka.properties.get("transaction.timeout.ms"));
    let txn_timeout_ms = match txn_timeout.map(|v| v.parse::<u64>()) {
        Some(Ok(ms)) => Some(ms),
        Some(Err(_)) => {
            issue(
                "kafka.producer_properties.transaction.timeout.ms",
                "must be a number of milliseconds".into(),
            );
            None
        }
        None => Some(10_000),
    };
    if let Some(ms) = txn_timeout_ms
        && config.commit.guarantee == super::Guarantee::ExactlyOnce
        && config.commit.interval.as_millis() * 2 > u128::from(ms)
    {
        issue(
            "commit.interval",
            format!(
                "must be at most half of the producer's transaction.timeout.ms ({ms} ms), or \
                 the broker aborts transactions before they commit; raise \
                 kafka.producer_properties.transaction.timeout.ms"
            ),
        );
    }
    if config.commit.max_records == 0 {
        issue("commit.max_records", "must be at least 1".into());
    }
    if config.commit.timeout < Duration::from_secs(1) {
        issue("commit.timeout", "must be at least 1s".into());
    }
    if config.topics.partitions < 1 {
        issue("topics.partitions", "must be at least 1".into());
    }
    if config.topics.replication_factor.is_some_and(|n| n < 1) {
        issue("topics.replication_factor", "must be at least 1".into());
    }
    if config.http.listen.parse::<SocketAddr>().is_err() {
        issue(
            "http.listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:9464",
                config.http.listen
            ),
        );
    }
    if config.shutdown.timeout < Duration::from_secs(1) {
        issue("shutdown.timeout", "must be at least 1s".into());
    }

    // Steps and sink keys hold expressions: building the pipeline compiles
    // them, so a typo is caught here and not on the first record.
    if let Err(build_issues) = Pipeline::build(config) {
        for (path, message) in build_issues {
            issue(&path, message);
        }
    }
    issues
}

/// The registry must be configured when a source or sink is Avro. Schema
/// files are checked by building the pipeline, at the end of [`validate`].
fn check_registry(config: &PipelineConfig, issue: &mut dyn FnMut(&str, String)) {
    let uses_avro = config.sources.iter().any(|s| s.format == Format::Avro)
        || config.sinks.values().any(|s| s.format == Format::Avro);
    match &config.registry {
        None if uses_avro => issue(
            "registry.url",
            format!(
                "required because a source or sink uses `format: avro` (or set {})",
                super::ENV_REGISTRY_URL
            ),
        ),
        None => {}
        Some(registry) => {
            if registry.url.trim().is_empty() {
                issue(
                    "registry.url",
                    format!(
                        "must name the schema registry, e.g. http://127.0.0.1:8081 (or set {})",
                        super::ENV_REGISTRY_URL
                    ),
                );
            } else if let Err(e) = check_url(&registry.url) {
                issue("registry.url", e);
            }
            if registry.password.is_some() && registry.username.is_none() {
                issue(
                    "registry.password",
                    "is set without registry.username".into(),
                );
            }
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("`{url}` is not a URL such as http://127.0.0.1:8081: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

/// Names used inside Kafka ids: letters, digits, `.`, `_`, `-`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 200 {
        return Err("must be at most 200 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{name}` contains `{c}`; use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Kafka's own rule for topic names.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a valid topic name"));
    }
    if topic.len() > 249 {
        return Err("topic names are at most 249 characters".into());
    }
    check_name(topic).map_err(|e| format!("topic name {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use std::path::Path;

    fn issues(yaml: &str) -> Vec<(String, String)> {
        let config = parse(yaml, Path::new("t.yaml"), &|_| None).expect("parses");
        super::validate(&config)
            .into_iter()
            .map(|i| (i.path, i.message))
            .collect()
    }

    #[test]
    fn the_assignment_protocol_and_a_group_id_that_names_files_are_checked() {
        let found = issues(
            r#"
pipeline: p
kafka:
  group_id: "team/a"
  consumer_properties:
    partition.assignment.strategy: cooperative-sticky
    group.protocol: consumer
sources: [{topic: in}]
sinks: {out: {topic: out}}
"#,
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "kafka.group_id",
                "kafka.consumer_properties.group.protocol",
                "kafka.consumer_properties.partition.assignment.strategy",
            ],
            "{found:?}"
        );
        assert!(found[0].1.contains("changelog"), "{found:?}");
    }

    #[test]
    fn a_commit_interval_the_transaction_timeout_would_cut_is_refused() {
        let long = issues(
            "pipeline: p\nsources: [{topic: in}]\nsinks: {out: {topic: out}}\n\
             commit: {interval: 6s}\n",
        );
        assert_eq!(long.len(), 1, "{long:?}");
        assert_eq!(long[0].0, "commit.interval");
        assert!(long[0].1.contains("10000 ms"), "{long:?}");
        let raised = issues(
            "pipeline: p\nsources: [{topic: in}]\nsinks: {out: {topic: out}}\n\
             commit: {interval: 6s}\n\
             kafka: {producer_properties: {transaction.timeout.ms: \"60000\"}}\n",
        );
        assert!(raised.is_empty(), "{raised:?}");
    }

    #[test]
    fn bad_expression_names_the_step() {
        let found = issues(
            r#"
pipeline: p
sources: [{topic: in}]
steps:
  - filter: "value.ok"
  - map: "value.a +"
sinks: {out: {topic: out}}
"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "steps[1].map");
        assert!(found[0].1.contains("invalid CEL expression"), "{found:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let found = issues(
            r#"
pipeline: "bad name"
kafka:
  properties: {isolation.level: read_uncommitted}
sources: [{topic: in}, {topic: in, format: avro}]
sinks: {loop: {topic: in}}
commit: {interval: 0s}
http: {listen: "nowhere"}
"#,
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "pipeline",
            "kafka.properties.isolation.level",
            "sources[1].topic",
            "registry.url",
            "sinks.loop.topic",
            "commit.interval",
            "http.listen",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn avro_settings_are_checked_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.avsc");
        let bad = dir.path().join("bad.avsc");
        let primitive = dir.path().join("primitive.avsc");
        std::fs::write(
            &good,
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}"#,
        )
        .unwrap();
        std::fs::write(
            &bad,
            r#"{"type": "record", "name": "R", "fields": [{"name": "a"}]}"#,
        )
        .unwrap();
        std::fs::write(&primitive, r#""string""#).unwrap();
        let found = issues(&format!(
            r#"
pipeline: p
sources:
  - {{topic: a, format: avro, schema: {missing}}}
  - {{topic: b, format: avro, schema: {bad}}}
  - {{topic: c, schema: {good}}}
sinks:
  no_schema: {{topic: x, format: avro}}
  unnamed: {{topic: y, format: avro, schema: {primitive}, subject_strategy: topic_record_name}}
  json: {{topic: z, subject_strategy: record_name}}
  fine: {{topic: w, format: avro, schema: {good}}}
"#,
            missing = dir.path().join("missing.avsc").display(),
            bad = bad.display(),
            good = good.display(),
            primitive = primitive.display(),
        ));
        let at = |path: &str| {
            found
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| panic!("no issue at {path}: {found:?}"))
        };
        assert!(at("registry.url").contains("format: avro"));
        assert!(at("sources[0].schema").contains("missing.avsc"));
        assert!(at("sources[1].schema").contains("invalid Avro schema"));
        assert!(at("sources[2].schema").contains("only used"));
        assert!(at("sinks.no_schema.schema").contains("required"));
        assert!(at("sinks.unnamed.subject_strategy").contains("named schema"));
        assert!(at("sinks.json.subject_strategy").contains("only used"));
        assert_eq!(found.len(), 7, "{found:?}");
    }

    #[test]
    fn the_registry_url_must_be_http() {
        let found = issues(
            r#"
pipeline: p
registry: {url: "127.0.0.1:8081", password: x}
sources: [{topic: in}]
sinks: {out: {topic: out}}
"#,
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["registry.url", "registry.password"], "{found:?}");
    }
}

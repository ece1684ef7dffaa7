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
        if source.format == Format::Avro {
            issue(
                &format!("sources[{i}].format"),
                crate::format::unsupported_avro(),
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
        if sink.format == Format::Avro {
            issue(
                &format!("sinks.{name}.format"),
                crate::format::unsupported_avro(),
            );
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

    if config.commit.interval < Duration::from_millis(1) {
        issue("commit.interval", "must be at least 1ms".into());
    }
    if config.commit.interval > Duration::from_secs(600) {
        issue(
            "commit.interval",
            "must be at most 10m (transactions time out long before that)".into(),
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
    if config.topics.replication_factor < 1 {
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
            "sources[1].format",
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
}

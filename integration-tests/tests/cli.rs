//! The command line as an operator meets it: validation that names the
//! field, the printed operator graph, topic creation.

use std::time::Duration;

use millrace_integration_tests::{bootstrap, millrace_cli, unique, write_config};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[test]
fn a_bad_config_fails_before_anything_starts_and_names_the_field() -> anyhow::Result<()> {
    let (_dir, path, _) = write_config(
        r#"
pipeline: p
sources: [{topic: in}]
steps:
  - filter: "value.temp >"
sinks: {out: {topic: out}}
"#,
    )?;
    let path = path.to_string_lossy().into_owned();
    for command in [
        &["validate", "--config", &path][..],
        &["run", "--config", &path],
    ] {
        let (code, _, stderr) = millrace_cli(command, false)?;
        assert_eq!(code, 2, "{command:?}: {stderr}");
        assert!(stderr.contains(&path), "names the file: {stderr}");
        assert!(
            stderr.contains("steps[0].filter"),
            "names the field: {stderr}"
        );
        assert!(
            stderr.contains("invalid CEL expression"),
            "says what: {stderr}"
        );
    }

    let (_dir, path, _) =
        write_config("pipeline: p\nsources: [{topic: in}]\nsinks: {out: {topci: out}}\n")?;
    let (code, _, stderr) =
        millrace_cli(&["validate", "--config", &path.to_string_lossy()], false)?;
    assert_eq!(code, 2);
    assert!(stderr.contains("sinks.out"), "{stderr}");
    assert!(stderr.contains("topci"), "{stderr}");
    Ok(())
}

#[test]
fn validate_prints_the_operator_graph() -> anyhow::Result<()> {
    let (_dir, path, _) = write_config(
        r#"
pipeline: vitals
sources: [{topic: vitals, start: latest}]
steps:
  - filter: "value.spo2 < 90"
  - rekey: "value.device"
sinks: {alerts: {topic: vitals-alerts}}
"#,
    )?;
    let (code, stdout, stderr) =
        millrace_cli(&["validate", "--config", &path.to_string_lossy()], false)?;
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "pipeline vitals",
        "source  vitals (json, start latest)",
        "[0] filter  value.spo2 < 90",
        "[1] rekey   value.device",
        "sink    alerts -> vitals-alerts (json)",
        "dead letters -> vitals-dead-letter",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn topics_create_makes_every_topic_once() -> anyhow::Result<()> {
    let input = unique("cli-in");
    let output = unique("cli-out");
    let (_dir, path, _) = write_config(&format!(
        "pipeline: cli\nsources: [{{topic: {input}}}]\nsinks: {{out: {{topic: {output}}}}}\n\
         topics: {{partitions: 3, config: {{retention.ms: \"3600000\"}}}}\n"
    ))?;
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = millrace_cli(&["topics", "create", "--config", &path], true)?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("created  {input}")), "{stdout}");
    assert!(
        stdout.contains("created  cli-dead-letter") || stdout.contains("exists   cli-dead-letter")
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    for topic in [&input, &output] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        assert_eq!(metadata.topics()[0].partitions().len(), 3, "{topic}");
    }
    let (code, stdout, _) = millrace_cli(&["topics", "create", "--config", &path], true)?;
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("exists   {input}")), "{stdout}");
    Ok(())
}

#[test]
fn run_refuses_missing_topics_by_name() -> anyhow::Result<()> {
    let missing = unique("never-created");
    let (_dir, path, _) = write_config(&format!(
        "pipeline: missing\nsources: [{{topic: {missing}}}]\nsinks: {{out: {{topic: {missing}-out}}}}\n\
         http: {{listen: \"127.0.0.1:{{ops_port}}\"}}\n"
    ))?;
    let (code, _, stderr) = millrace_cli(&["run", "--config", &path.to_string_lossy()], true)?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("millrace topics create"), "{stderr}");
    Ok(())
}

/// The example pipelines, and every pipeline file the Docker compose file
/// runs, pass `millrace validate` (there is no Docker engine here to run the
/// compose file itself).
#[test]
fn example_and_compose_pipelines_validate() -> anyhow::Result<()> {
    let root = millrace_integration_tests::repo_root();
    let compose = std::fs::read_to_string(root.join("docker/compose.yaml"))?;
    let mut checked = Vec::new();
    for word in
        compose.split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '[' | ']' | ';'))
    {
        let Some(name) = word.strip_prefix("/etc/millrace/") else {
            continue;
        };
        if name.starts_with("docker/") || !name.ends_with(".yaml") || name.contains('$') {
            continue;
        }
        let path = root.join("config").join(name);
        assert!(
            path.exists(),
            "compose.yaml names {name}, which config/ lacks"
        );
        checked.push(path);
    }
    assert!(
        checked.len() >= 3,
        "compose runs the telemetry pipelines: {checked:?}"
    );
    for file in [
        "telemetry-heart-rate",
        "telemetry-hr-alerts",
        "telemetry-stale",
        "vitals-clean",
    ] {
        checked.push(root.join(format!("config/{file}.yaml")));
    }
    for path in checked {
        let path = path.to_string_lossy().to_string();
        let (code, _, err) = millrace_cli(&["validate", "--config", &path], false)?;
        assert_eq!(code, 0, "{path}: {err}");
    }
    Ok(())
}

//! Avro pipelines against the real broker and a real schema registry
//! (`millrace registry`, on its own `_schemas`-style topic per test):
//! malformed records reach the dead-letter topic with their reason while
//! good ones flow; records written with two schema versions decode with the
//! reader schema; a registry outage holds records back instead of
//! dead-lettering them; and Confluent's own Python client produces what a
//! pipeline decodes and decodes what it writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use millrace::avro::{Decoder, Encoder, ParsedSchema, SchemaCache};
use millrace::config::RegistryConfig;
use millrace::registry::client::{NewSchema, RegistryClient};
use millrace_integration_tests::registry::Registry;
use millrace_integration_tests::{
    Millrace, bootstrap, create_topics, free_port, group_caught_up, header_map, produce,
    produce_to, producer, progress, read_committed, repo_root, unique,
};
use rand::{Rng, SeedableRng};
use rdkafka::message::Message;
use serde_json::{Value as Json, json};

/// A registry on a schemas topic of its own.
fn start_registry() -> anyhow::Result<Registry> {
    Registry::start(&unique("schemas"))
}

fn client(registry: &Registry) -> RegistryClient {
    RegistryClient::new(&registry.url(), None).expect("registry client")
}

/// A schema cache over the registry, for decoding outputs.
fn cache(registry: &Registry) -> SchemaCache {
    SchemaCache::new(Some(&RegistryConfig {
        url: registry.url(),
        username: None,
        password: None,
    }))
}

const READING_V1: &str = r#"{"type": "record", "name": "Reading", "namespace": "org.millrace.it", "fields": [
    {"name": "device", "type": "string"},
    {"name": "hr", "type": "int"},
    {"name": "temp_c", "type": "float"},
    {"name": "firmware", "type": "string"}
]}"#;

/// Version 2: `firmware` removed, `ward` added with a default, `hr` and
/// `temp_c` widened. Compatible under BACKWARD, the registry's default.
const READING_V2: &str = r#"{"type": "record", "name": "Reading", "namespace": "org.millrace.it", "fields": [
    {"name": "device", "type": "string"},
    {"name": "hr", "type": "long"},
    {"name": "temp_c", "type": "double"},
    {"name": "ward", "type": "string", "default": "unknown"}
]}"#;

const STATUS: &str = r#"{"type": "record", "name": "Status", "namespace": "org.millrace.it", "fields": [
    {"name": "device", "type": "string"},
    {"name": "hr", "type": "long"},
    {"name": "temp_c", "type": "double"},
    {"name": "ward", "type": "string"},
    {"name": "status", "type": {"type": "enum", "name": "Level", "symbols": ["OK", "HIGH"]}}
]}"#;

fn parsed(text: &str) -> Arc<ParsedSchema> {
    Arc::new(ParsedSchema::parse(text).expect("test schema"))
}

/// Writes schema files for a pipeline; returns their directory.
fn schema_files(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// Reading `i` as a v1 or v2 producer writes it. Temperatures are exact in
/// `float`, so widening to `double` keeps their decimal form.
fn reading(i: usize, version: u8) -> Json {
    let mut value = json!({
        "device": format!("dev-{i}"),
        "hr": 60 + (i * 7) % 90,
        "temp_c": 36.0 + (i % 8) as f64 * 0.25,
    });
    if version == 1 {
        value["firmware"] = json!(format!("1.{}", i % 3));
    } else {
        value["ward"] = json!(format!("ward-{}", i % 4));
    }
    value
}

/// What the status pipeline makes of reading `i`.
fn status(i: usize, version: u8) -> Json {
    let r = reading(i, version);
    let hr = r["hr"].as_i64().unwrap_or_default();
    json!({
        "device": r["device"],
        "hr": hr,
        "temp_c": r["temp_c"],
        "ward": if version == 1 { json!("unknown") } else { r["ward"].clone() },
        "status": if hr > 100 { "HIGH" } else { "OK" },
    })
}

fn wait_caught_up(m: &Millrace, group: &str, topic: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !group_caught_up(group, topic) {
        if Instant::now() > deadline {
            bail!("pipeline did not catch up; log:\n{}", m.log_tail(60));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// What a malformed record should be dead-lettered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Good,
    Reason(&'static str),
    /// Random bytes behind a valid header: corrupt or cut short, or by
    /// chance a valid value.
    Random,
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_while_good_ones_flow() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let registry = start_registry()?;
    let (input, out, dead, group) = (
        unique("avro-bad-in"),
        unique("avro-bad-out"),
        unique("avro-bad-dead"),
        unique("avro-bad"),
    );
    rt.block_on(create_topics(&[(&input, 2), (&out, 2), (&dead, 1)]))?;
    let id = client(&registry).register(&format!("{input}-value"), &NewSchema::avro(READING_V1))?;
    let encoder = Encoder::new(parsed(READING_V1), id);
    let good = |i: usize| encoder.encode(&reading(i, 1)).expect("encodes");

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut records: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    for i in 0..300 {
        records.push((format!("good-{i}"), good(i), Expect::Good));
        let bad: (Vec<u8>, Expect) = match i % 10 {
            0 => (
                serde_json::to_vec(&reading(i, 1))?,
                Expect::Reason("wrong_magic"),
            ),
            1 => {
                let mut v = good(i);
                v[0] = 1;
                (v, Expect::Reason("wrong_magic"))
            }
            2 => {
                let mut v = good(i);
                v[1..5].copy_from_slice(&(id + 1_000_000).to_be_bytes());
                (v, Expect::Reason("unknown_schema"))
            }
            3 => (good(i)[..i % 5].to_vec(), Expect::Reason("truncated")),
            4 => {
                let v = good(i);
                let cut = 5 + rng.random_range(0..v.len() - 5);
                (v[..cut].to_vec(), Expect::Reason("truncated"))
            }
            5 => {
                let mut v = good(i);
                v.push(0);
                (v, Expect::Reason("decode"))
            }
            6 => {
                let mut v = vec![0];
                v.extend_from_slice(&id.to_be_bytes());
                v.extend((0..rng.random_range(1..40)).map(|_| rng.random::<u8>()));
                (v, Expect::Random)
            }
            _ => {
                // Random bytes without a header: their first byte decides.
                let v: Vec<u8> = (0..rng.random_range(1..60))
                    .map(|_| rng.random::<u8>())
                    .collect();
                let expect = match v.as_slice() {
                    [first, ..] if *first != 0 => Expect::Reason("wrong_magic"),
                    short if short.len() < 5 => Expect::Reason("truncated"),
                    [_, a, b, c, d, ..] if u32::from_be_bytes([*a, *b, *c, *d]) == id => {
                        Expect::Random
                    }
                    _ => Expect::Reason("unknown_schema"),
                };
                (v, expect)
            }
        };
        records.push((format!("bad-{i}"), bad.0, bad.1));
    }
    let batch: Vec<(Option<String>, Vec<u8>)> = records
        .iter()
        .map(|(k, v, _)| (Some(k.clone()), v.clone()))
        .collect();
    rt.block_on(produce(&producer(), &input, &batch))?;

    let schemas = schema_files(&[("reading.avsc", READING_V1)])?;
    let m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{url}"}}
sources: [{{topic: {input}, format: avro, schema: "{schema}"}}]
steps:
  - set: {{hr2: "value.hr * 2"}}
sinks: {{out: {{topic: {out}}}}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        url = registry.url(),
        schema = path(&schemas, "reading.avsc"),
    ))?;
    wait_caught_up(&m, &group, &input)?;

    let outputs: HashMap<String, Json> = read_committed(&out)?
        .iter()
        .map(|msg| {
            let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(msg.payload().unwrap_or_default()).expect("JSON");
            (key, value)
        })
        .collect();
    let dead_letters: HashMap<String, (String, Vec<u8>, String)> = read_committed(&dead)?
        .iter()
        .map(|msg| {
            let h = header_map(msg);
            let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
            let reason = h.get("millrace.reason").cloned().unwrap_or_default();
            let error = h.get("millrace.error").cloned().unwrap_or_default();
            (
                key,
                (reason, msg.payload().unwrap_or_default().to_vec(), error),
            )
        })
        .collect();

    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (key, value, expect)) in records.iter().enumerate() {
        match expect {
            Expect::Good => {
                let mut expected = reading(i / 2, 1);
                expected["hr2"] = json!(expected["hr"].as_i64().unwrap_or_default() * 2);
                assert_eq!(outputs.get(key), Some(&expected), "{key}");
                assert!(!dead_letters.contains_key(key), "{key} dead-lettered");
            }
            Expect::Reason(reason) => {
                let (got, original, error) = dead_letters
                    .get(key)
                    .unwrap_or_else(|| panic!("{key} ({reason}) not dead-lettered"));
                assert_eq!(got, reason, "{key}: {error}");
                assert_eq!(original, value, "{key}: the dead letter keeps the value");
                assert!(!error.is_empty(), "{key}: no millrace.error");
                *by_reason.entry(reason).or_default() += 1;
            }
            Expect::Random => match dead_letters.get(key) {
                Some((reason, _, error)) => assert!(
                    reason == "decode" || reason == "truncated",
                    "{key}: {reason}: {error}"
                ),
                None => assert!(outputs.contains_key(key), "{key} vanished"),
            },
        }
    }
    progress(&format!("dead letters by reason: {by_reason:?}"));
    for reason in ["wrong_magic", "unknown_schema", "truncated", "decode"] {
        assert!(
            by_reason.get(reason).copied().unwrap_or(0) >= 10,
            "{reason}: {by_reason:?}"
        );
    }
    assert_eq!(
        outputs.len() + dead_letters.len(),
        records.len(),
        "every record is either an output or a dead letter"
    );
    let counted = m.metric(&format!(
        "millrace_records_dead_lettered_total{{reason=\"unknown_schema\",topic=\"{input}\"}}"
    ))?;
    assert_eq!(counted as usize, by_reason["unknown_schema"]);
    Ok(())
}

#[test]
fn two_writer_versions_decode_with_the_reader_schema() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let registry = start_registry()?;
    let (input, out, dead, group) = (
        unique("avro-evo-in"),
        unique("avro-evo-out"),
        unique("avro-evo-dead"),
        unique("avro-evo"),
    );
    rt.block_on(create_topics(&[(&input, 3), (&out, 3), (&dead, 1)]))?;
    let client = client(&registry);
    let subject = format!("{input}-value");
    let id1 = client.register(&subject, &NewSchema::avro(READING_V1))?;
    let id2 = client.register(&subject, &NewSchema::avro(READING_V2))?;
    assert_ne!(id1, id2);
    let v1 = Encoder::new(parsed(READING_V1), id1);
    let v2 = Encoder::new(parsed(READING_V2), id2);
    let count = 400;
    let batch: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|i| {
            let bytes = if i % 2 == 0 {
                v1.encode(&reading(i, 1))
            } else {
                v2.encode(&reading(i, 2))
            };
            (Some(format!("dev-{i}")), bytes.expect("encodes"))
        })
        .collect();
    rt.block_on(produce(&producer(), &input, &batch))?;

    let schemas = schema_files(&[("reading.avsc", READING_V2), ("status.avsc", STATUS)])?;
    let m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{url}"}}
sources: [{{topic: {input}, format: avro, schema: "{reader}"}}]
steps:
  - set: {{status: 'value.hr > 100 ? "HIGH" : "OK"'}}
sinks:
  out: {{topic: {out}, format: avro, schema: "{status}"}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        url = registry.url(),
        reader = path(&schemas, "reading.avsc"),
        status = path(&schemas, "status.avsc"),
    ))?;
    wait_caught_up(&m, &group, &input)?;

    assert!(read_committed(&dead)?.is_empty(), "no dead letters");
    let sink_id = client
        .lookup(&format!("{out}-value"), &NewSchema::avro(STATUS))?
        .context("the sink registered its schema")?
        .id;
    let mut cache = cache(&registry);
    let decoder = Decoder::new(None);
    let mut seen = BTreeMap::new();
    for msg in read_committed(&out)? {
        let payload = msg.payload().unwrap_or_default();
        assert_eq!(payload[1..5], sink_id.to_be_bytes(), "the registered id");
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let value = decoder
            .decode(payload, &mut cache)
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        seen.insert(key, value);
    }
    assert_eq!(seen.len(), count);
    for i in 0..count {
        let version = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(seen[&format!("dev-{i}")], status(i, version), "dev-{i}");
    }
    Ok(())
}

#[test]
fn a_registry_outage_holds_records_back_instead_of_dead_lettering() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut registry = start_registry()?;
    let (input, out, dead, group) = (
        unique("avro-down-in"),
        unique("avro-down-out"),
        unique("avro-down-dead"),
        unique("avro-down"),
    );
    rt.block_on(create_topics(&[(&input, 2), (&out, 2), (&dead, 1)]))?;
    let client = client(&registry);
    let subject = format!("{input}-value");
    let id1 = client.register(&subject, &NewSchema::avro(READING_V1))?;
    let id2 = client.register(&subject, &NewSchema::avro(READING_V2))?;
    let v1 = Encoder::new(parsed(READING_V1), id1);
    let v2 = Encoder::new(parsed(READING_V2), id2);
    let schemas = schema_files(&[("reading.avsc", READING_V2)])?;
    let mut m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{url}"}}
sources: [{{topic: {input}, format: avro, schema: "{reader}"}}]
sinks: {{out: {{topic: {out}}}}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        url = registry.url(),
        reader = path(&schemas, "reading.avsc"),
    ))?;
    // The pipeline learns schema v1 while the registry is up.
    let first: Vec<(String, i32, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("dev-{i}"),
                (i % 2) as i32,
                v1.encode(&reading(i, 1)).expect("encodes"),
            )
        })
        .collect();
    rt.block_on(produce_to(&producer(), &input, &first))?;
    wait_caught_up(&m, &group, &input)?;

    registry.kill()?;
    // Partition 0 gets records written with v2, which the pipeline has not
    // seen; partition 1 only v1 records, whose schema is cached.
    let second: Vec<(String, i32, Vec<u8>)> = (20..120)
        .map(|i| {
            let (partition, bytes) = if i % 2 == 0 {
                (0, v2.encode(&reading(i, 2)))
            } else {
                (1, v1.encode(&reading(i, 1)))
            };
            (format!("dev-{i}"), partition, bytes.expect("encodes"))
        })
        .collect();
    rt.block_on(produce_to(&producer(), &input, &second))?;

    // Partition 1 flows; partition 0 waits, and nothing is dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys: Vec<String> = read_committed(&out)?
            .iter()
            .map(|msg| String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned())
            .collect();
        let odd_done = (21..120)
            .step_by(2)
            .all(|i| keys.contains(&format!("dev-{i}")));
        if odd_done {
            let even_out = (20..120)
                .step_by(2)
                .filter(|i| keys.contains(&format!("dev-{i}")))
                .count();
            assert_eq!(
                even_out, 0,
                "records needing the unreachable registry were output"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "records with a cached schema did not flow; log:\n{}",
                m.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        read_committed(&dead)?.is_empty(),
        "nothing dead-lettered during the outage"
    );
    assert!(m.metric("millrace_registry_unavailable_total")? >= 1.0);
    assert!(m.is_running(), "the pipeline keeps running");
    assert_eq!(m.get("/healthz")?.0, 200);

    registry.restart()?;
    wait_caught_up(&m, &group, &input)?;
    let outputs = read_committed(&out)?;
    let mut by_key: BTreeMap<String, Json> = BTreeMap::new();
    for msg in &outputs {
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let value: Json = serde_json::from_slice(msg.payload().unwrap_or_default())?;
        assert!(by_key.insert(key.clone(), value).is_none(), "{key} twice");
    }
    assert_eq!(by_key.len(), 120);
    for i in 0..120 {
        let version = if i >= 20 && i % 2 == 0 { 2 } else { 1 };
        let mut expected = reading(i, version);
        if version == 1 {
            expected.as_object_mut().map(|o| o.remove("firmware"));
            expected["ward"] = json!("unknown");
        }
        assert_eq!(by_key[&format!("dev-{i}")], expected, "dev-{i}");
    }
    assert!(read_committed(&dead)?.is_empty());
    Ok(())
}

#[test]
fn an_incompatible_sink_schema_stops_start_up_naming_the_sink() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let registry = start_registry()?;
    let (input, out, dead, group) = (
        unique("avro-refused-in"),
        unique("avro-refused-out"),
        unique("avro-refused-dead"),
        unique("avro-refused"),
    );
    rt.block_on(create_topics(&[(&input, 1), (&out, 1), (&dead, 1)]))?;
    // The subject already holds a schema STATUS cannot evolve from under
    // BACKWARD: `device` changes type.
    let taken = r#"{"type": "record", "name": "Status", "namespace": "org.millrace.it", "fields": [
        {"name": "device", "type": "long"}
    ]}"#;
    client(&registry).register(&format!("{out}-value"), &NewSchema::avro(taken))?;
    let schemas = schema_files(&[("status.avsc", STATUS)])?;
    let mut m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{url}"}}
sources: [{{topic: {input}}}]
sinks:
  statuses: {{topic: {out}, format: avro, schema: "{status}"}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        url = registry.url(),
        status = path(&schemas, "status.avsc"),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.is_running() {
        if Instant::now() > deadline {
            bail!("millrace kept running; log:\n{}", m.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = m.log_tail(30);
    assert!(log.contains("sinks.statuses"), "{log}");
    assert!(log.contains("409"), "{log}");
    Ok(())
}

#[test]
fn without_a_registry_records_wait_and_sigterm_still_stops_cleanly() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (input, out, dead, group) = (
        unique("avro-none-in"),
        unique("avro-none-out"),
        unique("avro-none-dead"),
        unique("avro-none"),
    );
    rt.block_on(create_topics(&[(&input, 2), (&out, 2), (&dead, 1)]))?;
    // Nothing listens on this port: every schema lookup fails.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{unreachable}"}}
sources: [{{topic: {input}, format: avro}}]
sinks: {{out: {{topic: {out}}}}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
    ))?;
    m.wait_ready(Duration::from_secs(60))?;
    // Partition 0: framed records, which need the registry. Partition 1:
    // JSON written to the Avro topic by mistake, which does not.
    let framed = Encoder::new(parsed(READING_V1), 1);
    let records: Vec<(String, i32, Vec<u8>)> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                (
                    format!("dev-{i}"),
                    0,
                    framed.encode(&reading(i, 1)).expect("encodes"),
                )
            } else {
                let json = serde_json::to_vec(&reading(i, 1)).expect("JSON");
                (format!("dev-{i}"), 1, json)
            }
        })
        .collect();
    rt.block_on(produce_to(&producer(), &input, &records))?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while read_committed(&dead)?.len() < 20 {
        if Instant::now() > deadline {
            bail!(
                "the JSON records were not dead-lettered; log:\n{}",
                m.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let dead_letters = read_committed(&dead)?;
    assert_eq!(
        dead_letters.len(),
        20,
        "only the JSON records are dead letters"
    );
    for msg in &dead_letters {
        assert_eq!(msg.partition(), 0, "one dead-letter partition");
        assert_eq!(header_map(msg)["millrace.reason"], "wrong_magic");
        assert_eq!(header_map(msg)["millrace.source.partition"], "1");
    }
    assert!(
        read_committed(&out)?.is_empty(),
        "nothing decoded without the registry"
    );
    assert!(m.metric("millrace_registry_unavailable_total")? >= 2.0);
    assert!(
        !group_caught_up(&group, &input),
        "the waiting records are not committed"
    );
    m.stop_cleanly()?;
    Ok(())
}

#[test]
fn confluent_python_client_round_trips_through_a_pipeline() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let Some(python) = python_with_confluent_kafka() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("python3 with confluent-kafka is required in CI (scripts/setup installs it)");
        }
        progress("skipped: no python3 with confluent-kafka[avro,schemaregistry]");
        return Ok(());
    };
    let registry = start_registry()?;
    let (input, out, dead, group) = (
        unique("avro-py-in"),
        unique("avro-py-out"),
        unique("avro-py-dead"),
        unique("avro-py"),
    );
    rt.block_on(create_topics(&[(&input, 2), (&out, 2), (&dead, 1)]))?;
    let count = 100;
    let script = repo_root().join("integration-tests/python/avro_roundtrip.py");
    let run = |step: &str| -> anyhow::Result<String> {
        let output = Command::new(&python)
            .arg(&script)
            .arg(step)
            .args(["--registry", &registry.url(), "--bootstrap", bootstrap()])
            .args(["--input", &input, "--output", &out])
            .args(["--count", &count.to_string()])
            .output()?;
        if !output.status.success() {
            bail!(
                "avro_roundtrip.py {step} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    run("produce")?;

    let schemas = schema_files(&[("reading.avsc", READING_V2), ("status.avsc", STATUS)])?;
    let m = Millrace::start(&format!(
        r#"
pipeline: {group}
kafka: {{group_id: {group}, instance_id: it-{group}}}
registry: {{url: "{url}"}}
sources: [{{topic: {input}, format: avro, schema: "{reader}"}}]
steps:
  - set: {{status: 'value.hr > 100 ? "HIGH" : "OK"'}}
sinks:
  out: {{topic: {out}, format: avro, schema: "{status}"}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        url = registry.url(),
        reader = path(&schemas, "reading.avsc"),
        status = path(&schemas, "status.avsc"),
    ))?;
    wait_caught_up(&m, &group, &input)?;
    assert!(read_committed(&dead)?.is_empty(), "no dead letters");

    let printed = run("consume")?;
    let lines: Vec<Json> = printed
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let (latest, records) = lines.split_last().context("no output from consume")?;
    let latest_id = latest["latest_id"].as_u64().context("latest id")?;
    let mut by_key = BTreeMap::new();
    for line in records {
        assert_eq!(line["schema_id"].as_u64(), Some(latest_id), "{line}");
        by_key.insert(
            line["key"].as_str().unwrap_or_default().to_string(),
            line["value"].clone(),
        );
    }
    assert_eq!(by_key.len(), count);
    for i in 0..count {
        let version = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(by_key[&format!("dev-{i}")], status(i, version), "dev-{i}");
    }
    Ok(())
}

/// `python3` if it can import Confluent's schema-registry Avro client.
fn python_with_confluent_kafka() -> Option<PathBuf> {
    let python = Path::new("python3");
    let ok = Command::new(python)
        .args([
            "-c",
            "import confluent_kafka.schema_registry.avro, fastavro",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| python.to_path_buf())
}

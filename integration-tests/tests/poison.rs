//! Bad outputs on the real broker: one output that cannot be produced must
//! cost exactly that output, never the rest of its partition.
//!
//! - A window result routed to a sink that does not exist goes to the
//!   dead-letter topic alone, with its key and bounds; the window still
//!   closes, every other result flows, and no input record is
//!   dead-lettered.
//! - The same for a `stale` timer's event, and for the event a record
//!   triggers from state.
//! - A record whose state would not fit in a changelog record is
//!   dead-lettered itself (its writes undone); the pipeline goes on.
//! - A dead letter larger than the producer's `message.max.bytes` is cut,
//!   with a header saying so, instead of aborting every transaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, header_map, produce_to, producer, read_committed,
    unique,
};
use rdkafka::message::{Message, OwnedMessage};

/// Topics of one test: (name, input, output, dead letters).
fn make_topics(
    rt: &tokio::runtime::Runtime,
    prefix: &str,
) -> anyhow::Result<(String, String, String, String)> {
    let name = unique(prefix);
    let (input, output, dead) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dead"),
    );
    rt.block_on(create_topics(&[(&input, 1), (&output, 1), (&dead, 1)]))?;
    Ok((name, input, output, dead))
}

/// A pipeline file: `steps` and `producer` (extra `producer_properties`
/// lines) are YAML fragments indented for their place.
fn yaml(
    name: &str,
    input: &str,
    output: &str,
    dead: &str,
    state: &std::path::Path,
    producer: &str,
    steps: &str,
) -> String {
    format!(
        r#"
pipeline: {name}
kafka:
  group_id: {name}
  producer_properties:
    linger.ms: "5"
{producer}
sources:
  - topic: {input}
steps:
{steps}
sinks:
  out: {{topic: {output}}}
dead_letter:
  topic: {dead}
state:
  dir: {dir}
commit:
  interval: 200ms
http:
  listen: "127.0.0.1:{{ops_port}}"
"#,
        dir = state.display()
    )
}

/// Waits until the pipeline's group has committed the whole input.
fn wait_caught_up(group: &str, input: &str, m: &Millrace, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !group_caught_up(group, input) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the pipeline did not commit its input within {within:?}; log:\n{}",
                m.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

/// Reads a topic until it holds at least `n` committed records (or the
/// time is up), then returns what it holds.
fn wait_for(topic: &str, n: usize, within: Duration) -> anyhow::Result<Vec<OwnedMessage>> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_committed(topic)?;
        if records.len() >= n || Instant::now() > deadline {
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn json(record: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(record.payload().unwrap_or_default()).unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

const WINDOW_MS: i64 = 10_000;

#[test]
fn a_window_result_that_cannot_be_routed_is_dead_lettered_alone() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "poison-window")?;
    let state = tempfile::tempdir()?;
    let steps = r#"
  - window: {type: tumbling, size: 10s, time: value.t, aggregates: [count]}
  - route: 'value.key == "bad" ? "nowhere" : "out"'
"#;
    let mut m = Millrace::start(&yaml(
        &name,
        &input,
        &output,
        &dead,
        state.path(),
        "",
        steps,
    ))?;
    m.wait_ready(Duration::from_secs(60))?;

    // Six windows of five keys, one partition so the order is known; `bad`
    // has a result in every window. Window w closes with the first record
    // of window w + 1; the last record closes window 5.
    let t0 = (now_ms() - 30 * 60 * 1_000) / WINDOW_MS * WINDOW_MS;
    let keys = ["k0", "k1", "bad", "k2", "k3"];
    let mut input_records = Vec::new();
    let mut reference: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for w in 0..6i64 {
        for (k, key) in keys.iter().enumerate() {
            for j in 0..(k as i64 + 1) {
                let t = t0 + w * WINDOW_MS + k as i64 * 100 + j;
                let body = serde_json::json!({"t": t});
                input_records.push((key.to_string(), 0, body.to_string().into_bytes()));
                *reference
                    .entry((key.to_string(), t0 + w * WINDOW_MS))
                    .or_default() += 1;
            }
        }
    }
    let body = serde_json::json!({"t": t0 + 20 * WINDOW_MS});
    input_records.push(("k0".into(), 0, body.to_string().into_bytes()));
    rt.block_on(produce_to(&producer(), &input, &input_records))?;
    wait_caught_up(&name, &input, &m, Duration::from_secs(90))?;

    let good: BTreeMap<(String, i64), i64> = reference
        .iter()
        .filter(|((k, _), _)| k != "bad")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let out = read_committed(&output)?;
    let mut got = BTreeMap::new();
    for r in &out {
        let v = json(r);
        let key = v["key"].as_str().unwrap_or_default().to_string();
        let start = v["start"].as_i64().unwrap_or_default();
        let previous = got.insert((key, start), v["count"].as_i64().unwrap_or_default());
        assert!(previous.is_none(), "a duplicated result: {v}");
    }
    assert_eq!(
        got,
        good,
        "every routable result, once; log:\n{}",
        m.log_tail(30)
    );

    let dead_letters = read_committed(&dead)?;
    let mut bad = BTreeMap::new();
    for r in &dead_letters {
        let h = header_map(r);
        assert_eq!(
            h.get("millrace.failed").map(String::as_str),
            Some("output"),
            "{h:?}"
        );
        assert_eq!(h["millrace.reason"], "route", "{h:?}");
        assert_eq!(h["millrace.pipeline"], name);
        assert_eq!(h["millrace.step"], "steps[0] (window)", "{h:?}");
        assert_eq!(h["millrace.output.key"], "bad", "{h:?}");
        assert!(h["millrace.error"].contains("nowhere"), "{h:?}");
        assert_eq!(
            h["millrace.source.topic"], input,
            "the record that closed it"
        );
        assert_eq!(r.key(), Some(&b"bad"[..]));
        let v = json(r);
        let start: i64 = h["millrace.window.start"].parse()?;
        let end: i64 = h["millrace.window.end"].parse()?;
        assert_eq!(
            (v["start"].as_i64(), v["end"].as_i64()),
            (Some(start), Some(end))
        );
        assert_eq!(end - start, WINDOW_MS);
        let previous = bad.insert(
            ("bad".to_string(), start),
            v["count"].as_i64().unwrap_or(-1),
        );
        assert!(previous.is_none(), "a duplicated dead letter: {v}");
    }
    let expected_bad: BTreeMap<(String, i64), i64> = reference
        .iter()
        .filter(|((k, _), _)| k == "bad")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        bad, expected_bad,
        "each unroutable result dead-lettered once, no input"
    );
    m.stop_cleanly()?;
    Ok(())
}

#[test]
fn a_stale_event_that_cannot_be_routed_is_dead_lettered_alone() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "poison-stale")?;
    let state = tempfile::tempdir()?;
    let steps = r#"
  - stale: {after: 2s}
  - route: 'value.key == "bad" ? "nowhere" : "out"'
"#;
    let mut m = Millrace::start(&yaml(
        &name,
        &input,
        &output,
        &dead,
        state.path(),
        "",
        steps,
    ))?;
    m.wait_ready(Duration::from_secs(60))?;
    let p = producer();
    let both = vec![
        ("good".to_string(), 0, b"{}".to_vec()),
        ("bad".to_string(), 0, b"{}".to_vec()),
    ];
    // Both keys go stale (a timer event each), come back (an event each,
    // triggered by the record) and go stale again.
    rt.block_on(produce_to(&p, &input, &both))?;
    let out = wait_for(&output, 1, Duration::from_secs(30))?;
    assert_eq!(
        out.len(),
        1,
        "good's stale event flows; log:\n{}",
        m.log_tail(30)
    );
    rt.block_on(produce_to(&p, &input, &both))?;
    let out = wait_for(&output, 3, Duration::from_secs(30))?;
    let dead_letters = wait_for(&dead, 3, Duration::from_secs(30))?;
    // A repeat would show now.
    std::thread::sleep(Duration::from_secs(3));
    let events = |records: &[OwnedMessage]| -> Vec<(String, String)> {
        records
            .iter()
            .map(|r| {
                let v = json(r);
                (
                    v["key"].as_str().unwrap_or_default().to_string(),
                    v["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let expect = |key: &str| -> Vec<(String, String)> {
        ["stale", "resumed", "stale"]
            .iter()
            .map(|s| (key.to_string(), s.to_string()))
            .collect()
    };
    assert_eq!(events(&out), expect("good"), "log:\n{}", m.log_tail(30));
    assert_eq!(events(&dead_letters), expect("bad"));
    assert_eq!(
        events(&read_committed(&output)?),
        expect("good"),
        "no repeats"
    );
    assert_eq!(events(&read_committed(&dead)?), expect("bad"), "no repeats");
    for (r, trigger) in dead_letters.iter().zip(["timer", "record", "timer"]) {
        let h = header_map(r);
        assert_eq!(h["millrace.failed"], "output", "{h:?}");
        assert_eq!(h["millrace.reason"], "route", "{h:?}");
        assert_eq!(h["millrace.step"], "steps[0] (stale)", "{h:?}");
        assert_eq!(h["millrace.output.key"], "bad", "{h:?}");
        assert_eq!(h["millrace.source.partition"], "0", "{h:?}");
        // A timer's output has no input record; a record's names it.
        assert_eq!(
            h.contains_key("millrace.source.offset"),
            trigger == "record",
            "{trigger}: {h:?}"
        );
    }
    m.stop_cleanly()?;
    Ok(())
}

#[test]
fn a_record_whose_state_would_not_fit_is_dead_lettered() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "poison-state")?;
    let state = tempfile::tempdir()?;
    // A quantile sketch over a thousand values, each in a bin of its own,
    // grows by about 2 bytes a value, to 2 KB: past the producer's limit
    // (without the fix, the changelog record aborts every commit from then
    // on). The sketch of one repeated value stays tiny.
    let producer_props = r#"    message.max.bytes: "1500""#;
    let steps = r#"
  - window: {type: tumbling, size: 10s, time: value.t, value: value.v, aggregates: [count, p50]}
"#;
    // Small transactions, so that the large entry reaches a changelog
    // record before the window closes and deletes it.
    let config = yaml(
        &name,
        &input,
        &output,
        &dead,
        state.path(),
        producer_props,
        steps,
    )
    .replace("interval: 200ms", "interval: 200ms\n  max_records: 20");
    let mut m = Millrace::start(&config)?;
    m.wait_ready(Duration::from_secs(60))?;
    let t0 = (now_ms() - 30 * 60 * 1_000) / WINDOW_MS * WINDOW_MS;
    let mut records = Vec::new();
    const N: i64 = 1_000;
    for i in 0..N {
        let wide = serde_json::json!({"t": t0 + i, "v": 1.03f64.powi(i as i32)});
        records.push(("wide".to_string(), 0, wide.to_string().into_bytes()));
        let narrow = serde_json::json!({"t": t0 + i, "v": 5});
        records.push(("narrow".to_string(), 0, narrow.to_string().into_bytes()));
    }
    // Closes the window.
    let last = serde_json::json!({"t": t0 + 5 * WINDOW_MS, "v": 1});
    records.push(("narrow".to_string(), 0, last.to_string().into_bytes()));
    rt.block_on(produce_to(&producer(), &input, &records))?;
    wait_caught_up(&name, &input, &m, Duration::from_secs(90))?;

    let dead_letters = read_committed(&dead)?;
    for r in &dead_letters {
        let h = header_map(r);
        assert_eq!(h["millrace.reason"], "state_too_large", "{h:?}");
        assert_eq!(h["millrace.failed"], "input", "{h:?}");
        assert_eq!(r.key(), Some(&b"wide"[..]));
        assert!(h["millrace.error"].contains("1500"), "{h:?}");
        assert_eq!(h["millrace.source.topic"], input, "{h:?}");
        assert!(!h.contains_key("millrace.truncated"), "{h:?}");
    }
    assert!(
        !dead_letters.is_empty(),
        "some wide records grew the state too far"
    );
    let out = read_committed(&output)?;
    let counts: BTreeMap<String, i64> = out
        .iter()
        .map(|r| {
            let v = json(r);
            (
                v["key"].as_str().unwrap_or_default().to_string(),
                v["count"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(out.len(), 2, "one result per key: {counts:?}");
    assert_eq!(counts["narrow"], N, "narrow records all counted");
    assert_eq!(
        counts["wide"] + dead_letters.len() as i64,
        N,
        "every wide record counted or dead-lettered, none both"
    );
    m.stop_cleanly()?;
    Ok(())
}

#[test]
fn a_dead_letter_over_the_producer_limit_is_truncated() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "poison-big")?;
    let state = tempfile::tempdir()?;
    let producer_props = r#"    message.max.bytes: "2000""#;
    let steps = r#"
  - filter: "value.v > 0"
"#;
    let mut m = Millrace::start(&yaml(
        &name,
        &input,
        &output,
        &dead,
        state.path(),
        producer_props,
        steps,
    ))?;
    m.wait_ready(Duration::from_secs(60))?;
    // Good records around one that is not JSON and five times the limit.
    let big = vec![b'x'; 10_000];
    let mut records = Vec::new();
    for i in 0..10 {
        records.push((
            "good".to_string(),
            0,
            format!(r#"{{"v": {}}}"#, i + 1).into_bytes(),
        ));
        if i == 4 {
            records.push(("big".to_string(), 0, big.clone()));
        }
    }
    rt.block_on(produce_to(&producer(), &input, &records))?;
    wait_caught_up(&name, &input, &m, Duration::from_secs(60))?;

    assert_eq!(
        read_committed(&output)?.len(),
        10,
        "the good records flowed"
    );
    let dead_letters = read_committed(&dead)?;
    assert_eq!(dead_letters.len(), 1);
    let r = &dead_letters[0];
    let h = header_map(r);
    assert_eq!(h["millrace.reason"], "decode", "{h:?}");
    assert_eq!(h["millrace.truncated"], "original=10000 bytes", "{h:?}");
    assert_eq!(r.key(), Some(&b"big"[..]));
    let payload = r.payload().unwrap_or_default();
    assert!(
        !payload.is_empty() && payload.len() < 2_000,
        "{}",
        payload.len()
    );
    assert!(
        payload.iter().all(|b| *b == b'x'),
        "a prefix of the original"
    );
    m.stop_cleanly()?;
    Ok(())
}

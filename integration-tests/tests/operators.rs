//! Stateful steps on the real broker, one behaviour each: late records go
//! to the dead-letter topic, dedup forgets ids after their TTL, a record
//! bridging two sessions merges them, reduce keeps running totals across a
//! SIGKILL and starts stale keys afresh.

use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, header_map, produce_to, producer, read_committed, unique,
};
use rdkafka::message::{Message, OwnedMessage};

/// Event times are offsets in seconds from a recent base, so outputs carry
/// timestamps the broker accepts and keeps.
fn base() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    (now - 10 * 60 * 1_000) / 60_000 * 60_000
}

struct Run {
    input: String,
    output: String,
    dead: String,
    millrace: Millrace,
    base: i64,
    _state: tempfile::TempDir,
}

/// Creates topics, produces `events` (key, seconds, extra fields) in order
/// to one partition, and starts a pipeline with `step`.
fn run(prefix: &str, step: &str, events: &[(&str, i64, serde_json::Value)]) -> anyhow::Result<Run> {
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique(prefix);
    let (input, output, dead) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dead"),
    );
    rt.block_on(create_topics(&[(&input, 1), (&output, 1), (&dead, 1)]))?;
    let base = base();
    let records: Vec<(String, i32, Vec<u8>)> = events
        .iter()
        .map(|(key, seconds, extra)| {
            let mut value = serde_json::json!({"t": base + seconds * 1_000});
            if let (Some(v), Some(e)) = (value.as_object_mut(), extra.as_object()) {
                v.extend(e.clone());
            }
            (key.to_string(), 0, value.to_string().into_bytes())
        })
        .collect();
    rt.block_on(produce_to(&producer(), &input, &records))?;
    let state = tempfile::tempdir()?;
    let yaml = format!(
        r#"
pipeline: {name}
sources: [{{topic: {input}}}]
steps:
{step}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = state.path().display()
    );
    Ok(Run {
        input,
        output,
        dead,
        millrace: Millrace::start(&yaml)?,
        base,
        _state: state,
    })
}

fn wait_for(topic: &str, count: usize, m: &Millrace) -> anyhow::Result<Vec<OwnedMessage>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = read_committed(topic)?;
        if records.len() >= count || Instant::now() > deadline {
            assert_eq!(records.len(), count, "{topic}; log:\n{}", m.log_tail(20));
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default()
}

#[test]
fn a_record_for_a_closed_window_is_dead_lettered_as_late() -> anyhow::Result<()> {
    let none = serde_json::json!({});
    let r = run(
        "late",
        "  - window: {type: tumbling, size: 10s, time: value.t, emit: final}",
        &[
            ("k", 0, none.clone()),
            ("k", 5, none.clone()),
            ("k", 12, none.clone()), // closes [0, 10)
            ("k", 3, none.clone()),  // too late for [0, 10)
            ("k", 25, none.clone()), // closes [10, 20)
        ],
    )?;
    let out = wait_for(&r.output, 2, &r.millrace)?;
    let windows: Vec<(i64, i64)> = out
        .iter()
        .map(|m| {
            let v = json(m);
            (
                (v["start"].as_i64().unwrap_or(-1) - r.base) / 1_000,
                v["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(windows, vec![(0, 2), (10, 1)]);
    let dead = wait_for(&r.dead, 1, &r.millrace)?;
    let headers = header_map(&dead[0]);
    assert_eq!(headers["millrace.reason"], "late");
    assert_eq!(json(&dead[0])["t"].as_i64(), Some(r.base + 3_000));
    Ok(())
}

#[test]
fn dedup_drops_repeats_within_the_ttl_only() -> anyhow::Result<()> {
    let id = |s: &str| serde_json::json!({ "id": s });
    let r = run(
        "dedup",
        "  - dedup: {id: value.id, ttl: 10s, time: value.t}",
        &[
            ("k", 0, id("a")),
            ("k", 1, id("b")),
            ("k", 5, id("a")),  // seen 5 s ago: dropped (and the ttl restarts)
            ("k", 16, id("a")), // last seen 11 s ago: passes
            ("k", 17, id("b")), // last seen 16 s ago: passes
            ("k", 18, id("b")), // dropped
        ],
    )?;
    let out = wait_for(&r.output, 4, &r.millrace)?;
    let seen: Vec<(String, i64)> = out
        .iter()
        .map(|m| {
            let v = json(m);
            (
                v["id"].as_str().unwrap_or_default().to_string(),
                (v["t"].as_i64().unwrap_or(-1) - r.base) / 1_000,
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [("a", 0), ("b", 1), ("a", 16), ("b", 17)]
        .iter()
        .map(|(s, t)| (s.to_string(), *t))
        .collect();
    assert_eq!(seen, expected);
    Ok(())
}

#[test]
fn a_bridging_record_merges_two_sessions() -> anyhow::Result<()> {
    let none = serde_json::json!({});
    let r = run(
        "session",
        // lateness 10s keeps the first session open while the later
        // records arrive (the watermark trails the newest event by 10 s).
        "  - window: {type: session, gap: 5s, lateness: 10s, time: value.t, emit: final}",
        &[
            ("k", 0, none.clone()),
            ("k", 2, none.clone()),  // session [0, 2]
            ("k", 12, none.clone()), // a second session [12, 12]
            ("k", 7, none.clone()),  // within the gap of both: one session [0, 12]
            ("k", 40, none.clone()), // watermark 30 closes it (12 + 5 <= 30)
        ],
    )?;
    let out = wait_for(&r.output, 1, &r.millrace)?;
    let v = json(&out[0]);
    assert_eq!((v["start"].as_i64().unwrap_or(-1) - r.base) / 1_000, 0);
    assert_eq!((v["end"].as_i64().unwrap_or(-1) - r.base) / 1_000, 17);
    assert_eq!(v["count"].as_i64(), Some(4));
    assert!(read_committed(&r.dead)?.is_empty());
    Ok(())
}

#[test]
fn reduce_keeps_running_totals_across_a_kill_and_restarts_stale_keys() -> anyhow::Result<()> {
    let v = |n: i64| serde_json::json!({ "v": n });
    let mut r = run(
        "reduce",
        "  - reduce: {value: value.v, aggregates: [count, sum], ttl: 10s, time: value.t}",
        &[("a", 0, v(1)), ("a", 2, v(2)), ("b", 3, v(5))],
    )?;
    wait_for(&r.output, 3, &r.millrace)?;
    // The totals so far are committed; a SIGKILL must not lose them.
    r.millrace.kill()?;
    r.millrace.restart()?;
    let later: Vec<(String, i32, Vec<u8>)> =
        [("a", 15, 3), ("b", 16, 1), ("a", 20, 4), ("b", 21, 2)]
            .iter()
            .map(|(key, seconds, n)| {
                let value = serde_json::json!({"t": r.base + seconds * 1_000, "v": n});
                (key.to_string(), 0, value.to_string().into_bytes())
            })
            .collect();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(produce_to(&producer(), &r.input, &later))?;
    let out = wait_for(&r.output, 7, &r.millrace)?;
    let totals: Vec<(String, i64, f64)> = out
        .iter()
        .map(|m| {
            let v = json(m);
            (
                v["key"].as_str().unwrap_or_default().to_string(),
                v["count"].as_i64().unwrap_or(-1),
                v["sum"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let expected: Vec<(String, i64, f64)> = [
        ("a", 1, 1.0),
        ("a", 2, 3.0),
        ("b", 1, 5.0),
        ("a", 1, 3.0), // last update at 2 s, ttl 10 s: stale at 15 s, afresh
        ("b", 1, 1.0), // last at 3 s: stale at 16 s
        ("a", 2, 7.0), // continues from 15 s
        ("b", 2, 3.0),
    ]
    .iter()
    .map(|(k, c, s)| (k.to_string(), *c, *s))
    .collect();
    assert_eq!(totals, expected, "log:\n{}", r.millrace.log_tail(20));
    Ok(())
}

//! A stateless pipeline end to end against the real broker: exact output,
//! dead letters with their headers, metrics that move, start positions and
//! graceful shutdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, bootstrap, create_topics, header_map, headers, produce, producer, read_committed,
    unique,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Timestamp};

struct Topics {
    input: String,
    high: String,
    low: String,
    dead: String,
    group: String,
}

fn topics(prefix: &str) -> Topics {
    Topics {
        input: unique(&format!("{prefix}-in")),
        high: unique(&format!("{prefix}-high")),
        low: unique(&format!("{prefix}-low")),
        dead: unique(&format!("{prefix}-dead")),
        group: unique(&format!("{prefix}-group")),
    }
}

fn routed_pipeline(t: &Topics, start: &str) -> String {
    format!(
        r#"
pipeline: {group}
kafka:
  group_id: {group}
  instance_id: it-{group}
sources:
  - topic: {input}
    start: "{start}"
steps:
  - filter: "value.level >= 0"
  - set:
      celsius: "(value.f - 32.0) * 5.0 / 9.0"
  - project: [id, device, celsius, level]
  - rekey: "value.device"
  - route: 'value.level > 5 ? "high" : "low"'
sinks:
  high: {{topic: {high}}}
  low: {{topic: {low}}}
dead_letter:
  topic: {dead}
http:
  listen: "127.0.0.1:{{ops_port}}"
"#,
        group = t.group,
        input = t.input,
        high = t.high,
        low = t.low,
        dead = t.dead,
    )
}

async fn create(t: &Topics) -> anyhow::Result<()> {
    create_topics(&[(&t.input, 3), (&t.high, 3), (&t.low, 2), (&t.dead, 1)]).await
}

fn reading(id: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "device": format!("d{}", id % 10),
        "f": 32.0 + (id % 100) as f64 * 1.8,
        "level": (id % 13) as i64 - 2,
        "noise": "dropped by project",
    })
}

/// Waits until `topic` holds `count` committed records, then returns them.
fn wait_for(
    topic: &str,
    count: usize,
    m: &Millrace,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = read_committed(topic)?;
        if records.len() >= count || Instant::now() > deadline {
            assert_eq!(
                records.len(),
                count,
                "records in {topic}; millrace log:\n{}",
                m.log_tail(30)
            );
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn every_record_lands_exactly_once_in_the_sink_its_route_names() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let t = topics("flow");
    rt.block_on(create(&t))?;
    const N: u64 = 5_000;
    let input: Vec<(Option<String>, Vec<u8>)> = (0..N)
        .map(|id| (Some(format!("k{id}")), reading(id).to_string().into_bytes()))
        .collect();
    rt.block_on(produce(&producer(), &t.input, &input))?;

    let mut m = Millrace::start(&routed_pipeline(&t, "earliest"))?;
    m.wait_ready(Duration::from_secs(60))?;

    // The test's own reference: what the pipeline must produce.
    let mut expected_high = BTreeMap::new();
    let mut expected_low = BTreeMap::new();
    for id in 0..N {
        let r = reading(id);
        let level = r["level"].as_i64().unwrap_or_default();
        if level < 0 {
            continue;
        }
        let celsius = (r["f"].as_f64().unwrap_or_default() - 32.0) * 5.0 / 9.0;
        let out = serde_json::json!({
            "id": id, "device": r["device"], "celsius": celsius, "level": level
        });
        if level > 5 {
            expected_high.insert(id, out);
        } else {
            expected_low.insert(id, out);
        }
    }

    for (topic, expected) in [(&t.high, &expected_high), (&t.low, &expected_low)] {
        let records = wait_for(topic, expected.len(), &m)?;
        let mut got = BTreeMap::new();
        for r in &records {
            let v: serde_json::Value = serde_json::from_slice(r.payload().unwrap_or_default())?;
            let id = v["id"].as_u64().expect("id");
            assert_eq!(
                r.key(),
                Some(v["device"].as_str().expect("device").as_bytes())
            );
            assert!(
                got.insert(id, v).is_none(),
                "record {id} duplicated in {topic}"
            );
        }
        assert_eq!(got.len(), expected.len(), "records in {topic}");
        for (id, want) in expected {
            assert_eq!(got.get(id), Some(want), "record {id} in {topic}");
        }
    }
    assert!(read_committed(&t.dead)?.is_empty());

    // The counters moved, and agree with what was committed.
    let in_series = format!("millrace_records_in_total{{topic=\"{}\"}}", t.input);
    // The last records may be filtered ones, committed after the last output.
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.metric(&in_series)? < N as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(m.metric(&in_series)?, N as f64);
    let out_series = format!("millrace_records_out_total{{topic=\"{}\"}}", t.high);
    assert_eq!(m.metric(&out_series)?, expected_high.len() as f64);
    assert!(m.metric("millrace_transaction_commit_seconds_count")? >= 1.0);
    assert_eq!(m.get("/healthz")?.0, 200);
    m.stop_cleanly()?;
    Ok(())
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_their_reason() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let t = topics("dlq");
    rt.block_on(create(&t))?;
    let mut m = Millrace::start(&routed_pipeline(&t, "earliest"))?;
    m.wait_ready(Duration::from_secs(60))?;

    // Good and bad records interleaved on one partition, so their order is
    // known; the bad ones fail in different places.
    let p = producer();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{\"id\": 1,".to_vec(), "decode"),
        (
            "no level",
            br#"{"id": 2, "device": "d2", "f": 50.0}"#.to_vec(),
            "eval",
        ),
        (
            "text level",
            br#"{"id": 3, "device": "d3", "f": 50.0, "level": "x"}"#.to_vec(),
            "eval",
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01], "decode"),
    ];
    let mut good = 0;
    rt.block_on(async {
        for (i, (label, payload, _)) in bad.iter().enumerate() {
            let good_value = reading(100 + i as u64 * 13 + 9).to_string();
            for (key, value, hdrs) in [
                ("good", good_value.as_bytes(), headers(&[])),
                (*label, payload.as_slice(), headers(&[("trace-id", label)])),
            ] {
                let record = FutureRecord::to(&t.input)
                    .key(key)
                    .payload(value)
                    .partition(0)
                    .headers(hdrs);
                p.send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            }
            good += 1;
        }
        anyhow::Ok(())
    })?;

    let dead = wait_for(&t.dead, bad.len(), &m)?;
    for (record, (label, payload, reason)) in dead.iter().zip(&bad) {
        let h = header_map(record);
        assert_eq!(
            record.payload(),
            Some(payload.as_slice()),
            "original bytes kept"
        );
        assert_eq!(record.key(), Some(label.as_bytes()), "original key kept");
        assert_eq!(h["millrace.reason"], *reason, "{label}: {h:?}");
        assert_eq!(h["millrace.source.topic"], t.input);
        assert_eq!(h["millrace.source.partition"], "0");
        assert!(h["millrace.source.offset"].parse::<i64>().is_ok());
        assert!(!h["millrace.error"].is_empty());
        assert_eq!(h["trace-id"], *label, "original headers kept");
    }
    // The good records around the bad ones all flowed.
    let high = read_committed(&t.high)?.len();
    let low = read_committed(&t.low)?.len();
    assert_eq!(high + low, good, "good records around the bad ones");
    let dead_series = format!(
        "millrace_records_dead_lettered_total{{reason=\"decode\",topic=\"{}\"}}",
        t.input
    );
    assert_eq!(m.metric(&dead_series)?, 2.0);
    Ok(())
}

#[test]
fn a_new_group_starts_at_the_configured_time() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let t = topics("start");
    rt.block_on(create(&t))?;
    let p = producer();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let cutoff = now_ms - 60_000;
    rt.block_on(async {
        for id in 0..200u64 {
            // Half the records an hour old, half just now.
            let ts = if id < 100 { now_ms - 3_600_000 } else { now_ms };
            let value = reading(id * 13 + 9).to_string();
            let record = FutureRecord::to(&t.input)
                .key("k")
                .payload(&value)
                .timestamp(ts);
            p.send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })?;
    let m = Millrace::start(&routed_pipeline(&t, &cutoff.to_string()))?;
    let out = wait_for(&t.high, 100, &m)?;
    for r in &out {
        assert_eq!(
            r.timestamp(),
            Timestamp::CreateTime(now_ms),
            "only recent records"
        );
    }
    Ok(())
}

#[test]
fn sigterm_commits_leaves_the_group_and_exits_zero() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let t = topics("term");
    rt.block_on(create(&t))?;
    let input: Vec<(Option<String>, Vec<u8>)> = (0..1_000u64)
        .map(|id| (None, reading(id * 13 + 9).to_string().into_bytes()))
        .collect();
    rt.block_on(produce(&producer(), &t.input, &input))?;
    let mut m = Millrace::start(&routed_pipeline(&t, "earliest"))?;
    m.wait_ready(Duration::from_secs(60))?;
    wait_for(&t.high, 1_000, &m)?;

    let started = Instant::now();
    m.stop_cleanly()?;
    let took = started.elapsed();

    // Left the group: no member remains, so no rebalance waits on a timeout.
    let admin: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let groups = admin.fetch_group_list(Some(&t.group), Duration::from_secs(10))?;
    let members = groups
        .groups()
        .first()
        .map(|g| g.members().len())
        .unwrap_or(0);
    assert_eq!(
        members, 0,
        "members left in the group after SIGTERM ({took:?})"
    );
    Ok(())
}

#[test]
fn at_least_once_mode_delivers_every_record_without_transactions() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let t = topics("alo");
    rt.block_on(create(&t))?;
    let input: Vec<(Option<String>, Vec<u8>)> = (0..2_000u64)
        .map(|id| (None, reading(id * 13 + 9).to_string().into_bytes()))
        .collect();
    rt.block_on(produce(&producer(), &t.input, &input))?;
    let yaml = format!(
        "{}commit:\n  guarantee: at_least_once\n",
        routed_pipeline(&t, "earliest")
    );
    let mut m = Millrace::start(&yaml)?;
    m.wait_ready(Duration::from_secs(60))?;
    // Without a crash nothing repeats: exactly one output per input.
    let out = wait_for(&t.high, 2_000, &m)?;
    let mut ids: Vec<u64> = out
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(r.payload().unwrap_or_default())
                .ok()
                .and_then(|v| v["id"].as_u64())
                .unwrap_or(u64::MAX)
        })
        .collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (0..2_000u64).map(|id| id * 13 + 9).collect();
    assert_eq!(ids, expected);
    // The consumer committed its offsets itself (no transaction carried them).
    let in_series = format!("millrace_records_in_total{{topic=\"{}\"}}", t.input);
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.metric(&in_series)? < 2_000.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(m.metric(&in_series)?, 2_000.0);
    assert_eq!(
        m.metric("millrace_transactions_total{outcome=\"aborted\"}")?,
        0.0
    );
    m.stop_cleanly()?;
    Ok(())
}

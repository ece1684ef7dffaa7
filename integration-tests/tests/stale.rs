//! `stale` on the real broker: devices that go silent raise exactly one
//! `stale` event and one `resumed` event when they come back, although the
//! process is killed with SIGKILL at random moments in between; devices
//! that keep sending raise none while they do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, bench, create_topics, progress, read_committed, unique,
};
use rand::Rng;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};

const DEVICES: usize = 10;
/// Devices at or above this index fall silent for a while.
const SILENT_FROM: usize = 5;

#[test]
fn silences_are_reported_once_across_kills() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("stale");
    let (input, output, dead) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dead"),
    );
    rt.block_on(create_topics(&[(&input, 2), (&output, 1), (&dead, 1)]))?;
    let state = tempfile::tempdir()?;
    let yaml = format!(
        r#"
pipeline: {name}
kafka: {{static_membership: true, instance_id: only}}
sources: [{{topic: {input}}}]
steps:
  - stale: {{after: 3s}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = state.path().display()
    );
    let mut m = Millrace::start(&yaml)?;
    m.wait_ready(Duration::from_secs(60))?;

    // Every device reports every 300 ms; the silent ones stop from 3 s to
    // 12 s; everyone stops at 16 s (and so goes stale once more).
    let silent = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (silent, running, input) = (silent.clone(), running.clone(), input.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer = bench::loader()?;
            while running.load(Ordering::SeqCst) {
                for device in 0..DEVICES {
                    if device >= SILENT_FROM && silent.load(Ordering::SeqCst) {
                        continue;
                    }
                    let key = format!("dev-{device}");
                    let record = BaseRecord::to(&input)
                        .key(&key)
                        .partition((device % 2) as i32)
                        .payload("{}");
                    producer.send(record).map_err(|(e, _)| e)?;
                }
                producer.flush(Duration::from_secs(10))?;
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut next_kill = Duration::from_millis(rng.random_range(1_000..2_500));
    while started.elapsed() < Duration::from_secs(16) {
        let t = started.elapsed();
        silent.store(
            t >= Duration::from_secs(3) && t < Duration::from_secs(12),
            Ordering::SeqCst,
        );
        if t >= next_kill {
            m.kill()?;
            m.restart()?;
            kills += 1;
            next_kill = t + Duration::from_millis(rng.random_range(1_500..3_500));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running.store(false, Ordering::SeqCst);
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    progress(&format!("stale: {kills} kills"));

    // Expected per device: silent ones stale, resumed, stale (at the end);
    // the others stale once, at the end.
    let expected: BTreeMap<String, Vec<&str>> = (0..DEVICES)
        .map(|d| {
            let events = if d >= SILENT_FROM {
                vec!["stale", "resumed", "stale"]
            } else {
                vec!["stale"]
            };
            (format!("dev-{d}"), events)
        })
        .collect();
    let total: usize = expected.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(90);
    let records = loop {
        let records = read_committed(&output)?;
        if records.len() >= total || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // Any late repeat would show up now.
    std::thread::sleep(Duration::from_secs(3));
    let records = if records.len() >= total {
        read_committed(&output)?
    } else {
        records
    };
    let mut got: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut values = Vec::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r.payload().unwrap_or_default())?;
        values.push(v);
    }
    for v in &values {
        let device = v["key"].as_str().unwrap_or_default().to_string();
        let state = match v["state"].as_str() {
            Some("stale") => "stale",
            Some("resumed") => "resumed",
            other => anyhow::bail!("unexpected event {other:?}"),
        };
        got.entry(device).or_default().push(state);
    }
    assert_eq!(
        got,
        expected,
        "after {kills} kills; log:\n{}",
        m.log_tail(30)
    );
    assert!(kills >= 4, "the test killed the process {kills} times");
    assert!(read_committed(&dead)?.is_empty(), "no dead letters");
    m.stop_cleanly()?;
    Ok(())
}

//! Exactly-once under SIGKILL: the `millrace` process is killed at random
//! moments while input keeps arriving, and restarted each time. The
//! committed output must equal the expected output exactly: no record
//! missing, none duplicated, order kept per key; and every poison record
//! (not JSON) is in the dead-letter topic exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce, producer, progress, read_committed, unique,
};
use rand::Rng;
use rdkafka::message::Message;

const RECORDS: u64 = 120_000;
const DEVICES: u64 = 128;
const PARTITIONS: i32 = 4;
const MIN_KILLS: usize = 10;

/// Whether `n` is sent as a poison record (not JSON), which must reach the
/// dead-letter topic exactly once, killed or not.
fn poison(n: u64) -> bool {
    n % 101 == 50
}

/// Whether `n` passes the pipeline's filter (the test's own reference).
fn kept(n: u64) -> bool {
    n % 7 != 3 && !poison(n)
}

fn device(n: u64) -> String {
    format!("device-{}", n % DEVICES)
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let input = unique("crash-in");
    let output = unique("crash-out");
    let dead = unique("crash-dead");
    let group = unique("crash-group");
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&output, PARTITIONS),
        (&dead, PARTITIONS),
    ]))?;

    let yaml = format!(
        r#"
pipeline: crash
kafka:
  group_id: {group}
  instance_id: crash-test-{pid}
  consumer_properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
sources:
  - topic: {input}
steps:
  - filter: "value.n % 7 != 3"
  - set:
      double: "value.n * 2"
  - rekey: "value.device"
sinks:
  out:
    topic: {output}
dead_letter:
  topic: {dead}
commit:
  interval: 100ms
http:
  listen: "127.0.0.1:{{ops_port}}"
"#,
        pid = std::process::id()
    );

    // Input arrives while the kills happen, so every kill lands in a live
    // run: paced to last about as long as the kill cycles.
    let producing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let input = input.clone();
        let producing = producing.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Runtime::new()?;
            let p = producer();
            let batch = 1_500u64;
            let mut n = 0;
            while n < RECORDS {
                let records: Vec<(Option<String>, Vec<u8>)> = (n..(n + batch).min(RECORDS))
                    .map(|i| {
                        let value = if poison(i) {
                            format!("not json {i}")
                        } else {
                            serde_json::json!({"n": i, "device": device(i)}).to_string()
                        };
                        (Some(device(i)), value.into_bytes())
                    })
                    .collect();
                rt.block_on(produce(&p, &input, &records))?;
                n += batch;
                std::thread::sleep(Duration::from_millis(1_000));
            }
            producing.store(false, Ordering::SeqCst);
            Ok(())
        })
    };

    let mut millrace = Millrace::start(&yaml)?;
    let mut rng = rand::rng();
    let mut kills = 0;
    while kills < MIN_KILLS || producing.load(Ordering::SeqCst) {
        // Random moments: some kills land during start-up, group join or
        // restore, most while records flow and transactions are open.
        let wait = Duration::from_millis(rng.random_range(2_000..12_000));
        std::thread::sleep(wait);
        millrace.kill()?;
        kills += 1;
        progress(&format!("kill {kills} after {wait:?}"));
        millrace.restart()?;
        if kills > 40 {
            break;
        }
    }
    feeder.join().expect("feeder thread")?;
    progress(&format!(
        "{kills} kills; input complete; waiting to catch up"
    ));

    let deadline = Instant::now() + Duration::from_secs(180);
    while !group_caught_up(&group, &input) {
        assert!(
            Instant::now() < deadline,
            "pipeline did not catch up; log:\n{}",
            millrace.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let code = millrace.terminate(Duration::from_secs(30))?;
    assert_eq!(code, Some(0), "exit code after SIGTERM");

    let records = read_committed(&output)?;
    let expected = (0..RECORDS).filter(|n| kept(*n)).count();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut last_per_key: HashMap<String, u64> = HashMap::new();
    for m in &records {
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let n = value["n"].as_u64().expect("n");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        assert_eq!(
            value,
            serde_json::json!({"n": n, "device": device(n), "double": n * 2}),
            "transformed value"
        );
        assert_eq!(key, device(n), "output key");
        assert!(kept(n), "record {n} should have been filtered out");
        *seen.entry(n).or_default() += 1;
        if let Some(previous) = last_per_key.insert(key.clone(), n) {
            assert!(
                previous < n,
                "order per key broken for {key}: {previous} then {n}"
            );
        }
    }
    let duplicated: Vec<u64> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let missing: Vec<u64> = (0..RECORDS)
        .filter(|n| kept(*n) && !seen.contains_key(n))
        .collect();
    progress(&format!(
        "{} committed outputs, {} expected, {} duplicated, {} missing",
        records.len(),
        expected,
        duplicated.len(),
        missing.len()
    ));
    assert!(
        duplicated.is_empty(),
        "duplicated: {:?}",
        &duplicated[..duplicated.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "missing: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert_eq!(records.len(), expected);
    assert!(kills >= MIN_KILLS);
    // Dead letters are exactly-once too: every poison record, once.
    let mut dead_letters: HashMap<u64, usize> = HashMap::new();
    for m in read_committed(&dead)? {
        let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        let n: u64 = text
            .strip_prefix("not json ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected dead letter {text:?}"));
        *dead_letters.entry(n).or_default() += 1;
    }
    let expected_dead: HashMap<u64, usize> = (0..RECORDS)
        .filter(|n| poison(*n))
        .map(|n| (n, 1))
        .collect();
    assert_eq!(
        dead_letters, expected_dead,
        "each poison record dead-lettered once"
    );
    Ok(())
}

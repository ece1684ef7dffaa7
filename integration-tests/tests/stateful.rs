//! Stateful exactly-once against the real broker: a windowed aggregate is
//! SIGKILLed at random moments ≥20 times while input arrives, and its
//! committed output must equal a reference computed here from the input;
//! restarts must replay only the changelog tail; a deleted local state must
//! be rebuilt from the changelog with identical results.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce_to, producer, progress, read_committed,
    unique,
};
use rand::Rng;
use rdkafka::message::Message;

const PARTITIONS: i32 = 4;
const KEYS: u64 = 128;
const WINDOW_MS: i64 = 10_000;
const LATENESS_MS: i64 = 3_000;
/// Start of the event times: 40 minutes ago, on a window boundary. Window
/// outputs carry their window end as timestamp, so event times must be
/// recent: brokers refuse timestamps more than an hour in the future
/// (`log.message.timestamp.after.max.ms`) and retention deletes records
/// older than `retention.ms` as soon as their segment rolls.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        (now - 40 * 60 * 1_000) / WINDOW_MS * WINDOW_MS
    })
}

/// The heavy tests (many kills, several processes) run one at a time so
/// that a 2-core machine keeps up.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Record `i`: key, partition, event time and value. Event time moves 5 ms
/// per record with up to 2 s of disorder, less than the 3 s lateness, so no
/// record is late.
fn record(i: u64) -> (String, i32, i64, i64) {
    let key = i % KEYS;
    let jitter = ((i.wrapping_mul(2654435761) >> 7) % 2_000) as i64;
    (
        format!("sensor-{key:03}"),
        (key % PARTITIONS as u64) as i32,
        t0() + i as i64 * 5 - jitter,
        ((i * 7919) % 1_000) as i64,
    )
}

#[derive(Debug, Clone, PartialEq)]
struct Agg {
    count: i64,
    sum: i64,
    min: i64,
    max: i64,
}

/// The reference: every (key, window start) aggregate, and the final
/// watermark of every partition.
fn reference(n: u64) -> (BTreeMap<(String, i64), Agg>, HashMap<i32, i64>) {
    let mut windows: BTreeMap<(String, i64), Agg> = BTreeMap::new();
    let mut max_time: HashMap<i32, i64> = HashMap::new();
    for i in 0..n {
        let (key, partition, time, value) = record(i);
        let start = time.div_euclid(WINDOW_MS) * WINDOW_MS;
        let agg = windows.entry((key, start)).or_insert(Agg {
            count: 0,
            sum: 0,
            min: i64::MAX,
            max: i64::MIN,
        });
        agg.count += 1;
        agg.sum += value;
        agg.min = agg.min.min(value);
        agg.max = agg.max.max(value);
        let m = max_time.entry(partition).or_insert(i64::MIN);
        *m = (*m).max(time);
    }
    let watermarks = max_time
        .into_iter()
        .map(|(p, t)| (p, t - LATENESS_MS))
        .collect();
    (windows, watermarks)
}

/// The reference for `emit: final`: the windows that closed, i.e. whose end
/// the final watermark of their key's partition reached.
fn closed_windows(total: u64) -> BTreeMap<(String, i64), Agg> {
    let (windows, watermarks) = reference(total);
    windows
        .into_iter()
        .filter(|((key, start), _)| {
            let number: u64 = key.trim_start_matches("sensor-").parse().unwrap_or(0);
            let partition = (number % PARTITIONS as u64) as i32;
            start + WINDOW_MS <= watermarks[&partition]
        })
        .collect()
}

/// Keeps, per window, the update with the highest count: the last one.
fn keep_last(last: &mut BTreeMap<(String, i64), Agg>, p: Parsed) {
    let entry = last.entry((p.key, p.start)).or_insert(p.agg.clone());
    if p.agg.count >= entry.count {
        *entry = p.agg;
    }
}

/// Creates the input, output and dead-letter topics of a test named
/// `prefix`; returns (name, input, output, dead).
fn make_topics(
    rt: &tokio::runtime::Runtime,
    prefix: &str,
) -> anyhow::Result<(String, String, String, String)> {
    let name = unique(prefix);
    let input = format!("{name}-in");
    let output = format!("{name}-out");
    let dead = format!("{name}-dead");
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&output, PARTITIONS),
        (&dead, 1),
    ]))?;
    Ok((name, input, output, dead))
}

fn pipeline_yaml(
    name: &str,
    input: &str,
    output: &str,
    dead: &str,
    state_dir: &std::path::Path,
    emit: &str,
) -> String {
    instance_yaml(name, "a", true, input, output, dead, state_dir, emit)
}

/// One instance's pipeline file: `instance` names its transactional id;
/// with `static_membership` a restart takes its partitions back at once.
#[allow(clippy::too_many_arguments)]
fn instance_yaml(
    name: &str,
    instance: &str,
    static_membership: bool,
    input: &str,
    output: &str,
    dead: &str,
    state_dir: &std::path::Path,
    emit: &str,
) -> String {
    format!(
        r#"
pipeline: {name}
kafka:
  group_id: {name}
  instance_id: it-{name}-{instance}
  static_membership: {static_membership}
  consumer_properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
sources:
  - topic: {input}
steps:
  - window:
      type: tumbling
      size: 10s
      time: value.t
      value: value.v
      aggregates: [count, sum, min, max]
      lateness: 3s
      grace: 0s
      emit: {emit}
sinks:
  out: {{topic: {output}}}
dead_letter:
  topic: {dead}
state:
  dir: {dir}
http:
  listen: "127.0.0.1:{{ops_port}}"
"#,
        dir = state_dir.display()
    )
}

fn records(range: std::ops::Range<u64>) -> Vec<(String, i32, Vec<u8>)> {
    range
        .map(|i| {
            let (key, partition, time, value) = record(i);
            let body = serde_json::json!({"t": time, "v": value, "i": i});
            (key, partition, body.to_string().into_bytes())
        })
        .collect()
}

fn wait_caught_up(group: &str, topic: &str, m: &Millrace) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !group_caught_up(group, topic) {
        assert!(
            Instant::now() < deadline,
            "did not catch up; log:\n{}",
            m.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

struct Parsed {
    key: String,
    start: i64,
    end: i64,
    agg: Agg,
}

fn parse(m: &rdkafka::message::OwnedMessage) -> Parsed {
    let v: serde_json::Value =
        serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON output");
    let int = |name: &str| {
        v[name]
            .as_i64()
            .or_else(|| v[name].as_f64().map(|f| f as i64))
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    Parsed {
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        start: int("start"),
        end: int("end"),
        agg: Agg {
            count: int("count"),
            sum: int("sum"),
            min: int("min"),
            max: int("max"),
        },
    }
}

fn crash_windowed(emit: &str, total: u64, min_kills: usize) -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, &format!("win-{emit}"))?;
    let state_dir = tempfile::tempdir()?;
    let yaml = pipeline_yaml(&name, &input, &output, &dead, state_dir.path(), emit);

    let producing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let input = input.clone();
        let producing = producing.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Runtime::new()?;
            let p = producer();
            let batch = 4_000u64;
            let mut n = 0;
            while n < total {
                rt.block_on(produce_to(&p, &input, &records(n..(n + batch).min(total))))?;
                n += batch;
                std::thread::sleep(Duration::from_millis(1_000));
            }
            producing.store(false, Ordering::SeqCst);
            Ok(())
        })
    };

    let mut m = Millrace::start(&yaml)?;
    let mut rng = rand::rng();
    let mut kills = 0;
    while kills < min_kills || producing.load(Ordering::SeqCst) {
        let wait = Duration::from_millis(rng.random_range(1_000..6_000));
        std::thread::sleep(wait);
        m.kill()?;
        kills += 1;
        progress(&format!("{emit}: kill {kills} after {wait:?}"));
        m.restart()?;
        if kills > 60 {
            break;
        }
    }
    feeder.join().expect("feeder")?;
    wait_caught_up(&name, &input, &m)?;
    m.stop_cleanly()?;

    let out = read_committed(&output)?;
    progress(&format!(
        "{emit}: {kills} kills, {} committed outputs",
        out.len()
    ));
    assert!(
        read_committed(&dead)?.is_empty(),
        "no record is late or bad"
    );
    match emit {
        "final" => {
            // Exactly the windows that closed (end <= the partition's final
            // watermark), each exactly once, equal to the reference.
            let expected = closed_windows(total);
            let mut got = BTreeMap::new();
            for m in &out {
                let p = parse(m);
                assert_eq!(p.end - p.start, WINDOW_MS);
                assert!(
                    got.insert((p.key.clone(), p.start), p.agg).is_none(),
                    "window ({}, {}) emitted twice",
                    p.key,
                    p.start
                );
            }
            assert_eq!(got.len(), expected.len(), "number of closed windows");
            for (k, agg) in &expected {
                assert_eq!(got.get(k), Some(agg), "window {k:?}");
            }
        }
        _ => {
            // Every committed update is distinct, and the last update of
            // every window equals the reference.
            let mut seen = std::collections::HashSet::new();
            let mut last: BTreeMap<(String, i64), Agg> = BTreeMap::new();
            for m in &out {
                let p = parse(m);
                assert!(
                    seen.insert((p.key.clone(), p.start, p.agg.count)),
                    "update ({}, {}, count {}) repeated",
                    p.key,
                    p.start,
                    p.agg.count
                );
                keep_last(&mut last, p);
            }
            let (windows, _) = reference(total);
            assert_eq!(last.len(), windows.len(), "windows updated");
            for (k, agg) in &windows {
                assert_eq!(last.get(k), Some(agg), "last update of window {k:?}");
            }
        }
    }
    assert!(kills >= min_kills);
    Ok(())
}

#[test]
fn windowed_final_results_are_exact_under_sigkill() -> anyhow::Result<()> {
    crash_windowed("final", 200_000, 20)
}

#[test]
fn windowed_updates_are_exact_under_sigkill() -> anyhow::Result<()> {
    crash_windowed("update", 200_000, 20)
}

#[test]
fn restart_replays_only_the_changelog_tail_and_a_lost_state_is_rebuilt() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "restore")?;
    let state_dir = tempfile::tempdir()?;
    let yaml = pipeline_yaml(&name, &input, &output, &dead, state_dir.path(), "update");
    let p = producer();
    let first = 40_000u64;
    rt.block_on(produce_to(&p, &input, &records(0..first)))?;
    let mut m = Millrace::start(&yaml)?;
    wait_caught_up(&name, &input, &m)?;
    let changelog_records = read_committed(&format!("{name}-window-0-changelog"))?.len();
    m.kill()?;

    // Restart on the same local state: only the tail beyond the local
    // copy's offset is replayed (here: nothing, the kill came after the
    // last commit was applied), never the whole changelog.
    m.restart()?;
    m.wait_ready(Duration::from_secs(60))?;
    let full = m.metric("millrace_state_restores_total{kind=\"full\",store=\"window-0\"}")?;
    let tail = m.metric("millrace_state_restores_total{kind=\"tail\",store=\"window-0\"}")?;
    let replayed = m.metric("millrace_state_restored_records_total{store=\"window-0\"}")?;
    progress(&format!(
        "after kill: {tail} tail and {full} full restores, {replayed} records replayed of {changelog_records}"
    ));
    assert_eq!(full, 0.0, "no full restore with a local copy");
    assert_eq!(tail, PARTITIONS as f64, "every task restored its tail");
    assert!(replayed < changelog_records as f64 / 10.0);
    m.stop_cleanly()?;

    // Lose the local state entirely: a full restore rebuilds it, and the
    // results of further input are the same as if nothing was lost.
    std::fs::remove_dir_all(state_dir.path().join(&name))?;
    let total = 60_000u64;
    rt.block_on(produce_to(&p, &input, &records(first..total)))?;
    m.restart()?;
    wait_caught_up(&name, &input, &m)?;
    let full = m.metric("millrace_state_restores_total{kind=\"full\",store=\"window-0\"}")?;
    assert_eq!(
        full, PARTITIONS as f64,
        "every task rebuilt from its changelog"
    );
    m.stop_cleanly()?;

    let (windows, _) = reference(total);
    let mut last: BTreeMap<(String, i64), Agg> = BTreeMap::new();
    for msg in read_committed(&output)? {
        keep_last(&mut last, parse(&msg));
    }
    assert_eq!(last, windows, "results after a full restore");
    Ok(())
}

#[test]
fn instances_joining_and_dying_mid_run_change_nothing() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new()?;
    let (name, input, output, dead) = make_topics(&rt, "rebalance")?;
    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let yaml = |i: usize| {
        let instance = ["a", "b", "c", "d"][i];
        instance_yaml(
            &name,
            instance,
            false,
            &input,
            &output,
            &dead,
            dirs[i].path(),
            "final",
        )
    };
    let total = 120_000u64;
    let p = producer();
    let chunk = total / 4;
    rt.block_on(produce_to(&p, &input, &records(0..chunk)))?;
    let mut a = Millrace::start(&yaml(0))?;
    let mut b = Millrace::start(&yaml(1))?;
    let mut c = Millrace::start(&yaml(2))?;
    std::thread::sleep(Duration::from_secs(8));
    rt.block_on(produce_to(&p, &input, &records(chunk..2 * chunk)))?;
    std::thread::sleep(Duration::from_secs(3));
    a.kill()?;
    progress("rebalance: killed instance a");
    rt.block_on(produce_to(&p, &input, &records(2 * chunk..3 * chunk)))?;
    let mut d = Millrace::start(&yaml(3))?;
    progress("rebalance: added instance d");
    std::thread::sleep(Duration::from_secs(5));
    rt.block_on(produce_to(&p, &input, &records(3 * chunk..total)))?;
    wait_caught_up(&name, &input, &b)?;
    for m in [&mut b, &mut c, &mut d] {
        m.stop_cleanly()?;
    }

    let expected = closed_windows(total);
    // The killed instance's open transaction hides later output from
    // read_committed readers until the broker aborts it (after
    // transaction.timeout.ms): wait until the output is complete.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut output_records = read_committed(&output)?;
    while output_records.len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        output_records = read_committed(&output)?;
    }
    let mut got = BTreeMap::new();
    for m in output_records {
        let p = parse(&m);
        assert!(
            got.insert((p.key.clone(), p.start), p.agg).is_none(),
            "window ({}, {}) emitted twice",
            p.key,
            p.start
        );
    }
    assert_eq!(got, expected);
    Ok(())
}

//! Zombies: an instance paused (SIGSTOP) for longer than
//! `session.timeout.ms` is expelled from the group while its transaction is
//! open; the other instance takes its partitions and processes the same
//! records again from the committed offsets. When the paused instance
//! resumes (SIGCONT) it must commit nothing of what it had or does before
//! it learns it was expelled: not the records it had processed (a per-key
//! count then repeats a value), and not what its timers emit on waking (a
//! `stale` step, which sees a long silence through the pause, would report
//! devices that never went quiet).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce_to, producer, progress, read_committed,
    unique,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::message::{Message, OwnedMessage};

const PARTITIONS: i32 = 2;
const KEYS: usize = 16;
/// Pauses last this long: past the 3 s session timeout and the 3 s `stale`
/// silence, short of the 60 s transaction timeout.
const PAUSE: Duration = Duration::from_secs(7);

/// Two instances of one pipeline in one group.
struct Pair {
    a: Millrace,
    b: Millrace,
    input: String,
    output: String,
    group: String,
    _state: (tempfile::TempDir, tempfile::TempDir),
}

fn yaml(group: &str, input: &str, output: &str, instance: &str, state: &str, step: &str) -> String {
    format!(
        r#"
pipeline: {group}
kafka:
  group_id: {group}
  instance_id: {group}-{instance}
  consumer_properties:
    session.timeout.ms: "3000"
    heartbeat.interval.ms: "300"
  producer_properties:
    # Longer than the pause, so the broker does not abort the zombie's
    # transaction on its own: the zombie itself must not commit it.
    transaction.timeout.ms: "60000"
sources: [{{topic: {input}, start: earliest}}]
steps:
  - {step}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {output}-dead}}
state: {{dir: {state}}}
# A long interval keeps a transaction open at almost any instant.
commit: {{interval: 1500ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#
    )
}

impl Pair {
    fn start(prefix: &str, step: &str) -> anyhow::Result<Pair> {
        let name = unique(prefix);
        let (input, output, group) = (
            format!("{name}-in"),
            format!("{name}-out"),
            format!("{name}-g"),
        );
        let dead = format!("{output}-dead");
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(create_topics(&[
            (&input, PARTITIONS),
            (&output, PARTITIONS),
            (&dead, 1),
        ]))?;
        let state = (tempfile::tempdir()?, tempfile::tempdir()?);
        let dir = |d: &tempfile::TempDir| d.path().display().to_string();
        let mut a = Millrace::start(&yaml(&group, &input, &output, "a", &dir(&state.0), step))?;
        let mut b = Millrace::start(&yaml(&group, &input, &output, "b", &dir(&state.1), step))?;
        a.wait_ready(Duration::from_secs(60))?;
        b.wait_ready(Duration::from_secs(60))?;
        Ok(Pair {
            a,
            b,
            input,
            output,
            group,
            _state: state,
        })
    }

    /// Pauses each instance in turn for [`PAUSE`], `rounds` times.
    fn pause_in_turn(&self, rounds: usize) -> anyhow::Result<()> {
        for round in 0..rounds {
            std::thread::sleep(Duration::from_secs(3));
            let paused = if round % 2 == 0 { &self.a } else { &self.b };
            let pid = paused.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
            let pid = Pid::from_raw(pid as i32);
            kill(pid, Signal::SIGSTOP)?;
            progress(&format!("round {round}: paused an instance for {PAUSE:?}"));
            std::thread::sleep(PAUSE);
            kill(pid, Signal::SIGCONT)?;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        format!(
            "{}\n--- b ---\n{}",
            self.a.log_tail(40),
            self.b.log_tail(40)
        )
    }

    /// Waits until all input is processed, then stops both instances.
    fn finish(&mut self) -> anyhow::Result<Vec<OwnedMessage>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !group_caught_up(&self.group, &self.input) {
            assert!(
                Instant::now() < deadline,
                "not caught up; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.a.stop_cleanly()?;
        self.b.stop_cleanly()?;
        read_committed(&self.output)
    }

    /// A failed commit is aborted at once: an abort that times out (waiting
    /// for delivery reports nobody serves) stalls the instance for the
    /// whole transaction timeout.
    fn assert_no_failed_abort(&self) -> anyhow::Result<()> {
        for m in [&self.a, &self.b] {
            let log = std::fs::read_to_string(m.log_path())?;
            assert!(
                !log.contains("abort failed"),
                "an abort failed; log:\n{}",
                m.log_tail(60)
            );
        }
        Ok(())
    }
}

/// Feeds 20 records every 100 ms, round-robin over [`KEYS`] keys, until
/// `feeding` is cleared; counts what it sent per key.
fn feed(
    input: &str,
    feeding: Arc<AtomicBool>,
    sent: Arc<Mutex<BTreeMap<String, i64>>>,
) -> JoinHandle<anyhow::Result<()>> {
    let input = input.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Runtime::new()?;
        let p = producer();
        let mut i = 0usize;
        while feeding.load(Ordering::SeqCst) {
            let batch: Vec<(String, i32, Vec<u8>)> = (0..20)
                .map(|j| {
                    let k = (i + j) % KEYS;
                    (format!("k{k}"), (k as i32) % PARTITIONS, b"{}".to_vec())
                })
                .collect();
            rt.block_on(produce_to(&p, &input, &batch))?;
            let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
            for (key, _, _) in &batch {
                *sent.entry(key.clone()).or_default() += 1;
            }
            i += 20;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
}

fn json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default()
}

#[test]
fn a_paused_instance_expelled_from_the_group_commits_nothing_when_it_resumes() -> anyhow::Result<()>
{
    let mut pair = Pair::start("zombie", "reduce: {}")?;
    let feeding = Arc::new(AtomicBool::new(true));
    let sent: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let feeder = feed(&pair.input, feeding.clone(), sent.clone());
    pair.pause_in_turn(4)?;
    std::thread::sleep(Duration::from_secs(3));
    feeding.store(false, Ordering::SeqCst);
    feeder.join().expect("feeder")?;
    let records = pair.finish()?;

    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &records {
        let v = json(m);
        seen.entry(v["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["count"].as_i64().unwrap_or(-1));
    }
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (key, n) in &sent {
        let counts = seen.get(key).cloned().unwrap_or_default();
        let expected: Vec<i64> = (1..=*n).collect();
        let differences: Vec<(&i64, &i64)> = counts
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(
            counts == expected,
            "{key}: {} outputs for {n} inputs; first differences (got, expected): \
             {differences:?}\nlogs:\n{}",
            counts.len(),
            pair.logs()
        );
    }
    progress(&format!(
        "{} keys, {} records, counts exact",
        sent.len(),
        sent.values().sum::<i64>()
    ));
    pair.assert_no_failed_abort()
}

#[test]
fn a_resumed_zombie_commits_no_timer_output() -> anyhow::Result<()> {
    let mut pair = Pair::start("zombie-timer", "stale: {after: 3s}")?;
    let feeding = Arc::new(AtomicBool::new(true));
    let sent: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let feeder = feed(&pair.input, feeding.clone(), sent.clone());
    pair.pause_in_turn(4)?;
    feeding.store(false, Ordering::SeqCst);
    feeder.join().expect("feeder")?;
    // Every key goes quiet now, once: each is reported stale exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = read_committed(&pair.output)?;
        if events.len() >= KEYS || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(2));
    let records = pair.finish()?;
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &records {
        let v = json(m);
        per_key
            .entry(v["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["state"].as_str().unwrap_or_default().to_string());
    }
    let expected: BTreeMap<String, Vec<String>> = (0..KEYS)
        .map(|k| (format!("k{k}"), vec!["stale".to_string()]))
        .collect();
    assert!(events.len() >= KEYS, "stale events: {}", events.len());
    assert_eq!(
        per_key,
        expected,
        "keys that never went quiet were reported by a zombie; logs:\n{}",
        pair.logs()
    );
    pair.assert_no_failed_abort()
}

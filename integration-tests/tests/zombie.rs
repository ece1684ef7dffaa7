//! Zombies: an instance paused (SIGSTOP) for longer than
//! `session.timeout.ms` is expelled from the group while its transaction is
//! open; the other instance takes its partitions and processes the same
//! records again from the committed offsets. When the paused instance
//! resumes (SIGCONT) it must commit nothing of what it had or does before
//! it learns it was expelled: not the records it had processed (a per-key
//! count then repeats a value), and not what its timers emit on waking (a
//! `stale` step, which sees a long silence through the pause, would report
//! devices that never went quiet).
//!
//! Also here: an instance paused past `transaction.timeout.ms` but not past
//! its session, whose open transaction the broker aborts (bumping its
//! producer's epoch): when it resumes it must notice, abort on its side and
//! go on, exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millrace_integration_tests::keyed::{Feed, check_counts};
use millrace_integration_tests::{
    Millrace, bootstrap, create_topics, group_caught_up, progress, read_committed, unique,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const KEYS: usize = 16;
/// Pauses of an expelled instance last this long: past the 3 s session
/// timeout and the 3 s `stale` silence, short of the 60 s transaction
/// timeout.
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

/// The timeouts that decide which fault a pause is.
struct Timing {
    session_ms: u32,
    transaction_ms: u32,
    commit_interval: &'static str,
}

/// Expelled from the group by a pause, its transaction still open.
const EXPELLED: Timing = Timing {
    session_ms: 3_000,
    // Longer than the pause, so the broker does not abort the zombie's
    // transaction on its own: the zombie itself must not commit it.
    transaction_ms: 60_000,
    // A long interval keeps a transaction open at almost any instant.
    commit_interval: "1500ms",
};

fn yaml(
    group: &str,
    input: &str,
    output: &str,
    instance: &str,
    state: &str,
    step: &str,
    timing: &Timing,
) -> String {
    let Timing {
        session_ms,
        transaction_ms,
        commit_interval,
    } = timing;
    format!(
        r#"
pipeline: {group}
kafka:
  group_id: {group}
  instance_id: {group}-{instance}
  consumer_properties:
    session.timeout.ms: "{session_ms}"
    heartbeat.interval.ms: "300"
  producer_properties:
    transaction.timeout.ms: "{transaction_ms}"
sources: [{{topic: {input}, start: earliest}}]
steps:
  - {step}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {output}-dead}}
state: {{dir: {state}}}
commit: {{interval: {commit_interval}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#
    )
}

impl Pair {
    fn start(prefix: &str, step: &str, timing: &Timing) -> anyhow::Result<Pair> {
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
        let start = |instance: &str, state: &tempfile::TempDir| {
            let dir = state.path().display().to_string();
            Millrace::start(&yaml(&group, &input, &output, instance, &dir, step, timing))
        };
        let mut a = start("a", &state.0)?;
        let mut b = start("b", &state.1)?;
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

    /// Pauses each instance in turn (only `a` with `only_a`) for `pause`,
    /// `rounds` times.
    fn pause_in_turn(&self, rounds: usize, pause: Duration, only_a: bool) -> anyhow::Result<()> {
        for round in 0..rounds {
            std::thread::sleep(Duration::from_secs(3));
            let paused = if round % 2 == 0 || only_a {
                &self.a
            } else {
                &self.b
            };
            let pid = paused.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
            let pid = Pid::from_raw(pid as i32);
            kill(pid, Signal::SIGSTOP)?;
            progress(&format!("round {round}: paused an instance for {pause:?}"));
            std::thread::sleep(pause);
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

fn json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default()
}

/// Runs a per-key count through `rounds` pauses and checks that every
/// key's counts are exactly 1..n.
fn counts_are_exact_through_pauses(
    prefix: &str,
    timing: &Timing,
    rounds: usize,
    pause: Duration,
    only_a: bool,
) -> anyhow::Result<()> {
    let mut pair = Pair::start(prefix, "reduce: {}", timing)?;
    let mut feed = Feed::start(&pair.input, KEYS, PARTITIONS, 20);
    pair.pause_in_turn(rounds, pause, only_a)?;
    std::thread::sleep(Duration::from_secs(3));
    let sent = feed.stop()?;
    let records = pair.finish()?;
    if let Err(problems) = check_counts(&records, &sent) {
        panic!("{problems}\nlogs:\n{}", pair.logs());
    }
    progress(&format!(
        "{} keys, {} records, counts exact",
        sent.len(),
        sent.values().sum::<i64>()
    ));
    pair.assert_no_failed_abort()
}

#[test]
fn a_paused_instance_expelled_from_the_group_commits_nothing_when_it_resumes() -> anyhow::Result<()>
{
    counts_are_exact_through_pauses("zombie", &EXPELLED, 4, PAUSE, false)
}

#[test]
fn a_transaction_the_broker_timed_out_is_abandoned_and_processing_goes_on() -> anyhow::Result<()> {
    // Paused past the transaction timeout plus the broker's abort scan
    // (5 s on the test broker), well inside the session.
    let timing = Timing {
        session_ms: 30_000,
        transaction_ms: 3_000,
        commit_interval: "1s",
    };
    counts_are_exact_through_pauses("txn-timeout", &timing, 2, Duration::from_secs(10), true)
}

/// The sharpest form of the timer hole: a transaction that holds timer
/// output and *no consumed offsets* when its instance is paused. Such a
/// commit carries no offsets for the broker to check against the group
/// generation, so without fencing offsets a resumed zombie commits it —
/// after the instance that took its partitions has reported the same keys.
#[test]
fn a_resumed_zombie_commits_no_timer_output() -> anyhow::Result<()> {
    // The records' transaction commits (2 s) before the keys go stale
    // (4 s); the stale reports then wait 2 s in a transaction of their own.
    let timing = Timing {
        session_ms: 3_000,
        transaction_ms: 60_000,
        commit_interval: "2s",
    };
    let mut pair = Pair::start("zombie-timer", "stale: {after: 4s}", &timing)?;
    let mut feed = Feed::start(&pair.input, KEYS, PARTITIONS, 20);
    std::thread::sleep(Duration::from_secs(4));
    feed.stop()?;
    // Every key goes quiet now. Once its stale report is produced but not
    // committed, `a` is paused: long enough to be expelled, for `b` to take
    // its partitions, restore them (without the uncommitted reports) and
    // report those keys itself.
    wait_uncommitted(&pair.output, KEYS, Duration::from_secs(30))?;
    let pid = pair
        .a
        .pid()
        .ok_or_else(|| anyhow::anyhow!("a is not running"))?;
    let pid = Pid::from_raw(pid as i32);
    kill(pid, Signal::SIGSTOP)?;
    progress("a paused with its stale reports uncommitted");
    std::thread::sleep(Duration::from_secs(10));
    kill(pid, Signal::SIGCONT)?;
    std::thread::sleep(Duration::from_secs(5));
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
    assert_eq!(
        per_key,
        expected,
        "each key went quiet once and must be reported once; logs:\n{}",
        pair.logs()
    );
    pair.assert_no_failed_abort()
}

/// Waits until `topic` holds at least `n` records, committed or not (a
/// `read_uncommitted` reader sees a transaction's records before its
/// commit).
fn wait_uncommitted(topic: &str, n: usize, within: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("uncommitted"))
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + within;
    let mut seen = 0;
    while seen < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{seen} of {n} records in {topic} after {within:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            message?;
            seen += 1;
        }
    }
    Ok(())
}

//! Local state is a cache of the changelog, and only a copy that still
//! matches its changelog may be used: these tests change the changelog
//! under a stopped pipeline (delete and recreate it, delete its head), move
//! a pipeline to a new consumer group, leave an undecided transaction at a
//! changelog's end, and reset a pipeline — completely and interrupted at
//! each step — and check that the state the pipeline continues with is the
//! one its changelog and committed offsets say, never a stale local copy.
//!
//! The pipeline is a per-key `reduce` count: each output carries the
//! key's count so far, so the outputs show exactly which state a record
//! met.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use millrace_integration_tests::{
    Millrace, bootstrap, create_topics, millrace_bin, produce_to, producer, read_committed, unique,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const STORE: &str = "reduce-0";

struct Setup {
    input: String,
    output: String,
    group: String,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(prefix: &str) -> anyhow::Result<Setup> {
        let name = unique(prefix);
        let (input, output) = (format!("{name}-in"), format!("{name}-out"));
        let dead = format!("{output}-dead");
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(create_topics(&[(&input, 1), (&output, 1), (&dead, 1)]))?;
        Ok(Setup {
            input,
            output,
            group: format!("{name}-g1"),
            state: tempfile::tempdir()?,
        })
    }

    fn changelog(&self) -> String {
        format!("{}-{STORE}-changelog", self.group)
    }

    /// The pipeline file for `group` (extra lines go under `state:`).
    fn yaml(&self, group: &str, state_extra: &str) -> String {
        format!(
            r#"
pipeline: integrity
kafka:
  group_id: {group}
  instance_id: it-{group}
sources: [{{topic: {input}, start: earliest}}]
steps:
  - reduce: {{}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {output}-dead}}
state:
  dir: {dir}
{state_extra}
commit: {{interval: 50ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
            input = self.input,
            output = self.output,
            dir = self.state.path().display(),
        )
    }

    fn send(&self, keys: &[&str]) -> anyhow::Result<()> {
        let records: Vec<(String, i32, Vec<u8>)> = keys
            .iter()
            .map(|k| (k.to_string(), 0, br#"{"v": 1}"#.to_vec()))
            .collect();
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(produce_to(&producer(), &self.input, &records))
    }
}

/// The (key, count) of every committed output, in order.
fn counts(topic: &str) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(read_committed(topic)?
        .iter()
        .map(|m| {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            (
                v["key"].as_str().unwrap_or_default().to_string(),
                v["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect())
}

/// Waits until `topic` holds `n` committed outputs, then returns them.
fn wait_outputs(topic: &str, n: usize, m: &Millrace) -> anyhow::Result<Vec<(String, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = counts(topic)?;
        if out.len() >= n || Instant::now() > deadline {
            assert_eq!(
                out.len(),
                n,
                "outputs of {topic}: {out:?}; log:\n{}",
                m.log_tail(30)
            );
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pairs(expected: &[(&str, i64)]) -> Vec<(String, i64)> {
    expected.iter().map(|(k, c)| (k.to_string(), *c)).collect()
}

fn admin() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?)
}

/// Deletes a topic, waits until it is gone, and creates it again (empty,
/// compacted, one partition): what an operator's cleanup script might do.
fn recreate(topic: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let admin = admin()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    rt.block_on(admin.delete_topics(&[topic], &options))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        if !metadata.topics().iter().any(|t| t.name() == topic) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{topic} still listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    for r in rt.block_on(admin.create_topics([&new], &options))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    // Listed before the pipeline looks for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))?;
        if metadata
            .topics()
            .iter()
            .any(|t| t.error().is_none() && !t.partitions().is_empty())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{topic} not listed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `n` records under keys the test never sends into a changelog,
/// committed: state the pipeline must take from the changelog as it is.
fn write_foreign(topic: &str, n: usize) -> anyhow::Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    for i in 0..n {
        let key = format!("foreign-{i}");
        p.send(BaseRecord::to(topic).partition(0).key(&key).payload("x"))
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

fn full_restores(m: &Millrace) -> anyhow::Result<f64> {
    m.metric(&format!(
        "millrace_state_restores_total{{kind=\"full\",store=\"{STORE}\"}}"
    ))
}

/// A stopped pipeline's changelog is deleted and recreated (shorter than
/// the local copy's offset), recreated and refilled past that offset (only
/// the topic id tells), and has its head deleted past the local copy's
/// offset. Each time the local copy is wiped and the state rebuilt from
/// the changelog as it now is; before, the stale copy was used.
#[test]
fn a_local_copy_that_no_longer_matches_its_changelog_is_rebuilt() -> anyhow::Result<()> {
    let s = Setup::new("integrity")?;
    let yaml = s.yaml(&s.group, "");
    s.send(&["a", "a"])?;
    let mut m = Millrace::start(&yaml)?;
    wait_outputs(&s.output, 2, &m)?;
    m.stop_cleanly()?;

    // 1. Recreated, empty: the local copy's offset is past the end.
    recreate(&s.changelog())?;
    m.restart()?;
    m.wait_ready(Duration::from_secs(60))?;
    s.send(&["a"])?;
    let out = wait_outputs(&s.output, 3, &m)?;
    assert_eq!(
        out,
        pairs(&[("a", 1), ("a", 2), ("a", 1)]),
        "the state must be the (empty) changelog's, not the stale local copy's; log:\n{}",
        m.log_tail(30)
    );
    assert_eq!(full_restores(&m)?, 1.0, "one full restore after the wipe");
    assert_eq!(m.metric("millrace_state_wipes_total")?, 1.0);
    m.stop_cleanly()?;

    // 2. Recreated and refilled beyond the local copy's offset: offsets
    // alone cannot tell, the topic id does.
    recreate(&s.changelog())?;
    write_foreign(&s.changelog(), 20)?;
    m.restart()?;
    m.wait_ready(Duration::from_secs(60))?;
    s.send(&["a"])?;
    let out = wait_outputs(&s.output, 4, &m)?;
    assert_eq!(
        out[3],
        ("a".to_string(), 1),
        "a recreated changelog is another topic; log:\n{}",
        m.log_tail(30)
    );
    assert_eq!(m.metric("millrace_state_wipes_total")?, 1.0);
    m.stop_cleanly()?;

    // 3. The head deleted past the local copy's offset (DeleteRecords):
    // the records between are gone, so is the local copy's claim to be a
    // prefix of the changelog. (Brokers refuse DeleteRecords on compact-only
    // topics; `compact,delete` changelogs, and retention, allow it.)
    write_foreign(&s.changelog(), 5)?;
    let rt = tokio::runtime::Runtime::new()?;
    let admin = admin()?;
    let changelog = s.changelog();
    let policy =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&changelog))
            .set("cleanup.policy", "compact,delete");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin.alter_configs([&policy], &options))? {
        r.map_err(|(_, e)| anyhow::anyhow!("cleanup.policy: {e}"))?;
    }
    let (_, high) = admin
        .inner()
        .fetch_watermarks(&s.changelog(), 0, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&s.changelog(), 0, rdkafka::Offset::Offset(high - 2))?;
    let deleted = rt.block_on(admin.delete_records(&tpl, &options))?;
    for e in deleted.elements() {
        e.error()
            .map_err(|err| anyhow::anyhow!("DeleteRecords on {}: {err}", e.topic()))?;
    }
    m.restart()?;
    m.wait_ready(Duration::from_secs(60))?;
    s.send(&["a"])?;
    let out = wait_outputs(&s.output, 5, &m)?;
    assert_eq!(
        out[4],
        ("a".to_string(), 1),
        "the changelog now starts past the local copy; log:\n{}",
        m.log_tail(30)
    );
    assert_eq!(m.metric("millrace_state_wipes_total")?, 1.0);
    assert_eq!(
        m.metric(&format!(
            "millrace_state_restored_records_total{{store=\"{STORE}\"}}"
        ))?,
        2.0,
        "the two records left in the changelog were restored"
    );
    m.stop_cleanly()?;
    Ok(())
}

/// Reprocessing under a new group id starts from empty state: the old
/// group's changelog and local state belong to the old group's offsets.
#[test]
fn a_new_group_starts_with_its_own_state() -> anyhow::Result<()> {
    let s = Setup::new("regroup")?;
    s.send(&["a", "a", "b"])?;
    let mut m = Millrace::start(&s.yaml(&s.group, ""))?;
    wait_outputs(&s.output, 3, &m)?;
    m.stop_cleanly()?;

    // Same pipeline name, same state directory, another group.
    let group2 = format!("{}-2", s.group);
    let mut m2 = Millrace::start(&s.yaml(&group2, ""))?;
    let out = wait_outputs(&s.output, 6, &m2)?;
    assert_eq!(
        out[3..].to_vec(),
        pairs(&[("a", 1), ("a", 2), ("b", 1)]),
        "the new group reprocesses from empty state; log:\n{}",
        m2.log_tail(30)
    );
    assert!(
        s.state.path().join(&group2).join("task-0").is_dir(),
        "state lives under the group's directory"
    );
    m2.stop_cleanly()?;
    Ok(())
}

/// A transaction still undecided at the end of a changelog (its commit
/// markers not yet written) holds state the group's offsets may already
/// count on: the restore waits for it instead of stopping at the last
/// stable offset.
#[test]
fn restore_waits_for_an_undecided_transaction_at_the_changelog_end() -> anyhow::Result<()> {
    let s = Setup::new("undecided")?;
    let rt = tokio::runtime::Runtime::new()?;
    let topic = s.changelog();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin()?.create_topics([&new], &options))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let txn: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("undecided-writer"))
        .create()?;
    txn.init_transactions(Duration::from_secs(30))?;
    txn.begin_transaction()?;
    for i in 0..5 {
        let key = format!("late-{i}");
        txn.send(BaseRecord::to(&topic).partition(0).key(&key).payload("x"))
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    }
    txn.flush(Duration::from_secs(30))?;

    let mut m = Millrace::start(&s.yaml(&s.group, ""))?;
    // The pipeline is waiting in its restore: not ready while the
    // transaction is open.
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(
        m.get("/readyz").map(|r| r.0).unwrap_or(0),
        200,
        "ready before the changelog's tail was decided; log:\n{}",
        m.log_tail(20)
    );
    txn.commit_transaction(Duration::from_secs(30))?;
    m.wait_ready(Duration::from_secs(60))?;
    assert_eq!(
        m.metric(&format!(
            "millrace_state_restored_records_total{{store=\"{STORE}\"}}"
        ))?,
        5.0,
        "the transaction's records are part of the restored state; log:\n{}",
        m.log_tail(20)
    );
    m.stop_cleanly()?;
    Ok(())
}

/// Local state of a task not owned here is deleted after
/// `state.cleanup_delay`; owned tasks are kept.
#[test]
fn unowned_task_state_is_deleted_after_the_cleanup_delay() -> anyhow::Result<()> {
    let s = Setup::new("cleanup")?;
    // A task directory left from long ago (the task now lives elsewhere).
    let stale = s.state.path().join(&s.group).join("task-7");
    std::fs::create_dir_all(&stale)?;
    std::fs::write(stale.join("leftover"), b"x")?;
    set_old(&stale)?;
    s.send(&["a"])?;
    let mut m = Millrace::start(&s.yaml(&s.group, "  cleanup_delay: 2s"))?;
    wait_outputs(&s.output, 1, &m)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stale.exists() {
        assert!(
            Instant::now() < deadline,
            "{} not deleted; log:\n{}",
            stale.display(),
            m.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        s.state.path().join(&s.group).join("task-0").is_dir(),
        "the owned task's state stays"
    );
    assert!(m.metric("millrace_state_dirs_cleaned_total")? >= 1.0);
    m.stop_cleanly()?;
    Ok(())
}

enum Outcome {
    /// The run exited by itself; its log.
    Refused(String),
    Running,
}

/// Whether a started pipeline refuses (exits) or comes up ready.
fn run_outcome(m: &mut Millrace) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !m.is_running() {
            return Ok(Outcome::Refused(m.log_tail(10)));
        }
        if let Ok((200, _)) = m.get("/readyz") {
            return Ok(Outcome::Running);
        }
        anyhow::ensure!(Instant::now() < deadline, "neither ready nor refused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set_old(dir: &Path) -> anyhow::Result<()> {
    let old = SystemTime::now() - Duration::from_secs(3_600);
    std::fs::File::open(dir)?.set_modified(old)?;
    Ok(())
}

/// `millrace reset --to earliest` reprocesses everything with state
/// rebuilt from empty; interrupted after any of its steps, the next run
/// either refuses with a message naming the way out or gives exact
/// results, and the same reset run again completes it.
#[test]
fn reset_is_exact_whole_and_when_interrupted_at_each_step() -> anyhow::Result<()> {
    let s = Setup::new("reset")?;
    let yaml = s.yaml(&s.group, "");
    s.send(&["a", "a", "b"])?;
    let mut m = Millrace::start(&yaml)?;
    wait_outputs(&s.output, 3, &m)?;
    m.stop_cleanly()?;
    let config = m.config.to_string_lossy().into_owned();
    let reset = |failpoint: Option<&str>| -> anyhow::Result<(i32, String)> {
        let mut command = std::process::Command::new(millrace_bin());
        command
            .args([
                "reset",
                "--config",
                &config,
                "--to",
                "earliest",
                "--execute",
            ])
            .env("MILLRACE_BOOTSTRAP", bootstrap());
        if let Some(point) = failpoint {
            command.env("MILLRACE_FAILPOINT", point);
        }
        let out = command.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };

    // The complete reset: everything reprocessed, from empty state.
    let (code, text) = reset(None)?;
    assert_eq!(code, 0, "{text}");
    m.restart()?;
    let out = wait_outputs(&s.output, 6, &m)?;
    assert_eq!(
        out[3..].to_vec(),
        pairs(&[("a", 1), ("a", 2), ("b", 1)]),
        "log:\n{}",
        m.log_tail(30)
    );
    m.stop_cleanly()?;

    // Interrupted after each step, then run: refused (and the reset
    // finished by running it again) or exact.
    let mut total = 6;
    for point in [
        "reset:local-state",
        "reset:changelogs-deleted",
        "reset:offsets",
    ] {
        let (code, text) = reset(Some(point))?;
        assert_ne!(code, 0, "{point}: {text}");
        m.restart()?;
        match run_outcome(&mut m)? {
            Outcome::Refused(log) => {
                assert_ne!(
                    point, "reset:local-state",
                    "with only local state gone, run restores it: {log}"
                );
                assert!(
                    log.contains("millrace reset"),
                    "{point}: the refusal names the way out: {log}"
                );
            }
            Outcome::Running => {
                assert_eq!(
                    point,
                    "reset:local-state",
                    "{point}: run must refuse; log:\n{}",
                    m.log_tail(30)
                );
                // Restored from the changelog at the old offsets: nothing
                // to process, nothing emitted.
                std::thread::sleep(Duration::from_secs(2));
                assert_eq!(counts(&s.output)?.len(), total, "{point}");
                m.stop_cleanly()?;
            }
        }
        let (code, text) = reset(None)?;
        assert_eq!(code, 0, "{point}, reset again: {text}");
        m.restart()?;
        total += 3;
        let out = wait_outputs(&s.output, total, &m)?;
        assert_eq!(
            out[total - 3..].to_vec(),
            pairs(&[("a", 1), ("a", 2), ("b", 1)]),
            "{point}; log:\n{}",
            m.log_tail(30)
        );
        m.stop_cleanly()?;
    }
    Ok(())
}

/// Creates `topic` as Millrace would create a changelog: compacted, one
/// partition.
fn create_changelog(topic: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin()?.create_topics([&new], &options))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Fills a changelog with `n` committed records under keys the test never
/// sends, as fast as the broker takes them.
fn fill_changelog(topic: &str, n: usize) -> anyhow::Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    for i in 0..n {
        let key = format!("bulk-{i:09}");
        loop {
            match p.send(BaseRecord::to(topic).partition(0).key(&key).payload("1")) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    p.poll(Duration::from_millis(50));
                }
                Err((e, _)) => anyhow::bail!("{e}"),
            }
        }
    }
    p.flush(Duration::from_secs(60))?;
    Ok(())
}

/// Polls `/healthz` every 100 ms until `/readyz` answers 200; returns the
/// answers that were not 200 (status and body).
fn unhealthy_until_ready(m: &mut Millrace, within: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut bad = Vec::new();
    loop {
        anyhow::ensure!(m.is_running(), "exited early; log:\n{}", m.log_tail(30));
        match m.get("/healthz") {
            Ok((200, _)) => {}
            Ok((status, body)) => bad.push(format!("{status} {}", body.trim())),
            // Not listening yet: the process is starting.
            Err(_) => {}
        }
        if let Ok((200, _)) = m.get("/readyz") {
            return Ok(bad);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not ready within {within:?}; log:\n{}",
            m.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A restore runs inside the rebalance callback, where the processing loop
/// does not turn. `/healthz` — what a Kubernetes liveness probe asks — must
/// still say alive while a restore makes progress (or waits, bounded, for
/// the changelog's tail to settle); before, it failed once the restore
/// outlasted the stall limit (2 × `commit.timeout`, 2 s here), and a probe
/// would have restarted the pod into the same restore. A restore that took
/// less than the stall limit would prove nothing, so its time is checked.
#[test]
fn healthz_stays_up_through_a_long_restore() -> anyhow::Result<()> {
    let s = Setup::new("long-restore")?;
    let topic = s.changelog();
    create_changelog(&topic)?;
    let records = 3_000_000;
    fill_changelog(&topic, records)?;
    let yaml = s.yaml(&s.group, "").replace(
        "commit: {interval: 50ms}",
        "commit: {interval: 50ms, timeout: 1s}",
    );

    let mut m = Millrace::start(&yaml)?;
    let bad = unhealthy_until_ready(&mut m, Duration::from_secs(300))?;
    let restored = m.metric(&format!(
        "millrace_state_restored_records_total{{store=\"{STORE}\"}}"
    ))?;
    let seconds = m.metric("millrace_state_restore_seconds_sum")?;
    assert_eq!(restored, records as f64, "log:\n{}", m.log_tail(20));
    assert!(
        seconds > 2.5,
        "the restore of {records} records took {seconds:.1} s, not longer than the \
         2 s stall limit: raise the record count for this machine"
    );
    assert!(
        bad.is_empty(),
        "/healthz failed during a {seconds:.1} s restore: {:?}; log:\n{}",
        bad.iter().take(3).collect::<Vec<_>>(),
        m.log_tail(20)
    );

    // Waiting (bounded) for an undecided transaction at the changelog's
    // end is not a stall either.
    m.stop_cleanly()?;
    let txn: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("long-restore-writer"))
        .create()?;
    txn.init_transactions(Duration::from_secs(30))?;
    txn.begin_transaction()?;
    txn.send(BaseRecord::to(&topic).partition(0).key("late").payload("1"))
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    txn.flush(Duration::from_secs(30))?;
    m.restart()?;
    let started = Instant::now();
    let mut bad = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok((status, body)) = m.get("/healthz")
            && status != 200
        {
            bad.push(format!("{status} {}", body.trim()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(
        m.get("/readyz")?.0,
        200,
        "ready before the tail was decided"
    );
    txn.commit_transaction(Duration::from_secs(30))?;
    m.wait_ready(Duration::from_secs(60))?;
    assert!(
        bad.is_empty(),
        "/healthz failed while the restore waited for the changelog's tail: {:?}",
        bad.iter().take(3).collect::<Vec<_>>()
    );
    m.stop_cleanly()?;
    Ok(())
}

//! Runs a pipeline against Kafka, exactly once.
//!
//! One OS thread owns the consumer, the transactional producer and the
//! pipeline. Each turn of its loop reads one record, runs it through the
//! pipeline, produces the outputs and dead letters (the input's, or those
//! of single failed outputs; see [`crate::pipeline`]) inside the open
//! transaction and notes the consumed offset there too; nothing the broker
//! would refuse enters it (see [`limits`]); every
//! `commit.interval` the transaction commits outputs and offsets at once
//! (see [`transaction`]). When anything goes wrong with the clients, the
//! open transaction is aborted and both clients are rebuilt, so processing
//! resumes from the last committed offsets: nothing is lost and, since the
//! aborted outputs are invisible to `read_committed` readers, nothing is
//! duplicated.

mod clients;
pub mod dead_letter;
pub mod limits;
mod membership;
mod rebalance;
mod tables;
pub mod transaction;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::BaseProducer;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

pub use clients::admin as admin_client_config;
use dead_letter::{DeadLetter, Trigger};
use limits::{Limits, now_ms};
use rebalance::{EosContext, lock, lock_gate};
use tables::TableGate;
use transaction::{DeliveryLog, Transaction, TxnError};

use crate::avro::RegisterError;
use crate::config::{Guarantee, PipelineConfig};
use crate::metrics::Metrics;
use crate::ops::Health;
use crate::pipeline::{Pipeline, ProcessError, Produced};
use crate::state::manager::StateManager;
use crate::state::restore::Restorer;
use crate::state::rocks::StateEnv;
use crate::state::{NoStores, TaskStores};
use crate::steps::Origin;
use membership::GroupWait;

/// Records between the processing loop's clock reads (see
/// `process_until_stopped`).
const CLOCK_EVERY: u32 = 64;
/// How long one poll waits for a record when none is buffered.
const POLL_WAIT: Duration = Duration::from_millis(20);
/// Longest a task's streams wait for its tables to be read to the end.
const TABLE_WAIT: Duration = Duration::from_secs(120);
/// How often the steps' timers run.
const TICK: Duration = Duration::from_secs(1);
/// How long seeking a partition back may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts to rebuild the clients.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why one incarnation of the clients ended.
enum Ended {
    /// Shutdown was requested and the last transaction committed.
    Stopped,
}

/// Runs the pipeline until `stop` is set. Rebuilds the clients after
/// recoverable errors; returns an error only for conditions a restart will
/// not fix (missing topics, bad configuration seen by the broker).
pub fn run(
    config: &PipelineConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::build(config).map_err(|issues| {
        let lines: Vec<String> = issues.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        anyhow::anyhow!("pipeline does not build: {}", lines.join("; "))
    })?;
    let partitions = prepare_topics(config, &pipeline)?;
    health.set_not_ready("registering sink schemas");
    register_schemas(&mut pipeline, &stop)?;
    let state_env = StateEnv::new(
        config.state.block_cache_bytes,
        config.state.write_buffer_bytes,
    );
    if !pipeline.stores().is_empty() {
        info!(
            dir = %config.state.dir.display(),
            stores = ?pipeline.stores(),
            partitions,
            "stateful pipeline"
        );
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        match run_once(config, &mut pipeline, &state_env, &metrics, &health, &stop) {
            Ok(Ended::Stopped) => return Ok(()),
            Err(e) => {
                metrics.restarts.inc();
                health.set_not_ready(format!("rebuilding Kafka clients after: {e:#}"));
                if stop.load(Ordering::SeqCst) {
                    warn!(error = %format!("{e:#}"), "error while stopping");
                    return Ok(());
                }
                // A long healthy run resets the backoff.
                if started.elapsed() > MAX_BACKOFF {
                    backoff = Duration::from_millis(500);
                }
                let error = format!("{e:#}");
                if is_fenced(&error) {
                    // Fencing keeps the output exact, but two processes
                    // with one identity fence each other in turn forever.
                    error!(
                        error,
                        transactional_id = %config.transactional_id(),
                        retry_in = ?backoff,
                        "fenced: another process took this instance's identity (two instances \
                         sharing kafka.instance_id? give each its own), or the broker aborted a \
                         transaction that outlived transaction.timeout.ms (was the process \
                         paused or stalled?)"
                    );
                } else {
                    warn!(error, retry_in = ?backoff, "rebuilding Kafka clients");
                }
                sleep_unless_stopped(backoff, &stop);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether an error says another producer (same `transactional.id`) or
/// consumer (same `group.instance.id`) took over this instance's identity.
fn is_fenced(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("fenced") || error.contains("old epoch") || error.contains("producer_fenced")
}

/// Registers the Avro sinks' schemas, waiting out registry outages (a
/// pipeline cannot write a record before its schema has an id).
fn register_schemas(pipeline: &mut Pipeline, stop: &AtomicBool) -> anyhow::Result<()> {
    loop {
        match pipeline.register_schemas() {
            Ok(()) => return Ok(()),
            Err(RegisterError::Refused(why)) => bail!("registering sink schemas: {why}"),
            Err(RegisterError::Unavailable { message, retry_in }) => {
                if stop.load(Ordering::SeqCst) {
                    bail!("stopped while waiting for the schema registry: {message}");
                }
                sleep_unless_stopped(retry_in, stop);
            }
        }
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let until = Instant::now() + total;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails fast, naming the topic, when a source or output topic is missing
/// or the sources are not co-partitioned, and creates the changelog topics
/// of stateful steps (compacted, one partition per task). Returns the
/// sources' partition count.
fn prepare_topics(config: &PipelineConfig, pipeline: &Pipeline) -> anyhow::Result<i32> {
    let admin: BaseConsumer = clients::admin(config)
        .create()
        .context("creating the metadata client")?;
    let metadata = admin
        .fetch_metadata(None, Timeout::After(Duration::from_secs(30)))
        .with_context(|| format!("reading metadata from {}", config.kafka.bootstrap))?;
    let existing: std::collections::HashMap<&str, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let wanted = crate::admin::pipeline_topics(config, pipeline);
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|t| !existing.contains_key(t.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "topics do not exist: {}; create them with `millrace topics create --config <file>`",
            missing.join(", ")
        );
    }
    let counts: Vec<(String, i32)> = config
        .sources
        .iter()
        .map(|s| (s.topic.clone(), existing[s.topic.as_str()]))
        .collect();
    let partitions = counts[0].1;
    if counts.iter().any(|(_, n)| *n != partitions) {
        let shown: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        bail!(
            "sources are not co-partitioned (a task is one partition number across all \
             sources): {}",
            shown.join(", ")
        );
    }
    let changelogs = crate::admin::changelog_topics(config, pipeline);
    for topic in &changelogs {
        if let Some(n) = existing.get(topic.as_str())
            && *n != partitions
        {
            bail!("changelog {topic} has {n} partitions; the sources have {partitions}");
        }
    }
    let to_create: Vec<&String> = changelogs
        .iter()
        .filter(|t| !existing.contains_key(t.as_str()))
        .collect();
    if !to_create.is_empty() {
        refuse_if_state_was_lost(config, &admin, &to_create)?;
        crate::admin::create_changelogs(config, &to_create, partitions)?;
        info!(topics = ?to_create, "created changelog topics");
    }
    Ok(partitions)
}

/// A missing changelog is normal for a new group, whose state starts
/// empty. For a group that has committed offsets it means the state those
/// offsets rely on is gone (the topic was deleted, or `millrace reset` was
/// interrupted): creating an empty changelog would silently continue with
/// empty state from the middle of the input. Refuse, and say what to do.
fn refuse_if_state_was_lost(
    config: &PipelineConfig,
    admin: &BaseConsumer,
    missing: &[&String],
) -> anyhow::Result<()> {
    let group = config.group_id();
    let lookup: BaseConsumer = clients::admin(config)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the offset lookup client")?;
    let mut sources = TopicPartitionList::new();
    for source in &config.sources {
        let metadata = admin
            .fetch_metadata(Some(&source.topic), Timeout::After(Duration::from_secs(30)))
            .with_context(|| format!("reading metadata of {}", source.topic))?;
        for topic in metadata.topics() {
            for p in topic.partitions() {
                sources.add_partition(&source.topic, p.id());
            }
        }
    }
    // A young broker answers "not coordinator" (or "loading") until its
    // offsets topic is up: transient, so asked again for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        match lookup.committed_offsets(sources.clone(), Duration::from_secs(30)) {
            Ok(committed) => break committed,
            Err(e) if Instant::now() < deadline => {
                debug!(error = %e, group, "committed offsets not readable yet; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the committed offsets of group {group}"));
            }
        }
    };
    let has_offsets = committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)));
    // A changelog created a moment ago (by `millrace reset`, say) may not
    // be in the broker's metadata yet: look again before refusing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while has_offsets && Instant::now() < deadline {
        let listed = admin
            .fetch_metadata(None, Timeout::After(Duration::from_secs(30)))
            .context("reading metadata")?;
        let all_there = missing.iter().all(|m| {
            listed
                .topics()
                .iter()
                .any(|t| t.name() == m.as_str() && t.error().is_none())
        });
        if all_there {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if has_offsets {
        let names: Vec<&str> = missing.iter().map(|t| t.as_str()).collect();
        bail!(
            "group {group} has committed offsets but its changelog topic(s) {} do not exist: \
             the state those offsets rely on is gone (deleted topic, or an interrupted \
             `millrace reset`). Run `millrace reset --config <file> --to <position> --execute` \
             to reprocess with consistent state. If a stateful step was just added and should \
             start empty from the committed offsets, create the changelog(s) first with \
             `millrace topics create --config <file>`",
            names.join(", ")
        );
    }
    Ok(())
}

/// One incarnation of the clients: build, subscribe, process until stopped
/// or broken.
fn run_once(
    config: &PipelineConfig,
    pipeline: &mut Pipeline,
    state_env: &StateEnv,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    stop: &AtomicBool,
) -> anyhow::Result<Ended> {
    health.set_not_ready("starting the transactional producer");
    let producer_config = clients::producer(config);
    // librdkafka's view of the limit: the user's value or its default.
    let max_bytes = producer_config
        .create_native_config()
        .and_then(|native| native.get("message.max.bytes"))
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    let producer: BaseProducer<DeliveryLog> = producer_config
        .create_with_context(DeliveryLog::default())
        .context("creating the producer")?;
    let stores = pipeline.stores();
    let state = (!stores.is_empty()).then(|| {
        StateManager::new(
            state_env.clone(),
            &config.state.dir,
            &config.group_id(),
            stores,
            Restorer::new(clients::admin(config), {
                // A restore is progress: `/healthz` stays up through it.
                let health = health.clone();
                Arc::new(move || health.turn())
            }),
            metrics.clone(),
            config.state.cleanup_delay,
        )
    });
    let transactional = config.commit.guarantee == Guarantee::ExactlyOnce;
    let txn = Transaction::init(
        producer,
        metrics.clone(),
        config.commit.timeout,
        state,
        transactional,
    )?;
    let txn = Arc::new(Mutex::new(Some(txn)));

    health.set_not_ready("joining the consumer group");
    let table_topics = pipeline.table_topics();
    let stream_topics = config
        .sources
        .iter()
        .map(|s| s.topic.clone())
        .filter(|t| !table_topics.contains(t))
        .collect();
    let tables = Arc::new(Mutex::new(TableGate::new(
        table_topics,
        stream_topics,
        TABLE_WAIT,
    )));
    let assignments = Arc::new(AtomicU64::new(0));
    let in_group = Arc::new(AtomicBool::new(false));
    let resumed_at = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let context = EosContext {
        assignments: assignments.clone(),
        in_group: in_group.clone(),
        resumed_at: resumed_at.clone(),
        tables: tables.clone(),
        txn: txn.clone(),
        starts: config
            .sources
            .iter()
            .map(|s| (s.topic.clone(), s.start))
            .collect(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let consumer: BaseConsumer<EosContext> = clients::consumer(config)
        .create_with_context(context)
        .context("creating the consumer")?;
    let topics: Vec<&str> = config.sources.iter().map(|s| s.topic.as_str()).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    info!(
        pipeline = %config.pipeline,
        group = %config.group_id(),
        transactional_id = %config.transactional_id(),
        topics = ?topics,
        "processing"
    );

    let mut worker = Worker {
        config,
        pipeline,
        txn: &txn,
        tables: &tables,
        limits: Limits::new(max_bytes),
        metrics,
        held: BTreeSet::new(),
        resume_at: None,
        last_tick: Instant::now(),
        assignments: assignments.clone(),
        group_wait: GroupWait::new(config, in_group),
        resumed_at,
    };
    let result = worker.process_until_stopped(&consumer, health, stop);
    health.set_not_ready(if result.is_ok() {
        "stopping"
    } else {
        "recovering"
    });
    if result.is_err() {
        // Abort first, so that closing the consumer (which revokes the
        // partitions and would commit) has nothing to commit.
        if let Some(t) = lock(&txn).as_mut() {
            t.abort();
        }
    }
    *lock(&txn) = None;
    // A graceful stop of a static member leaves explicitly (the close would
    // not); after an error the rebuilt consumer rejoins under the same
    // group.instance.id and takes the partitions back without a rebalance.
    if result.is_ok() && config.kafka.static_membership && config.shutdown.leave_group {
        membership::leave_group(&consumer);
    }
    close_consumer(consumer);
    result
}

/// Longest wait for the consumer to close (normally well under a second).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumer, so it leaves the group and another instance can
/// take the partitions without waiting for a session timeout — but never
/// waits more than [`CLOSE_TIMEOUT`]. rust-rdkafka's close polls until
/// librdkafka reports the consumer closed, with no bound, and after broker
/// or network faults librdkafka can fail to report it: the instance then
/// hung for good (seen in the soak after a `reset_peer`, and on SIGTERM
/// right after a broker restart, where the shutdown timeout then failed the
/// exit). The transaction is already gone; nothing of exactly-once depends
/// on the close finishing. A close that does not finish is left behind on
/// its thread; the session timeout expels that member.
fn close_consumer(consumer: BaseConsumer<EosContext>) {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("millrace-consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to close the consumer; it was closed here, unbounded");
        return;
    }
    if closed_rx.recv_timeout(CLOSE_TIMEOUT).is_err() {
        warn!(
            timeout = ?CLOSE_TIMEOUT,
            "the consumer did not close in time; going on without it (the group expels it \
             after session.timeout.ms)"
        );
    }
}

struct Worker<'a> {
    config: &'a PipelineConfig,
    pipeline: &'a mut Pipeline,
    txn: &'a Mutex<Option<Transaction>>,
    tables: &'a Mutex<TableGate>,
    limits: Limits,
    metrics: &'a Metrics,
    /// Partitions paused because a record of theirs waits for the schema
    /// registry, and when to resume them.
    held: BTreeSet<(String, i32)>,
    resume_at: Option<Instant>,
    last_tick: Instant,
    assignments: Arc<AtomicU64>,
    group_wait: GroupWait,
    /// See `rebalance::fencing_offsets`.
    resumed_at: Arc<Mutex<std::collections::HashMap<(String, i32), i64>>>,
}

impl Worker<'_> {
    fn process_until_stopped(
        &mut self,
        consumer: &BaseConsumer<EosContext>,
        health: &Health,
        stop: &AtomicBool,
    ) -> anyhow::Result<Ended> {
        let mut caught_up = false;
        let mut seen_assignments = 0;
        let mut turns: u32 = 0;
        let mut idle = false;
        loop {
            turns = turns.wrapping_add(1);
            // Reading the clock and polling the producer cost more than a
            // small record's processing (a tenth of the benchmark profile
            // was clock reads): do the timed chores every CLOCK_EVERY
            // records, and on every idle turn. A commit is then at most that
            // many records late on its interval; the record and byte limits
            // are still checked on every record.
            let timed_chores = idle || turns.is_multiple_of(CLOCK_EVERY);
            if timed_chores {
                health.turn();
                self.group_wait.check(Instant::now());
            }
            if stop.load(Ordering::SeqCst) {
                self.commit(consumer)?;
                info!("stopped after committing the open transaction");
                return Ok(Ended::Stopped);
            }
            self.resume_held(consumer);
            // Never poll while holding the transaction: the rebalance
            // callback, which runs inside poll, needs it.
            let polled = consumer.poll(POLL_WAIT);
            if let Some(why) = self.with_txn(|t| Ok(t.take_failure()))? {
                bail!(why);
            }
            idle = polled.is_none();
            match polled {
                None => caught_up = true,
                Some(Ok(message)) => {
                    let (topic, task, offset) =
                        (message.topic(), message.partition(), message.offset());
                    let held = lock_gate(self.tables).holds(topic, task);
                    if held {
                        // Fetched before its task paused for its tables:
                        // read it again once the task is released.
                        consumer
                            .seek(topic, task, Offset::Offset(offset), SEEK_TIMEOUT)
                            .with_context(|| format!("seeking {topic}/{task} back to {offset}"))?;
                    } else {
                        let processed = self.handle(consumer, &message)?;
                        let mut gate = lock_gate(self.tables);
                        if processed && gate.is_waiting(task) {
                            gate.read(consumer, topic, task, offset);
                        }
                    }
                }
                Some(Err(e)) => {
                    // A fatal error carries its own code (FencedInstanceId,
                    // seen when a static member rejoins after its group
                    // coordinator's node died), not `Fatal`: ask the client.
                    // The consumer can never recover; rebuilding it can.
                    if let Some((code, why)) = consumer.client().fatal_error() {
                        bail!("consumer fatal error ({code:?}): {why}");
                    }
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
                        bail!("consumer fatal error: {e}");
                    }
                    // Other consumer errors are transient (librdkafka
                    // retries them itself); they are worth a log line.
                    warn!(error = %e, "consumer error");
                }
            }
            lock_gate(self.tables).check(consumer);
            // Timers compare event times with the wall clock, so they wait
            // until the input is caught up (a poll found nothing since the
            // last assignment): a backlog after a restart is not silence.
            let generation = self.assignments.load(Ordering::SeqCst);
            if generation != seen_assignments {
                seen_assignments = generation;
                caught_up = false;
            }
            if timed_chores
                && caught_up
                && self.pipeline.has_ticks()
                && self.last_tick.elapsed() >= TICK
            {
                self.last_tick = Instant::now();
                self.tick()?;
            }
            let commit = &self.config.commit;
            let due = self.with_txn(|t| {
                if timed_chores {
                    t.poll();
                    // Not before the first assignment: until then every
                    // task directory looks unowned.
                    if seen_assignments > 0
                        && let Some(state) = t.state_mut()
                    {
                        state.clean_up();
                    }
                }
                Ok(t.is_due(
                    timed_chores.then_some(commit.interval),
                    commit.max_records,
                    commit.max_buffer_bytes,
                ))
            })?;
            if due {
                self.commit(consumer)?;
            }
        }
    }

    fn with_txn<R>(
        &self,
        f: impl FnOnce(&mut Transaction) -> Result<R, TxnError>,
    ) -> anyhow::Result<R> {
        let mut slot = lock(self.txn);
        let txn = slot
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the transaction is closed"))?;
        Ok(f(txn)?)
    }

    fn commit(&self, consumer: &BaseConsumer<EosContext>) -> anyhow::Result<()> {
        let group = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("consumer has no group metadata"))?;
        let commit_offsets =
            |tpl: &rdkafka::TopicPartitionList| consumer.commit(tpl, CommitMode::Sync);
        let fencing = rebalance::fencing_offsets(consumer, &self.resumed_at);
        self.with_txn(|t| {
            t.include_positions(&fencing);
            t.commit(group, &commit_offsets)
        })
    }

    /// Runs the steps' timers for every task this instance owns. What they
    /// emit and write joins the open transaction; an output that fails on
    /// its way to a sink is dead-lettered alone and the timer's state
    /// commits. A timer that fails itself (or whose state would not fit in
    /// a changelog record) has nothing to dead-letter: its writes are
    /// undone, it is logged, and it fires again next time.
    fn tick(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let pipeline_name = &self.config.pipeline;
        let mut slot = lock(self.txn);
        let txn = slot
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the transaction is closed"))?;
        let Some(tasks) = txn.state_mut().map(|s| s.tasks()) else {
            return Ok(());
        };
        for task in tasks {
            let Some(state) = txn.state_mut() else {
                break;
            };
            let before = state.pending_bytes();
            state.savepoint(task);
            let result = self
                .pipeline
                .tick(task, now, state.task_stores(task)?)?
                .and_then(|produced| self.limits.check_outputs(produced, now))
                .and_then(|produced| {
                    self.limits.check_state(state, task)?;
                    Ok(produced)
                });
            state.end_savepoint(task, result.is_ok());
            let wrote = state.pending_bytes() != before;
            match result {
                Ok(produced) => {
                    if wrote {
                        txn.ensure_open()?;
                    }
                    let trigger = Trigger::Timer { task, now_ms: now };
                    self.send(txn, produced, pipeline_name, trigger)?;
                }
                Err(failure) => warn!(
                    task,
                    at = %failure.at,
                    reason = failure.reason.as_str(),
                    error = %failure.message,
                    "a timer failed; it fires again at the next tick"
                ),
            }
        }
        Ok(())
    }

    /// Produces what a record or a timer produced: its outputs, and each
    /// failed output as a dead letter of its own.
    fn send(
        &self,
        txn: &mut Transaction,
        produced: Produced,
        pipeline_name: &str,
        trigger: Trigger<'_>,
    ) -> Result<(), TxnError> {
        for out in produced.outputs {
            txn.send(
                &out.topic,
                out.key.as_deref(),
                Some(&out.payload),
                out.timestamp,
                None,
            )?;
            txn.count_output(&out.topic);
        }
        for failed in &produced.failed {
            let letter = DeadLetter::of_output(pipeline_name, trigger, failed);
            let counted_as = match trigger {
                Trigger::Record { origin, .. } => origin.topic.as_str(),
                Trigger::Timer { .. } => dead_letter::TIMER_TOPIC_LABEL,
            };
            self.send_dead_letter(txn, letter)?;
            txn.count_dead_letter(counted_as, failed.failure.reason.as_str());
        }
        Ok(())
    }

    /// Produces a dead letter, cut first to what the broker accepts.
    fn send_dead_letter(
        &self,
        txn: &mut Transaction,
        mut letter: DeadLetter,
    ) -> Result<(), TxnError> {
        letter.fit(self.limits.record_bytes(), now_ms());
        if letter.header(dead_letter::header::TRUNCATED).is_some() {
            warn!(
                size = letter.size(),
                limit = self.limits.record_bytes(),
                "a dead letter was cut to fit the producer's message.max.bytes"
            );
        }
        txn.send(
            self.pipeline.dead_letter_topic(),
            letter.key.as_deref(),
            letter.payload.as_deref(),
            letter.timestamp,
            Some(letter.owned_headers()),
        )
    }

    /// Processes one record: its outputs and dead letters, or its own dead
    /// letter, and its offset, all into the open transaction. `false`: the
    /// record waits for the schema registry (see [`Worker::hold_back`]) and
    /// will be read again.
    fn handle(
        &mut self,
        consumer: &BaseConsumer<EosContext>,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<bool> {
        let origin = Origin {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let timestamp = message.timestamp().to_millis();
        let pipeline_name = &self.config.pipeline;
        let mut slot = lock(self.txn);
        let txn = slot
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the transaction is closed"))?;
        // The record's task is its partition; stateless pipelines get stores
        // that refuse every access.
        let mut no_stores = NoStores {
            task: origin.partition,
        };
        if let Some(state) = txn.state_mut() {
            state.savepoint(origin.partition);
        }
        let stores: &mut dyn TaskStores = match txn.state_mut() {
            Some(state) => state.task_stores(origin.partition)?,
            None => &mut no_stores,
        };
        let processed =
            self.pipeline
                .process(&origin, message.key(), message.payload(), timestamp, stores);
        let result = match processed {
            Ok(result) => result.and_then(|produced| self.limits.check_outputs(produced, now_ms())),
            Err(ProcessError::State(e)) => return Err(e.into()),
            Err(ProcessError::RegistryUnavailable { message, retry_in }) => {
                if let Some(state) = txn.state_mut() {
                    state.end_savepoint(origin.partition, false);
                }
                drop(slot);
                self.hold_back(consumer, &origin, &message, retry_in)?;
                return Ok(false);
            }
        };
        // A dead-lettered record leaves no trace in state either; nor does
        // one whose state would not fit in a changelog record (the commit
        // would fail on it forever).
        let result = match txn.state_mut() {
            Some(state) => {
                let result = result.and_then(|produced| {
                    self.limits.check_state(state, origin.partition)?;
                    Ok(produced)
                });
                state.end_savepoint(origin.partition, result.is_ok());
                result
            }
            None => result,
        };
        match result {
            Ok(produced) => {
                let trigger = Trigger::Record {
                    origin: &origin,
                    timestamp,
                };
                self.send(txn, produced, pipeline_name, trigger)?;
            }
            Err(failure) => {
                let letter = DeadLetter::of_input(
                    pipeline_name,
                    &origin,
                    timestamp,
                    &failure,
                    message.key(),
                    message.payload(),
                    message.headers(),
                );
                self.send_dead_letter(txn, letter)?;
                txn.count_dead_letter(&origin.topic, failure.reason.as_str());
            }
        }
        txn.consumed(&origin.topic, origin.partition, origin.offset)?;
        Ok(true)
    }
}

impl Worker<'_> {
    /// Leaves a record whose writer schema cannot be fetched for later: its
    /// partition pauses and is moved back to it, so it is read again when
    /// the partition resumes. Its offset is not in the transaction, so
    /// nothing after it commits either; other partitions, and records whose
    /// schemas are cached, go on.
    fn hold_back(
        &mut self,
        consumer: &BaseConsumer<EosContext>,
        origin: &Origin,
        why: &str,
        retry_in: Duration,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&origin.topic, origin.partition);
        consumer
            .pause(&tpl)
            .context("pausing a partition while the schema registry is unavailable")?;
        consumer
            .seek(
                &origin.topic,
                origin.partition,
                Offset::Offset(origin.offset),
                SEEK_TIMEOUT,
            )
            .context("moving a paused partition back to the record that waits")?;
        self.metrics.registry_waits.inc();
        if self.held.insert((origin.topic.clone(), origin.partition)) {
            debug!(
                topic = %origin.topic,
                partition = origin.partition,
                offset = origin.offset,
                retry_in = ?retry_in,
                error = %why,
                "partition paused until the schema registry answers"
            );
        }
        let until = Instant::now() + retry_in;
        self.resume_at = Some(self.resume_at.map_or(until, |at| at.max(until)));
        Ok(())
    }

    /// Resumes the held partitions once their wait is over; their waiting
    /// record is the next one read, and asks the registry again.
    fn resume_held(&mut self, consumer: &BaseConsumer<EosContext>) {
        if self.resume_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        self.resume_at = None;
        let mut tpl = TopicPartitionList::new();
        let gate = lock_gate(self.tables);
        for (topic, partition) in std::mem::take(&mut self.held) {
            // A task waiting for its tables stays paused; the table gate
            // resumes it.
            if !gate.holds(&topic, partition) {
                tpl.add_partition(&topic, partition);
            }
        }
        drop(gate);
        // A partition revoked meanwhile is not ours to resume; its next
        // owner starts at the committed offset, before the held record.
        if let Err(e) = consumer.resume(&tpl) {
            debug!(error = %e, "resuming held partitions");
        }
    }
}

/// Logs an error that ends the process.
pub fn report_fatal(e: &anyhow::Error) {
    error!(error = %format!("{e:#}"), "pipeline stopped");
}

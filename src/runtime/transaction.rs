//! The open Kafka transaction: outputs, dead letters and consumed offsets
//! of one commit interval, committed together or not at all.
//!
//! This is where exactly-once happens. The consumer's offsets are never
//! committed on their own: they go into the producer's transaction with
//! `send_offsets_to_transaction` (KIP-447, with the consumer's group
//! metadata so a zombie from an older generation is fenced), and the
//! outputs become visible to `read_committed` readers at the same instant
//! the offsets move.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::state::StateError;
use crate::state::manager::StateManager;

/// Why a transaction could not be committed. Either way the transaction's
/// effects are gone and the records must be read again, which the caller
/// does by rebuilding its clients from the committed offsets.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction was aborted (for example a delivery failed or the
    /// group generation moved on); the producer is still usable.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The producer is fenced or broken and must be recreated.
    #[error("producer failed: {0}")]
    Fatal(String),
    /// A call into librdkafka did not return within its timeout and is
    /// still blocked: the producer must not be touched again (not even to
    /// abort) and is abandoned to the thread that waits in it; a new
    /// producer with the same transactional id fences it.
    #[error("producer stuck: {0}")]
    Stuck(String),
    /// The transaction committed but the local state could not record it;
    /// the next owner of the task restores the missing tail from the
    /// changelog.
    #[error("state after commit: {0}")]
    State(#[from] StateError),
}

/// Watches deliveries: logs failures (their effect on the transaction is
/// reported by `commit_transaction`, which fails if any delivery did) and
/// remembers the last offset delivered per partition, which tells the state
/// layer how far each changelog reaches after a commit.
#[derive(Default)]
pub struct DeliveryLog {
    delivered: Mutex<HashMap<(String, i32), i64>>,
    /// Deliveries that failed since the last commit (at-least-once mode
    /// checks it; transactions fail on their own).
    failures: AtomicU64,
}

impl DeliveryLog {
    fn take_delivered(&self) -> HashMap<(String, i32), i64> {
        std::mem::take(&mut *self.delivered.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_failures(&self) -> u64 {
        self.failures.swap(0, Ordering::SeqCst)
    }
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                let entry = delivered
                    .entry((m.topic().to_string(), m.partition()))
                    .or_insert(m.offset());
                *entry = (*entry).max(m.offset());
            }
            Err((e, _)) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                warn!(error = %e, "delivery failed; the transaction will abort");
            }
        }
    }
}

/// Counts that become metrics when (and only if) the transaction commits.
#[derive(Default)]
struct PendingCounts {
    records_in: HashMap<String, u64>,
    records_out: HashMap<String, u64>,
    dead_lettered: HashMap<(String, &'static str), u64>,
}

/// How long past its deadline a transactional call may stay blocked before
/// its producer is abandoned (see [`Transaction::send_offsets`]).
const STUCK_GRACE: Duration = Duration::from_secs(5);

/// Sleep between checks while waiting for deliveries (before a commit, or
/// for room in a full producer queue).
const DELIVERY_WAIT: Duration = Duration::from_micros(200);

/// The producer and everything in its open transaction.
pub struct Transaction {
    /// Shared only with a thread waiting in a call that may outlive its
    /// timeout (see [`Transaction::send_offsets`]).
    producer: Arc<BaseProducer<DeliveryLog>>,
    open: bool,
    opened_at: Instant,
    /// Next offset to read, per consumed partition.
    offsets: BTreeMap<(String, i32), i64>,
    consumed: usize,
    counts: PendingCounts,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Set when a commit from a rebalance callback failed: the callback
    /// cannot return an error, so the processing loop picks it up here.
    failure: Option<String>,
    /// Stores of stateful steps; `None` for stateless pipelines.
    state: Option<StateManager>,
    /// `false` in at-least-once mode: no Kafka transaction; the consumer
    /// commits offsets after the outputs are flushed.
    transactional: bool,
}

/// Commits consumer offsets directly (at-least-once mode).
pub type OffsetCommitter<'a> = &'a dyn Fn(&TopicPartitionList) -> rdkafka::error::KafkaResult<()>;

impl Transaction {
    /// Creates the producer and registers its transactional id, which fences
    /// any older producer with the same id and aborts its open transaction.
    pub fn init(
        producer: BaseProducer<DeliveryLog>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        state: Option<StateManager>,
        transactional: bool,
    ) -> Result<Transaction, TxnError> {
        if transactional {
            producer
                .init_transactions(timeout)
                .map_err(|e| TxnError::Fatal(format!("init_transactions: {e}")))?;
        }
        Ok(Transaction {
            producer: Arc::new(producer),
            open: false,
            opened_at: Instant::now(),
            offsets: BTreeMap::new(),
            consumed: 0,
            counts: PendingCounts::default(),
            metrics,
            timeout,
            failure: None,
            state,
            transactional,
        })
    }

    /// Opens the transaction if it is not open: needed before anything is
    /// produced, and by timers whose state writes must commit even when
    /// they produce nothing.
    pub fn ensure_open(&mut self) -> Result<(), TxnError> {
        if !self.open {
            if self.transactional {
                self.producer
                    .begin_transaction()
                    .map_err(|e| TxnError::Fatal(format!("begin_transaction: {e}")))?;
            }
            self.open = true;
            self.opened_at = Instant::now();
        }
        Ok(())
    }

    /// Produces one record inside the transaction.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), TxnError> {
        self.ensure_open()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.produce(record)
    }

    /// Hands a record to the producer, waiting while its queue is full.
    fn produce(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), TxnError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: serve delivery reports until
                    // there is room. Backpressure, not an error. Short
                    // sleeps, not `poll(100 ms)`, which never returns early.
                    record = back;
                    self.producer.poll(Duration::ZERO);
                    std::thread::sleep(DELIVERY_WAIT);
                }
                // Every record is checked against the producer's limits
                // before this point (see `super::limits`), so a refusal here
                // is not about the record: rebuild and retry.
                Err((e, back)) => {
                    let partition = back.partition.map(|p| format!("[{p}]")).unwrap_or_default();
                    return Err(TxnError::Aborted(format!(
                        "produce to {}{partition}: {e}",
                        back.topic
                    )));
                }
            }
        }
    }

    /// Counts an output toward the metrics of this transaction.
    pub fn count_output(&mut self, topic: &str) {
        *self
            .counts
            .records_out
            .entry(topic.to_string())
            .or_default() += 1;
    }

    /// Counts a dead letter toward the metrics of this transaction.
    pub fn count_dead_letter(&mut self, source_topic: &str, reason: &'static str) {
        *self
            .counts
            .dead_lettered
            .entry((source_topic.to_string(), reason))
            .or_default() += 1;
    }

    /// Records that `offset` of a partition was fully processed.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), TxnError> {
        self.ensure_open()?;
        self.offsets
            .insert((topic.to_string(), partition), offset + 1);
        self.consumed += 1;
        *self.counts.records_in.entry(topic.to_string()).or_default() += 1;
        Ok(())
    }

    /// Adds offsets for partitions this transaction consumed nothing from
    /// (see `rebalance::fencing_offsets`), so that its commit is checked
    /// against the group generation like any other. Exactly-once only; a
    /// closed transaction stays closed.
    pub fn include_positions(&mut self, positions: &[(String, i32, i64)]) {
        if !self.open || !self.transactional {
            return;
        }
        for (topic, partition, next) in positions {
            self.offsets
                .entry((topic.clone(), *partition))
                .or_insert(*next);
        }
    }

    /// Whether the open transaction should commit now: its interval is
    /// over, or it holds too many records or too many buffered state bytes.
    /// `interval` is `None` when the caller skips the clock this time.
    pub fn is_due(
        &self,
        interval: Option<Duration>,
        max_records: usize,
        max_buffer_bytes: usize,
    ) -> bool {
        let buffered = self.state.as_ref().map_or(0, StateManager::pending_bytes);
        self.metrics.state_pending_bytes.set(buffered as i64);
        self.open
            && (self.consumed >= max_records
                || buffered >= max_buffer_bytes
                || interval.is_some_and(|i| self.opened_at.elapsed() >= i))
    }

    /// The state of stateful steps, if the pipeline has any.
    pub fn state_mut(&mut self) -> Option<&mut StateManager> {
        self.state.as_mut()
    }

    /// Serves delivery reports; call often.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Takes the failure recorded by a rebalance callback, if any.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Records a failure from a context that cannot return one.
    pub fn set_failure(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    /// Commits outputs, state changelog records and offsets together, then
    /// moves the state writes into the local stores. On error the
    /// transaction is aborted (if the producer still can), its state writes
    /// are discarded and its effects are gone.
    ///
    /// In at-least-once mode there is no transaction: outputs and changelog
    /// records are flushed, then `commit_offsets` commits the consumer's
    /// offsets.
    pub fn commit(
        &mut self,
        group: ConsumerGroupMetadata,
        commit_offsets: OffsetCommitter<'_>,
    ) -> Result<(), TxnError> {
        if !self.open {
            return Ok(());
        }
        let started = Instant::now();
        let mut changelog_sent = Duration::ZERO;
        let result = self.send_changelog().and_then(|()| {
            changelog_sent = started.elapsed();
            if self.transactional {
                self.try_commit(group)
            } else {
                self.flush_and_commit_offsets(commit_offsets)
            }
        });
        match &result {
            Ok(()) => {
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                let counts = std::mem::take(&mut self.counts);
                for (topic, n) in counts.records_in {
                    self.metrics
                        .records_in
                        .with_label_values(&[&topic])
                        .inc_by(n);
                }
                for (topic, n) in counts.records_out {
                    self.metrics
                        .records_out
                        .with_label_values(&[&topic])
                        .inc_by(n);
                }
                for ((topic, reason), n) in counts.dead_lettered {
                    self.metrics
                        .records_dead_lettered
                        .with_label_values(&[&topic, reason])
                        .inc_by(n);
                }
                let committed = started.elapsed();
                let delivered = self.producer.context().take_delivered();
                let records = self.consumed;
                self.reset();
                if let Some(state) = self.state.as_mut() {
                    state.apply_committed(&delivered)?;
                }
                // Where a commit's time goes, for whoever tunes the commit
                // interval: queueing the changelog, the broker round trips,
                // and writing the committed state locally.
                debug!(
                    records,
                    changelog_ms = changelog_sent.as_millis() as u64,
                    broker_ms = (committed - changelog_sent).as_millis() as u64,
                    apply_ms = (started.elapsed() - committed).as_millis() as u64,
                    "transaction committed"
                );
            }
            // A fenced (fatal) producer cannot abort; the broker already
            // aborted its transaction. Forget it here; the caller rebuilds.
            Err(e @ TxnError::Fatal(_)) => {
                warn!(error = %e, "commit failed; the producer is fenced");
                self.forget();
            }
            // A producer blocked in a call cannot abort either: the new
            // producer's init_transactions fences it and aborts its
            // transaction on the broker.
            Err(e @ TxnError::Stuck(_)) => {
                warn!(error = %e, "commit failed; the producer is abandoned");
                self.metrics
                    .transactions
                    .with_label_values(&["abandoned"])
                    .inc();
                self.forget();
            }
            Err(e) => {
                warn!(error = %e, "commit failed");
                self.abort();
            }
        }
        result
    }

    /// Produces the open transaction's state writes to their changelogs.
    fn send_changelog(&mut self) -> Result<(), TxnError> {
        let Some(state) = self.state.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        for (topic, partition, key, value) in state.changelog_records() {
            result = self.send_to(&topic, partition, key, value);
            if result.is_err() {
                break;
            }
        }
        self.state = Some(state);
        result
    }

    fn send_to(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), TxnError> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.produce(record)
    }

    fn offset_list(&self) -> Result<TopicPartitionList, TxnError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| TxnError::Fatal(format!("offset list: {e}")))?;
        }
        Ok(tpl)
    }

    /// At-least-once commit: every output delivered first, then the offsets.
    fn flush_and_commit_offsets(
        &mut self,
        commit_offsets: OffsetCommitter<'_>,
    ) -> Result<(), TxnError> {
        self.await_deliveries(Instant::now() + self.timeout)
            .map_err(|e| TxnError::Aborted(format!("flush: {e}")))?;
        let failed = self.producer.context().take_failures();
        if failed > 0 {
            return Err(TxnError::Aborted(format!("{failed} deliveries failed")));
        }
        let tpl = self.offset_list()?;
        if tpl.count() > 0 {
            commit_offsets(&tpl).map_err(|e| TxnError::Aborted(format!("offset commit: {e}")))?;
        }
        Ok(())
    }

    fn try_commit(&mut self, group: ConsumerGroupMetadata) -> Result<(), TxnError> {
        let tpl = self.offset_list()?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        if tpl.count() > 0 {
            self.send_offsets(tpl, group, deadline)?;
        }
        debug!(
            offsets_ms = started.elapsed().as_millis() as u64,
            "offsets added to the transaction"
        );
        self.await_deliveries(deadline)
            .map_err(|e| TxnError::Aborted(format!("flush: {e}")))?;
        retry_until(deadline, || {
            self.producer.commit_transaction(remaining(deadline))
        })
    }

    /// Adds the consumed offsets to the transaction, retrying until
    /// `deadline`. librdkafka's `send_offsets_to_transaction` can block far
    /// past its timeout when the group coordinator's broker dies (its
    /// coordinator lookup waits for a broker state change that may never
    /// come: librdkafka issues #5456 and #5511, open in 2.12; seen here in
    /// `tests/cluster.rs` as a pipeline stalled for minutes). So the call
    /// runs on its own thread, and if it has not returned [`STUCK_GRACE`]
    /// after the deadline the producer is given up as [`TxnError::Stuck`].
    fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
        deadline: Instant,
    ) -> Result<(), TxnError> {
        let producer = Arc::clone(&self.producer);
        let (done, result) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("millrace-txn-offsets".into())
            .spawn(move || {
                let outcome = retry_until(deadline, || {
                    producer.send_offsets_to_transaction(&offsets, &group, remaining(deadline))
                });
                // The receiver is gone when this call was given up on.
                let _ = done.send(outcome);
            })
            .map_err(|e| TxnError::Fatal(format!("starting the offsets thread: {e}")))?;
        let wait = deadline.saturating_duration_since(Instant::now()) + STUCK_GRACE;
        match result.recv_timeout(wait) {
            Ok(outcome) => outcome,
            Err(_) => Err(TxnError::Stuck(format!(
                "send_offsets_to_transaction did not return within {:?} of its {:?} timeout \
                 (the group coordinator's broker is unreachable?)",
                STUCK_GRACE, self.timeout
            ))),
        }
    }

    /// Waits until every record produced so far is delivered (or failed)
    /// and its report served. rdkafka's `flush` (which `commit_transaction`
    /// calls first) polls in slices of 100 ms that never end early, so
    /// every commit took at least 100 ms; serving reports here, with short
    /// sleeps between, leaves it nothing to wait for. Measured: a commit at
    /// 20,000 records/s went from ~103 ms to ~11 ms. (Not `poll(1 ms)`:
    /// rdkafka rounds the remaining sub-millisecond wait down to zero and
    /// spins, which showed as 5% of a profile.)
    fn await_deliveries(&self, deadline: Instant) -> Result<(), String> {
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} records still undelivered after {:?}",
                    self.producer.in_flight_count(),
                    self.timeout
                ));
            }
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() > 0 {
                std::thread::sleep(DELIVERY_WAIT);
            }
        }
        Ok(())
    }

    /// Aborts the open transaction, if any. Errors are logged: after an
    /// abort failure the producer is unusable and will be rebuilt anyway.
    pub fn abort(&mut self) {
        let fatal = self.producer.client().fatal_error();
        if let Some((_, why)) = &fatal {
            // Fenced: the broker has aborted this producer's transaction
            // already, and an abort from here could only fail.
            debug!(error = %why, "producer in a fatal state; nothing to abort");
        }
        if self.open && self.transactional && fatal.is_none() {
            // librdkafka's abort first waits until every outstanding record
            // is purged *and its delivery report served*; nothing serves
            // them while this thread waits inside the abort, so it used to
            // block for the whole timeout (a stalled instance, seen after
            // a zombie's failed commit). Purge and serve them here first.
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            if let Err(e) = self.await_deliveries(Instant::now() + self.timeout) {
                warn!(error = %e, "purging before the abort");
            }
            match self.producer.abort_transaction(self.timeout) {
                Ok(()) => self
                    .metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc(),
                // The abort bumps the producer's epoch, which the broker
                // refuses (fenced) when it has already aborted this
                // transaction itself because it outlived
                // transaction.timeout.ms: what the abort wanted is done.
                Err(e) if self.producer.client().fatal_error().is_some() => {
                    warn!(
                        error = %e,
                        "the broker had aborted the transaction already (it outlived \
                         transaction.timeout.ms); the producer will be rebuilt"
                    );
                    self.metrics
                        .transactions
                        .with_label_values(&["abandoned"])
                        .inc();
                }
                Err(e) => warn!(error = %e, "abort failed; the producer will be rebuilt"),
            }
        }
        self.forget();
    }

    /// Drops what the open transaction holds locally (state writes,
    /// delivery bookkeeping, offsets and counts).
    fn forget(&mut self) {
        if let Some(state) = self.state.as_mut() {
            state.discard();
        }
        self.producer.context().take_delivered();
        self.producer.context().take_failures();
        self.reset();
    }

    fn reset(&mut self) {
        self.open = false;
        self.offsets.clear();
        self.consumed = 0;
        self.counts = PendingCounts::default();
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Runs a transactional call, retrying while librdkafka calls the error
/// retriable and time is left, and classifies the final error.
fn retry_until(
    deadline: Instant,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), TxnError> {
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) => {
                if e.is_retriable() && Instant::now() < deadline {
                    debug!(error = %e, "retrying transactional call");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                if e.is_fatal() {
                    return Err(TxnError::Fatal(e.to_string()));
                }
                return Err(TxnError::Aborted(e.to_string()));
            }
            Err(other) => return Err(TxnError::Aborted(other.to_string())),
        }
    }
}

//! The consumer's callbacks: what happens when partitions come and go.
//!
//! On revocation the open transaction commits *before* the partitions are
//! released, so the next owner starts exactly where this instance stopped —
//! unless the assignment was *lost* (this member was expelled, say after a
//! pause longer than `session.timeout.ms`): another member may already own
//! the partitions and have processed the same records, so the transaction
//! is aborted, never committed.
//! On assignment, partitions the group has never committed start where
//! their source's `start` says (earliest, latest or a point in time).
//!
//! The group's assignment strategy is fixed to eager `range` (see
//! `runtime::clients`): it gives partition *n* of every co-partitioned
//! source to the same member, which joins and tables rely on, and it
//! revokes everything (committing first) before anything is assigned, so
//! no transaction is open while a new task restores.
//!
//! Restores run inside the assignment callback, so a long one must not
//! cost the assignment. It cannot time a transaction out (none is open),
//! and librdkafka does not enforce `max.poll.interval.ms` while the
//! application is inside a *blocking* poll (`rd_kafka_app_poll_start` marks
//! the consumer as polling; the processing loop always polls with a wait,
//! `POLL_WAIT`). What can happen: another member joins during a restore
//! longer than `max.poll.interval.ms` (the group's rebalance timeout), the
//! group expels this member, and its assignment comes back *lost* — the
//! lost-assignment path (abort, rejoin) handles that, and the restored
//! rows stay in RocksDB with their changelog offset, so the next restore
//! only reads the tail. `tests/faults.rs` ("slow restore") restores a whole
//! changelog through a slowed link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::tables::TableGate;
use super::transaction::Transaction;
use crate::config::StartPosition;
use crate::metrics::Metrics;
use crate::ops::Health;

/// How long assignment may wait for the broker to answer offset lookups.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The consumer context shared with the processing loop.
pub struct EosContext {
    pub txn: Arc<Mutex<Option<Transaction>>>,
    pub starts: HashMap<String, StartPosition>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub tables: Arc<Mutex<TableGate>>,
    /// Counts assignments, so the loop knows when new partitions (maybe
    /// with a backlog) arrived.
    pub assignments: Arc<AtomicU64>,
    /// True from an assignment until the next revocation: whether the
    /// group has given this member its share (which may be no partitions).
    /// While it is false the loop says what it is waiting for.
    pub in_group: Arc<AtomicBool>,
    /// The group's committed offset of each assigned partition, as read at
    /// assignment: what a transaction re-commits for a partition it has
    /// consumed nothing from (see [`fencing_offsets`]).
    pub resumed_at: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

/// Locks the table gate, surviving a poisoned lock.
pub fn lock_gate(gate: &Mutex<TableGate>) -> MutexGuard<'_, TableGate> {
    gate.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks the transaction slot, surviving a poisoned lock (a panic elsewhere
/// must not hide the state from shutdown).
pub fn lock(txn: &Mutex<Option<Transaction>>) -> MutexGuard<'_, Option<Transaction>> {
    txn.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientContext for EosContext {
    fn stats(&self, stats: Statistics) {
        // Lag as the application sees it: from the next record it will be
        // handed to the last stable offset (read_committed's end).
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                if p.app_offset >= 0 && p.ls_offset >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&labels)
                        .set((p.ls_offset - p.app_offset).max(0));
                }
            }
        }
    }
}

impl EosContext {
    fn fail(&self, why: String) {
        error!(reason = %why, "rebalance failed; the clients will be rebuilt");
        match lock(&self.txn).as_mut() {
            Some(txn) => txn.set_failure(why),
            None => warn!("no transaction to record the failure on"),
        }
    }

    /// Commits the open transaction before partitions are given up; aborts
    /// it when the assignment was lost.
    fn commit_before_revoke(&self, consumer: &BaseConsumer<Self>) {
        if consumer.assignment_lost() {
            // After the loss librdkafka's group metadata carries generation
            // -1, which brokers accept *without* the KIP-447 generation
            // check (old clients send it): committing now would let a
            // zombie's outputs and offsets through.
            warn!(
                "assignment lost (this member was expelled from the group); aborting the open transaction"
            );
            if let Some(txn) = lock(&self.txn).as_mut() {
                txn.abort();
            }
            return;
        }
        let Some(group) = consumer.group_metadata() else {
            self.fail("no group metadata at revocation".into());
            return;
        };
        let commit_offsets =
            |tpl: &TopicPartitionList| consumer.commit(tpl, rdkafka::consumer::CommitMode::Sync);
        let fencing = fencing_offsets(consumer, &self.resumed_at);
        let mut slot = lock(&self.txn);
        if let Some(txn) = slot.as_mut() {
            txn.include_positions(&fencing);
            if let Err(e) = txn.commit(group, &commit_offsets) {
                txn.set_failure(format!("commit at revocation: {e}"));
            }
        }
    }

    /// Opens (and restores) the state of newly assigned tasks.
    fn open_tasks(&self, assigned: &TopicPartitionList) {
        let mut slot = lock(&self.txn);
        let Some(state) = slot.as_mut().and_then(|t| t.state_mut()) else {
            return;
        };
        let mut tasks: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        for task in tasks {
            if let Err(e) = state.open_task(task) {
                drop(slot);
                self.fail(format!("restoring task {task}: {e}"));
                return;
            }
        }
    }

    /// Closes the state of revoked tasks (their writes were just committed).
    fn close_tasks(&self, revoked: &TopicPartitionList) {
        let mut slot = lock(&self.txn);
        if let Some(state) = slot.as_mut().and_then(|t| t.state_mut()) {
            for element in revoked.elements() {
                state.close_task(element.partition());
            }
        }
    }

    /// Sets the start offset of every assigned partition the group has not
    /// committed, according to its source's `start`.
    fn resolve_starts(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &mut TopicPartitionList,
    ) -> KafkaResult<()> {
        let committed = consumer.committed_offsets(assigned.clone(), LOOKUP_TIMEOUT)?;
        let mut by_time = TopicPartitionList::new();
        let mut resumed_at = self.resumed_at.lock().unwrap_or_else(|p| p.into_inner());
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match element.offset() {
                Offset::Offset(n) => {
                    resumed_at.insert((topic.to_string(), partition), n);
                    Offset::Offset(n)
                }
                _ => match self.starts.get(topic).copied().unwrap_or_default() {
                    StartPosition::Earliest => Offset::Beginning,
                    StartPosition::Latest => Offset::End,
                    StartPosition::Timestamp(ms) => {
                        by_time.add_partition_offset(topic, partition, Offset::Offset(ms))?;
                        continue;
                    }
                },
            };
            assigned.set_partition_offset(topic, partition, offset)?;
        }
        if by_time.count() > 0 {
            let found = consumer.offsets_for_times(by_time, LOOKUP_TIMEOUT)?;
            for element in found.elements() {
                // No record at or after the time: start at the end.
                let offset = match element.offset() {
                    Offset::Offset(n) if n >= 0 => Offset::Offset(n),
                    _ => Offset::End,
                };
                assigned.set_partition_offset(element.topic(), element.partition(), offset)?;
            }
        }
        Ok(())
    }
}

impl ConsumerContext for EosContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.resolve_starts(consumer, tpl) {
                    // Assign anyway so the group can settle; the loop sees
                    // the failure before it reads anything and rebuilds.
                    self.fail(format!("resolving start offsets: {e}"));
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.fail(format!("assign: {e}"));
                }
                // Restore before processing: the loop polls (and so reads
                // these partitions) only after this callback returns.
                self.open_tasks(tpl);
                lock_gate(&self.tables).assigned(consumer, tpl);
                self.assignments.fetch_add(1, Ordering::SeqCst);
                self.in_group.store(true, Ordering::SeqCst);
                let total = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                self.metrics.assigned_partitions.set(total as i64);
                info!(added = tpl.count(), total, "partitions assigned");
                self.health.set_ready();
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.in_group.store(false, Ordering::SeqCst);
                self.commit_before_revoke(consumer);
                {
                    let mut resumed_at = self.resumed_at.lock().unwrap_or_else(|p| p.into_inner());
                    for element in tpl.elements() {
                        resumed_at.remove(&(element.topic().to_string(), element.partition()));
                    }
                }
                self.close_tasks(tpl);
                lock_gate(&self.tables).revoked(tpl);
                for element in tpl.elements() {
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[element.topic(), &element.partition().to_string()]);
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    self.fail(format!("unassign: {e}"));
                }
                let total = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                self.metrics.assigned_partitions.set(total as i64);
                info!(revoked = tpl.count(), total, "partitions revoked");
            }
            other => {
                self.fail(format!("rebalance error {other:?}"));
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "unassign after a rebalance error");
                }
            }
        }
    }
}

/// The offsets that let *every* transaction be fenced by the group
/// generation (KIP-447): the broker checks the generation only on the
/// offsets a transaction commits, so a transaction that consumed nothing
/// (a timer's output, say) would otherwise commit even from a zombie. For
/// each assigned partition: the consumer's position (one past the last
/// record handed to the loop; every such record is either in the open
/// transaction, whose own offset then wins, or was moved back to by a
/// seek), or, before anything was read, the offset the group resumed from.
/// Re-committing either changes nothing.
pub fn fencing_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    resumed_at: &Mutex<HashMap<(String, i32), i64>>,
) -> Vec<(String, i32, i64)> {
    let resumed_at = resumed_at.lock().unwrap_or_else(|p| p.into_inner());
    let positions = consumer.position().unwrap_or_default();
    let Ok(assigned) = consumer.assignment() else {
        return Vec::new();
    };
    assigned
        .elements()
        .iter()
        .filter_map(|e| {
            let key = (e.topic().to_string(), e.partition());
            let position = positions
                .find_partition(e.topic(), e.partition())
                .and_then(|p| match p.offset() {
                    Offset::Offset(n) if n >= 0 => Some(n),
                    _ => None,
                });
            let next = position.or_else(|| resumed_at.get(&key).copied())?;
            Some((key.0, key.1, next))
        })
        .collect()
}

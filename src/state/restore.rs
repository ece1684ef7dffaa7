//! Restoring a task's local stores from their changelog topics.
//!
//! The local copy is complete up to the changelog offset stored with it, so
//! restore reads only from there to the end (a *tail* restore). A task with
//! no local copy (new machine, deleted or corrupt directory) reads the whole
//! partition (a *full* restore). Reads are `read_committed`: aborted
//! changelog records never reach a store.
//!
//! A local copy is trusted only while it still matches its changelog: the
//! same topic (by id, so a topic deleted and created again under the same
//! name is another topic), and a stored offset inside the partition's
//! current range. Anything else — the changelog deleted, recreated,
//! truncated, or its head deleted while the task lived elsewhere — makes
//! the copy [`Restore::Stale`], and the caller wipes it and restores the
//! whole partition, as Kafka Streams does on `TaskCorruptedException`.
//!
//! The end of a changelog is read only once it is *settled*: no transaction
//! at its tail is still undecided. The group's committed offsets are
//! fetched as stable (KIP-447), but the commit markers of the same
//! transaction reach the changelog partition asynchronously; reading to the
//! last stable offset at that instant could miss the changelog records of
//! the very transaction whose offsets the task resumes from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::StateError;
use super::rocks::{Change, TaskDb};
use crate::logging::KafkaLog;

/// Records applied to RocksDB per write batch during a restore.
const BATCH: usize = 10_000;
/// Longest a restore may go without reading anything before it gives up,
/// and longest it waits for the changelog's tail to settle. Well above the
/// 10 s transaction timeout Millrace's producers use, after which the
/// broker aborts a transaction its producer abandoned.
const STALL: Duration = Duration::from_secs(120);
/// Bound on one metadata request (watermarks, topic id).
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a long restore logs how far it has come.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Pause between checks while a changelog's tail is undecided.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// What a restore found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The store is up to date with its changelog.
    Done(Restored),
    /// The local copy does not belong to the changelog as it is now (the
    /// reason says how); nothing was read. The caller wipes the task's
    /// local state and restores again from the start.
    Stale(String),
}

/// What one store's restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// `true` when the whole changelog was read (no local copy).
    pub full: bool,
    pub records: u64,
    pub elapsed: Duration,
}

fn kafka(context: &str, e: KafkaError) -> StateError {
    StateError::Storage(format!("{context}: {e}"))
}

/// Called on every turn of a restore's read loop. A restore runs inside the
/// consumer's rebalance callback, where the processing loop does not turn;
/// without this, `/healthz` (and a Kubernetes liveness probe on it) would
/// call a restore longer than its stall limit dead, and restarting it would
/// only start the restore again.
pub type Heartbeat = Arc<dyn Fn() + Send + Sync>;

/// Reads changelogs into task stores. One consumer serves every restore of
/// an instance: creating and closing a librdkafka consumer per store cost
/// about a second each, which made start-up grow with the partition count.
pub struct Restorer {
    client: ClientConfig,
    consumer: Option<BaseConsumer<KafkaLog>>,
    /// A `read_uncommitted` client: its watermark queries answer the high
    /// watermark, where the restore consumer's (`read_committed`) answer
    /// the last stable offset.
    uncommitted: Option<BaseConsumer<KafkaLog>>,
    heartbeat: Heartbeat,
}

impl Restorer {
    pub fn new(client: ClientConfig, heartbeat: Heartbeat) -> Restorer {
        Restorer {
            client,
            consumer: None,
            uncommitted: None,
            heartbeat,
        }
    }

    fn uncommitted(&mut self) -> Result<&BaseConsumer<KafkaLog>, StateError> {
        if self.uncommitted.is_none() {
            let mut config = self.client.clone();
            config
                .set("isolation.level", "read_uncommitted")
                .set("enable.auto.commit", "false")
                .set("group.id", "millrace-restore");
            let client = config
                .create_with_context(KafkaLog { role: "restore" })
                .map_err(|e| kafka("changelog watermark client", e))?;
            self.uncommitted = Some(client);
        }
        self.uncommitted
            .as_ref()
            .ok_or_else(|| StateError::Storage("changelog watermark client missing".into()))
    }

    fn consumer(&mut self) -> Result<&BaseConsumer<KafkaLog>, StateError> {
        if self.consumer.is_none() {
            let mut config = self.client.clone();
            config
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .set("enable.auto.commit", "false")
                // A restore reads to the end as fast as it can: waiting
                // for a fetch to fill up only delays reaching the end.
                .set("fetch.wait.max.ms", "10")
                // Nor wait a second to refill a full prefetch queue (see
                // the pipeline consumer's setting in runtime::clients).
                .set("fetch.queue.backoff.ms", "10")
                // A stored offset outside the partition is a mismatch to
                // handle (wipe and restore fully), never a silent jump to
                // one end of the partition, librdkafka's default.
                .set("auto.offset.reset", "error")
                // Assigned partitions only: the group id is never joined.
                .set("group.id", "millrace-restore");
            let consumer = config
                .create_with_context(KafkaLog { role: "restore" })
                .map_err(|e| kafka("restore consumer", e))?;
            self.consumer = Some(consumer);
        }
        self.consumer
            .as_ref()
            .ok_or_else(|| StateError::Storage("restore consumer missing".into()))
    }

    /// Brings `store` of `db` up to the end of its changelog partition, or
    /// finds that the local copy no longer matches the changelog.
    pub fn restore(
        &mut self,
        db: &TaskDb,
        store: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Restore, StateError> {
        let started = Instant::now();
        let id = self.topic_id(topic)?;
        let (low, end) = self.settled_watermarks(topic, partition)?;
        let stored = db.changelog_offset(store)?;
        let stored_id = db.changelog_topic_id(store)?;
        if let Some(why) = mismatch(stored, stored_id.as_deref(), &id, low, end) {
            return Ok(Restore::Stale(format!("{topic}[{partition}]: {why}")));
        }
        if stored_id.as_deref() != Some(id.as_str()) {
            db.set_changelog_topic_id(store, &id)?;
        }
        let heartbeat = self.heartbeat.clone();
        let consumer = self.consumer()?;
        let result = restore(
            consumer,
            db,
            (store, topic, partition),
            (low, end),
            started,
            &*heartbeat,
        );
        // Leave nothing assigned (and nothing prefetched) between restores.
        if let Err(e) = consumer.unassign() {
            warn!(error = %e, "restore consumer unassign");
        }
        result
    }

    /// The changelog's topic id; its absence is an error (changelogs are
    /// created before any task opens).
    fn topic_id(&mut self, topic: &str) -> Result<String, StateError> {
        let client = self.uncommitted()?;
        match crate::topic_id::topic_id(client.client(), topic, METADATA_TIMEOUT) {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(StateError::Storage(format!(
                "changelog topic {topic} does not exist"
            ))),
            Err(e) => Err(StateError::Storage(e)),
        }
    }

    /// The partition's low watermark and its end, once no transaction at
    /// its tail is undecided (the last stable offset has reached the high
    /// watermark). Only the task's owner writes its changelog, so once
    /// settled the end stays put while this instance restores.
    fn settled_watermarks(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), StateError> {
        let started = Instant::now();
        let mut logged = false;
        loop {
            let (_, high) = self
                .uncommitted()?
                .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                .map_err(|e| kafka("changelog high watermark", e))?;
            let (low, stable) = self
                .consumer()?
                .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                .map_err(|e| kafka("changelog watermarks", e))?;
            if stable >= high {
                return Ok((low, stable));
            }
            if started.elapsed() > STALL {
                return Err(StateError::Storage(format!(
                    "the tail of {topic}[{partition}] stayed undecided for {STALL:?} \
                     (last stable offset {stable}, high watermark {high})"
                )));
            }
            (self.heartbeat)();
            if !logged {
                info!(
                    topic,
                    partition,
                    stable,
                    high,
                    "waiting for the transaction at the end of the changelog to be decided"
                );
                logged = true;
            }
            std::thread::sleep(SETTLE_POLL);
        }
    }
}

/// Why a local copy cannot be trusted, if it cannot: it was built from
/// another incarnation of the changelog topic, or its offset lies outside
/// the partition (`low..=end`) as it is now.
fn mismatch(
    stored: Option<i64>,
    stored_id: Option<&str>,
    id: &str,
    low: i64,
    end: i64,
) -> Option<String> {
    if let Some(old) = stored_id
        && old != id
    {
        return Some(format!(
            "the changelog topic was deleted and created again (topic id {old}, now {id})"
        ));
    }
    let next = stored?;
    if next > end {
        return Some(format!(
            "the local copy reaches offset {next} but the changelog ends at {end} \
             (deleted, recreated or truncated)"
        ));
    }
    if next < low {
        return Some(format!(
            "the local copy stops at offset {next} but the changelog now starts at {low} \
             (records deleted while the task was elsewhere)"
        ));
    }
    None
}

/// Reads `store`'s changelog partition (`topic`, `partition`) from the
/// stored offset to `high` into `db`.
fn restore(
    consumer: &BaseConsumer<KafkaLog>,
    db: &TaskDb,
    (store, topic, partition): (&str, &str, i32),
    (low, high): (i64, i64),
    started: Instant,
    heartbeat: &(dyn Fn() + Send + Sync),
) -> Result<Restore, StateError> {
    let stored = db.changelog_offset(store)?;
    // Applies restored records together with the changelog position they
    // bring the store to, in one atomic write.
    let flush = |batch: &mut BTreeMap<Vec<u8>, Change>, next: i64| {
        let changes = BTreeMap::from([(store.to_string(), std::mem::take(batch))]);
        db.apply(&changes, &BTreeMap::from([(store.to_string(), next)]))
    };
    // Nothing to read when the local copy already ends where the changelog
    // ends (a clean restart), or when the changelog is empty (a new
    // pipeline): answered by the watermarks instead of a fetch that waits
    // for the end-of-partition event.
    let up_to_date = match stored {
        Some(next) => next == high,
        None => low == high,
    };
    if up_to_date {
        if stored.is_none() {
            // An empty store is a local copy too: record where it ends.
            flush(&mut BTreeMap::new(), high)?;
        }
        return Ok(Restore::Done(finish(
            stored.is_none(),
            0,
            started,
            store,
            partition,
        )));
    }
    let start = stored.map_or(Offset::Beginning, Offset::Offset);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, start)
        .map_err(|e| kafka("restore assignment", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka("restore assignment", e))?;

    let mut batch: BTreeMap<Vec<u8>, Change> = BTreeMap::new();
    let mut records = 0u64;
    let mut last_read = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        heartbeat();
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            info!(
                store,
                partition,
                records,
                end = high,
                elapsed = ?started.elapsed(),
                "restoring"
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_read.elapsed() > STALL {
                    return Err(StateError::Storage(format!(
                        "restore of {topic}[{partition}] read nothing for {STALL:?}"
                    )));
                }
            }
            Some(Ok(m)) => {
                last_read = Instant::now();
                let key = m.key().unwrap_or_default().to_vec();
                batch.insert(key, m.payload().map(<[u8]>::to_vec));
                records += 1;
                if batch.len() >= BATCH {
                    flush(&mut batch, m.offset() + 1)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            // The stored offset fell out of the partition between the
            // check above and the fetch (retention, DeleteRecords).
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) => {
                return Ok(Restore::Stale(format!(
                    "{topic}[{partition}]: offset {start:?} is out of range: {e}"
                )));
            }
            Some(Err(e)) => return Err(kafka("reading the changelog", e)),
        }
    }
    // The position after the end: past the last record and any transaction
    // markers, so the next restore starts exactly there.
    let position = consumer
        .position()
        .map_err(|e| kafka("restore position", e))?
        .find_partition(topic, partition)
        .and_then(|p| p.offset().to_raw())
        .filter(|o| *o >= 0);
    // Nothing read from the beginning: the partition holds no committed
    // record, so its start is a safe (and exact) place to resume from.
    // (Its low watermark was fetched above.)
    let next = position.or(stored).unwrap_or(low);
    flush(&mut batch, next)?;
    Ok(Restore::Done(finish(
        stored.is_none(),
        records,
        started,
        store,
        partition,
    )))
}

fn finish(full: bool, records: u64, started: Instant, store: &str, partition: i32) -> Restored {
    let restored = Restored {
        full,
        records,
        elapsed: started.elapsed(),
    };
    info!(
        store,
        partition,
        full = restored.full,
        records,
        elapsed = ?restored.elapsed,
        "restored"
    );
    restored
}

#[cfg(test)]
mod tests {
    use super::mismatch;

    #[test]
    fn a_local_copy_is_trusted_only_inside_its_own_changelog() {
        let id = "ID1";
        // A fresh store, and copies within the partition's range.
        assert_eq!(mismatch(None, None, id, 0, 0), None);
        assert_eq!(mismatch(None, None, id, 5, 9), None);
        assert_eq!(mismatch(Some(9), Some(id), id, 0, 9), None);
        assert_eq!(mismatch(Some(3), Some(id), id, 3, 9), None);
        // Stores from before ids were recorded are checked by offsets.
        assert_eq!(mismatch(Some(4), None, id, 0, 9), None);
        // Beyond the end: the changelog was recreated or truncated.
        let beyond = mismatch(Some(10), Some(id), id, 0, 9).unwrap();
        assert!(beyond.contains("ends at 9"), "{beyond}");
        // Before the start: records the copy lacks are gone.
        let before = mismatch(Some(2), Some(id), id, 3, 9).unwrap();
        assert!(before.contains("starts at 3"), "{before}");
        // Another topic under the same name, whatever the offsets say.
        let other = mismatch(Some(4), Some("ID0"), id, 0, 9).unwrap();
        assert!(other.contains("deleted and created again"), "{other}");
    }
}

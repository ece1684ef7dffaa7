//! Restoring a task's local stores from their changelog topics.
//!
//! The local copy is complete up to the changelog offset stored with it, so
//! restore reads only from there to the end (a *tail* restore). A task with
//! no local copy (new machine, deleted or corrupt directory) reads the whole
//! partition (a *full* restore). Reads are `read_committed`: aborted
//! changelog records never reach a store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::StateError;
use super::rocks::{Change, TaskDb};

/// Records applied to RocksDB per write batch during a restore.
const BATCH: usize = 10_000;
/// Longest a restore may go without reading anything before it gives up.
const STALL: Duration = Duration::from_secs(120);

/// Consumer context for restores: reaching the end of a changelog is the
/// goal, not an error worth an ERROR log line (librdkafka reports it as a
/// global error too).
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            warn!(%error, reason, "restore consumer error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

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

/// Reads changelogs into task stores. One consumer serves every restore of
/// an instance: creating and closing a librdkafka consumer per store cost
/// about a second each, which made start-up grow with the partition count.
pub struct Restorer {
    client: ClientConfig,
    consumer: Option<BaseConsumer<QuietEof>>,
}

impl Restorer {
    pub fn new(client: ClientConfig) -> Restorer {
        Restorer {
            client,
            consumer: None,
        }
    }

    fn consumer(&mut self) -> Result<&BaseConsumer<QuietEof>, StateError> {
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
                // Assigned partitions only: the group id is never joined.
                .set("group.id", "millrace-restore");
            let consumer = config
                .create_with_context(QuietEof)
                .map_err(|e| kafka("restore consumer", e))?;
            self.consumer = Some(consumer);
        }
        self.consumer
            .as_ref()
            .ok_or_else(|| StateError::Storage("restore consumer missing".into()))
    }

    /// Brings `store` of `db` up to the end of its changelog partition.
    pub fn restore(
        &mut self,
        db: &TaskDb,
        store: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Restored, StateError> {
        let consumer = self.consumer()?;
        let result = restore(consumer, db, store, topic, partition);
        // Leave nothing assigned (and nothing prefetched) between restores.
        if let Err(e) = consumer.unassign() {
            warn!(error = %e, "restore consumer unassign");
        }
        result
    }
}

fn restore(
    consumer: &BaseConsumer<QuietEof>,
    db: &TaskDb,
    store: &str,
    topic: &str,
    partition: i32,
) -> Result<Restored, StateError> {
    let started = Instant::now();
    let stored = db.changelog_offset(store)?;
    // Applies restored records together with the changelog position they
    // bring the store to, in one atomic write.
    let flush = |batch: &mut BTreeMap<Vec<u8>, Change>, next: i64| {
        let changes = BTreeMap::from([(store.to_string(), std::mem::take(batch))]);
        db.apply(&changes, &BTreeMap::from([(store.to_string(), next)]))
    };
    // Nothing to read when the local copy already ends where the changelog
    // ends (a clean restart), or when the changelog is empty (a new
    // pipeline): answered by one metadata round trip instead of a fetch
    // that waits for the end-of-partition event.
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(|e| kafka("changelog watermarks", e))?;
    let up_to_date = match stored {
        Some(next) => next == high,
        None => low == high,
    };
    if up_to_date {
        if stored.is_none() {
            // An empty store is a local copy too: record where it ends.
            flush(&mut BTreeMap::new(), high)?;
        }
        return Ok(finish(stored.is_none(), 0, started, store, partition));
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
    loop {
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
    Ok(finish(stored.is_none(), records, started, store, partition))
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

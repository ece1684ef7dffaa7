//! The `_schemas` topic on Kafka: creating it, reading it into the
//! [`Store`] (the reader thread), and writing records to it (the
//! [`Writer`]).
//!
//! The reader replays the topic from the beginning with
//! `isolation.level=read_committed`; the instance is ready once it reaches
//! the end. It keeps reading afterwards, so records written by any
//! instance (or by Confluent Schema Registry or Karapace) reach every
//! instance's state the same way.
//!
//! The writer produces in Kafka transactions under one transactional id
//! shared by every instance of the registry. Taking the writer role
//! (`init_transactions`) fences the previous writer, whose next commit then
//! fails; the caller ([`super::service`]) reads to the end of the topic
//! before deciding anything as the new writer. So between reading the state
//! and committing a record based on it, no other instance can have
//! committed: ids and versions are allocated by one writer at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::config::RegistryConfig;
use super::metrics::RegistryMetrics;
use super::records::Record;
use super::store::{Applied, Store};
use crate::logging::KafkaLog;
use crate::ops::Health;

/// How far the reader has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// One past the offset of the last record applied.
    pub next_offset: i64,
    /// Whether the reader has reached the end of the topic once.
    pub replayed: bool,
    /// When the last record arrived: a writer is at work while records
    /// keep arriving.
    pub last_record_at: Option<Instant>,
}

fn base(config: &RegistryConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap);
    client.set("client.id", format!("millrace-registry-{}", config.topic));
    for (name, value) in &config.kafka.properties {
        client.set(name, value);
    }
    client
}

/// Creates the topic if it does not exist (compacted, one partition) and
/// checks that it has one partition: ids and versions are ordered by it.
pub async fn ensure_topic(config: &RegistryConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base(config).create().context("creating the admin client")?;
    let topic = NewTopic::new(
        &config.topic,
        1,
        TopicReplication::Fixed(config.replication_factor.unwrap_or(-1)),
    )
    .set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| {
            format!(
                "creating topic {} on {}",
                config.topic, config.kafka.bootstrap
            )
        })?;
    for result in results {
        match result {
            Ok(name) => info!(topic = %name, "created the schemas topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&config.topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {}", config.topic))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    if partitions != 1 {
        bail!(
            "topic {} has {partitions} partitions; a schema registry needs exactly one \
             (versions and ids are ordered by it)",
            config.topic
        );
    }
    Ok(())
}

/// Starts the reader thread. It applies every record to `store`, reports
/// progress on `progress`, and marks `health` ready once it has
/// reached the end of the topic. It stops when `stop` is set.
pub fn start_reader(
    config: &RegistryConfig,
    store: Arc<RwLock<Store>>,
    health: Arc<Health>,
    metrics: Arc<RegistryMetrics>,
    stop: Arc<AtomicBool>,
    progress: watch::Sender<Progress>,
) -> anyhow::Result<JoinHandle<()>> {
    let consumer: BaseConsumer<KafkaLog> = base(config)
        // Never joins a group (the partition is assigned) and never
        // commits; librdkafka wants a group id all the same.
        .set("group.id", format!("{}-reader", config.writer_id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Records are small and arrive rarely after the replay: do not let
        // the broker hold a fetch open long.
        .set("fetch.wait.max.ms", "50")
        .create_with_context(KafkaLog {
            role: "registry log",
        })
        .context("creating the schemas topic consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&config.topic, 0, Offset::Beginning)
        .context("assigning the schemas topic")?;
    consumer
        .assign(&assignment)
        .context("assigning the schemas topic")?;
    let topic = config.topic.clone();
    std::thread::Builder::new()
        .name("millrace-registry-reader".into())
        .spawn(move || {
            read_loop(
                &consumer, &topic, &store, &health, &metrics, &stop, &progress,
            )
        })
        .context("starting the reader thread")
}

fn read_loop(
    consumer: &BaseConsumer<KafkaLog>,
    topic: &str,
    store: &RwLock<Store>,
    health: &Health,
    metrics: &RegistryMetrics,
    stop: &AtomicBool,
    progress: &watch::Sender<Progress>,
) {
    health.set_not_ready(format!("replaying {topic}"));
    let started = Instant::now();
    let mut replayed = false;
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        health.turn();
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let offset = message.offset();
                match Record::decode(message.key(), message.payload()) {
                    Ok(record) => {
                        let applied = store
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .apply(record);
                        match applied {
                            Applied::Changed => metrics.records_read.inc(),
                            Applied::Skipped(why) => {
                                metrics.records_skipped.inc();
                                warn!(offset, %why, "skipped a record of the schemas topic");
                            }
                        }
                    }
                    Err(e) => {
                        metrics.records_skipped.inc();
                        warn!(offset, error = %e, "skipped an undecodable record of the schemas topic");
                    }
                }
                progress.send_modify(|p| {
                    p.next_offset = offset + 1;
                    p.last_record_at = Some(Instant::now());
                });
                if replayed {
                    update_gauges(store, metrics);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) if !replayed => {
                replayed = true;
                progress.send_modify(|p| p.replayed = true);
                update_gauges(store, metrics);
                let next = progress.borrow().next_offset;
                info!(
                    %topic,
                    records = metrics.records_read.get(),
                    next_offset = next,
                    elapsed = ?started.elapsed(),
                    "replayed the schemas topic; ready"
                );
                health.set_ready();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            // librdkafka retries on its own; log at most every 10 s.
            Some(Err(e)) if last_error.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) => {
                warn!(error = %e, %topic, "reading the schemas topic");
                last_error = Some(Instant::now());
            }
            Some(Err(_)) => {}
        }
    }
    health.set_not_ready("stopping");
    debug!("reader stopped");
}

fn update_gauges(store: &RwLock<Store>, metrics: &RegistryMetrics) {
    let store = store.read().unwrap_or_else(|p| p.into_inner());
    let (subjects, schemas) = store.counts();
    metrics.subjects.set(subjects as i64);
    metrics.schemas.set(schemas as i64);
    metrics.max_id.set(i64::from(store.max_id()));
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The writer role was lost (fenced by another instance) or the
    /// transaction aborted: take the role again, re-read, re-decide.
    #[error("{0}")]
    Retry(String),
}

/// Remembers the offset of the last record delivered, which the writer
/// waits for the reader to reach.
#[derive(Default)]
pub struct Deliveries {
    last_offset: Mutex<Option<i64>>,
    failure: Mutex<Option<String>>,
}

impl Deliveries {
    fn take(&self) -> (Option<i64>, Option<String>) {
        (
            self.last_offset
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        )
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut last = self.last_offset.lock().unwrap_or_else(|p| p.into_inner());
                *last = Some(last.map_or(m.offset(), |o| o.max(m.offset())));
            }
            Err((e, _)) => {
                self.failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The transactional producer of one instance. Blocking: call it from a
/// blocking thread.
pub struct Writer {
    client: ClientConfig,
    topic: String,
    timeout: Duration,
    producer: Option<BaseProducer<Deliveries>>,
}

impl Writer {
    pub fn new(config: &RegistryConfig) -> Writer {
        let mut client = base(config);
        client
            .set("transactional.id", config.writer_id())
            .set("enable.idempotence", "true")
            // An instance that dies mid-write blocks read_committed readers
            // of the topic until its transaction times out or the next
            // writer fences it: keep that short.
            .set("transaction.timeout.ms", "10000")
            // Taking the role right after another instance committed meets
            // CONCURRENT_TRANSACTIONS while the coordinator finishes that
            // commit; librdkafka retries, by default after 100 ms growing
            // to 1 s. Writes are small and rare: retry sooner.
            .set("retry.backoff.ms", "20")
            .set("retry.backoff.max.ms", "250");
        Writer {
            client,
            topic: config.topic.clone(),
            timeout: config.write_timeout,
            producer: None,
        }
    }

    /// Whether this instance holds the writer role (as far as it knows:
    /// being fenced shows only at the next commit).
    pub fn has_role(&self) -> bool {
        self.producer.is_some()
    }

    /// Takes the writer role: a new producer registers the shared
    /// transactional id, which fences the previous writer and aborts its
    /// open transaction.
    pub fn acquire(&mut self) -> Result<(), WriteError> {
        self.producer = None;
        let producer: BaseProducer<Deliveries> = self
            .client
            .create_with_context(Deliveries::default())
            .map_err(|e| WriteError::Retry(format!("creating the producer: {e}")))?;
        producer
            .init_transactions(self.timeout)
            .map_err(|e| WriteError::Retry(format!("init_transactions: {e}")))?;
        self.producer = Some(producer);
        Ok(())
    }

    /// Gives the role up (after a failure): the next write acquires it anew.
    pub fn reset(&mut self) {
        self.producer = None;
    }

    /// Commits records in one transaction and returns the offset of the
    /// last one.
    pub fn commit(&mut self, records: &[Record]) -> Result<i64, WriteError> {
        let producer = self
            .producer
            .as_ref()
            .ok_or_else(|| WriteError::Retry("not the writer".into()))?;
        producer.context().take();
        let result = self.try_commit(producer, records);
        if let Err(e) = &result {
            warn!(error = %e, "write to the schemas topic failed; giving up the writer role");
            if let Err(abort) = producer.abort_transaction(self.timeout) {
                debug!(error = %abort, "abort after a failed write");
            }
            self.producer = None;
        }
        result
    }

    fn try_commit(
        &self,
        producer: &BaseProducer<Deliveries>,
        records: &[Record],
    ) -> Result<i64, WriteError> {
        let retry = |what: &str, e: KafkaError| WriteError::Retry(format!("{what}: {e}"));
        producer
            .begin_transaction()
            .map_err(|e| retry("begin_transaction", e))?;
        for record in records {
            let (key, value) = record.encode();
            let mut message: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topic).partition(0).key(&key);
            if let Some(value) = &value {
                message = message.payload(value);
            }
            producer
                .send(message)
                .map_err(|(e, _)| retry("produce", e))?;
        }
        producer
            .commit_transaction(self.timeout)
            .map_err(|e| retry("commit_transaction", e))?;
        match producer.context().take() {
            (_, Some(failure)) => Err(WriteError::Retry(format!("delivery: {failure}"))),
            (Some(offset), None) => Ok(offset),
            (None, None) => Err(WriteError::Retry(
                "the transaction committed but no delivery was reported".into(),
            )),
        }
    }
}

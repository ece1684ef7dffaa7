//! The broker's limit with librdkafka, Millrace's client: a plain consumer
//! and producer copying every record (key, value, timestamp) to the same
//! partition of the output, with no processing. Transactional, it does what
//! an exactly-once processor must at least do: reads committed records
//! only, produces inside a transaction and commits the consumed offsets in
//! it every `commit`. Otherwise it flushes the producer and then commits
//! the offsets every `commit` (at-least-once). Client settings are
//! librdkafka's defaults. Runs as `millrace-bench passthrough` in its own
//! process, so that its CPU and memory are measured like the systems'.
//!
//! One member per group and no rebalances after the first assignment: this
//! is a benchmark loop, not a general copier.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Set by SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Copies `input` to `output` until SIGTERM, then commits and returns.
pub fn run(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    transactional: bool,
    commit: Duration,
) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_term),
        )
    }
    .context("installing the SIGTERM handler")?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The two settings Millrace changes from librdkafka's defaults for
        // throughput (see `await_deliveries` below for the other): without
        // them this loop would measure those defaults, not the broker.
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "isolation.level",
            if transactional {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .context("creating the consumer")?;
    let mut producer_config = ClientConfig::new();
    producer_config.set("bootstrap.servers", bootstrap);
    if transactional {
        producer_config.set("transactional.id", format!("{group}-txn"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config.create().context("creating the producer")?;
    consumer.subscribe(&[input])?;
    let timeout = Duration::from_secs(30);
    if transactional {
        producer.init_transactions(timeout)?;
        producer.begin_transaction()?;
    }
    let mut pending: HashMap<i32, i64> = HashMap::new();
    let mut last_commit = Instant::now();
    println!("state RUNNING");
    while !STOP.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Err(e).context("consuming"),
            Some(Ok(m)) => {
                let mut record = BaseRecord::<[u8], [u8]>::to(output).partition(m.partition());
                if let Some(key) = m.key() {
                    record = record.key(key);
                }
                if let Some(value) = m.payload() {
                    record = record.payload(value);
                }
                if let Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) = m.timestamp() {
                    record = record.timestamp(t);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(e).context("producing"),
                    }
                }
                pending.insert(m.partition(), m.offset() + 1);
            }
        }
        if last_commit.elapsed() >= commit {
            commit_now(&consumer, &producer, input, &mut pending, transactional)?;
            last_commit = Instant::now();
        }
    }
    commit_now(&consumer, &producer, input, &mut pending, transactional)?;
    if transactional {
        producer.abort_transaction(timeout)?;
    }
    Ok(())
}

fn commit_now(
    consumer: &BaseConsumer,
    producer: &ThreadedProducer<DefaultProducerContext>,
    input: &str,
    pending: &mut HashMap<i32, i64>,
    transactional: bool,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(30);
    // rdkafka's `flush` (also called by `commit_transaction`) polls in
    // 100 ms slices that never end early; wait for the deliveries here, in
    // 1 ms steps, as Millrace does, so that flush finds nothing to wait for.
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        anyhow::ensure!(Instant::now() < deadline, "deliveries did not complete");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in pending.drain() {
        offsets.add_partition_offset(input, partition, Offset::Offset(next))?;
    }
    if transactional {
        if offsets.count() > 0 {
            let group = consumer
                .group_metadata()
                .context("the consumer has no group metadata")?;
            producer.send_offsets_to_transaction(&offsets, &group, timeout)?;
        }
        producer.commit_transaction(timeout)?;
        producer.begin_transaction()?;
    } else if offsets.count() > 0 {
        producer.flush(timeout)?;
        consumer.commit(&offsets, CommitMode::Sync)?;
    }
    Ok(())
}

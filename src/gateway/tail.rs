//! The live tail: one `read_committed` consumer per bridged topic per
//! gateway, whose records are shared by every live subscriber of the topic.
//!
//! The tail runs on its own thread and publishes each record to a
//! broadcast ring (`subscribers.live_buffer` records, shared). Alongside it
//! keeps the tail's position — the next offset it will publish, per
//! partition — updated under the same lock as the publish, so that a
//! subscriber can [`attach`](TopicHub::attach) atomically: it gets a
//! receiver that will see exactly the records at or after the returned
//! position. Everything below that position has been decided (committed or
//! aborted) and can be read from Kafka by the subscriber's own history
//! reader; that is what makes the history-to-live handover exact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::config::{GatewayConfig, TopicConfig};
use super::decode::Decoder;
use super::kafka::{self, Meta};
use super::latest::Latest;
use super::metrics::GatewayMetrics;
use super::outbox::Policy;
use super::position::Position;
use super::record::Record;
use crate::logging::KafkaLog;

/// One bridged topic: its live tail's output and state.
pub struct TopicHub {
    pub name: String,
    pub decoder: Decoder,
    pub partitions: usize,
    /// Default policy for its subscribers.
    pub policy: Policy,
    sender: broadcast::Sender<Arc<Record>>,
    /// The tail's next offset per partition; `None` until the tail started.
    position: Mutex<Option<Position>>,
    started: tokio::sync::watch::Sender<bool>,
    latest: RwLock<Latest>,
}

impl TopicHub {
    pub fn new(
        topic: &TopicConfig,
        decoder: Decoder,
        partitions: usize,
        default_policy: Policy,
        live_buffer: usize,
        latest: Latest,
    ) -> Arc<TopicHub> {
        let (sender, _) = broadcast::channel(live_buffer.max(1));
        Arc::new(TopicHub {
            name: topic.topic.clone(),
            decoder,
            partitions,
            policy: topic.policy.unwrap_or(default_policy),
            sender,
            position: Mutex::new(None),
            started: tokio::sync::watch::channel(false).0,
            latest: RwLock::new(latest),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Position>> {
        self.position.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the tail has started (its position is known).
    pub fn is_started(&self) -> bool {
        self.lock().is_some()
    }

    /// Waits until the tail has started, up to `within`.
    pub async fn wait_started(&self, within: Duration) -> bool {
        let mut rx = self.started.subscribe();
        tokio::time::timeout(within, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The tail's position now.
    pub fn position(&self) -> Option<Position> {
        self.lock().clone()
    }

    /// A receiver of every record the tail publishes from now on, and the
    /// tail's position at this instant: the receiver's first record of each
    /// partition is at or after it. `None` before the tail started.
    pub fn attach(&self) -> Option<(broadcast::Receiver<Arc<Record>>, Position)> {
        let guard = self.lock();
        let position = guard.clone()?;
        Some((self.sender.subscribe(), position))
    }

    /// Live subscribers attached to the ring.
    pub fn receivers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// The latest record per key, filtered.
    pub fn latest(&self, keep: impl Fn(&Record) -> bool) -> Vec<Arc<Record>> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .records(keep)
    }

    fn start(&self, at: Position) {
        *self.lock() = Some(at);
        self.started.send_replace(true);
    }

    fn publish(&self, record: Arc<Record>) {
        self.latest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .update(&record);
        let mut guard = self.lock();
        if let Some(position) = guard.as_mut() {
            position.advance(record.partition, record.offset);
        }
        // No receivers is fine: nobody is live right now.
        let _ = self.sender.send(record);
    }

    /// The tail's consumer passed transaction markers or aborted records up
    /// to `at`: nothing below it will be published.
    fn raise(&self, partition: i32, at: i64) {
        if let Some(position) = self.lock().as_mut() {
            position.raise(partition, at);
        }
    }
}

/// Starts a topic's tail thread. It runs until `stop` is set.
pub fn spawn(
    config: &GatewayConfig,
    topic: &TopicConfig,
    hub: Arc<TopicHub>,
    meta: Arc<Meta>,
    metrics: Arc<GatewayMetrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let client = kafka::consumer_config(config, "tail");
    let warm_up = topic.warm_up;
    std::thread::Builder::new()
        .name(format!("tail-{}", hub.name))
        .spawn(move || {
            let mut backoff = Duration::from_millis(200);
            while !stop.load(Ordering::Relaxed) {
                match run(&client, &hub, &meta, &metrics, &stop, warm_up) {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(topic = %hub.name, error = %e, retry_in = ?backoff, "live tail cannot start");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
}

fn run(
    client: &rdkafka::ClientConfig,
    hub: &TopicHub,
    meta: &Meta,
    metrics: &GatewayMetrics,
    stop: &AtomicBool,
    warm_up: Option<Duration>,
) -> Result<(), String> {
    let consumer: BaseConsumer<KafkaLog> = client
        .create_with_context(KafkaLog {
            role: "gateway tail",
        })
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let start = start_position(hub, meta, warm_up)?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in start.offsets().iter().enumerate() {
        tpl.add_partition_offset(&hub.name, p as i32, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    info!(topic = %hub.name, position = %start, "live tail started");
    hub.start(start);
    let records = metrics.tail_records.with_label_values(&[&hub.name]);
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                records.inc();
                hub.publish(Arc::new(Record::from_message(&message, &hub.decoder)));
                last_error = None;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(at) = consumer
                    .position()
                    .ok()
                    .and_then(|l| kafka::position_in(&l, &hub.name, p))
                {
                    hub.raise(p, at);
                }
            }
            Some(Err(e)) => {
                // librdkafka retries on its own; log each new error once.
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(topic = %hub.name, error = %text, "live tail consumer error");
                    last_error = Some(text);
                }
            }
        }
    }
    Ok(())
}

/// Where the tail starts: the last stable offset of every partition, or
/// `warm_up` ago. Never above the last stable offset, so that every record
/// below the start is decided and a subscriber's history reader can read
/// all of them.
fn start_position(
    hub: &TopicHub,
    meta: &Meta,
    warm_up: Option<Duration>,
) -> Result<Position, String> {
    let marks = meta.watermarks(&hub.name, hub.partitions)?;
    let mut next: Vec<i64> = marks.iter().map(|(_, high)| *high).collect();
    if let Some(back) = warm_up {
        let since = SystemTime::now()
            .checked_sub(back)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let found = meta.offsets_for_time(&hub.name, hub.partitions, since)?;
        for (slot, offset) in next.iter_mut().zip(found) {
            if let Some(o) = offset {
                *slot = (*slot).min(o.max(0));
            }
        }
    }
    Ok(Position::new(next))
}

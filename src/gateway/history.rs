//! A subscriber's own reader of a topic's past: a `read_committed` consumer
//! assigned every partition at the subscriber's position.
//!
//! Besides records it tracks how far it has read: per partition, an offset
//! below which every record has been returned. That moves with each record
//! and, at the end of a partition, to the consumer's position — which is
//! past transaction markers and aborted records, which are never returned.
//! The subscriber compares it with the live tail's position to know when it
//! may switch to the live tail (see [`super::pump`]).
//!
//! Each reader is a Kafka client with its own threads, so their number is
//! bounded (`limits.max_history_readers`): the permit is held for the
//! reader's life.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::decode::Decoder;
use super::kafka;
use super::position::Position;
use super::record::Record;
use crate::logging::KafkaLog;

/// What a read returned.
pub enum Read {
    Record(Arc<Record>),
    /// A partition reached its end; [`HistoryReader::read_to`] moved.
    End(i32),
}

pub struct HistoryReader {
    consumer: StreamConsumer<KafkaLog>,
    topic: String,
    decoder: Decoder,
    read_to: Position,
    _permit: OwnedSemaphorePermit,
    _gauge: GaugeGuard,
}

/// Keeps the history-readers gauge right however the reader ends.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl HistoryReader {
    /// Opens a reader at `from` (every partition of the topic).
    pub fn open(
        client: &ClientConfig,
        topic: &str,
        decoder: Decoder,
        from: &Position,
        permit: OwnedSemaphorePermit,
        gauge: prometheus::IntGauge,
    ) -> Result<HistoryReader, String> {
        let consumer: StreamConsumer<KafkaLog> = client
            .create_with_context(KafkaLog {
                role: "gateway history",
            })
            .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in from.offsets().iter().enumerate() {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(*offset))
                .map_err(|e| e.to_string())?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| format!("cannot assign `{topic}`: {e}"))?;
        gauge.inc();
        Ok(HistoryReader {
            consumer,
            topic: topic.to_string(),
            decoder,
            read_to: from.clone(),
            _permit: permit,
            _gauge: GaugeGuard(gauge),
        })
    }

    /// Per partition, the offset below which everything has been read.
    pub fn read_to(&self) -> &Position {
        &self.read_to
    }

    /// The next record, or notice of a partition end.
    pub async fn next(&mut self) -> Result<Read, String> {
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    let record = Record::from_message(&message, &self.decoder);
                    self.read_to.advance(record.partition, record.offset);
                    return Ok(Read::Record(Arc::new(record)));
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(at) = self
                        .consumer
                        .position()
                        .ok()
                        .and_then(|l| kafka::position_in(&l, &self.topic, p))
                    {
                        self.read_to.raise(p, at);
                    }
                    return Ok(Read::End(p));
                }
                Err(e) => {
                    // Transient (a broker restart, a leader move): librdkafka
                    // retries by itself.
                    debug!(topic = %self.topic, error = %e, "history reader error");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

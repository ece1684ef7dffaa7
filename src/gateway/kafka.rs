//! The gateway's Kafka clients: settings, and the metadata questions asked
//! when a subscription starts (partitions, watermarks, offsets for a time).
//!
//! Every consumer reads with `isolation.level=read_committed`: subscribers
//! see only committed records, i.e. exactly-once pipeline output. The
//! consumers never join a group or commit offsets: a subscriber's position
//! lives in its position token, not in Kafka.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::config::GatewayConfig;
use crate::logging::KafkaLog;

/// Time allowed for one metadata request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a gateway consumer. `role` names it in `client.id` (`tail`,
/// `history`, `meta`) so broker logs tell them apart.
pub fn consumer_config(config: &GatewayConfig, role: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap)
        .set(
            "client.id",
            format!("millrace-gateway-{}-{role}", config.gateway),
        )
        // Required by librdkafka for a consumer; no group is ever joined
        // (partitions are assigned, never subscribed) and nothing commits.
        .set("group.id", format!("millrace-gateway-{}", config.gateway))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events tell a reader it has caught up.
        .set("enable.partition.eof", "true")
        // A position whose records were deleted by retention continues at
        // the oldest record left.
        .set("auto.offset.reset", "earliest")
        // librdkafka prefetches up to 64 MiB per client by default; with a
        // history reader per catching-up subscriber that adds up, so bound
        // it (properties may override).
        .set(
            "queued.max.messages.kbytes",
            if role == "history" { "4096" } else { "32768" },
        );
    for (name, value) in &config.kafka.properties {
        client.set(name, value);
    }
    client
}

/// A consumer used only for metadata. Its calls block: run them with
/// `spawn_blocking`.
pub struct Meta {
    consumer: BaseConsumer<KafkaLog>,
}

impl Meta {
    pub fn new(config: &GatewayConfig) -> Result<Meta, String> {
        let consumer = consumer_config(config, "meta")
            .create_with_context(KafkaLog {
                role: "gateway metadata",
            })
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        Ok(Meta { consumer })
    }

    /// The topic's partition count; an error if the topic does not exist.
    pub fn partitions(&self, topic: &str) -> Result<usize, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("metadata of `{topic}`: {e}"))?;
        let Some(t) = metadata.topics().first() else {
            return Err(format!("topic `{topic}` does not exist"));
        };
        if let Some(e) = t.error() {
            return Err(format!("topic `{topic}`: {e:?}"));
        }
        if t.partitions().is_empty() {
            return Err(format!("topic `{topic}` does not exist"));
        }
        Ok(t.partitions().len())
    }

    /// `(low, high)` per partition. With `read_committed`, `high` is the last
    /// stable offset: everything below it is committed or aborted.
    pub fn watermarks(&self, topic: &str, partitions: usize) -> Result<Vec<(i64, i64)>, String> {
        (0..partitions as i32)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .map_err(|e| format!("offsets of `{topic}` partition {p}: {e}"))
            })
            .collect()
    }

    /// The first offset at or after `timestamp_ms` per partition; `None`
    /// where no record is that recent.
    pub fn offsets_for_time(
        &self,
        topic: &str,
        partitions: usize,
        timestamp_ms: i64,
    ) -> Result<Vec<Option<i64>>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Offset(timestamp_ms))
                .map_err(|e| format!("offsets of `{topic}` at {timestamp_ms}: {e}"))?;
        }
        let found = self
            .consumer
            .offsets_for_times(tpl, TIMEOUT)
            .map_err(|e| format!("offsets of `{topic}` at {timestamp_ms}: {e}"))?;
        let mut out = vec![None; partitions];
        for element in found.elements() {
            if let (Ok(p), Offset::Offset(o)) =
                (usize::try_from(element.partition()), element.offset())
                && let Some(slot) = out.get_mut(p)
            {
                *slot = Some(o);
            }
        }
        Ok(out)
    }
}

/// A consumer's application position in one partition (past the last
/// record returned and past transaction markers handled after it), if it
/// has one. `positions` is what `Consumer::position` returned.
pub fn position_in(positions: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

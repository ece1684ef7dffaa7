//! A `read_committed` reader that follows a topic from its beginning in a
//! background thread and notes when each record became visible to it. The
//! latency and restart runs time their outputs with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::now_ms;
use crate::{bootstrap, unique};

/// One record as the reader saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Wall-clock time (ms since the epoch) the reader received it.
    pub at_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// The background reader; stopped (and its thread joined) on drop.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Arrival>>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Watcher {
    /// Starts reading every partition of `topic` (which must exist) from
    /// its beginning.
    pub fn start(topic: &str) -> anyhow::Result<Watcher> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("watcher"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            // Answer fetches quickly so the reader adds little to the
            // latencies it measures.
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the output reader")?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            bail!("topic {topic} has no partitions");
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen, topic) = (stop.clone(), seen.clone(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(50)) {
                        None => {}
                        Some(Ok(m)) => {
                            let arrival = Arrival {
                                at_ms: now_ms(),
                                key: m.key().map(<[u8]>::to_vec),
                                value: m.payload().unwrap_or_default().to_vec(),
                            };
                            seen.lock()
                                .map_err(|_| anyhow::anyhow!("reader state poisoned"))?
                                .push(arrival);
                        }
                        Some(Err(e)) => bail!("reading {topic}: {e}"),
                    }
                }
                Ok(())
            })
        };
        Ok(Watcher {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// How many records the reader has seen so far.
    pub fn count(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }

    /// Stops the reader and returns everything it saw, or its error.
    pub fn finish(mut self) -> anyhow::Result<Vec<Arrival>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
        }
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("reader state poisoned"))?;
        Ok(std::mem::take(&mut *seen))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

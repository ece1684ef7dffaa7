//! Tables first: when a task is assigned, its stream partitions wait until
//! its table partitions have been read up to the end they had at that
//! moment.
//!
//! Without this, a fresh start (or a full restore) would poll stream and
//! table records in whatever order the fetches return them, and stream
//! records would be joined against a half-loaded table. Kafka Streams
//! orders a task's records by timestamp across its partitions for the same
//! reason; reading the table up to its end first is simpler and gives the
//! answer users expect of a lookup table: the latest row as of the start.
//! Later table updates interleave with stream records in arrival order.
//!
//! Stream partitions of a waiting task are paused. A record already fetched
//! before the pause is not processed: the loop seeks its partition back to
//! it, so it is read again once the task is released.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

/// How long assignment may wait for the broker's end offsets.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The tasks that wait for their tables.
#[derive(Debug)]
pub struct TableGate {
    tables: HashSet<String>,
    streams: Vec<String>,
    max_wait: Duration,
    waiting: HashMap<i32, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    /// Table topic to the end offset it must be read up to.
    ends: HashMap<String, i64>,
    since: Instant,
}

impl TableGate {
    /// A gate for the given table topics; `streams` are the other sources.
    /// A task waits at most `max_wait` (a table topic that cannot be read
    /// to its end, for example behind a transaction left open, must not
    /// stop the pipeline for good).
    pub fn new(tables: Vec<String>, streams: Vec<String>, max_wait: Duration) -> Self {
        TableGate {
            tables: tables.into_iter().collect(),
            streams,
            max_wait,
            waiting: HashMap::new(),
        }
    }

    /// Whether the pipeline has tables at all.
    pub fn is_active(&self) -> bool {
        !self.tables.is_empty()
    }

    /// Whether a task is waiting for its tables.
    pub fn is_waiting(&self, task: i32) -> bool {
        self.waiting.contains_key(&task)
    }

    /// After partitions were assigned (with their start offsets resolved):
    /// finds the tasks with table records left to read and pauses their
    /// stream partitions.
    pub fn assigned<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &TopicPartitionList,
    ) {
        if !self.is_active() {
            return;
        }
        let mut gated = Vec::new();
        for element in assigned.elements() {
            let (topic, task) = (element.topic(), element.partition());
            if !self.tables.contains(topic) {
                continue;
            }
            let (low, high) = match consumer.fetch_watermarks(topic, task, LOOKUP_TIMEOUT) {
                Ok(marks) => marks,
                Err(e) => {
                    warn!(topic, partition = task, error = %e,
                        "cannot read the table's end offset; its task starts without waiting");
                    continue;
                }
            };
            let start = match element.offset() {
                Offset::Offset(n) => n,
                Offset::End => high,
                _ => low,
            };
            if start < high {
                let waiting = self.waiting.entry(task).or_insert_with(|| Waiting {
                    ends: HashMap::new(),
                    since: Instant::now(),
                });
                waiting.ends.insert(topic.to_string(), high);
                gated.push(task);
            }
        }
        gated.sort_unstable();
        gated.dedup();
        if gated.is_empty() {
            return;
        }
        let pause = self.stream_partitions(&gated);
        if let Err(e) = consumer.pause(&pause) {
            // Records read meanwhile are sought back by the loop; pausing
            // only saves the fetches.
            warn!(error = %e, "cannot pause stream partitions while tables load");
        }
        info!(tasks = ?gated, "tasks wait until their tables are read to the end");
    }

    /// Forgets revoked tasks.
    pub fn revoked(&mut self, revoked: &TopicPartitionList) {
        for element in revoked.elements() {
            self.waiting.remove(&element.partition());
        }
    }

    /// Whether a record of `topic` in `task` must wait (the caller seeks
    /// its partition back to it).
    pub fn holds(&self, topic: &str, task: i32) -> bool {
        !self.tables.contains(topic) && self.waiting.contains_key(&task)
    }

    /// Notes that the table record at `offset` was processed.
    pub fn read<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        task: i32,
        offset: i64,
    ) {
        let Some(waiting) = self.waiting.get_mut(&task) else {
            return;
        };
        if waiting
            .ends
            .get(topic)
            .is_some_and(|end| offset + 1 >= *end)
        {
            waiting.ends.remove(topic);
        }
        if waiting.ends.is_empty() {
            self.release(consumer, task, "tables read");
        }
    }

    /// Releases tasks whose table partitions are at their end by position
    /// (the last offsets may be transaction markers, which are never
    /// handed to the loop) or that waited too long.
    pub fn check<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.waiting.is_empty() {
            return;
        }
        let positions: HashMap<(String, i32), i64> = consumer
            .position()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(n) => Some(((e.topic().to_string(), e.partition()), n)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut done = Vec::new();
        for (task, waiting) in &mut self.waiting {
            waiting.ends.retain(|topic, end| {
                positions
                    .get(&(topic.clone(), *task))
                    .is_none_or(|position| position < end)
            });
            if waiting.ends.is_empty() {
                done.push((*task, "tables read"));
            } else if waiting.since.elapsed() >= self.max_wait {
                done.push((
                    *task,
                    "waited too long for the tables; joining against what is loaded",
                ));
            }
        }
        for (task, why) in done {
            self.release(consumer, task, why);
        }
    }

    fn release<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, task: i32, why: &str) {
        let Some(waiting) = self.waiting.remove(&task) else {
            return;
        };
        let resume = self.stream_partitions(&[task]);
        if let Err(e) = consumer.resume(&resume) {
            warn!(task, error = %e, "cannot resume stream partitions");
        }
        let waited = waiting.since.elapsed();
        if waiting.ends.is_empty() {
            info!(task, ?waited, "{why}; the task's streams start");
        } else {
            warn!(task, ?waited, unread = ?waiting.ends, "{why}");
        }
    }

    fn stream_partitions(&self, tasks: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for task in tasks {
            for topic in &self.streams {
                tpl.add_partition(topic, *task);
            }
        }
        tpl
    }
}

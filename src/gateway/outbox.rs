//! A subscriber's buffer: records on their way to one client, bounded in
//! count and bytes, with the policy for a client that falls behind.
//!
//! The subscriber's reader (history, then live tail) pushes; the transport
//! (SSE or WebSocket) pops as fast as the client reads. When a push leaves
//! the buffer over a bound, the policy decides:
//!
//! - `disconnect` (default): the buffer is emptied and the transport closes
//!   with a reason. Resume is exact, so the client reconnects with its last
//!   position and catches up from Kafka without losing anything.
//! - `skip`: the oldest records are dropped until the buffer fits, and the
//!   client gets a `lagged` message naming the skipped offsets per partition
//!   before the records that follow.
//! - `conflate`: a record whose key already waits in the buffer replaces the
//!   waiting one (it moves to the back, so per-partition order holds): the
//!   client gets the newest value of every key. Records without a key are
//!   never conflated. If the buffer still overflows (more distinct keys
//!   than it holds), the subscriber is disconnected as above.
//!
//! Records are shared (`Arc`), so a buffer costs its bookkeeping plus the
//! records only it still holds; slots emptied by conflation are compacted
//! away, so the bookkeeping too is bounded by the buffer's size. The pure
//! state machine is [`Buffer`]; [`Outbox`] wraps it for the two tasks that
//! share it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::Notify;

use super::record::Record;

/// What to do with a subscriber that falls behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Disconnect,
    Skip,
    Conflate,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, String> {
        match text {
            "disconnect" => Ok(Policy::Disconnect),
            "skip" => Ok(Policy::Skip),
            "conflate" => Ok(Policy::Conflate),
            other => Err(format!(
                "policy `{other}` is not `disconnect`, `skip` or `conflate`"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Disconnect => "disconnect",
            Policy::Skip => "skip",
            Policy::Conflate => "conflate",
        })
    }
}

/// Why a subscription ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client fell behind under the `disconnect` policy.
    Lagged(String),
    /// The gateway is stopping.
    Shutdown,
    /// Kafka failed for this subscription.
    Error(String),
}

impl CloseReason {
    /// Short label for metrics and messages.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Lagged(_) => "lagged",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error(_) => "error",
        }
    }

    /// A sentence for the client.
    pub fn detail(&self) -> String {
        match self {
            CloseReason::Lagged(why) => why.clone(),
            CloseReason::Shutdown => {
                "the gateway is shutting down; reconnect with your last position".into()
            }
            CloseReason::Error(why) => why.clone(),
        }
    }
}

/// A record with the subscriber's position after it.
#[derive(Debug, Clone)]
pub struct Item {
    pub record: Arc<Record>,
    pub position: String,
    /// Came from the live tail (not history): its age at send time is a
    /// delivery latency.
    pub live: bool,
}

impl Item {
    fn size(&self) -> usize {
        self.record.size() + self.position.len()
    }
}

/// Offsets skipped in one partition (`skip` policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub partition: i32,
    /// Lowest and highest skipped offset.
    pub first: i64,
    pub last: i64,
    /// Records skipped (other offsets in the range were not for this
    /// subscriber or were never records).
    pub count: u64,
}

/// What the transport sends next.
#[derive(Debug, Clone)]
pub enum Out {
    Record(Item),
    /// Records were skipped; `position` is the position after the last of
    /// them.
    Lagged {
        skipped: Vec<Skipped>,
        position: String,
    },
    Close(CloseReason),
}

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced a waiting record with the same key (`conflate`).
    Conflated,
    /// Queued, after dropping this many older records (`skip`).
    Skipped(u64),
    /// The subscription is closed (now or before); stop reading for it.
    Closed,
}

/// Emptied slots tolerated beyond the live records before the queue is
/// compacted (see [`Buffer::compact`]).
const COMPACT_SLACK: usize = 32;

/// The buffer's state machine (no locking, no waking).
#[derive(Debug)]
pub struct Buffer {
    policy: Policy,
    max_events: usize,
    max_bytes: usize,
    /// `None` marks a slot emptied by conflation.
    queue: VecDeque<Option<Item>>,
    /// Sequence number of `queue[0]`.
    head_seq: u64,
    events: usize,
    bytes: usize,
    /// Key -> sequence number of its waiting record (`conflate`).
    waiting: HashMap<Vec<u8>, u64>,
    skipped: BTreeMap<i32, Skipped>,
    skipped_position: Option<String>,
    close: Option<CloseReason>,
}

impl Buffer {
    pub fn new(policy: Policy, max_events: usize, max_bytes: usize) -> Buffer {
        Buffer {
            policy,
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            queue: VecDeque::new(),
            head_seq: 0,
            events: 0,
            bytes: 0,
            waiting: HashMap::new(),
            skipped: BTreeMap::new(),
            skipped_position: None,
            close: None,
        }
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Slots in the queue, including those emptied by conflation: what the
    /// queue costs in memory besides the records.
    pub fn slots(&self) -> usize {
        self.queue.len()
    }

    pub fn is_closed(&self) -> bool {
        self.close.is_some()
    }

    /// Why the subscription was closed, if it was.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close.as_ref()
    }

    /// Whether `item` fits without overflowing (an empty buffer takes any
    /// record, however large).
    pub fn has_room_for(&self, item: &Item) -> bool {
        self.events == 0
            || (self.events < self.max_events && self.bytes + item.size() <= self.max_bytes)
    }

    /// Adds a record, applying the policy if the buffer overflows.
    pub fn push(&mut self, item: Item) -> Pushed {
        if self.close.is_some() {
            return Pushed::Closed;
        }
        let mut outcome = Pushed::Queued;
        if self.policy == Policy::Conflate
            && let Some(key) = item.record.key.as_deref()
            && let Some(seq) = self.waiting.get(key).copied()
        {
            self.remove(seq);
            outcome = Pushed::Conflated;
        }
        let seq = self.head_seq + self.queue.len() as u64;
        if self.policy == Policy::Conflate
            && let Some(key) = &item.record.key
        {
            self.waiting.insert(key.clone(), seq);
        }
        self.events += 1;
        self.bytes += item.size();
        self.queue.push_back(Some(item));
        if self.queue.len() > 2 * self.events + COMPACT_SLACK {
            self.compact();
        }

        let mut dropped = 0;
        while self.events > self.max_events || self.bytes > self.max_bytes {
            match self.policy {
                Policy::Skip => {
                    let Some(old) = self.pop_item() else { break };
                    let entry = self.skipped.entry(old.record.partition).or_insert(Skipped {
                        partition: old.record.partition,
                        first: old.record.offset,
                        last: old.record.offset,
                        count: 0,
                    });
                    entry.first = entry.first.min(old.record.offset);
                    entry.last = entry.last.max(old.record.offset);
                    entry.count += 1;
                    self.skipped_position = Some(old.position);
                    dropped += 1;
                }
                Policy::Disconnect | Policy::Conflate => {
                    let why = format!(
                        "the client fell behind: more than {} records or {} bytes waiting \
                         (policy {}); reconnect with your last position to catch up",
                        self.max_events, self.max_bytes, self.policy
                    );
                    self.clear();
                    self.close = Some(CloseReason::Lagged(why));
                    return Pushed::Closed;
                }
            }
        }
        if dropped > 0 {
            Pushed::Skipped(dropped)
        } else {
            outcome
        }
    }

    /// Ends the subscription: what waits is dropped (the client resumes from
    /// the last position it received), and the next pop is the close.
    pub fn close(&mut self, reason: CloseReason) {
        if self.close.is_none() {
            self.clear();
            self.close = Some(reason);
        }
    }

    /// The next thing to send, if any.
    pub fn pop(&mut self) -> Option<Out> {
        if !self.skipped.is_empty() {
            let skipped = std::mem::take(&mut self.skipped).into_values().collect();
            let position = self.skipped_position.take().unwrap_or_default();
            return Some(Out::Lagged { skipped, position });
        }
        if let Some(item) = self.pop_item() {
            return Some(Out::Record(item));
        }
        self.close.clone().map(Out::Close)
    }

    fn pop_item(&mut self) -> Option<Item> {
        while let Some(slot) = self.queue.pop_front() {
            let seq = self.head_seq;
            self.head_seq += 1;
            if let Some(item) = slot {
                self.events -= 1;
                self.bytes -= item.size();
                if let Some(key) = item.record.key.as_deref()
                    && self.waiting.get(key) == Some(&seq)
                {
                    self.waiting.remove(key);
                }
                return Some(item);
            }
        }
        None
    }

    fn remove(&mut self, seq: u64) {
        let Some(index) = seq.checked_sub(self.head_seq) else {
            return;
        };
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.queue.get_mut(i))
            && let Some(item) = slot.take()
        {
            self.events -= 1;
            self.bytes -= item.size();
        }
    }

    /// Drops the slots emptied by conflation. Without it a slow reader of a
    /// hot key would keep one empty slot per record conflated: memory would
    /// grow without bound while `len()` stayed small. Called when emptied
    /// slots outnumber live records (plus [`COMPACT_SLACK`]), so the queue
    /// holds at most about twice `max_events` slots, and the cost, linear
    /// in the queue, is paid once per that many conflations: constant per
    /// push, amortised.
    fn compact(&mut self) {
        self.queue.retain(Option::is_some);
        // The live records get new sequence numbers (`head_seq` onwards);
        // the keys waiting must follow them. Under `conflate` every keyed
        // record still queued is the one its key waits on.
        for (index, item) in self.queue.iter().flatten().enumerate() {
            if let Some(key) = item.record.key.as_deref()
                && let Some(seq) = self.waiting.get_mut(key)
            {
                *seq = self.head_seq + index as u64;
            }
        }
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.head_seq = 0;
        self.events = 0;
        self.bytes = 0;
        self.waiting.clear();
        self.skipped.clear();
        self.skipped_position = None;
    }
}

/// The buffer shared by a subscriber's reader and its transport.
#[derive(Debug)]
pub struct Outbox {
    buffer: Mutex<Buffer>,
    /// Wakes the transport: something to send.
    ready: Notify,
    /// Wakes a paced reader: something was sent.
    space: Notify,
}

impl Outbox {
    pub fn new(policy: Policy, max_events: usize, max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            buffer: Mutex::new(Buffer::new(policy, max_events, max_bytes)),
            ready: Notify::new(),
            space: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // The buffer's invariants hold between method calls; a panic in
        // another holder cannot leave it half-updated in a harmful way.
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Item) -> Pushed {
        let pushed = self.lock().push(item);
        self.ready.notify_one();
        pushed
    }

    /// Adds a record once there is room for it, without applying the
    /// policy: history is read at the client's pace, since Kafka keeps it.
    /// Returns `Closed` if the subscription ends while waiting.
    pub async fn push_paced(&self, item: Item) -> Pushed {
        loop {
            {
                let mut buffer = self.lock();
                if buffer.is_closed() {
                    return Pushed::Closed;
                }
                if buffer.has_room_for(&item) {
                    let pushed = buffer.push(item);
                    drop(buffer);
                    self.ready.notify_one();
                    return pushed;
                }
            }
            self.space.notified().await;
        }
    }

    pub fn close(&self, reason: CloseReason) {
        self.lock().close(reason);
        self.ready.notify_one();
        self.space.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().is_closed()
    }

    /// The label of the close reason, if the subscription was closed.
    pub fn close_label(&self) -> Option<&'static str> {
        self.lock().close_reason().map(CloseReason::label)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Waits for the next thing to send. After a [`Out::Close`] the
    /// transport ends the subscription.
    pub async fn next(&self) -> Out {
        loop {
            let popped = self.lock().pop();
            if let Some(out) = popped {
                self.space.notify_one();
                return out;
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between the pop above and this await is not lost.
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::decode::Value;

    fn item(partition: i32, offset: i64, key: Option<&str>) -> Item {
        Item {
            record: Arc::new(Record::new(
                partition,
                offset,
                None,
                key.map(|k| k.as_bytes().to_vec()),
                Value::Null,
            )),
            position: format!("0:{}", offset + 1),
            live: true,
        }
    }

    fn offsets(b: &mut Buffer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = b.pop() {
            match o {
                Out::Record(i) => out.push(format!("{}@{}", i.record.offset, i.record.partition)),
                Out::Lagged { skipped, position } => out.push(format!(
                    "lagged{:?}->{position}",
                    skipped
                        .iter()
                        .map(|s| (s.partition, s.first, s.last, s.count))
                        .collect::<Vec<_>>()
                )),
                Out::Close(r) => {
                    out.push(format!("close:{}", r.label()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn within_bounds_everything_passes_in_order() {
        let mut b = Buffer::new(Policy::Disconnect, 3, 1 << 20);
        for o in 0..3 {
            assert_eq!(b.push(item(0, o, None)), Pushed::Queued);
        }
        assert_eq!(offsets(&mut b), ["0@0", "1@0", "2@0"]);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn disconnect_empties_the_buffer_and_closes() {
        let mut b = Buffer::new(Policy::Disconnect, 2, 1 << 20);
        b.push(item(0, 0, None));
        b.push(item(0, 1, None));
        assert_eq!(b.push(item(0, 2, None)), Pushed::Closed);
        assert_eq!(b.push(item(0, 3, None)), Pushed::Closed);
        assert_eq!(offsets(&mut b), ["close:lagged"]);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn skip_drops_the_oldest_and_names_them_first() {
        let mut b = Buffer::new(Policy::Skip, 2, 1 << 20);
        b.push(item(0, 10, None));
        b.push(item(1, 4, None));
        assert_eq!(b.push(item(0, 12, None)), Pushed::Skipped(1));
        assert_eq!(b.push(item(0, 13, None)), Pushed::Skipped(1));
        assert_eq!(b.len(), 2);
        assert_eq!(
            offsets(&mut b),
            ["lagged[(0, 10, 10, 1), (1, 4, 4, 1)]->0:5", "12@0", "13@0"]
        );
    }

    #[test]
    fn conflate_keeps_the_newest_per_key_in_partition_order() {
        let mut b = Buffer::new(Policy::Conflate, 3, 1 << 20);
        b.push(item(0, 1, Some("a")));
        b.push(item(0, 2, Some("b")));
        assert_eq!(b.push(item(0, 3, Some("a"))), Pushed::Conflated);
        assert_eq!(b.push(item(0, 4, Some("a"))), Pushed::Conflated);
        assert_eq!(b.push(item(0, 5, None)), Pushed::Queued);
        assert_eq!(b.len(), 3);
        assert_eq!(offsets(&mut b), ["2@0", "4@0", "5@0"]);
        // A key sent already is not conflated with a new record.
        b.push(item(0, 6, Some("a")));
        assert_eq!(offsets(&mut b), ["6@0"]);
    }

    /// A slow conflate reader of a hot key: every push empties a slot, and
    /// the emptied slots must not pile up (they did, one per push).
    #[test]
    fn conflated_slots_do_not_accumulate() {
        let max_events = 100;
        let mut b = Buffer::new(Policy::Conflate, max_events, 1 << 20);
        b.push(item(1, 0, Some("other")));
        for offset in 0..1_000_000 {
            b.push(item(0, offset, Some("hot")));
            assert!(
                b.slots() <= 2 * max_events + COMPACT_SLACK,
                "{} slots after {offset} pushes",
                b.slots()
            );
        }
        assert_eq!(b.len(), 2);
        assert_eq!(
            b.bytes(),
            item(1, 0, Some("other")).size() + item(0, 999_999, Some("hot")).size()
        );
        assert_eq!(offsets(&mut b), ["0@1", "999999@0"]);
        assert_eq!(b.slots(), 0);
        // Sequence numbers survive compaction: the key is conflated again.
        b.push(item(0, 1, Some("hot")));
        assert_eq!(b.push(item(0, 2, Some("hot"))), Pushed::Conflated);
        assert_eq!(offsets(&mut b), ["2@0"]);
    }

    #[test]
    fn conflate_with_too_many_keys_disconnects() {
        let mut b = Buffer::new(Policy::Conflate, 2, 1 << 20);
        b.push(item(0, 1, Some("a")));
        b.push(item(0, 2, Some("b")));
        assert_eq!(b.push(item(0, 3, Some("c"))), Pushed::Closed);
    }

    #[test]
    fn the_byte_bound_applies_too() {
        let one = item(0, 0, None).size();
        let mut b = Buffer::new(Policy::Skip, 1000, one * 2);
        for o in 0..5 {
            b.push(item(0, o, None));
        }
        assert_eq!(b.len(), 2);
        assert!(b.bytes() <= one * 2);
    }

    #[test]
    fn close_drops_what_waits() {
        let mut b = Buffer::new(Policy::Skip, 10, 1 << 20);
        b.push(item(0, 0, None));
        b.close(CloseReason::Shutdown);
        assert_eq!(offsets(&mut b), ["close:shutdown"]);
        assert_eq!(b.push(item(0, 1, None)), Pushed::Closed);
    }

    #[tokio::test]
    async fn paced_pushes_wait_for_the_client_instead_of_overflowing() {
        let outbox = Outbox::new(Policy::Disconnect, 2, 1 << 20);
        let o2 = outbox.clone();
        let reader = tokio::spawn(async move {
            for offset in 0..10 {
                assert_eq!(o2.push_paced(item(0, offset, None)).await, Pushed::Queued);
            }
        });
        for expected in 0..10 {
            match outbox.next().await {
                Out::Record(i) => assert_eq!(i.record.offset, expected),
                other => panic!("{other:?}"),
            }
            assert!(outbox.len() <= 2);
        }
        reader.await.unwrap();
        assert!(!outbox.is_closed());
    }

    #[tokio::test]
    async fn the_transport_wakes_for_a_push() {
        let outbox = Outbox::new(Policy::Disconnect, 10, 1 << 20);
        let o2 = outbox.clone();
        let waiter = tokio::spawn(async move { o2.next().await });
        tokio::task::yield_now().await;
        outbox.push(item(0, 7, None));
        match waiter.await.unwrap() {
            Out::Record(i) => assert_eq!(i.record.offset, 7),
            other => panic!("{other:?}"),
        }
    }
}

//! A subscriber's reader: history from Kafka, then the shared live tail,
//! with an exact handover, feeding the subscriber's [`Outbox`].
//!
//! The handover, per round:
//!
//! 1. Attach to the topic's live tail: a receiver plus the tail's position
//!    `L` at that instant. The receiver will see every record at or after
//!    `L`; every record below `L` is decided (committed or aborted).
//! 2. If the subscriber's position `P` is below `L` anywhere, open a history
//!    reader at `P` and read until it has read everything below `L` in every
//!    partition (its read-to position reaches `L`; at a partition's end that
//!    position is past transaction markers too). Each record read advances
//!    `P` and is delivered if it matches — at the client's pace, since Kafka
//!    holds history.
//! 3. Switch to the receiver. A record below `P` was delivered by history
//!    and is dropped; every other record is delivered. Nothing below `L` is
//!    missing (history read it) and nothing at or above `L` is missing (the
//!    receiver has it), so there is no gap and no duplicate.
//!
//! History readers are shared (`limits.max_history_readers`): one whose
//! client stops taking records gives its reader back after
//! `limits.history_stall_timeout` and opens a new one at its position when
//! the client reads again, so stalled clients cannot hold every reader.
//!
//! Live records go through the subscriber's policy when the client is
//! slow. If the subscriber falls so far behind that the tail's shared ring
//! overwrote records it had not taken, it starts a new round from `P`: it
//! reads the missed records from Kafka instead of losing them.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use super::Gateway;
use super::history::{HistoryReader, Read};
use super::outbox::{CloseReason, Item, Outbox, Pushed};
use super::position::Position;
use super::record::Record;
use super::selection::{Match, Selection};
use super::tail::TopicHub;

pub struct Pump {
    pub gateway: Arc<Gateway>,
    pub hub: Arc<TopicHub>,
    pub selection: Selection,
    pub outbox: Arc<Outbox>,
    pub position: Position,
    /// A history reader's place taken when the subscription opened (so
    /// that a busy gateway could still answer 503); used by the first round.
    pub history_permit: Option<OwnedSemaphorePermit>,
}

impl Pump {
    /// Runs until the subscription ends (the outbox closes, the tail stops,
    /// or Kafka fails for it).
    pub async fn run(mut self) {
        if let Err(e) = self.rounds().await {
            tracing::warn!(topic = %self.hub.name, error = %e, "subscription failed");
            self.outbox.close(CloseReason::Error(e));
        }
    }

    async fn rounds(&mut self) -> Result<(), String> {
        loop {
            let Some((mut live, live_at)) = self.hub.attach() else {
                return Err(format!(
                    "the live tail of `{}` is not running",
                    self.hub.name
                ));
            };
            if !self.position.reached(&live_at) && !self.catch_up(&live_at).await? {
                return Ok(());
            }
            loop {
                match live.recv().await {
                    Ok(record) => {
                        if self.position.advance(record.partition, record.offset)
                            && !self.deliver_live(record)
                        {
                            return Ok(());
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.gateway
                            .metrics
                            .live_lagged
                            .with_label_values(&[&self.hub.name])
                            .inc();
                        break;
                    }
                    Err(RecvError::Closed) => {
                        self.outbox.close(CloseReason::Shutdown);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads history until everything below `live_at` has been read.
    /// Returns false when the subscription ended meanwhile.
    async fn catch_up(&mut self, live_at: &Position) -> Result<bool, String> {
        // None after a stall gave the reader back; reopened when needed.
        let mut reader: Option<HistoryReader> = None;
        loop {
            let current = match reader.as_mut() {
                Some(r) => r,
                None => {
                    let permit = match self.history_permit.take() {
                        Some(p) => p,
                        None => self.gateway.history_permit().await.map_err(|e| e.message)?,
                    };
                    if self.outbox.is_closed() {
                        return Ok(false);
                    }
                    reader.insert(HistoryReader::open(
                        &self.gateway.history_client,
                        &self.hub.name,
                        self.hub.decoder.clone(),
                        &self.position,
                        permit,
                        self.gateway.metrics.history_readers.clone(),
                    )?)
                }
            };
            if current.read_to().reached(live_at) {
                // The reader has read everything below its read-to
                // position; what lies between the last record and it is
                // markers or aborted records.
                for (p, at) in current.read_to().offsets().iter().enumerate() {
                    self.position.raise(p as i32, *at);
                }
                return Ok(true);
            }
            match current.next().await? {
                Read::Record(record) => {
                    if self.position.advance(record.partition, record.offset)
                        && !self.deliver_history(record, &mut reader).await
                    {
                        return Ok(false);
                    }
                }
                Read::End(_) => {}
            }
        }
    }

    /// Delivers a history record at the client's pace. If the client takes
    /// nothing for `limits.history_stall_timeout`, the reader is given back
    /// (`*reader = None`) while the record waits for room. Returns false
    /// when the subscription has ended.
    async fn deliver_history(
        &mut self,
        record: Arc<Record>,
        reader: &mut Option<HistoryReader>,
    ) -> bool {
        let Some(item) = self.item(record, false) else {
            return !self.outbox.is_closed();
        };
        let outbox = self.outbox.clone();
        let push = outbox.push_paced(item);
        tokio::pin!(push);
        let stall = self.gateway.config.limits.history_stall_timeout;
        let pushed = match tokio::time::timeout(stall, push.as_mut()).await {
            Ok(pushed) => pushed,
            Err(_) => {
                tracing::debug!(topic = %self.hub.name, "client stalled; history reader given back");
                *reader = None;
                push.await
            }
        };
        self.counted(pushed)
    }

    /// Delivers a live record (the policy applies if the client is slow).
    /// Returns false when the subscription has ended.
    fn deliver_live(&self, record: Arc<Record>) -> bool {
        let Some(item) = self.item(record, true) else {
            return !self.outbox.is_closed();
        };
        let pushed = self.outbox.push(item);
        self.counted(pushed)
    }

    /// The item for a record already counted in the position, if it
    /// matches the subscriber's selection.
    fn item(&self, record: Arc<Record>, live: bool) -> Option<Item> {
        let topic = &self.hub.name;
        match self.selection.matches(&record) {
            Match::Yes => {}
            Match::No => return None,
            Match::FilterError(e) => {
                tracing::debug!(%topic, error = %e, "filter failed on a record");
                self.gateway
                    .metrics
                    .filter_errors
                    .with_label_values(&[topic])
                    .inc();
                return None;
            }
        }
        Some(Item {
            record,
            position: self.position.token(),
            live,
        })
    }

    /// Counts what the outbox did with an item; false when it is closed.
    fn counted(&self, pushed: Pushed) -> bool {
        let topic = &self.hub.name;
        match pushed {
            Pushed::Queued => true,
            Pushed::Conflated => {
                self.gateway
                    .metrics
                    .conflated
                    .with_label_values(&[topic])
                    .inc();
                true
            }
            Pushed::Skipped(n) => {
                self.gateway
                    .metrics
                    .skipped
                    .with_label_values(&[topic])
                    .inc_by(n);
                true
            }
            Pushed::Closed => false,
        }
    }
}

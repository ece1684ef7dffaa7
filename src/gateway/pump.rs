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
//! Live records go through the subscriber's policy when the client is
//! slow. If the subscriber falls so far behind that the tail's shared ring
//! overwrote records it had not taken, it starts a new round from `P`: it
//! reads the missed records from Kafka instead of losing them.

use std::sync::Arc;

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
                            && !self.deliver(record, true).await
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
        let permit = self
            .gateway
            .history_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the gateway is stopping".to_string())?;
        if self.outbox.is_closed() {
            return Ok(false);
        }
        let mut reader = HistoryReader::open(
            &self.gateway.history_client,
            &self.hub.name,
            self.hub.decoder.clone(),
            &self.position,
            permit,
            self.gateway.metrics.history_readers.clone(),
        )?;
        while !reader.read_to().reached(live_at) {
            match reader.next().await? {
                Read::Record(record) => {
                    if self.position.advance(record.partition, record.offset)
                        && !self.deliver(record, false).await
                    {
                        return Ok(false);
                    }
                }
                Read::End(_) => {}
            }
        }
        // The reader has read everything below its read-to position; what
        // lies between the last record and it is markers or aborted records.
        for (p, at) in reader.read_to().offsets().iter().enumerate() {
            self.position.raise(p as i32, *at);
        }
        Ok(true)
    }

    /// Delivers a record already counted in the position if it matches.
    /// Returns false when the subscription has ended.
    async fn deliver(&mut self, record: Arc<Record>, live: bool) -> bool {
        let topic = &self.hub.name;
        match self.selection.matches(&record) {
            Match::Yes => {}
            Match::No => return !self.outbox.is_closed(),
            Match::FilterError(e) => {
                tracing::debug!(%topic, error = %e, "filter failed on a record");
                self.gateway
                    .metrics
                    .filter_errors
                    .with_label_values(&[topic])
                    .inc();
                return !self.outbox.is_closed();
            }
        }
        let item = Item {
            record,
            position: self.position.token(),
            live,
        };
        let pushed = if live {
            self.outbox.push(item)
        } else {
            self.outbox.push_paced(item).await
        };
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

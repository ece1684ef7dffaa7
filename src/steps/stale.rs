//! The `stale` step: an alert when a key has sent nothing for a while, and
//! another when it sends again.
//!
//! # Semantics
//!
//! Every record updates its key's last-seen time `s` (its event time, the
//! largest seen for the key). About once a second, the runtime's timer
//! compares each key's `s` with the wall clock: a key with
//! `now >= s + after` is *stale*, and one event
//! `{"key", "state": "stale", "last_seen": s, "silent_ms": now - s}` is
//! emitted (timestamp `now`, keyed by the key). The next record of a stale
//! key emits `{"key", "state": "resumed", "last_seen": s, "silent_ms":
//! t - s}` (timestamp `t`, the record's event time). Records themselves
//! are not passed on: the step's output is its events.
//!
//! The timer's state change and its event commit in one transaction, so
//! across crashes and rebalances each silence raises exactly one `stale`
//! and one `resumed` event. Event times are compared with the wall clock,
//! so devices' clocks should be roughly right (the default event time is
//! the Kafka record timestamp, set by the producer).
//!
//! # Store layout
//!
//! One store per step (default name `stale-<index>`), per task:
//!
//! | key | value |
//! |---|---|
//! | `k` key | `s`, then 1 if the key is stale, else 0 |
//! | `t` s key | index of keys not stale, by `s`, empty; the timer scans it up to `now − after`, at most [`BATCH`] keys a tick |

#[cfg(test)]
use serde_json::Value as Json;
use serde_json::json;

use super::keys::{self, Reader};
use super::stateful::{self, BATCH, corrupt, show};
use super::{Operator, Record, StepContext, StepError, input};
use crate::config::StaleConfig;
use crate::expr::Expr;
use crate::state::{KvStore, StateError};

const KEY: u8 = b'k';
const INDEX: u8 = b't';

/// The `stale` step.
#[derive(Debug)]
pub struct Stale {
    store: String,
    after: i64,
    time: Option<Expr>,
}

/// A key's entry: last seen, and whether it is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: i64,
    stale: bool,
}

impl Stale {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &StaleConfig, index: usize) -> Result<Self, String> {
        let after = stateful::millis("after", config.after)?;
        if after <= 0 {
            return Err("`after` must be more than 0".to_string());
        }
        Ok(Stale {
            store: stateful::store_name(config.name.as_deref(), "stale", index)?,
            after,
            time: stateful::compile("time", config.time.as_deref())?,
        })
    }

    fn read(&self, store: &dyn KvStore, key: &[u8]) -> Result<Option<Seen>, StateError> {
        let Some(bytes) = store.get(&keys::tagged(KEY, key))? else {
            return Ok(None);
        };
        let mut r = Reader::new(&bytes);
        match (r.time(), r.byte(), r.is_empty()) {
            (Some(at), Some(flag), true) => Ok(Some(Seen {
                at,
                stale: flag == 1,
            })),
            _ => Err(corrupt(&self.store, "last-seen entry", "truncated")),
        }
    }

    fn write(store: &mut dyn KvStore, key: &[u8], seen: Seen) {
        let mut value = keys::time(seen.at).to_vec();
        value.push(u8::from(seen.stale));
        store.put(&keys::tagged(KEY, key), &value);
    }
}

fn event(key: &[u8], state: &str, last_seen: i64, silent_ms: i64, at: i64) -> Record {
    Record {
        key: Some(key.to_vec()),
        value: json!({
            "key": String::from_utf8_lossy(key),
            "state": state,
            "last_seen": last_seen,
            "silent_ms": silent_ms,
        }),
        timestamp: Some(at),
        route: None,
    }
}

impl Operator for Stale {
    fn kind(&self) -> &'static str {
        "stale"
    }

    fn describe(&self) -> String {
        let time = self
            .time
            .as_ref()
            .map(|t| format!(", time {t}"))
            .unwrap_or_default();
        format!(
            "stale   after {} of silence (wall clock){time}, store {}",
            show(self.after),
            self.store
        )
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    /// Its results come from its state (see [`Operator::emits_state`]).
    fn emits_state(&self) -> bool {
        true
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let key = stateful::record_key(&record, "stale")?;
        let t = stateful::event_time(self.time.as_ref(), ctx.scope, &input(ctx.origin, &record))?;
        let store = ctx.stores.store(&self.store)?;
        let previous = self.read(store, &key)?;
        let at = previous.map_or(t, |p| p.at.max(t));
        match previous {
            Some(p) if p.stale => {
                out.push(event(&key, "resumed", p.at, t - p.at, t));
            }
            Some(p) if p.at == at => return Ok(()),
            Some(p) => store.delete(&keys::tagged_at(INDEX, p.at, &key)),
            None => {}
        }
        Self::write(store, &key, Seen { at, stale: false });
        store.put(&keys::tagged_at(INDEX, at, &key), &[]);
        Ok(())
    }

    fn wants_ticks(&self) -> bool {
        true
    }

    fn on_tick(
        &mut self,
        ctx: &mut StepContext<'_>,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let store = ctx.stores.store(&self.store)?;
        // Keys last seen at or before `now - after` are stale.
        let mut to = vec![INDEX];
        keys::push_time(&mut to, now_ms - self.after + 1);
        for (entry, _) in store.range(&[INDEX], &to, BATCH)? {
            let mut r = Reader::new(&entry[1..]);
            let (Some(at), Some(key), true) = (r.time(), r.bytes(), r.is_empty()) else {
                return Err(corrupt(&self.store, "index key", "truncated").into());
            };
            let key = key.to_vec();
            store.delete(&entry);
            Self::write(store, &key, Seen { at, stale: true });
            out.push(event(&key, "stale", at, now_ms - at, now_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::test_util::Feed;
    use std::time::Duration;

    fn event_state(value: &Json) -> Option<&str> {
        value.get("state").and_then(Json::as_str)
    }

    fn stale(after_secs: u64) -> Stale {
        Stale::new(
            &StaleConfig {
                name: None,
                after: Duration::from_secs(after_secs),
                time: None,
            },
            0,
        )
        .expect("builds")
    }

    fn tick(feed: &mut Feed, step: &mut Stale, now: i64) -> Vec<(String, String, i64)> {
        let out = feed.tick(step, now).expect("ticks");
        out.iter()
            .map(|r| {
                (
                    r.value["key"].as_str().unwrap_or_default().to_string(),
                    event_state(&r.value).unwrap_or_default().to_string(),
                    r.value["silent_ms"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    #[test]
    fn a_silent_key_is_reported_once_and_again_when_it_resumes() {
        let mut feed = Feed::new();
        let mut step = stale(10);
        assert!(
            feed.run(&mut step, "a", json!({}), Some(1_000))
                .expect("runs")
                .is_empty()
        );
        feed.run(&mut step, "b", json!({}), Some(5_000))
            .expect("runs");
        assert!(tick(&mut feed, &mut step, 10_999).is_empty());
        assert_eq!(
            tick(&mut feed, &mut step, 11_000),
            [("a".into(), "stale".into(), 10_000)]
        );
        // Reported once, not at every tick.
        assert!(tick(&mut feed, &mut step, 12_000).is_empty());
        assert_eq!(
            tick(&mut feed, &mut step, 15_500),
            [("b".into(), "stale".into(), 10_500)]
        );
        // `a` comes back: one `resumed`, then it is watched again.
        let out = feed
            .run(&mut step, "a", json!({}), Some(20_000))
            .expect("runs");
        assert_eq!(event_state(&out[0].value), Some("resumed"));
        assert_eq!(out[0].value["silent_ms"], 19_000);
        assert_eq!(out[0].timestamp, Some(20_000));
        assert!(
            feed.run(&mut step, "a", json!({}), Some(21_000))
                .expect("runs")
                .is_empty()
        );
        assert!(tick(&mut feed, &mut step, 30_999).is_empty());
        assert_eq!(
            tick(&mut feed, &mut step, 31_000),
            [("a".into(), "stale".into(), 10_000)]
        );
    }

    #[test]
    fn a_late_record_does_not_move_last_seen_back() {
        let mut feed = Feed::new();
        let mut step = stale(10);
        feed.run(&mut step, "a", json!({}), Some(9_000))
            .expect("runs");
        feed.run(&mut step, "a", json!({}), Some(2_000))
            .expect("runs");
        assert!(tick(&mut feed, &mut step, 18_000).is_empty());
        assert_eq!(tick(&mut feed, &mut step, 19_000).len(), 1);
    }

    #[test]
    fn records_need_a_key_and_after_must_be_positive() {
        let mut feed = Feed::new();
        let mut step = stale(10);
        assert!(feed.run(&mut step, "", json!({}), Some(1)).is_err());
        let zero = Stale::new(
            &StaleConfig {
                name: None,
                after: Duration::ZERO,
                time: None,
            },
            0,
        );
        assert!(zero.is_err());
    }
}

//! The `reduce` step: a running aggregate per record key, without windows.
//!
//! # Semantics
//!
//! Every record updates its key's aggregates and is replaced by them:
//! key = the record key; value = `{"key": <key as UTF-8, lossy>,
//! <aggregates>}`; timestamp and route = the record's. Records need a key.
//!
//! With `ttl`, each key remembers the event time `u` of its last update
//! (the largest seen for it). A record at `t` continues its key's
//! aggregates unless the key is stale, in which case it starts afresh: a
//! key is stale when `t >= u + ttl`, or when the partition's largest event
//! time `max` reached `u + ttl` (then its entry may already be deleted, and
//! results must not depend on whether it was). Stale keys are deleted by a
//! scan of an index ordered by `u`, at most [`BATCH`] per record. Without
//! `ttl` keys live forever.
//!
//! Quantiles are refused: a sketch per key that never forgets would grow
//! with the key's whole history and mean little; use a `window`.
//!
//! # Store layout
//!
//! One store per step (default name `reduce-<index>`), per task; times are
//! [`keys::time`] encodings and keys length-prefixed:
//!
//! | key | value |
//! |---|---|
//! | `k` key | `u` (with `ttl`; otherwise the record timestamp or 0, unused), then the [`Acc`] |
//! | `m` | with `ttl`: the clock (max event time, twice) |
//! | `t` u key | with `ttl`: expiry index, empty |

use serde_json::{Map as JsonMap, Value as Json};

use super::aggregates::{Acc, Aggregates};
use super::keys::{self, Reader};
use super::stateful::{self, BATCH, Clock, corrupt, show};
use super::{Operator, Record, StepContext, StepError, input};
use crate::config::ReduceConfig;
use crate::expr::Expr;
use crate::state::{KvStore, StateError};

const KEY: u8 = b'k';
const EXPIRY: u8 = b't';

/// The `reduce` step.
#[derive(Debug)]
pub struct Reduce {
    store: String,
    value: Option<Expr>,
    aggregates: Aggregates,
    ttl: Option<i64>,
    time: Option<Expr>,
}

impl Reduce {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &ReduceConfig, index: usize) -> Result<Self, String> {
        let store = stateful::store_name(config.name.as_deref(), "reduce", index)?;
        let aggregates = Aggregates::new(&config.aggregates)?;
        if aggregates.has_quantiles() {
            return Err(format!(
                "quantiles ({}) are not available in `reduce` (a per-key sketch would grow \
                 with the key's whole history); use a `window`",
                aggregates.quantiles().join(", ")
            ));
        }
        let value = stateful::compile("value", config.value.as_deref())?;
        super::window::check_value(&aggregates, value.is_some())?;
        let ttl = match config.ttl {
            None => None,
            Some(d) => {
                let ms = stateful::millis("ttl", d)?;
                if ms <= 0 {
                    return Err("`ttl` must be more than 0 (or left out)".to_string());
                }
                Some(ms)
            }
        };
        if ttl.is_none() && config.time.is_some() {
            return Err("`time` is only used with `ttl`: set `ttl` or remove `time`".to_string());
        }
        Ok(Reduce {
            store,
            value,
            aggregates,
            ttl,
            time: stateful::compile("time", config.time.as_deref())?,
        })
    }

    fn read(&self, store: &dyn KvStore, key: &[u8]) -> Result<Option<(i64, Acc)>, StateError> {
        let Some(bytes) = store.get(key)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&bytes);
        let u = r
            .time()
            .ok_or_else(|| corrupt(&self.store, "aggregate", "truncated"))?;
        let acc = Acc::decode(r.rest()).map_err(|e| corrupt(&self.store, "aggregate", e))?;
        Ok(Some((u, acc)))
    }

    /// Deletes keys last updated at or before `max − ttl`.
    fn expire(&self, store: &mut dyn KvStore, max: i64, ttl: i64) -> Result<(), StateError> {
        let mut to = vec![EXPIRY];
        keys::push_time(&mut to, max - ttl + 1);
        for (entry, _) in store.range(&[EXPIRY], &to, BATCH)? {
            let mut r = Reader::new(&entry[1..]);
            let (Some(u), Some(key), true) = (r.time(), r.bytes(), r.is_empty()) else {
                return Err(corrupt(&self.store, "expiry key", "truncated"));
            };
            store.delete(&entry);
            let k = entry_key(key);
            if self.read(store, &k)?.is_some_and(|(stored, _)| stored == u) {
                store.delete(&k);
            }
        }
        Ok(())
    }
}

fn entry_key(key: &[u8]) -> Vec<u8> {
    keys::tagged(KEY, key)
}

fn expiry_key(u: i64, key: &[u8]) -> Vec<u8> {
    keys::tagged_at(EXPIRY, u, key)
}

impl Operator for Reduce {
    fn kind(&self) -> &'static str {
        "reduce"
    }

    fn describe(&self) -> String {
        let mut parts = vec![match &self.value {
            Some(v) => format!("{} of {v} by key", self.aggregates.names()),
            None => format!("{} by key", self.aggregates.names()),
        }];
        if let Some(ttl) = self.ttl {
            parts.push(format!("ttl {}", show(ttl)));
        }
        if let Some(t) = &self.time {
            parts.push(format!("time {t}"));
        }
        parts.push(format!("store {}", self.store));
        format!("reduce  {}", parts.join(", "))
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
        let key = stateful::record_key(&record, "reduce")?;
        let (t, value) = {
            let input = input(ctx.origin, &record);
            let t = match self.ttl {
                Some(_) => stateful::event_time(self.time.as_ref(), ctx.scope, &input)?,
                None => record
                    .timestamp
                    .unwrap_or(0)
                    .clamp(-stateful::MAX_TIME, stateful::MAX_TIME),
            };
            let value = match &self.value {
                Some(e) => Some(stateful::number(e, ctx.scope, &input)?),
                None => None,
            };
            (t, value)
        };
        let store = ctx.stores.store(&self.store)?;
        let entry = entry_key(&key);
        let stored = self.read(store, &entry)?;
        let old_u = stored.as_ref().map(|(u, _)| *u);
        let mut max = t;
        let (u, mut acc) = match self.ttl {
            None => (
                t,
                stored.map_or_else(|| self.aggregates.empty(), |(_, acc)| acc),
            ),
            Some(ttl) => {
                let clock = Clock::read(store, &self.store)?;
                let next = Clock::advance(clock, t, 0);
                next.write(clock, store);
                max = next.max_time;
                match stored {
                    Some((u, acc)) if t < u + ttl && next.max_time < u + ttl => (u.max(t), acc),
                    _ => (t, self.aggregates.empty()),
                }
            }
        };
        acc.add(value);
        let mut bytes = keys::time(u).to_vec();
        acc.encode(&mut bytes);
        store.put(&entry, &bytes);
        if let Some(ttl) = self.ttl {
            if old_u != Some(u) {
                if let Some(old) = old_u {
                    store.delete(&expiry_key(old, &key));
                }
                store.put(&expiry_key(u, &key), &[]);
            }
            self.expire(store, max, ttl)?;
        }
        let mut fields = JsonMap::new();
        fields.insert(
            "key".to_string(),
            Json::String(String::from_utf8_lossy(&key).into_owned()),
        );
        self.aggregates.render(&acc, &mut fields);
        out.push(Record {
            key: Some(key),
            value: Json::Object(fields),
            timestamp: record.timestamp,
            route: record.route,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::Aggregate;
    use crate::steps::test_util::{Feed, entries_with_tag};
    use serde_json::json;
    use std::time::Duration;

    fn config(aggregates: &[&str], ttl: Option<u64>) -> ReduceConfig {
        ReduceConfig {
            name: None,
            value: Some("value.amount".into()),
            aggregates: aggregates
                .iter()
                .map(|a| Aggregate::parse(a).unwrap())
                .collect(),
            ttl: ttl.map(Duration::from_secs),
            time: None,
        }
    }

    fn values(out: Vec<Record>) -> Vec<Json> {
        out.into_iter().map(|r| r.value).collect()
    }

    #[test]
    fn running_aggregate_per_key() {
        let mut op =
            Reduce::new(&config(&["count", "sum", "min", "max", "mean"], None), 2).unwrap();
        let mut feed = Feed::new();
        let mut all = Vec::new();
        for (key, amount, ts) in [("a", 10, 1), ("b", 1, 2), ("a", 20, 3), ("a", -6, 4)] {
            let out = feed
                .run(&mut op, key, json!({"amount": amount}), Some(ts))
                .unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].key.as_deref(), Some(key.as_bytes()));
            assert_eq!(out[0].timestamp, Some(ts));
            all.extend(values(out));
        }
        assert_eq!(
            all,
            [
                json!({"key": "a", "count": 1, "sum": 10.0, "min": 10.0, "max": 10.0, "mean": 10.0}),
                json!({"key": "b", "count": 1, "sum": 1.0, "min": 1.0, "max": 1.0, "mean": 1.0}),
                json!({"key": "a", "count": 2, "sum": 30.0, "min": 10.0, "max": 20.0, "mean": 15.0}),
                json!({"key": "a", "count": 3, "sum": 24.0, "min": -6.0, "max": 20.0, "mean": 8.0}),
            ]
        );
        // Without ttl there is no clock and no index.
        assert_eq!(
            feed.stores.stores[&(0, "reduce-2".to_string())]
                .entries
                .len(),
            2
        );
        // A new instance continues from the store; another partition starts afresh.
        let mut restarted = Reduce::new(&config(&["count", "sum"], None), 2).unwrap();
        let out = feed
            .run(&mut restarted, "a", json!({"amount": 1}), None)
            .unwrap();
        assert_eq!(values(out), [json!({"key": "a", "count": 4, "sum": 25.0})]);
        feed.stores.task = 3;
        let out = feed
            .run(&mut restarted, "a", json!({"amount": 1}), None)
            .unwrap();
        assert_eq!(values(out), [json!({"key": "a", "count": 1, "sum": 1.0})]);
        let e = feed
            .run(&mut restarted, "", json!({"amount": 1}), None)
            .unwrap_err();
        assert!(matches!(e, StepError::Record(m) if m.contains("rekey")));
    }

    #[test]
    fn ttl_starts_stale_keys_afresh_and_deletes_them() {
        let mut op = Reduce::new(&config(&["count", "sum"], Some(60)), 0).unwrap();
        let mut feed = Feed::new();
        let mut run = |feed: &mut Feed, key: &str, amount: i64, secs: i64| {
            let out = feed
                .run(&mut op, key, json!({"amount": amount}), Some(secs * 1_000))
                .unwrap();
            let v = &out[0].value;
            (v["count"].as_u64().unwrap(), v["sum"].as_f64().unwrap())
        };
        assert_eq!(run(&mut feed, "a", 1, 0), (1, 1.0));
        assert_eq!(run(&mut feed, "b", 5, 10), (1, 5.0));
        assert_eq!(run(&mut feed, "a", 2, 59), (2, 3.0));
        // 60s after a's last update (59s): a starts afresh.
        assert_eq!(run(&mut feed, "a", 4, 119), (1, 4.0));
        // b, last updated at 10s, is deleted now that the partition passed 70s.
        assert_eq!(entries_with_tag(&feed.stores, 0, "reduce-0", KEY), 1);
        assert_eq!(entries_with_tag(&feed.stores, 0, "reduce-0", EXPIRY), 1);
        assert_eq!(run(&mut feed, "b", 5, 120), (1, 5.0));
        // A record out of order by less than ttl continues its key.
        assert_eq!(run(&mut feed, "a", 1, 100), (2, 5.0));
        // Everything goes once the partition moves far ahead.
        assert_eq!(run(&mut feed, "c", 1, 1_000), (1, 1.0));
        assert_eq!(entries_with_tag(&feed.stores, 0, "reduce-0", KEY), 1);
        assert_eq!(entries_with_tag(&feed.stores, 0, "reduce-0", EXPIRY), 1);
    }

    #[test]
    fn describe_and_config_errors() {
        let mut c = config(&["count", "sum"], Some(3_600));
        c.time = Some("value.ts".into());
        assert_eq!(
            Reduce::new(&c, 2).unwrap().describe(),
            "reduce  count/sum of value.amount by key, ttl 1h, time value.ts, store reduce-2"
        );
        let e = Reduce::new(&config(&["count", "p99"], None), 0).unwrap_err();
        assert!(e.contains("p99") && e.contains("window"), "{e}");
        let mut c = config(&["count"], None);
        assert!(Reduce::new(&c, 0).unwrap_err().contains("only `count`"));
        c.value = None;
        assert_eq!(
            Reduce::new(&c, 0).unwrap().describe(),
            "reduce  count by key, store reduce-0"
        );
        c.time = Some("value.ts".into());
        assert!(Reduce::new(&c, 0).unwrap_err().contains("ttl"));
        let mut c = config(&["sum"], None);
        c.value = None;
        assert!(
            Reduce::new(&c, 0)
                .unwrap_err()
                .contains("`value` is required")
        );
        assert!(
            Reduce::new(&config(&[], None), 0)
                .unwrap_err()
                .contains("empty")
        );
    }
}

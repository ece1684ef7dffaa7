//! The `dedup` step: drops a record whose id was seen shortly before it.
//!
//! # Semantics
//!
//! Ids are remembered per task (input partition): records that must be
//! recognised as duplicates of each other have to arrive in the same
//! partition (key the topic by the id, or by whatever produces it). A
//! record at event time `t` whose id was last seen at `s` is a duplicate,
//! and dropped, when `t < s + ttl` (this includes replays carrying an
//! earlier time than the last sighting); otherwise it passes unchanged.
//! Every sighting, dropped or not, moves `s` to `max(s, t)`, so an id that
//! keeps coming back within `ttl` passes only once.
//!
//! An id is forgotten once the largest event time seen in the partition
//! (`max`) reaches `s + ttl`; a forgotten id counts as never seen, whether
//! or not its entry was deleted yet, so results never depend on how far
//! the cleanup got. Detection is exact for records that arrive in event
//! time order; a record more than `ttl` behind `max` may miss an id that
//! was already forgotten.
//!
//! Ids are the `id` expression's result: a string (tagged `s`, UTF-8) or a
//! number (tagged `n`, its JSON text, so `5` and `5.0` differ).
//!
//! # Store layout
//!
//! One store per step (default name `dedup-<index>`), per task; times are
//! [`keys::time`] encodings and ids length-prefixed:
//!
//! | key | value |
//! |---|---|
//! | `m` | the clock: max event time (twice; no lateness) |
//! | `i` id | last sighting `s` |
//! | `t` s id | expiry index, empty: scanned up to `max − ttl` on every record, at most [`BATCH`] entries at a time |

use serde_json::Value as Json;

use super::keys::{self, Reader};
use super::stateful::{self, BATCH, Clock, corrupt, show};
use super::{Operator, Record, StepContext, StepError, input};
use crate::config::DedupConfig;
use crate::expr::Expr;
use crate::state::{KvStore, StateError};

const ID: u8 = b'i';
const EXPIRY: u8 = b't';

/// The `dedup` step.
#[derive(Debug)]
pub struct Dedup {
    store: String,
    id: Expr,
    ttl: i64,
    time: Option<Expr>,
}

impl Dedup {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &DedupConfig, index: usize) -> Result<Self, String> {
        let store = stateful::store_name(config.name.as_deref(), "dedup", index)?;
        let id = Expr::compile(&config.id).map_err(|e| format!("`id`: {e}"))?;
        let ttl = stateful::millis("ttl", config.ttl)?;
        if ttl <= 0 {
            return Err("`ttl` must be more than 0".to_string());
        }
        Ok(Dedup {
            store,
            id,
            ttl,
            time: stateful::compile("time", config.time.as_deref())?,
        })
    }

    fn id_bytes(&self, value: Json) -> Result<Vec<u8>, String> {
        match value {
            Json::String(s) => {
                let mut bytes = vec![b's'];
                bytes.extend_from_slice(s.as_bytes());
                Ok(bytes)
            }
            Json::Number(n) => {
                let mut bytes = vec![b'n'];
                bytes.extend_from_slice(n.to_string().as_bytes());
                Ok(bytes)
            }
            other => Err(format!(
                "`{}` must return the id as a string or a number, returned {other}",
                self.id
            )),
        }
    }

    /// Forgets ids last seen at or before `max − ttl`.
    fn expire(&self, store: &mut dyn KvStore, max: i64) -> Result<(), StateError> {
        let mut to = vec![EXPIRY];
        keys::push_time(&mut to, max - self.ttl + 1);
        for (entry, _) in store.range(&[EXPIRY], &to, BATCH)? {
            let mut r = Reader::new(&entry[1..]);
            let (Some(seen), Some(id), true) = (r.time(), r.bytes(), r.is_empty()) else {
                return Err(corrupt(&self.store, "expiry key", "truncated"));
            };
            store.delete(&entry);
            let key = id_key(id);
            if read_time(store, &key, &self.store)? == Some(seen) {
                store.delete(&key);
            }
        }
        Ok(())
    }
}

fn id_key(id: &[u8]) -> Vec<u8> {
    keys::tagged(ID, id)
}

fn expiry_key(seen: i64, id: &[u8]) -> Vec<u8> {
    keys::tagged_at(EXPIRY, seen, id)
}

/// An entry whose value is one encoded time.
pub(super) fn read_time(
    store: &dyn KvStore,
    key: &[u8],
    name: &str,
) -> Result<Option<i64>, StateError> {
    let Some(bytes) = store.get(key)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&bytes);
    match (r.time(), r.is_empty()) {
        (Some(t), true) => Ok(Some(t)),
        _ => Err(corrupt(name, "sighting", "not one time")),
    }
}

impl Operator for Dedup {
    fn kind(&self) -> &'static str {
        "dedup"
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("{} within {}", self.id, show(self.ttl))];
        if let Some(t) = &self.time {
            parts.push(format!("time {t}"));
        }
        parts.push(format!("store {}", self.store));
        format!("dedup   {}", parts.join(", "))
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let (id, t) = {
            let input = input(ctx.origin, &record);
            let id = self.id_bytes(self.id.eval(ctx.scope, &input)?)?;
            (
                id,
                stateful::event_time(self.time.as_ref(), ctx.scope, &input)?,
            )
        };
        let store = ctx.stores.store(&self.store)?;
        let clock = Clock::read(store, &self.store)?;
        let next = Clock::advance(clock, t, 0);
        let max = next.max_time;
        let key = id_key(&id);
        let stored = read_time(store, &key, &self.store)?;
        let remembered = stored.filter(|s| s + self.ttl > max);
        let duplicate = remembered.is_some_and(|s| t < s + self.ttl);
        let seen = remembered.map_or(t, |s| s.max(t));
        if stored != Some(seen) {
            if let Some(old) = stored {
                store.delete(&expiry_key(old, &id));
            }
            store.put(&key, &keys::time(seen));
            store.put(&expiry_key(seen, &id), &[]);
        }
        next.write(clock, store);
        self.expire(store, max)?;
        if !duplicate {
            out.push(record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DedupConfig;
    use crate::steps::test_util::{Feed, entries_with_tag};
    use serde_json::json;
    use std::time::Duration;

    fn dedup(ttl_secs: u64) -> Dedup {
        Dedup::new(
            &DedupConfig {
                name: None,
                id: "value.id".into(),
                ttl: Duration::from_secs(ttl_secs),
                time: Some("value.ts".into()),
            },
            4,
        )
        .unwrap()
    }

    fn passed(op: &mut Dedup, feed: &mut Feed, id: Json, ts: i64) -> bool {
        let out = feed
            .run(op, "k", json!({"id": id, "ts": ts}), None)
            .unwrap();
        !out.is_empty()
    }

    #[test]
    fn duplicates_within_ttl_are_dropped_then_pass_after_it() {
        let mut op = dedup(10);
        let mut feed = Feed::new();
        assert!(passed(&mut op, &mut feed, json!("a"), 1_000));
        assert!(passed(&mut op, &mut feed, json!("b"), 2_000));
        assert!(!passed(&mut op, &mut feed, json!("a"), 5_000), "within ttl");
        assert!(
            !passed(&mut op, &mut feed, json!("a"), 500),
            "replay of an earlier time"
        );
        // The sighting at 5s restarted the ttl: 14.9s is still a duplicate.
        assert!(!passed(&mut op, &mut feed, json!("a"), 14_999));
        // 10s after the last sighting (14.999s) the id passes again.
        assert!(passed(&mut op, &mut feed, json!("a"), 24_999));
        // Strings and numbers are different ids.
        assert!(passed(&mut op, &mut feed, json!(7), 25_000));
        assert!(passed(&mut op, &mut feed, json!("7"), 25_000));
        assert!(!passed(&mut op, &mut feed, json!(7), 25_001));
        let e = feed
            .run(&mut op, "k", json!({"id": [1], "ts": 1}), None)
            .unwrap_err();
        assert!(matches!(e, StepError::Record(m) if m.contains("string or a number")));
    }

    #[test]
    fn forgotten_ids_are_deleted() {
        let mut op = dedup(10);
        let mut feed = Feed::new();
        for (i, ts) in [0, 1_000, 2_000, 3_000].into_iter().enumerate() {
            assert!(passed(&mut op, &mut feed, json!(format!("id-{i}")), ts));
        }
        assert_eq!(entries_with_tag(&feed.stores, 0, "dedup-4", ID), 4);
        // max = 12.5s forgets everything seen at or before 2.5s.
        assert!(passed(&mut op, &mut feed, json!("late-comer"), 12_500));
        assert_eq!(entries_with_tag(&feed.stores, 0, "dedup-4", ID), 2);
        assert_eq!(entries_with_tag(&feed.stores, 0, "dedup-4", EXPIRY), 2);
        // id-0 is forgotten: it passes again, even out of order.
        assert!(passed(&mut op, &mut feed, json!("id-0"), 3_000));
        // Its new sighting (3s) is remembered: 3s + 10s is after 12.5s.
        assert!(!passed(&mut op, &mut feed, json!("id-0"), 3_001));
        assert!(passed(&mut op, &mut feed, json!("x"), 100_000));
        assert_eq!(entries_with_tag(&feed.stores, 0, "dedup-4", ID), 1);
        assert_eq!(entries_with_tag(&feed.stores, 0, "dedup-4", EXPIRY), 1);
    }

    #[test]
    fn partitions_are_independent_and_state_survives_a_new_instance() {
        let mut op = dedup(10);
        let mut feed = Feed::new();
        assert!(passed(&mut op, &mut feed, json!("a"), 1_000));
        feed.stores.task = 1;
        assert!(
            passed(&mut op, &mut feed, json!("a"), 1_000),
            "other partition"
        );
        feed.stores.task = 0;
        let mut restarted = dedup(10);
        assert!(!passed(&mut restarted, &mut feed, json!("a"), 2_000));
        assert_eq!(feed.stores.stores.len(), 2);
    }

    #[test]
    fn describe_and_config_errors() {
        assert_eq!(
            dedup(600).describe(),
            "dedup   value.id within 10m, time value.ts, store dedup-4"
        );
        let bad = DedupConfig {
            name: None,
            id: "value.id".into(),
            ttl: Duration::ZERO,
            time: None,
        };
        assert!(Dedup::new(&bad, 0).unwrap_err().contains("ttl"));
    }
}

//! The `window` step: aggregates per record key over event-time windows.
//!
//! # Semantics
//!
//! Every task (input partition) keeps its own event-time clock: the
//! largest event time seen and the *watermark*, that time minus `lateness`,
//! which never moves back. A window `[start, end)` *closes* once the
//! watermark reaches `end + grace`. Records are judged against the
//! watermark as it was before them:
//!
//! - **tumbling** windows `[k·size, (k+1)·size)` and **hopping** windows
//!   `[k·advance, k·advance + size)`: a record is added to every open window
//!   that contains its event time, and is *late* (dead-lettered with
//!   reason `late`) when all of them are closed.
//! - **session** windows: per key, a session spans the event times
//!   `[first, last]` of its records; a record at `t` joins every session
//!   with `first − gap <= t <= last + gap` (so one record can bridge two
//!   sessions into one). A session's output is `start = first`,
//!   `end = last + gap`, and it closes once the watermark reaches
//!   `last + gap + grace`. A record is late when it would join a closed
//!   session, or when it joins none and a session of its own would already
//!   be closed. A closed session is remembered (without its aggregates)
//!   until the watermark reaches `last + 2·gap + grace`, after which any
//!   record that could join it alone is late anyway, and is then purged by
//!   the close index; a record arriving after the purge within `gap` of it
//!   and of an open session joins the open one.
//!
//! With `emit: final` each (key, window) is emitted once, when it closes,
//! in order of window end (then key, then start), and then deleted. With
//! `emit: update` every record emits the updated aggregates of each window
//! it changed (a merged session replaces the sessions it merged), and
//! closed windows are deleted without output. Closing is driven by an
//! index ordered by window end, so each record costs one bounded range
//! scan; at most [`BATCH`] windows close per record and the rest follow
//! with the next records (a record is judged against the watermark, never
//! against whether its window's deletion has happened yet).
//!
//! Output: key = the record key; value = `{"key": <key as UTF-8, lossy>,
//! "start": ms, "end": ms, <aggregates>}`; timestamp = the window end; no
//! route (a `route` step after the window chooses the sink).
//!
//! # Store layout
//!
//! One store per step (default name `window-<index>`), per task. Times are
//! [`keys::time`] encodings, keys are length-prefixed ([`keys::push_bytes`]),
//! aggregate state is an [`Acc`] encoding:
//!
//! | key | value |
//! |---|---|
//! | `m` | the clock: max event time, watermark |
//! | `w` key start | tumbling/hopping window `[start, start + size)`: its `Acc` |
//! | `s` key last | session whose last event time is `last`: first event time, state byte (0 open, 1 closed), then (open only) its `Acc` |
//! | `e` time key start-or-last | close index, empty value: for tumbling/hopping windows `time` is the window end; for open sessions the session end `last + gap`; for closed sessions `last + 2·gap`. An entry is due when `time + grace <= watermark` |
//! | `f` | the close index's frontier, a time: no index entry before it is left |
//!
//! Closing scans the index from the frontier, never from its start: a
//! deleted entry stays in RocksDB as a tombstone until compaction, and a
//! scan from the start would step over every window closed since, for every
//! record (the cost grew with the input, and dominated a profile of the
//! benchmark). The frontier moves to `watermark − grace + 1` whenever a scan
//! handles every due entry. Nothing is ever indexed before it: a window or
//! session is indexed only while open, at a time past `watermark − grace`,
//! and the watermark never moves back.
//!
//! Sessions are keyed by `last` so that the sessions a record at `t` may
//! join are the first two at or after `last = t − gap` (sessions of a key
//! are more than `gap` apart, so no more than two can be within reach).

use serde_json::{Map as JsonMap, Value as Json};

use super::aggregates::{Acc, Aggregates};
use super::keys::{self, Reader};
use super::stateful::{self, BATCH, Clock, corrupt, show};
use super::{Operator, Record, StepContext, StepError, input};
use crate::config::{Emit, WindowConfig, WindowType};
use crate::expr::Expr;
use crate::state::KvStore;

/// A record may fall into at most this many hopping windows
/// (`size / advance`): each costs a write per record.
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

const WINDOW: u8 = b'w';
const SESSION: u8 = b's';
const INDEX: u8 = b'e';
const FRONTIER: &[u8] = b"f";

const OPEN: u8 = 0;
const CLOSED: u8 = 1;

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Tumbling (`advance == size`) or hopping windows.
    Fixed {
        size: i64,
        advance: i64,
        hopping: bool,
    },
    Session {
        gap: i64,
    },
}

/// The `window` step.
#[derive(Debug)]
pub struct Window {
    store: String,
    shape: Shape,
    time: Option<Expr>,
    value: Option<Expr>,
    aggregates: Aggregates,
    lateness: i64,
    grace: i64,
    emit: Emit,
}

impl Window {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &WindowConfig, index: usize) -> Result<Self, String> {
        let store = stateful::store_name(config.name.as_deref(), "window", index)?;
        let aggregates = Aggregates::new(&config.aggregates)?;
        let value = stateful::compile("value", config.value.as_deref())?;
        check_value(&aggregates, value.is_some())?;
        let time = stateful::compile("time", config.time.as_deref())?;
        let positive = |field: &str, d: Option<std::time::Duration>, kind: &str| {
            let d = d.ok_or_else(|| format!("`{field}` is required for {kind} windows"))?;
            let ms = stateful::millis(field, d)?;
            if ms <= 0 {
                return Err(format!("`{field}` must be more than 0"));
            }
            Ok(ms)
        };
        let unused = |field: &str, set: bool, hint: &str| {
            if set {
                Err(format!("`{field}` is not used by {hint}"))
            } else {
                Ok(())
            }
        };
        let shape = match config.window_type {
            WindowType::Tumbling => {
                unused(
                    "advance",
                    config.advance.is_some(),
                    "tumbling windows (they advance by `size`; use `type: hopping`)",
                )?;
                unused(
                    "gap",
                    config.gap.is_some(),
                    "tumbling windows (use `type: session`)",
                )?;
                let size = positive("size", config.size, "tumbling")?;
                Shape::Fixed {
                    size,
                    advance: size,
                    hopping: false,
                }
            }
            WindowType::Hopping => {
                unused(
                    "gap",
                    config.gap.is_some(),
                    "hopping windows (use `type: session`)",
                )?;
                let size = positive("size", config.size, "hopping")?;
                let advance = positive("advance", config.advance, "hopping")?;
                if advance > size {
                    return Err(format!(
                        "`advance` ({}) must not exceed `size` ({}): records between windows would be lost",
                        show(advance),
                        show(size)
                    ));
                }
                let per_record = (size + advance - 1) / advance;
                if per_record > MAX_WINDOWS_PER_RECORD {
                    return Err(format!(
                        "`size` / `advance` is {per_record}: every record would update that many \
                         windows (at most {MAX_WINDOWS_PER_RECORD}); use a larger `advance`"
                    ));
                }
                Shape::Fixed {
                    size,
                    advance,
                    hopping: true,
                }
            }
            WindowType::Session => {
                unused(
                    "size",
                    config.size.is_some(),
                    "session windows (they last while records come within `gap`)",
                )?;
                unused("advance", config.advance.is_some(), "session windows")?;
                Shape::Session {
                    gap: positive("gap", config.gap, "session")?,
                }
            }
        };
        Ok(Window {
            store,
            shape,
            time,
            value,
            aggregates,
            lateness: stateful::millis("lateness", config.lateness)?,
            grace: stateful::millis("grace", config.grace)?,
            emit: config.emit,
        })
    }
}

/// `value` is needed exactly when something but `count` is computed.
pub(super) fn check_value(aggregates: &Aggregates, has_value: bool) -> Result<(), String> {
    match (aggregates.needs_value(), has_value) {
        (true, false) => Err(format!(
            "`value` is required to compute {} (only `count` needs none)",
            aggregates.names()
        )),
        (false, true) => Err(
            "`value` is set but only `count` is computed: list the aggregates to compute, \
             e.g. `aggregates: [count, mean]`"
                .to_string(),
        ),
        _ => Ok(()),
    }
}

impl Operator for Window {
    fn kind(&self) -> &'static str {
        "window"
    }

    fn describe(&self) -> String {
        let shape = match self.shape {
            Shape::Fixed { size, hopping, .. } if !hopping => format!("tumbling {}", show(size)),
            Shape::Fixed { size, advance, .. } => {
                format!("hopping {} every {}", show(size), show(advance))
            }
            Shape::Session { gap } => format!("session gap {}", show(gap)),
        };
        let mut parts = vec![format!("{shape} by key")];
        parts.push(match &self.value {
            Some(v) => format!("{} of {v}", self.aggregates.names()),
            None => self.aggregates.names(),
        });
        if let Some(t) = &self.time {
            parts.push(format!("time {t}"));
        }
        if self.lateness > 0 {
            parts.push(format!("lateness {}", show(self.lateness)));
        }
        if self.grace > 0 {
            parts.push(format!("grace {}", show(self.grace)));
        }
        parts.push(match self.emit {
            Emit::Final => "emit final".to_string(),
            Emit::Update => "emit update".to_string(),
        });
        parts.push(format!("store {}", self.store));
        format!("window  {}", parts.join(", "))
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    /// Its results come from its state (see [`Operator::emits_state`]).
    fn emits_state(&self) -> bool {
        true
    }

    /// Read back from the result's own `start` and `end` (see the output
    /// shape in the module docs).
    fn window_of(&self, emitted: &Record) -> Option<(i64, i64)> {
        let start = emitted.value.get("start")?.as_i64()?;
        let end = emitted.value.get("end")?.as_i64()?;
        Some((start, end))
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        // Everything that can fail because of the record is checked before
        // the first write: a failed record must leave the state untouched.
        let key = stateful::record_key(&record, "window")?;
        let (t, value) = {
            let input = input(ctx.origin, &record);
            let t = stateful::event_time(self.time.as_ref(), ctx.scope, &input)?;
            let value = match &self.value {
                Some(e) => Some(stateful::number(e, ctx.scope, &input)?),
                None => None,
            };
            (t, value)
        };
        let store = ctx.stores.store(&self.store)?;
        let clock = Clock::read(store, &self.store)?;
        let watermark = clock.map(|c| c.watermark);
        match self.shape {
            Shape::Fixed { size, advance, .. } => {
                self.add_fixed(store, &key, t, value, watermark, size, advance, out)?
            }
            Shape::Session { gap } => {
                self.add_session(store, &key, t, value, watermark, gap, out)?
            }
        }
        let next = Clock::advance(clock, t, self.lateness);
        next.write(clock, store);
        self.close_due(store, next.watermark, out)?;
        Ok(())
    }
}

impl Window {
    /// Adds a record to its open tumbling or hopping windows.
    #[allow(clippy::too_many_arguments)]
    fn add_fixed(
        &self,
        store: &mut dyn KvStore,
        key: &[u8],
        t: i64,
        value: Option<f64>,
        watermark: Option<i64>,
        size: i64,
        advance: i64,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        // Starts of the windows containing t, ascending.
        let last_start = t.div_euclid(advance) * advance;
        let mut starts = Vec::new();
        let mut start = last_start;
        while start > t - size {
            starts.push(start);
            start -= advance;
        }
        starts.reverse();
        let open: Vec<i64> = starts
            .iter()
            .copied()
            .filter(|s| watermark.is_none_or(|wm| wm < s + size + self.grace))
            .collect();
        if open.is_empty() {
            let wm = watermark.unwrap_or(i64::MIN);
            let end = last_start + size;
            let which = if starts.len() == 1 {
                format!("its window [{last_start}, {end})")
            } else {
                format!(
                    "all {} windows containing it (the last [{last_start}, {end}))",
                    starts.len()
                )
            };
            return Err(StepError::Late(format!(
                "event time {t} ms is late: {which} closed at watermark {wm} ms \
                 (end + grace {} ms)",
                self.grace
            )));
        }
        for start in open {
            let entry = window_key(key, start);
            let mut acc = match store.get(&entry)? {
                Some(bytes) => {
                    Acc::decode(&bytes).map_err(|e| corrupt(&self.store, "window", e))?
                }
                None => {
                    store.put(&index_key(start + size, key, start), &[]);
                    self.aggregates.empty()
                }
            };
            acc.add(value);
            store.put(&entry, &acc.to_bytes());
            if self.emit == Emit::Update {
                out.push(self.output(key, start, start + size, &acc));
            }
        }
        Ok(())
    }

    /// Adds a record to the session it starts, extends or bridges.
    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &self,
        store: &mut dyn KvStore,
        key: &[u8],
        t: i64,
        value: Option<f64>,
        watermark: Option<i64>,
        gap: i64,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let mut prefix = vec![SESSION];
        keys::push_bytes(&mut prefix, key);
        let mut from = prefix.clone();
        keys::push_time(&mut from, t - gap);
        let to = keys::prefix_end(&prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
        let wm = watermark.unwrap_or(i64::MIN);
        let mut joined = Vec::new();
        for (entry, bytes) in store.range(&from, &to, 2)? {
            let last = Reader::new(&entry[prefix.len()..])
                .time()
                .ok_or_else(|| corrupt(&self.store, "session key", "truncated"))?;
            let session =
                Session::decode(&bytes).map_err(|e| corrupt(&self.store, "session", e))?;
            if session.first > t + gap {
                continue;
            }
            if session.acc.is_none() || wm >= last + gap + self.grace {
                return Err(StepError::Late(format!(
                    "event time {t} ms is late: it falls within the gap of session \
                     [{}, {}), which closed at watermark {wm} ms (end + grace {} ms)",
                    session.first,
                    last + gap,
                    self.grace
                )));
            }
            joined.push((entry, last, session));
        }
        if joined.is_empty() && wm >= t + gap + self.grace {
            return Err(StepError::Late(format!(
                "event time {t} ms is late: a session starting at it would end at {} ms \
                 and be closed already at watermark {wm} ms (end + grace {} ms)",
                t + gap,
                self.grace
            )));
        }
        let mut first = t;
        let mut last = t;
        let mut acc = self.aggregates.empty();
        for (_, old_last, session) in &joined {
            first = first.min(session.first);
            last = last.max(*old_last);
            if let Some(a) = &session.acc {
                acc.merge(a)
                    .map_err(|e| corrupt(&self.store, "session", e))?;
            }
        }
        for (entry, old_last, _) in &joined {
            store.delete(entry);
            store.delete(&index_key(old_last + gap, key, *old_last));
        }
        acc.add(value);
        if self.emit == Emit::Update {
            out.push(self.output(key, first, last + gap, &acc));
        }
        let session = Session {
            first,
            acc: Some(acc),
        };
        store.put(&session_key(key, last), &session.encode());
        store.put(&index_key(last + gap, key, last), &[]);
        Ok(())
    }

    /// Closes (and, with `emit: final`, emits) the windows due at
    /// `watermark`, in order of their end; purges closed sessions.
    fn close_due(
        &self,
        store: &mut dyn KvStore,
        watermark: i64,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let until = watermark - self.grace + 1;
        let mut to = vec![INDEX];
        keys::push_time(&mut to, until);
        let frontier = match store.get(FRONTIER)? {
            Some(bytes) => Some(
                Reader::new(&bytes)
                    .time()
                    .ok_or_else(|| corrupt(&self.store, "close frontier", "truncated"))?,
            ),
            None => None,
        };
        let mut from = vec![INDEX];
        if let Some(f) = frontier {
            keys::push_time(&mut from, f);
        }
        let due = store.range(&from, &to, BATCH)?;
        if due.len() < BATCH && frontier.is_none_or(|f| f < until) {
            store.put(FRONTIER, &keys::time(until));
        }
        for (entry, _) in due {
            let mut r = Reader::new(&entry[1..]);
            let (Some(due), Some(key), Some(at), true) =
                (r.time(), r.bytes(), r.time(), r.is_empty())
            else {
                return Err(corrupt(&self.store, "index key", "truncated").into());
            };
            store.delete(&entry);
            match self.shape {
                Shape::Fixed { .. } => {
                    let (end, start) = (due, at);
                    let window = window_key(key, start);
                    if let Some(bytes) = store.get(&window)? {
                        if self.emit == Emit::Final {
                            let acc = Acc::decode(&bytes)
                                .map_err(|e| corrupt(&self.store, "window", e))?;
                            out.push(self.output(key, start, end, &acc));
                        }
                        store.delete(&window);
                    }
                }
                Shape::Session { gap } => {
                    let last = at;
                    let entry = session_key(key, last);
                    let Some(bytes) = store.get(&entry)? else {
                        continue;
                    };
                    let session =
                        Session::decode(&bytes).map_err(|e| corrupt(&self.store, "session", e))?;
                    let Some(acc) = session.acc else {
                        // A closed session's memory ends: purge it.
                        store.delete(&entry);
                        continue;
                    };
                    if self.emit == Emit::Final {
                        out.push(self.output(key, session.first, last + gap, &acc));
                    }
                    let forget_at = last + 2 * gap;
                    if forget_at + self.grace <= watermark {
                        store.delete(&entry);
                    } else {
                        let closed = Session {
                            first: session.first,
                            acc: None,
                        };
                        store.put(&entry, &closed.encode());
                        store.put(&index_key(forget_at, key, last), &[]);
                    }
                }
            }
        }
        Ok(())
    }

    fn output(&self, key: &[u8], start: i64, end: i64, acc: &Acc) -> Record {
        let mut value = JsonMap::new();
        value.insert(
            "key".to_string(),
            Json::String(String::from_utf8_lossy(key).into_owned()),
        );
        value.insert("start".to_string(), Json::from(start));
        value.insert("end".to_string(), Json::from(end));
        self.aggregates.render(acc, &mut value);
        Record {
            key: Some(key.to_vec()),
            value: Json::Object(value),
            timestamp: Some(end),
            route: None,
        }
    }
}

fn window_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut k = keys::tagged(WINDOW, key);
    keys::push_time(&mut k, start);
    k
}

fn session_key(key: &[u8], last: i64) -> Vec<u8> {
    let mut k = keys::tagged(SESSION, key);
    keys::push_time(&mut k, last);
    k
}

fn index_key(due: i64, key: &[u8], at: i64) -> Vec<u8> {
    let mut k = keys::tagged_at(INDEX, due, key);
    keys::push_time(&mut k, at);
    k
}

/// A stored session: its first event time and, while open, its aggregates.
struct Session {
    first: i64,
    acc: Option<Acc>,
}

impl Session {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        keys::push_time(&mut bytes, self.first);
        match &self.acc {
            Some(acc) => {
                bytes.push(OPEN);
                acc.encode(&mut bytes);
            }
            None => bytes.push(CLOSED),
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Session, String> {
        let mut r = Reader::new(bytes);
        let first = r.time().ok_or("truncated")?;
        let acc = match r.byte() {
            Some(OPEN) => Some(Acc::decode(r.rest())?),
            Some(CLOSED) if r.is_empty() => None,
            _ => return Err("bad state byte".to_string()),
        };
        Ok(Session { first, acc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStores;
    use crate::steps::test_util::{Feed, entries_with_tag};
    use serde_json::json;

    fn window(config: Json) -> Window {
        Window::new(&serde_json::from_value(config).expect("config parses"), 0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn config_error(config: Json) -> String {
        match Window::new(&serde_json::from_value(config).expect("config parses"), 0) {
            Ok(w) => panic!("accepted: {}", w.describe()),
            Err(e) => e,
        }
    }

    /// Feeds `{"v": v}` with key and timestamp; returns the output values,
    /// checking that each output is keyed and timestamped as documented.
    fn feed(op: &mut Window, f: &mut Feed, key: &str, ts: i64, v: i64) -> Vec<Json> {
        let out = f
            .run(op, key, json!({"v": v}), Some(ts))
            .unwrap_or_else(|e| panic!("record {key}@{ts}: {e:?}"));
        out.into_iter()
            .map(|r| {
                let k = r.value["key"].as_str().unwrap().as_bytes().to_vec();
                assert_eq!(r.key, Some(k));
                assert_eq!(r.timestamp, r.value["end"].as_i64());
                r.value
            })
            .collect()
    }

    fn late(op: &mut Window, f: &mut Feed, key: &str, ts: i64) -> String {
        match f.run(op, key, json!({"v": 0}), Some(ts)) {
            Err(StepError::Late(m)) => m,
            other => panic!("record {key}@{ts} not late: {other:?}"),
        }
    }

    fn store(f: &Feed) -> &crate::state::MemStore {
        &f.stores.stores[&(f.stores.task, "window-0".to_string())]
    }

    #[test]
    fn tumbling_final_emits_each_window_once_when_it_closes() {
        let mut op = window(json!({
            "type": "tumbling", "size": "10s", "value": "value.v",
            "aggregates": ["count", "sum", "min", "max", "mean"]
        }));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", 1_000, 1).is_empty());
        assert!(feed(&mut op, &mut f, "b", 2_000, 10).is_empty());
        assert!(feed(&mut op, &mut f, "a", 9_999, 3).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 10_000, 5),
            [
                json!({"key": "a", "start": 0, "end": 10_000, "count": 2, "sum": 4.0, "min": 1.0, "max": 3.0, "mean": 2.0}),
                json!({"key": "b", "start": 0, "end": 10_000, "count": 1, "sum": 10.0, "min": 10.0, "max": 10.0, "mean": 10.0}),
            ]
        );
        assert_eq!(
            feed(&mut op, &mut f, "b", 25_000, 7),
            [
                json!({"key": "a", "start": 10_000, "end": 20_000, "count": 1, "sum": 5.0, "min": 5.0, "max": 5.0, "mean": 5.0})
            ]
        );
        // Closed windows are gone: only b's open window, its index entry,
        // the clock and the close frontier remain.
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", WINDOW), 1);
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", INDEX), 1);
        assert_eq!(store(&f).entries.len(), 4);
    }

    #[test]
    fn tumbling_update_emits_every_change_and_deletes_closed_windows() {
        let mut op = window(json!({
            "type": "tumbling", "size": "10s", "value": "value.v",
            "aggregates": ["count", "max"], "emit": "update"
        }));
        let mut f = Feed::new();
        assert_eq!(
            feed(&mut op, &mut f, "a", 1_000, 4),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 1, "max": 4.0})]
        );
        assert_eq!(
            feed(&mut op, &mut f, "a", 2_000, 2),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 2, "max": 4.0})]
        );
        // The next window's first record; [0, 10s) closes without output.
        assert_eq!(
            feed(&mut op, &mut f, "a", 10_500, 1),
            [json!({"key": "a", "start": 10_000, "end": 20_000, "count": 1, "max": 1.0})]
        );
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", WINDOW), 1);
        assert!(late(&mut op, &mut f, "a", 3_000).contains("[0, 10000)"));
    }

    #[test]
    fn hopping_windows_take_records_in_every_open_window() {
        let mut op = window(json!({"type": "hopping", "size": "10s", "advance": "5s"}));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", -3_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 7_000, 0),
            [
                json!({"key": "a", "start": -10_000, "end": 0, "count": 1}),
                json!({"key": "a", "start": -5_000, "end": 5_000, "count": 1}),
            ]
        );
        assert_eq!(
            feed(&mut op, &mut f, "a", 12_000, 0),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 1})]
        );
        // Both windows of 3s, [-5s, 5s) and [0, 10s), are closed.
        let m = late(&mut op, &mut f, "a", 3_000);
        assert!(m.contains("all 2 windows"), "{m}");
        // 9s: [0, 10s) is closed but [5s, 15s) is open; it counts there only.
        assert!(feed(&mut op, &mut f, "a", 9_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 30_000, 0),
            [
                json!({"key": "a", "start": 5_000, "end": 15_000, "count": 3}),
                json!({"key": "a", "start": 10_000, "end": 20_000, "count": 1}),
            ]
        );
        // [20s, 30s) is empty; 30s's windows [25s, 35s) and [30s, 40s) stay.
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", WINDOW), 2);
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", INDEX), 2);
    }

    #[test]
    fn a_record_bridging_two_sessions_merges_them() {
        let mut op = window(json!({
            "type": "session", "gap": "5s", "lateness": "10s",
            "value": "value.v", "aggregates": ["count", "sum"]
        }));
        let mut f = Feed::new();
        for (ts, v) in [(0, 1), (3_000, 2), (10_000, 3), (12_000, 4)] {
            assert!(feed(&mut op, &mut f, "a", ts, v).is_empty());
        }
        // Two sessions of a: [0, 3s] and [10s, 12s].
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", SESSION), 2);
        // 7s is within 5s of both: one session [0, 12s].
        assert!(feed(&mut op, &mut f, "a", 7_000, 5).is_empty());
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", SESSION), 1);
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", INDEX), 1);
        assert!(feed(&mut op, &mut f, "b", 1_000, 100).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 40_000, 6),
            [
                json!({"key": "b", "start": 1_000, "end": 6_000, "count": 1, "sum": 100.0}),
                json!({"key": "a", "start": 0, "end": 17_000, "count": 5, "sum": 15.0}),
            ]
        );
        // Both closed long enough ago to be forgotten at once.
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", SESSION), 1);
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", INDEX), 1);
    }

    #[test]
    fn sessions_close_stay_known_while_they_matter_then_go() {
        let mut op = window(json!({"type": "session", "gap": "5s"}));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", 0, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 6_000, 0),
            [json!({"key": "a", "start": 0, "end": 5_000, "count": 1})]
        );
        // Within the gap of the closed session: late, not a new session.
        let m = late(&mut op, &mut f, "a", 4_000);
        assert!(m.contains("[0, 5000)") && m.contains("6000"), "{m}");
        late(&mut op, &mut f, "a", 1_500);
        // b has no session; one of its own at 0.5s would end at 5.5s.
        assert!(late(&mut op, &mut f, "b", 500).contains("5500"));
        // At 2s it would end at 7s, after the watermark: accepted.
        assert!(feed(&mut op, &mut f, "b", 2_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 12_000, 0),
            [
                json!({"key": "b", "start": 2_000, "end": 7_000, "count": 1}),
                json!({"key": "a", "start": 6_000, "end": 11_000, "count": 1}),
            ]
        );
        // a's [6s] session is remembered as closed, its [0] one forgotten.
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", SESSION), 2);
        late(&mut op, &mut f, "a", 9_000);
        assert_eq!(
            feed(&mut op, &mut f, "a", 30_000, 0),
            [json!({"key": "a", "start": 12_000, "end": 17_000, "count": 1})]
        );
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", SESSION), 1);
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", INDEX), 1);
    }

    #[test]
    fn grace_keeps_windows_open_and_late_records_change_nothing() {
        let mut op = window(json!({"type": "tumbling", "size": "10s", "grace": "2s"}));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", 5_000, 0).is_empty());
        assert!(feed(&mut op, &mut f, "a", 11_000, 0).is_empty());
        assert!(
            feed(&mut op, &mut f, "a", 9_000, 0).is_empty(),
            "within grace"
        );
        assert_eq!(
            feed(&mut op, &mut f, "a", 13_000, 0),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 2})]
        );
        let before = store(&f).clone();
        let m = late(&mut op, &mut f, "a", 9_500);
        assert!(
            m.contains("9500") && m.contains("[0, 10000)") && m.contains("13000"),
            "{m}"
        );
        assert_eq!(store(&f), &before);
    }

    #[test]
    fn out_of_order_records_within_lateness_are_accepted() {
        let mut op = window(json!({"type": "tumbling", "size": "10s", "lateness": "5s"}));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", 12_000, 0).is_empty());
        assert!(feed(&mut op, &mut f, "a", 8_000, 0).is_empty());
        assert!(feed(&mut op, &mut f, "a", 14_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 16_000, 0),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 1})]
        );
        late(&mut op, &mut f, "a", 4_000);
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut op = window(json!({
            "type": "tumbling", "size": "1m", "value": "value.v",
            "aggregates": ["count", "mean", "p50", "p95", "p99"]
        }));
        let mut f = Feed::new();
        for i in 0..1_000i64 {
            // 1..=1000 in a scrambled order.
            let v = (i * 7_919) % 1_000 + 1;
            assert!(feed(&mut op, &mut f, "a", i, v).is_empty());
        }
        let out = feed(&mut op, &mut f, "a", 60_000, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["count"], json!(1_000));
        assert_eq!(out[0]["mean"], json!(500.5));
        for (name, exact) in [("p50", 500.0), ("p95", 950.0), ("p99", 990.0)] {
            let got = out[0][name].as_f64().unwrap();
            assert!((got - exact).abs() <= exact * 0.01, "{name}: {got}");
        }
    }

    #[test]
    fn partitions_keep_their_own_watermark_and_windows() {
        let mut op = window(json!({"type": "tumbling", "size": "10s"}));
        let mut f = Feed::new();
        assert!(feed(&mut op, &mut f, "a", 1_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 100_000, 0),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 1})]
        );
        // Partition 1 has its own watermark: 2s is not late there, and its
        // window of the same key holds only its own record.
        f.stores.task = 1;
        assert!(feed(&mut op, &mut f, "a", 2_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "a", 20_000, 0),
            [json!({"key": "a", "start": 0, "end": 10_000, "count": 1})]
        );
        f.stores.task = 0;
        late(&mut op, &mut f, "a", 2_000);
    }

    #[test]
    fn closing_is_bounded_per_record_and_keeps_order() {
        let mut op = window(json!({"type": "tumbling", "size": "10s"}));
        let mut f = Feed::new();
        let keys: Vec<String> = (0..BATCH + 100).map(|i| format!("k{i:05}")).collect();
        for k in &keys {
            assert!(feed(&mut op, &mut f, k, 1_000, 0).is_empty());
        }
        let first = feed(&mut op, &mut f, "z", 50_000, 0);
        assert_eq!(first.len(), BATCH);
        // The backlog is closed by arithmetic already: late, not added.
        late(&mut op, &mut f, &keys[BATCH + 50], 2_000);
        let rest = feed(&mut op, &mut f, "z", 50_001, 0);
        assert_eq!(rest.len(), 100);
        let emitted: Vec<&str> = first
            .iter()
            .chain(&rest)
            .map(|v| v["key"].as_str().unwrap())
            .collect();
        assert_eq!(emitted, keys.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(rest.iter().all(|v| v["count"] == json!(1)));
        assert_eq!(entries_with_tag(&f.stores, 0, "window-0", WINDOW), 1);
    }

    #[test]
    fn closing_scans_from_the_frontier_which_moves_only_past_handled_entries() {
        let frontier = |f: &Feed| {
            store(f)
                .entries
                .get(FRONTIER)
                .map(|b| keys::decode_time(b.as_slice().try_into().expect("a time")))
        };
        let mut op = window(json!({"type": "tumbling", "size": "10s", "grace": "1s"}));
        let mut f = Feed::new();
        let keys: Vec<String> = (0..BATCH + 10).map(|i| format!("k{i:05}")).collect();
        for k in &keys {
            assert!(feed(&mut op, &mut f, k, 1_000, 0).is_empty());
        }
        assert_eq!(frontier(&f), Some(1), "watermark 1000 − grace 1000 + 1");
        // More windows are due than one record closes: the frontier stays,
        // so the next record finds the rest.
        assert_eq!(feed(&mut op, &mut f, "z", 40_000, 0).len(), BATCH);
        assert_eq!(frontier(&f), Some(1));
        assert_eq!(feed(&mut op, &mut f, "z", 40_001, 0).len(), 10);
        assert_eq!(frontier(&f), Some(40_001 - 1_000 + 1));
        // An index entry the scan no longer reaches would never close:
        // plant one behind the frontier and see it ignored.
        let planted = index_key(5_000, b"ghost", 0);
        f.stores
            .stores
            .get_mut(&(0, "window-0".to_string()))
            .expect("the store")
            .entries
            .insert(planted.clone(), Vec::new());
        assert!(feed(&mut op, &mut f, "z", 40_002, 0).is_empty());
        assert!(store(&f).entries.contains_key(&planted));
        // Windows opened later close as before.
        assert!(feed(&mut op, &mut f, "y", 45_000, 0).is_empty());
        assert_eq!(
            feed(&mut op, &mut f, "y", 61_000, 0),
            [
                json!({"key": "y", "start": 40_000, "end": 50_000, "count": 1}),
                json!({"key": "z", "start": 40_000, "end": 50_000, "count": 3})
            ]
        );
    }

    /// Records over a few keys, mostly increasing in time with jitter.
    fn workload() -> Vec<(String, i64, i64)> {
        let mut x: u64 = 42;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let mut t = 0i64;
        (0..600)
            .map(|_| {
                t += (next() % 900) as i64;
                let jitter = (next() % 8_000) as i64;
                let key = format!("dev-{}", next() % 4);
                (key, t - jitter, (next() % 200) as i64)
            })
            .collect()
    }

    fn run_all(
        make: &dyn Fn() -> Window,
        records: &[(String, i64, i64)],
        restart_at: &[usize],
    ) -> (Vec<Result<Vec<Record>, StepError>>, MemStores) {
        let mut f = Feed::new();
        let mut op = make();
        let mut results = Vec::new();
        for (i, (key, ts, v)) in records.iter().enumerate() {
            if restart_at.contains(&i) {
                // A crash: the operator is rebuilt from its config; only
                // the stores carry over.
                op = make();
            }
            f.stores.task = i32::from(key.ends_with('3'));
            results.push(f.run(&mut op, key, json!({"v": v}), Some(*ts)));
        }
        (results, f.stores)
    }

    #[test]
    fn a_new_instance_on_the_same_stores_continues_exactly() {
        let configs = [
            json!({"type": "tumbling", "size": "5s", "lateness": "2s", "grace": "1s",
                   "value": "value.v", "aggregates": ["count", "sum", "p50"]}),
            json!({"type": "hopping", "size": "6s", "advance": "2s", "lateness": "1s",
                   "value": "value.v", "aggregates": ["max", "mean"], "emit": "update"}),
            json!({"type": "session", "gap": "1s", "lateness": "2s", "grace": "500ms",
                   "value": "value.v", "aggregates": ["count", "min", "p99"]}),
        ];
        let records = workload();
        for config in configs {
            let make = || window(config.clone());
            let (reference, reference_stores) = run_all(&make, &records, &[]);
            let outputs = reference
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .flatten()
                .count();
            let lates = reference
                .iter()
                .filter(|r| matches!(r, Err(StepError::Late(_))))
                .count();
            assert!(
                outputs > 50 && lates > 0,
                "{config}: {outputs} outputs, {lates} late"
            );
            assert!(
                reference
                    .iter()
                    .all(|r| !matches!(r, Err(StepError::Record(_) | StepError::State(_))))
            );
            let (restarted, stores) = run_all(&make, &records, &[1, 77, 200, 201, 450]);
            assert_eq!(restarted, reference, "{config}");
            assert_eq!(stores.stores, reference_stores.stores, "{config}");
        }
    }

    #[test]
    fn records_that_cannot_be_windowed_are_record_errors() {
        let mut op = window(
            json!({"type": "tumbling", "size": "10s", "time": "value.ts",
                                   "value": "value.v", "aggregates": ["sum"]}),
        );
        let mut f = Feed::new();
        let err = |f: &mut Feed, op: &mut Window, key: &str, value: Json| match f
            .run(op, key, value, None)
        {
            Err(StepError::Record(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(&mut f, &mut op, "", json!({"ts": 1, "v": 1})).contains("rekey"));
        assert!(err(&mut f, &mut op, "a", json!({"ts": "x", "v": 1})).contains("event time"));
        assert!(err(&mut f, &mut op, "a", json!({"ts": 1, "v": "x"})).contains("number"));
        assert!(err(&mut f, &mut op, "a", json!({"ts": 1e300, "v": 1})).contains("outside"));
        assert!(f.stores.stores.values().all(|s| s.entries.is_empty()));
        // A double event time is rounded down.
        let out = f
            .run(&mut op, "a", json!({"ts": 9_999.9, "v": 2}), None)
            .unwrap();
        assert!(out.is_empty());
        let out = f
            .run(&mut op, "a", json!({"ts": 10_000.0, "v": 2}), None)
            .unwrap();
        assert_eq!(
            out[0].value,
            json!({"key": "a", "start": 0, "end": 10_000, "sum": 2.0})
        );
        // Without `time`, a record needs a timestamp.
        let mut op = window(json!({"type": "tumbling", "size": "10s"}));
        assert!(err(&mut f, &mut op, "a", json!({})).contains("timestamp"));
    }

    #[test]
    fn configuration_errors_are_clear() {
        let cases = [
            (
                json!({"type": "hopping", "size": "5s", "advance": "10s"}),
                "must not exceed `size`",
            ),
            (
                json!({"type": "hopping", "size": "5s"}),
                "`advance` is required",
            ),
            (
                json!({"type": "hopping", "size": "1h", "advance": "1s"}),
                "use a larger `advance`",
            ),
            (json!({"type": "session"}), "`gap` is required"),
            (
                json!({"type": "session", "gap": "0s"}),
                "`gap` must be more than 0",
            ),
            (
                json!({"type": "session", "gap": "1s", "size": "1s"}),
                "`size` is not used",
            ),
            (json!({"type": "tumbling"}), "`size` is required"),
            (
                json!({"type": "tumbling", "size": "1s", "advance": "1s"}),
                "type: hopping",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "gap": "1s"}),
                "`gap` is not used",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "aggregates": []}),
                "empty",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "aggregates": ["count", "p99"]}),
                "`value` is required",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "value": "value.v"}),
                "only `count`",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "value": "value.", "aggregates": ["sum"]}),
                "`value`: invalid CEL",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "grace": "1500us"}),
                "whole milliseconds",
            ),
            (
                json!({"type": "tumbling", "size": "1s", "name": "no spaces"}),
                "contains ` `",
            ),
        ];
        for (config, expected) in cases {
            let e = config_error(config.clone());
            assert!(e.contains(expected), "{config}: {e}");
        }
    }

    #[test]
    fn describe_reads_as_one_line() {
        let w = window(json!({
            "name": "hr-10s", "type": "tumbling", "size": "10s", "value": "value.hr",
            "aggregates": ["count", "mean", "p99"], "grace": "2s"
        }));
        assert_eq!(
            w.describe(),
            "window  tumbling 10s by key, count/mean/p99 of value.hr, grace 2s, emit final, store hr-10s"
        );
        assert_eq!(w.stores(), ["hr-10s"]);
        let w = window(json!({
            "type": "hopping", "size": "1m", "advance": "30s", "time": "value.ts",
            "lateness": "5s", "emit": "update"
        }));
        assert_eq!(
            w.describe(),
            "window  hopping 1m every 30s by key, count, time value.ts, lateness 5s, emit update, store window-0"
        );
        let w = window(json!({"type": "session", "gap": "30s"}));
        assert_eq!(
            w.describe(),
            "window  session gap 30s by key, count, emit final, store window-0"
        );
    }
}

//! Helpers shared by the stateful steps (`window`, `dedup`, `reduce`):
//! checked configuration values, event time and numbers from expressions,
//! and the per-task clock every one of them keeps in its store.

use std::time::Duration;

use serde_json::Value as Json;

use super::Record;
use super::keys::{self, Reader};
use crate::expr::{Expr, Input, Scope};
use crate::state::{KvStore, StateError};

/// Event times must lie within `±MAX_TIME` ms (about ±285,000 years), so
/// that time arithmetic never overflows.
pub const MAX_TIME: i64 = 1 << 53;

/// Durations are at most `MAX_DURATION` ms (about 1,100 years).
pub const MAX_DURATION: i64 = 1 << 45;

/// At most this many closed windows or expired entries are handled per
/// record, so one record never produces an unbounded amount of work; the
/// rest follow with the next records, in the same order.
pub const BATCH: usize = 1024;

/// The store name: `name` if given (checked), else `<kind>-<index>`.
pub fn store_name(name: Option<&str>, kind: &str, index: usize) -> Result<String, String> {
    let Some(name) = name else {
        return Ok(format!("{kind}-{index}"));
    };
    if name.is_empty() || name.len() > 100 {
        return Err(format!(
            "`name` must be 1 to 100 characters, not {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`name` `{name}` contains `{c}`; use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(name.to_string())
}

/// A configured duration in whole milliseconds.
pub fn millis(field: &str, d: Duration) -> Result<i64, String> {
    if !d.as_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "`{field}` must be whole milliseconds, not {}",
            humantime::format_duration(d)
        ));
    }
    i64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= MAX_DURATION)
        .ok_or_else(|| format!("`{field}` is too long (at most about 1000 years)"))
}

/// Milliseconds as a readable duration (`10s`, `1m 30s`).
pub fn show(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.unsigned_abs())).to_string()
}

/// Compiles an optional expression, naming the field in errors.
pub fn compile(field: &str, source: Option<&str>) -> Result<Option<Expr>, String> {
    source
        .map(|s| Expr::compile(s).map_err(|e| format!("`{field}`: {e}")))
        .transpose()
}

/// The record key, required by keyed steps.
pub fn record_key(record: &Record, kind: &str) -> Result<Vec<u8>, String> {
    record.key.clone().ok_or_else(|| {
        format!("{kind} needs a record key and this record has none (add a `rekey` step before it)")
    })
}

/// The event time: the `time` expression (int or double milliseconds,
/// rounded down), else the record timestamp.
pub fn event_time(time: Option<&Expr>, scope: &Scope, input: &Input<'_>) -> Result<i64, String> {
    let t = match time {
        None => input.timestamp.ok_or_else(|| {
            "the record has no timestamp; set `time` to an expression for the event time"
                .to_string()
        })?,
        Some(expr) => match expr.eval(scope, input)? {
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    i
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN).floor();
                    if f.is_finite() && f.abs() <= MAX_TIME as f64 {
                        f as i64
                    } else {
                        return Err(format!(
                            "`{expr}` returned {n}, outside the event times supported"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "`{expr}` must return the event time in milliseconds (a number), returned {other}"
                ));
            }
        },
    };
    if t.abs() > MAX_TIME {
        return Err(format!(
            "event time {t} ms is outside the supported range (±{MAX_TIME} ms)"
        ));
    }
    Ok(t)
}

/// A number to aggregate.
pub fn number(expr: &Expr, scope: &Scope, input: &Input<'_>) -> Result<f64, String> {
    match expr.eval(scope, input)? {
        Json::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("`{expr}` returned {n}, which is not a finite number")),
        other => Err(format!("`{expr}` must return a number, returned {other}")),
    }
}

/// The error for an entry that cannot be decoded: the state is damaged,
/// which is not the record's fault.
pub fn corrupt(store: &str, what: &str, detail: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!(
        "state store `{store}` holds an undecodable {what}: {detail}"
    ))
}

/// Key of the clock entry (section tag `m`, for metadata).
pub const CLOCK_KEY: &[u8] = b"m";

/// The event-time clock of one task: the largest event time seen and the
/// watermark (largest event time minus the allowed lateness, never moving
/// back). Stored under [`CLOCK_KEY`] as two encoded times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub max_time: i64,
    pub watermark: i64,
}

impl Clock {
    /// The task's clock, `None` before its first record.
    pub fn read(store: &dyn KvStore, name: &str) -> Result<Option<Clock>, StateError> {
        let Some(bytes) = store.get(CLOCK_KEY)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&bytes);
        match (r.time(), r.time(), r.is_empty()) {
            (Some(max_time), Some(watermark), true) => Ok(Some(Clock {
                max_time,
                watermark,
            })),
            _ => Err(corrupt(name, "clock", format!("{} bytes", bytes.len()))),
        }
    }

    /// The clock after an event at `t`.
    pub fn advance(previous: Option<Clock>, t: i64, lateness: i64) -> Clock {
        match previous {
            None => Clock {
                max_time: t,
                watermark: t - lateness,
            },
            Some(c) => {
                let max_time = c.max_time.max(t);
                Clock {
                    max_time,
                    watermark: c.watermark.max(max_time - lateness),
                }
            }
        }
    }

    /// Stores the clock if it changed.
    pub fn write(self, previous: Option<Clock>, store: &mut dyn KvStore) {
        if previous != Some(self) {
            let mut bytes = Vec::with_capacity(2 * keys::TIME_LEN);
            keys::push_time(&mut bytes, self.max_time);
            keys::push_time(&mut bytes, self.watermark);
            store.put(CLOCK_KEY, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;

    #[test]
    fn clock_is_monotonic_and_round_trips() {
        let c = Clock::advance(None, 100, 10);
        assert_eq!(
            c,
            Clock {
                max_time: 100,
                watermark: 90
            }
        );
        let d = Clock::advance(Some(c), 50, 10);
        assert_eq!(d, c);
        // A smaller lateness after a restart never moves the watermark back.
        let e = Clock::advance(
            Some(Clock {
                max_time: 100,
                watermark: 95,
            }),
            101,
            10,
        );
        assert_eq!(
            e,
            Clock {
                max_time: 101,
                watermark: 95
            }
        );
        let mut store = MemStore::default();
        e.write(None, &mut store);
        assert_eq!(Clock::read(&store, "s"), Ok(Some(e)));
        store.put(CLOCK_KEY, b"short");
        assert!(Clock::read(&store, "s").is_err());
    }

    #[test]
    fn config_values_are_checked() {
        assert_eq!(store_name(None, "window", 3), Ok("window-3".into()));
        assert_eq!(store_name(Some("hr-10s"), "window", 3), Ok("hr-10s".into()));
        assert!(store_name(Some("a b"), "window", 3).is_err());
        assert!(store_name(Some(""), "window", 3).is_err());
        assert_eq!(millis("size", Duration::from_secs(10)), Ok(10_000));
        assert!(millis("size", Duration::from_micros(1_500)).is_err());
        assert!(millis("size", Duration::from_secs(u64::MAX / 4)).is_err());
        assert_eq!(show(90_000), "1m 30s");
    }
}

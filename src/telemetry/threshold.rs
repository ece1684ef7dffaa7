//! Threshold alerts: a per-key state machine that raises an alert when a
//! value crosses a limit and has stayed beyond it long enough, and a clear
//! event once the value is back inside by a margin.
//!
//! - **Limits.** `above` and/or `below`: a value `> above` or `< below` is a
//!   breach. With both, the alert is "out of range".
//! - **Minimum duration.** A breach must hold, on every reading, for
//!   `min_duration_ms` of *event time* (from the first breaching reading's
//!   timestamp to the current one) before the alert fires; a reading back
//!   inside the limit before then cancels it. So a single spike does not alert.
//!   Being pure, the machine only moves on readings: with sparse readings the
//!   alert fires on the first reading at or past the duration.
//! - **Hysteresis.** Once alerting, the value must come back inside the limit
//!   by `hysteresis` (`<= above - hysteresis`, `>= below + hysteresis`) to
//!   clear, so a value hovering at the limit does not flap alert/clear.
//! - **Order.** Readings are expected in event-time order. A reading older
//!   than the last one accepted is ignored (returns `None`, state unchanged):
//!   the durations are measured in event time and cannot be rewound, and a
//!   late reading says nothing about the present. Equal timestamps are fine.
//!   A NaN reading is ignored too (no information).
//!
//! [`ThresholdState`] is small and `Serialize`, for one entry per key in the
//! state store; the [`ThresholdConfig`] is shared by all keys and passed in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// When to alert. Shared by every key of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Alert when the value is greater than this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Alert when the value is less than this.
    #[serde(default)]
    pub below: Option<f64>,
    /// How far back inside the limit the value must come to clear (≥ 0).
    #[serde(default)]
    pub hysteresis: f64,
    /// How long, in event time, the breach must hold before alerting (≥ 0).
    #[serde(default)]
    pub min_duration_ms: i64,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdConfigError(String);

impl fmt::Display for ThresholdConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "threshold: {}", self.0)
    }
}

impl std::error::Error for ThresholdConfigError {}

impl ThresholdConfig {
    /// Checks that the limits are finite, at least one is set, the durations
    /// are non-negative, and some value can clear an alert.
    pub fn validate(&self) -> Result<(), ThresholdConfigError> {
        let err = |why: String| Err(ThresholdConfigError(why));
        if self.above.is_none() && self.below.is_none() {
            return err("set `above`, `below` or both".into());
        }
        for (name, limit) in [("above", self.above), ("below", self.below)] {
            if limit.is_some_and(|l| !l.is_finite()) {
                return err(format!("`{name}` must be a finite number"));
            }
        }
        if !(self.hysteresis.is_finite() && self.hysteresis >= 0.0) {
            return err(format!(
                "`hysteresis` must be a finite number >= 0, not {}",
                self.hysteresis
            ));
        }
        if self.min_duration_ms < 0 {
            return err(format!(
                "`min_duration_ms` must be >= 0, not {}",
                self.min_duration_ms
            ));
        }
        if let (Some(above), Some(below)) = (self.above, self.below)
            && below + self.hysteresis > above - self.hysteresis
        {
            return err(format!(
                "no value could clear an alert: `below` + hysteresis ({}) is above \
                 `above` - hysteresis ({})",
                below + self.hysteresis,
                above - self.hysteresis
            ));
        }
        Ok(())
    }

    /// Which limit `value` breaches, if any.
    fn breach(&self, value: f64) -> Option<(Side, f64)> {
        if let Some(above) = self.above
            && value > above
        {
            return Some((Side::Above, above));
        }
        if let Some(below) = self.below
            && value < below
        {
            return Some((Side::Below, below));
        }
        None
    }

    /// Whether `value` is inside every limit by the hysteresis margin.
    fn recovered(&self, value: f64) -> bool {
        self.above.is_none_or(|a| value <= a - self.hysteresis)
            && self.below.is_none_or(|b| value >= b + self.hysteresis)
    }
}

/// Which limit was breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The value went above `above`.
    Above,
    /// The value went below `below`.
    Below,
}

/// What the state machine reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The breach held for the minimum duration.
    Alert {
        /// Which limit was crossed.
        side: Side,
        /// The limit that was crossed.
        limit: f64,
        /// When the breach began (first breaching reading), ms.
        since_ms: i64,
        /// The reading that fired the alert, ms.
        at_ms: i64,
        /// The value of that reading.
        value: f64,
    },
    /// The value came back inside by the hysteresis margin.
    Clear {
        /// Which limit had been crossed.
        side: Side,
        /// When the breach began, as in the alert, ms.
        since_ms: i64,
        /// The reading that cleared it, ms.
        at_ms: i64,
        /// The value of that reading.
        value: f64,
        /// The value farthest beyond the limit during the episode.
        worst: f64,
    },
}

/// Where a key is in its breach/alert cycle.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    /// Inside the limits.
    #[default]
    Normal,
    /// Breaching since `since_ms`, not yet for the minimum duration.
    Pending {
        side: Side,
        limit: f64,
        since_ms: i64,
        worst: f64,
    },
    /// Alert raised, not yet cleared.
    Alerting {
        side: Side,
        since_ms: i64,
        worst: f64,
    },
}

/// The state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ThresholdState {
    /// Timestamp of the last reading taken, ms.
    last_ms: Option<i64>,
    phase: Phase,
}

/// The reading farther beyond the limit on `side`.
fn worse(side: Side, a: f64, b: f64) -> f64 {
    match side {
        Side::Above => a.max(b),
        Side::Below => a.min(b),
    }
}

impl ThresholdState {
    /// Whether an alert is raised and not cleared.
    pub fn is_alerting(&self) -> bool {
        matches!(self.phase, Phase::Alerting { .. })
    }

    /// Timestamp of the last reading taken into account, ms.
    pub fn last_ms(&self) -> Option<i64> {
        self.last_ms
    }

    /// Takes one reading; returns the event it causes, if any. Readings
    /// older than the last one, and NaN, are ignored (see the module docs).
    /// `config` must have passed [`ThresholdConfig::validate`].
    pub fn update(&mut self, config: &ThresholdConfig, t_ms: i64, value: f64) -> Option<Event> {
        if value.is_nan() || self.last_ms.is_some_and(|last| t_ms < last) {
            return None;
        }
        self.last_ms = Some(t_ms);
        match self.phase {
            Phase::Normal => {
                let (side, limit) = config.breach(value)?;
                self.phase = Phase::Pending {
                    side,
                    limit,
                    since_ms: t_ms,
                    worst: value,
                };
                self.fire_if_due(config, t_ms, value)
            }
            Phase::Pending {
                side,
                limit,
                since_ms,
                worst,
            } => {
                if config.breach(value).is_none() {
                    // The breach did not hold: start over.
                    self.phase = Phase::Normal;
                    return None;
                }
                self.phase = Phase::Pending {
                    side,
                    limit,
                    since_ms,
                    worst: worse(side, worst, value),
                };
                self.fire_if_due(config, t_ms, value)
            }
            Phase::Alerting {
                side,
                since_ms,
                worst,
            } => {
                if config.recovered(value) {
                    self.phase = Phase::Normal;
                    Some(Event::Clear {
                        side,
                        since_ms,
                        at_ms: t_ms,
                        value,
                        worst,
                    })
                } else {
                    self.phase = Phase::Alerting {
                        side,
                        since_ms,
                        worst: worse(side, worst, value),
                    };
                    None
                }
            }
        }
    }

    /// Raises the alert once a pending breach has lasted long enough.
    fn fire_if_due(&mut self, config: &ThresholdConfig, t_ms: i64, value: f64) -> Option<Event> {
        let Phase::Pending {
            side,
            limit,
            since_ms,
            worst,
        } = self.phase
        else {
            return None;
        };
        if t_ms.saturating_sub(since_ms) < config.min_duration_ms {
            return None;
        }
        self.phase = Phase::Alerting {
            side,
            since_ms,
            worst,
        };
        Some(Event::Alert {
            side,
            limit,
            since_ms,
            at_ms: t_ms,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        above: Option<f64>,
        below: Option<f64>,
        hysteresis: f64,
        min_ms: i64,
    ) -> ThresholdConfig {
        let c = ThresholdConfig {
            above,
            below,
            hysteresis,
            min_duration_ms: min_ms,
        };
        c.validate().expect("valid config");
        c
    }

    /// Feeds `(t, value)` readings; returns the events with their reading index.
    fn run(
        c: &ThresholdConfig,
        state: &mut ThresholdState,
        readings: &[(i64, f64)],
    ) -> Vec<(usize, Event)> {
        readings
            .iter()
            .enumerate()
            .filter_map(|(i, &(t, v))| state.update(c, t, v).map(|e| (i, e)))
            .collect()
    }

    fn kinds(events: &[(usize, Event)]) -> Vec<(usize, &'static str)> {
        events
            .iter()
            .map(|(i, e)| {
                (
                    *i,
                    match e {
                        Event::Alert { .. } => "alert",
                        Event::Clear { .. } => "clear",
                    },
                )
            })
            .collect()
    }

    #[test]
    fn alerts_on_crossing_and_clears_on_recovery() {
        let c = config(Some(120.0), None, 0.0, 0);
        let mut s = ThresholdState::default();
        let events = run(
            &c,
            &mut s,
            &[
                (0, 80.0),
                (1000, 120.0),
                (2000, 130.0),
                (3000, 140.0),
                (4000, 119.0),
            ],
        );
        assert_eq!(
            events,
            vec![
                (
                    2,
                    Event::Alert {
                        side: Side::Above,
                        limit: 120.0,
                        since_ms: 2000,
                        at_ms: 2000,
                        value: 130.0
                    }
                ),
                (
                    4,
                    Event::Clear {
                        side: Side::Above,
                        since_ms: 2000,
                        at_ms: 4000,
                        value: 119.0,
                        worst: 140.0
                    }
                ),
            ]
        );
        assert!(!s.is_alerting());
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        // Heart rate hovering around the 120 bpm limit, then settling at 110.
        let hovering: Vec<(i64, f64)> = (0..40)
            .map(|i| (i * 1000, if i % 2 == 0 { 121.0 } else { 119.0 }))
            .chain([(40_000, 117.5), (41_000, 110.0)])
            .collect();

        let flappy = config(Some(120.0), None, 0.0, 0);
        let events = run(&flappy, &mut ThresholdState::default(), &hovering);
        assert_eq!(
            events.len(),
            40,
            "without hysteresis every crossing is an event"
        );

        let steady = config(Some(120.0), None, 3.0, 0);
        let events = run(&steady, &mut ThresholdState::default(), &hovering);
        assert_eq!(kinds(&events), vec![(0, "alert"), (41, "clear")]);
    }

    #[test]
    fn breach_must_last_the_minimum_duration() {
        let c = config(Some(100.0), None, 0.0, 5000);
        let mut s = ThresholdState::default();
        // A 3 s spike: no alert.
        let spike = [
            (0, 90.0),
            (1000, 150.0),
            (2000, 150.0),
            (4000, 150.0),
            (5000, 95.0),
        ];
        assert!(run(&c, &mut s, &spike).is_empty());
        assert!(!s.is_alerting());
        // A sustained breach alerts at the first reading 5 s after it began.
        let sustained = [
            (10_000, 101.0),
            (12_000, 104.0),
            (14_999, 103.0),
            (15_000, 102.0),
            (16_000, 120.0),
        ];
        let events = run(&c, &mut s, &sustained);
        assert_eq!(
            events,
            vec![(
                3,
                Event::Alert {
                    side: Side::Above,
                    limit: 100.0,
                    since_ms: 10_000,
                    at_ms: 15_000,
                    value: 102.0
                }
            )]
        );
        // The clear reports the worst value of the whole episode.
        let events = run(&c, &mut s, &[(17_000, 99.0)]);
        assert!(
            matches!(events[0].1, Event::Clear { worst, since_ms: 10_000, .. } if worst == 120.0)
        );
    }

    #[test]
    fn a_dip_back_inside_restarts_the_duration() {
        let c = config(Some(100.0), None, 0.0, 3000);
        let mut s = ThresholdState::default();
        let readings = [
            (0, 110.0),
            (2000, 110.0),
            (2500, 100.0),
            (3000, 110.0),
            (5500, 110.0),
            (6000, 110.0),
        ];
        let events = run(&c, &mut s, &readings);
        assert!(
            matches!(
                events[..],
                [(
                    5,
                    Event::Alert {
                        since_ms: 3000,
                        at_ms: 6000,
                        ..
                    }
                )]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn below_and_range_limits() {
        // SpO2 below 90 %, clear at 92 %.
        let c = config(None, Some(90.0), 2.0, 0);
        let mut s = ThresholdState::default();
        let events = run(
            &c,
            &mut s,
            &[(0, 95.0), (1, 89.0), (2, 85.0), (3, 91.0), (4, 92.0)],
        );
        assert_eq!(kinds(&events), vec![(1, "alert"), (4, "clear")]);
        assert!(
            matches!(events[1].1, Event::Clear { side: Side::Below, worst, .. } if worst == 85.0)
        );

        // Out of range on either side; a jump across keeps one alert.
        let c = config(Some(100.0), Some(50.0), 5.0, 0);
        let mut s = ThresholdState::default();
        let events = run(
            &c,
            &mut s,
            &[
                (0, 70.0),
                (1, 40.0),
                (2, 110.0),
                (3, 96.0),
                (4, 95.0),
                (5, 101.0),
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![(1, "alert"), (4, "clear"), (5, "alert")]
        );
        assert!(
            matches!(events[0].1, Event::Alert { side: Side::Below, limit, .. } if limit == 50.0)
        );
        assert!(matches!(
            events[2].1,
            Event::Alert {
                side: Side::Above,
                ..
            }
        ));
    }

    #[test]
    fn late_and_nan_readings_are_ignored() {
        let c = config(Some(100.0), None, 0.0, 2000);
        let mut s = ThresholdState::default();
        assert_eq!(s.update(&c, 10_000, 150.0), None);
        // A late reading inside the limit does not cancel the pending breach,
        // and a late breaching one does not back-date it.
        assert_eq!(s.update(&c, 9_000, 50.0), None);
        assert_eq!(s.update(&c, 5_000, 150.0), None);
        assert_eq!(s.update(&c, 11_000, f64::NAN), None);
        assert_eq!(s.last_ms(), Some(10_000));
        // Same timestamp again is a normal reading.
        assert_eq!(s.update(&c, 10_000, 140.0), None);
        let event = s.update(&c, 12_000, 130.0);
        assert!(matches!(
            event,
            Some(Event::Alert {
                since_ms: 10_000,
                at_ms: 12_000,
                ..
            })
        ));
    }

    #[test]
    fn state_survives_serialization_mid_episode() {
        let c = config(Some(100.0), None, 2.0, 1000);
        let readings: Vec<(i64, f64)> = (0..60)
            .map(|i| (i * 250, 95.0 + 10.0 * ((i as f64) / 6.0).sin()))
            .collect();
        let reference = run(&c, &mut ThresholdState::default(), &readings);
        assert!(
            reference.len() >= 4,
            "the fixture has episodes: {reference:?}"
        );

        let mut s = ThresholdState::default();
        let mut events = Vec::new();
        for (i, &(t, v)) in readings.iter().enumerate() {
            let json = serde_json::to_string(&s).expect("serializes");
            s = serde_json::from_str(&json).expect("deserializes");
            if let Some(e) = s.update(&c, t, v) {
                events.push((i, e));
            }
        }
        assert_eq!(events, reference);
        assert!(serde_json::to_string(&s).expect("serializes").len() < 160);
    }

    #[test]
    fn events_serialize_with_a_tag() {
        let e = Event::Alert {
            side: Side::Above,
            limit: 120.0,
            since_ms: 1,
            at_ms: 2,
            value: 130.0,
        };
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"event": "alert", "side": "above", "limit": 120.0,
                               "since_ms": 1, "at_ms": 2, "value": 130.0})
        );
    }

    #[test]
    fn unusable_configs_are_refused() {
        let bad = |c: ThresholdConfig| c.validate().expect_err("invalid").to_string();
        let base = ThresholdConfig {
            above: Some(100.0),
            below: None,
            hysteresis: 0.0,
            min_duration_ms: 0,
        };
        assert!(
            bad(ThresholdConfig {
                above: None,
                ..base.clone()
            })
            .contains("above")
        );
        assert!(
            bad(ThresholdConfig {
                above: Some(f64::INFINITY),
                ..base.clone()
            })
            .contains("finite")
        );
        assert!(
            bad(ThresholdConfig {
                hysteresis: -1.0,
                ..base.clone()
            })
            .contains("hysteresis")
        );
        assert!(
            bad(ThresholdConfig {
                min_duration_ms: -5,
                ..base.clone()
            })
            .contains("min_duration_ms")
        );
        assert!(
            bad(ThresholdConfig {
                below: Some(96.0),
                hysteresis: 3.0,
                ..base.clone()
            })
            .contains("clear")
        );
        let parsed: ThresholdConfig =
            serde_json::from_str(r#"{"above": 120, "hysteresis": 5}"#).expect("parses");
        assert_eq!(parsed.min_duration_ms, 0);
        assert!(serde_json::from_str::<ThresholdConfig>(r#"{"abve": 120}"#).is_err());
    }
}

//! Telemetry steps, thin wrappers that keep per-key state of the pure
//! signal code in [`crate::telemetry`] in a store:
//!
//! - `rpeaks`: R-peak detection on waveform batches (`format: waveform`
//!   sources decode to `{"device", "t0", "rate", "samples"}`); emits one
//!   record per beat: `{"device", "t", "rr_ms", "hr", "hr_rolling"}` with
//!   the beat's time as timestamp. The detector of each key (a few KB) is
//!   stored after every batch, so detection continues exactly across
//!   crashes and rebalances.
//! - `threshold`: an alert when a number crosses a limit for a minimum
//!   time, and a clear event when it is back inside by the hysteresis;
//!   emits `{"key", "event": "alert"|"clear", "side", "limit", "since_ms",
//!   "at_ms", "value"[, "worst"]}`.
//!
//! Both consume their input: their outputs are the events.
//!
//! # Store layout
//!
//! One store per step (default `rpeaks-<index>` / `threshold-<index>`), per
//! task: the record key as is → the key's state as JSON.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use tracing::debug;

use super::stateful::{self, corrupt};
use super::{Operator, Record, StepContext, StepError, input};
use crate::config::{RpeaksConfig, ThresholdStepConfig};
use crate::expr::Expr;
use crate::state::{KvStore, StateError};
use crate::telemetry::rpeaks::{Detector, DetectorConfig, PushError};
use crate::telemetry::threshold::{ThresholdConfig, ThresholdState};
use crate::telemetry::waveform;

fn load<T: DeserializeOwned>(
    store: &dyn KvStore,
    name: &str,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    match store.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(name, "entry", e)),
    }
}

fn save<T: Serialize>(
    store: &mut dyn KvStore,
    name: &str,
    key: &[u8],
    value: &T,
) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(value).map_err(|e| corrupt(name, "entry", e))?;
    store.put(key, &bytes);
    Ok(())
}

/// The `rpeaks` step.
#[derive(Debug)]
pub struct Rpeaks {
    store: String,
    config: DetectorConfig,
}

impl Rpeaks {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &RpeaksConfig, index: usize) -> Result<Self, String> {
        let detector = DetectorConfig {
            refractory_ms: stateful::millis("refractory", config.refractory)? as f64,
            rolling_beats: config.rolling_beats,
            ..DetectorConfig::default()
        };
        detector.validate().map_err(|e| e.to_string())?;
        Ok(Rpeaks {
            store: stateful::store_name(config.name.as_deref(), "rpeaks", index)?,
            config: detector,
        })
    }
}

impl Operator for Rpeaks {
    fn kind(&self) -> &'static str {
        "rpeaks"
    }

    fn describe(&self) -> String {
        format!(
            "rpeaks  refractory {} ms, rolling HR over {} beats, store {}",
            self.config.refractory_ms, self.config.rolling_beats, self.store
        )
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    /// Its events come from its state (see [`Operator::emits_state`]).
    fn emits_state(&self) -> bool {
        true
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let batch = waveform::from_json(&record.value).map_err(|e| {
            format!("rpeaks needs a waveform batch (a `format: waveform` source): {e}")
        })?;
        let key = record
            .key
            .clone()
            .unwrap_or_else(|| batch.device.as_bytes().to_vec());
        let store = ctx.stores.store(&self.store)?;
        let mut detector = match load::<Detector>(store, &self.store, &key)? {
            // A detector saved under other settings starts afresh.
            Some(d) if *d.config() == self.config => d,
            _ => Detector::new(self.config.clone()).map_err(|e| e.to_string())?,
        };
        let beats = match detector.push(batch.first_sample_ms, batch.sample_rate, &batch.samples) {
            Ok(beats) => beats,
            Err(e @ PushError::Backwards { .. }) => {
                // A duplicate or replayed batch: the detector is past it.
                debug!(device = %batch.device, error = %e, "batch skipped");
                return Ok(());
            }
            Err(e) => return Err(StepError::Record(e.to_string())),
        };
        save(store, &self.store, &key, &detector)?;
        for beat in beats {
            out.push(Record {
                key: Some(key.clone()),
                value: json!({
                    "device": batch.device,
                    "t": beat.t_ms,
                    "rr_ms": beat.rr_ms,
                    "hr": beat.hr_instant,
                    "hr_rolling": beat.hr_rolling,
                }),
                timestamp: Some(beat.t_ms),
                route: record.route.clone(),
            });
        }
        Ok(())
    }
}

/// The `threshold` step.
#[derive(Debug)]
pub struct Threshold {
    store: String,
    value: Expr,
    time: Option<Expr>,
    config: ThresholdConfig,
}

impl Threshold {
    /// Builds the step at `index` in `steps`, checking the configuration.
    pub fn new(config: &ThresholdStepConfig, index: usize) -> Result<Self, String> {
        let limits = ThresholdConfig {
            above: config.above,
            below: config.below,
            hysteresis: config.hysteresis,
            min_duration_ms: stateful::millis("for", config.min_duration)?,
        };
        limits.validate().map_err(|e| e.to_string())?;
        Ok(Threshold {
            store: stateful::store_name(config.name.as_deref(), "threshold", index)?,
            value: Expr::compile(&config.value).map_err(|e| format!("`value`: {e}"))?,
            time: stateful::compile("time", config.time.as_deref())?,
            config: limits,
        })
    }
}

impl Operator for Threshold {
    fn kind(&self) -> &'static str {
        "threshold"
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("{}", self.value)];
        if let Some(a) = self.config.above {
            parts.push(format!("above {a}"));
        }
        if let Some(b) = self.config.below {
            parts.push(format!("below {b}"));
        }
        parts.push(format!(
            "hysteresis {}, for {} ms, store {}",
            self.config.hysteresis, self.config.min_duration_ms, self.store
        ));
        format!("threshold {}", parts.join(", "))
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    /// Its events come from its state (see [`Operator::emits_state`]).
    fn emits_state(&self) -> bool {
        true
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let key = stateful::record_key(&record, "threshold")?;
        let (value, t) = {
            let input = input(ctx.origin, &record);
            (
                stateful::number(&self.value, ctx.scope, &input)?,
                stateful::event_time(self.time.as_ref(), ctx.scope, &input)?,
            )
        };
        let store = ctx.stores.store(&self.store)?;
        let mut state: ThresholdState = load(store, &self.store, &key)?.unwrap_or_default();
        let event = state.update(&self.config, t, value);
        save(store, &self.store, &key, &state)?;
        if let Some(event) = event {
            let mut fields = serde_json::to_value(&event).unwrap_or(Json::Null);
            if let Json::Object(map) = &mut fields {
                map.insert(
                    "key".into(),
                    Json::String(String::from_utf8_lossy(&key).into_owned()),
                );
            }
            out.push(Record {
                key: Some(key),
                value: fields,
                timestamp: Some(t),
                route: record.route,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::test_util::Feed;
    use crate::telemetry::ecg::{EcgSynth, HrSchedule, NoiseConfig};
    use std::time::Duration;

    #[test]
    fn rpeaks_finds_the_heart_rate_across_batches_and_state_reloads() {
        let mut step = Rpeaks::new(
            &RpeaksConfig {
                name: None,
                refractory: Duration::from_millis(200),
                rolling_beats: 8,
            },
            0,
        )
        .expect("builds");
        let schedule = HrSchedule::constant(72.0).expect("schedule");
        let mut ecg = EcgSynth::new(3, 250.0, schedule, NoiseConfig::noisy()).expect("synth");
        let mut feed = Feed::new();
        let t0 = 1_700_000_000_000;
        let mut beats = Vec::new();
        for i in 0..(30 * 250 / 50) {
            let batch = waveform::Batch {
                device: "d1".into(),
                first_sample_ms: t0 + i * 200,
                sample_rate: 250.0,
                samples: ecg.next_samples(50),
            };
            // The step sees only the stored state between batches, as after
            // a crash.
            beats.extend(
                feed.run(&mut step, "d1", waveform::to_json(&batch), Some(t0))
                    .expect("runs"),
            );
        }
        let rolling: Vec<f64> = beats
            .iter()
            .filter_map(|b| b.value["hr_rolling"].as_f64())
            .collect();
        assert!(rolling.len() > 25, "{} beats", rolling.len());
        let last = rolling[rolling.len() - 1];
        assert!((last - 72.0).abs() <= 2.0, "rolling HR {last}");
        // Replaying an old batch is skipped, not an error.
        let old = waveform::Batch {
            device: "d1".into(),
            first_sample_ms: t0,
            sample_rate: 250.0,
            samples: vec![0.0; 50],
        };
        assert!(
            feed.run(&mut step, "d1", waveform::to_json(&old), Some(t0))
                .expect("skips")
                .is_empty()
        );
        // Something else is refused.
        assert!(
            feed.run(&mut step, "d1", json!({"hr": 1}), Some(t0))
                .is_err()
        );
    }

    #[test]
    fn threshold_alerts_after_the_duration_and_clears_with_hysteresis() {
        let mut step = Threshold::new(
            &ThresholdStepConfig {
                name: None,
                value: "value.hr".into(),
                above: Some(140.0),
                below: None,
                hysteresis: 5.0,
                min_duration: Duration::from_secs(2),
                time: None,
            },
            0,
        )
        .expect("builds");
        let mut feed = Feed::new();
        let mut events = Vec::new();
        for (t, hr) in [
            (0, 120),
            (1_000, 150),
            (2_000, 150),
            (3_000, 151),
            (4_000, 138),
            (5_000, 134),
        ] {
            for r in feed
                .run(&mut step, "d", json!({ "hr": hr }), Some(t))
                .expect("runs")
            {
                events.push((
                    r.value["event"].as_str().unwrap_or_default().to_string(),
                    r.value["at_ms"].as_i64(),
                ));
            }
        }
        assert_eq!(
            events,
            [
                ("alert".to_string(), Some(3_000)),
                ("clear".to_string(), Some(5_000))
            ]
        );
    }
}

//! A simulated fleet of patient monitors with known ground truth: what
//! `millrace gen` produces, as records, for any span of time. Pure: the
//! caller decides when to ask and where to send.
//!
//! Every device has a base heart rate; every `anomaly_every`-th device has a
//! tachycardia episode, and every `silence_every`-th device goes silent for
//! a while and comes back. All of it follows from the seed, and
//! [`Fleet::truth`] says what was injected and when, so tests and the demo
//! can check what the pipelines report.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::telemetry::ecg::{EcgError, EcgSynth, HrSchedule, NoiseConfig};
use crate::telemetry::waveform::{self, Batch};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub seed: u64,
    /// Waveform samples per second.
    pub sample_rate: f64,
    /// Samples per waveform record.
    pub batch: usize,
    /// Milliseconds between two vitals readings of a device.
    pub vitals_every_ms: i64,
    /// Every n-th device (1-based: device n-1, 2n-1, ...) gets a
    /// tachycardia episode; 0 for none.
    pub anomaly_every: usize,
    /// Every n-th device goes silent for a while; 0 for none.
    pub silence_every: usize,
    /// Wall-clock time of the first sample, ms since the epoch.
    pub start_ms: i64,
}

/// What a device was made to do, in seconds from the start.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceTruth {
    pub device: String,
    pub base_bpm: f64,
    /// `(from_s, to_s, bpm)`: a tachycardia episode.
    pub anomaly: Option<(f64, f64, f64)>,
    /// `(from_s, to_s)`: the device sends nothing.
    pub silence: Option<(f64, f64)>,
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRecord {
    pub kind: Stream,
    pub key: String,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
}

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Waveform,
    Vitals,
}

struct Device {
    truth: DeviceTruth,
    schedule: HrSchedule,
    synth: EcgSynth,
    /// Samples produced or skipped so far.
    samples: u64,
    next_vitals_ms: i64,
    battery: f64,
    rng: StdRng,
}

/// The simulated fleet.
pub struct Fleet {
    config: FleetConfig,
    devices: Vec<Device>,
}

/// When injected events happen, in seconds from the start.
const ANOMALY_FROM_S: f64 = 20.0;
const ANOMALY_TO_S: f64 = 50.0;
const ANOMALY_BPM: f64 = 165.0;
const SILENCE_FROM_S: f64 = 30.0;
const SILENCE_TO_S: f64 = 45.0;

impl Fleet {
    pub fn new(config: FleetConfig) -> Result<Fleet, EcgError> {
        let mut seeds = StdRng::seed_from_u64(config.seed);
        let mut devices = Vec::with_capacity(config.devices);
        for i in 0..config.devices {
            let mut rng = StdRng::seed_from_u64(seeds.random());
            let base_bpm = f64::from(rng.random_range(58..96u32));
            let nth = |every: usize| every > 0 && (i + 1) % every == 0;
            let anomaly =
                nth(config.anomaly_every).then_some((ANOMALY_FROM_S, ANOMALY_TO_S, ANOMALY_BPM));
            let silence = nth(config.silence_every).then_some((SILENCE_FROM_S, SILENCE_TO_S));
            let schedule = match anomaly {
                Some((from, to, bpm)) => {
                    HrSchedule::segments(vec![(0.0, base_bpm), (from, bpm), (to, base_bpm)])?
                }
                None => HrSchedule::constant(base_bpm)?,
            };
            let synth = EcgSynth::new(
                rng.random(),
                config.sample_rate,
                schedule.clone(),
                NoiseConfig::noisy(),
            )?;
            devices.push(Device {
                truth: DeviceTruth {
                    device: format!("monitor-{:03}", i + 1),
                    base_bpm,
                    anomaly,
                    silence,
                },
                schedule,
                synth,
                samples: 0,
                next_vitals_ms: config.start_ms,
                battery: rng.random_range(60.0..100.0),
                rng,
            });
        }
        Ok(Fleet { config, devices })
    }

    /// The injected truth of every device.
    pub fn truth(&self) -> Vec<DeviceTruth> {
        self.devices.iter().map(|d| d.truth.clone()).collect()
    }

    /// Every record whose time has come by `now_ms`: waveform batches whose
    /// last sample is at or before it, and vitals readings due. Devices in
    /// their silence produce nothing (their clock runs on).
    pub fn advance_to(&mut self, now_ms: i64) -> Vec<GenRecord> {
        let FleetConfig {
            sample_rate,
            batch,
            vitals_every_ms,
            start_ms,
            ..
        } = self.config;
        let mut out = Vec::new();
        for d in &mut self.devices {
            loop {
                let first_ms = start_ms + (d.samples as f64 * 1000.0 / sample_rate) as i64;
                let last_ms = start_ms
                    + ((d.samples + batch as u64 - 1) as f64 * 1000.0 / sample_rate) as i64;
                if last_ms > now_ms {
                    break;
                }
                let t_s = (first_ms - start_ms) as f64 / 1000.0;
                if d.truth
                    .silence
                    .is_some_and(|(from, to)| t_s >= from && t_s < to)
                {
                    d.synth.skip(batch as u64);
                } else {
                    let batch = Batch {
                        device: d.truth.device.clone(),
                        first_sample_ms: first_ms,
                        sample_rate: sample_rate as f32,
                        samples: d.synth.next_samples(batch),
                    };
                    // The configuration is checked at start, so a batch
                    // always encodes; a failure would be a bug worth a skip.
                    if let Ok(payload) = waveform::encode(&batch) {
                        out.push(GenRecord {
                            kind: Stream::Waveform,
                            key: d.truth.device.clone(),
                            payload,
                            timestamp_ms: first_ms,
                        });
                    }
                }
                d.samples += batch as u64;
            }
            while d.next_vitals_ms <= now_ms {
                let t = d.next_vitals_ms;
                d.next_vitals_ms += vitals_every_ms;
                let t_s = (t - start_ms) as f64 / 1000.0;
                if d.truth
                    .silence
                    .is_some_and(|(from, to)| t_s >= from && t_s < to)
                {
                    continue;
                }
                let bpm = d.schedule.bpm_at(t_s);
                let episode = d
                    .truth
                    .anomaly
                    .is_some_and(|(from, to, _)| t_s >= from && t_s < to);
                d.battery = (d.battery - 0.002).max(0.0);
                let value = json!({
                    "device": d.truth.device,
                    "ts": t,
                    "hr": (bpm + d.rng.random_range(-1.5..1.5)).round(),
                    "spo2": (if episode { 91.0 } else { 97.5 } + d.rng.random_range(-1.0..1.0f64)).round(),
                    "temp_c": ((36.8 + d.rng.random_range(-0.2..0.2f64)) * 10.0).round() / 10.0,
                    "battery": (d.battery * 10.0).round() / 10.0,
                });
                out.push(GenRecord {
                    kind: Stream::Vitals,
                    key: d.truth.device.clone(),
                    payload: value.to_string().into_bytes(),
                    timestamp_ms: t,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(devices: usize) -> FleetConfig {
        FleetConfig {
            devices,
            seed: 42,
            sample_rate: 250.0,
            batch: 50,
            vitals_every_ms: 1_000,
            anomaly_every: 3,
            silence_every: 4,
            start_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_fleet_is_reproducible_and_paced_by_the_clock() {
        let mut a = Fleet::new(config(4)).expect("fleet");
        let mut b = Fleet::new(config(4)).expect("fleet");
        let start = 1_700_000_000_000;
        let first = a.advance_to(start + 999);
        assert_eq!(first, b.advance_to(start + 999), "same seed, same records");
        // 1 s at 250 Hz in batches of 50: batches ending by 999 ms are the
        // first 5 (the 5th's last sample is at 996 ms), and one vitals reading.
        let waves = first.iter().filter(|r| r.kind == Stream::Waveform).count();
        let vitals = first.iter().filter(|r| r.kind == Stream::Vitals).count();
        assert_eq!((waves, vitals), (4 * 5, 4));
        assert!(a.advance_to(start + 999).is_empty(), "nothing twice");
        let batch = waveform::decode(&first[0].payload).expect("decodes");
        assert_eq!((batch.samples.len(), batch.first_sample_ms), (50, start));
    }

    #[test]
    fn injected_events_follow_the_truth() {
        let mut fleet = Fleet::new(config(4)).expect("fleet");
        let truth = fleet.truth();
        assert!(truth[2].anomaly.is_some() && truth[0].anomaly.is_none());
        assert!(truth[3].silence.is_some() && truth[1].silence.is_none());
        let start = 1_700_000_000_000;
        let records = fleet.advance_to(start + 40_000);
        let silent = &truth[3].device;
        let during = records.iter().any(|r| {
            &r.key == silent && r.timestamp_ms >= start + 30_000 && r.timestamp_ms < start + 40_000
        });
        assert!(!during, "a silent device sends nothing");
        let anomalous: Vec<f64> = records
            .iter()
            .filter(|r| r.kind == Stream::Vitals && r.key == truth[2].device)
            .filter(|r| r.timestamp_ms >= start + 25_000)
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
            .filter_map(|v| v["hr"].as_f64())
            .collect();
        assert!(
            anomalous.iter().all(|hr| (hr - ANOMALY_BPM).abs() <= 2.0),
            "{anomalous:?}"
        );
    }
}

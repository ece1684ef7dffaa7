//! A synthetic ECG with known ground truth, for `millrace gen` and for
//! testing the R-peak detector against exact beat times.
//!
//! Each beat is a sum of five Gaussian waves (P, Q, R, S, T) placed in time
//! around the beat's R peak, in the spirit of McSharry et al.'s ECGSYN (IEEE
//! TBME 2003), which sums Gaussians in phase. Placing them in *time* instead
//! keeps the QRS complex about 80 ms wide at any heart rate, as in real hearts,
//! while the T wave and the PR interval stretch with the RR interval the way
//! Bazett's QT correction describes (∝ √RR).
//!
//! What the generator knows, and therefore what tests can check:
//! - the heart rate, from an [`HrSchedule`] of `(start s, bpm)` segments, so an
//!   episode of tachycardia is just another segment;
//! - every R-peak time (`true_beats`), before jitter is rounded to samples;
//! - the beat-to-beat variability: each RR interval is the scheduled one times
//!   `1 + u`, `u` uniform in `±rr_jitter`, so the mean RR is exactly the
//!   scheduled one.
//!
//! Disturbances ([`NoiseConfig`]): white Gaussian noise at a given SNR,
//! baseline wander (a slow sinusoid, breathing and electrode drift), and
//! mains hum (50/60 Hz). Everything random comes from one seeded RNG, so a
//! device's waveform is the same on every run with the same seed.
//!
//! Time starts at 0 s at the first sample; sample `i` is at `i / rate`. The
//! caller maps that onto wall-clock timestamps.

use std::collections::VecDeque;
use std::f64::consts::PI;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Heart rates the generator accepts. Outside this the morphology stops
/// making sense (waves of neighbouring beats pile on each other).
pub const BPM_RANGE: (f64, f64) = (20.0, 250.0);

/// One wave of a beat: a Gaussian `amp · exp(-(t-centre)²/2σ²)`.
#[derive(Debug, Clone, Copy)]
struct Wave {
    /// Centre relative to the R peak, s, at RR = 1 s.
    centre_s: f64,
    /// Amplitude, mV.
    amp_mv: f64,
    /// Width σ, s, at RR = 1 s.
    sigma_s: f64,
    /// Whether centre and width stretch with √RR (atrial and repolarisation
    /// waves do; the QRS complex does not).
    stretches: bool,
}

/// A normal lead-II-like beat. Amplitudes in mV; the R wave dominates as in
/// the usual monitoring leads.
const WAVES: [Wave; 5] = [
    // P: atrial depolarisation, ~160 ms before R at 60 bpm.
    Wave {
        centre_s: -0.16,
        amp_mv: 0.12,
        sigma_s: 0.022,
        stretches: true,
    },
    Wave {
        centre_s: -0.028,
        amp_mv: -0.10,
        sigma_s: 0.008,
        stretches: false,
    },
    Wave {
        centre_s: 0.0,
        amp_mv: 1.1,
        sigma_s: 0.009,
        stretches: false,
    },
    Wave {
        centre_s: 0.028,
        amp_mv: -0.22,
        sigma_s: 0.009,
        stretches: false,
    },
    // T: repolarisation, ~260 ms after R at 60 bpm.
    Wave {
        centre_s: 0.26,
        amp_mv: 0.28,
        sigma_s: 0.045,
        stretches: true,
    },
];

/// Beats whose R peak is farther than this from a sample cannot touch it
/// (every wave is under 1e-6 of its amplitude there): P is the earliest wave,
/// T the latest, at the longest RR.
const BEFORE_R_S: f64 = 0.45;
const AFTER_R_S: f64 = 0.9;

/// Heart rate over time: `(start_s, bpm)` segments, each lasting until the
/// next one starts; the first one also covers any time before its start.
#[derive(Debug, Clone, PartialEq)]
pub struct HrSchedule {
    segments: Vec<(f64, f64)>,
    /// Fractional RR jitter: each RR is the scheduled one times `1 + u`, `u`
    /// uniform in `[-rr_jitter, rr_jitter]`.
    rr_jitter: f64,
}

impl HrSchedule {
    /// Default beat-to-beat variability: ±2 % of the RR interval.
    pub const DEFAULT_JITTER: f64 = 0.02;

    /// A constant heart rate.
    pub fn constant(bpm: f64) -> Result<Self, EcgError> {
        Self::segments(vec![(0.0, bpm)])
    }

    /// Step changes of heart rate: `(start_s, bpm)` pairs, starts strictly
    /// increasing. Example: `[(0, 75), (30, 140), (60, 75)]` is a 30 s
    /// tachycardia episode.
    pub fn segments(segments: Vec<(f64, f64)>) -> Result<Self, EcgError> {
        if segments.is_empty() {
            return Err(EcgError::EmptySchedule);
        }
        for (i, &(start, bpm)) in segments.iter().enumerate() {
            if !start.is_finite() || (i > 0 && start <= segments[i - 1].0) {
                return Err(EcgError::UnorderedSchedule { index: i });
            }
            if !(BPM_RANGE.0..=BPM_RANGE.1).contains(&bpm) {
                return Err(EcgError::BpmOutOfRange(bpm));
            }
        }
        Ok(Self {
            segments,
            rr_jitter: Self::DEFAULT_JITTER,
        })
    }

    /// Sets the fractional RR jitter (0 for a metronome); at most 0.2.
    pub fn with_jitter(mut self, rr_jitter: f64) -> Result<Self, EcgError> {
        if !(0.0..=0.2).contains(&rr_jitter) {
            return Err(EcgError::BadJitter(rr_jitter));
        }
        self.rr_jitter = rr_jitter;
        Ok(self)
    }

    /// The scheduled heart rate at time `t_s`.
    pub fn bpm_at(&self, t_s: f64) -> f64 {
        // Non-empty by construction; the first segment also covers t < start.
        let mut bpm = self.segments[0].1;
        for &(start, b) in &self.segments {
            if start <= t_s {
                bpm = b;
            } else {
                break;
            }
        }
        bpm
    }

    /// The fractional RR jitter.
    pub fn rr_jitter(&self) -> f64 {
        self.rr_jitter
    }
}

/// The disturbances added to the clean ECG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseConfig {
    /// White Gaussian noise, as signal-to-noise ratio in dB relative to the
    /// power (variance) of the clean ECG at 60 bpm; `None` for no noise. The
    /// noise level is fixed per device, so it does not change with heart rate.
    pub snr_db: Option<f64>,
    /// Baseline wander amplitude, mV (0 for none).
    pub wander_mv: f64,
    /// Baseline wander frequency, Hz (breathing is ~0.2–0.4 Hz).
    pub wander_hz: f64,
    /// Mains hum amplitude, mV (0 for none).
    pub mains_mv: f64,
    /// Mains frequency, Hz (50 or 60).
    pub mains_hz: f64,
}

impl NoiseConfig {
    /// No disturbance at all: the clean morphology.
    pub fn clean() -> Self {
        Self {
            snr_db: None,
            wander_mv: 0.0,
            wander_hz: 0.3,
            mains_mv: 0.0,
            mains_hz: 50.0,
        }
    }

    /// A plainly noisy monitor: 10 dB SNR, 0.3 mV wander at 0.3 Hz, 0.1 mV of
    /// 50 Hz hum.
    pub fn noisy() -> Self {
        Self {
            snr_db: Some(10.0),
            wander_mv: 0.3,
            wander_hz: 0.3,
            mains_mv: 0.1,
            mains_hz: 50.0,
        }
    }

    fn validate(&self) -> Result<(), EcgError> {
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let ok = self.snr_db.is_none_or(f64::is_finite)
            && finite_nonneg(self.wander_mv)
            && finite_nonneg(self.wander_hz)
            && finite_nonneg(self.mains_mv)
            && finite_nonneg(self.mains_hz);
        if ok { Ok(()) } else { Err(EcgError::BadNoise) }
    }
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self::noisy()
    }
}

/// Why a generator could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum EcgError {
    /// The sample rate is not finite and positive.
    BadRate(f64),
    /// The schedule has no segment.
    EmptySchedule,
    /// Segment `index` does not start after the one before it.
    UnorderedSchedule { index: usize },
    /// A heart rate outside [`BPM_RANGE`].
    BpmOutOfRange(f64),
    /// RR jitter outside 0..=0.2.
    BadJitter(f64),
    /// A noise parameter is negative or not finite.
    BadNoise,
}

impl fmt::Display for EcgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRate(r) => write!(f, "sample rate {r} Hz is not a finite positive number"),
            Self::EmptySchedule => write!(f, "heart-rate schedule has no segment"),
            Self::UnorderedSchedule { index } => write!(
                f,
                "heart-rate segment {index} must start after the one before it"
            ),
            Self::BpmOutOfRange(b) => write!(
                f,
                "heart rate {b} bpm is outside {}..={} bpm",
                BPM_RANGE.0, BPM_RANGE.1
            ),
            Self::BadJitter(j) => write!(f, "RR jitter {j} is outside 0..=0.2"),
            Self::BadNoise => write!(
                f,
                "noise amplitudes and frequencies must be finite and non-negative, SNR finite"
            ),
        }
    }
}

impl std::error::Error for EcgError {}

/// A scheduled beat: R-peak time and the parameters its waves depend on.
#[derive(Debug, Clone, Copy)]
struct ScheduledBeat {
    r_s: f64,
    /// √RR of the interval that ends at this beat, for the stretching waves.
    stretch: f64,
    /// Per-beat amplitude scale (small variation, like respiration).
    gain: f64,
}

/// The clean ECG of one beat at time `dt` from its R peak.
fn beat_value(dt: f64, stretch: f64, gain: f64) -> f64 {
    let mut v = 0.0;
    for w in &WAVES {
        let (centre, sigma) = if w.stretches {
            (w.centre_s * stretch, w.sigma_s * stretch)
        } else {
            (w.centre_s, w.sigma_s)
        };
        let z = (dt - centre) / sigma;
        if z.abs() < 8.0 {
            v += w.amp_mv * (-0.5 * z * z).exp();
        }
    }
    v * gain
}

/// Variance of the clean ECG at 60 bpm, mV²: the reference power for SNR.
fn reference_power() -> f64 {
    // One 1 s period, finely sampled; neighbouring beats barely overlap at 60 bpm.
    const N: usize = 4000;
    let values: Vec<f64> = (0..N)
        .map(|i| beat_value(i as f64 / N as f64 - 0.5, 1.0, 1.0))
        .collect();
    let mean = values.iter().sum::<f64>() / N as f64;
    values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / N as f64
}

/// A seeded ECG generator for one device.
pub struct EcgSynth {
    /// Draws the beats (RR jitter, amplitudes): the ground truth.
    beat_rng: StdRng,
    /// Draws the disturbances. A separate stream, so the same seed gives the
    /// same beats whatever the noise settings.
    noise_rng: StdRng,
    rate: f64,
    schedule: HrSchedule,
    noise: NoiseConfig,
    /// White-noise σ in mV (0 without noise).
    noise_sigma: f64,
    wander_phase: f64,
    mains_phase: f64,
    /// Index of the next sample to produce.
    next_index: u64,
    /// Beats whose waves may still reach the next samples, oldest first:
    /// recent ones and those scheduled up to `BEFORE_R_S` ahead of the clock.
    beats: VecDeque<ScheduledBeat>,
    /// R time of the last scheduled beat (the next is scheduled from it).
    last_r_s: f64,
    /// R-peak times already passed by produced samples, not yet drained.
    passed: Vec<f64>,
    /// Index into `beats` of the first beat not yet moved into `passed`.
    pending_from: usize,
}

impl EcgSynth {
    /// Default sample rate, Hz.
    pub const DEFAULT_RATE: f64 = 250.0;

    /// A generator with its own seeded RNG. The first R peak falls at a random
    /// point of the first RR interval, so devices with different seeds are
    /// not in step.
    pub fn new(
        seed: u64,
        rate: f64,
        schedule: HrSchedule,
        noise: NoiseConfig,
    ) -> Result<Self, EcgError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(EcgError::BadRate(rate));
        }
        noise.validate()?;
        let mut beat_rng = StdRng::seed_from_u64(seed);
        let mut noise_rng = StdRng::seed_from_u64(beat_rng.random());
        let noise_sigma = match noise.snr_db {
            Some(snr) => (reference_power() / 10f64.powf(snr / 10.0)).sqrt(),
            None => 0.0,
        };
        let wander_phase = noise_rng.random_range(0.0..2.0 * PI);
        let mains_phase = noise_rng.random_range(0.0..2.0 * PI);
        let rr0 = 60.0 / schedule.bpm_at(0.0);
        // The first beat is at least 50 ms in so its QRS is whole.
        let first_r = 0.05 + beat_rng.random_range(0.0..rr0);
        let mut synth = Self {
            beat_rng,
            noise_rng,
            rate,
            schedule,
            noise,
            noise_sigma,
            wander_phase,
            mains_phase,
            next_index: 0,
            beats: VecDeque::new(),
            last_r_s: first_r,
            passed: Vec::new(),
            pending_from: 0,
        };
        let gain = synth.beat_gain();
        synth.beats.push_back(ScheduledBeat {
            r_s: first_r,
            stretch: rr0.sqrt(),
            gain,
        });
        Ok(synth)
    }

    /// Sample rate, Hz.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The heart-rate schedule.
    pub fn schedule(&self) -> &HrSchedule {
        &self.schedule
    }

    /// White-noise standard deviation in mV that the SNR resolved to.
    pub fn noise_sigma_mv(&self) -> f64 {
        self.noise_sigma
    }

    /// Time of the next sample, s.
    pub fn now_s(&self) -> f64 {
        self.next_index as f64 / self.rate
    }

    /// The scheduled (true) heart rate at `t_s`, bpm.
    pub fn true_bpm_at(&self, t_s: f64) -> f64 {
        self.schedule.bpm_at(t_s)
    }

    /// True R-peak times (s) passed by the samples produced so far and not
    /// yet drained, in order.
    pub fn true_beats(&self) -> &[f64] {
        &self.passed
    }

    /// Takes the true R-peak times reported by [`Self::true_beats`], so a
    /// long-running generator does not keep its whole history.
    pub fn drain_true_beats(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.passed)
    }

    /// Per-beat amplitude scale: ±5 % uniform.
    fn beat_gain(&mut self) -> f64 {
        1.0 + self.beat_rng.random_range(-0.05..=0.05)
    }

    /// Schedules beats until one lies beyond `until_s`.
    fn schedule_until(&mut self, until_s: f64) {
        while self.last_r_s <= until_s {
            let jitter = self.schedule.rr_jitter;
            let u = if jitter > 0.0 {
                self.beat_rng.random_range(-jitter..=jitter)
            } else {
                0.0
            };
            let rr = 60.0 / self.schedule.bpm_at(self.last_r_s) * (1.0 + u);
            self.last_r_s += rr;
            let gain = self.beat_gain();
            self.beats.push_back(ScheduledBeat {
                r_s: self.last_r_s,
                stretch: rr.sqrt(),
                gain,
            });
        }
    }

    /// Moves beats whose R peak is before `t_s` into the ground truth (if
    /// `record`) and forgets beats that can no longer touch a sample.
    fn advance_beats(&mut self, t_s: f64, record: bool) {
        while let Some(beat) = self.beats.get(self.pending_from) {
            if beat.r_s >= t_s {
                break;
            }
            if record {
                self.passed.push(beat.r_s);
            }
            self.pending_from += 1;
        }
        while let Some(front) = self.beats.front() {
            if front.r_s + AFTER_R_S < t_s && self.pending_from > 0 {
                self.beats.pop_front();
                self.pending_from -= 1;
            } else {
                break;
            }
        }
    }

    /// The next `n` samples, mV.
    pub fn next_samples(&mut self, n: usize) -> Vec<f32> {
        // `noise_sigma` is finite and non-negative, so this is `Some` whenever
        // there is noise to add.
        let normal = Normal::new(0.0, self.noise_sigma)
            .ok()
            .filter(|_| self.noise_sigma > 0.0);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = self.next_index as f64 / self.rate;
            self.schedule_until(t + BEFORE_R_S);
            let mut v = 0.0;
            for beat in &self.beats {
                let dt = t - beat.r_s;
                if dt > -BEFORE_R_S && dt < AFTER_R_S {
                    v += beat_value(dt, beat.stretch, beat.gain);
                }
            }
            v += self.noise.wander_mv
                * (2.0 * PI * self.noise.wander_hz * t + self.wander_phase).sin();
            v +=
                self.noise.mains_mv * (2.0 * PI * self.noise.mains_hz * t + self.mains_phase).sin();
            if let Some(normal) = &normal {
                v += normal.sample(&mut self.noise_rng);
            }
            out.push(v as f32);
            self.next_index += 1;
            // Beats at or before this sample are now in the data.
            self.advance_beats(t + 0.5 / self.rate, true);
        }
        out
    }

    /// Advances the clock by `n` samples without producing them, as when a
    /// device goes silent. Beats in the silence are not ground truth (no data
    /// shows them), so they are not recorded.
    pub fn skip(&mut self, n: u64) {
        self.next_index += n;
        let t = self.next_index as f64 / self.rate;
        self.schedule_until(t + BEFORE_R_S);
        self.advance_beats(t - 0.5 / self.rate, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(seed: u64, rate: f64, bpm: f64, noise: NoiseConfig) -> EcgSynth {
        let schedule = HrSchedule::constant(bpm).expect("valid bpm");
        EcgSynth::new(seed, rate, schedule, noise).expect("valid generator")
    }

    #[test]
    fn same_seed_same_signal_other_seed_other_signal() {
        let a = synth(1, 250.0, 70.0, NoiseConfig::noisy()).next_samples(2000);
        let b = synth(1, 250.0, 70.0, NoiseConfig::noisy()).next_samples(2000);
        let c = synth(2, 250.0, 70.0, NoiseConfig::noisy()).next_samples(2000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn chunking_does_not_change_the_signal() {
        let mut one = synth(5, 250.0, 90.0, NoiseConfig::noisy());
        let whole = one.next_samples(1000);
        let mut many = synth(5, 250.0, 90.0, NoiseConfig::noisy());
        let mut parts = Vec::new();
        for n in [1, 7, 250, 742] {
            parts.extend(many.next_samples(n));
        }
        assert_eq!(whole, parts);
        assert_eq!(one.true_beats(), many.true_beats());
    }

    #[test]
    fn beats_follow_the_schedule_and_jitter_bound() {
        let mut s = synth(3, 250.0, 75.0, NoiseConfig::clean());
        s.next_samples(250 * 120);
        let beats = s.true_beats().to_vec();
        // 120 s at 75 bpm: 150 beats, give or take the start phase.
        assert!((148..=151).contains(&beats.len()), "{}", beats.len());
        let rr: Vec<f64> = beats.windows(2).map(|w| w[1] - w[0]).collect();
        for &x in &rr {
            assert!((x - 0.8).abs() <= 0.8 * 0.02 + 1e-9, "RR {x}");
        }
        let mean = rr.iter().sum::<f64>() / rr.len() as f64;
        assert!((mean - 0.8).abs() < 0.002, "mean RR {mean}");
        // Jitter is present, not a metronome.
        assert!(rr.iter().any(|&x| (x - 0.8).abs() > 0.005));
    }

    #[test]
    fn r_peak_is_the_maximum_of_a_clean_beat() {
        let mut s = synth(4, 1000.0, 60.0, NoiseConfig::clean());
        let x = s.next_samples(10_000);
        for &r in s.true_beats() {
            let i = (r * 1000.0).round() as usize;
            if i < 300 || i + 300 >= x.len() {
                continue;
            }
            let window = &x[i - 300..i + 300];
            let (argmax, max) = window
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b });
            // The Q and S waves pull the apex by under 2 ms.
            assert!(
                (argmax as i64 - 300).abs() <= 2,
                "apex off by {}",
                argmax as i64 - 300
            );
            assert!((1.0..1.25).contains(&max), "R amplitude {max}");
        }
    }

    #[test]
    fn heart_rate_steps_at_the_scheduled_time() {
        let schedule =
            HrSchedule::segments(vec![(0.0, 60.0), (20.0, 150.0)]).expect("valid schedule");
        let mut s = EcgSynth::new(9, 250.0, schedule, NoiseConfig::clean()).expect("generator");
        s.next_samples(250 * 40);
        let beats = s.true_beats();
        let before = beats.iter().filter(|&&t| t < 20.0).count();
        let after = beats.iter().filter(|&&t| t >= 20.0).count();
        assert!((19..=21).contains(&before), "{before}");
        assert!((47..=51).contains(&after), "{after}");
        assert_eq!(s.true_bpm_at(5.0), 60.0);
        assert_eq!(s.true_bpm_at(25.0), 150.0);
    }

    #[test]
    fn snr_sets_the_noise_power() {
        let mut noise = NoiseConfig::clean();
        noise.snr_db = Some(10.0);
        let mut noisy = synth(8, 250.0, 60.0, noise);
        let mut clean = synth(8, 250.0, 60.0, NoiseConfig::clean());
        let n = 250 * 60;
        let a = noisy.next_samples(n);
        let b = clean.next_samples(n);
        let signal: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
        let mean = signal.iter().sum::<f64>() / n as f64;
        let p_signal = signal.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let p_noise = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            / n as f64;
        let snr = 10.0 * (p_signal / p_noise).log10();
        assert!((snr - 10.0).abs() < 0.5, "measured SNR {snr} dB");
        // Same seed, same beats, whatever the noise.
        assert_eq!(noisy.true_beats(), clean.true_beats());
    }

    #[test]
    fn skipped_time_has_no_ground_truth() {
        let mut s = synth(6, 250.0, 60.0, NoiseConfig::clean());
        s.next_samples(250 * 5);
        let before = s.drain_true_beats();
        assert!((4..=5).contains(&before.len()));
        s.skip(250 * 10);
        s.next_samples(250 * 5);
        let after = s.true_beats();
        assert!(after.iter().all(|&t| t >= 15.0), "{after:?}");
        assert!((4..=5).contains(&after.len()));
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert_eq!(
            HrSchedule::constant(400.0),
            Err(EcgError::BpmOutOfRange(400.0))
        );
        assert_eq!(HrSchedule::segments(vec![]), Err(EcgError::EmptySchedule));
        assert_eq!(
            HrSchedule::segments(vec![(0.0, 60.0), (0.0, 70.0)]),
            Err(EcgError::UnorderedSchedule { index: 1 })
        );
        assert!(matches!(
            HrSchedule::constant(60.0).and_then(|s| s.with_jitter(0.5)),
            Err(EcgError::BadJitter(_))
        ));
        let sched = || HrSchedule::constant(60.0).expect("valid");
        assert!(matches!(
            EcgSynth::new(1, 0.0, sched(), NoiseConfig::clean()),
            Err(EcgError::BadRate(_))
        ));
        let mut noise = NoiseConfig::clean();
        noise.mains_mv = -1.0;
        assert!(matches!(
            EcgSynth::new(1, 250.0, sched(), noise),
            Err(EcgError::BadNoise)
        ));
    }
}

//! Streaming R-peak (heartbeat) detection on ECG waveform batches, after Pan
//! & Tompkins (IEEE TBME 1985), with heart rate per beat.
//!
//! Per sample, at any rate from 100 to 1000 Hz (every filter is designed
//! from the rate):
//!
//! 1. band-pass 5–15 Hz (2nd-order Butterworth high-pass, 4th-order
//!    Butterworth low-pass): keeps the QRS complex, drops baseline wander,
//!    P and T waves, mains hum and muscle noise;
//! 2. five-point derivative, squared: large only on the steep QRS slopes;
//! 3. moving-window integration over 150 ms: one lobe per QRS complex;
//! 4. lobe peaks are classified against adaptive signal/noise levels
//!    (SPKI/NPKI, threshold NPKI + ¼(SPKI − NPKI)), learnt over the first 2 s
//!    (an artifact counts for at most 4× the signal level, so one spike
//!    cannot lift the threshold above every later beat);
//!    a lobe within 360 ms of the last beat with under half its slope is a
//!    T wave; if no beat comes for 1.66 mean RR intervals, the best lobe above
//!    half the threshold since the last beat is taken (searchback);
//! 5. a 200 ms refractory period: of two QRS lobes closer than that, the
//!    larger wins;
//! 6. the R peak is located on the (lightly high-passed) raw signal, as the
//!    largest deviation in a window before the lobe's peak, interpolated
//!    between samples.
//!
//! Each [`Beat`] carries the RR interval to the previous beat and the heart
//! rate, instant (`60000 / RR`) and rolling (`60000 /` mean of the last N RR
//! intervals, N = 8 by default; fewer right after a start or reset). Beats
//! come out about half a second after their R peak: the refractory rule must
//! see whether a larger lobe follows.
//!
//! **State.** [`Detector`] is `Serialize + Deserialize` and holds only
//! fixed-size buffers (two short rings of f32 samples, 150 ms and 185 ms
//! long, the RR ring and a few numbers: about 2.3 kB of JSON at 250 Hz,
//! 5.2 kB at 1000 Hz, whatever the stream's length), so it can be stored
//! after every batch. It includes its configuration: when the configured one
//! differs from a restored detector's [`Detector::config`], start afresh.
//! Processing depends only on that state and the samples, never on how they
//! were cut into batches: a detector restored from its serialized state
//! produces exactly the beats of one that never stopped, and batches of 1 or
//! 250 samples give the same beats. (Filter coefficients are recomputed from
//! the rate, not stored; on another platform's libm they could differ in the
//! last bit, which moves no beat in practice.)
//!
//! **Time.** Sample times come from the sample clock: the first batch's
//! timestamp plus sample index / rate. Each new batch's `first_sample_ms` is
//! compared with the time the next sample is due:
//! - within half a sample period (at least 0.5 ms, for integer-ms
//!   timestamps): a continuation;
//! - later by up to `max_jitter_ms` (20 ms): a continuation, and the clock is
//!   re-anchored on the new timestamp (producer clock jitter);
//! - later by up to `gap_reset_ms` (2 s): a dropout. The filters restart and
//!   no RR interval is measured across the gap, but the learnt thresholds and
//!   the RR history are kept;
//! - later by more: the device was silent; everything restarts, including the
//!   2 s learning period;
//! - earlier (a replayed or duplicate batch, or an overlap): refused with
//!   [`PushError::Backwards`], the state untouched, so the caller can skip the
//!   batch and carry on. Replays are thus harmless.
//!
//! A batch at a different sample rate restarts the detector at the new rate.
//!
//! **Input hygiene.** A NaN or infinite sample is replaced by the previous
//! sample (a dropped ADC reading must not poison the filters forever), and
//! samples are clipped to ±1e9 so the state stays finite.
//!
//! **Limits.** The learning period must contain a QRS complex (2 s: any rate
//! above about 33 bpm). Pan & Tompkins' levels adapt only on detections: a
//! QRS that shrinks to half its amplitude is followed, but one that drops
//! suddenly to about 0.3× or less (electrode, gain change) is not found again
//! until a gap restarts the detector. Decaying the levels during silence was
//! tried and rejected: it found shrunken QRS complexes only at some heart
//! rates and turned noise into beats during asystole, which this detector
//! reports as no beats at all. No beat classification (ectopic, paced):
//! every QRS is a beat.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Sample rates the detector supports, Hz.
pub const RATE_RANGE: (f32, f32) = (100.0, 1000.0);

/// Largest sample magnitude kept; beyond it samples are clipped.
const CLIP: f64 = 1e9;
/// A lobe whose maximum is not exceeded for this long is complete (it is also
/// complete once the integrated signal falls below half its maximum).
const LOBE_CONFIRM_MS: f64 = 95.0;
/// The R peak is searched this far before the peak of the integrated signal,
/// beyond half the integration window (the energy of a QRS reaches the
/// integrator's peak after the band-pass filter's delay plus half the window).
const SEARCH_EARLY_MS: f64 = 110.0;
/// … and up to this close after half the window. Measured on the synthetic
/// ECG, R lies 100–150 ms before the integrator's peak with the default
/// band and window; the window covers 55–185 ms.
const SEARCH_LATE_MS: f64 = 20.0;
/// A lobe counts for at most this many times the signal level when the
/// levels adapt (the integrated signal grows with amplitude squared, so this
/// is a doubling of QRS amplitude per beat).
const ARTIFACT_CAP: f64 = 4.0;
/// Searchback: look for a missed beat once this many mean RR intervals pass.
const SEARCHBACK_RR: f64 = 1.66;
/// A lobe near the last beat with less than this fraction of its slope is a T wave.
const T_WAVE_SLOPE_RATIO: f64 = 0.5;

/// Detector settings. Defaults are Pan & Tompkins' values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Minimum time between two beats, ms (200 ms: 300 bpm).
    pub refractory_ms: f64,
    /// Number of RR intervals averaged for the rolling heart rate.
    pub rolling_beats: usize,
    /// Moving-window integration length, ms (about one QRS width and a half).
    pub integration_ms: f64,
    /// Learning period after a start or reset, ms; it must contain a beat.
    pub learning_ms: f64,
    /// A batch starting later than this past the expected time restarts
    /// learning, ms.
    pub gap_reset_ms: f64,
    /// A batch starting up to this late is taken as contiguous (clock jitter), ms.
    pub max_jitter_ms: f64,
    /// Whether to look back for a missed beat after 1.66 mean RR intervals.
    pub searchback: bool,
    /// Window after a beat in which a weak-sloped lobe counts as a T wave, ms.
    pub t_wave_window_ms: f64,
    /// Band-pass lower edge, Hz.
    pub band_low_hz: f64,
    /// Band-pass upper edge, Hz.
    pub band_high_hz: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            refractory_ms: 200.0,
            rolling_beats: 8,
            integration_ms: 150.0,
            learning_ms: 2000.0,
            gap_reset_ms: 2000.0,
            max_jitter_ms: 20.0,
            searchback: true,
            t_wave_window_ms: 360.0,
            band_low_hz: 5.0,
            band_high_hz: 15.0,
        }
    }
}

impl DetectorConfig {
    /// Checks every field against the range in which the algorithm works.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |name: &'static str, value: f64, lo: f64, hi: f64| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError {
                    field: name,
                    reason: format!("{value} is outside {lo}..={hi}"),
                })
            }
        };
        range("refractory_ms", self.refractory_ms, 100.0, 400.0)?;
        range("rolling_beats", self.rolling_beats as f64, 1.0, 64.0)?;
        range("integration_ms", self.integration_ms, 50.0, 300.0)?;
        range("learning_ms", self.learning_ms, 1000.0, 10_000.0)?;
        range("gap_reset_ms", self.gap_reset_ms, 0.0, 3_600_000.0)?;
        range("max_jitter_ms", self.max_jitter_ms, 0.0, self.gap_reset_ms)?;
        range("t_wave_window_ms", self.t_wave_window_ms, 0.0, 1000.0)?;
        range("band_low_hz", self.band_low_hz, 1.0, 20.0)?;
        range(
            "band_high_hz",
            self.band_high_hz,
            self.band_low_hz + 1.0,
            40.0,
        )?;
        Ok(())
    }
}

/// A configuration field outside its working range.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The field, as spelt in the configuration.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rpeaks: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why a batch was refused. The detector's state is unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum PushError {
    /// The sample rate is outside [`RATE_RANGE`] (or not a number).
    UnsupportedRate(f32),
    /// The batch starts before the next expected sample: a replay, a
    /// duplicate or an overlap. Skip it.
    Backwards {
        /// When the next sample was due, ms since the epoch.
        expected_ms: f64,
        /// The batch's `first_sample_ms`.
        got_ms: i64,
    },
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedRate(rate) => write!(
                f,
                "sample rate {rate} Hz is outside the supported {}..={} Hz",
                RATE_RANGE.0, RATE_RANGE.1
            ),
            Self::Backwards {
                expected_ms,
                got_ms,
            } => write!(
                f,
                "batch starts at {got_ms} ms, before the next expected sample at \
                 {expected_ms:.1} ms (replayed or duplicate batch); skipped"
            ),
        }
    }
}

impl std::error::Error for PushError {}

/// One detected heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// Time of the R peak, ms since the Unix epoch.
    pub t_ms: i64,
    /// Time since the previous beat, ms; `None` for the first beat after a
    /// start or a gap.
    pub rr_ms: Option<f64>,
    /// `60000 / rr_ms`, bpm.
    pub hr_instant: Option<f64>,
    /// `60000 /` mean of the last `rolling_beats` RR intervals, bpm.
    pub hr_rolling: Option<f64>,
}

/// Coefficients of a biquad section (transposed direct form II), normalised
/// by a0. Designed from the rate on every batch rather than stored: a pure
/// function of the configuration, so live and restored detectors agree.
#[derive(Debug, Clone, Copy)]
struct BiquadCoefs {
    b: [f64; 3],
    a: [f64; 2],
}

impl BiquadCoefs {
    /// RBJ audio-EQ-cookbook design (bilinear transform, pre-warped).
    fn design(rate: f64, cutoff_hz: f64, q: f64, high_pass: bool) -> Self {
        let w0 = 2.0 * std::f64::consts::PI * cutoff_hz / rate;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * q);
        let a0 = 1.0 + alpha;
        let b = if high_pass {
            [(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0]
        } else {
            [(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0]
        };
        Self {
            b: [b[0] / a0, b[1] / a0, b[2] / a0],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
        }
    }

    /// The state that is steady for a constant input `x` (so the first
    /// samples of a stream, usually on a DC offset, cause no transient), and
    /// the steady output.
    fn settle(&self, x: f64) -> ([f64; 2], f64) {
        let [b0, b1, b2] = self.b;
        let [a1, a2] = self.a;
        let y = x * (b0 + b1 + b2) / (1.0 + a1 + a2);
        let s1 = b2 * x - a2 * y;
        ([b1 * x - a1 * y + s1, s1], y)
    }

    fn step(&self, state: &mut [f64; 2], x: f64) -> f64 {
        let y = self.b[0] * x + state[0];
        state[0] = self.b[1] * x - self.a[0] * y + state[1];
        state[1] = self.b[2] * x - self.a[1] * y;
        y
    }
}

/// The filters for one rate.
#[derive(Debug, Clone, Copy)]
struct Filters {
    /// 2nd-order Butterworth high-pass at `band_low_hz`.
    high_pass: BiquadCoefs,
    /// 4th-order Butterworth low-pass at `band_high_hz`, as two sections.
    low_pass: [BiquadCoefs; 2],
    /// One-pole 0.5 Hz high-pass that removes the baseline before the R peak
    /// is located, without moving the sharp R apex.
    baseline_k: f64,
}

impl Filters {
    fn new(config: &DetectorConfig, rate: f64) -> Self {
        // The Q of each pole pair of a 4th-order Butterworth filter.
        const Q4: [f64; 2] = [0.541_196_100_146_197, 1.306_562_964_876_377];
        let rc = 1.0 / (2.0 * std::f64::consts::PI * 0.5);
        Self {
            high_pass: BiquadCoefs::design(
                rate,
                config.band_low_hz,
                std::f64::consts::FRAC_1_SQRT_2,
                true,
            ),
            low_pass: Q4.map(|q| BiquadCoefs::design(rate, config.band_high_hz, q, false)),
            baseline_k: rc / (rc + 1.0 / rate),
        }
    }
}

/// A fixed-size ring indexed by absolute sample index (`index % len`), so no
/// write position needs storing. Values are f32: the input is f32 anyway, and
/// the state stays small; live and restored detectors round identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring(Vec<f32>);

impl Ring {
    fn new(len: usize) -> Self {
        Self(vec![0.0; len.max(1)])
    }

    fn slot(&self, index: u64) -> usize {
        (index % self.0.len() as u64) as usize
    }

    fn get(&self, index: u64) -> f32 {
        self.0[self.slot(index)]
    }

    /// Stores `value` at `index`, returning what the slot held.
    fn put(&mut self, index: u64, value: f32) -> f32 {
        let slot = self.slot(index);
        std::mem::replace(&mut self.0[slot], value)
    }
}

/// A lobe of the integrated signal being followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lobe {
    /// Whether a lobe is being followed; after one completes, the next starts
    /// only when the integrated signal rises again, so a falling edge is not
    /// taken for a second lobe.
    armed: bool,
    max: f64,
    max_at: u64,
    /// Where the R peak of the lobe's maximum so far is (located whenever the
    /// maximum grows, so the raw ring need not outlast the confirmation
    /// delay); `None` if its search window starts before the chain.
    r: Option<f64>,
    /// Largest |derivative| while following this lobe: the QRS slope.
    slope: f64,
}

/// The signal chain: filters and buffers, rebuilt at every (re)start and
/// after a dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chain {
    /// Sample index at which the chain (re)started.
    start: u64,
    /// Filter states (see [`Filters`] for the coefficients).
    high_pass: [f64; 2],
    low_pass: [[f64; 2]; 2],
    /// Previous input and output of the baseline high-pass.
    baseline: [f64; 2],
    /// Band-passed samples n-1 … n-4, for the derivative.
    bp_history: [f64; 4],
    /// Squared derivative over the integration window.
    squared: Ring,
    squared_sum: f64,
    integrated_prev: f64,
    /// Baseline-free raw signal, for locating R peaks.
    raw: Ring,
    lobe: Lobe,
    /// Last finite input, which replaces non-finite samples; `None` until the
    /// chain's first sample. (Never NaN: JSON cannot carry NaN.)
    last_input: Option<f64>,
}

/// A QRS candidate: a completed lobe and where its R peak is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Candidate {
    /// R-peak position, in (fractional) sample indices.
    r: f64,
    /// Peak of the integrated signal.
    peak: f64,
    slope: f64,
}

/// The last `rolling_beats` RR intervals, in samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RrRing {
    values: Vec<f64>,
    next: usize,
}

impl RrRing {
    fn push(&mut self, rr: f64, capacity: usize) {
        let capacity = capacity.max(1);
        if self.values.len() < capacity {
            self.values.push(rr);
        } else {
            let slot = self.next % capacity;
            self.values[slot] = rr;
        }
        self.next = (self.next + 1) % capacity;
    }

    fn mean(&self) -> Option<f64> {
        if self.values.is_empty() {
            None
        } else {
            Some(self.values.iter().sum::<f64>() / self.values.len() as f64)
        }
    }
}

/// Everything about one device's stream at one sample rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stream {
    rate: f32,
    /// Sample clock: sample `anchor_index` was at `anchor_ms`.
    anchor_ms: i64,
    anchor_index: u64,
    /// Index of the next sample.
    next_index: u64,
    chain: Chain,
    /// `Some(end index)` while learning thresholds.
    learning_until: Option<u64>,
    learn_max: f64,
    learn_sum: f64,
    learn_count: u64,
    /// Running signal and noise peak levels.
    spki: f64,
    npki: f64,
    /// The last emitted beat of this chain (none after a gap).
    last_beat: Option<Candidate>,
    /// The latest QRS, held until no larger lobe can replace it.
    pending: Option<Candidate>,
    /// The best sub-threshold lobe since the last QRS.
    searchback: Option<Candidate>,
    rr: RrRing,
}

/// What depends on the rate: durations in samples, and the filters.
struct Plan {
    filters: Filters,
    period_ms: f64,
    window: usize,
    confirm: u64,
    refractory: f64,
    t_wave: f64,
    search_early: u64,
    search_late: u64,
    learning: u64,
    /// How long a pending QRS waits for a larger one.
    finalize: f64,
}

impl Plan {
    fn new(config: &DetectorConfig, rate: f32) -> Self {
        let rate = f64::from(rate);
        let samples = |ms: f64| ms * rate / 1000.0;
        let window = samples(config.integration_ms).round().max(1.0) as usize;
        let confirm = samples(LOBE_CONFIRM_MS).round().max(1.0) as u64;
        let half_window = samples(config.integration_ms / 2.0);
        let search_early = (half_window + samples(SEARCH_EARLY_MS)).round() as u64;
        let search_late = (half_window - samples(SEARCH_LATE_MS)).round().max(0.0) as u64;
        let refractory = samples(config.refractory_ms);
        Self {
            filters: Filters::new(config, rate),
            period_ms: 1000.0 / rate,
            window,
            confirm,
            refractory,
            t_wave: samples(config.t_wave_window_ms),
            search_early,
            search_late,
            learning: samples(config.learning_ms).round() as u64,
            // A later lobe completes at most `confirm` after its peak and its
            // R lies at most `search_early` before that, so after this long
            // none can fall within the refractory period of a pending QRS.
            finalize: refractory + (confirm + search_early) as f64,
        }
    }

    /// Samples of baseline-free signal kept for locating R peaks: the search
    /// window and a neighbour for interpolation.
    fn raw_len(&self) -> usize {
        self.search_early as usize + 2
    }
}

impl Chain {
    fn new(plan: &Plan, start: u64) -> Self {
        Self {
            start,
            high_pass: [0.0; 2],
            low_pass: [[0.0; 2]; 2],
            baseline: [0.0; 2],
            bp_history: [0.0; 4],
            squared: Ring::new(plan.window),
            squared_sum: 0.0,
            integrated_prev: 0.0,
            raw: Ring::new(plan.raw_len()),
            lobe: Lobe {
                armed: true,
                max: 0.0,
                max_at: start,
                r: None,
                slope: 0.0,
            },
            last_input: None,
        }
    }

    /// Where the R peak of a lobe peaking at `peak_at` is, if the search
    /// window lies inside this chain.
    fn locate(&self, peak_at: u64, plan: &Plan) -> Option<f64> {
        let from = peak_at.checked_sub(plan.search_early)?;
        let to = peak_at.saturating_sub(plan.search_late).max(from);
        if from <= self.start {
            return None;
        }
        let count = (to - from + 1) as f64;
        let mean = (from..=to).map(|k| f64::from(self.raw.get(k))).sum::<f64>() / count;
        let dev = |k: u64| f64::from(self.raw.get(k)) - mean;
        let mut best = from;
        for k in from..=to {
            if dev(k).abs() > dev(best).abs() {
                best = k;
            }
        }
        // Parabola through the peak and its neighbours for sub-sample timing
        // (matters at 100 Hz, where a sample is 10 ms).
        let mut offset = 0.0;
        if best > from && best < to {
            let sign = dev(best).signum();
            let (l, c, r) = (sign * dev(best - 1), sign * dev(best), sign * dev(best + 1));
            let curvature = l - 2.0 * c + r;
            if curvature < 0.0 {
                offset = (0.5 * (l - r) / curvature).clamp(-0.5, 0.5);
            }
        }
        Some(best as f64 + offset)
    }
}

/// The R-peak detector for one device. Serialize it after each batch to
/// resume exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    config: DetectorConfig,
    stream: Option<Stream>,
}

impl Detector {
    /// A detector that has seen nothing yet.
    pub fn new(config: DetectorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            stream: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Whether the detector is still learning its thresholds (emitting no beats).
    pub fn is_learning(&self) -> bool {
        self.stream
            .as_ref()
            .is_none_or(|s| s.learning_until.is_some())
    }

    /// When the next sample is expected, ms since the epoch (`None` before
    /// the first batch).
    pub fn expected_next_ms(&self) -> Option<f64> {
        self.stream.as_ref().map(Stream::expected_next_ms)
    }

    /// Processes one batch: `samples[i]` was taken at `first_sample_ms + i /
    /// rate`. Returns the beats whose detection completed, in time order.
    /// On error the state is unchanged.
    pub fn push(
        &mut self,
        first_sample_ms: i64,
        rate: f32,
        samples: &[f32],
    ) -> Result<Vec<Beat>, PushError> {
        if !(RATE_RANGE.0..=RATE_RANGE.1).contains(&rate) {
            return Err(PushError::UnsupportedRate(rate));
        }
        let mut beats = Vec::new();
        if samples.is_empty() {
            return Ok(beats);
        }
        match &mut self.stream {
            Some(stream) if stream.rate == rate => {
                let plan = Plan::new(&self.config, rate);
                let expected = stream.expected_next_ms();
                let late = first_sample_ms as f64 - expected;
                let tolerance = (plan.period_ms / 2.0).max(0.5);
                if late < -tolerance {
                    return Err(PushError::Backwards {
                        expected_ms: expected,
                        got_ms: first_sample_ms,
                    });
                }
                if late > self.config.gap_reset_ms {
                    stream.flush(&plan, &self.config, &mut beats);
                    *stream = Stream::new(&self.config, rate, first_sample_ms);
                } else if late > self.config.max_jitter_ms {
                    stream.flush(&plan, &self.config, &mut beats);
                    stream.restart_chain(&plan);
                    stream.anchor(first_sample_ms);
                } else if late > tolerance {
                    stream.anchor(first_sample_ms);
                }
            }
            Some(stream) => {
                // New rate: nothing learnt at the old one carries over.
                let plan = Plan::new(&self.config, stream.rate);
                stream.flush(&plan, &self.config, &mut beats);
                *stream = Stream::new(&self.config, rate, first_sample_ms);
            }
            None => self.stream = Some(Stream::new(&self.config, rate, first_sample_ms)),
        }
        if let Some(stream) = &mut self.stream {
            let plan = Plan::new(&self.config, rate);
            for &x in samples {
                stream.step(f64::from(x), &plan, &self.config, &mut beats);
            }
        }
        Ok(beats)
    }
}

impl Stream {
    fn new(config: &DetectorConfig, rate: f32, first_sample_ms: i64) -> Self {
        let plan = Plan::new(config, rate);
        Self {
            rate,
            anchor_ms: first_sample_ms,
            anchor_index: 0,
            next_index: 0,
            chain: Chain::new(&plan, 0),
            learning_until: Some(plan.learning),
            learn_max: 0.0,
            learn_sum: 0.0,
            learn_count: 0,
            spki: 0.0,
            npki: 0.0,
            last_beat: None,
            pending: None,
            searchback: None,
            rr: RrRing {
                values: Vec::new(),
                next: 0,
            },
        }
    }

    fn expected_next_ms(&self) -> f64 {
        let period = 1000.0 / f64::from(self.rate);
        self.anchor_ms as f64 + (self.next_index - self.anchor_index) as f64 * period
    }

    fn anchor(&mut self, first_sample_ms: i64) {
        self.anchor_ms = first_sample_ms;
        self.anchor_index = self.next_index;
    }

    /// After a dropout: fresh filters, no beat to measure RR from, but the
    /// thresholds and RR history stay.
    fn restart_chain(&mut self, plan: &Plan) {
        self.chain = Chain::new(plan, self.next_index);
        self.last_beat = None;
        self.pending = None;
        self.searchback = None;
    }

    /// Emits the pending QRS: nothing more can arrive for this chain.
    fn flush(&mut self, plan: &Plan, config: &DetectorConfig, beats: &mut Vec<Beat>) {
        if let Some(pending) = self.pending.take() {
            self.emit(pending, plan, config, beats);
        }
    }

    fn emit(
        &mut self,
        qrs: Candidate,
        plan: &Plan,
        config: &DetectorConfig,
        beats: &mut Vec<Beat>,
    ) {
        let rr = self.last_beat.map(|last| qrs.r - last.r);
        if let Some(rr) = rr {
            self.rr.push(rr, config.rolling_beats);
        }
        let rr_ms = rr.map(|rr| rr * plan.period_ms);
        let t = self.anchor_ms as f64 + (qrs.r - self.anchor_index as f64) * plan.period_ms;
        beats.push(Beat {
            t_ms: t.round() as i64,
            rr_ms,
            hr_instant: rr_ms.map(|ms| 60_000.0 / ms),
            hr_rolling: rr
                .and(self.rr.mean())
                .map(|mean| 60_000.0 / (mean * plan.period_ms)),
        });
        self.last_beat = Some(qrs);
    }

    /// The most recent QRS, pending or emitted.
    fn last_qrs(&self) -> Option<Candidate> {
        self.pending.or(self.last_beat)
    }

    fn threshold(&self) -> f64 {
        self.npki + 0.25 * (self.spki - self.npki)
    }

    /// Moves the signal level towards a QRS lobe's peak. The peak counts for
    /// at most [`ARTIFACT_CAP`] times the current level, so one electrode
    /// pop or clipped sample cannot raise the threshold beyond every real
    /// beat (Pan & Tompkins' levels never come down without detections).
    fn learn_signal(&mut self, peak: f64, weight: f64) {
        let peak = peak.min(ARTIFACT_CAP * self.spki);
        self.spki = weight * peak + (1.0 - weight) * self.spki;
    }

    /// Moves the noise level towards a noise lobe's peak, capped likewise.
    fn learn_noise(&mut self, peak: f64) {
        let peak = peak.min(ARTIFACT_CAP * self.spki);
        self.npki = 0.125 * peak + 0.875 * self.npki;
    }

    fn step(&mut self, x: f64, plan: &Plan, config: &DetectorConfig, beats: &mut Vec<Beat>) {
        let n = self.next_index;
        self.next_index += 1;
        let chain = &mut self.chain;

        let x = if x.is_finite() {
            x.clamp(-CLIP, CLIP)
        } else {
            chain.last_input.unwrap_or(0.0)
        };
        let filters = &plan.filters;
        if chain.last_input.is_none() {
            // First sample of the chain: start every filter in steady state.
            let (state, mut settled) = filters.high_pass.settle(x);
            chain.high_pass = state;
            for (coefs, state) in filters.low_pass.iter().zip(&mut chain.low_pass) {
                (*state, settled) = coefs.settle(settled);
            }
            chain.baseline = [x, 0.0];
        }
        chain.last_input = Some(x);

        let mut band = filters.high_pass.step(&mut chain.high_pass, x);
        for (coefs, state) in filters.low_pass.iter().zip(&mut chain.low_pass) {
            band = coefs.step(state, band);
        }
        let [x1, y1] = chain.baseline;
        let baseline_free = filters.baseline_k * (y1 + x - x1);
        chain.baseline = [x, baseline_free];
        chain.raw.put(n, baseline_free as f32);

        let h = chain.bp_history;
        let derivative = (2.0 * band + h[0] - h[2] - 2.0 * h[3]) * f64::from(self.rate) / 8.0;
        chain.bp_history = [band, h[0], h[1], h[2]];
        let squared = (derivative * derivative) as f32;
        let old = chain.squared.put(n, squared);
        chain.squared_sum += f64::from(squared) - f64::from(old);
        if chain.squared.slot(n) == 0 {
            // Resynchronise the running sum once per window so rounding
            // cannot drift; a function of the index, so equally in a
            // restored detector.
            chain.squared_sum = chain.squared.0.iter().map(|&v| f64::from(v)).sum();
        }
        let integrated = chain.squared_sum.max(0.0) / plan.window as f64;

        // Follow lobes of the integrated signal.
        let rising = integrated > chain.integrated_prev;
        chain.integrated_prev = integrated;
        if !chain.lobe.armed && rising {
            chain.lobe = Lobe {
                armed: true,
                max: 0.0,
                max_at: n,
                r: None,
                slope: 0.0,
            };
        }
        let mut completed = None;
        if chain.lobe.armed {
            chain.lobe.slope = chain.lobe.slope.max(derivative.abs());
            if integrated > chain.lobe.max {
                chain.lobe.max = integrated;
                chain.lobe.max_at = n;
                // Not while learning: nothing is classified then.
                if self.learning_until.is_none() {
                    chain.lobe.r = chain.locate(n, plan);
                }
            }
            let lobe = &mut chain.lobe;
            if lobe.max > 0.0 && (integrated < lobe.max / 2.0 || n - lobe.max_at >= plan.confirm) {
                completed = Some((lobe.max, lobe.r, lobe.slope));
                lobe.armed = false;
            }
        }

        if let Some(end) = self.learning_until {
            self.learn_sum += integrated;
            self.learn_count += 1;
            if let Some((peak, _, _)) = completed {
                self.learn_max = self.learn_max.max(peak);
            }
            if n + 1 >= end {
                self.finish_learning(plan);
            }
            return;
        }

        if let Some((peak, Some(r), slope)) = completed {
            self.classify(Candidate { r, peak, slope }, plan, config, beats);
        }
        self.searchback_check(n, config, plan, beats);
        if let Some(pending) = self.pending
            && n as f64 - pending.r > plan.finalize
        {
            self.pending = None;
            self.emit(pending, plan, config, beats);
        }
    }

    fn finish_learning(&mut self, plan: &Plan) {
        if self.learn_max > 0.0 && self.learn_count > 0 {
            // Pan & Tompkins' initial levels.
            self.spki = self.learn_max / 3.0;
            self.npki = self.learn_sum / self.learn_count as f64 / 2.0;
            self.learning_until = None;
        } else {
            // A flat line taught nothing: learn again.
            self.learning_until = Some(self.next_index + plan.learning);
        }
        self.learn_max = 0.0;
        self.learn_sum = 0.0;
        self.learn_count = 0;
    }

    fn classify(
        &mut self,
        c: Candidate,
        plan: &Plan,
        config: &DetectorConfig,
        beats: &mut Vec<Beat>,
    ) {
        let threshold = self.threshold();
        let last = self.last_qrs();
        if c.peak > threshold {
            if let Some(emitted) = self.last_beat
                && c.r - emitted.r < plan.refractory
            {
                // Too close to a beat already reported: the same complex.
                return;
            }
            if let Some(pending) = self.pending
                && c.r - pending.r < plan.refractory
            {
                // Two lobes for one complex: keep the larger.
                if c.peak > pending.peak {
                    self.pending = Some(c);
                    self.learn_signal(c.peak, 0.125);
                }
                return;
            }
            if let Some(last) = last
                && c.r - last.r < plan.t_wave
                && c.slope < T_WAVE_SLOPE_RATIO * last.slope
            {
                self.learn_noise(c.peak);
                return;
            }
            self.learn_signal(c.peak, 0.125);
            self.accept(c, plan, config, beats);
        } else {
            self.learn_noise(c.peak);
            let after_last = last.is_none_or(|last| c.r - last.r >= plan.refractory);
            let t_wave = last.is_some_and(|last| {
                c.r - last.r < plan.t_wave && c.slope < T_WAVE_SLOPE_RATIO * last.slope
            });
            if c.peak > threshold / 2.0
                && after_last
                && !t_wave
                && self.searchback.is_none_or(|s| c.peak > s.peak)
            {
                self.searchback = Some(c);
            }
        }
    }

    /// A new QRS beyond the refractory period: the pending one is final.
    fn accept(
        &mut self,
        c: Candidate,
        plan: &Plan,
        config: &DetectorConfig,
        beats: &mut Vec<Beat>,
    ) {
        if let Some(pending) = self.pending.take() {
            self.emit(pending, plan, config, beats);
        }
        self.pending = Some(c);
        self.searchback = None;
    }

    fn searchback_check(
        &mut self,
        n: u64,
        config: &DetectorConfig,
        plan: &Plan,
        beats: &mut Vec<Beat>,
    ) {
        if !config.searchback {
            return;
        }
        let (Some(last), Some(candidate)) = (self.last_qrs(), self.searchback) else {
            return;
        };
        if self.rr.values.len() < 2 {
            return;
        }
        let Some(mean_rr) = self.rr.mean() else {
            return;
        };
        if (n as f64 - last.r) <= SEARCHBACK_RR * mean_rr {
            return;
        }
        self.searchback = None;
        if candidate.r - last.r >= plan.refractory {
            self.learn_signal(candidate.peak, 0.25);
            self.accept(candidate, plan, config, beats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ecg::{EcgSynth, HrSchedule, NoiseConfig};
    use super::*;

    const T0_MS: i64 = 1_767_225_600_000;

    /// The synthetic signal of one device, cut into batches.
    struct Run {
        rate: f64,
        samples: Vec<f32>,
        truth: Vec<f64>,
        synth: EcgSynth,
    }

    fn generate(seed: u64, rate: f64, schedule: HrSchedule, noise: NoiseConfig, secs: f64) -> Run {
        let mut synth = EcgSynth::new(seed, rate, schedule, noise).expect("generator");
        let samples = synth.next_samples((secs * rate) as usize);
        let truth = synth.true_beats().to_vec();
        Run {
            rate,
            samples,
            truth,
            synth,
        }
    }

    fn batch_ms(rate: f64, first_index: usize) -> i64 {
        T0_MS + (first_index as f64 * 1000.0 / rate).round() as i64
    }

    fn detect(run: &Run, batch: usize, config: DetectorConfig) -> Vec<Beat> {
        let mut d = Detector::new(config).expect("config");
        let mut beats = Vec::new();
        for (i, chunk) in run.samples.chunks(batch).enumerate() {
            let first = i * batch;
            beats.extend(
                d.push(batch_ms(run.rate, first), run.rate as f32, chunk)
                    .expect("in order"),
            );
        }
        beats
    }

    /// Detection quality against the ground truth, over [from_s, to_s].
    #[derive(Debug)]
    struct Score {
        truth: usize,
        matched: usize,
        false_pos: usize,
        median_abs_hr_err: f64,
        max_timing_err_ms: f64,
    }

    fn score(run: &Run, beats: &[Beat], from_s: f64, to_s: f64) -> Score {
        let in_range = |t_s: f64| t_s >= from_s && t_s <= to_s;
        let detected: Vec<f64> = beats
            .iter()
            .map(|b| (b.t_ms - T0_MS) as f64 / 1000.0)
            .collect();
        let truth: Vec<f64> = run.truth.iter().copied().filter(|&t| in_range(t)).collect();
        let mut matched = 0;
        let mut max_err: f64 = 0.0;
        for &t in &truth {
            if let Some(err) = detected
                .iter()
                .map(|&d| (d - t).abs())
                .filter(|&e| e <= 0.05)
                .reduce(f64::min)
            {
                matched += 1;
                max_err = max_err.max(err * 1000.0);
            }
        }
        let false_pos = detected
            .iter()
            .filter(|&&d| in_range(d) && !run.truth.iter().any(|&t| (d - t).abs() <= 0.05))
            .count();
        let mut errs: Vec<f64> = beats
            .iter()
            .filter_map(|b| {
                let t_s = (b.t_ms - T0_MS) as f64 / 1000.0;
                let hr = b.hr_rolling?;
                in_range(t_s).then(|| (hr - run.synth.true_bpm_at(t_s)).abs())
            })
            .collect();
        errs.sort_by(f64::total_cmp);
        let median_abs_hr_err = errs.get(errs.len() / 2).copied().unwrap_or(f64::INFINITY);
        Score {
            truth: truth.len(),
            matched,
            false_pos,
            median_abs_hr_err,
            max_timing_err_ms: max_err,
        }
    }

    fn constant(seed: u64, rate: f64, bpm: f64, secs: f64) -> Run {
        let schedule = HrSchedule::constant(bpm).expect("bpm");
        generate(seed, rate, schedule, NoiseConfig::noisy(), secs)
    }

    /// Asserts the accuracy goals on a run, skipping the learning period and
    /// the last second (beats still pending at the end).
    fn assert_accurate(run: &Run, label: &str) {
        let beats = detect(run, 25, DetectorConfig::default());
        let end = run.samples.len() as f64 / run.rate - 1.0;
        let s = score(run, &beats, 3.0, end);
        let sensitivity = s.matched as f64 / s.truth as f64;
        let fp_rate = s.false_pos as f64 / s.truth as f64;
        assert!(s.truth > 20, "{label}: only {} beats", s.truth);
        assert!(
            sensitivity >= 0.99,
            "{label}: sensitivity {sensitivity}: {s:?}"
        );
        assert!(fp_rate <= 0.01, "{label}: false positives {fp_rate}: {s:?}");
        assert!(s.median_abs_hr_err <= 2.0, "{label}: HR error: {s:?}");
    }

    #[test]
    fn accurate_at_every_heart_rate_on_noisy_signals() {
        // 10 dB SNR, 0.3 mV baseline wander, 0.1 mV of 50 Hz hum, ±2 % RR jitter.
        for bpm in [40.0, 60.0, 75.0, 100.0, 120.0, 150.0, 180.0] {
            let run = constant(bpm as u64, 250.0, bpm, 60.0);
            assert_accurate(&run, &format!("{bpm} bpm at 250 Hz"));
        }
    }

    #[test]
    fn accurate_at_every_sample_rate() {
        for rate in [100.0, 128.0, 360.0, 500.0, 1000.0] {
            for bpm in [45.0, 160.0] {
                let mut run = constant(rate as u64 + bpm as u64, rate, bpm, 40.0);
                if rate >= 360.0 {
                    // American mains: 60 Hz hum on the faster monitors.
                    let mut noise = NoiseConfig::noisy();
                    noise.mains_hz = 60.0;
                    let schedule = HrSchedule::constant(bpm).expect("bpm");
                    run = generate(rate as u64, rate, schedule, noise, 40.0);
                }
                assert_accurate(&run, &format!("{bpm} bpm at {rate} Hz"));
            }
        }
    }

    #[test]
    fn inverted_lead_is_detected_too() {
        let mut run = constant(21, 250.0, 80.0, 40.0);
        for x in &mut run.samples {
            *x = -*x;
        }
        assert_accurate(&run, "inverted");
    }

    #[test]
    fn heart_rate_step_is_tracked_within_a_few_beats() {
        let schedule =
            HrSchedule::segments(vec![(0.0, 75.0), (30.0, 140.0), (60.0, 75.0)]).expect("schedule");
        let run = generate(31, 250.0, schedule, NoiseConfig::noisy(), 90.0);
        let beats = detect(&run, 50, DetectorConfig::default());
        let s = score(&run, &beats, 3.0, 89.0);
        assert_eq!(s.matched, s.truth, "{s:?}");
        assert_eq!(s.false_pos, 0, "{s:?}");

        for (step_s, bpm) in [(30.0, 140.0), (60.0, 75.0)] {
            let after: Vec<&Beat> = beats
                .iter()
                .filter(|b| (b.t_ms - T0_MS) as f64 / 1000.0 > step_s)
                .collect();
            // The second beat after the step gives an RR wholly at the new rate.
            for b in &after[1..20] {
                let instant = b.hr_instant.expect("RR");
                assert!(
                    (instant - bpm).abs() <= bpm * 0.05,
                    "instant {instant} vs {bpm}"
                );
            }
            // The rolling mean has forgotten the old rate once 8 new RRs are in.
            for b in &after[9..20] {
                let rolling = b.hr_rolling.expect("RR");
                assert!((rolling - bpm).abs() <= 2.0, "rolling {rolling} vs {bpm}");
            }
            let before = beats
                .iter()
                .rfind(|b| (b.t_ms - T0_MS) as f64 / 1000.0 < step_s)
                .and_then(|b| b.hr_rolling)
                .expect("beats before the step");
            assert!(
                (before - bpm).abs() > 20.0,
                "the step was visible: {before}"
            );
        }
    }

    #[test]
    fn batch_size_does_not_change_the_beats() {
        let run = constant(41, 250.0, 95.0, 30.0);
        let reference = detect(&run, 250, DetectorConfig::default());
        assert!(reference.len() > 40);
        for batch in [1, 25, 97] {
            assert_eq!(
                detect(&run, batch, DetectorConfig::default()),
                reference,
                "batch {batch}"
            );
        }
        // At 360 Hz the integer-ms timestamps of batches are rounded.
        let run = constant(42, 360.0, 70.0, 20.0);
        let reference = detect(&run, 360, DetectorConfig::default());
        assert_eq!(detect(&run, 1, DetectorConfig::default()), reference);
        assert_eq!(detect(&run, 7, DetectorConfig::default()), reference);
    }

    #[test]
    fn restored_state_continues_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (rate, bpm) in [(250.0, 72.0), (500.0, 130.0)] {
            let run = constant(51, rate, bpm, 30.0);
            let reference = detect(&run, 1, DetectorConfig::default());
            for _ in 0..5 {
                let mut d = Detector::new(DetectorConfig::default()).expect("config");
                let mut beats = Vec::new();
                let mut at = 0;
                while at < run.samples.len() {
                    let end = (at + rng.random_range(1..700)).min(run.samples.len());
                    beats.extend(
                        d.push(batch_ms(rate, at), rate as f32, &run.samples[at..end])
                            .expect("in order"),
                    );
                    at = end;
                    // Store and reload between every two batches.
                    let json = serde_json::to_string(&d).expect("serializes");
                    d = serde_json::from_str(&json).expect("deserializes");
                }
                assert_eq!(beats, reference, "{rate} Hz");
            }
        }
    }

    /// Smallest and largest JSON size of the state, sampled every 10 s.
    fn state_size(rate: f64) -> (usize, usize) {
        let run = constant(61, rate, 80.0, 60.0);
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let mut sizes = Vec::new();
        for (i, chunk) in run.samples.chunks(rate as usize * 10).enumerate() {
            d.push(batch_ms(rate, i * rate as usize * 10), rate as f32, chunk)
                .expect("in order");
            sizes.push(serde_json::to_vec(&d).expect("serializes").len());
        }
        let min = sizes.iter().copied().min().unwrap_or(0);
        (min, sizes.iter().copied().max().unwrap_or(0))
    }

    #[test]
    fn state_is_small_and_does_not_grow() {
        for (rate, limit) in [(250.0, 2_500), (1000.0, 5_500)] {
            let (min, max) = state_size(rate);
            assert!(max <= limit, "{rate} Hz: state is {max} bytes of JSON");
            // It varies only with the digits of its numbers and whether a
            // beat is pending.
            assert!(max - min < 400, "{rate} Hz: {min} .. {max} bytes");
        }
    }

    #[test]
    fn silence_restarts_learning_without_rr_across_the_gap() {
        let mut synth = EcgSynth::new(
            71,
            250.0,
            HrSchedule::constant(70.0).expect("bpm"),
            NoiseConfig::noisy(),
        )
        .expect("generator");
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let mut beats = Vec::new();
        let mut index = 0usize;
        let feed = |d: &mut Detector, synth: &mut EcgSynth, secs: usize, index: &mut usize| {
            let mut out = Vec::new();
            for _ in 0..secs * 10 {
                let chunk = synth.next_samples(25);
                out.extend(
                    d.push(batch_ms(250.0, *index), 250.0, &chunk)
                        .expect("in order"),
                );
                *index += 25;
            }
            out
        };
        beats.extend(feed(&mut d, &mut synth, 20, &mut index));
        let before_gap = beats.len();
        assert!(before_gap > 15);
        // Ten seconds without data.
        synth.skip(2500);
        index += 2500;
        let resumed_at = batch_ms(250.0, index);
        let after = feed(&mut d, &mut synth, 20, &mut index);
        assert!(d.is_learning() || !after.is_empty());
        let (flushed, after): (Vec<Beat>, Vec<Beat>) =
            after.into_iter().partition(|b| b.t_ms < resumed_at);
        assert!(flushed.len() <= 1, "only the pending beat before the gap");
        let first = after.first().expect("beats after the gap");
        assert_eq!(first.rr_ms, None, "no RR across the gap");
        assert_eq!(first.hr_rolling, None, "RR history restarted");
        assert!(
            first.t_ms >= resumed_at + 1800,
            "learning again: {}",
            first.t_ms - resumed_at
        );
        assert!(
            after[1..]
                .iter()
                .all(|b| b.rr_ms.is_some_and(|rr| (rr - 857.0).abs() < 60.0))
        );
        // 20 s at 70 bpm, less the 2 s of learning: ~21 beats.
        assert!((19..=22).contains(&after.len()), "{}", after.len());
    }

    #[test]
    fn short_dropout_keeps_thresholds_but_not_rr() {
        let run = constant(81, 250.0, 60.0, 40.0);
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let mut beats = Vec::new();
        // Samples 20 s .. 20.6 s never arrive.
        let (gap_from, gap_to) = (5000, 5150);
        for (from, to) in [(0, gap_from), (gap_to, run.samples.len())] {
            for at in (from..to).step_by(50) {
                let end = (at + 50).min(to);
                beats.extend(
                    d.push(batch_ms(250.0, at), 250.0, &run.samples[at..end])
                        .expect("forward"),
                );
            }
        }
        let resumed_ms = batch_ms(250.0, gap_to);
        let after: Vec<&Beat> = beats.iter().filter(|b| b.t_ms >= resumed_ms).collect();
        assert_eq!(after[0].rr_ms, None, "no RR across the dropout");
        assert!(after[0].t_ms < resumed_ms + 1300, "no new learning period");
        assert!(
            after[1]
                .hr_rolling
                .is_some_and(|hr| (hr - 60.0).abs() < 3.0)
        );
        // Every beat outside the dropout is still found.
        let gap = (20.0 - 0.05, 20.6 + 0.3);
        let missed = run
            .truth
            .iter()
            .filter(|&&t| t > 3.0 && t < 39.0 && !(gap.0..gap.1).contains(&t))
            .filter(|&&t| {
                !beats
                    .iter()
                    .any(|b| ((b.t_ms - T0_MS) as f64 / 1000.0 - t).abs() <= 0.05)
            })
            .count();
        assert_eq!(missed, 0);
    }

    #[test]
    fn replayed_batches_are_refused_and_change_nothing() {
        let run = constant(91, 250.0, 75.0, 10.0);
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        for at in (0..2000).step_by(100) {
            d.push(batch_ms(250.0, at), 250.0, &run.samples[at..at + 100])
                .expect("in order");
        }
        let saved = serde_json::to_string(&d).expect("serializes");
        // A duplicate of the last batch, an older one, and a one-sample overlap.
        for (at, len) in [(1900, 100), (0, 100), (1999, 10)] {
            let err = d
                .push(batch_ms(250.0, at), 250.0, &run.samples[at..at + len])
                .expect_err("backwards");
            assert!(
                matches!(err, PushError::Backwards { got_ms, .. } if got_ms == batch_ms(250.0, at))
            );
            assert!(err.to_string().contains("duplicate"));
        }
        assert_eq!(serde_json::to_string(&d).expect("serializes"), saved);
        // Carrying on from where it was still works.
        let beats = d
            .push(batch_ms(250.0, 2000), 250.0, &run.samples[2000..2500])
            .expect("in order");
        assert!(!beats.is_empty());
    }

    #[test]
    fn small_timestamp_jitter_moves_beat_times_only() {
        let run = constant(101, 250.0, 75.0, 30.0);
        let reference = detect(&run, 250, DetectorConfig::default());
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let mut beats = Vec::new();
        for (i, chunk) in run.samples.chunks(250).enumerate() {
            // From 15 s on, the producer's clock says 12 ms later.
            let skew = if i >= 15 { 12 } else { 0 };
            beats.extend(
                d.push(batch_ms(250.0, i * 250) + skew, 250.0, chunk)
                    .expect("in order"),
            );
        }
        assert_eq!(beats.len(), reference.len());
        for (b, r) in beats.iter().zip(&reference) {
            let shift = b.t_ms - r.t_ms;
            assert!(shift == 0 || shift == 12, "shift {shift}");
            assert_eq!(b.rr_ms.is_some(), r.rr_ms.is_some());
        }
    }

    #[test]
    fn rate_change_restarts_the_detector() {
        let slow = constant(111, 250.0, 70.0, 10.0);
        let fast = constant(112, 500.0, 70.0, 10.0);
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        d.push(T0_MS, 250.0, &slow.samples).expect("first");
        assert!(!d.is_learning());
        let beats = d
            .push(T0_MS + 10_000, 500.0, &fast.samples)
            .expect("new rate");
        assert!(d.is_learning() || beats.iter().any(|b| b.rr_ms.is_none()));
        let after: Vec<&Beat> = beats.iter().filter(|b| b.t_ms >= T0_MS + 10_000).collect();
        assert!(
            after[0].t_ms >= T0_MS + 11_800,
            "learnt again at 500 Hz: {}",
            after[0].t_ms - T0_MS
        );
        assert_eq!(after[0].rr_ms, None);
    }

    #[test]
    fn searchback_finds_a_weak_beat() {
        let schedule = HrSchedule::constant(72.0).expect("bpm");
        let mut noise = NoiseConfig::clean();
        noise.snr_db = Some(20.0);
        let mut run = generate(121, 250.0, schedule, noise, 30.0);
        // One beat at ~0.45 amplitude: its integrated lobe is ~0.2 of normal,
        // between the two thresholds.
        let weak = run.truth.iter().copied().find(|&t| t > 15.0).expect("beat");
        let centre = (weak * 250.0).round() as usize;
        for x in &mut run.samples[centre - 40..centre + 40] {
            *x *= 0.45;
        }
        let found = |beats: &[Beat]| {
            beats
                .iter()
                .any(|b| ((b.t_ms - T0_MS) as f64 / 1000.0 - weak).abs() <= 0.05)
        };
        let with = detect(&run, 25, DetectorConfig::default());
        assert!(found(&with), "searchback recovers the weak beat");
        let without = detect(
            &run,
            25,
            DetectorConfig {
                searchback: false,
                ..DetectorConfig::default()
            },
        );
        assert!(!found(&without), "the beat is below the main threshold");
        assert_eq!(with.len(), without.len() + 1);
    }

    #[test]
    fn bad_samples_do_not_poison_the_state() {
        let mut run = constant(131, 250.0, 75.0, 30.0);
        for i in (3000..3010).chain([4000, 4001]) {
            run.samples[i] = f32::NAN;
        }
        run.samples[5000] = f32::INFINITY;
        run.samples[5001] = f32::MAX;
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let mut beats = Vec::new();
        for (i, chunk) in run.samples.chunks(25).enumerate() {
            beats.extend(
                d.push(batch_ms(250.0, i * 25), 250.0, chunk)
                    .expect("in order"),
            );
            // The state must always survive JSON (no NaN in it).
            let json = serde_json::to_string(&d).expect("serializes");
            let back: Detector = serde_json::from_str(&json).expect("round trip");
            assert_eq!(back, d);
        }
        // The huge sample upsets a beat or two, then detection is back.
        let late: Vec<&Beat> = beats.iter().filter(|b| b.t_ms > T0_MS + 25_000).collect();
        assert!(late.len() >= 5, "{}", late.len());
        assert!(
            late.iter()
                .all(|b| b.hr_instant.is_some_and(|hr| (hr - 75.0).abs() < 6.0))
        );
    }

    #[test]
    fn flat_line_gives_no_beats() {
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        let flat = vec![0.4f32; 250 * 20];
        assert!(d.push(T0_MS, 250.0, &flat).expect("ok").is_empty());
        assert!(d.is_learning());
        let json = serde_json::to_string(&d).expect("serializes");
        assert!(serde_json::from_str::<Detector>(&json).is_ok());
    }

    #[test]
    fn invalid_rate_and_config_are_refused() {
        let mut d = Detector::new(DetectorConfig::default()).expect("config");
        for rate in [50.0, 2000.0, f32::NAN, 0.0] {
            assert!(matches!(
                d.push(T0_MS, rate, &[0.0]),
                Err(PushError::UnsupportedRate(_))
            ));
        }
        let bad = DetectorConfig {
            rolling_beats: 0,
            ..DetectorConfig::default()
        };
        let err = Detector::new(bad).expect_err("invalid");
        assert_eq!(err.field, "rolling_beats");
        let bad = DetectorConfig {
            band_low_hz: 15.0,
            band_high_hz: 10.0,
            ..DetectorConfig::default()
        };
        assert_eq!(
            Detector::new(bad).expect_err("invalid").field,
            "band_high_hz"
        );
        // Unknown fields are an error, missing ones take defaults.
        assert!(serde_json::from_str::<DetectorConfig>(r#"{"refractory": 5}"#).is_err());
        let partial: DetectorConfig =
            serde_json::from_str(r#"{"rolling_beats": 4}"#).expect("partial config");
        assert_eq!(partial.rolling_beats, 4);
        assert_eq!(partial.refractory_ms, 200.0);
    }

    /// The noisy run of `seed` with the ECG itself scaled by `scale` from
    /// `from_s` on (noise, wander and hum unchanged).
    fn scaled_ecg(seed: u64, bpm: f64, from_s: f64, scale: f32) -> Run {
        let schedule = || HrSchedule::constant(bpm).expect("bpm");
        let mut run = generate(seed, 250.0, schedule(), NoiseConfig::noisy(), 60.0);
        // Same seed, same beats: the clean twin is the ECG part of `run`.
        let clean = generate(seed, 250.0, schedule(), NoiseConfig::clean(), 60.0);
        assert_eq!(run.truth, clean.truth);
        let from = (from_s * 250.0) as usize;
        for (x, c) in run.samples[from..].iter_mut().zip(&clean.samples[from..]) {
            *x += (scale - 1.0) * c;
        }
        run
    }

    #[test]
    fn halved_qrs_is_followed() {
        for bpm in [75.0, 140.0] {
            let run = scaled_ecg(75, bpm, 20.0, 0.5);
            let beats = detect(&run, 25, DetectorConfig::default());
            let s = score(&run, &beats, 3.0, 59.0);
            assert_eq!((s.matched, s.false_pos), (s.truth, 0), "{bpm} bpm: {s:?}");
        }
    }

    #[test]
    fn asystole_gives_no_beats() {
        for (seed, bpm) in [(2, 75.0), (8, 50.0), (10, 140.0)] {
            let run = scaled_ecg(seed, bpm, 20.0, 0.0);
            let beats = detect(&run, 25, DetectorConfig::default());
            let during = beats.iter().filter(|b| b.t_ms > T0_MS + 21_000).count();
            assert_eq!(during, 0, "{during} beats in 39 s of noise");
        }
    }

    /// Prints the accuracy table (`cargo test accuracy_report -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore]
    fn accuracy_report() {
        for rate in [100.0, 250.0, 360.0, 1000.0] {
            for bpm in [40.0, 60.0, 75.0, 100.0, 120.0, 150.0, 180.0] {
                let run = constant(bpm as u64, rate, bpm, 60.0);
                let beats = detect(&run, 25, DetectorConfig::default());
                let s = score(&run, &beats, 3.0, 59.0);
                println!(
                    "{rate:>5} Hz {bpm:>3} bpm: sensitivity {}/{} false positives {} \
                     median |HR err| {:.2} bpm, max timing error {:.1} ms",
                    s.matched, s.truth, s.false_pos, s.median_abs_hr_err, s.max_timing_err_ms
                );
            }
        }
        for rate in [250.0, 1000.0] {
            let (_, max) = state_size(rate);
            println!("state at {rate} Hz: {max} bytes of JSON");
        }
    }
}

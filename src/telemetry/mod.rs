//! Pure telemetry signal code: no I/O, no Kafka, so every piece is unit-tested
//! on its own and the pipeline steps stay thin wrappers around it.
//!
//! - [`waveform`]: the binary batch format of f32 samples carried in Kafka
//!   records and read by browsers as a `Float32Array`.
//! - [`ecg`]: a seeded synthetic ECG with known ground truth (beat times,
//!   heart rate), for `millrace gen` and for testing the detector.
//! - [`rpeaks`]: a streaming Pan–Tompkins R-peak detector with compact,
//!   serializable state.
//! - [`threshold`]: an alert/clear state machine with hysteresis and a
//!   minimum duration.
pub mod ecg;
pub mod rpeaks;
pub mod threshold;
pub mod waveform;

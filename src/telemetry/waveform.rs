//! The waveform batch format: a run of f32 samples from one device, as a Kafka
//! record value carries it and a browser reads it.
//!
//! Layout (all integers and floats little-endian):
//!
//! ```text
//! offset  field
//!  0      magic b"MRWF"                                   4 bytes
//!  4      version u8 = 1
//!  5      flags u8 = 0 (reserved)
//!  6      device id length in bytes, u16
//!  8      timestamp of the first sample, i64, ms since the Unix epoch
//! 16      sample rate, f32, Hz
//! 20      sample count, u32
//! 24      device id, UTF-8, zero-padded to a multiple of 4 bytes
//! ..      samples, f32 each
//! ```
//!
//! The device id is padded so that the samples start at a 4-byte-aligned
//! offset ([`samples_offset`]): a browser can then view them in place as
//! `new Float32Array(buffer, offset, count)` without copying. Decoding is
//! strict (exact length, zero padding, known version and flags) so that a
//! corrupt or foreign record is reported precisely instead of being read as
//! a plausible but wrong waveform. Sample values are carried bit for bit,
//! NaN included; only the header fields are validated.
//!
//! [`to_json`]/[`from_json`] give the same batch as JSON
//! (`{"device", "t0", "rate", "samples"}`) for consumers that cannot read
//! binary.

use std::fmt;

use serde_json::{Map, Value};

/// The four bytes every batch starts with.
pub const MAGIC: [u8; 4] = *b"MRWF";
/// The only format version this code reads and writes.
pub const VERSION: u8 = 1;
/// Length of the fixed header before the device id.
pub const HEADER_LEN: usize = 24;
/// Most samples one batch may hold. A batch is one Kafka record, so a larger
/// count is a corrupt header, not real data; the cap also stops a bad count
/// from making the decoder allocate gigabytes.
pub const MAX_SAMPLES: usize = 1_000_000;
/// Longest device id the u16 length field can describe.
pub const MAX_DEVICE_LEN: usize = u16::MAX as usize;

/// One batch of consecutive samples from one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Device id, UTF-8, at most [`MAX_DEVICE_LEN`] bytes.
    pub device: String,
    /// Timestamp of `samples[0]`, ms since the Unix epoch.
    pub first_sample_ms: i64,
    /// Samples per second; finite and positive.
    pub sample_rate: f32,
    /// The samples, in the device's unit (mV for ECG).
    pub samples: Vec<f32>,
}

/// Why a batch could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum WaveformError {
    /// The first four bytes are not `MRWF`.
    BadMagic { found: [u8; 4] },
    /// A version this code does not know.
    UnsupportedVersion(u8),
    /// Reserved flag bits are set: written by a newer format this code cannot read.
    UnsupportedFlags(u8),
    /// Fewer than [`HEADER_LEN`] bytes.
    TruncatedHeader { len: usize },
    /// The input ends inside the (padded) device id.
    TruncatedDevice { needed: usize, available: usize },
    /// The input ends before the announced number of samples.
    TruncatedSamples { needed: usize, available: usize },
    /// Bytes follow the last announced sample.
    TrailingBytes { extra: usize },
    /// The device id is not valid UTF-8.
    DeviceNotUtf8,
    /// The padding after the device id is not all zero bytes.
    NonZeroPadding,
    /// The device id is longer than the u16 length field allows.
    DeviceTooLong { len: usize },
    /// The sample rate is NaN, infinite, zero or negative.
    BadSampleRate(f32),
    /// More samples than [`MAX_SAMPLES`].
    TooManySamples { count: usize, max: usize },
    /// The JSON form is malformed; the text says which field.
    Json(String),
}

impl fmt::Display for WaveformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { found } => write!(
                f,
                "not a waveform batch: magic is {found:02x?}, expected \"MRWF\""
            ),
            Self::UnsupportedVersion(v) => write!(
                f,
                "waveform batch version {v} is not supported (this build reads version {VERSION})"
            ),
            Self::UnsupportedFlags(flags) => write!(
                f,
                "waveform batch has unknown flags {flags:#04x} (written by a newer producer?)"
            ),
            Self::TruncatedHeader { len } => write!(
                f,
                "waveform batch truncated: {len} bytes, the header alone is {HEADER_LEN}"
            ),
            Self::TruncatedDevice { needed, available } => write!(
                f,
                "waveform batch truncated in the device id: needs {needed} bytes, has {available}"
            ),
            Self::TruncatedSamples { needed, available } => write!(
                f,
                "waveform batch truncated in the samples: needs {needed} bytes, has {available}"
            ),
            Self::TrailingBytes { extra } => write!(
                f,
                "waveform batch has {extra} bytes after the last sample (wrong sample count?)"
            ),
            Self::DeviceNotUtf8 => write!(f, "waveform batch device id is not valid UTF-8"),
            Self::NonZeroPadding => {
                write!(f, "waveform batch padding after the device id is not zero")
            }
            Self::DeviceTooLong { len } => write!(
                f,
                "device id is {len} bytes, the format allows at most {MAX_DEVICE_LEN}"
            ),
            Self::BadSampleRate(rate) => write!(
                f,
                "sample rate {rate} is not a finite positive number of Hz"
            ),
            Self::TooManySamples { count, max } => write!(
                f,
                "batch has {count} samples, at most {max} are allowed in one batch"
            ),
            Self::Json(why) => write!(f, "waveform JSON: {why}"),
        }
    }
}

impl std::error::Error for WaveformError {}

/// Byte offset of the first sample in a batch whose device id is
/// `device_len` bytes long: the header plus the id rounded up to a multiple
/// of 4, so the offset is always 4-byte aligned.
pub fn samples_offset(device_len: usize) -> usize {
    HEADER_LEN + padded_len(device_len)
}

/// `len` rounded up to a multiple of 4.
fn padded_len(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn check_rate(rate: f32) -> Result<(), WaveformError> {
    if rate.is_finite() && rate > 0.0 {
        Ok(())
    } else {
        Err(WaveformError::BadSampleRate(rate))
    }
}

/// Encodes a batch. Fails only for batches the format cannot hold or that
/// [`decode`] would refuse (id too long, too many samples, bad rate), so every
/// encoded batch decodes back to an equal one.
pub fn encode(batch: &Batch) -> Result<Vec<u8>, WaveformError> {
    let device = batch.device.as_bytes();
    let device_len = u16::try_from(device.len())
        .map_err(|_| WaveformError::DeviceTooLong { len: device.len() })?;
    let count = batch.samples.len();
    if count > MAX_SAMPLES {
        return Err(WaveformError::TooManySamples {
            count,
            max: MAX_SAMPLES,
        });
    }
    // Fits: count <= MAX_SAMPLES < u32::MAX.
    let count_u32 = count as u32;
    check_rate(batch.sample_rate)?;

    let offset = samples_offset(device.len());
    let mut out = Vec::with_capacity(offset + 4 * count);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0); // flags
    out.extend_from_slice(&device_len.to_le_bytes());
    out.extend_from_slice(&batch.first_sample_ms.to_le_bytes());
    out.extend_from_slice(&batch.sample_rate.to_le_bytes());
    out.extend_from_slice(&count_u32.to_le_bytes());
    out.extend_from_slice(device);
    out.resize(offset, 0);
    for sample in &batch.samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    Ok(out)
}

/// Reads `N` bytes at `at`; the caller has checked the length.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Decodes a batch, checking every header field and the exact length.
pub fn decode(bytes: &[u8]) -> Result<Batch, WaveformError> {
    if bytes.len() < HEADER_LEN {
        // Report a wrong magic before a short length when both apply: a
        // foreign record is the likelier story.
        if bytes.len() >= 4 && bytes[..4] != MAGIC {
            return Err(WaveformError::BadMagic {
                found: array(bytes, 0),
            });
        }
        return Err(WaveformError::TruncatedHeader { len: bytes.len() });
    }
    let magic: [u8; 4] = array(bytes, 0);
    if magic != MAGIC {
        return Err(WaveformError::BadMagic { found: magic });
    }
    if bytes[4] != VERSION {
        return Err(WaveformError::UnsupportedVersion(bytes[4]));
    }
    if bytes[5] != 0 {
        return Err(WaveformError::UnsupportedFlags(bytes[5]));
    }
    let device_len = usize::from(u16::from_le_bytes(array(bytes, 6)));
    let first_sample_ms = i64::from_le_bytes(array(bytes, 8));
    let sample_rate = f32::from_le_bytes(array(bytes, 16));
    check_rate(sample_rate)?;
    let count = u32::from_le_bytes(array(bytes, 20)) as usize;
    if count > MAX_SAMPLES {
        return Err(WaveformError::TooManySamples {
            count,
            max: MAX_SAMPLES,
        });
    }

    let offset = samples_offset(device_len);
    if bytes.len() < offset {
        return Err(WaveformError::TruncatedDevice {
            needed: offset,
            available: bytes.len(),
        });
    }
    let device_end = HEADER_LEN + device_len;
    if bytes[device_end..offset].iter().any(|&b| b != 0) {
        return Err(WaveformError::NonZeroPadding);
    }
    let device = std::str::from_utf8(&bytes[HEADER_LEN..device_end])
        .map_err(|_| WaveformError::DeviceNotUtf8)?
        .to_owned();

    // count <= MAX_SAMPLES, so neither product nor sum can overflow.
    let needed = offset + 4 * count;
    if bytes.len() < needed {
        return Err(WaveformError::TruncatedSamples {
            needed,
            available: bytes.len(),
        });
    }
    if bytes.len() > needed {
        return Err(WaveformError::TrailingBytes {
            extra: bytes.len() - needed,
        });
    }
    let samples = bytes[offset..]
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    Ok(Batch {
        device,
        first_sample_ms,
        sample_rate,
        samples,
    })
}

/// The JSON number for an f32: the shortest decimal that reads back as the
/// same f32 (`0.1`, not `0.10000000149011612`), which keeps JSON batches
/// small; the exact widening is the fallback if that decimal does not
/// survive the trip through f64.
fn f32_to_json(x: f32) -> Value {
    if !x.is_finite() {
        // JSON has no NaN or infinity; `null` marks a missing sample.
        return Value::Null;
    }
    let short = x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    let chosen = if short as f32 == x {
        short
    } else {
        f64::from(x)
    };
    serde_json::Number::from_f64(chosen).map_or(Value::Null, Value::Number)
}

/// The batch as JSON: `{"device": "...", "t0": <ms>, "rate": <Hz>,
/// "samples": [...]}`. A non-finite sample becomes `null` (JSON has no NaN);
/// [`from_json`] reads `null` back as NaN.
pub fn to_json(batch: &Batch) -> Value {
    let mut map = Map::new();
    map.insert("device".into(), Value::String(batch.device.clone()));
    map.insert("t0".into(), Value::from(batch.first_sample_ms));
    map.insert("rate".into(), f32_to_json(batch.sample_rate));
    map.insert(
        "samples".into(),
        Value::Array(batch.samples.iter().map(|&s| f32_to_json(s)).collect()),
    );
    Value::Object(map)
}

/// Reads the JSON form written by [`to_json`], with the same limits as
/// [`decode`]. Unknown fields are ignored, so the JSON can grow.
pub fn from_json(value: &Value) -> Result<Batch, WaveformError> {
    let bad = |why: &str| WaveformError::Json(why.to_owned());
    let map = value.as_object().ok_or_else(|| bad("not an object"))?;
    let device = map
        .get("device")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("\"device\" missing or not a string"))?;
    if device.len() > MAX_DEVICE_LEN {
        return Err(WaveformError::DeviceTooLong { len: device.len() });
    }
    let first_sample_ms = map
        .get("t0")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("\"t0\" missing or not an integer (ms since the epoch)"))?;
    let rate = map
        .get("rate")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("\"rate\" missing or not a number"))?;
    let sample_rate = rate as f32;
    check_rate(sample_rate)?;
    let raw = map
        .get("samples")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("\"samples\" missing or not an array"))?;
    if raw.len() > MAX_SAMPLES {
        return Err(WaveformError::TooManySamples {
            count: raw.len(),
            max: MAX_SAMPLES,
        });
    }
    let samples = raw
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Ok(f32::NAN),
            other => other
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| WaveformError::Json(format!("samples[{i}] is not a number"))),
        })
        .collect::<Result<Vec<f32>, _>>()?;
    Ok(Batch {
        device: device.to_owned(),
        first_sample_ms,
        sample_rate,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn batch(device: &str, samples: Vec<f32>) -> Batch {
        Batch {
            device: device.to_owned(),
            first_sample_ms: 1_767_225_600_123,
            sample_rate: 250.0,
            samples,
        }
    }

    fn encoded(b: &Batch) -> Vec<u8> {
        encode(b).expect("valid batch encodes")
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let b = batch("ab", vec![1.5, -2.0]);
        let bytes = encoded(&b);
        assert_eq!(&bytes[0..4], b"MRWF");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 0);
        assert_eq!(&bytes[6..8], &2u16.to_le_bytes());
        assert_eq!(&bytes[8..16], &b.first_sample_ms.to_le_bytes());
        assert_eq!(&bytes[16..20], &250f32.to_le_bytes());
        assert_eq!(&bytes[20..24], &2u32.to_le_bytes());
        assert_eq!(&bytes[24..28], b"ab\0\0");
        assert_eq!(&bytes[28..32], &1.5f32.to_le_bytes());
        assert_eq!(&bytes[32..36], &(-2.0f32).to_le_bytes());
        assert_eq!(bytes.len(), 36);
    }

    #[test]
    fn samples_start_aligned_for_every_id_length() {
        for len in 0..=9 {
            let b = batch(&"d".repeat(len), vec![7.0]);
            let bytes = encoded(&b);
            let offset = samples_offset(len);
            assert_eq!(offset % 4, 0, "id length {len}");
            assert_eq!(bytes.len(), offset + 4);
            assert_eq!(&bytes[offset..], &7f32.to_le_bytes());
        }
        assert_eq!(samples_offset(0), 24);
        assert_eq!(samples_offset(1), 28);
        assert_eq!(samples_offset(4), 28);
        assert_eq!(samples_offset(5), 32);
    }

    #[test]
    fn round_trip_keeps_every_bit() {
        let samples = vec![
            0.0,
            -0.0,
            1.0e-40, // subnormal
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7fc0_1234), // NaN with a payload
            0.1,
        ];
        let b = Batch {
            device: "monitor-7/ICU ü".to_owned(),
            first_sample_ms: -5,
            sample_rate: 360.5,
            samples,
        };
        let back = decode(&encoded(&b)).expect("decodes");
        assert_eq!(back.device, b.device);
        assert_eq!(back.first_sample_ms, b.first_sample_ms);
        assert_eq!(back.sample_rate, b.sample_rate);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.samples), bits(&b.samples));

        let empty = batch("", vec![]);
        assert_eq!(decode(&encoded(&empty)), Ok(empty));
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let long = batch(&"x".repeat(MAX_DEVICE_LEN + 1), vec![]);
        assert_eq!(
            encode(&long),
            Err(WaveformError::DeviceTooLong {
                len: MAX_DEVICE_LEN + 1
            })
        );
        let max_id = batch(&"x".repeat(MAX_DEVICE_LEN), vec![1.0]);
        assert_eq!(decode(&encoded(&max_id)), Ok(max_id));

        let many = batch("d", vec![0.0; MAX_SAMPLES + 1]);
        assert_eq!(
            encode(&many),
            Err(WaveformError::TooManySamples {
                count: MAX_SAMPLES + 1,
                max: MAX_SAMPLES
            })
        );
        for rate in [0.0, -250.0, f32::NAN, f32::INFINITY] {
            let mut b = batch("d", vec![]);
            b.sample_rate = rate;
            assert!(matches!(encode(&b), Err(WaveformError::BadSampleRate(_))));
        }
    }

    #[test]
    fn every_decode_error_is_reported_precisely() {
        let good = encoded(&batch("dev1x", vec![1.0, 2.0, 3.0]));
        // "dev1x" is 5 bytes: padded to 8, samples at 32, 12 bytes of samples.
        assert_eq!(good.len(), 44);

        assert_eq!(decode(&[]), Err(WaveformError::TruncatedHeader { len: 0 }));
        assert_eq!(
            decode(&good[..23]),
            Err(WaveformError::TruncatedHeader { len: 23 })
        );
        assert_eq!(
            decode(b"PK\x03\x04 zip"),
            Err(WaveformError::BadMagic {
                found: *b"PK\x03\x04"
            })
        );

        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(WaveformError::BadMagic { found: *b"XRWF" }));

        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(decode(&b), Err(WaveformError::UnsupportedVersion(2)));

        let mut b = good.clone();
        b[5] = 0x80;
        assert_eq!(decode(&b), Err(WaveformError::UnsupportedFlags(0x80)));

        for rate in [0.0f32, -1.0, f32::NAN, f32::NEG_INFINITY] {
            let mut b = good.clone();
            b[16..20].copy_from_slice(&rate.to_le_bytes());
            assert!(matches!(decode(&b), Err(WaveformError::BadSampleRate(_))));
        }

        let mut b = good.clone();
        b[20..24].copy_from_slice(&(MAX_SAMPLES as u32 + 1).to_le_bytes());
        assert_eq!(
            decode(&b),
            Err(WaveformError::TooManySamples {
                count: MAX_SAMPLES + 1,
                max: MAX_SAMPLES
            })
        );
        let mut b = good.clone();
        b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&b),
            Err(WaveformError::TooManySamples { .. })
        ));

        assert_eq!(
            decode(&good[..30]),
            Err(WaveformError::TruncatedDevice {
                needed: 32,
                available: 30
            })
        );

        let mut b = good.clone();
        b[30] = 1; // inside the padding after "dev1x"
        assert_eq!(decode(&b), Err(WaveformError::NonZeroPadding));

        let mut b = good.clone();
        b[25] = 0xff;
        assert_eq!(decode(&b), Err(WaveformError::DeviceNotUtf8));

        assert_eq!(
            decode(&good[..43]),
            Err(WaveformError::TruncatedSamples {
                needed: 44,
                available: 43
            })
        );

        let mut b = good.clone();
        b.extend_from_slice(&[0, 0]);
        assert_eq!(decode(&b), Err(WaveformError::TrailingBytes { extra: 2 }));

        // A count one too small leaves a whole sample trailing.
        let mut b = good.clone();
        b[20..24].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode(&b), Err(WaveformError::TrailingBytes { extra: 4 }));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let text = WaveformError::TruncatedSamples {
            needed: 44,
            available: 43,
        }
        .to_string();
        assert!(text.contains("44") && text.contains("43"), "{text}");
        let text = WaveformError::BadMagic {
            found: *b"PK\x03\x04",
        }
        .to_string();
        assert!(text.contains("MRWF"), "{text}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        let good = encoded(&batch("device-42", (0..16).map(|i| i as f32).collect()));
        let mut decoded_ok = 0;
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                // Pure noise, mostly short, sometimes starting with the magic.
                let len = rng.random_range(0..80);
                let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if round % 4 == 0 && len >= 4 {
                    b[..4].copy_from_slice(&MAGIC);
                }
                b
            } else {
                // A valid batch with a few bytes flipped, cut or extended.
                let mut b = good.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                match rng.random_range(0..3) {
                    0 => b.truncate(rng.random_range(0..=b.len())),
                    1 => b.extend((0..rng.random_range(1..9)).map(|_| rng.random::<u8>())),
                    _ => {}
                }
                b
            };
            if let Ok(batch) = decode(&bytes) {
                decoded_ok += 1;
                // Whatever decodes must encode back to the same bytes.
                assert_eq!(encode(&batch).as_deref(), Ok(&bytes[..]));
            }
        }
        // Flips in the timestamp or samples still decode: the loop did reach
        // the success path, so it checked more than error returns.
        assert!(decoded_ok > 100, "only {decoded_ok} inputs decoded");
    }

    #[test]
    fn json_round_trip_is_exact_and_compact() {
        let b = Batch {
            device: "bed-3".to_owned(),
            first_sample_ms: 1_767_225_600_000,
            sample_rate: 250.0,
            samples: vec![0.1, -1.25, 3.4028235e38, 1.0e-45, f32::NAN, 0.333_333_34],
        };
        let json = to_json(&b);
        let text = json.to_string();
        assert!(text.contains("0.1,"), "shortest form expected: {text}");
        assert!(text.contains("null"), "NaN becomes null: {text}");
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        let back = from_json(&parsed).expect("reads back");
        assert_eq!(back.device, b.device);
        assert_eq!(back.first_sample_ms, b.first_sample_ms);
        assert_eq!(back.sample_rate, b.sample_rate);
        assert_eq!(back.samples.len(), b.samples.len());
        for (x, y) in back.samples.iter().zip(&b.samples) {
            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        }
    }

    #[test]
    fn json_values_survive_for_random_floats() {
        let mut rng = StdRng::seed_from_u64(11);
        let samples: Vec<f32> = (0..5000)
            .map(|_| f32::from_bits(rng.random::<u32>()))
            .filter(|x| x.is_finite())
            .collect();
        let b = batch("d", samples);
        let text = to_json(&b).to_string();
        let back = from_json(&serde_json::from_str(&text).expect("JSON")).expect("batch");
        assert_eq!(back, b);
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = |v: Value| match from_json(&v) {
            Err(WaveformError::Json(why)) => why,
            other => panic!("expected a JSON error, got {other:?}"),
        };
        assert!(err(Value::from(3)).contains("object"));
        assert!(err(serde_json::json!({"t0": 1, "rate": 250, "samples": []})).contains("device"));
        assert!(
            err(serde_json::json!({"device": "d", "t0": 1.5, "rate": 250, "samples": []}))
                .contains("t0")
        );
        assert!(
            err(serde_json::json!({"device": "d", "t0": 1, "rate": "fast", "samples": []}))
                .contains("rate")
        );
        assert!(
            err(serde_json::json!({"device": "d", "t0": 1, "rate": 250, "samples": [1, "x"]}))
                .contains("samples[1]")
        );
        assert_eq!(
            from_json(&serde_json::json!({"device": "d", "t0": 1, "rate": 0, "samples": []})),
            Err(WaveformError::BadSampleRate(0.0))
        );
    }
}

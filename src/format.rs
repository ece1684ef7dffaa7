//! Record value encodings: the bytes of a consumed value to the JSON
//! document steps see, and a step's result to the bytes a sink produces.
//! JSON is parsed as is; Avro goes through [`crate::avro`], with writer
//! schemas from the registry.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::avro::{self, ParsedSchema, Problem, SchemaCache};
use crate::pipeline::FailureReason;
use crate::telemetry::waveform;

/// How a source's values are decoded.
#[derive(Debug, Clone)]
pub enum ValueDecoder {
    Json,
    Avro(avro::Decoder),
    /// Waveform batches ([`waveform`]), as `{"device", "t0", "rate",
    /// "samples"}`.
    Waveform,
}

/// Why a value did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeFailure {
    /// The record is bad: it goes to the dead-letter topic for `reason`.
    Record {
        reason: FailureReason,
        message: String,
    },
    /// The schema registry could not be reached: the record is not at fault
    /// and waits (see [`crate::avro::cache`]).
    RegistryUnavailable { message: String, retry_in: Duration },
}

impl ValueDecoder {
    /// Decodes a record value. A missing value (a Kafka tombstone) is an
    /// error: pipelines expect a document.
    pub fn decode(
        &self,
        payload: Option<&[u8]>,
        schemas: &mut SchemaCache,
    ) -> Result<Json, DecodeFailure> {
        let Some(bytes) = payload else {
            return Err(DecodeFailure::Record {
                reason: FailureReason::Decode,
                message: "the record has no value (tombstone)".into(),
            });
        };
        match self {
            ValueDecoder::Json => {
                serde_json::from_slice(bytes).map_err(|e| DecodeFailure::Record {
                    reason: FailureReason::Decode,
                    message: format!("invalid JSON: {e}"),
                })
            }
            ValueDecoder::Waveform => waveform::decode(bytes)
                .map(|batch| waveform::to_json(&batch))
                .map_err(|e| DecodeFailure::Record {
                    reason: FailureReason::Decode,
                    message: format!("invalid waveform batch: {e}"),
                }),
            ValueDecoder::Avro(decoder) => decoder.decode(bytes, schemas).map_err(|e| match e {
                avro::DecodeError::Record { problem, message } => DecodeFailure::Record {
                    reason: reason_for(problem),
                    message,
                },
                avro::DecodeError::Unavailable { message, retry_in } => {
                    DecodeFailure::RegistryUnavailable { message, retry_in }
                }
            }),
        }
    }
}

/// The dead-letter reason of each Avro decoding problem.
fn reason_for(problem: Problem) -> FailureReason {
    match problem {
        Problem::WrongMagic => FailureReason::WrongMagic,
        Problem::Truncated => FailureReason::Truncated,
        Problem::UnknownSchema => FailureReason::UnknownSchema,
        Problem::Corrupt => FailureReason::Decode,
        Problem::Incompatible => FailureReason::IncompatibleSchema,
    }
}

/// How a sink's values are encoded.
#[derive(Debug, Clone)]
pub enum ValueEncoder {
    Json,
    Avro(AvroSink),
    /// Waveform batches, from `{"device", "t0", "rate", "samples"}`.
    Waveform,
}

/// An Avro sink's schema, its subject, and (once registered) its encoder.
#[derive(Debug, Clone)]
pub struct AvroSink {
    pub schema: Arc<ParsedSchema>,
    pub subject: String,
    pub auto_register: bool,
    /// Set by [`crate::pipeline::Pipeline::register_schemas`] at start.
    pub encoder: Option<avro::Encoder>,
}

impl ValueEncoder {
    /// Encodes a value for a sink.
    pub fn encode(&self, value: &Json) -> Result<Vec<u8>, String> {
        match self {
            ValueEncoder::Json => {
                serde_json::to_vec(value).map_err(|e| format!("cannot encode JSON: {e}"))
            }
            ValueEncoder::Waveform => waveform::from_json(value)
                .and_then(|batch| waveform::encode(&batch))
                .map_err(|e| format!("cannot encode a waveform batch: {e}")),
            ValueEncoder::Avro(sink) => match &sink.encoder {
                Some(encoder) => encoder.encode(value),
                None => Err(format!(
                    "the schema of subject `{}` is not registered yet",
                    sink.subject
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offline() -> SchemaCache {
        SchemaCache::new(None)
    }

    fn decode(decoder: &ValueDecoder, bytes: Option<&[u8]>) -> Result<Json, DecodeFailure> {
        decoder.decode(bytes, &mut offline())
    }

    fn reason(result: Result<Json, DecodeFailure>) -> FailureReason {
        match result {
            Err(DecodeFailure::Record { reason, .. }) => reason,
            other => panic!("not a record failure: {other:?}"),
        }
    }

    #[test]
    fn json_round_trips() {
        let v = json!({"a": [1, 2.5, "x", null, true]});
        let bytes = ValueEncoder::Json.encode(&v).unwrap();
        assert_eq!(decode(&ValueDecoder::Json, Some(&bytes)).unwrap(), v);
    }

    #[test]
    fn floats_survive_exactly() {
        // serde_json's default float parser can be off by one ulp; the
        // `float_roundtrip` feature makes a decode/encode cycle exact.
        let x: f64 = 32.0 + 37.0 * 1.8;
        let bytes = ValueEncoder::Json.encode(&json!({ "f": x })).unwrap();
        let back = decode(&ValueDecoder::Json, Some(&bytes)).unwrap();
        assert_eq!(back["f"].as_f64().unwrap().to_bits(), x.to_bits());
    }

    #[test]
    fn bad_input_is_explained() {
        let e = decode(&ValueDecoder::Json, Some(b"{not json"));
        assert!(
            matches!(&e, Err(DecodeFailure::Record { message, .. }) if message.contains("invalid JSON"))
        );
        assert_eq!(reason(e), FailureReason::Decode);
        let e = decode(&ValueDecoder::Json, None);
        assert!(
            matches!(&e, Err(DecodeFailure::Record { message, .. }) if message.contains("tombstone"))
        );
    }

    #[test]
    fn avro_problems_have_their_own_reasons() {
        let avro = ValueDecoder::Avro(avro::Decoder::new(None));
        assert_eq!(
            reason(decode(&avro, Some(b"{}"))),
            FailureReason::WrongMagic
        );
        assert_eq!(
            reason(decode(&avro, Some(&[0, 0]))),
            FailureReason::Truncated
        );
        assert_eq!(
            reason(decode(&avro, Some(&[0, 0, 0, 0, 9, 2]))),
            FailureReason::UnknownSchema
        );
        assert_eq!(reason(decode(&avro, None)), FailureReason::Decode);
    }

    #[test]
    fn waveform_batches_round_trip_and_bad_ones_are_dead_letters() {
        let batch = json!({"device": "m1", "t0": 1_000, "rate": 250.0, "samples": [0.5, -1.25]});
        let bytes = ValueEncoder::Waveform.encode(&batch).unwrap();
        assert_eq!(
            decode(&ValueDecoder::Waveform, Some(&bytes)).unwrap(),
            batch
        );
        assert_eq!(
            reason(decode(&ValueDecoder::Waveform, Some(b"MRWF"))),
            FailureReason::Decode
        );
    }

    #[test]
    fn an_unregistered_sink_refuses_to_encode() {
        let sink = ValueEncoder::Avro(AvroSink {
            schema: Arc::new(ParsedSchema::parse(r#""string""#).unwrap()),
            subject: "t-value".into(),
            auto_register: true,
            encoder: None,
        });
        let e = sink.encode(&json!("x")).unwrap_err();
        assert!(e.contains("t-value"), "{e}");
    }
}

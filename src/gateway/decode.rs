//! The decode seam: how a bridged topic's record values become what
//! subscribers receive and what filters see.
//!
//! - `json`: UTF-8 JSON documents. Decoded once per record (by the live
//!   tail, or by a subscriber's history reader) and re-rendered compactly.
//! - `raw`: opaque bytes (f32 waveform batches, images, ...). Never decoded:
//!   WebSocket binary frames carry them untouched, JSON messages carry them
//!   as base64. Filters see `value` as null.
//! - `avro`: decoded to JSON by a [`StructuredDecoder`]. The Avro support
//!   (`src/avro/`) plugs in by implementing that trait; until it is there a
//!   gateway file naming an `avro` topic is refused at load.
//!
//! Pure functions, no I/O.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;

/// Encoding of a bridged topic's record values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicFormat {
    /// One JSON document per record.
    #[default]
    Json,
    /// Opaque bytes, passed through.
    Raw,
    /// Avro in the Confluent wire format, decoded to JSON.
    Avro,
}

impl fmt::Display for TopicFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicFormat::Json => "json",
            TopicFormat::Raw => "raw",
            TopicFormat::Avro => "avro",
        })
    }
}

/// Message for `format: avro` until the Avro decoder is wired in.
pub fn unsupported_avro() -> String {
    "format `avro` is not supported by the gateway yet (it arrives with Avro and \
     schema registry support); use `json` or `raw`"
        .to_string()
}

/// A decoder of a structured binary encoding into JSON (Avro). Called once
/// per record on the live tail's thread or a history reader's task, so it
/// should answer from memory (a schema cache) in the common case.
pub trait StructuredDecoder: Send + Sync {
    /// Decodes one record value.
    fn decode(&self, payload: &[u8]) -> Result<Json, String>;
}

/// Turns record values into [`Value`]s for one topic.
#[derive(Clone)]
pub enum Decoder {
    Json,
    Raw,
    Structured(Arc<dyn StructuredDecoder>),
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decoder::Json => "Decoder::Json",
            Decoder::Raw => "Decoder::Raw",
            Decoder::Structured(_) => "Decoder::Structured",
        })
    }
}

/// A decoded record value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A decoded document (JSON or Avro topics).
    Json(Json),
    /// Bytes of a raw topic.
    Bytes(Vec<u8>),
    /// No value (a tombstone).
    Null,
    /// The bytes did not decode; they are kept so the subscriber still sees
    /// the record (as base64) with the reason.
    Invalid { error: String, bytes: Vec<u8> },
}

impl Decoder {
    /// The decoder for a format, or why there is none.
    pub fn for_format(format: TopicFormat) -> Result<Decoder, String> {
        match format {
            TopicFormat::Json => Ok(Decoder::Json),
            TopicFormat::Raw => Ok(Decoder::Raw),
            TopicFormat::Avro => Err(unsupported_avro()),
        }
    }

    /// Whether values are opaque bytes (binary WebSocket frames are the
    /// natural form).
    pub fn is_raw(&self) -> bool {
        matches!(self, Decoder::Raw)
    }

    /// Decodes one record value.
    pub fn decode(&self, payload: Option<&[u8]>) -> Value {
        let Some(bytes) = payload else {
            return Value::Null;
        };
        let decoded = match self {
            Decoder::Raw => return Value::Bytes(bytes.to_vec()),
            Decoder::Json => {
                serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
            }
            Decoder::Structured(d) => d.decode(bytes),
        };
        match decoded {
            Ok(json) => Value::Json(json),
            Err(error) => Value::Invalid {
                error,
                bytes: bytes.to_vec(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_raw_and_tombstones() {
        assert_eq!(
            Decoder::Json.decode(Some(br#"{"hr": 71}"#)),
            Value::Json(json!({"hr": 71}))
        );
        assert_eq!(
            Decoder::Raw.decode(Some(&[0, 0, 128, 63])),
            Value::Bytes(vec![0, 0, 128, 63])
        );
        assert_eq!(Decoder::Json.decode(None), Value::Null);
        match Decoder::Json.decode(Some(b"{oops")) {
            Value::Invalid { error, bytes } => {
                assert!(error.contains("invalid JSON"), "{error}");
                assert_eq!(bytes, b"{oops");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn avro_is_refused_until_it_lands_and_plugs_in_through_the_trait() {
        assert!(
            Decoder::for_format(TopicFormat::Avro)
                .unwrap_err()
                .contains("not supported")
        );
        struct Upper;
        impl StructuredDecoder for Upper {
            fn decode(&self, payload: &[u8]) -> Result<Json, String> {
                Ok(json!(String::from_utf8_lossy(payload).to_uppercase()))
            }
        }
        let d = Decoder::Structured(Arc::new(Upper));
        assert_eq!(d.decode(Some(b"abc")), Value::Json(json!("ABC")));
    }
}

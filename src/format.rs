//! Record value encodings: bytes on the wire to decoded values and back.
//! Pure functions, no I/O.

use serde_json::Value as Json;

use crate::config::Format;
use crate::telemetry::waveform;

/// Decodes a record value. A missing value (a Kafka tombstone) is an error:
/// JSON pipelines expect a document.
pub fn decode(format: Format, payload: Option<&[u8]>) -> Result<Json, String> {
    let bytes = payload.ok_or_else(|| "the record has no value (tombstone)".to_string())?;
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
        Format::Avro => Err(unsupported_avro()),
        Format::Waveform => waveform::decode(bytes)
            .map(|batch| waveform::to_json(&batch))
            .map_err(|e| format!("invalid waveform batch: {e}")),
    }
}

/// Encodes a value for a sink.
pub fn encode(format: Format, value: &Json) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| format!("cannot encode JSON: {e}")),
        Format::Avro => Err(unsupported_avro()),
        Format::Waveform => waveform::from_json(value)
            .and_then(|batch| waveform::encode(&batch))
            .map_err(|e| format!("cannot encode a waveform batch: {e}")),
    }
}

/// The message for `format: avro` until Avro support lands.
pub fn unsupported_avro() -> String {
    "format `avro` is not supported yet (Avro with a schema registry is planned); use `json`"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips() {
        let v = json!({"a": [1, 2.5, "x", null, true]});
        let bytes = encode(Format::Json, &v).unwrap();
        assert_eq!(decode(Format::Json, Some(&bytes)).unwrap(), v);
    }

    #[test]
    fn floats_survive_exactly() {
        // serde_json's default float parser can be off by one ulp; the
        // `float_roundtrip` feature makes a decode/encode cycle exact.
        let x: f64 = 32.0 + 37.0 * 1.8;
        let bytes = encode(Format::Json, &json!({ "f": x })).unwrap();
        let back = decode(Format::Json, Some(&bytes)).unwrap();
        assert_eq!(back["f"].as_f64().unwrap().to_bits(), x.to_bits());
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(
            decode(Format::Json, Some(b"{not json"))
                .unwrap_err()
                .contains("invalid JSON")
        );
        assert!(
            decode(Format::Json, None)
                .unwrap_err()
                .contains("tombstone")
        );
        assert!(
            decode(Format::Avro, Some(b"\0"))
                .unwrap_err()
                .contains("not supported")
        );
    }
}

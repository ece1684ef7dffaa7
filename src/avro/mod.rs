//! Avro in the Confluent wire format, with schemas in a schema registry.
//!
//! Where to look:
//! - [`wire`]: the framing (magic byte 0, big-endian schema id, body).
//! - [`datum`]: Avro bodies: decode with the writer schema, resolve to the
//!   reader schema ([`resolve`]), encode; [`depth`] bounds their nesting.
//! - [`json`]: Avro values to the JSON documents steps see, and back.
//! - [`codec`]: those three put together for one source or sink.
//! - [`cache`]: writer schemas by id from the registry (through
//!   [`crate::registry::client`]), with backoff while it is down;
//!   registration of sink schemas.
//!
//! `wire`, `schema`, `datum`, `depth`, `resolve`, `decimal`, `json` and `codec` do no I/O and
//! use nothing else of the crate, so the fuzz target (`fuzz/`) compiles
//! them on their own.

pub mod cache;
pub mod codec;
pub mod datum;
mod decimal;
pub mod depth;
pub mod json;
pub mod resolve;
pub mod schema;
pub mod wire;

use std::path::Path;
use std::sync::Arc;

pub use cache::{RegisterError, SchemaCache};
pub use codec::{DecodeError, Decoder, Encoder, Problem};
pub use schema::ParsedSchema;

use crate::config::SubjectStrategy;

/// Reads and parses an `.avsc` file.
pub fn load_schema(path: &Path) -> Result<Arc<ParsedSchema>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    ParsedSchema::parse(&text)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The registry subject a sink writing `schema` to `topic` registers under.
/// Record-name strategies need a named schema (record, enum or fixed).
pub fn subject(
    strategy: SubjectStrategy,
    topic: &str,
    schema: &ParsedSchema,
) -> Result<String, String> {
    let full_name = || {
        schema.full_name().ok_or_else(|| {
            format!("subject strategy `{strategy}` needs a named schema (a record, enum or fixed)")
        })
    };
    Ok(match strategy {
        SubjectStrategy::TopicName => format!("{topic}-value"),
        SubjectStrategy::RecordName => full_name()?,
        SubjectStrategy::TopicRecordName => format!("{topic}-{}", full_name()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_strategy() {
        let record = ParsedSchema::parse(
            r#"{"type": "record", "name": "Alert", "namespace": "org.millrace", "fields": []}"#,
        )
        .unwrap();
        let cases = [
            (SubjectStrategy::TopicName, "alerts-value"),
            (SubjectStrategy::RecordName, "org.millrace.Alert"),
            (
                SubjectStrategy::TopicRecordName,
                "alerts-org.millrace.Alert",
            ),
        ];
        for (strategy, expected) in cases {
            assert_eq!(subject(strategy, "alerts", &record).unwrap(), expected);
        }
        let primitive = ParsedSchema::parse(r#""string""#).unwrap();
        assert_eq!(
            subject(SubjectStrategy::TopicName, "t", &primitive).unwrap(),
            "t-value"
        );
        let e = subject(SubjectStrategy::RecordName, "t", &primitive).unwrap_err();
        assert!(e.contains("record_name"), "{e}");
    }

    #[test]
    fn shipped_schemas_parse_and_document_every_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "avsc") {
                continue;
            }
            let schema = load_schema(&path).unwrap_or_else(|e| panic!("{e}"));
            let json: serde_json::Value = serde_json::from_str(schema.text()).unwrap();
            let undocumented: Vec<&str> = json["fields"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| !f["doc"].is_string())
                .map(|f| f["name"].as_str().unwrap_or("?"))
                .collect();
            assert!(json["doc"].is_string(), "{}: no record doc", path.display());
            assert!(
                undocumented.is_empty(),
                "{}: {undocumented:?}",
                path.display()
            );
            seen.push(schema.full_name().unwrap());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "org.millrace.telemetry.Alert",
                "org.millrace.telemetry.VitalsReading",
                "org.millrace.telemetry.WaveformBatch",
                "org.millrace.telemetry.WindowAggregate",
            ]
        );
    }
}

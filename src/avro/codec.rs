//! Record values in the Confluent wire format to the JSON documents steps
//! see, and back: framing ([`super::wire`]), the writer schema by id, the
//! body ([`super::datum`]) and the JSON mapping ([`super::json`]).
//!
//! No I/O: writer schemas come through [`WriterSchemas`], which the
//! registry cache implements (and tests and the fuzz target fake).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use super::datum::{self, BodyError};
use super::json;
use super::schema::ParsedSchema;
use super::wire::{self, FrameError};

/// Where writer schemas come from.
pub trait WriterSchemas {
    /// The schema registered under `id`.
    fn writer_schema(&mut self, id: u32) -> Result<Arc<ParsedSchema>, LookupError>;
}

/// Why a writer schema is not at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The registry does not know the id, or its schema cannot be used
    /// (not Avro, say): the record's problem.
    Unknown(String),
    /// The registry could not be asked; try again after `retry_in`.
    Unavailable { message: String, retry_in: Duration },
}

/// What is wrong with a record that cannot be decoded. Each kind is its
/// own dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The first byte is not the wire format's magic byte.
    WrongMagic,
    /// The header or the body ends early.
    Truncated,
    /// The schema id is not in the registry (or is not an Avro schema).
    UnknownSchema,
    /// The body does not follow its writer schema.
    Corrupt,
    /// The writer schema does not resolve to the reader schema.
    Incompatible,
}

/// Why a record value did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is bad: it goes to the dead-letter topic.
    Record { problem: Problem, message: String },
    /// The registry could not be reached to fetch the writer schema: the
    /// record is fine and must wait, not be dead-lettered.
    Unavailable { message: String, retry_in: Duration },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Record { message, .. } => f.write_str(message),
            DecodeError::Unavailable { message, retry_in } => {
                write!(f, "{message} (retrying in {retry_in:?})")
            }
        }
    }
}

fn record_error(problem: Problem, message: String) -> DecodeError {
    DecodeError::Record { problem, message }
}

/// Decodes the values of one source.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// The schema steps see; `None`: each record as written.
    reader: Option<Arc<ParsedSchema>>,
}

impl Decoder {
    /// A decoder resolving every record to `reader`, or keeping each
    /// record's own schema without one.
    pub fn new(reader: Option<Arc<ParsedSchema>>) -> Decoder {
        datum::bound_allocations();
        Decoder { reader }
    }

    /// Decodes one framed value to JSON.
    pub fn decode(
        &self,
        bytes: &[u8],
        schemas: &mut dyn WriterSchemas,
    ) -> Result<Json, DecodeError> {
        let frame = wire::unframe(bytes).map_err(|e| {
            let problem = match e {
                FrameError::WrongMagic { .. } => Problem::WrongMagic,
                FrameError::TruncatedHeader { .. } => Problem::Truncated,
            };
            record_error(problem, e.to_string())
        })?;
        let writer = schemas
            .writer_schema(frame.schema_id)
            .map_err(|e| match e {
                LookupError::Unknown(message) => record_error(Problem::UnknownSchema, message),
                LookupError::Unavailable { message, retry_in } => {
                    DecodeError::Unavailable { message, retry_in }
                }
            })?;
        let reader = self.reader.as_deref();
        let value = datum::decode(frame.body, &writer, reader).map_err(|e| {
            let id = frame.schema_id;
            match e {
                BodyError::Truncated(m) => {
                    record_error(Problem::Truncated, format!("schema id {id}: {m}"))
                }
                BodyError::Corrupt(m) => {
                    record_error(Problem::Corrupt, format!("schema id {id}: {m}"))
                }
                BodyError::Incompatible(m) => {
                    record_error(Problem::Incompatible, format!("schema id {id}: {m}"))
                }
            }
        })?;
        let target = reader.unwrap_or(&writer);
        Ok(json::to_json(value, target.schema(), target.names()))
    }
}

/// Encodes the values of one sink with its schema, once the registry has
/// given the schema its id.
#[derive(Debug, Clone)]
pub struct Encoder {
    schema: Arc<ParsedSchema>,
    id: u32,
}

impl Encoder {
    pub fn new(schema: Arc<ParsedSchema>, id: u32) -> Encoder {
        Encoder { schema, id }
    }

    /// The registry id written in every record's header.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Encodes a JSON document as a framed value. The error names the
    /// field that does not fit the schema.
    pub fn encode(&self, value: &Json) -> Result<Vec<u8>, String> {
        let avro = json::from_json(value, self.schema.schema(), self.schema.names())
            .map_err(|e| format!("does not fit the sink's schema: {e}"))?;
        let mut out = wire::header(self.id, 64);
        datum::encode(&avro, &self.schema, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// Writer schemas by id, as a registry would serve them.
    #[derive(Default)]
    struct Registry(HashMap<u32, Arc<ParsedSchema>>);

    impl WriterSchemas for Registry {
        fn writer_schema(&mut self, id: u32) -> Result<Arc<ParsedSchema>, LookupError> {
            self.0
                .get(&id)
                .cloned()
                .ok_or_else(|| LookupError::Unknown(format!("unknown schema id {id}")))
        }
    }

    fn parsed(text: &str) -> Arc<ParsedSchema> {
        Arc::new(ParsedSchema::parse(text).unwrap())
    }

    /// Version 1 of a reading.
    const V1: &str = r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "int"},
        {"name": "temp_c", "type": "float"},
        {"name": "firmware", "type": "string"}
    ]}"#;

    /// Version 2: `firmware` removed, `spo2` added with a default, `hr`
    /// widened to long and `temp_c` to double.
    const V2: &str = r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "long"},
        {"name": "temp_c", "type": "double"},
        {"name": "spo2", "type": ["null", "int"], "default": null},
        {"name": "site", "type": "string", "default": "ward-1"}
    ]}"#;

    fn write(schema: &str, id: u32, registry: &mut Registry, value: Json) -> Vec<u8> {
        let schema = parsed(schema);
        registry.0.insert(id, schema.clone());
        Encoder::new(schema, id).encode(&value).unwrap()
    }

    #[test]
    fn records_round_trip_through_the_wire_format() {
        let mut registry = Registry::default();
        let value = json!({"device": "bed-7", "hr": 72, "temp_c": 36.6, "firmware": "1.2"});
        let bytes = write(V1, 11, &mut registry, value.clone());
        assert_eq!(bytes[..5], [0, 0, 0, 0, 11]);
        let decoded = Decoder::new(None).decode(&bytes, &mut registry).unwrap();
        // float 36.6 reads back as 36.6, not 36.599998474121094.
        assert_eq!(decoded, value);
    }

    #[test]
    fn old_and_new_writers_resolve_to_the_reader_schema() {
        let mut registry = Registry::default();
        let v1 = write(
            V1,
            1,
            &mut registry,
            json!({"device": "a", "hr": 70, "temp_c": 36.5, "firmware": "1.0"}),
        );
        let v2 = write(
            V2,
            2,
            &mut registry,
            json!({"device": "b", "hr": 5_000_000_000i64, "temp_c": 37.25, "spo2": 97, "site": "icu"}),
        );
        let reader = Decoder::new(Some(parsed(V2)));
        // v1: firmware dropped, hr promoted int -> long, temp_c float ->
        // double, the added fields take their defaults.
        assert_eq!(
            reader.decode(&v1, &mut registry).unwrap(),
            json!({"device": "a", "hr": 70, "temp_c": 36.5, "spo2": null, "site": "ward-1"})
        );
        assert_eq!(
            reader.decode(&v2, &mut registry).unwrap(),
            json!({"device": "b", "hr": 5_000_000_000i64, "temp_c": 37.25, "spo2": 97, "site": "icu"})
        );
        // Without a reader schema each record keeps its own shape.
        assert_eq!(
            Decoder::new(None).decode(&v1, &mut registry).unwrap()["firmware"],
            "1.0"
        );
    }

    #[test]
    fn a_reader_needing_a_field_the_writer_lacks_is_incompatible() {
        let mut registry = Registry::default();
        let v1 = write(
            V1,
            1,
            &mut registry,
            json!({"device": "a", "hr": 70, "temp_c": 36.5, "firmware": "1.0"}),
        );
        let reader = Decoder::new(Some(parsed(
            r#"{"type": "record", "name": "Reading", "namespace": "t", "fields": [
                {"name": "device", "type": "string"},
                {"name": "room", "type": "string"}
            ]}"#,
        )));
        match reader.decode(&v1, &mut registry) {
            Err(DecodeError::Record {
                problem: Problem::Incompatible,
                message,
            }) => assert!(
                message.contains("room") && message.contains("id 1"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_malformed_value_has_its_problem() {
        let mut registry = Registry::default();
        let good = write(
            V1,
            3,
            &mut registry,
            json!({"device": "a", "hr": 70, "temp_c": 36.5, "firmware": "1.0"}),
        );
        let decoder = Decoder::new(None);
        let mut problem = |bytes: &[u8]| match decoder.decode(bytes, &mut registry) {
            Err(DecodeError::Record { problem, .. }) => problem,
            other => panic!("{bytes:?}: {other:?}"),
        };
        assert_eq!(problem(b"{\"hr\": 1}"), Problem::WrongMagic);
        assert_eq!(problem(&good[..3]), Problem::Truncated);
        assert_eq!(problem(&good[..good.len() - 2]), Problem::Truncated);
        let mut unknown = good.clone();
        unknown[4] = 99;
        assert_eq!(problem(&unknown), Problem::UnknownSchema);
        let mut trailing = good.clone();
        trailing.push(7);
        assert_eq!(problem(&trailing), Problem::Corrupt);
    }

    #[test]
    fn an_unavailable_registry_is_not_the_records_fault() {
        struct Down;
        impl WriterSchemas for Down {
            fn writer_schema(&mut self, _: u32) -> Result<Arc<ParsedSchema>, LookupError> {
                Err(LookupError::Unavailable {
                    message: "connection refused".into(),
                    retry_in: Duration::from_secs(2),
                })
            }
        }
        let e = Decoder::new(None)
            .decode(&[0, 0, 0, 0, 1, 2], &mut Down)
            .unwrap_err();
        assert_eq!(
            e,
            DecodeError::Unavailable {
                message: "connection refused".into(),
                retry_in: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn deep_recursive_values_decode_on_a_small_stack_or_are_refused() {
        const LIST: &str = r#"{"type": "record", "name": "List", "fields": [
            {"name": "v", "type": "long"},
            {"name": "next", "type": ["null", "List"], "default": null}
        ]}"#;
        fn list(len: usize) -> Json {
            (0..len).fold(Json::Null, |next, v| json!({"v": v, "next": next}))
        }
        // The processing thread has Rust's default 2 MiB stack; this runs
        // the whole path (scan, decode, resolve, JSON) in a debug build.
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let mut registry = Registry::default();
                let deepest = write(LIST, 1, &mut registry, list(16));
                let deeper = write(LIST, 1, &mut registry, list(17));
                let decoder = Decoder::new(Some(parsed(LIST)));
                (
                    decoder.decode(&deepest, &mut registry),
                    decoder.decode(&deeper, &mut registry),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(outcome.0, Ok(list(16)));
        match outcome.1 {
            Err(DecodeError::Record {
                problem: Problem::Corrupt,
                message,
            }) => assert!(message.contains("nests deeper than 32"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encode_errors_name_the_field() {
        let encoder = Encoder::new(parsed(V1), 1);
        let e = encoder
            .encode(&json!({"device": "a", "hr": "fast", "temp_c": 1, "firmware": "x"}))
            .unwrap_err();
        assert!(
            e.contains("field `hr`") && e.contains("expected int"),
            "{e}"
        );
        let e = encoder
            .encode(&json!({"device": "a", "hr": 1, "temp_c": 1}))
            .unwrap_err();
        assert!(e.contains("field `firmware`: missing"), "{e}");
    }
}

//! Fuzzes the Avro decoding path a consumed record takes: the Confluent
//! framing, the writer schema by id, the Avro body, resolution to a reader
//! schema and the mapping to JSON; and writing the JSON back. Whatever the
//! bytes, nothing may panic, and nothing may allocate beyond the decoder's
//! bound (libFuzzer's `-rss_limit_mb` catches that).
//!
//! Run from the repository root (nightly):
//!
//! ```sh
//! cargo install cargo-fuzz
//! cargo +nightly fuzz run avro_decode fuzz/corpus/avro_decode fuzz/seeds/avro_decode \
//!   -- -max_total_time=600 -rss_limit_mb=2048
//! ```
//!
//! Schema ids 1-4 are the shipped telemetry schemas, 5 exercises every Avro
//! type, 6 is recursive; any other id is unknown.
#![no_main]
// The modules are compiled whole; the target uses part of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "../../src/avro/codec.rs"]
mod codec;
#[path = "../../src/avro/datum.rs"]
mod datum;
#[path = "../../src/avro/decimal.rs"]
mod decimal;
#[path = "../../src/avro/depth.rs"]
mod depth;
#[path = "../../src/avro/json.rs"]
mod json;
#[path = "../../src/avro/resolve.rs"]
mod resolve;
#[path = "../../src/avro/schema.rs"]
mod schema;
#[path = "../../src/avro/wire.rs"]
mod wire;

use codec::{Decoder, Encoder, LookupError, WriterSchemas};
use schema::ParsedSchema;

const EVERYTHING: &str = r#"{"type": "record", "name": "All", "namespace": "f", "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "fl", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "s", "type": "string"},
    {"name": "raw", "type": "bytes"},
    {"name": "mac", "type": {"type": "fixed", "name": "Mac", "size": 6}},
    {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "limits", "type": {"type": "map", "values": ["null", "double", "Level"]}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
    {"name": "fixed_price", "type": {"type": "fixed", "name": "P", "size": 4, "logicalType": "decimal", "precision": 8, "scale": 3}},
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "span", "type": {"type": "fixed", "name": "D", "size": 12, "logicalType": "duration"}}
]}"#;

const RECURSIVE: &str = r#"{"type": "record", "name": "Node", "fields": [
    {"name": "v", "type": "int"},
    {"name": "next", "type": ["null", "Node"], "default": null}
]}"#;

/// A later version of the vitals reading: a field removed, one added with
/// a default, a promotion.
const VITALS_V2: &str = r#"{"type": "record", "name": "VitalsReading", "namespace": "org.millrace.telemetry", "fields": [
    {"name": "device", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "hr", "type": "long"},
    {"name": "temp_c", "type": "double"},
    {"name": "ward", "type": "string", "default": "none"}
]}"#;

/// The recursive schema, widened and with a field added.
const RECURSIVE_V2: &str = r#"{"type": "record", "name": "Node", "fields": [
    {"name": "v", "type": "long"},
    {"name": "next", "type": ["null", "Node"], "default": null},
    {"name": "label", "type": "string", "default": ""}
]}"#;

struct Fixed(HashMap<u32, Arc<ParsedSchema>>);

impl WriterSchemas for Fixed {
    fn writer_schema(&mut self, id: u32) -> Result<Arc<ParsedSchema>, LookupError> {
        self.0
            .get(&id)
            .cloned()
            .ok_or_else(|| LookupError::Unknown(format!("unknown schema id {id}")))
    }
}

fn parsed(text: &str) -> Arc<ParsedSchema> {
    Arc::new(ParsedSchema::parse(text).expect("the fuzz target's schemas parse"))
}

struct Setup {
    schemas: HashMap<u32, Arc<ParsedSchema>>,
    plain: Decoder,
    evolved: Decoder,
    evolved_list: Decoder,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let texts = [
            include_str!("../../schemas/vitals-reading.avsc"),
            include_str!("../../schemas/waveform-batch.avsc"),
            include_str!("../../schemas/window-aggregate.avsc"),
            include_str!("../../schemas/alert.avsc"),
            EVERYTHING,
            RECURSIVE,
        ];
        let schemas = (1..).zip(texts).map(|(id, t)| (id, parsed(t))).collect();
        Setup {
            schemas,
            plain: Decoder::new(None),
            evolved: Decoder::new(Some(parsed(VITALS_V2))),
            evolved_list: Decoder::new(Some(parsed(RECURSIVE_V2))),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let mut registry = Fixed(setup.schemas.clone());
    // As written, and resolved to another schema (which fails for most
    // ids: that path must not panic either).
    for decoder in [&setup.plain, &setup.evolved, &setup.evolved_list] {
        if let Ok(json) = decoder.decode(data, &mut registry) {
            // Writing what was read goes through the JSON-to-Avro path.
            if let Some(id) = data.get(1..5).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
                && let Some(schema) = setup.schemas.get(&id)
            {
                let _ = Encoder::new(schema.clone(), id).encode(&json);
            }
        }
    }
});

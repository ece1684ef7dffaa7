//! Avro binary bodies (what follows the wire-format header): decoding with
//! the writer's schema and resolving to the reader's, and encoding.
//!
//! Bodies come from the network, so decoding must survive any bytes: it
//! never panics, bounds what a corrupt length can make it allocate, and
//! tells a body that ends early from one that is corrupt.

use std::io::{self, Read};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use super::depth::{self, MAX_DEPTH};
use super::resolve;
use super::schema::ParsedSchema;

/// Largest allocation one length prefix in a body may ask for (a string,
/// bytes, or the items of an array or map). apache-avro allocates before it
/// reads, so without a bound a few corrupt bytes claiming a 2 GiB string
/// would allocate 2 GiB. Kafka records are far smaller than this.
pub const MAX_ALLOCATION_BYTES: usize = 64 << 20;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body ended before the schema said it would.
    Truncated(String),
    /// The bytes do not follow the writer schema (bad lengths, union
    /// indexes, UTF-8, or bytes left over at the end).
    Corrupt(String),
    /// The value does not resolve to the reader schema (an incompatible
    /// schema change, such as a removed field without a default).
    Incompatible(String),
}

/// Sets apache-avro's process-wide allocation bound. It can be set once per
/// process; the first decode would otherwise fix it at the crate's default
/// of 512 MiB.
pub fn bound_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
}

/// Decodes a body written with `writer`; with a `reader` schema, resolves
/// the value to it by Avro's schema-resolution rules. Values of recursive
/// schemas may nest at most [`MAX_DEPTH`] levels (see [`depth`]).
pub fn decode(
    body: &[u8],
    writer: &ParsedSchema,
    reader: Option<&ParsedSchema>,
) -> Result<Value, BodyError> {
    bound_allocations();
    if writer.has_references() && depth::too_deep(body, writer.schema(), writer.names()) {
        return Err(BodyError::Corrupt(format!(
            "the value nests deeper than {MAX_DEPTH} levels"
        )));
    }
    let datum_reader = GenericDatumReader::builder(writer.schema())
        .build()
        .map_err(|e| BodyError::Corrupt(format!("unusable writer schema: {e}")))?;
    let mut input = Body {
        rest: body,
        overran: false,
    };
    let decoded = datum_reader.read_value(&mut input);
    // Checked before the result: apache-avro reads a string or a union
    // index cut off by the end of the input as null instead of failing.
    if input.overran {
        return Err(BodyError::Truncated(format!(
            "the Avro body ends early: {} bytes do not hold a whole value of the writer schema",
            body.len()
        )));
    }
    let value = decoded.map_err(|e| BodyError::Corrupt(format!("invalid Avro body: {e}")))?;
    if !input.rest.is_empty() {
        return Err(BodyError::Corrupt(format!(
            "{} of {} bytes are left after the Avro value: the body does not match its schema",
            input.rest.len(),
            body.len()
        )));
    }
    match reader {
        None => Ok(value),
        Some(reader) => resolve::resolve(value, writer, reader).map_err(|e| {
            BodyError::Incompatible(format!(
                "the writer schema does not resolve to the reader schema: {e}"
            ))
        }),
    }
}

/// Appends the body of `value` to `out`. The value must have been built for
/// `schema` (see [`super::json::from_json`]).
pub fn encode(value: &Value, schema: &ParsedSchema, out: &mut Vec<u8>) -> Result<(), String> {
    GenericDatumWriter::builder(schema.schema())
        .build()
        .and_then(|writer| writer.write_value_ref(out, value))
        .map(|_| ())
        .map_err(|e| format!("cannot write Avro: {e}"))
}

/// The body as a reader that remembers whether the decoder asked for bytes
/// past its end.
struct Body<'a> {
    rest: &'a [u8],
    overran: bool,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.overran = true;
        }
        let n = buf.len().min(self.rest.len());
        let (now, later) = self.rest.split_at(n);
        buf[..n].copy_from_slice(now);
        self.rest = later;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> ParsedSchema {
        ParsedSchema::parse(text).unwrap()
    }

    const READING: &str = r#"{"type": "record", "name": "Reading", "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "int"},
        {"name": "note", "type": ["null", "string"], "default": null}
    ]}"#;

    fn reading(device: &str, hr: i32, note: Option<&str>) -> Value {
        let note = match note {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(n) => Value::Union(1, Box::new(Value::String(n.into()))),
        };
        Value::Record(vec![
            ("device".into(), Value::String(device.into())),
            ("hr".into(), Value::Int(hr)),
            ("note".into(), note),
        ])
    }

    fn body(value: &Value, s: &ParsedSchema) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, s, &mut out).unwrap();
        out
    }

    #[test]
    fn bodies_round_trip() {
        let s = schema(READING);
        for v in [reading("bed-7", 72, None), reading("", -1, Some("ok"))] {
            assert_eq!(decode(&body(&v, &s), &s, None), Ok(v));
        }
    }

    #[test]
    fn every_cut_of_a_body_is_truncated() {
        let s = schema(READING);
        let full = body(&reading("bed-7", 72, Some("arrhythmia")), &s);
        for len in 0..full.len() {
            match decode(&full[..len], &s, None) {
                Err(BodyError::Truncated(_)) => {}
                other => panic!("cut at {len} of {}: {other:?}", full.len()),
            }
        }
    }

    #[test]
    fn leftover_bytes_are_corrupt() {
        let s = schema(READING);
        let mut b = body(&reading("d", 1, None), &s);
        b.push(0);
        assert!(matches!(decode(&b, &s, None), Err(BodyError::Corrupt(m)) if m.contains("left")));
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        let s = schema(r#""string""#);
        // Length prefix 2^40 (zigzag varint), then nothing.
        let mut b = Vec::new();
        let mut n: u64 = (1u64 << 40) << 1;
        while n >= 0x80 {
            b.push((n as u8) | 0x80);
            n >>= 7;
        }
        b.push(n as u8);
        assert!(matches!(decode(&b, &s, None), Err(BodyError::Corrupt(_))));
    }

    #[test]
    fn bad_union_index_is_corrupt() {
        let s = schema(READING);
        // device "", hr 0, union index 5 (zigzag 10).
        assert!(matches!(
            decode(&[0, 0, 10], &s, None),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn resolution_failures_are_incompatible() {
        let writer = schema(READING);
        let reader = schema(
            r#"{"type": "record", "name": "Reading", "fields": [
                {"name": "device", "type": "string"},
                {"name": "room", "type": "string"}
            ]}"#,
        );
        let b = body(&reading("d", 1, None), &writer);
        match decode(&b, &writer, Some(&reader)) {
            Err(BodyError::Incompatible(m)) => assert!(m.contains("room"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

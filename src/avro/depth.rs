//! A bound on how deeply an Avro body nests, checked before decoding.
//!
//! apache-avro's decoder, schema resolution and the JSON mapping all recurse
//! once per level of nesting. With a recursive schema (a list or tree type)
//! each level can cost a byte or two of input, so a 1 MB record could nest
//! half a million levels and overflow the processing thread's stack. A stack
//! overflow aborts the process, and since the record is never committed the
//! restarted pipeline would read it and abort again. So bodies of schemas
//! that can recurse are first walked by this scanner, which skips over the
//! bytes without building values, with the nesting bounded.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, NamespaceRef};

use super::schema::Underlying;

/// Deepest nesting allowed: records, unions, arrays and maps count a level
/// each, so a linked list of `{"value", "next": ["null", List]}` may be 16
/// elements long. Measured: a debug build needs about 2 MiB of stack (a
/// thread's default) for 32 levels of decoding, resolution and the JSON
/// mapping; a release build far less.
pub const MAX_DEPTH: usize = 32;

/// Items (array and map entries) the scanner visits at most. Entries of
/// zero-size types cost no bytes, so a corrupt count could otherwise keep it
/// busy for a long time; apache-avro bounds such counts itself.
const MAX_ITEMS: u64 = 1 << 20;

/// Whether `body`, read with `schema`, nests deeper than [`MAX_DEPTH`].
/// Other problems (a short or corrupt body) are left to the decoder, which
/// explains them better.
pub fn too_deep(body: &[u8], schema: &Schema, names: &HashMap<Name, Schema>) -> bool {
    let mut scan = Scan {
        rest: body,
        names,
        items: 0,
    };
    matches!(scan.value(schema, None, 0), Err(Stop::TooDeep))
}

enum Stop {
    TooDeep,
    /// The body is malformed, or the scan has done enough work: the
    /// decoder takes over.
    GiveUp,
}

struct Scan<'a> {
    rest: &'a [u8],
    names: &'a HashMap<Name, Schema>,
    items: u64,
}

impl Scan<'_> {
    fn value(
        &mut self,
        schema: &Schema,
        namespace: NamespaceRef,
        depth: usize,
    ) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::TooDeep);
        }
        // By underlying type: a logical type is encoded as the type it is
        // written in (see [`Underlying`]).
        match Underlying::of(schema) {
            Underlying::Ref(name) => {
                let full = name.fully_qualified_name(namespace);
                let (key, named) = self.names.get_key_value(&*full).ok_or(Stop::GiveUp)?;
                // The named type's level is counted when it is entered.
                self.value(named, key.namespace(), depth)
            }
            Underlying::Null => Ok(()),
            Underlying::Boolean => self.skip(1),
            Underlying::Int | Underlying::Long | Underlying::Enum(_) => self.varint().map(drop),
            Underlying::Float => self.skip(4),
            Underlying::Double => self.skip(8),
            Underlying::Bytes | Underlying::String => self.length_prefixed(),
            Underlying::Fixed(f) => self.skip(f.size),
            Underlying::Union(variants) => {
                let index = self.varint()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or(Stop::GiveUp)?;
                self.value(branch, namespace, depth + 1)
            }
            Underlying::Array(items) => self.blocks(|scan| scan.value(items, namespace, depth + 1)),
            Underlying::Map(values) => self.blocks(|scan| {
                scan.length_prefixed()?;
                scan.value(values, namespace, depth + 1)
            }),
            Underlying::Record(record) => {
                let inner = record.name.namespace().or(namespace);
                for field in &record.fields {
                    self.value(&field.schema, inner, depth + 1)?;
                }
                Ok(())
            }
        }
    }

    /// Array and map blocks: a count (negative: followed by the block's
    /// size in bytes), that many items, until a count of zero.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), Stop>) -> Result<(), Stop> {
        loop {
            let count = self.varint()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.varint()?;
            }
            let count = count.unsigned_abs();
            self.items = self.items.saturating_add(count);
            if self.items > MAX_ITEMS {
                return Err(Stop::GiveUp);
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn length_prefixed(&mut self) -> Result<(), Stop> {
        let len = usize::try_from(self.varint()?).map_err(|_| Stop::GiveUp)?;
        self.skip(len)
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        self.rest = self.rest.get(n..).ok_or(Stop::GiveUp)?;
        Ok(())
    }

    /// A zigzag-encoded variable-length long.
    fn varint(&mut self) -> Result<i64, Stop> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or(Stop::GiveUp)?;
            self.rest = rest;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(Stop::GiveUp)
    }
}

#[cfg(test)]
mod tests {
    use super::super::datum;
    use super::super::schema::ParsedSchema;
    use super::*;
    use apache_avro::types::Value;

    const LIST: &str = r#"{"type": "record", "name": "List", "namespace": "t", "fields": [
        {"name": "v", "type": "long"},
        {"name": "next", "type": ["null", "List"]}
    ]}"#;

    /// The body of a list of `len` elements.
    fn list(len: usize) -> Vec<u8> {
        let mut value = Value::Union(0, Box::new(Value::Null));
        for i in 0..len {
            let node = Value::Record(vec![
                ("v".into(), Value::Long(i as i64)),
                ("next".into(), value),
            ]);
            value = Value::Union(1, Box::new(node));
        }
        let Value::Union(_, head) = value else {
            unreachable!()
        };
        let schema = ParsedSchema::parse(LIST).unwrap();
        let mut out = Vec::new();
        datum::encode(&head, &schema, &mut out).unwrap();
        out
    }

    #[test]
    fn nesting_is_bounded() {
        let schema = ParsedSchema::parse(LIST).unwrap();
        let check = |body: &[u8]| too_deep(body, schema.schema(), schema.names());
        // Record + union per element, below the record of the head.
        assert!(!check(&list(MAX_DEPTH / 2)));
        assert!(check(&list(MAX_DEPTH / 2 + 1)));
        // Truncated or corrupt bodies are left to the decoder.
        assert!(!check(&[]));
        assert!(!check(&[0, 9]));
    }

    #[test]
    fn scanning_agrees_with_the_encoding_of_every_type() {
        // A body the scanner reads to its exact end, for a schema with
        // every kind of type, confirms it skips each one correctly.
        let schema = ParsedSchema::parse(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "a", "type": {"type": "array", "items": ["null", "string", "double"]}},
                {"name": "m", "type": {"type": "map", "values": {"type": "fixed", "name": "F", "size": 3}}},
                {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                {"name": "b", "type": "boolean"},
                {"name": "f", "type": "float"},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}
            ]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            (
                "a".into(),
                Value::Array(vec![
                    Value::Union(1, Box::new(Value::String("hi".into()))),
                    Value::Union(2, Box::new(Value::Double(1.5))),
                    Value::Union(0, Box::new(Value::Null)),
                ]),
            ),
            (
                "m".into(),
                Value::Map([("k".to_string(), Value::Fixed(3, vec![1, 2, 3]))].into()),
            ),
            (
                "d".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0x01, 0x00])),
            ),
            ("b".into(), Value::Boolean(true)),
            ("f".into(), Value::Float(2.5)),
            ("e".into(), Value::Enum(1, "Y".into())),
        ]);
        let mut body = Vec::new();
        datum::encode(&value, &schema, &mut body).unwrap();
        let mut scan = Scan {
            rest: &body,
            names: schema.names(),
            items: 0,
        };
        assert!(scan.value(schema.schema(), None, 0).is_ok());
        assert!(
            scan.rest.is_empty(),
            "{} bytes not skipped",
            scan.rest.len()
        );
    }
}

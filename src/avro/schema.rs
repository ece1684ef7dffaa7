//! A parsed Avro schema together with its named types, ready to decode,
//! resolve and encode with.
//!
//! apache-avro looks named types (records, enums, fixed referenced by name)
//! up in a map built by walking the schema; building it once here keeps that
//! walk off the per-record path.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, Names, RecordSchema,
    ResolvedSchema, UuidSchema,
};

/// A schema, its text and its named types.
pub struct ParsedSchema {
    schema: Schema,
    names: Names,
    text: String,
    /// Whether the schema refers to a named type by name somewhere, which
    /// recursive types (trees, lists) need.
    has_references: bool,
}

impl ParsedSchema {
    /// Parses schema text (JSON, as in an `.avsc` file or a registry
    /// answer). References to types outside the text are refused.
    pub fn parse(text: &str) -> Result<ParsedSchema, String> {
        let schema = Schema::parse_str(text).map_err(|e| format!("invalid Avro schema: {e}"))?;
        ParsedSchema::new(schema, text.to_string())
    }

    fn new(schema: Schema, text: String) -> Result<ParsedSchema, String> {
        let names = ResolvedSchema::new(&schema)
            .map_err(|e| format!("invalid Avro schema: {e}"))?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect::<HashMap<Name, Schema>>();
        let has_references = has_references(&schema);
        Ok(ParsedSchema {
            schema,
            names,
            text,
            has_references,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Every named type of the schema by full name.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Whether the schema refers to a named type by name. Only such a
    /// schema can be recursive, so only its values can nest without bound.
    pub fn has_references(&self) -> bool {
        self.has_references
    }

    /// The text the schema was parsed from (what is registered).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The full name (`namespace.Name`) of a record, enum or fixed schema;
    /// `None` for the others (a primitive, an array, a union...).
    pub fn full_name(&self) -> Option<String> {
        self.schema.name().map(|n| n.fullname(None))
    }
}

fn has_references(schema: &Schema) -> bool {
    match schema {
        Schema::Ref { .. } => true,
        Schema::Array(a) => has_references(&a.items),
        Schema::Map(m) => has_references(&m.types),
        Schema::Union(u) => u.variants().iter().any(has_references),
        Schema::Record(r) => r.fields.iter().any(|f| has_references(&f.schema)),
        _ => false,
    }
}

/// A schema as its binary encoding sees it: logical types count as their
/// underlying type (`timestamp-millis` is a `long`, `decimal` bytes or a
/// fixed). Schema resolution (decoding) and the registry's compatibility
/// check both classify with this, so they cannot disagree on what a
/// logical type is.
#[derive(Debug, Clone, Copy)]
pub enum Underlying<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// A named type referenced by name: the caller looks it up.
    Ref(&'a Name),
}

impl Underlying<'_> {
    /// For messages: `long`, `record com.example.Reading`, ...
    pub fn describe(&self) -> String {
        match self {
            Underlying::Null => "null".into(),
            Underlying::Boolean => "boolean".into(),
            Underlying::Int => "int".into(),
            Underlying::Long => "long".into(),
            Underlying::Float => "float".into(),
            Underlying::Double => "double".into(),
            Underlying::Bytes => "bytes".into(),
            Underlying::String => "string".into(),
            Underlying::Array(_) => "array".into(),
            Underlying::Map(_) => "map".into(),
            Underlying::Union(_) => "union".into(),
            Underlying::Record(r) => format!("record {}", r.name.fullname(None)),
            Underlying::Enum(e) => format!("enum {}", e.name.fullname(None)),
            Underlying::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
            Underlying::Ref(name) => format!("reference to {}", name.fullname(None)),
        }
    }

    pub fn of(schema: &Schema) -> Underlying<'_> {
        match schema {
            Schema::Null => Underlying::Null,
            Schema::Boolean => Underlying::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Underlying::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Underlying::Long,
            Schema::Float => Underlying::Float,
            Schema::Double => Underlying::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Underlying::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Underlying::String,
            Schema::Fixed(f)
            | Schema::Duration(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => Underlying::Fixed(f),
            Schema::Array(a) => Underlying::Array(&a.items),
            Schema::Map(m) => Underlying::Map(&m.types),
            Schema::Union(u) => Underlying::Union(u.variants()),
            Schema::Record(r) => Underlying::Record(r),
            Schema::Enum(e) => Underlying::Enum(e),
            Schema::Ref { name } => Underlying::Ref(name),
        }
    }
}

impl fmt::Debug for ParsedSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedSchema")
            .field("name", &self.full_name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_types_are_collected() {
        let s = ParsedSchema::parse(
            r#"{"type": "record", "name": "Outer", "namespace": "n", "fields": [
                {"name": "a", "type": {"type": "enum", "name": "E", "symbols": ["X"]}},
                {"name": "b", "type": "E"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(s.full_name().as_deref(), Some("n.Outer"));
        let mut names: Vec<String> = s.names().keys().map(|n| n.fullname(None)).collect();
        names.sort();
        assert_eq!(names, ["n.E", "n.Outer"]);
        assert!(s.has_references());
        let flat =
            ParsedSchema::parse(r#"{"type": "array", "items": {"type": "map", "values": "long"}}"#);
        assert!(!flat.unwrap().has_references());
    }

    #[test]
    fn bad_schemas_are_explained() {
        let e = ParsedSchema::parse(
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Missing"}]}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("invalid Avro schema"), "{e}");
        assert!(ParsedSchema::parse("not json").is_err());
        assert_eq!(ParsedSchema::parse(r#""long""#).unwrap().full_name(), None);
    }
}

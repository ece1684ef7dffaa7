//! A parsed Avro schema together with its named types, ready to decode,
//! resolve and encode with.
//!
//! apache-avro looks named types (records, enums, fixed referenced by name)
//! up in a map built by walking the schema; building it once here keeps that
//! walk off the per-record path.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{Name, Names, ResolvedSchema};

/// A schema, its text and its named types.
pub struct ParsedSchema {
    schema: Schema,
    names: Names,
    text: String,
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
        Ok(ParsedSchema {
            schema,
            names,
            text,
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

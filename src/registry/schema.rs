//! Schemas as the registry sees them: parsing Avro (with the named types of
//! referenced schemas), the identity that decides "same schema, same id",
//! and normalization. Pure functions, no I/O.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::Name;
use serde_json::Value as Json;

use super::compat::collect_names;
use super::records::{AVRO, Reference};

/// The schema types the registry can parse and check.
pub const SUPPORTED_TYPES: &[&str] = &[AVRO];

/// A parsed Avro schema together with every named type it can refer to
/// (its own and those of referenced schemas), by full name.
#[derive(Debug, Clone)]
pub struct ParsedAvro {
    pub root: Schema,
    names: HashMap<String, Schema>,
}

impl ParsedAvro {
    /// Parses a schema. `referenced` holds the texts of the schemas it
    /// references (directly or not), each a named type.
    pub fn parse(text: &str, referenced: &[String]) -> Result<ParsedAvro, String> {
        let (root, others) = if referenced.is_empty() {
            (
                Schema::parse_str(text).map_err(|e| e.to_string())?,
                Vec::new(),
            )
        } else {
            Schema::parse_str_with_list(text, referenced).map_err(|e| e.to_string())?
        };
        let mut names = HashMap::new();
        for schema in others.iter().chain(std::iter::once(&root)) {
            collect_names(schema, &mut names);
        }
        Ok(ParsedAvro { root, names })
    }

    /// The definition of a named type.
    pub fn lookup(&self, name: &Name) -> Option<&Schema> {
        self.names.get(&name.fullname(None))
    }

    /// The full name of the root type, for named types (records, enums,
    /// fixed): the subject of the record-name strategy.
    pub fn full_name(&self) -> Option<String> {
        self.root.name().map(|n| n.fullname(None))
    }

    /// The schema as apache-avro writes it back: full names, no
    /// whitespace, attributes in one order. What `normalize=true` stores.
    pub fn normalized(&self) -> String {
        // Serializing a parsed schema to JSON cannot fail.
        serde_json::to_string(&self.root).unwrap_or_default()
    }
}

/// The identity of a schema: two submissions with the same identity are
/// the same schema and get the same id. JSON schemas (Avro's) compare as
/// parsed JSON, so whitespace and the order of object keys do not matter
/// while everything else (docs, defaults, field order) does; other texts
/// compare as written. The type and the references are part of it.
pub fn identity(schema_type: &str, text: &str, references: &[Reference]) -> String {
    let body = match serde_json::from_str::<Json>(text) {
        // serde_json's map is ordered by key, so this is canonical.
        Ok(json) => json.to_string(),
        Err(_) => text.trim().to_string(),
    };
    let refs: Vec<String> = references
        .iter()
        .map(|r| format!("{}={}/{}", r.name, r.subject, r.version))
        .collect();
    format!("{schema_type}\n{}\n{body}", refs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ignores_layout_but_not_content() {
        let a = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"int"}]}"#;
        let b = "{ \"name\": \"R\",\n  \"type\": \"record\", \"fields\": [ {\"type\":\"int\", \"name\":\"x\"} ] }";
        let c = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"long"}]}"#;
        assert_eq!(identity(AVRO, a, &[]), identity(AVRO, b, &[]));
        assert_ne!(identity(AVRO, a, &[]), identity(AVRO, c, &[]));
        assert_ne!(identity(AVRO, a, &[]), identity("JSON", a, &[]));
        let r = Reference {
            name: "X".into(),
            subject: "x".into(),
            version: 1,
        };
        assert_ne!(identity(AVRO, a, &[]), identity(AVRO, a, &[r]));
    }

    #[test]
    fn parses_with_referenced_types() {
        let address = r#"{"type":"record","name":"Address","namespace":"acme","fields":[{"name":"city","type":"string"}]}"#;
        let person = r#"{"type":"record","name":"Person","namespace":"acme","fields":[{"name":"home","type":"acme.Address"}]}"#;
        assert!(ParsedAvro::parse(person, &[]).is_err(), "unknown type");
        let parsed = ParsedAvro::parse(person, &[address.to_string()]).expect("parses");
        assert_eq!(parsed.full_name().as_deref(), Some("acme.Person"));
        let name = Name::new("acme.Address").expect("valid name");
        assert!(parsed.lookup(&name).is_some());
    }

    #[test]
    fn invalid_schemas_are_errors() {
        for bad in [
            "not json",
            r#"{"type":"recrd","name":"R","fields":[]}"#,
            r#"{"type":"record","fields":[]}"#,
            r#""no-such-type""#,
        ] {
            assert!(ParsedAvro::parse(bad, &[]).is_err(), "{bad}");
        }
    }
}

//! Schema compatibility: the seven Confluent compatibility levels and an
//! Avro checker that decides, by the Avro specification's schema
//! resolution rules, whether data written with one schema can be read
//! with another.
//!
//! apache-avro 0.22 ships `schema_compatibility::SchemaCompatibility`, but
//! it is not used here: it compares a writer's `Ref` to a named type with
//! the reader's full definition as a type mismatch (so moving where a type
//! is first defined reads as incompatible), ignores reader aliases of
//! named types, and reports half-readable unions and enums as "partial"
//! where the Java implementation Confluent uses says incompatible. This
//! checker resolves references through each schema's own names, follows
//! the Java `SchemaCompatibility` rules (unqualified names or reader
//! aliases match, logical types compare as their underlying types) and
//! says where and why a pair is incompatible.

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, RecordSchema, UuidSchema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schema::ParsedAvro;
use crate::avro::schema::Underlying;

/// A subject's compatibility level: which earlier versions a new schema is
/// checked against, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompatibilityLevel {
    /// New readers read data written with the latest version (default).
    Backward,
    /// New readers read data written with every live version.
    BackwardTransitive,
    /// Readers of the latest version read data written with the new one.
    Forward,
    /// Readers of every live version read data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every live version.
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityLevel {
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
        CompatibilityLevel::None,
    ];

    /// Parses a level, ignoring case (`backward`, `FULL_TRANSITIVE`, ...).
    pub fn parse(text: &str) -> Option<CompatibilityLevel> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The name Confluent uses (`BACKWARD`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityLevel::None => "NONE",
        }
    }

    /// Whether a new schema is checked against every live version rather
    /// than only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether the new schema must read data written with the old ones.
    fn backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether the old schemas must read data written with the new one.
    fn forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CompatibilityLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CompatibilityLevel::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown compatibility level `{text}`: expected one of {}",
                CompatibilityLevel::ALL.map(|l| l.as_str()).join(", ")
            ))
        })
    }
}

impl Serialize for CompatibilityLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Checks a new schema against earlier versions (`(version, schema)`,
/// oldest first, live versions only) under a level. Returns every problem
/// found, each naming the version and the place; empty means compatible.
pub fn check(
    level: CompatibilityLevel,
    new: &ParsedAvro,
    earlier: &[(u32, &ParsedAvro)],
) -> Vec<String> {
    let against: &[(u32, &ParsedAvro)] = if level.is_transitive() {
        earlier
    } else {
        earlier.last().map(std::slice::from_ref).unwrap_or_default()
    };
    let mut problems = Vec::new();
    for (version, old) in against {
        if level.backward() {
            for p in can_read(old, new) {
                problems.push(format!(
                    "{level}: the new schema cannot read data written with version {version}: {p}"
                ));
            }
        }
        if level.forward() {
            for p in can_read(new, old) {
                problems.push(format!(
                    "{level}: version {version} cannot read data written with the new schema: {p}"
                ));
            }
        }
    }
    problems
}

/// Whether data written with `writer` can be read with `reader`, by the
/// Avro schema resolution rules. Returns the problems found (empty:
/// compatible), each as `<path>: <what>`.
pub fn can_read(writer: &ParsedAvro, reader: &ParsedAvro) -> Vec<String> {
    let mut checker = Checker {
        writer,
        reader,
        assumed: HashSet::new(),
        problems: Vec::new(),
    };
    checker.check(&writer.root, &reader.root, "/");
    checker.problems
}

/// A schema seen through references and logical types: what the binary
/// encoding, and so resolution, depends on. References are looked up by
/// [`kind`], so a `Kind` is never [`Kind::Ref`].
type Kind<'a> = Underlying<'a>;

fn kind<'a>(schema: &'a Schema, names: &'a ParsedAvro) -> Result<Kind<'a>, String> {
    match Underlying::of(schema) {
        Underlying::Ref(name) => {
            let target = names
                .lookup(name)
                .ok_or_else(|| format!("unknown type {}", name.fullname(None)))?;
            if matches!(target, Schema::Ref { .. }) {
                return Err(format!("type {} is only a reference", name.fullname(None)));
            }
            kind(target, names)
        }
        other => Ok(other),
    }
}

struct Checker<'a> {
    writer: &'a ParsedAvro,
    reader: &'a ParsedAvro,
    /// Pairs of named types already being compared: recursive types are
    /// assumed compatible on the way back in (the check is coinductive).
    assumed: HashSet<(String, String)>,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, path: &str, message: String) {
        self.problems.push(format!("{path}: {message}"));
    }

    /// Checks one writer/reader pair, recording problems. Returns whether
    /// the pair is compatible (used to pick union branches).
    fn check(&mut self, w: &'a Schema, r: &'a Schema, path: &str) -> bool {
        let (wk, rk) = match (kind(w, self.writer), kind(r, self.reader)) {
            (Ok(wk), Ok(rk)) => (wk, rk),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(path, e);
                return false;
            }
        };
        match (wk, rk) {
            // A writer union resolves branch by branch: every branch it may
            // write must be readable.
            (Kind::Union(branches), _) => {
                let mut ok = true;
                for (i, branch) in branches.iter().enumerate() {
                    ok &= self.check(branch, r, &format!("{path}[writer branch {i}]"));
                }
                ok
            }
            // A reader union reads a writer type if any branch does.
            (_, Kind::Union(branches)) => {
                if branches.iter().any(|b| self.probe(w, b)) {
                    true
                } else {
                    self.fail(
                        path,
                        format!(
                            "the reader's union has no branch that reads the writer's {}",
                            wk.describe()
                        ),
                    );
                    false
                }
            }
            (Kind::Null, Kind::Null)
            | (Kind::Boolean, Kind::Boolean)
            | (Kind::Int, Kind::Int | Kind::Long | Kind::Float | Kind::Double)
            | (Kind::Long, Kind::Long | Kind::Float | Kind::Double)
            | (Kind::Float, Kind::Float | Kind::Double)
            | (Kind::Double, Kind::Double)
            | (Kind::String | Kind::Bytes, Kind::String | Kind::Bytes) => true,
            (Kind::Array(wi), Kind::Array(ri)) => self.check(wi, ri, &format!("{path}items/")),
            (Kind::Map(wv), Kind::Map(rv)) => self.check(wv, rv, &format!("{path}values/")),
            (Kind::Fixed(wf), Kind::Fixed(rf)) => {
                if !names_match(&wf.name, &rf.name, rf.aliases.as_deref()) {
                    self.fail(path, name_mismatch(&wk, &rk));
                    false
                } else if wf.size != rf.size {
                    self.fail(
                        path,
                        format!(
                            "fixed {} has size {} in the writer and {} in the reader",
                            rf.name.fullname(None),
                            wf.size,
                            rf.size
                        ),
                    );
                    false
                } else {
                    true
                }
            }
            (Kind::Enum(we), Kind::Enum(re)) => {
                if !names_match(&we.name, &re.name, re.aliases.as_deref()) {
                    self.fail(path, name_mismatch(&wk, &rk));
                    return false;
                }
                if re.default.is_some() {
                    return true;
                }
                let missing: Vec<&str> = we
                    .symbols
                    .iter()
                    .filter(|s| !re.symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    true
                } else {
                    self.fail(
                        path,
                        format!(
                            "enum {} of the reader lacks the writer's symbols {missing:?} and has no default",
                            re.name.fullname(None)
                        ),
                    );
                    false
                }
            }
            (Kind::Record(wr), Kind::Record(rr)) => self.check_records(wr, rr, &wk, &rk, path),
            _ => {
                self.fail(
                    path,
                    format!(
                        "the writer's {} cannot be read as the reader's {}",
                        wk.describe(),
                        rk.describe()
                    ),
                );
                false
            }
        }
    }

    /// Like `check`, without recording problems (trying a union branch).
    fn probe(&mut self, w: &'a Schema, r: &'a Schema) -> bool {
        let recorded = self.problems.len();
        let ok = self.check(w, r, "");
        self.problems.truncate(recorded);
        ok
    }

    fn check_records(
        &mut self,
        wr: &'a RecordSchema,
        rr: &'a RecordSchema,
        wk: &Kind<'_>,
        rk: &Kind<'_>,
        path: &str,
    ) -> bool {
        if !names_match(&wr.name, &rr.name, rr.aliases.as_deref()) {
            self.fail(path, name_mismatch(wk, rk));
            return false;
        }
        let pair = (wr.name.fullname(None), rr.name.fullname(None));
        if !self.assumed.insert(pair.clone()) {
            return true;
        }
        let mut ok = true;
        for (i, field) in rr.fields.iter().enumerate() {
            let field_path = format!("{path}fields/{i} ({})/", field.name);
            // The reader's field matches a writer field by name, or by one
            // of the reader field's aliases (never by the writer's).
            let written = std::iter::once(&field.name)
                .chain(field.aliases.iter())
                .find_map(|n| wr.fields.iter().find(|wf| &wf.name == n));
            match written {
                Some(wf) => ok &= self.check(&wf.schema, &field.schema, &field_path),
                None if field.default.is_some() => {}
                None => {
                    self.fail(
                        &field_path,
                        format!(
                            "the reader's field `{}` has no default and the writer does not write it",
                            field.name
                        ),
                    );
                    ok = false;
                }
            }
        }
        self.assumed.remove(&pair);
        ok
    }
}

/// Java Avro's rule: the unqualified names are equal, or one of the
/// reader's aliases (qualified with the reader's namespace when parsed) is
/// the writer's full name.
fn names_match(
    writer: &Name,
    reader: &Name,
    reader_aliases: Option<&[apache_avro::schema::Alias]>,
) -> bool {
    writer.name() == reader.name()
        || reader_aliases.is_some_and(|aliases| {
            let full = writer.fullname(None);
            aliases.iter().any(|a| a.fullname(None) == full)
        })
}

fn name_mismatch(w: &Kind<'_>, r: &Kind<'_>) -> String {
    format!(
        "the writer's {} does not match the reader's {} (names differ and no reader alias names it)",
        w.describe(),
        r.describe()
    )
}

/// Named types of a schema and of the schemas it references, by full name.
pub(super) fn collect_names(schema: &Schema, out: &mut HashMap<String, Schema>) {
    match schema {
        Schema::Record(r) => {
            out.insert(r.name.fullname(None), schema.clone());
            for field in &r.fields {
                collect_names(&field.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.insert(e.name.fullname(None), schema.clone());
        }
        Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => {
            out.insert(f.name.fullname(None), schema.clone());
        }
        Schema::Decimal(d) => {
            if let InnerDecimalSchema::Fixed(f) = &d.inner {
                out.insert(f.name.fullname(None), schema.clone());
            }
        }
        Schema::Array(a) => collect_names(&a.items, out),
        Schema::Map(m) => collect_names(&m.types, out),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avro(text: &str) -> ParsedAvro {
        ParsedAvro::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn record(fields: &str) -> ParsedAvro {
        avro(&format!(
            r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#
        ))
    }

    fn readable(writer: &str, reader: &str) -> bool {
        can_read(&avro(writer), &avro(reader)).is_empty()
    }

    #[test]
    fn primitive_promotions_follow_the_spec() {
        for (w, r, ok) in [
            (r#""int""#, r#""long""#, true),
            (r#""int""#, r#""float""#, true),
            (r#""int""#, r#""double""#, true),
            (r#""long""#, r#""float""#, true),
            (r#""long""#, r#""double""#, true),
            (r#""float""#, r#""double""#, true),
            (r#""string""#, r#""bytes""#, true),
            (r#""bytes""#, r#""string""#, true),
            (r#""long""#, r#""int""#, false),
            (r#""double""#, r#""float""#, false),
            (r#""float""#, r#""long""#, false),
            (r#""string""#, r#""int""#, false),
            (r#""null""#, r#""boolean""#, false),
            // Logical types compare as their underlying types.
            (r#"{"type":"int","logicalType":"date"}"#, r#""long""#, true),
            (
                r#""long""#,
                r#"{"type":"long","logicalType":"timestamp-millis"}"#,
                true,
            ),
        ] {
            assert_eq!(readable(w, r), ok, "writer {w}, reader {r}");
        }
    }

    #[test]
    fn record_fields_need_defaults_when_the_writer_lacks_them() {
        let a = record(r#"{"name":"a","type":"int"}"#);
        let ab_default =
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":0}"#);
        let ab = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
        assert!(can_read(&a, &ab_default).is_empty(), "added with a default");
        let problems = can_read(&a, &ab);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("fields/1 (b)"), "{problems:?}");
        assert!(problems[0].contains("no default"), "{problems:?}");
        assert!(can_read(&ab, &a).is_empty(), "a removed field is skipped");
        // A field renamed with an alias on the reader side.
        let renamed = record(r#"{"name":"alpha","type":"int","aliases":["a"]}"#);
        assert!(can_read(&a, &renamed).is_empty());
        assert!(
            !can_read(&renamed, &a).is_empty(),
            "writer aliases do not count"
        );
        // A field's type change is checked recursively.
        let a_long = record(r#"{"name":"a","type":"long"}"#);
        assert!(can_read(&a, &a_long).is_empty());
        assert!(!can_read(&a_long, &a).is_empty());
    }

    #[test]
    fn record_names_must_match_unless_aliased() {
        let r1 = avro(r#"{"type":"record","name":"One","fields":[]}"#);
        let r2 = avro(r#"{"type":"record","name":"Two","fields":[]}"#);
        let r2_alias = avro(r#"{"type":"record","name":"Two","aliases":["One"],"fields":[]}"#);
        let other_ns = avro(r#"{"type":"record","name":"One","namespace":"x","fields":[]}"#);
        assert!(!can_read(&r1, &r2).is_empty());
        assert!(can_read(&r1, &r2_alias).is_empty());
        assert!(
            can_read(&r1, &other_ns).is_empty(),
            "unqualified names match"
        );
    }

    #[test]
    fn enums_need_the_writers_symbols_or_a_default() {
        let ab = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let abc = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
        let ab_default = r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#;
        assert!(readable(ab, abc));
        assert!(!readable(abc, ab));
        assert!(readable(abc, ab_default));
    }

    #[test]
    fn unions_resolve_branch_by_branch() {
        let int = r#""int""#;
        let null_int = r#"["null","int"]"#;
        let null_long = r#"["null","long"]"#;
        let int_string = r#"["int","string"]"#;
        assert!(
            readable(int, null_int),
            "a reader union takes a matching branch"
        );
        assert!(readable(null_int, null_long), "branches promote");
        assert!(!readable(null_int, int), "the writer may write null");
        assert!(!readable(int_string, int));
        assert!(!readable(r#""string""#, null_int));
    }

    #[test]
    fn arrays_maps_and_fixed() {
        assert!(readable(
            r#"{"type":"array","items":"int"}"#,
            r#"{"type":"array","items":"long"}"#
        ));
        assert!(!readable(
            r#"{"type":"map","values":"long"}"#,
            r#"{"type":"map","values":"int"}"#
        ));
        assert!(!readable(
            r#"{"type":"array","items":"int"}"#,
            r#"{"type":"map","values":"int"}"#
        ));
        assert!(readable(
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"F","size":4}"#
        ));
        assert!(!readable(
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"F","size":8}"#
        ));
        assert!(!readable(
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"G","size":4}"#
        ));
    }

    #[test]
    fn references_to_named_types_resolve_wherever_the_type_is_defined() {
        // The writer defines P in `a` and refers to it in `b`; the reader
        // keeps only `b`, where the definition now is.
        let writer = record(
            r#"{"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
               {"name":"b","type":"P"}"#,
        );
        let reader = record(
            r#"{"name":"b","type":{"type":"record","name":"P","fields":[{"name":"x","type":"long"}]}}"#,
        );
        assert!(
            can_read(&writer, &reader).is_empty(),
            "{:?}",
            can_read(&writer, &reader)
        );
        let narrower = record(
            r#"{"name":"b","type":{"type":"record","name":"P","fields":[{"name":"y","type":"int"}]}}"#,
        );
        assert!(!can_read(&writer, &narrower).is_empty());
    }

    #[test]
    fn recursive_types_terminate() {
        let list = r#"{"type":"record","name":"List","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","List"]}]}"#;
        let list_long = r#"{"type":"record","name":"List","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","List"]}]}"#;
        assert!(readable(list, list_long));
        assert!(!readable(list_long, list));
    }

    #[test]
    fn levels_pick_direction_and_versions() {
        let v1 = record(r#"{"name":"a","type":"int"}"#);
        let v2 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":0}"#);
        // Compatible with v2 both ways but needs `b`, which v1 lacks.
        let v3 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
        let earlier = [(1, &v1), (2, &v2)];
        assert!(check(CompatibilityLevel::Backward, &v3, &earlier).is_empty());
        assert!(check(CompatibilityLevel::Full, &v3, &earlier).is_empty());
        let problems = check(CompatibilityLevel::BackwardTransitive, &v3, &earlier);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("version 1"), "{problems:?}");
        assert!(!check(CompatibilityLevel::FullTransitive, &v3, &earlier).is_empty());
        // Dropping `a` breaks forward (old readers need it) but not backward.
        let no_a = record(r#"{"name":"b","type":"int","default":0}"#);
        assert!(check(CompatibilityLevel::Backward, &no_a, &earlier).is_empty());
        assert!(!check(CompatibilityLevel::Forward, &no_a, &earlier).is_empty());
        assert!(check(CompatibilityLevel::None, &avro(r#""string""#), &earlier).is_empty());
        assert!(check(CompatibilityLevel::FullTransitive, &v1, &[]).is_empty());
    }

    #[test]
    fn levels_parse_ignoring_case() {
        assert_eq!(
            CompatibilityLevel::parse("full_transitive"),
            Some(CompatibilityLevel::FullTransitive)
        );
        assert_eq!(
            CompatibilityLevel::parse("Backward"),
            Some(CompatibilityLevel::Backward)
        );
        assert_eq!(CompatibilityLevel::parse("sideways"), None);
    }
}

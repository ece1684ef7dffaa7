//! Avro schema resolution: a value decoded with the writer's schema,
//! reshaped for the reader's schema (Avro specification, "Schema
//! Resolution").
//!
//! apache-avro resolves too, but picks a union branch for a record or an
//! array by resolving the whole value against each candidate first, which
//! doubles the work at every nested union: a list of 30 elements takes
//! seconds, and one record of a recursive schema could stall a pipeline. Here
//! the writer's schema travels with the value, so a union branch is chosen
//! by comparing schemas, and resolution is linear in the size of the value.
//! Leaves (numbers, strings, logical types) are still converted by
//! apache-avro.
//!
//! The rules:
//! - records match fields by name: a reader field the writer lacks takes the
//!   reader's default (no default: an error), a writer field the reader
//!   lacks is dropped;
//! - a writer union is replaced by its branch; a reader union takes the
//!   first branch of the same type (and name, for records, enums and fixed),
//!   else the first the value can be promoted to;
//! - `int` widens to `long`, `float`, `double`; `long` to `float`, `double`;
//!   `float` to `double`; `string` and `bytes` convert both ways;
//! - an enum symbol the reader lacks takes the reader enum's default;
//! - logical types resolve by their underlying type (a `timestamp-millis`
//!   written, a plain `long` read, and the other way round).

use std::collections::HashMap;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, InnerDecimalSchema, Name, Names, NamespaceRef, RecordSchema,
    SchemaKind, UnionSchema, UuidSchema,
};
use apache_avro::types::Value;
use apache_avro::{Decimal, Schema};

use super::json::{self, FieldError};
use super::schema::{ParsedSchema, Underlying};

/// Resolves `value`, decoded with `writer`, to `reader`.
pub fn resolve(
    value: Value,
    writer: &ParsedSchema,
    reader: &ParsedSchema,
) -> Result<Value, FieldError> {
    Resolver {
        writer_names: writer.names(),
        reader_names: reader.names(),
    }
    .resolve(value, (writer.schema(), None), (reader.schema(), None))
}

/// A schema and the namespace references inside it are relative to.
type Scoped<'a> = (&'a Schema, NamespaceRef<'a>);

struct Resolver<'a> {
    writer_names: &'a Names,
    reader_names: &'a Names,
}

/// Follows a reference to a named type, and enters a named type's
/// namespace.
fn deref<'a>(names: &'a Names, (schema, namespace): Scoped<'a>) -> Result<Scoped<'a>, FieldError> {
    let (schema, namespace) = match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(namespace);
            let (key, found) = names.get_key_value(&*full).ok_or_else(|| {
                FieldError::new(format!(
                    "the schema refers to an unknown type {}",
                    full.fullname(None)
                ))
            })?;
            (found, key.namespace())
        }
        other => (other, namespace),
    };
    Ok((
        schema,
        schema.name().and_then(|n| n.namespace()).or(namespace),
    ))
}

impl<'a> Resolver<'a> {
    fn resolve(
        &self,
        value: Value,
        writer: Scoped<'a>,
        reader: Scoped<'a>,
    ) -> Result<Value, FieldError> {
        let writer = deref(self.writer_names, writer)?;
        let reader = deref(self.reader_names, reader)?;
        match (writer.0, reader.0, value) {
            (Schema::Union(w), _, Value::Union(index, inner)) => {
                let branch = w.variants().get(index as usize).ok_or_else(|| {
                    FieldError::new(format!("union branch {index} does not exist"))
                })?;
                self.resolve(*inner, (branch, writer.1), reader)
            }
            (Schema::Union(_), _, other) => Err(FieldError::new(format!(
                "expected a union value, got {}",
                kind_of(&other)
            ))),
            (_, Schema::Union(r), value) => {
                let index = self.branch(writer, r, reader.1)?;
                let branch = (&r.variants()[index], reader.1);
                Ok(Value::Union(
                    index as u32,
                    Box::new(self.resolve(value, writer, branch)?),
                ))
            }
            (Schema::Record(w), Schema::Record(r), Value::Record(fields)) => {
                self.record(fields, (w, writer.1), (r, reader.1))
            }
            (Schema::Array(w), Schema::Array(r), Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    self.resolve(item, (&w.items, writer.1), (&r.items, reader.1))
                        .map_err(|e| e.in_item(i))
                })
                .collect::<Result<_, _>>()
                .map(Value::Array),
            (Schema::Map(w), Schema::Map(r), Value::Map(entries)) => entries
                .into_iter()
                .map(|(key, v)| {
                    self.resolve(v, (&w.types, writer.1), (&r.types, reader.1))
                        .map(|v| (key.clone(), v))
                        .map_err(|e| e.in_field(&key))
                })
                .collect::<Result<_, _>>()
                .map(Value::Map),
            (Schema::Enum(_), Schema::Enum(r), Value::Enum(_, symbol)) => enum_symbol(symbol, r),
            (Schema::Decimal(w), Schema::Decimal(r), value) => {
                // The unscaled integer is kept, so the scale must match.
                if w.scale != r.scale || w.precision > r.precision {
                    return Err(FieldError::new(format!(
                        "decimal({}, {}) does not resolve to decimal({}, {}): the scale must \
                         match and the precision may only grow",
                        w.precision, w.scale, r.precision, r.scale
                    )));
                }
                leaf(value, writer.0, reader.0)
            }
            (Schema::Fixed(w), Schema::Fixed(r), _) if w.size != r.size => {
                Err(FieldError::new(format!(
                    "fixed {} of {} bytes does not resolve to fixed {} of {} bytes",
                    w.name.fullname(None),
                    w.size,
                    r.name.fullname(None),
                    r.size
                )))
            }
            (w, r, value) => leaf(value, w, r),
        }
    }

    fn record(
        &self,
        fields: Vec<(String, Value)>,
        writer: (&'a RecordSchema, NamespaceRef<'a>),
        reader: (&'a RecordSchema, NamespaceRef<'a>),
    ) -> Result<Value, FieldError> {
        let (w, w_namespace) = writer;
        let (r, r_namespace) = reader;
        let mut written: HashMap<String, Value> = fields.into_iter().collect();
        let mut out = Vec::with_capacity(r.fields.len());
        for field in &r.fields {
            let value = match (written.remove(&field.name), w.lookup.get(&field.name)) {
                (Some(v), Some(&i)) => {
                    let w_field = &w.fields[i].schema;
                    self.resolve(v, (w_field, w_namespace), (&field.schema, r_namespace))
                }
                _ => match &field.default {
                    Some(default) => {
                        json::default_value(default, &field.schema, self.reader_names, r_namespace)
                    }
                    None => Err(FieldError::new(
                        "the writer's schema lacks it and the reader's gives no default",
                    )),
                },
            };
            out.push((
                field.name.clone(),
                value.map_err(|e| e.in_field(&field.name))?,
            ));
        }
        Ok(Value::Record(out))
    }

    /// The reader union branch for a value of the writer's (non-union)
    /// schema: the first of the same type, else the first it promotes to.
    fn branch(
        &self,
        writer: Scoped<'a>,
        union: &'a UnionSchema,
        namespace: NamespaceRef<'a>,
    ) -> Result<usize, FieldError> {
        let w = Kind::of(writer.0);
        let candidates: Vec<Kind> = union
            .variants()
            .iter()
            .map(|v| deref(self.reader_names, (v, namespace)).map(|(s, _)| Kind::of(s)))
            .collect::<Result<_, _>>()?;
        candidates
            .iter()
            .position(|r| *r == w)
            .or_else(|| candidates.iter().position(|r| w.promotes_to(r)))
            .ok_or_else(|| {
                let names: Vec<String> = candidates.iter().map(Kind::to_string).collect();
                FieldError::new(format!(
                    "the writer's {w} matches no branch of the reader's union [{}]",
                    names.join(", ")
                ))
            })
    }
}

/// A symbol of the reader's enum, or its default.
fn enum_symbol(symbol: String, reader: &EnumSchema) -> Result<Value, FieldError> {
    let position = |s: &str| reader.symbols.iter().position(|x| x == s);
    if let Some(i) = position(&symbol) {
        return Ok(Value::Enum(i as u32, symbol));
    }
    match reader
        .default
        .as_deref()
        .and_then(|d| Some((position(d)?, d)))
    {
        Some((i, default)) => Ok(Value::Enum(i as u32, default.to_string())),
        None => Err(FieldError::new(format!(
            "symbol `{symbol}` is not in the reader's enum {} and it has no default",
            reader.name.fullname(None)
        ))),
    }
}

/// Numbers, strings, bytes and logical types: the value in the writer's
/// underlying type, converted by apache-avro to the reader's type.
fn leaf(value: Value, writer: &Schema, reader: &Schema) -> Result<Value, FieldError> {
    let kinds = (Kind::of(writer), Kind::of(reader));
    if kinds.0 != kinds.1 && !kinds.0.promotes_to(&kinds.1) {
        return Err(FieldError::new(format!(
            "the writer's {} does not resolve to the reader's {}",
            kinds.0, kinds.1
        )));
    }
    let value = underlying(value, writer);
    // apache-avro refuses a decimal whose bytes are fewer than its precision
    // could need (its check is the wrong way round), so decimals are made
    // here; the bytes are the unscaled integer either way.
    if let Schema::Decimal(_) = reader {
        return match value {
            Value::Bytes(b) | Value::Fixed(_, b) => Ok(Value::Decimal(Decimal::from(b))),
            other => Err(FieldError::new(format!(
                "expected decimal bytes, got {}",
                kind_of(&other)
            ))),
        };
    }
    let no_names: HashMap<Name, Schema> = HashMap::new();
    value.resolve_with_names(reader, &no_names).map_err(|e| {
        FieldError::new(format!(
            "cannot read the writer's {} as {}: {e}",
            kinds.0, kinds.1
        ))
    })
}

/// A logical-type value as its underlying Avro type, which apache-avro
/// converts to any reader type (it would not turn a `timestamp-millis`
/// into a plain `long`).
fn underlying(value: Value, writer: &Schema) -> Value {
    match value {
        Value::Date(i) | Value::TimeMillis(i) => Value::Int(i),
        Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Value::Long(i),
        Value::Decimal(d) => {
            let bytes = Vec::<u8>::try_from(&d).unwrap_or_default();
            match writer {
                Schema::Decimal(DecimalSchema {
                    inner: InnerDecimalSchema::Fixed(f),
                    ..
                }) => Value::Fixed(f.size, bytes),
                _ => Value::Bytes(bytes),
            }
        }
        Value::Uuid(u) => match writer {
            Schema::Uuid(UuidSchema::Bytes) => Value::Bytes(u.as_bytes().to_vec()),
            Schema::Uuid(UuidSchema::Fixed(_)) => Value::Fixed(16, u.as_bytes().to_vec()),
            _ => Value::String(u.to_string()),
        },
        Value::Duration(d) => Value::Fixed(12, <[u8; 12]>::from(d).to_vec()),
        other => other,
    }
}

/// A schema's type for matching union branches and checking promotions:
/// logical types count as their underlying type; named types by name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    /// Records, enums and fixed match by unqualified name (and size).
    Named(&'static str, String, Option<usize>),
    /// An unresolved reference (cannot happen after [`deref`]).
    Other,
}

impl Kind {
    fn of(schema: &Schema) -> Kind {
        let named = |kind, name: &Name, size| Kind::Named(kind, name.name().to_string(), size);
        match Underlying::of(schema) {
            Underlying::Null => Kind::Null,
            Underlying::Boolean => Kind::Boolean,
            Underlying::Int => Kind::Int,
            Underlying::Long => Kind::Long,
            Underlying::Float => Kind::Float,
            Underlying::Double => Kind::Double,
            Underlying::Bytes => Kind::Bytes,
            Underlying::String => Kind::String,
            Underlying::Array(_) => Kind::Array,
            Underlying::Map(_) => Kind::Map,
            Underlying::Union(_) => Kind::Union,
            Underlying::Fixed(f) => named("fixed", &f.name, Some(f.size)),
            Underlying::Record(r) => named("record", &r.name, None),
            Underlying::Enum(e) => named("enum", &e.name, None),
            Underlying::Ref(_) => Kind::Other,
        }
    }

    /// Avro's promotions.
    fn promotes_to(&self, reader: &Kind) -> bool {
        matches!(
            (self, reader),
            (Kind::Int, Kind::Long | Kind::Float | Kind::Double)
                | (Kind::Long, Kind::Float | Kind::Double)
                | (Kind::Float, Kind::Double)
                | (Kind::String, Kind::Bytes)
                | (Kind::Bytes, Kind::String)
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Named(kind, name, _) => write!(f, "{kind} {name}"),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

/// What a value is, for messages (`int`, `record`, ...).
fn kind_of(value: &Value) -> String {
    format!("{:?}", SchemaKind::from(value)).to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{Value as Json, json};

    use super::super::datum;
    use super::*;

    fn parsed(text: &str) -> ParsedSchema {
        ParsedSchema::parse(text).unwrap()
    }

    /// Writes `doc` with `writer`, reads it with `reader`, as JSON.
    fn read(doc: Json, writer: &str, reader: &str) -> Result<Json, String> {
        let (writer, reader) = (parsed(writer), parsed(reader));
        let value = json::from_json(&doc, writer.schema(), writer.names()).unwrap();
        let mut body = Vec::new();
        datum::encode(&value, &writer, &mut body).unwrap();
        let decoded = datum::decode(&body, &writer, None).unwrap();
        resolve(decoded, &writer, &reader)
            .map(|v| json::to_json(v, reader.schema(), reader.names()))
            .map_err(|e| e.to_string())
    }

    fn record(fields: &str) -> String {
        format!(r#"{{"type": "record", "name": "R", "namespace": "t", "fields": [{fields}]}}"#)
    }

    #[test]
    fn fields_are_matched_by_name_added_ones_take_defaults() {
        let writer = record(r#"{"name": "a", "type": "int"}, {"name": "gone", "type": "string"}"#);
        let reader = record(
            r#"{"name": "b", "type": {"type": "record", "name": "B", "fields": [{"name": "x", "type": "int"}]}, "default": {"x": 7}},
               {"name": "a", "type": "long"},
               {"name": "raw", "type": "bytes", "default": "\u00ff"}"#,
        );
        assert_eq!(
            read(json!({"a": 1, "gone": "x"}), &writer, &reader),
            Ok(json!({"b": {"x": 7}, "a": 1, "raw": "/w=="}))
        );
        let strict = record(r#"{"name": "c", "type": "int"}"#);
        let e = read(json!({"a": 1, "gone": "x"}), &writer, &strict).unwrap_err();
        assert!(
            e.starts_with("field `c`: the writer's schema lacks it"),
            "{e}"
        );
    }

    #[test]
    fn numbers_widen_and_strings_and_bytes_convert() {
        let cases = [
            (r#""int""#, r#""long""#, json!(5), json!(5)),
            (r#""int""#, r#""double""#, json!(5), json!(5.0)),
            (r#""long""#, r#""float""#, json!(3), json!(3.0)),
            (r#""float""#, r#""double""#, json!(0.5), json!(0.5)),
            (r#""string""#, r#""bytes""#, json!("hi"), json!("aGk=")),
            (r#""bytes""#, r#""string""#, json!("aGk="), json!("hi")),
        ];
        for (w, r, input, expected) in cases {
            assert_eq!(read(input, w, r), Ok(expected), "{w} -> {r}");
        }
        let e = read(json!(5), r#""long""#, r#""int""#).unwrap_err();
        assert_eq!(e, "the writer's long does not resolve to the reader's int");
    }

    #[test]
    fn logical_types_resolve_by_their_underlying_type() {
        let millis = r#"{"type": "long", "logicalType": "timestamp-millis"}"#;
        assert_eq!(
            read(json!(1_767_225_600_000i64), millis, r#""long""#),
            Ok(json!(1_767_225_600_000i64))
        );
        assert_eq!(read(json!(42), r#""long""#, millis), Ok(json!(42)));
        assert_eq!(read(json!(42), r#""int""#, millis), Ok(json!(42)));
        let uuid = r#"{"type": "string", "logicalType": "uuid"}"#;
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(read(json!(id), uuid, r#""string""#), Ok(json!(id)));
        assert_eq!(read(json!(id), r#""string""#, uuid), Ok(json!(id)));
        let price = r#"{"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}"#;
        assert_eq!(read(json!("12.30"), price, price), Ok(json!("12.30")));
        assert_eq!(read(json!("-0.05"), price, price), Ok(json!("-0.05")));
        let wider = r#"{"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}"#;
        assert_eq!(read(json!("12.30"), price, wider), Ok(json!("12.30")));
        let rescaled = r#"{"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}"#;
        assert!(
            read(json!("12.30"), price, rescaled)
                .unwrap_err()
                .contains("scale")
        );
        // Plain bytes read as a decimal are its unscaled integer (0x04d2).
        assert_eq!(read(json!("BNI="), r#""bytes""#, price), Ok(json!("12.34")));
    }

    #[test]
    fn unions_pick_branches_by_type_then_by_promotion() {
        let optional_long = r#"["null", "long"]"#;
        assert_eq!(read(json!(3), r#""int""#, optional_long), Ok(json!(3)));
        assert_eq!(
            read(json!(null), r#"["null", "int"]"#, optional_long),
            Ok(json!(null))
        );
        // A writer union becomes its branch for a non-union reader.
        assert_eq!(
            read(json!(9), r#"["null", "int"]"#, r#""long""#),
            Ok(json!(9))
        );
        let e = read(json!(null), r#"["null", "int"]"#, r#""long""#).unwrap_err();
        assert!(e.contains("null does not resolve"), "{e}");
        // Records in a union are told apart by name.
        let shapes = r#"[
            {"type": "record", "name": "Circle", "fields": [{"name": "r", "type": "double"}]},
            {"type": "record", "name": "Square", "fields": [{"name": "r", "type": "double"}]}
        ]"#;
        let square =
            r#"{"type": "record", "name": "Square", "fields": [{"name": "r", "type": "float"}]}"#;
        let (writer, reader) = (parsed(square), parsed(shapes));
        let value = json::from_json(&json!({"r": 2.0}), writer.schema(), writer.names()).unwrap();
        assert!(matches!(
            resolve(value, &writer, &reader),
            Ok(Value::Union(1, _))
        ));
        let e = read(json!("x"), r#""string""#, r#"["null", "int"]"#).unwrap_err();
        assert!(e.contains("matches no branch"), "{e}");
    }

    #[test]
    fn unknown_enum_symbols_take_the_readers_default() {
        let writer = r#"{"type": "enum", "name": "Kind", "symbols": ["A", "B", "NEW"]}"#;
        let reader = r#"{"type": "enum", "name": "Kind", "symbols": ["A", "B", "OTHER"], "default": "OTHER"}"#;
        assert_eq!(read(json!("B"), writer, reader), Ok(json!("B")));
        assert_eq!(read(json!("NEW"), writer, reader), Ok(json!("OTHER")));
        let strict = r#"{"type": "enum", "name": "Kind", "symbols": ["A", "B"]}"#;
        assert!(read(json!("NEW"), writer, strict).is_err());
    }

    #[test]
    fn errors_say_where() {
        let writer = record(
            r#"{"name": "items", "type": {"type": "array", "items": {"type": "map", "values": "long"}}}"#,
        );
        let reader = record(
            r#"{"name": "items", "type": {"type": "array", "items": {"type": "map", "values": "int"}}}"#,
        );
        let e = read(json!({"items": [{}, {"k": 1}]}), &writer, &reader).unwrap_err();
        assert!(e.starts_with("field `items[1].k`: "), "{e}");
    }

    #[test]
    fn deep_recursive_values_resolve_in_linear_time() {
        // apache-avro's own resolution doubles its work per nested union
        // of records: these 16 elements would take it seconds, 30 hours.
        let list = r#"{"type": "record", "name": "List", "fields": [
            {"name": "v", "type": "int"},
            {"name": "next", "type": ["null", "List"]}
        ]}"#;
        let wider = r#"{"type": "record", "name": "List", "fields": [
            {"name": "v", "type": "long"},
            {"name": "next", "type": ["null", "List"]},
            {"name": "tag", "type": "string", "default": ""}
        ]}"#;
        let doc = (0..16).fold(Json::Null, |next, v| json!({"v": v, "next": next}));
        let started = Instant::now();
        let out = read(doc, list, wider).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out["v"], 15);
        assert_eq!(out["tag"], "");
        assert_eq!(out["next"]["next"]["v"], 13);
    }
}

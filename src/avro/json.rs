//! Avro values to the JSON documents steps work on, and back.
//!
//! | Avro | JSON |
//! |---|---|
//! | `null`, `boolean`, `string` | the same |
//! | `int`, `long`, `float`, `double` | a number (`float` as its shortest decimal form, so `0.1f` is `0.1`); NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `bytes`, `fixed` | a base64 string (standard alphabet, padded) |
//! | `enum` | the symbol |
//! | union | the value of the branch, untagged |
//! | `array`, `map`, `record` | an array, an object, an object |
//! | `date`, `time-*`, `timestamp-*`, `local-timestamp-*` | the number, in the logical type's unit (days, ms, µs, ns) |
//! | `decimal`, `big-decimal` | a string such as `"12.30"` (exact) |
//! | `uuid` | its string |
//! | `duration` | `{"months", "days", "millis"}` |
//!
//! Writing goes the other way against the sink's schema, with these
//! allowances: a record's fields not in the schema are dropped; a missing
//! field takes its default, or null if its type admits null; whole numbers
//! written as doubles (`60.0`) fit `int` and `long`; `bytes` and `fixed`
//! also take an array of byte values; a `decimal` also takes a number; a
//! union takes the first branch the value fits, in schema order. Everything
//! else is an error naming the field.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;

use apache_avro::schema::{
    ArraySchema, DecimalSchema, EnumSchema, FixedSchema, MapSchema, Name, NamespaceRef,
    RecordSchema, UnionSchema,
};
use apache_avro::types::Value;
use apache_avro::{Days, Duration, Millis, Months, Schema, Uuid};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Number, Value as Json};

use super::decimal;

/// A value that does not fit a schema (a JSON document a sink writes, or a
/// value being resolved), and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`vitals.hr`, `samples[3]`); empty for the
    /// value itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

impl FieldError {
    pub(crate) fn new(message: impl Into<String>) -> FieldError {
        FieldError {
            path: String::new(),
            message: message.into(),
        }
    }

    /// Errors are located on the way back up, so a value that fits costs no
    /// path bookkeeping.
    pub(crate) fn in_field(mut self, name: &str) -> FieldError {
        self.path = match self.path.as_str() {
            "" => name.to_string(),
            p if p.starts_with('[') => format!("{name}{p}"),
            p => format!("{name}.{p}"),
        };
        self
    }

    pub(crate) fn in_item(mut self, index: usize) -> FieldError {
        self.path = match self.path.as_str() {
            "" => format!("[{index}]"),
            p if p.starts_with('[') => format!("[{index}]{p}"),
            p => format!("[{index}].{p}"),
        };
        self
    }
}

/// Converts a decoded value to JSON. `schema` is the one the value was
/// decoded or resolved to; it supplies what the value does not carry (a
/// decimal's scale).
pub fn to_json<S: Borrow<Schema>>(value: Value, schema: &Schema, names: &HashMap<Name, S>) -> Json {
    ToJson { names }.convert(value, Some(schema), None)
}

/// Builds the Avro value of `json` for `schema`.
pub fn from_json<S: Borrow<Schema>>(
    json: &Json,
    schema: &Schema,
    names: &HashMap<Name, S>,
) -> Result<Value, FieldError> {
    FromJson {
        names,
        defaults: false,
    }
    .convert(json, schema, None)
}

/// The value of a field's `default`, written in Avro's JSON encoding
/// (`bytes` and `fixed` as strings of code points 0-255, a union's default
/// for its first branch).
pub fn default_value<S: Borrow<Schema>>(
    json: &Json,
    schema: &Schema,
    names: &HashMap<Name, S>,
    namespace: NamespaceRef,
) -> Result<Value, FieldError> {
    FromJson {
        names,
        defaults: true,
    }
    .convert(json, schema, namespace)
}

/// Follows a reference to a named type; other schemas are returned as is.
fn deref<'a, S: Borrow<Schema>>(
    schema: &'a Schema,
    names: &'a HashMap<Name, S>,
    namespace: NamespaceRef<'a>,
) -> Option<(&'a Schema, NamespaceRef<'a>)> {
    match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(namespace);
            let (key, found) = names.get_key_value(&*full)?;
            Some((found.borrow(), key.namespace()))
        }
        other => Some((other, namespace)),
    }
}

/// The namespace inside a named type, for references within it.
fn inner_namespace<'a>(schema: &'a Schema, outer: NamespaceRef<'a>) -> NamespaceRef<'a> {
    schema.name().and_then(|n| n.namespace()).or(outer)
}

struct ToJson<'n, S> {
    names: &'n HashMap<Name, S>,
}

impl<S: Borrow<Schema>> ToJson<'_, S> {
    fn convert(&self, value: Value, schema: Option<&Schema>, namespace: NamespaceRef) -> Json {
        let (schema, namespace) = match schema.and_then(|s| deref(s, self.names, namespace)) {
            Some((s, ns)) => (Some(s), inner_namespace(s, ns)),
            None => (None, namespace),
        };
        match value {
            Value::Null => Json::Null,
            Value::Boolean(b) => Json::Bool(b),
            Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(i),
            Value::Long(i)
            | Value::TimeMicros(i)
            | Value::TimestampMillis(i)
            | Value::TimestampMicros(i)
            | Value::TimestampNanos(i)
            | Value::LocalTimestampMillis(i)
            | Value::LocalTimestampMicros(i)
            | Value::LocalTimestampNanos(i) => Json::from(i),
            Value::Float(f) => float_to_json(f64_from_f32(f)),
            Value::Double(f) => float_to_json(f),
            Value::Bytes(b) | Value::Fixed(_, b) => Json::String(BASE64.encode(b)),
            Value::String(s) | Value::Enum(_, s) => Json::String(s),
            Value::Uuid(u) => Json::String(u.to_string()),
            Value::Decimal(d) => {
                let scale = match schema {
                    Some(Schema::Decimal(DecimalSchema { scale, .. })) => *scale,
                    _ => 0,
                };
                Json::String(decimal::to_text(d, scale))
            }
            Value::BigDecimal(d) => Json::String(d.to_plain_string()),
            Value::Duration(d) => serde_json::json!({
                "months": u32::from(d.months()),
                "days": u32::from(d.days()),
                "millis": u32::from(d.millis()),
            }),
            Value::Union(index, inner) => {
                let branch = match schema {
                    Some(Schema::Union(u)) => u.variants().get(index as usize),
                    _ => None,
                };
                self.convert(*inner, branch, namespace)
            }
            Value::Array(items) => {
                let item_schema = match schema {
                    Some(Schema::Array(ArraySchema { items, .. })) => Some(&**items),
                    _ => None,
                };
                Json::Array(
                    items
                        .into_iter()
                        .map(|v| self.convert(v, item_schema, namespace))
                        .collect(),
                )
            }
            Value::Map(entries) => {
                let value_schema = match schema {
                    Some(Schema::Map(MapSchema { types, .. })) => Some(&**types),
                    _ => None,
                };
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k, self.convert(v, value_schema, namespace)))
                        .collect(),
                )
            }
            Value::Record(fields) => {
                let record = match schema {
                    Some(Schema::Record(r)) => Some(r),
                    _ => None,
                };
                let mut object = Map::new();
                for (name, v) in fields {
                    let field_schema = record.and_then(|r| {
                        r.lookup
                            .get(&name)
                            .and_then(|&i| r.fields.get(i))
                            .map(|f| &f.schema)
                    });
                    let converted = self.convert(v, field_schema, namespace);
                    object.insert(name, converted);
                }
                Json::Object(object)
            }
        }
    }
}

/// An `f32` as the `f64` with the same shortest decimal form, so a float
/// written as `36.6` reads as `36.6` and not `36.599998474121094`.
fn f64_from_f32(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn float_to_json(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::from("NaN"),
        None if f > 0.0 => Json::from("Infinity"),
        None => Json::from("-Infinity"),
    }
}

struct FromJson<'n, S> {
    names: &'n HashMap<Name, S>,
    /// Converting a field's default from the schema: Avro writes `bytes`
    /// and `fixed` defaults as strings of code points 0-255, not base64.
    defaults: bool,
}

impl<S: Borrow<Schema>> FromJson<'_, S> {
    fn convert(
        &self,
        json: &Json,
        schema: &Schema,
        namespace: NamespaceRef,
    ) -> Result<Value, FieldError> {
        let Some((schema, namespace)) = deref(schema, self.names, namespace) else {
            return Err(FieldError::new(format!(
                "the schema refers to an unknown type {}",
                type_name(schema)
            )));
        };
        let namespace = inner_namespace(schema, namespace);
        let mismatch = || {
            FieldError::new(format!(
                "expected {}, got {}",
                type_name(schema),
                describe(json)
            ))
        };
        Ok(match schema {
            Schema::Null => match json {
                Json::Null => Value::Null,
                _ => return Err(mismatch()),
            },
            Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(mismatch)?),
            Schema::Int => Value::Int(int(json).ok_or_else(mismatch)?),
            Schema::Date => Value::Date(int(json).ok_or_else(mismatch)?),
            Schema::TimeMillis => Value::TimeMillis(int(json).ok_or_else(mismatch)?),
            Schema::Long => Value::Long(long(json).ok_or_else(mismatch)?),
            Schema::TimeMicros => Value::TimeMicros(long(json).ok_or_else(mismatch)?),
            Schema::TimestampMillis => Value::TimestampMillis(long(json).ok_or_else(mismatch)?),
            Schema::TimestampMicros => Value::TimestampMicros(long(json).ok_or_else(mismatch)?),
            Schema::TimestampNanos => Value::TimestampNanos(long(json).ok_or_else(mismatch)?),
            Schema::LocalTimestampMillis => {
                Value::LocalTimestampMillis(long(json).ok_or_else(mismatch)?)
            }
            Schema::LocalTimestampMicros => {
                Value::LocalTimestampMicros(long(json).ok_or_else(mismatch)?)
            }
            Schema::LocalTimestampNanos => {
                Value::LocalTimestampNanos(long(json).ok_or_else(mismatch)?)
            }
            Schema::Float => {
                let f = double(json).ok_or_else(mismatch)?;
                if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                    return Err(FieldError::new(format!("{f} is out of range for float")));
                }
                Value::Float(f as f32)
            }
            Schema::Double => Value::Double(double(json).ok_or_else(mismatch)?),
            Schema::String => Value::String(json.as_str().ok_or_else(mismatch)?.to_string()),
            Schema::Bytes => Value::Bytes(self.bytes(json).ok_or_else(mismatch)??),
            Schema::Fixed(FixedSchema { size, .. }) => {
                let bytes = self.bytes(json).ok_or_else(mismatch)??;
                if bytes.len() != *size {
                    return Err(FieldError::new(format!(
                        "{} holds {} bytes, but {} is {size} bytes",
                        describe(json),
                        bytes.len(),
                        type_name(schema)
                    )));
                }
                Value::Fixed(*size, bytes)
            }
            Schema::Enum(EnumSchema { symbols, .. }) => {
                let symbol = json.as_str().ok_or_else(mismatch)?;
                let index = symbols.iter().position(|s| s == symbol).ok_or_else(|| {
                    FieldError::new(format!(
                        "`{symbol}` is not a symbol of {} ({})",
                        type_name(schema),
                        symbols.join(", ")
                    ))
                })?;
                Value::Enum(index as u32, symbol.to_string())
            }
            Schema::Array(ArraySchema { items, .. }) => {
                let list = json.as_array().ok_or_else(mismatch)?;
                let mut out = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    out.push(
                        self.convert(item, items, namespace)
                            .map_err(|e| e.in_item(i))?,
                    );
                }
                Value::Array(out)
            }
            Schema::Map(MapSchema { types, .. }) => {
                let object = json.as_object().ok_or_else(mismatch)?;
                let mut out = HashMap::with_capacity(object.len());
                for (key, v) in object {
                    let converted = self
                        .convert(v, types, namespace)
                        .map_err(|e| e.in_field(key))?;
                    out.insert(key.clone(), converted);
                }
                Value::Map(out)
            }
            Schema::Union(union) => self.union(json, union, namespace)?,
            Schema::Record(record) => self.record(json, record, namespace, schema)?,
            Schema::Decimal(DecimalSchema {
                precision, scale, ..
            }) => {
                let text = decimal_text(json).ok_or_else(mismatch)?;
                Value::Decimal(
                    decimal::from_text(&text, *precision, *scale).map_err(FieldError::new)?,
                )
            }
            Schema::BigDecimal => {
                let text = decimal_text(json).ok_or_else(mismatch)?;
                Value::BigDecimal(decimal::big_from_text(&text).map_err(FieldError::new)?)
            }
            Schema::Uuid(_) => {
                let text = json.as_str().ok_or_else(mismatch)?;
                Value::Uuid(
                    Uuid::parse_str(text)
                        .map_err(|e| FieldError::new(format!("`{text}` is not a UUID: {e}")))?,
                )
            }
            Schema::Duration(_) => {
                let object = json.as_object().ok_or_else(mismatch)?;
                let part = |name: &str| -> Result<u32, FieldError> {
                    let v = object.get(name).unwrap_or(&Json::Null);
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            FieldError::new(format!(
                                "expected a whole number from 0 to 4294967295, got {}",
                                describe(v)
                            ))
                            .in_field(name)
                        })
                };
                Value::Duration(Duration::new(
                    Months::new(part("months")?),
                    Days::new(part("days")?),
                    Millis::new(part("millis")?),
                ))
            }
            Schema::Ref { .. } => return Err(mismatch()),
        })
    }

    fn record(
        &self,
        json: &Json,
        record: &RecordSchema,
        namespace: NamespaceRef,
        schema: &Schema,
    ) -> Result<Value, FieldError> {
        let object = json.as_object().ok_or_else(|| {
            FieldError::new(format!(
                "expected {}, got {}",
                type_name(schema),
                describe(json)
            ))
        })?;
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let value = match object.get(&field.name) {
                Some(v) => self.convert(v, &field.schema, namespace),
                None => match &field.default {
                    Some(default) => FromJson {
                        names: self.names,
                        defaults: true,
                    }
                    .convert(default, &field.schema, namespace),
                    None if admits_null(&field.schema, self.names, namespace) => {
                        self.convert(&Json::Null, &field.schema, namespace)
                    }
                    None => Err(FieldError::new(
                        "missing, and the schema gives it no default",
                    )),
                },
            };
            fields.push((
                field.name.clone(),
                value.map_err(|e| e.in_field(&field.name))?,
            ));
        }
        Ok(Value::Record(fields))
    }

    fn union(
        &self,
        json: &Json,
        union: &UnionSchema,
        namespace: NamespaceRef,
    ) -> Result<Value, FieldError> {
        let variants = union.variants();
        let mut first_error = None;
        for (i, variant) in variants.iter().enumerate() {
            // null only ever matches the null branch; trying the others
            // would only produce worse messages.
            if json.is_null() != matches!(variant, Schema::Null) {
                continue;
            }
            match self.convert(json, variant, namespace) {
                Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let candidates: Vec<&Schema> = variants
            .iter()
            .filter(|v| !matches!(v, Schema::Null))
            .collect();
        match (first_error, candidates.as_slice()) {
            // With one real branch (the common ["null", T]) its own error is
            // the clearest.
            (Some(e), [_]) if !json.is_null() => Err(e),
            _ => {
                let names: Vec<String> = variants.iter().map(type_name).collect();
                Err(FieldError::new(format!(
                    "{} fits none of the union's types [{}]",
                    describe(json),
                    names.join(", ")
                )))
            }
        }
    }

    /// Bytes from base64 text or a list of byte values (or, for schema
    /// defaults, a string of code points 0-255). `None`: not a string or
    /// list; `Some(Err)`: one that does not hold bytes.
    fn bytes(&self, json: &Json) -> Option<Result<Vec<u8>, FieldError>> {
        match json {
            Json::String(s) if self.defaults => Some(
                s.chars()
                    .map(|c| u8::try_from(u32::from(c)))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| FieldError::new("a bytes default has characters above U+00FF")),
            ),
            Json::String(s) => Some(BASE64.decode(s).map_err(|e| {
                FieldError::new(format!(
                    "expected base64 bytes, got {}: {e}",
                    describe(json)
                ))
            })),
            Json::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_u64()
                            .and_then(|n| u8::try_from(n).ok())
                            .ok_or_else(|| {
                                FieldError::new(format!(
                                    "expected a byte value 0-255, got {}",
                                    describe(v)
                                ))
                                .in_item(i)
                            })
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// Whether a missing field can be written as null.
fn admits_null<S: Borrow<Schema>>(
    schema: &Schema,
    names: &HashMap<Name, S>,
    namespace: NamespaceRef,
) -> bool {
    match deref(schema, names, namespace) {
        Some((Schema::Null, _)) => true,
        Some((Schema::Union(u), _)) => u.variants().iter().any(|v| matches!(v, Schema::Null)),
        _ => false,
    }
}

/// A whole number in `int` range; whole doubles (`60.0`, as CEL arithmetic
/// produces) count.
fn int(json: &Json) -> Option<i32> {
    long(json).and_then(|n| i32::try_from(n).ok())
}

fn long(json: &Json) -> Option<i64> {
    let n = json.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    // -2^63 and 2^63 are exactly representable; i64::MAX is not.
    const RANGE: std::ops::Range<f64> = -9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && RANGE.contains(&f)).then_some(f as i64)
}

fn double(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Decimal text from a string, or from a number's exact decimal form.
fn decimal_text(json: &Json) -> Option<String> {
    match json {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) if n.is_f64() => {
            n.as_f64().filter(|f| f.is_finite()).map(|f| f.to_string())
        }
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// How a schema is named in messages: `int`, `timestamp-millis`,
/// `record org.x.Reading`, `array`, ...
fn type_name(schema: &Schema) -> String {
    let named = |kind: &str, name: &Name| format!("{kind} {}", name.fullname(None));
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(_) => "union".into(),
        Schema::Record(r) => named("record", &r.name),
        Schema::Enum(e) => named("enum", &e.name),
        Schema::Fixed(f) => named("fixed", &f.name),
        Schema::Decimal(_) => "decimal".into(),
        Schema::BigDecimal => "big-decimal".into(),
        Schema::Uuid(_) => "uuid".into(),
        Schema::Date => "date".into(),
        Schema::TimeMillis => "time-millis".into(),
        Schema::TimeMicros => "time-micros".into(),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos => "timestamp-nanos".into(),
        Schema::LocalTimestampMillis => "local-timestamp-millis".into(),
        Schema::LocalTimestampMicros => "local-timestamp-micros".into(),
        Schema::LocalTimestampNanos => "local-timestamp-nanos".into(),
        Schema::Duration(_) => "duration".into(),
        Schema::Ref { name } => name.fullname(None),
    }
}

/// A JSON value in an error message: its type and, for scalars, a short
/// rendering.
fn describe(json: &Json) -> String {
    match json {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("string \"{head}...\"")
        }
        Json::String(s) => format!("string {s:?}"),
        Json::Array(a) => format!("an array of {}", a.len()),
        Json::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::datum;
    use super::super::schema::ParsedSchema;
    use super::*;

    fn parsed(text: &str) -> ParsedSchema {
        ParsedSchema::parse(text).unwrap()
    }

    fn write(schema: &ParsedSchema, json: &Json) -> Result<Value, FieldError> {
        from_json(json, schema.schema(), schema.names())
    }

    fn read(schema: &ParsedSchema, value: Value) -> Json {
        to_json(value, schema.schema(), schema.names())
    }

    /// JSON -> Avro value -> binary -> Avro value -> JSON.
    fn round_trip(schema: &ParsedSchema, json: Json) -> Json {
        let value = write(schema, &json).unwrap_or_else(|e| panic!("{json}: {e}"));
        let mut body = Vec::new();
        datum::encode(&value, schema, &mut body).unwrap_or_else(|e| panic!("{json}: {e}"));
        read(schema, datum::decode(&body, schema, None).unwrap())
    }

    const EVERYTHING: &str = r#"{"type": "record", "name": "All", "namespace": "t", "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "mac", "type": {"type": "fixed", "name": "Mac", "size": 6}},
        {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "limits", "type": {"type": "map", "values": "double"}},
        {"name": "maybe", "type": ["null", "long", "string"]},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {"name": "fixed_price", "type": {"type": "fixed", "name": "P", "size": 4, "logicalType": "decimal", "precision": 8, "scale": 3}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "again", "type": "Level"}
    ]}"#;

    #[test]
    fn every_type_round_trips() {
        let s = parsed(EVERYTHING);
        let doc = json!({
            "n": null, "b": true, "i": -5, "l": 9_007_199_254_740_993i64,
            "f": 36.6, "d": 0.1, "s": "héllo",
            "raw": "AAEC/w==", "mac": "AQIDBAUG", "level": "HIGH",
            "tags": ["a", "b"], "limits": {"hr": 140.0},
            "maybe": 7, "ts": 1_767_225_600_000i64, "us": 1_767_225_600_000_001i64,
            "day": 20_454, "price": "-12.30", "fixed_price": "1234.567",
            "id": "67e55044-10b1-426f-9247-bb680e5fe0c8", "again": "LOW"
        });
        assert_eq!(round_trip(&s, doc.clone()), doc);
    }

    #[test]
    fn decoded_values_map_as_documented() {
        let s = parsed(
            r#"{"type": "record", "name": "R", "fields": [
            {"name": "f", "type": "float"},
            {"name": "nan", "type": "double"},
            {"name": "raw", "type": "bytes"},
            {"name": "u", "type": ["null", {"type": "enum", "name": "E", "symbols": ["X", "Y"]}]}
        ]}"#,
        );
        let value = Value::Record(vec![
            ("f".into(), Value::Float(0.1)),
            ("nan".into(), Value::Double(f64::NEG_INFINITY)),
            ("raw".into(), Value::Bytes(vec![0, 1, 2, 255])),
            (
                "u".into(),
                Value::Union(1, Box::new(Value::Enum(1, "Y".into()))),
            ),
        ]);
        assert_eq!(
            read(&s, value),
            json!({"f": 0.1, "nan": "-Infinity", "raw": "AAEC/w==", "u": "Y"})
        );
    }

    #[test]
    fn unions_take_the_first_branch_that_fits() {
        let s = parsed(r#"["null", "long", "double", "string"]"#);
        let branch = |json: Json| match write(&s, &json).unwrap() {
            Value::Union(i, _) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(branch(json!(null)), 0);
        assert_eq!(branch(json!(5)), 1);
        assert_eq!(branch(json!(5.5)), 2);
        assert_eq!(branch(json!("x")), 3);
        let e = write(&s, &json!([1])).unwrap_err();
        assert!(e.message.contains("fits none"), "{e}");
        assert!(e.message.contains("[null, long, double, string]"), "{e}");
    }

    #[test]
    fn optional_fields_report_the_inner_error() {
        let s = parsed(
            r#"{"type": "record", "name": "R", "fields": [
            {"name": "vitals", "type": {"type": "record", "name": "V", "fields": [
                {"name": "hr", "type": ["null", "int"]}
            ]}}
        ]}"#,
        );
        let e = write(&s, &json!({"vitals": {"hr": "high"}})).unwrap_err();
        assert_eq!(e.path, "vitals.hr");
        assert_eq!(
            e.to_string(),
            "field `vitals.hr`: expected int, got string \"high\""
        );
    }

    #[test]
    fn paths_go_through_arrays_and_maps() {
        let s = parsed(
            r#"{"type": "record", "name": "R", "fields": [
            {"name": "batches", "type": {"type": "array", "items": {"type": "map", "values": "int"}}}
        ]}"#,
        );
        let e = write(&s, &json!({"batches": [{"a": 1}, {"b": 2.5}]})).unwrap_err();
        assert_eq!(e.path, "batches[1].b");
        assert!(e.message.contains("number 2.5"), "{e}");
    }

    #[test]
    fn missing_fields_take_defaults_or_null_and_extra_fields_are_dropped() {
        let s = parsed(
            r#"{"type": "record", "name": "R", "fields": [
            {"name": "a", "type": "int", "default": 3},
            {"name": "b", "type": ["null", "string"]},
            {"name": "c", "type": "bytes", "default": "\u00ff\u0000"},
            {"name": "d", "type": ["string", "null"], "default": "x"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["P", "Q"]}, "default": "Q"}
        ]}"#,
        );
        assert_eq!(
            round_trip(&s, json!({"extra": 1})),
            json!({"a": 3, "b": null, "c": "/wA=", "d": "x", "e": "Q"})
        );
        let strict =
            parsed(r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}"#);
        let e = write(&strict, &json!({})).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("a", "missing, and the schema gives it no default")
        );
    }

    #[test]
    fn numbers_are_checked_against_their_type() {
        let int = parsed(r#""int""#);
        assert_eq!(write(&int, &json!(60.0)).unwrap(), Value::Int(60));
        assert!(write(&int, &json!(60.5)).is_err());
        assert!(write(&int, &json!(3_000_000_000i64)).is_err());
        let long = parsed(r#""long""#);
        assert!(write(&long, &json!(u64::MAX)).is_err());
        assert_eq!(write(&long, &json!(-1)).unwrap(), Value::Long(-1));
        let float = parsed(r#""float""#);
        assert!(write(&float, &json!(1e300)).is_err());
        assert!(matches!(write(&float, &json!("NaN")).unwrap(), Value::Float(f) if f.is_nan()));
        assert!(write(&parsed(r#""string""#), &json!(1)).is_err());
    }

    #[test]
    fn bytes_take_base64_or_byte_lists_and_fixed_checks_its_size() {
        let bytes = parsed(r#""bytes""#);
        assert_eq!(
            write(&bytes, &json!([1, 2, 255])).unwrap(),
            Value::Bytes(vec![1, 2, 255])
        );
        assert!(write(&bytes, &json!("not base64!")).is_err());
        let e = write(&bytes, &json!([1, 256])).unwrap_err();
        assert_eq!(e.path, "[1]");
        let fixed = parsed(r#"{"type": "fixed", "name": "F", "size": 2}"#);
        let e = write(&fixed, &json!("AAEC")).unwrap_err();
        assert!(
            e.message.contains("3 bytes") && e.message.contains("2 bytes"),
            "{e}"
        );
    }

    #[test]
    fn enums_and_decimals_explain_refusals() {
        let e = write(
            &parsed(r#"{"type": "enum", "name": "E", "symbols": ["A", "B"]}"#),
            &json!("C"),
        )
        .unwrap_err();
        assert!(
            e.message.contains("`C` is not a symbol of enum E (A, B)"),
            "{e}"
        );
        let price =
            parsed(r#"{"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}"#);
        assert_eq!(round_trip(&price, json!(12.5)), json!("12.50"));
        assert!(
            write(&price, &json!("12.345"))
                .unwrap_err()
                .message
                .contains("scale")
        );
    }

    #[test]
    fn recursive_schemas_follow_references() {
        let s = parsed(
            r#"{"type": "record", "name": "Node", "namespace": "t", "fields": [
            {"name": "v", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": null}
        ]}"#,
        );
        let doc = json!({"v": 1, "next": {"v": 2, "next": null}});
        assert_eq!(round_trip(&s, doc.clone()), doc);
        let e = write(&s, &json!({"v": 1, "next": {"v": "x"}})).unwrap_err();
        assert_eq!(e.path, "next.v");
    }
}

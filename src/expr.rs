//! Expressions in pipeline steps, written in CEL (the Common Expression
//! Language, <https://cel.dev>) and evaluated by the `cel` crate.
//!
//! An expression sees these variables:
//!
//! | name        | type                          |
//! |-------------|-------------------------------|
//! | `value`     | the decoded record value      |
//! | `key`       | the key as a string (bytes if not UTF-8), or null |
//! | `topic`     | source topic                  |
//! | `partition` | source partition (int)        |
//! | `offset`    | source offset (int)           |
//! | `timestamp` | record timestamp, ms since the epoch (int), or null |
//!
//! JSON numbers become CEL `int` when they are whole and fit in 64 bits and
//! `double` otherwise, so `value.count % 10 == 3` works on JSON input (CEL
//! would refuse to mix the `uint` a plain serde conversion produces with
//! the literal `3`).
//!
//! Most expressions in real pipelines are plain field paths (`value.t`,
//! `value.device.id`): those are recognised at compile time and read
//! straight from the JSON, with the same results and errors as CEL. Going
//! through CEL converts the whole record to CEL values first, which was the
//! largest single cost of a windowed aggregate in the benchmark profile.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};
use serde_json::Value as Json;

/// What an expression is evaluated against: one record.
pub struct Input<'a> {
    pub value: &'a Json,
    pub key: Option<&'a [u8]>,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
}

/// A compiled expression with its source text (kept for errors and for
/// `millrace validate`).
pub struct Expr {
    source: String,
    program: Program,
    /// `Some(fields)` when the expression is `value.f1.f2...`.
    path: Option<Vec<String>>,
}

/// CEL's reserved words: never field names in a selection.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The fields of `value.f1.f2...`, or `None` for any other expression.
fn field_path(source: &str) -> Option<Vec<String>> {
    let mut parts = source.trim().split('.');
    if parts.next()? != "value" {
        return None;
    }
    let fields: Vec<String> = parts.map(str::to_string).collect();
    let identifier = |f: &String| {
        let mut chars = f.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !RESERVED.contains(&f.as_str())
    };
    (!fields.is_empty() && fields.iter().all(identifier)).then_some(fields)
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Longest expression accepted, in bytes. Pipelines are written by people;
/// anything longer is almost certainly a mistake.
pub const MAX_SOURCE_LEN: usize = 16 * 1024;

impl Expr {
    /// Compiles an expression, or says why it does not parse.
    pub fn compile(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("the expression is empty".to_string());
        }
        if source.len() > MAX_SOURCE_LEN {
            return Err(format!(
                "the expression is {} bytes long; the limit is {MAX_SOURCE_LEN}",
                source.len()
            ));
        }
        let program = Program::compile(source)
            .map_err(|e| format!("invalid CEL expression `{source}`: {e}"))?;
        Ok(Expr {
            source: source.to_string(),
            program,
            path: field_path(source),
        })
    }

    /// The parsed syntax tree, macros expanded: for callers that bound what
    /// an expression may do (the gateway's subscriber filters).
    pub fn ast(&self) -> &cel::IdedExpr {
        self.program.expression()
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against one record and returns the result as JSON.
    pub fn eval(&self, scope: &Scope, input: &Input<'_>) -> Result<Json, String> {
        if self.path.is_some() {
            return self.select(input).cloned();
        }
        let value = self.eval_cel(scope, input)?;
        cel_to_json(&value)
    }

    /// Evaluates to a boolean, or says what it returned instead.
    pub fn eval_bool(&self, scope: &Scope, input: &Input<'_>) -> Result<bool, String> {
        if self.path.is_some() {
            return match self.select(input)? {
                Json::Bool(b) => Ok(*b),
                other => Err(format!(
                    "`{}` must return a bool, returned {}",
                    self.source,
                    json_to_cel(other).type_of()
                )),
            };
        }
        match self.eval_cel(scope, input)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "`{}` must return a bool, returned {}",
                self.source,
                other.type_of()
            )),
        }
    }

    /// Evaluates a field path, failing where CEL would: a missing field, or
    /// a field of something that is not an object.
    fn select<'a>(&self, input: &Input<'a>) -> Result<&'a Json, String> {
        let mut at = input.value;
        for field in self.path.iter().flatten() {
            at = match at {
                Json::Object(fields) => fields
                    .get(field)
                    .ok_or_else(|| format!("`{}` failed: No such key: {field}", self.source))?,
                other => {
                    return Err(format!(
                        "`{}` failed: no field `{field}` on a {}",
                        self.source,
                        json_to_cel(other).type_of()
                    ));
                }
            };
        }
        Ok(at)
    }

    fn eval_cel(&self, scope: &Scope, input: &Input<'_>) -> Result<Value, String> {
        let mut ctx = scope.base.new_inner_scope();
        ctx.add_variable_from_value("value", json_to_cel(input.value));
        let key = match input.key {
            None => Value::Null,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Value::String(Arc::new(text.to_string())),
                Err(_) => Value::Bytes(Arc::new(bytes.to_vec())),
            },
        };
        ctx.add_variable_from_value("key", key);
        ctx.add_variable_from_value("topic", input.topic);
        ctx.add_variable_from_value("partition", Value::Int(i64::from(input.partition)));
        ctx.add_variable_from_value("offset", Value::Int(input.offset));
        ctx.add_variable_from_value("timestamp", input.timestamp.map(Value::Int));
        self.program
            .execute(&ctx)
            .map_err(|e| format!("`{}` failed: {e}", self.source))
    }
}

/// The evaluation environment shared by all expressions of a pipeline: the
/// CEL standard functions, built once (building them per record would cost
/// more than most expressions).
#[derive(Default)]
pub struct Scope {
    base: Context<'static, 'static>,
}

/// Converts JSON to CEL, mapping whole numbers to `int` where they fit.
pub fn json_to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Converts a CEL result to JSON, or says which part has no JSON form.
pub fn cel_to_json(value: &Value) -> Result<Json, String> {
    match value {
        // NaN and infinities have no JSON form; serde_json would turn them
        // into null silently, which would hide a broken expression.
        Value::Float(f) if !f.is_finite() => Err(format!("the result {f} is not a finite number")),
        other => other
            .json()
            .map_err(|e| format!("the result has no JSON form: {e}")),
    }
}

/// Renders an expression result as record-key bytes: strings as UTF-8,
/// numbers and booleans as text, objects and lists as JSON, null as no key.
pub fn json_to_key(value: &Json) -> Option<Vec<u8>> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(value: &Json) -> Input<'_> {
        Input {
            value,
            key: Some(b"dev-1"),
            topic: "vitals",
            partition: 3,
            offset: 42,
            timestamp: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn json_integers_compare_with_literals() {
        let scope = Scope::default();
        let v = json!({"count": 13, "temp": 38.5});
        let e = Expr::compile("value.count % 10 == 3 && value.temp > 38.0").unwrap();
        assert!(e.eval_bool(&scope, &input(&v)).unwrap());
    }

    #[test]
    fn record_metadata_is_visible() {
        let scope = Scope::default();
        let v = json!({});
        let e =
            Expr::compile(r#"key + "@" + topic + ":" + string(partition) + ":" + string(offset)"#)
                .unwrap();
        assert_eq!(
            e.eval(&scope, &input(&v)).unwrap(),
            json!("dev-1@vitals:3:42")
        );
    }

    #[test]
    fn map_literal_builds_an_object() {
        let scope = Scope::default();
        let v = json!({"id": 7, "c": 100.0});
        let e = Expr::compile(r#"{"id": value.id, "f": value.c * 1.8 + 32.0}"#).unwrap();
        assert_eq!(
            e.eval(&scope, &input(&v)).unwrap(),
            json!({"id": 7, "f": 212.0})
        );
    }

    #[test]
    fn missing_field_is_an_error_not_a_default() {
        let scope = Scope::default();
        let v = json!({"a": 1});
        let e = Expr::compile("value.b > 1").unwrap();
        let err = e.eval_bool(&scope, &input(&v)).unwrap_err();
        assert!(err.contains("value.b > 1"), "{err}");
    }

    #[test]
    fn non_bool_filter_result_is_reported() {
        let scope = Scope::default();
        let v = json!({"a": 1});
        let e = Expr::compile("value.a").unwrap();
        let err = e.eval_bool(&scope, &input(&v)).unwrap_err();
        assert!(err.contains("must return a bool"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        assert!(Expr::compile("value.a >").is_err());
        assert!(Expr::compile("   ").is_err());
        assert!(Expr::compile(&"1+".repeat(MAX_SOURCE_LEN)).is_err());
    }

    #[test]
    fn field_paths_are_recognised_and_only_they() {
        for (source, fields) in [
            ("value.t", Some(vec!["t"])),
            (" value.device.id ", Some(vec!["device", "id"])),
            ("value._x1", Some(vec!["_x1"])),
            ("value", None),
            ("value.t + 1", None),
            ("value[\"t\"]", None),
            ("key", None),
            ("values.t", None),
            ("value.t.size()", None),
        ] {
            let expected = fields.map(|f| f.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(field_path(source), expected, "{source}");
        }
    }

    /// The direct read of a field path and CEL agree: same value, or both
    /// an error.
    #[test]
    fn field_paths_evaluate_exactly_as_cel_does() {
        let scope = Scope::default();
        let records = [
            json!({"t": 1_700_000_000_123_i64, "hr": 71.5, "ok": true, "d": {"id": "a", "n": null}}),
            json!({"t": 18_446_744_073_709_551_615_u64, "hr": -3, "ok": "yes", "d": [1, 2]}),
            json!({"t": "text", "d": {"id": {"deep": [1, {"x": 2}]}}}),
            json!([1, 2]),
            json!(5),
        ];
        for source in [
            "value.t",
            "value.hr",
            "value.ok",
            "value.d",
            "value.d.id",
            "value.d.n",
            "value.d.id.deep",
        ] {
            let fast = Expr::compile(source).unwrap();
            assert!(fast.path.is_some());
            let slow = Expr {
                path: None,
                ..Expr::compile(source).unwrap()
            };
            for v in &records {
                let i = input(v);
                let (a, b) = (fast.eval(&scope, &i), slow.eval(&scope, &i));
                assert_eq!(a.is_ok(), b.is_ok(), "{source} on {v}: {a:?} vs {b:?}");
                if let (Ok(a), Ok(b)) = (&a, &b) {
                    assert_eq!(a, b, "{source} on {v}");
                }
                // Error texts differ (ours names the field); outcomes may not.
                let (a, b) = (fast.eval_bool(&scope, &i), slow.eval_bool(&scope, &i));
                assert_eq!(a.clone().ok(), b.clone().ok(), "{source} on {v} as bool");
                assert_eq!(
                    a.is_ok(),
                    b.is_ok(),
                    "{source} on {v} as bool: {a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn keys_render_as_documented() {
        assert_eq!(json_to_key(&json!("a")), Some(b"a".to_vec()));
        assert_eq!(json_to_key(&json!(12)), Some(b"12".to_vec()));
        assert_eq!(json_to_key(&json!(null)), None);
        assert_eq!(json_to_key(&json!([1, 2])), Some(b"[1,2]".to_vec()));
    }
}

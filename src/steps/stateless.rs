//! Steps that look at one record at a time and keep no state.

use std::collections::BTreeMap;

use serde_json::{Map as JsonMap, Value as Json};

use super::{Operator, Record, StepContext, StepError};
use crate::expr::{Expr, json_to_key};

/// Keeps records for which the expression is true.
pub struct Filter {
    expr: Expr,
}

impl Filter {
    pub fn new(source: &str) -> Result<Self, String> {
        Ok(Filter {
            expr: Expr::compile(source)?,
        })
    }
}

impl Operator for Filter {
    fn kind(&self) -> &'static str {
        "filter"
    }
    fn describe(&self) -> String {
        format!("filter  {}", self.expr)
    }
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        if self.expr.eval_bool(ctx.scope, &ctx.input(&record))? {
            out.push(record);
        }
        Ok(())
    }
}

/// Replaces the value with the expression's result.
pub struct Map {
    expr: Expr,
}

impl Map {
    pub fn new(source: &str) -> Result<Self, String> {
        Ok(Map {
            expr: Expr::compile(source)?,
        })
    }
}

impl Operator for Map {
    fn kind(&self) -> &'static str {
        "map"
    }
    fn describe(&self) -> String {
        format!("map     {}", self.expr)
    }
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        record.value = self.expr.eval(ctx.scope, &ctx.input(&record))?;
        out.push(record);
        Ok(())
    }
}

/// Splits `a.b.c` into its segments, refusing empty ones.
fn field_path(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if segments.iter().any(|s| s.trim().is_empty()) {
        return Err(format!(
            "`{path}` is not a field path (use names joined by dots)"
        ));
    }
    Ok(segments)
}

/// Keeps only the listed fields (dotted paths reach into objects). Fields
/// that are absent are left absent.
pub struct Project {
    fields: Vec<Vec<String>>,
}

impl Project {
    pub fn new(fields: &[String]) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("list at least one field to keep".to_string());
        }
        Ok(Project {
            fields: fields
                .iter()
                .map(|f| field_path(f))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn copy_path(from: &Json, path: &[String], into: &mut JsonMap<String, Json>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(found) = from.get(first) else {
        return;
    };
    if rest.is_empty() {
        into.insert(first.clone(), found.clone());
        return;
    }
    let entry = into
        .entry(first.clone())
        .or_insert_with(|| Json::Object(JsonMap::new()));
    if let Json::Object(inner) = entry {
        copy_path(found, rest, inner);
    }
}

impl Operator for Project {
    fn kind(&self) -> &'static str {
        "project"
    }
    fn describe(&self) -> String {
        let fields: Vec<String> = self.fields.iter().map(|f| f.join(".")).collect();
        format!("project [{}]", fields.join(", "))
    }
    fn process(
        &mut self,
        _ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        if !record.value.is_object() {
            return Err("project needs an object value".to_string().into());
        }
        let mut kept = JsonMap::new();
        for path in &self.fields {
            copy_path(&record.value, path, &mut kept);
        }
        record.value = Json::Object(kept);
        out.push(record);
        Ok(())
    }
}

/// Sets fields of the value to expressions. Every expression sees the value
/// as it was before the step, so the order of fields does not matter.
pub struct Set {
    fields: Vec<(Vec<String>, Expr)>,
}

impl Set {
    pub fn new(fields: &BTreeMap<String, String>) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("name at least one field to set".to_string());
        }
        let fields = fields
            .iter()
            .map(|(path, source)| {
                let expr = Expr::compile(source).map_err(|e| format!("{path}: {e}"))?;
                Ok((field_path(path)?, expr))
            })
            .collect::<Result<_, String>>()?;
        Ok(Set { fields })
    }
}

fn set_path(target: &mut Json, path: &[String], value: Json) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    let Json::Object(map) = target else {
        return Err(format!("cannot set `{first}` inside a non-object value"));
    };
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return Ok(());
    }
    let next = map
        .entry(first.clone())
        .or_insert_with(|| Json::Object(JsonMap::new()));
    set_path(next, rest, value)
}

impl Operator for Set {
    fn kind(&self) -> &'static str {
        "set"
    }
    fn describe(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(path, e)| format!("{} = {e}", path.join(".")))
            .collect();
        format!("set     {}", fields.join("; "))
    }
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let results = {
            let input = ctx.input(&record);
            self.fields
                .iter()
                .map(|(_, e)| e.eval(ctx.scope, &input))
                .collect::<Result<Vec<_>, _>>()?
        };
        for ((path, _), value) in self.fields.iter().zip(results) {
            set_path(&mut record.value, path, value)?;
        }
        out.push(record);
        Ok(())
    }
}

/// Replaces the key with the expression's result.
pub struct Rekey {
    expr: Expr,
}

impl Rekey {
    pub fn new(source: &str) -> Result<Self, String> {
        Ok(Rekey {
            expr: Expr::compile(source)?,
        })
    }
}

impl Operator for Rekey {
    fn kind(&self) -> &'static str {
        "rekey"
    }
    fn describe(&self) -> String {
        format!("rekey   {}", self.expr)
    }
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let key = self.expr.eval(ctx.scope, &ctx.input(&record))?;
        record.key = json_to_key(&key);
        out.push(record);
        Ok(())
    }
}

/// Chooses the sink: the expression returns a sink name. The pipeline checks
/// that the name exists.
pub struct Route {
    expr: Expr,
}

impl Route {
    pub fn new(source: &str) -> Result<Self, String> {
        Ok(Route {
            expr: Expr::compile(source)?,
        })
    }
}

impl Operator for Route {
    fn kind(&self) -> &'static str {
        "route"
    }
    fn describe(&self) -> String {
        format!("route   {}", self.expr)
    }
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        match self.expr.eval(ctx.scope, &ctx.input(&record))? {
            Json::String(sink) => record.route = Some(sink),
            other => {
                return Err(format!(
                    "route `{}` must return a sink name (string), returned {other}",
                    self.expr
                )
                .into());
            }
        }
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Scope;
    use crate::state::NoStores;
    use crate::steps::Origin;
    use serde_json::json;

    fn run(op: &mut dyn Operator, value: Json) -> Result<Vec<Record>, StepError> {
        let scope = Scope::default();
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 5,
        };
        let mut stores = NoStores { task: 0 };
        let mut ctx = StepContext {
            scope: &scope,
            origin: &origin,
            stores: &mut stores,
        };
        let mut out = Vec::new();
        let record = Record {
            key: Some(b"k".to_vec()),
            value,
            timestamp: Some(1),
            route: None,
        };
        op.process(&mut ctx, record, &mut out)?;
        Ok(out)
    }

    #[test]
    fn filter_keeps_and_drops() {
        let mut f = Filter::new("value.v > 2").unwrap();
        assert_eq!(run(&mut f, json!({"v": 3})).unwrap().len(), 1);
        assert!(run(&mut f, json!({"v": 1})).unwrap().is_empty());
    }

    #[test]
    fn project_keeps_nested_paths() {
        let mut p = Project::new(&["a".into(), "b.c".into(), "missing".into()]).unwrap();
        let out = run(&mut p, json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4})).unwrap();
        assert_eq!(out[0].value, json!({"a": 1, "b": {"c": 2}}));
    }

    #[test]
    fn set_sees_the_value_before_the_step() {
        let fields = BTreeMap::from([
            ("a".to_string(), "value.a + 1".to_string()),
            ("b.x".to_string(), "value.a * 10".to_string()),
        ]);
        let mut s = Set::new(&fields).unwrap();
        let out = run(&mut s, json!({"a": 1})).unwrap();
        assert_eq!(out[0].value, json!({"a": 2, "b": {"x": 10}}));
    }

    #[test]
    fn rekey_and_route() {
        let mut r = Rekey::new("value.device").unwrap();
        let out = run(&mut r, json!({"device": "d9"})).unwrap();
        assert_eq!(out[0].key.as_deref(), Some(&b"d9"[..]));

        let mut r = Route::new(r#"value.v > 1 ? "high" : "low""#).unwrap();
        let out = run(&mut r, json!({"v": 2})).unwrap();
        assert_eq!(out[0].route.as_deref(), Some("high"));
        assert!(run(&mut r, json!({"w": 2})).is_err());
    }

    #[test]
    fn bad_field_paths_are_rejected() {
        assert!(Project::new(&["a..b".into()]).is_err());
        assert!(Project::new(&[]).is_err());
    }
}

//! Which records of a topic a subscriber receives: the keys it asked for,
//! the key prefixes its token allows, and its filter expression.
//!
//! Filters are CEL, the same language as pipeline steps ([`crate::expr`]):
//! they see `value` (the decoded record; null for raw topics), `key`,
//! `topic`, `partition`, `offset` and `timestamp`. A record for which the
//! filter fails (a missing field, a wrong type) is not delivered.
//!
//! Filters come from clients, and CEL has no evaluation budget: nested list
//! macros (`[..].all(x, [..].all(y, ...))`) multiply, and 2 KiB of them is
//! ~10⁹ steps per record. So a filter is bounded when it is compiled, and a
//! request with one over a bound gets a 400 saying which:
//!
//! - its source: `limits.max_filter_bytes`, and bracket nesting
//!   ([`MAX_FILTER_NESTING`], checked before parsing: the parser recurses);
//! - its syntax tree after macro expansion: [`MAX_FILTER_NODES`] nodes and
//!   [`MAX_FILTER_DEPTH`] levels (the evaluator recurses too);
//! - list macros (`all`, `exists`, `exists_one`, `map`, `filter`): at most
//!   [`MAX_FILTER_MACROS`]. A macro's body runs once per element, so two of
//!   them nested multiply; even chained, a body that repeats its variable
//!   (`l.map(x, [x, x]).map(y, [y, y])...`) doubles the value per macro.
//!
//! Without list macros every node is evaluated once, so a filter costs at
//! most its node count times the record's size: the order of converting
//! the record for CEL at all. With its one macro a filter can still cost
//! the square of a record's list length (`value.l.exists(x, x in
//! value.l)`), which depends on the data, not on the client alone: such
//! filters (and `matches`, which compiles its regex per record) are
//! evaluated under [`tokio::task::block_in_place`], so a slow one holds up
//! its own subscriber but never the runtime's worker, and `/healthz` and
//! every other subscriber keep their thread.

use std::collections::HashSet;

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr as CelExpr};

use crate::expr::{Expr, Input, Scope};

use super::record::Record;

thread_local! {
    // CEL's evaluation context holds its function table; it is not `Send`,
    // and building it per record would cost more than most filters, so
    // every thread keeps one.
    static SCOPE: Scope = Scope::default();
}

/// Deepest bracket nesting accepted in a filter. CEL's parser recurses per
/// level; this keeps a hostile filter from exhausting a worker's stack.
pub const MAX_FILTER_NESTING: usize = 32;

/// Most syntax-tree nodes in a filter, after macro expansion (one `exists`
/// is about ten). Real filters have a few dozen.
pub const MAX_FILTER_NODES: usize = 256;

/// Deepest syntax tree accepted in a filter (`a && b && c` is as deep as it
/// has terms). CEL's evaluator recurses per level.
pub const MAX_FILTER_DEPTH: usize = 48;

/// Most list macros (`all`, `exists`, `exists_one`, `map`, `filter`) in a
/// filter: enough for `value.tags.exists(t, t == "x")`, and none nested.
pub const MAX_FILTER_MACROS: usize = 1;

/// A subscriber's record selection.
#[derive(Debug, Default)]
pub struct Selection {
    topic: String,
    /// Only these keys, when set.
    keys: Option<HashSet<Vec<u8>>>,
    /// Only keys starting with one of these, when set (from the token).
    prefixes: Option<Vec<Vec<u8>>>,
    filter: Option<Expr>,
    /// The filter has a list macro or a regex: evaluate it off the async
    /// worker (see the module docs).
    costly: bool,
}

/// Outcome of matching one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Yes,
    No,
    /// The filter failed on this record (counted, not delivered).
    FilterError(String),
}

impl Selection {
    /// Builds a selection. `max_filter_bytes` bounds the filter's source.
    pub fn new(
        topic: &str,
        keys: Vec<Vec<u8>>,
        prefixes: Option<Vec<Vec<u8>>>,
        filter: Option<&str>,
        max_filter_bytes: usize,
    ) -> Result<Selection, String> {
        let filter = match filter {
            None => None,
            Some(source) => Some(compile_filter(source, max_filter_bytes)?),
        };
        let costly = filter.as_ref().is_some_and(|f| measure(f.ast()).costly);
        if let (Some(prefixes), false) = (&prefixes, keys.is_empty()) {
            // Asking for a key the token does not cover is a request for
            // something forbidden, not an empty stream.
            if let Some(key) = keys
                .iter()
                .find(|k| !prefixes.iter().any(|p| k.starts_with(p)))
            {
                return Err(format!(
                    "the token does not allow key `{}`",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        Ok(Selection {
            topic: topic.to_string(),
            keys: (!keys.is_empty()).then(|| keys.into_iter().collect()),
            prefixes,
            filter,
            costly,
        })
    }

    /// Whether a record goes to the subscriber.
    pub fn matches(&self, record: &Record) -> Match {
        if self.keys.is_some() || self.prefixes.is_some() {
            let Some(key) = record.key.as_deref() else {
                return Match::No;
            };
            if let Some(keys) = &self.keys
                && !keys.contains(key)
            {
                return Match::No;
            }
            if let Some(prefixes) = &self.prefixes
                && !prefixes.iter().any(|p| key.starts_with(p))
            {
                return Match::No;
            }
        }
        let Some(filter) = &self.filter else {
            return Match::Yes;
        };
        let input = Input {
            value: record.json_value(),
            key: record.key.as_deref(),
            topic: &self.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
        };
        let eval = || SCOPE.with(|scope| filter.eval_bool(scope, &input));
        let result = match tokio::runtime::Handle::try_current() {
            // The gateway's runtime is multi-threaded; block_in_place hands
            // this worker's other tasks to another thread meanwhile.
            Ok(handle)
                if self.costly
                    && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(eval)
            }
            _ => eval(),
        };
        match result {
            Ok(true) => Match::Yes,
            Ok(false) => Match::No,
            Err(e) => Match::FilterError(e),
        }
    }

    /// Whether every record matches (no keys, prefixes or filter).
    pub fn is_everything(&self) -> bool {
        self.keys.is_none() && self.prefixes.is_none() && self.filter.is_none()
    }
}

/// Compiles a filter after checking its size and nesting.
pub fn compile_filter(source: &str, max_bytes: usize) -> Result<Expr, String> {
    if source.len() > max_bytes {
        return Err(format!(
            "the filter is {} bytes long; the limit is {max_bytes}",
            source.len()
        ));
    }
    let mut depth = 0usize;
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_FILTER_NESTING {
                    return Err(format!(
                        "the filter nests brackets more than {MAX_FILTER_NESTING} deep"
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let expr = Expr::compile(source).map_err(|e| format!("filter: {e}"))?;
    let size = measure(expr.ast());
    if size.macros > MAX_FILTER_MACROS {
        return Err(format!(
            "the filter uses {} list macros (all, exists, exists_one, map, filter); at most \
             {MAX_FILTER_MACROS} is allowed, since each multiplies the work per record",
            size.macros
        ));
    }
    if size.nodes > MAX_FILTER_NODES {
        return Err(format!(
            "the filter has more than {MAX_FILTER_NODES} terms once parsed; simplify it"
        ));
    }
    if size.depth > MAX_FILTER_DEPTH {
        return Err(format!(
            "the filter nests more than {MAX_FILTER_DEPTH} levels deep once parsed"
        ));
    }
    Ok(expr)
}

/// What [`measure`] found in a syntax tree.
#[derive(Debug, Default, PartialEq, Eq)]
struct Size {
    nodes: usize,
    depth: usize,
    /// List macros (comprehensions, after expansion).
    macros: usize,
    /// Has a list macro or calls `matches`.
    costly: bool,
}

/// Counts a syntax tree's nodes, depth and list macros. Iterative, so a
/// hostile tree cannot overflow the stack here, and it stops counting past
/// the node limit (the filter is refused then anyway).
fn measure(root: &IdedExpr) -> Size {
    let mut size = Size::default();
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        size.nodes += 1;
        size.depth = size.depth.max(depth);
        if size.nodes > MAX_FILTER_NODES {
            break;
        }
        let below = depth + 1;
        match &node.expr {
            CelExpr::Call(call) => {
                if call.func_name == "matches" {
                    size.costly = true;
                }
                stack.extend(call.target.iter().map(|t| (&**t, below)));
                stack.extend(call.args.iter().map(|a| (a, below)));
            }
            CelExpr::Comprehension(c) => {
                size.macros += 1;
                size.costly = true;
                for part in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    stack.push((part, below));
                }
            }
            CelExpr::List(list) => stack.extend(list.elements.iter().map(|e| (e, below))),
            CelExpr::Map(map) => {
                for entry in &map.entries {
                    push_entry(&mut stack, &entry.expr, below);
                }
            }
            CelExpr::Struct(st) => {
                for entry in &st.entries {
                    push_entry(&mut stack, &entry.expr, below);
                }
            }
            CelExpr::Select(select) => stack.push((&select.operand, below)),
            CelExpr::Ident(_) | CelExpr::Literal(_) | CelExpr::Unspecified => {}
        }
    }
    size
}

fn push_entry<'a>(stack: &mut Vec<(&'a IdedExpr, usize)>, entry: &'a EntryExpr, depth: usize) {
    match entry {
        EntryExpr::StructField(f) => stack.push((&f.value, depth)),
        EntryExpr::MapEntry(e) => {
            stack.push((&e.key, depth));
            stack.push((&e.value, depth));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::decode::Value;
    use serde_json::json;

    fn record(key: Option<&str>, value: serde_json::Value) -> Record {
        Record::new(
            1,
            10,
            Some(5),
            key.map(|k| k.as_bytes().to_vec()),
            Value::Json(value),
        )
    }

    #[test]
    fn keys_prefixes_and_filter_combine() {
        let s = Selection::new(
            "vitals",
            vec![b"ward-1/a".to_vec(), b"ward-1/b".to_vec()],
            Some(vec![b"ward-1/".to_vec()]),
            Some("value.hr > 100 && partition == 1"),
            1024,
        )
        .unwrap();
        assert_eq!(
            s.matches(&record(Some("ward-1/a"), json!({"hr": 120}))),
            Match::Yes
        );
        assert_eq!(
            s.matches(&record(Some("ward-1/a"), json!({"hr": 80}))),
            Match::No
        );
        assert_eq!(
            s.matches(&record(Some("ward-1/c"), json!({"hr": 120}))),
            Match::No
        );
        assert_eq!(s.matches(&record(None, json!({"hr": 120}))), Match::No);
        assert!(matches!(
            s.matches(&record(Some("ward-1/b"), json!({"spo2": 99}))),
            Match::FilterError(_)
        ));
    }

    #[test]
    fn a_key_outside_the_token_prefixes_is_refused() {
        let err = Selection::new(
            "t",
            vec![b"ward-2/x".to_vec()],
            Some(vec![b"ward-1/".to_vec()]),
            None,
            1024,
        )
        .unwrap_err();
        assert!(err.contains("ward-2/x"), "{err}");
    }

    /// `[0,1,...,n-1]`
    fn list(n: usize) -> String {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("[{}]", items.join(","))
    }

    /// The issue's example: nested list macros, ~10⁹ steps per record in
    /// under 2 KiB, are refused at compile time.
    #[test]
    fn nested_list_macros_are_refused() {
        let l = list(30);
        let hostile = format!(
            "{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, {l}.all(e, a + b + c + d + e >= 0)))))"
        );
        assert!(hostile.len() < 2048, "{}", hostile.len());
        let err = compile_filter(&hostile, 2048).unwrap_err();
        assert!(err.contains("list macros"), "{err}");
        for two in [
            "value.l.exists(x, value.l.exists(y, x == y))",
            "value.l.map(x, [x, x]).map(y, [y, y]).size() > 0",
            "value.a.all(x, x > 0) && value.b.all(x, x > 0)",
        ] {
            let err = compile_filter(two, 2048).unwrap_err();
            assert!(err.contains("list macros"), "{two}: {err}");
        }
    }

    #[test]
    fn one_list_macro_is_allowed_and_evaluated() {
        let s = Selection::new(
            "t",
            vec![],
            None,
            Some(r#"value.tags.exists(t, t == "urgent")"#),
            2048,
        )
        .unwrap();
        assert!(s.costly);
        assert_eq!(
            s.matches(&record(None, json!({"tags": ["a", "urgent"]}))),
            Match::Yes
        );
        assert_eq!(s.matches(&record(None, json!({"tags": ["a"]}))), Match::No);
        let plain = Selection::new("t", vec![], None, Some("value.hr > 1"), 2048).unwrap();
        assert!(!plain.costly);
    }

    #[test]
    fn large_and_deep_trees_are_refused() {
        // Many terms without brackets: small source, many nodes.
        let many = vec!["value.a == 1"; 100].join(" || ");
        let err = compile_filter(&many, 4096).unwrap_err();
        assert!(err.contains("terms"), "{err}");
        // A deep tree: left-associated `+` needs no brackets either.
        let deep = format!("{} > 0", vec!["1"; 60].join(" + "));
        let err = compile_filter(&deep, 4096).unwrap_err();
        assert!(
            err.contains("levels deep") || err.contains("terms"),
            "{err}"
        );
        // Ordinary filters pass.
        for ok in [
            "value.hr > 100 && value.spo2 < 90",
            r#"key.startsWith("ward-1/") && has(value.hr)"#,
            "value.n in [1, 2, 3]",
        ] {
            compile_filter(ok, 2048).unwrap();
        }
        let size = measure(compile_filter("value.hr > 100", 2048).unwrap().ast());
        assert_eq!((size.nodes, size.depth, size.macros), (4, 3, 0));
    }

    #[test]
    fn filters_are_bounded() {
        assert!(
            compile_filter("value.a > 1", 4)
                .unwrap_err()
                .contains("limit")
        );
        let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert!(compile_filter(&deep, 4096).unwrap_err().contains("nests"));
        assert!(
            compile_filter("value.a >", 4096)
                .unwrap_err()
                .contains("filter")
        );
        let s = Selection::new("t", vec![], None, None, 10).unwrap();
        assert!(s.is_everything());
        assert_eq!(s.matches(&record(None, json!(1))), Match::Yes);
    }
}

//! Which records of a topic a subscriber receives: the keys it asked for,
//! the key prefixes its token allows, and its filter expression.
//!
//! Filters are CEL, the same language as pipeline steps ([`crate::expr`]):
//! they see `value` (the decoded record; null for raw topics), `key`,
//! `topic`, `partition`, `offset` and `timestamp`. A record for which the
//! filter fails (a missing field, a wrong type) is not delivered.

use std::collections::HashSet;

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

/// A subscriber's record selection.
#[derive(Debug, Default)]
pub struct Selection {
    topic: String,
    /// Only these keys, when set.
    keys: Option<HashSet<Vec<u8>>>,
    /// Only keys starting with one of these, when set (from the token).
    prefixes: Option<Vec<Vec<u8>>>,
    filter: Option<Expr>,
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
        match SCOPE.with(|scope| filter.eval_bool(scope, &input)) {
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
    Expr::compile(source).map_err(|e| format!("filter: {e}"))
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

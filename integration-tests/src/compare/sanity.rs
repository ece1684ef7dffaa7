//! The check that both systems did the same work: the window results of two
//! runs over the same input, compared as sets of
//! (key, start, end) → (count, sum, min, max, mean), floats within a
//! relative 1e-9.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value as Json;

use crate::read_committed;

/// (key, start, end).
type WindowId = (String, i64, i64);
/// count, sum, min, max, mean.
type Figures = [f64; 5];

/// One run's window results.
pub struct Results {
    pub windows: BTreeMap<WindowId, Figures>,
    /// Results for a window seen before (none is expected, even at least
    /// once, since no run here fails).
    pub duplicates: usize,
}

/// Reads and parses every committed result of `topic`.
pub fn read_results(topic: &str) -> anyhow::Result<Results> {
    let mut windows = BTreeMap::new();
    let mut duplicates = 0;
    for message in read_committed(topic)? {
        use rdkafka::message::Message as _;
        let value: Json = serde_json::from_slice(message.payload().unwrap_or_default())
            .with_context(|| format!("a result in {topic} is not JSON"))?;
        let int = |f: &str| value.get(f).and_then(Json::as_i64);
        let num = |f: &str| value.get(f).and_then(Json::as_f64);
        let id = (
            value
                .get("key")
                .and_then(Json::as_str)
                .context("result without key")?
                .to_string(),
            int("start").context("result without start")?,
            int("end").context("result without end")?,
        );
        let figures = [
            num("count").context("result without count")?,
            num("sum").context("result without sum")?,
            num("min").context("result without min")?,
            num("max").context("result without max")?,
            num("mean").context("result without mean")?,
        ];
        if windows.insert(id, figures).is_some() {
            duplicates += 1;
        }
    }
    Ok(Results {
        windows,
        duplicates,
    })
}

/// How two runs' results compare.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub left: String,
    pub right: String,
    pub left_windows: usize,
    pub right_windows: usize,
    pub left_duplicates: usize,
    pub right_duplicates: usize,
    /// Windows in both with equal figures.
    pub equal: usize,
    /// Windows in both whose figures differ.
    pub different: usize,
    pub only_left: usize,
    pub only_right: usize,
    /// A few differences, for the report.
    pub examples: Vec<String>,
}

impl Comparison {
    /// Both produced the same results, once each.
    pub fn same(&self) -> bool {
        self.different == 0
            && self.only_left == 0
            && self.only_right == 0
            && self.left_duplicates == 0
            && self.right_duplicates == 0
            && self.equal > 0
    }
}

pub fn compare(left_name: &str, left: &Results, right_name: &str, right: &Results) -> Comparison {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let mut c = Comparison {
        left: left_name.to_string(),
        right: right_name.to_string(),
        left_windows: left.windows.len(),
        right_windows: right.windows.len(),
        left_duplicates: left.duplicates,
        right_duplicates: right.duplicates,
        equal: 0,
        different: 0,
        only_left: 0,
        only_right: 0,
        examples: Vec::new(),
    };
    for (id, l) in &left.windows {
        match right.windows.get(id) {
            Some(r) if l.iter().zip(r).all(|(a, b)| close(*a, *b)) => c.equal += 1,
            Some(r) => {
                c.different += 1;
                if c.examples.len() < 5 {
                    c.examples
                        .push(format!("{id:?}: {left_name} {l:?}, {right_name} {r:?}"));
                }
            }
            None => {
                c.only_left += 1;
                if c.examples.len() < 5 {
                    c.examples.push(format!("{id:?}: only from {left_name}"));
                }
            }
        }
    }
    for id in right.windows.keys() {
        if !left.windows.contains_key(id) {
            c.only_right += 1;
            if c.examples.len() < 5 {
                c.examples.push(format!("{id:?}: only from {right_name}"));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(entries: &[(&str, i64, [f64; 5])]) -> Results {
        Results {
            windows: entries
                .iter()
                .map(|(k, s, f)| ((k.to_string(), *s, s + 10), *f))
                .collect(),
            duplicates: 0,
        }
    }

    #[test]
    fn equal_results_within_float_tolerance_are_the_same() {
        let a = results(&[("a", 0, [2.0, 3.0, 1.0, 2.0, 1.5])]);
        let b = results(&[("a", 0, [2.0, 3.0 + 1e-12, 1.0, 2.0, 1.5])]);
        let c = compare("x", &a, "y", &b);
        assert!(c.same(), "{c:?}");
    }

    #[test]
    fn a_different_or_missing_window_is_reported() {
        let a = results(&[("a", 0, [2.0, 3.0, 1.0, 2.0, 1.5]), ("b", 0, [1.0; 5])]);
        let b = results(&[("a", 0, [3.0, 3.0, 1.0, 2.0, 1.0]), ("c", 0, [1.0; 5])]);
        let c = compare("x", &a, "y", &b);
        assert!(!c.same());
        assert_eq!(
            (c.equal, c.different, c.only_left, c.only_right),
            (0, 1, 1, 1)
        );
        assert_eq!(c.examples.len(), 3);
    }
}

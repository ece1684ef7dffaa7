//! The verdict on a fault run, without any I/O: the committed outputs of a
//! running `reduce` (count and sum per key) against a reference computed
//! from the input alone.
//!
//! A running total makes every output identify its input: the `c`-th record
//! of a key yields count `c` and the sum of that key's first `c` values. So
//! a lost record is a count that never appears, a duplicated one a count
//! that appears twice, a reordering a count below one already seen, and a
//! record applied to the wrong state (say, replayed onto a state that had
//! already counted it) a count or sum that matches no input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Per key, the running sums the outputs must carry: `sums[c - 1]` is the
/// sum of the key's first `c` values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    sums: BTreeMap<String, Vec<i64>>,
}

impl Reference {
    /// The reference for input records (key, value), in input order per
    /// key.
    pub fn of(records: impl IntoIterator<Item = (String, i64)>) -> Reference {
        let mut sums: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (key, value) in records {
            let running = sums.entry(key).or_default();
            let before = running.last().copied().unwrap_or(0);
            running.push(before + value);
        }
        Reference { sums }
    }

    /// Input records in all.
    pub fn records(&self) -> u64 {
        self.sums.values().map(|s| s.len() as u64).sum()
    }
}

/// One committed output of the `reduce`: its key, count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub key: String,
    pub count: i64,
    pub sum: i64,
}

/// What the committed outputs got wrong; all zero when they are exact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Outputs expected (one per input record).
    pub expected: u64,
    /// Committed outputs read.
    pub outputs: u64,
    /// Input records whose output never appeared.
    pub lost: u64,
    /// Outputs that appeared more than once.
    pub duplicated: u64,
    /// Outputs that appeared after a later output of their key.
    pub reordered: u64,
    /// Outputs that match no input record: an unknown key, a count beyond
    /// the key's records, or a sum that is not the running sum.
    pub wrong: u64,
    /// Keys whose last output is not their reference total: the state the
    /// pipeline ended with.
    pub final_state_mismatches: u64,
    /// The first few problems, for the failure message.
    pub examples: Vec<String>,
}

/// How many problems a verdict describes in words.
const EXAMPLES: usize = 10;

impl Verdict {
    /// Nothing lost, duplicated, reordered or wrong, and every key's final
    /// state equal to the reference.
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.wrong == 0
            && self.final_state_mismatches == 0
            && self.outputs == self.expected
    }

    fn note(&mut self, problem: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
    }

    /// One line of figures, then the examples.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} outputs for {} inputs: lost {}, duplicated {}, reordered {}, wrong {}, \
             final-state mismatches {}",
            self.outputs,
            self.expected,
            self.lost,
            self.duplicated,
            self.reordered,
            self.wrong,
            self.final_state_mismatches
        );
        for example in &self.examples {
            let _ = write!(text, "\n  {example}");
        }
        text
    }
}

/// Checks committed outputs (in the order read, which is the commit order
/// of each partition, so of each key) against the reference.
pub fn check(reference: &Reference, updates: &[Update]) -> Verdict {
    let mut verdict = Verdict {
        expected: reference.records(),
        outputs: updates.len() as u64,
        ..Verdict::default()
    };
    let mut seen: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut highest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut last: BTreeMap<&str, &Update> = BTreeMap::new();
    for update in updates {
        let key = update.key.as_str();
        let running = reference.sums.get(key);
        let expected_sum = usize::try_from(update.count - 1)
            .ok()
            .and_then(|i| running.and_then(|sums| sums.get(i)));
        if expected_sum != Some(&update.sum) {
            verdict.wrong += 1;
            verdict.note(format!(
                "wrong: {key} count {} sum {} (reference sum: {expected_sum:?})",
                update.count, update.sum
            ));
            continue;
        }
        last.insert(key, update);
        if !seen.entry(key).or_default().insert(update.count) {
            verdict.duplicated += 1;
            verdict.note(format!("duplicated: {key} count {}", update.count));
            continue;
        }
        let top = highest.entry(key).or_insert(0);
        if update.count < *top {
            verdict.reordered += 1;
            verdict.note(format!(
                "reordered: {key} count {} after count {top}",
                update.count
            ));
        }
        *top = (*top).max(update.count);
    }
    for (key, sums) in &reference.sums {
        let counts = seen.get(key.as_str());
        for count in 1..=sums.len() as i64 {
            if !counts.is_some_and(|c| c.contains(&count)) {
                verdict.lost += 1;
                verdict.note(format!("lost: {key} count {count}"));
            }
        }
        let total = sums.last().copied().unwrap_or(0);
        let ended = last.get(key.as_str()).map(|u| (u.count, u.sum));
        if ended != Some((sums.len() as i64, total)) {
            verdict.final_state_mismatches += 1;
            verdict.note(format!(
                "final state: {key} ended at {ended:?}, reference ({}, {total})",
                sums.len()
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Vec<(String, i64)> {
        [("a", 1), ("b", 10), ("a", 2), ("a", 3), ("b", 20)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// What an exactly-once `reduce` commits for [`input`].
    fn exact() -> Vec<Update> {
        [
            ("a", 1, 1),
            ("b", 1, 10),
            ("a", 2, 3),
            ("a", 3, 6),
            ("b", 2, 30),
        ]
        .iter()
        .map(|(k, c, s)| Update {
            key: k.to_string(),
            count: *c,
            sum: *s,
        })
        .collect()
    }

    #[test]
    fn exact_output_passes() {
        let v = check(&Reference::of(input()), &exact());
        assert!(v.is_exact(), "{}", v.describe());
        assert_eq!((v.expected, v.outputs), (5, 5));
    }

    #[test]
    fn a_lost_record_is_caught() {
        let mut out = exact();
        out.remove(2); // a's second record
        let v = check(&Reference::of(input()), &out);
        assert_eq!(v.lost, 1, "{}", v.describe());
        assert!(!v.is_exact());
    }

    #[test]
    fn a_lost_last_record_is_a_wrong_final_state_too() {
        let mut out = exact();
        out.pop();
        let v = check(&Reference::of(input()), &out);
        assert_eq!((v.lost, v.final_state_mismatches), (1, 1));
    }

    #[test]
    fn a_duplicated_output_is_caught() {
        let mut out = exact();
        out.insert(3, out[2].clone());
        let v = check(&Reference::of(input()), &out);
        assert_eq!(v.duplicated, 1, "{}", v.describe());
        assert_eq!(v.lost, 0);
        assert!(!v.is_exact());
    }

    #[test]
    fn a_swap_within_a_key_is_caught() {
        let mut out = exact();
        out.swap(2, 3);
        let v = check(&Reference::of(input()), &out);
        assert_eq!(v.reordered, 1, "{}", v.describe());
        assert!(!v.is_exact());
    }

    #[test]
    fn a_record_replayed_onto_a_state_that_counted_it_is_caught() {
        // a's third record counted twice: the replay continues the count.
        let mut out = exact();
        out.push(Update {
            key: "a".into(),
            count: 4,
            sum: 9,
        });
        let v = check(&Reference::of(input()), &out);
        assert_eq!(v.wrong, 1, "{}", v.describe());
        assert!(!v.is_exact());
    }

    #[test]
    fn a_corrupted_expectation_fails() {
        // The check must not pass whatever it is given: one more input
        // record than the pipeline saw is a loss and a wrong final state.
        let mut more = input();
        more.push(("b".into(), 5));
        let v = check(&Reference::of(more), &exact());
        assert_eq!((v.lost, v.final_state_mismatches), (1, 1));
        assert!(!v.is_exact());
    }
}

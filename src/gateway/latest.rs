//! The latest record per key of a topic, kept from its live tail for
//! dashboards that need the current state at once.
//!
//! Bounded by keys and bytes: the least recently updated keys go first. A
//! tombstone (a record without a value) removes its key, as compaction
//! would. Records without a key are not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::decode::Value;
use super::record::Record;

pub struct Latest {
    max_keys: usize,
    max_bytes: usize,
    bytes: usize,
    next_seq: u64,
    by_key: HashMap<Vec<u8>, (u64, Arc<Record>)>,
    /// Update order, oldest first: seq -> key.
    order: BTreeMap<u64, Vec<u8>>,
}

impl Latest {
    pub fn new(max_keys: usize, max_bytes: usize) -> Latest {
        Latest {
            max_keys: max_keys.max(1),
            max_bytes: max_bytes.max(1),
            bytes: 0,
            next_seq: 0,
            by_key: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Takes a record from the live tail.
    pub fn update(&mut self, record: &Arc<Record>) {
        let Some(key) = record.key.clone() else {
            return;
        };
        self.remove(&key);
        if record.value == Value::Null {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += record.size();
        self.order.insert(seq, key.clone());
        self.by_key.insert(key, (seq, record.clone()));
        while self.by_key.len() > self.max_keys || self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, r)) = self.by_key.remove(&oldest) {
                self.bytes -= r.size();
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((seq, r)) = self.by_key.remove(key) {
            self.order.remove(&seq);
            self.bytes -= r.size();
        }
    }

    /// The latest record of each key that `keep` accepts, oldest update first.
    pub fn records(&self, keep: impl Fn(&Record) -> bool) -> Vec<Arc<Record>> {
        self.order
            .values()
            .filter_map(|k| self.by_key.get(k))
            .map(|(_, r)| r)
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(key: &str, offset: i64, value: Option<i64>) -> Arc<Record> {
        Arc::new(Record::new(
            0,
            offset,
            None,
            Some(key.as_bytes().to_vec()),
            value.map_or(Value::Null, |v| Value::Json(json!(v))),
        ))
    }

    fn offsets(l: &Latest) -> Vec<i64> {
        l.records(|_| true).iter().map(|r| r.offset).collect()
    }

    #[test]
    fn keeps_the_newest_per_key_and_forgets_tombstoned_keys() {
        let mut l = Latest::new(10, 1 << 20);
        l.update(&rec("a", 1, Some(1)));
        l.update(&rec("b", 2, Some(2)));
        l.update(&rec("a", 3, Some(3)));
        assert_eq!(offsets(&l), [2, 3]);
        l.update(&rec("b", 4, None));
        assert_eq!(offsets(&l), [3]);
    }

    #[test]
    fn evicts_the_least_recently_updated() {
        let mut l = Latest::new(2, 1 << 20);
        l.update(&rec("a", 1, Some(1)));
        l.update(&rec("b", 2, Some(2)));
        l.update(&rec("a", 3, Some(3)));
        l.update(&rec("c", 4, Some(4)));
        assert_eq!(offsets(&l), [3, 4]);
        let one = rec("k9", 0, Some(1)).size();
        let mut small = Latest::new(100, one * 2);
        for i in 0..5 {
            small.update(&rec(&format!("k{i}"), i, Some(1)));
        }
        assert_eq!(small.len(), 2);
    }
}

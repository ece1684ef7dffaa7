//! State of stateful operators.
//!
//! Operators see their state through [`KvStore`]: byte keys to byte
//! values, with ordered range reads. Each task (input partition) has its
//! own stores, reached through [`TaskStores`] while the task's record is
//! processed. The runtime backs them with RocksDB plus an in-memory
//! overlay of the open transaction's writes, changelogged to Kafka; tests
//! back them with [`MemStores`].

use std::collections::BTreeMap;

pub mod manager;
pub mod restore;
pub mod rocks;
pub mod task;

/// Why a store could not be read or written. Not the record's fault: the
/// runtime rebuilds its clients and state rather than dead-lettering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The operator asked for a store it did not declare in
    /// [`Operator::stores`](crate::steps::Operator::stores).
    #[error("state store `{0}` was not declared by its operator")]
    Undeclared(String),
    /// The storage engine failed.
    #[error("state storage failed: {0}")]
    Storage(String),
}

/// Key-value pairs in key order, as range reads return them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One key-value store of one task.
pub trait KvStore {
    /// The value of `key`, seeing this transaction's own writes.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]);
    /// Entries with `from <= key < to`, in key order, at most `limit`.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, StateError>;
}

/// The stores of the task whose record is being processed.
pub trait TaskStores {
    /// The input partition (task) being processed.
    fn task(&self) -> i32;
    /// The store `name` of this task.
    fn store(&mut self, name: &str) -> Result<&mut dyn KvStore, StateError>;
}

/// Stores for pipelines without stateful steps: every access is an error.
pub struct NoStores {
    pub task: i32,
}

impl TaskStores for NoStores {
    fn task(&self) -> i32 {
        self.task
    }
    fn store(&mut self, name: &str) -> Result<&mut dyn KvStore, StateError> {
        Err(StateError::Undeclared(name.to_string()))
    }
}

/// An in-memory store: the reference implementation, used by tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemStore {
    pub entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.entries.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, StateError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .entries
            .range(from.to_vec()..to.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// In-memory stores for every task: what tests and the Rust API's examples
/// run operators against.
#[derive(Debug, Default)]
pub struct MemStores {
    pub task: i32,
    pub stores: BTreeMap<(i32, String), MemStore>,
}

impl TaskStores for MemStores {
    fn task(&self) -> i32 {
        self.task
    }
    fn store(&mut self, name: &str) -> Result<&mut dyn KvStore, StateError> {
        Ok(self
            .stores
            .entry((self.task, name.to_string()))
            .or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_ranges_are_ordered_and_bounded() {
        let mut s = MemStore::default();
        for k in [b"b", b"a", b"d", b"c"] {
            s.put(k, b"v");
        }
        s.delete(b"c");
        let keys: Vec<Vec<u8>> = s
            .range(b"a", b"d", 10)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(s.range(b"a", b"z", 1).unwrap().len(), 1);
        assert!(s.range(b"z", b"a", 10).unwrap().is_empty());
    }
}

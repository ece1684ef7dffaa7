//! A task's stores as operators see them: the committed local copy in
//! RocksDB plus the open transaction's writes, buffered in memory.
//!
//! Reads see the buffer first (an operator reads its own writes); the
//! buffer reaches RocksDB only after the Kafka transaction that carried its
//! changelog records commits (see [`crate::runtime::transaction`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::rocks::{Change, TaskDb};
use super::{Entries, KvStore, StateError, TaskStores};

/// One store of one task.
pub struct Store {
    name: String,
    db: Arc<TaskDb>,
    /// Writes of the open transaction: a value, or `None` for a delete.
    pending: BTreeMap<Vec<u8>, Change>,
    pending_bytes: usize,
    /// While a record is processed: what each key it touched held in
    /// `pending` before (`None`: absent), to undo the record's writes if it
    /// ends up dead-lettered.
    journal: Option<Journal>,
}

struct Journal {
    before: Vec<(Vec<u8>, Option<Change>)>,
    pending_bytes: usize,
}

impl Store {
    fn new(name: &str, db: Arc<TaskDb>) -> Store {
        Store {
            name: name.to_string(),
            db,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            journal: None,
        }
    }

    fn remember(&mut self, key: &[u8]) {
        if let Some(journal) = self.journal.as_mut() {
            journal
                .before
                .push((key.to_vec(), self.pending.get(key).cloned()));
        }
    }
}

impl KvStore for Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.pending.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.db.get(&self.name, key),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.remember(key);
        self.pending_bytes += key.len() + value.len();
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn delete(&mut self, key: &[u8]) {
        self.remember(key);
        self.pending_bytes += key.len();
        self.pending.insert(key.to_vec(), None);
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, StateError> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let buffered: Vec<(&Vec<u8>, &Change)> =
            self.pending.range(from.to_vec()..to.to_vec()).collect();
        // Fetch enough committed entries that, after buffered deletes hide
        // some of them, `limit` entries of the merged view remain complete.
        let deletes = buffered.iter().filter(|(_, c)| c.is_none()).count();
        let committed = self.db.range(&self.name, from, to, limit + deletes)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (key, change) in buffered {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// All stores of one task.
pub struct TaskState {
    task: i32,
    db: Arc<TaskDb>,
    stores: BTreeMap<String, Store>,
}

impl TaskState {
    pub fn new(task: i32, db: TaskDb, names: &[String]) -> TaskState {
        let db = Arc::new(db);
        let stores = names
            .iter()
            .map(|n| (n.clone(), Store::new(n, db.clone())))
            .collect();
        TaskState { task, db, stores }
    }

    pub fn db(&self) -> &TaskDb {
        &self.db
    }

    /// Bytes buffered in the open transaction.
    pub fn pending_bytes(&self) -> usize {
        self.stores.values().map(|s| s.pending_bytes).sum()
    }

    /// The buffered changes per store (what goes to the changelog).
    pub fn pending(&self) -> impl Iterator<Item = (&str, &BTreeMap<Vec<u8>, Change>)> {
        self.stores
            .values()
            .filter(|s| !s.pending.is_empty())
            .map(|s| (s.name.as_str(), &s.pending))
    }

    /// Moves the buffered changes to RocksDB with the changelog offsets the
    /// commit produced, atomically; called after the transaction commits.
    pub fn apply_committed(&mut self, offsets: &BTreeMap<String, i64>) -> Result<(), StateError> {
        let mut changes = BTreeMap::new();
        for store in self.stores.values_mut() {
            if !store.pending.is_empty() {
                changes.insert(store.name.clone(), std::mem::take(&mut store.pending));
                store.pending_bytes = 0;
            }
        }
        self.db.apply(&changes, offsets)
    }

    /// Starts recording the writes of one record, so that they can be undone
    /// if the record fails (a record that goes to the dead-letter topic must
    /// leave no trace in state).
    pub fn savepoint(&mut self) {
        for store in self.stores.values_mut() {
            store.journal = Some(Journal {
                before: Vec::new(),
                pending_bytes: store.pending_bytes,
            });
        }
    }

    /// Keeps the writes made since [`savepoint`](Self::savepoint).
    pub fn release(&mut self) {
        for store in self.stores.values_mut() {
            store.journal = None;
        }
    }

    /// The largest write since [`savepoint`](Self::savepoint) whose
    /// changelog record (key and value) would exceed `limit` bytes, as
    /// (store, bytes). Such a record could never be produced: the
    /// transaction would abort at every commit.
    pub fn oversized_write(&self, limit: usize) -> Option<(&str, usize)> {
        self.stores
            .values()
            .flat_map(|store| {
                let touched = store.journal.iter().flat_map(|j| &j.before);
                touched.filter_map(move |(key, _)| {
                    let value = store.pending.get(key)?.as_ref().map_or(0, Vec::len);
                    let bytes = key.len() + value;
                    (bytes > limit).then_some((store.name.as_str(), bytes))
                })
            })
            .max_by_key(|(_, bytes)| *bytes)
    }

    /// Undoes the writes made since [`savepoint`](Self::savepoint).
    pub fn rollback(&mut self) {
        for store in self.stores.values_mut() {
            if let Some(journal) = store.journal.take() {
                for (key, before) in journal.before.into_iter().rev() {
                    match before {
                        Some(change) => store.pending.insert(key, change),
                        None => store.pending.remove(&key),
                    };
                }
                store.pending_bytes = journal.pending_bytes;
            }
        }
    }

    /// Forgets the buffered changes; called when the transaction aborts.
    pub fn discard(&mut self) {
        for store in self.stores.values_mut() {
            store.pending.clear();
            store.pending_bytes = 0;
            store.journal = None;
        }
    }
}

impl TaskStores for TaskState {
    fn task(&self) -> i32 {
        self.task
    }

    fn store(&mut self, name: &str) -> Result<&mut dyn KvStore, StateError> {
        self.stores
            .get_mut(name)
            .map(|s| s as &mut dyn KvStore)
            .ok_or_else(|| StateError::Undeclared(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;
    use crate::state::rocks::StateEnv;

    /// The overlay must behave exactly like a plain map whatever mix of
    /// committed and buffered writes it holds.
    #[test]
    fn overlay_reads_match_a_reference_map() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let names = vec!["s".to_string()];
        let db = TaskDb::open(&env, dir.path(), &names).unwrap();
        let mut task = TaskState::new(0, db, &names);
        let mut reference = MemStore::default();
        let mut seed: u64 = 7;
        for round in 0..20 {
            for _ in 0..50 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = format!("k{:02}", (seed >> 33) % 40).into_bytes();
                let store = task.store("s").unwrap();
                if (seed >> 20).is_multiple_of(3) {
                    store.delete(&key);
                    reference.delete(&key);
                } else {
                    let value = format!("v{round}").into_bytes();
                    store.put(&key, &value);
                    reference.put(&key, &value);
                }
            }
            let store = task.store("s").unwrap();
            for limit in [1, 5, 100] {
                assert_eq!(
                    store.range(b"k05", b"k30", limit).unwrap(),
                    reference.range(b"k05", b"k30", limit).unwrap()
                );
            }
            assert_eq!(store.get(b"k07").unwrap(), reference.get(b"k07").unwrap());
            if round % 2 == 0 {
                task.apply_committed(&BTreeMap::from([("s".to_string(), round)]))
                    .unwrap();
                assert_eq!(task.pending_bytes(), 0);
            }
        }
    }

    #[test]
    fn a_failed_record_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let names = vec!["s".to_string()];
        let db = TaskDb::open(&env, dir.path(), &names).unwrap();
        let mut task = TaskState::new(0, db, &names);
        task.store("s").unwrap().put(b"a", b"1");
        task.store("s").unwrap().put(b"b", b"1");
        let bytes = task.pending_bytes();
        task.savepoint();
        let store = task.store("s").unwrap();
        store.put(b"a", b"2");
        store.delete(b"b");
        store.put(b"c", b"3");
        store.put(b"a", b"4");
        task.rollback();
        let store = task.store("s").unwrap();
        assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(b"c").unwrap(), None);
        assert_eq!(task.pending_bytes(), bytes);
        task.savepoint();
        task.store("s").unwrap().put(b"d", b"5");
        task.release();
        task.rollback();
        assert_eq!(
            task.store("s").unwrap().get(b"d").unwrap(),
            Some(b"5".to_vec())
        );
    }

    #[test]
    fn writes_too_large_for_a_changelog_record_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let names = vec!["a".to_string(), "b".to_string()];
        let db = TaskDb::open(&env, dir.path(), &names).unwrap();
        let mut task = TaskState::new(0, db, &names);
        // Before the savepoint: not this record's doing.
        task.store("a").unwrap().put(b"old", &[0; 100]);
        task.savepoint();
        assert_eq!(task.oversized_write(50), None);
        task.store("a").unwrap().put(b"k", &[0; 20]);
        task.store("b").unwrap().put(b"k", &[0; 60]);
        task.store("b").unwrap().put(b"j", &[0; 70]);
        assert_eq!(task.oversized_write(50), Some(("b", 71)));
        // Overwritten smaller, or deleted, within the same record: fits.
        task.store("b").unwrap().put(b"j", &[0; 10]);
        task.store("b").unwrap().delete(b"k");
        assert_eq!(task.oversized_write(50), None);
        task.rollback();
        assert_eq!(task.oversized_write(50), None);
    }

    #[test]
    fn discarded_writes_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let names = vec!["s".to_string()];
        let db = TaskDb::open(&env, dir.path(), &names).unwrap();
        let mut task = TaskState::new(0, db, &names);
        task.store("s").unwrap().put(b"a", b"1");
        task.discard();
        assert_eq!(task.store("s").unwrap().get(b"a").unwrap(), None);
        assert!(task.store("other").is_err());
    }
}

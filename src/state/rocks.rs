//! The local copy of a task's stores: one RocksDB instance per task
//! (`<state.dir>/<group>/task-<partition>`), a column family per store,
//! and a `millrace.meta` column family holding, per store, the changelog
//! offset the local data is complete up to and the id of the changelog
//! topic it was built from.
//!
//! The local copy only ever holds *committed* state: writes reach it after
//! their Kafka transaction commits, in one atomic write batch together with
//! the changelog offsets they correspond to. So after a crash the local copy
//! is a committed prefix of the changelog, and restore replays only the
//! tail beyond the stored offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteBufferManager,
};

use super::{Entries, StateError};

const META_CF: &str = "millrace.meta";
/// Meta key prefix of a store's changelog topic id (the bare store name
/// holds its offset; store names never start with a NUL byte).
const TOPIC_ID_PREFIX: &[u8] = b"\0topic-id/";

/// Memory shared by every store of the process, so that the total is
/// bounded by configuration whatever the number of tasks. Clones share.
#[derive(Clone)]
pub struct StateEnv {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl StateEnv {
    /// One block cache of `block_cache_bytes` and a write-buffer budget of
    /// `write_buffer_bytes` (charged to the same cache).
    pub fn new(block_cache_bytes: usize, write_buffer_bytes: usize) -> StateEnv {
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            write_buffer_bytes,
            false,
            cache.clone(),
        );
        StateEnv {
            cache,
            write_buffers,
        }
    }

    fn options(&self) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_manager(&self.write_buffers);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        opts.set_block_based_table_factory(&table);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts
    }
}

fn storage(context: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("{context}: {e}"))
}

/// One task's RocksDB.
pub struct TaskDb {
    db: DB,
    path: PathBuf,
}

/// One store's pending change: a value, or `None` for a delete.
pub type Change = Option<Vec<u8>>;

impl TaskDb {
    /// The directory of a task's state.
    pub fn dir(state_dir: &Path, group: &str, task: i32) -> PathBuf {
        state_dir.join(group).join(format!("task-{task}"))
    }

    /// Opens (creating if needed) the task's database with a column family
    /// per store. RocksDB's own LOCK file makes a second process that opens
    /// the same task fail, so two instances sharing a volume can never both
    /// own a task's state.
    pub fn open(env: &StateEnv, path: &Path, stores: &[String]) -> Result<TaskDb, StateError> {
        std::fs::create_dir_all(path)
            .map_err(|e| storage(&format!("creating {}", path.display()), e))?;
        let opts = env.options();
        let mut families = vec![ColumnFamilyDescriptor::new(META_CF, env.options())];
        for store in stores {
            families.push(ColumnFamilyDescriptor::new(store, env.options()));
        }
        let db = DB::open_cf_descriptors(&opts, path, families)
            .map_err(|e| storage(&format!("opening state {}", path.display()), e))?;
        Ok(TaskDb {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Deletes a task's local state (before a full restore, or on reset).
    pub fn destroy(path: &Path) -> Result<(), StateError> {
        if path.exists() {
            std::fs::remove_dir_all(path)
                .map_err(|e| storage(&format!("removing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Deletes a task's local state unless a live process has it open
    /// (RocksDB's lock says so: instances on one machine may share a state
    /// directory). Returns whether it was deleted.
    pub fn destroy_if_unused(env: &StateEnv, path: &Path) -> Result<bool, StateError> {
        let opts = env.options();
        // Open with whatever column families it has: a store renamed since
        // must not keep the directory alive forever.
        let families = DB::list_cf(&opts, path).unwrap_or_default();
        let families: Vec<ColumnFamilyDescriptor> = families
            .into_iter()
            .filter(|f| f != rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .map(|f| ColumnFamilyDescriptor::new(f, env.options()))
            .collect();
        match DB::open_cf_descriptors(&opts, path, families) {
            Ok(db) => drop(db),
            Err(e) if e.to_string().contains("lock") => return Ok(false),
            // Unreadable as a database: nothing live uses it either.
            Err(_) => {}
        }
        TaskDb::destroy(path)?;
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, store: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(store)
            .ok_or_else(|| StateError::Undeclared(store.to_string()))
    }

    /// The changelog offset this store's local data is complete up to
    /// (the next changelog record to apply), if any.
    pub fn changelog_offset(&self, store: &str) -> Result<Option<i64>, StateError> {
        let meta = self.cf(META_CF)?;
        let raw = self
            .db
            .get_cf(meta, store.as_bytes())
            .map_err(|e| storage("reading changelog offset", e))?;
        Ok(match raw {
            Some(bytes) if bytes.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes);
                Some(i64::from_be_bytes(b))
            }
            _ => None,
        })
    }

    /// The id of the changelog topic this store's data came from, if
    /// recorded (stores written before ids were recorded have none).
    pub fn changelog_topic_id(&self, store: &str) -> Result<Option<String>, StateError> {
        let meta = self.cf(META_CF)?;
        let raw = self
            .db
            .get_cf(meta, topic_id_key(store))
            .map_err(|e| storage("reading changelog topic id", e))?;
        Ok(raw.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Records the id of the changelog topic this store's data comes from.
    /// Written before the first record of that topic is applied, so a store
    /// never holds data of one topic under the id of another.
    pub fn set_changelog_topic_id(&self, store: &str, id: &str) -> Result<(), StateError> {
        let meta = self.cf(META_CF)?;
        self.db
            .put_cf(meta, topic_id_key(store), id.as_bytes())
            .map_err(|e| storage("writing changelog topic id", e))
    }

    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf(store)?;
        self.db
            .get_cf(cf, key)
            .map_err(|e| storage("reading state", e))
    }

    /// Committed entries with `from <= key < to`, in order, at most `limit`.
    pub fn range(
        &self,
        store: &str,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StateError> {
        let cf = self.cf(store)?;
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(to.to_vec());
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(cf, read, IteratorMode::From(from, Direction::Forward))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| storage("scanning state", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Applies committed changes of several stores and their new changelog
    /// offsets in one atomic, durable write.
    pub fn apply(
        &self,
        changes: &BTreeMap<String, BTreeMap<Vec<u8>, Change>>,
        offsets: &BTreeMap<String, i64>,
    ) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for (store, entries) in changes {
            let cf = self.cf(store)?;
            for (key, change) in entries {
                match change {
                    Some(value) => batch.put_cf(cf, key, value),
                    None => batch.delete_cf(cf, key),
                }
            }
        }
        let meta = self.cf(META_CF)?;
        for (store, offset) in offsets {
            batch.put_cf(meta, store.as_bytes(), offset.to_be_bytes());
        }
        self.db
            .write(batch)
            .map_err(|e| storage("writing state", e))
    }
}

fn topic_id_key(store: &str) -> Vec<u8> {
    [TOPIC_ID_PREFIX, store.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_offsets_land_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let stores = vec!["w".to_string()];
        {
            let db = TaskDb::open(&env, dir.path(), &stores).unwrap();
            assert_eq!(db.changelog_offset("w").unwrap(), None);
            let mut changes = BTreeMap::new();
            changes.insert(
                "w".to_string(),
                BTreeMap::from([
                    (b"a".to_vec(), Some(b"1".to_vec())),
                    (b"b".to_vec(), Some(b"2".to_vec())),
                    (b"c".to_vec(), None),
                ]),
            );
            db.apply(&changes, &BTreeMap::from([("w".to_string(), 42)]))
                .unwrap();
        }
        let db = TaskDb::open(&env, dir.path(), &stores).unwrap();
        assert_eq!(db.changelog_offset("w").unwrap(), Some(42));
        assert_eq!(db.changelog_topic_id("w").unwrap(), None);
        db.set_changelog_topic_id("w", "AAAAAAAAAAAAAAAAAAAAAQ")
            .unwrap();
        assert_eq!(
            db.changelog_topic_id("w").unwrap().as_deref(),
            Some("AAAAAAAAAAAAAAAAAAAAAQ")
        );
        // The id does not disturb the offset kept beside it.
        assert_eq!(db.changelog_offset("w").unwrap(), Some(42));
        assert_eq!(db.get("w", b"a").unwrap(), Some(b"1".to_vec()));
        let keys: Vec<Vec<u8>> = db
            .range("w", b"a", b"z", 10)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(matches!(
            db.get("nope", b"a"),
            Err(StateError::Undeclared(_))
        ));
    }

    #[test]
    fn a_second_owner_cannot_open_the_same_task() {
        let dir = tempfile::tempdir().unwrap();
        let env = StateEnv::new(8 << 20, 8 << 20);
        let _first = TaskDb::open(&env, dir.path(), &["s".to_string()]).unwrap();
        assert!(TaskDb::open(&env, dir.path(), &["s".to_string()]).is_err());
    }
}

//! The state of every task this instance owns: opened and restored when a
//! partition is assigned, closed when it is revoked, changelogged and
//! applied around each transaction.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdkafka::ClientConfig;
use tracing::warn;

use super::restore::Restorer;
use super::rocks::{StateEnv, TaskDb};
use super::task::TaskState;
use super::{StateError, TaskStores};
use crate::metrics::Metrics;

/// The changelog topic of a store.
pub fn changelog_topic(pipeline: &str, store: &str) -> String {
    format!("{pipeline}-{store}-changelog")
}

/// A changelog record to produce: (topic, partition, key, value or tombstone).
pub type ChangelogRecord<'a> = (String, i32, &'a [u8], Option<&'a [u8]>);

pub struct StateManager {
    env: StateEnv,
    dir: PathBuf,
    pipeline: String,
    stores: Vec<String>,
    tasks: BTreeMap<i32, TaskState>,
    restorer: Restorer,
    metrics: Arc<Metrics>,
}

impl StateManager {
    /// `dir` is `state.dir`; the pipeline's tasks live in `dir/<pipeline>/`.
    pub fn new(
        env: StateEnv,
        dir: &Path,
        pipeline: &str,
        stores: Vec<String>,
        restore_client: ClientConfig,
        metrics: Arc<Metrics>,
    ) -> StateManager {
        StateManager {
            env,
            dir: dir.to_path_buf(),
            pipeline: pipeline.to_string(),
            stores,
            tasks: BTreeMap::new(),
            restorer: Restorer::new(restore_client),
            metrics,
        }
    }

    /// Opens a task's local stores and restores them from their changelogs
    /// before the task processes anything. A corrupt local copy is deleted
    /// and rebuilt from the changelog.
    pub fn open_task(&mut self, task: i32) -> Result<(), StateError> {
        if self.tasks.contains_key(&task) {
            return Ok(());
        }
        let path = TaskDb::dir(&self.dir, &self.pipeline, task);
        let db = match TaskDb::open(&self.env, &path, &self.stores) {
            Ok(db) => db,
            Err(e) if e.to_string().contains("Corruption") => {
                warn!(task, error = %e, "local state is corrupt; rebuilding it from the changelog");
                TaskDb::destroy(&path)?;
                TaskDb::open(&self.env, &path, &self.stores)?
            }
            Err(e) => return Err(e),
        };
        for store in &self.stores {
            let topic = changelog_topic(&self.pipeline, store);
            let restored = self.restorer.restore(&db, store, &topic, task)?;
            let kind = if restored.full { "full" } else { "tail" };
            self.metrics
                .state_restores
                .with_label_values(&[store.as_str(), kind])
                .inc();
            self.metrics
                .state_restored_records
                .with_label_values(&[store.as_str()])
                .inc_by(restored.records);
            self.metrics
                .state_restore_seconds
                .observe(restored.elapsed.as_secs_f64());
        }
        self.tasks
            .insert(task, TaskState::new(task, db, &self.stores));
        Ok(())
    }

    /// Closes a task (its buffered writes must have been committed or
    /// discarded), releasing its RocksDB lock for the next owner.
    pub fn close_task(&mut self, task: i32) {
        self.tasks.remove(&task);
    }

    /// The tasks open here.
    pub fn tasks(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    pub fn close_all(&mut self) {
        self.tasks.clear();
    }

    /// The stores of a task this instance owns.
    pub fn task_stores(&mut self, task: i32) -> Result<&mut dyn TaskStores, StateError> {
        self.tasks
            .get_mut(&task)
            .map(|t| t as &mut dyn TaskStores)
            .ok_or_else(|| StateError::Storage(format!("task {task} is not open here")))
    }

    /// Starts recording a record's state writes in `task` (see
    /// [`TaskState::savepoint`]); `keep` then keeps or undoes them.
    pub fn savepoint(&mut self, task: i32) {
        if let Some(t) = self.tasks.get_mut(&task) {
            t.savepoint();
        }
    }

    /// Ends a savepoint: keeps the record's writes, or undoes them.
    pub fn end_savepoint(&mut self, task: i32, keep: bool) {
        if let Some(t) = self.tasks.get_mut(&task) {
            if keep {
                t.release();
            } else {
                t.rollback();
            }
        }
    }

    /// Bytes buffered by the open transaction, over all tasks.
    pub fn pending_bytes(&self) -> usize {
        self.tasks.values().map(TaskState::pending_bytes).sum()
    }

    /// The changelog records of the open transaction's writes: the last
    /// value of every key written, one record per key.
    pub fn changelog_records(&self) -> Vec<ChangelogRecord<'_>> {
        let mut out = Vec::new();
        for (task, state) in &self.tasks {
            for (store, changes) in state.pending() {
                let topic = changelog_topic(&self.pipeline, store);
                for (key, change) in changes {
                    out.push((topic.clone(), *task, key.as_slice(), change.as_deref()));
                }
            }
        }
        out
    }

    /// After a commit: applies every task's buffered writes to RocksDB with
    /// the changelog offsets just produced (`delivered` holds the last
    /// offset delivered per topic and partition).
    pub fn apply_committed(
        &mut self,
        delivered: &HashMap<(String, i32), i64>,
    ) -> Result<(), StateError> {
        for (task, state) in self.tasks.iter_mut() {
            let mut offsets = BTreeMap::new();
            let stores: Vec<String> = state.pending().map(|(s, _)| s.to_string()).collect();
            for store in stores {
                let topic = changelog_topic(&self.pipeline, &store);
                let Some(last) = delivered.get(&(topic.clone(), *task)) else {
                    return Err(StateError::Storage(format!(
                        "no delivery report for {topic}[{task}] after commit"
                    )));
                };
                offsets.insert(store, last + 1);
            }
            state.apply_committed(&offsets)?;
        }
        Ok(())
    }

    /// After an abort: forgets every buffered write.
    pub fn discard(&mut self) {
        for state in self.tasks.values_mut() {
            state.discard();
        }
    }
}

//! The state of every task this instance owns: opened and restored when a
//! partition is assigned, closed when it is revoked, changelogged and
//! applied around each transaction.
//!
//! State belongs to the consumer group, not to the pipeline's name: the
//! group's committed offsets say where processing resumes, so the state
//! must be the state *at those offsets*. Changelog topics are named
//! `<group>-<store>-changelog` and local stores live in
//! `<state.dir>/<group>/task-<partition>`, so a new group (the usual way to
//! reprocess, or a blue/green deployment) starts with its own empty state
//! instead of inheriting another group's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::restore::{Restore, Restorer};
use super::rocks::{StateEnv, TaskDb};
use super::task::TaskState;
use super::{StateError, TaskStores};
use crate::metrics::Metrics;

/// The changelog topic of a store of the group `group`.
pub fn changelog_topic(group: &str, store: &str) -> String {
    format!("{group}-{store}-changelog")
}

/// How often the state directory is scanned for tasks to clean up (more
/// often when `state.cleanup_delay` is shorter).
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// A changelog record to produce: (topic, partition, key, value or tombstone).
pub type ChangelogRecord<'a> = (String, i32, &'a [u8], Option<&'a [u8]>);

pub struct StateManager {
    env: StateEnv,
    dir: PathBuf,
    /// The consumer group: names the changelogs and the state directory.
    group: String,
    stores: Vec<String>,
    tasks: BTreeMap<i32, TaskState>,
    restorer: Restorer,
    metrics: Arc<Metrics>,
    /// See `state.cleanup_delay`.
    cleanup_delay: Duration,
    last_cleanup: Option<Instant>,
}

impl StateManager {
    /// `dir` is `state.dir`; the group's tasks live in `dir/<group>/`.
    pub fn new(
        env: StateEnv,
        dir: &Path,
        group: &str,
        stores: Vec<String>,
        restorer: Restorer,
        metrics: Arc<Metrics>,
        cleanup_delay: Duration,
    ) -> StateManager {
        StateManager {
            env,
            dir: dir.to_path_buf(),
            group: group.to_string(),
            stores,
            tasks: BTreeMap::new(),
            restorer,
            metrics,
            cleanup_delay,
            last_cleanup: None,
        }
    }

    /// Opens a task's local stores and restores them from their changelogs
    /// before the task processes anything. A corrupt local copy, or one
    /// that no longer matches its changelog (see [`Restore::Stale`]), is
    /// deleted and rebuilt from the changelog.
    pub fn open_task(&mut self, task: i32) -> Result<(), StateError> {
        if self.tasks.contains_key(&task) {
            return Ok(());
        }
        let path = TaskDb::dir(&self.dir, &self.group, task);
        let mut wiped = false;
        let db = loop {
            let db = match TaskDb::open(&self.env, &path, &self.stores) {
                Ok(db) => db,
                Err(e) if e.to_string().contains("Corruption") && !wiped => {
                    warn!(task, error = %e, "local state is corrupt; rebuilding it from the changelog");
                    TaskDb::destroy(&path)?;
                    wiped = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.restore_all(&db, task)? {
                None => break db,
                // A freshly wiped store matches any changelog, so a second
                // mismatch means the changelog moved under the restore.
                Some(why) if wiped => {
                    return Err(StateError::Storage(format!(
                        "task {task}: state still does not match its changelog after a \
                         full restore: {why}"
                    )));
                }
                Some(why) => {
                    warn!(
                        task,
                        reason = %why,
                        "local state does not match its changelog; deleting it and restoring \
                         the whole changelog"
                    );
                    self.metrics.state_wipes.inc();
                    drop(db);
                    TaskDb::destroy(&path)?;
                    wiped = true;
                }
            }
        };
        self.tasks
            .insert(task, TaskState::new(task, db, &self.stores));
        Ok(())
    }

    /// Restores every store of a task; `Some(reason)` when one of them
    /// turned out to be stale (the rest may be half restored: the caller
    /// wipes them all).
    fn restore_all(&mut self, db: &TaskDb, task: i32) -> Result<Option<String>, StateError> {
        for store in &self.stores {
            let topic = changelog_topic(&self.group, store);
            let restored = match self.restorer.restore(db, store, &topic, task)? {
                Restore::Done(restored) => restored,
                Restore::Stale(why) => return Ok(Some(why)),
            };
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
        Ok(None)
    }

    /// Closes a task (its buffered writes must have been committed or
    /// discarded), releasing its RocksDB lock for the next owner.
    pub fn close_task(&mut self, task: i32) {
        if self.tasks.remove(&task).is_some() {
            // The cleanup delay counts from here (see `clean_up`).
            let path = TaskDb::dir(&self.dir, &self.group, task);
            if let Err(e) =
                std::fs::File::open(&path).and_then(|dir| dir.set_modified(SystemTime::now()))
            {
                warn!(task, error = %e, "cannot mark the task's state as released");
            }
        }
    }

    /// Deletes the local state of tasks this instance does not own and has
    /// not touched for `state.cleanup_delay`: a task that comes back much
    /// later must not start from a copy whose deleted rows may since have
    /// vanished from the compacted changelog (their tombstones removed),
    /// which would bring them back. Cheap to call often: it scans at most
    /// once a minute.
    pub fn clean_up(&mut self) {
        if self
            .last_cleanup
            .is_some_and(|at| at.elapsed() < CLEANUP_EVERY.min(self.cleanup_delay))
        {
            return;
        }
        self.last_cleanup = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir(self.dir.join(&self.group)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(task) = name
                .to_str()
                .and_then(|n| n.strip_prefix("task-"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if self.tasks.contains_key(&task) {
                continue;
            }
            let idle = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok());
            if idle.is_none_or(|idle| idle < self.cleanup_delay) {
                continue;
            }
            match TaskDb::destroy_if_unused(&self.env, &entry.path()) {
                Ok(true) => {
                    self.metrics.state_dirs_cleaned.inc();
                    info!(task, idle = ?idle, "deleted the local state of a task not owned here");
                }
                Ok(false) => {}
                Err(e) => warn!(task, error = %e, "cannot delete the local state of a task"),
            }
        }
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

    /// A write of `task` since its savepoint that would not fit in a
    /// changelog record of `limit` bytes, as (store, bytes); see
    /// [`TaskState::oversized_write`].
    pub fn oversized_write(&self, task: i32, limit: usize) -> Option<(String, usize)> {
        let state = self.tasks.get(&task)?;
        let (store, bytes) = state.oversized_write(limit)?;
        Some((store.to_string(), bytes))
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
                let topic = changelog_topic(&self.group, store);
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
                let topic = changelog_topic(&self.group, &store);
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

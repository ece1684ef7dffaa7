//! Pipeline steps. Every step implements [`Operator`]: it takes one record
//! and emits zero or more. Steps are built from their YAML form
//! ([`StepConfig`]) by [`build`]; the same operators can be assembled from
//! Rust.

pub mod aggregates;
mod dedup;
pub mod join;
pub mod keys;
mod reduce;
mod stale;
mod stateful;
mod stateless;
mod telemetry;
#[cfg(test)]
mod test_util;
mod window;

pub use aggregates::Aggregate;
pub use dedup::Dedup;
pub use join::Join;
pub use reduce::Reduce;
pub use stale::Stale;
pub use stateless::{Filter, Map, Project, Rekey, Route, Set};
pub use telemetry::{Rpeaks, Threshold};
pub use window::Window;

use serde_json::Value as Json;

use crate::config::StepConfig;
use crate::expr::{Input, Scope};
use crate::state::{StateError, TaskStores};

/// A record between steps: the decoded value, the key, the timestamp and,
/// once a `route` step ran, the chosen sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Json,
    /// Milliseconds since the epoch (the Kafka record timestamp on entry).
    pub timestamp: Option<i64>,
    /// Sink chosen by a `route` step; `None` means every sink.
    pub route: Option<String>,
}

/// Where a record was read from. Expressions can see it, and dead letters
/// carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a step needs besides the record: the shared expression scope, the
/// record's origin and the current task's state stores.
pub struct StepContext<'a> {
    pub scope: &'a Scope,
    pub origin: &'a Origin,
    pub stores: &'a mut dyn TaskStores,
}

impl StepContext<'_> {
    /// The expression input for `record`.
    pub fn input<'r>(&'r self, record: &'r Record) -> Input<'r> {
        input(self.origin, record)
    }
}

/// The expression input for `record` read from `origin`. A free function
/// so that a stateful step can evaluate expressions while it holds
/// `ctx.stores` mutably.
pub fn input<'r>(origin: &'r Origin, record: &'r Record) -> Input<'r> {
    Input {
        value: &record.value,
        key: record.key.as_deref(),
        topic: &origin.topic,
        partition: origin.partition,
        offset: origin.offset,
        timestamp: record.timestamp,
    }
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The record cannot be processed (bad field, wrong type): it goes to
    /// the dead-letter topic with reason `eval`.
    Record(String),
    /// The record arrived after its window closed (beyond `grace`): it goes
    /// to the dead-letter topic with reason `late`.
    Late(String),
    /// State could not be read or written: not the record's fault. The
    /// runtime rebuilds and retries; the record is not dead-lettered.
    State(StateError),
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Record(message)
    }
}

impl From<StateError> for StepError {
    fn from(e: StateError) -> Self {
        StepError::State(e)
    }
}

/// One step of a pipeline.
///
/// Stateless steps look at one record. Stateful steps declare the stores
/// they use in [`stores`](Operator::stores) and keep *all* their state
/// there (never in fields), because the runtime changelogs, commits,
/// restores and moves stores between instances; fields are shared by every
/// task of the instance and lost in a crash.
pub trait Operator: Send {
    /// The step's keyword (`filter`, `map`, `window`, ...).
    fn kind(&self) -> &'static str;
    /// One line for `millrace validate`'s graph.
    fn describe(&self) -> String;
    /// Names of the state stores this step uses (unique in the pipeline).
    fn stores(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether what the step emits comes from its state (a window's
    /// results, a running aggregate, a timer's events) rather than being
    /// the record it was given, passed on. A later step's failure on such a
    /// record is that output's own: it is dead-lettered alone and the state
    /// that emitted it is kept (see [`crate::pipeline::Pipeline::process`]).
    /// Undoing the state instead would undo, say, a window's close, which
    /// every later record of the partition would then retry and fail again.
    fn emits_state(&self) -> bool {
        false
    }

    /// The window `[start, end)` (ms) a record this step emitted is the
    /// result of, for the headers of its dead letter if it fails later.
    fn window_of(&self, _emitted: &Record) -> Option<(i64, i64)> {
        None
    }

    /// Processes one record, pushing what it emits onto `out`. A step that
    /// fails must not have written state for the record (check first, then
    /// write): a failure on an output of an earlier stateful step undoes
    /// nothing (see [`emits_state`](Operator::emits_state)).
    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError>;

    /// Whether the step has timers: then the runtime calls
    /// [`on_tick`](Operator::on_tick) for every task it owns, about once a
    /// second.
    fn wants_ticks(&self) -> bool {
        false
    }

    /// Fires timers due at wall-clock time `now_ms` for the task of
    /// `ctx.stores`, pushing what it emits onto `out` (those records go
    /// through the following steps). Its state writes and outputs commit in
    /// the same transaction, so a timer fires exactly once across crashes;
    /// `ctx.origin` names the task's partition, with offset -1.
    fn on_tick(
        &mut self,
        _ctx: &mut StepContext<'_>,
        _now_ms: i64,
        _out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

/// Builds the operator for the configured step at `index` in `steps:`.
/// Errors are messages for the step's field path. `index` names the state
/// stores of steps that do not name them (`<kind>-<index>`).
pub fn build(step: &StepConfig, index: usize) -> Result<Box<dyn Operator>, String> {
    Ok(match step {
        StepConfig::Filter(e) => Box::new(Filter::new(e)?),
        StepConfig::Map(e) => Box::new(Map::new(e)?),
        StepConfig::Project(fields) => Box::new(Project::new(fields)?),
        StepConfig::Set(fields) => Box::new(Set::new(fields)?),
        StepConfig::Rekey(e) => Box::new(Rekey::new(e)?),
        StepConfig::Route(e) => Box::new(Route::new(e)?),
        StepConfig::Window(w) => Box::new(Window::new(w, index)?),
        StepConfig::Dedup(d) => Box::new(Dedup::new(d, index)?),
        StepConfig::Reduce(r) => Box::new(Reduce::new(r, index)?),
        StepConfig::Join(j) => Box::new(Join::new(j)?),
        StepConfig::Stale(c) => Box::new(Stale::new(c, index)?),
        StepConfig::Rpeaks(c) => Box::new(Rpeaks::new(c, index)?),
        StepConfig::Threshold(c) => Box::new(Threshold::new(c, index)?),
    })
}

/// Store names must be unique in a pipeline: returns, for every step that
/// reuses a name of an earlier step, its index and the message for its
/// field path (for the pipeline's build to report as `steps[i].<kind>`).
pub fn duplicate_stores(steps: &[Box<dyn Operator>]) -> Vec<(usize, String)> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut issues = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        for name in step.stores() {
            match seen.iter().find(|(n, _)| *n == name) {
                Some((_, first)) => issues.push((
                    i,
                    format!("state store `{name}` is already used by steps[{first}]; give the step another `name`"),
                )),
                None => seen.push((name, i)),
            }
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateful_steps_build_with_default_store_names_and_reused_names_are_found() {
        let yaml = r#"
- window: {type: tumbling, size: 10s}
- filter: "true"
- dedup: {id: value.id, ttl: 1m}
- reduce: {name: window-0}
"#;
        let configs: Vec<StepConfig> = serde_saphyr::from_str(yaml).expect("parses");
        let steps: Vec<Box<dyn Operator>> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| build(c, i).expect("builds"))
            .collect();
        let names: Vec<Vec<String>> = steps.iter().map(|s| s.stores()).collect();
        assert_eq!(
            names,
            [
                vec!["window-0".to_string()],
                vec![],
                vec!["dedup-2".to_string()],
                vec!["window-0".to_string()]
            ]
        );
        let issues = duplicate_stores(&steps);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].0, 3);
        assert!(issues[0].1.contains("steps[0]"), "{issues:?}");
    }
}

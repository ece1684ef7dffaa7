//! Helpers for the stateful steps' tests: feed records to an operator
//! against in-memory stores, and look into those stores.

use serde_json::Value as Json;

use super::{Operator, Origin, Record, StepContext, StepError};
use crate::expr::Scope;
use crate::state::MemStores;

/// Records fed to operators, with stores that outlive any one operator.
pub struct Feed {
    pub scope: Scope,
    pub stores: MemStores,
    offset: i64,
}

impl Feed {
    pub fn new() -> Self {
        Feed {
            scope: Scope::default(),
            stores: MemStores::default(),
            offset: 0,
        }
    }

    /// Feeds one record with key `key` (empty for none) from the partition
    /// `self.stores.task`.
    pub fn run(
        &mut self,
        op: &mut dyn Operator,
        key: &str,
        value: Json,
        timestamp: Option<i64>,
    ) -> Result<Vec<Record>, StepError> {
        self.offset += 1;
        let origin = Origin {
            topic: "in".into(),
            partition: self.stores.task,
            offset: self.offset,
        };
        let mut ctx = StepContext {
            scope: &self.scope,
            origin: &origin,
            stores: &mut self.stores,
        };
        let record = Record {
            key: (!key.is_empty()).then(|| key.as_bytes().to_vec()),
            value,
            timestamp,
            route: None,
        };
        let mut out = Vec::new();
        op.process(&mut ctx, record, &mut out)?;
        Ok(out)
    }

    /// Fires the operator's timers at `now` for the task `self.stores.task`.
    pub fn tick(&mut self, op: &mut dyn Operator, now: i64) -> Result<Vec<Record>, StepError> {
        let origin = Origin {
            topic: String::new(),
            partition: self.stores.task,
            offset: -1,
        };
        let mut ctx = StepContext {
            scope: &self.scope,
            origin: &origin,
            stores: &mut self.stores,
        };
        let mut out = Vec::new();
        op.on_tick(&mut ctx, now, &mut out)?;
        Ok(out)
    }
}

/// How many entries of store `name` of `task` start with `tag`.
pub fn entries_with_tag(stores: &MemStores, task: i32, name: &str, tag: u8) -> usize {
    stores.stores.get(&(task, name.to_string())).map_or(0, |s| {
        s.entries.keys().filter(|k| k.first() == Some(&tag)).count()
    })
}

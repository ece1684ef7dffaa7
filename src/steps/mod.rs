//! Pipeline steps. Every step implements [`Operator`]: it takes one record
//! and emits zero or more. Steps are built from their YAML form
//! ([`StepConfig`]) by [`build`]; the same operators can be assembled from
//! Rust.

mod stateless;

pub use stateless::{Filter, Map, Project, Rekey, Route, Set};

use serde_json::Value as Json;

use crate::config::StepConfig;
use crate::expr::{Input, Scope};

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

/// What a step needs besides the record: the shared expression scope and
/// the record's origin.
pub struct StepContext<'a> {
    pub scope: &'a Scope,
    pub origin: &'a Origin,
}

impl StepContext<'_> {
    /// The expression input for `record`.
    pub fn input<'r>(&'r self, record: &'r Record) -> Input<'r> {
        Input {
            value: &record.value,
            key: record.key.as_deref(),
            topic: &self.origin.topic,
            partition: self.origin.partition,
            offset: self.origin.offset,
            timestamp: record.timestamp,
        }
    }
}

/// One step of a pipeline.
pub trait Operator: Send {
    /// The step's keyword (`filter`, `map`, ...).
    fn kind(&self) -> &'static str;
    /// One line for `millrace validate`'s graph.
    fn describe(&self) -> String;
    /// Processes one record, pushing what it emits onto `out`. An error
    /// sends the input record to the dead-letter topic.
    fn process(
        &mut self,
        ctx: &StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), String>;
}

/// Builds the operator for one configured step. Errors are messages for the
/// step's field path.
pub fn build(step: &StepConfig) -> Result<Box<dyn Operator>, String> {
    Ok(match step {
        StepConfig::Filter(e) => Box::new(Filter::new(e)?),
        StepConfig::Map(e) => Box::new(Map::new(e)?),
        StepConfig::Project(fields) => Box::new(Project::new(fields)?),
        StepConfig::Set(fields) => Box::new(Set::new(fields)?),
        StepConfig::Rekey(e) => Box::new(Rekey::new(e)?),
        StepConfig::Route(e) => Box::new(Route::new(e)?),
    })
}

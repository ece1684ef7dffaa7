//! Stream–table join: the `join` step and the table it reads.
//!
//! A table is a source marked `table: <name>`. Its records never reach the
//! steps: each one sets (or, without a value, deletes) the row under its
//! record key in the task's store named after the table, which is
//! changelogged, committed and restored like every other store. A `join`
//! step looks the record's key up in that store and puts the row into a
//! field of the record.
//!
//! Tables are partitioned like the stream (the sources are co-partitioned),
//! so the row for a key is in the same task as the stream records with that
//! key. That holds only for the key as read, which is why `join` refuses to
//! follow a `rekey` (checked when the pipeline is built).
//!
//! # Store layout
//!
//! | key | value |
//! |---|---|
//! | the record key, as is | the row: the decoded value as JSON text |

use serde_json::Value as Json;

use super::stateful::{self, corrupt};
use super::{Operator, Record, StepContext, StepError};
use crate::config::{JoinConfig, JoinMissing};
use crate::state::{KvStore, StateError};

/// Checks a table name; it is also the name of the table's store.
pub fn table_store(name: &str) -> Result<String, String> {
    stateful::store_name(Some(name), "table", 0).map_err(|e| e.replace("`name`", "`table`"))
}

/// Applies one table record: `Some(row)` sets the row under `key`, `None`
/// (a tombstone) deletes it.
pub fn apply_table_record(store: &mut dyn KvStore, key: &[u8], row: Option<&Json>) {
    match row {
        Some(row) => store.put(key, row.to_string().as_bytes()),
        None => store.delete(key),
    }
}

/// The row under `key`, if any.
pub fn lookup(store: &dyn KvStore, table: &str, key: &[u8]) -> Result<Option<Json>, StateError> {
    let Some(bytes) = store.get(key)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| corrupt(table, "row", e))
}

/// The `join` step.
#[derive(Debug)]
pub struct Join {
    table: String,
    into: String,
    missing: JoinMissing,
}

impl Join {
    /// Builds the step from its configuration. Whether the table exists is
    /// checked by the pipeline, which knows the sources.
    pub fn new(config: &JoinConfig) -> Result<Self, String> {
        let table = table_store(&config.table)?;
        let into = config.into.clone().unwrap_or_else(|| table.clone());
        if into.is_empty() {
            return Err("`into` must name a field".to_string());
        }
        Ok(Join {
            table,
            into,
            missing: config.missing,
        })
    }

    /// The table this step reads.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Operator for Join {
    fn kind(&self) -> &'static str {
        "join"
    }

    fn describe(&self) -> String {
        let missing = match self.missing {
            JoinMissing::Keep => "keep records without a row (null)",
            JoinMissing::Drop => "drop records without a row",
        };
        format!(
            "join    table {} by record key into `{}`, {missing}",
            self.table, self.into
        )
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        mut record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let row = match &record.key {
            Some(key) => lookup(ctx.stores.store(&self.table)?, &self.table, key)?,
            None => None,
        };
        if row.is_none() && self.missing == JoinMissing::Drop {
            return Ok(());
        }
        let Json::Object(fields) = &mut record.value else {
            return Err(StepError::Record(format!(
                "join needs an object value to set `{}` on, got {}",
                self.into, record.value
            )));
        };
        fields.insert(self.into.clone(), row.unwrap_or(Json::Null));
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskStores;
    use crate::steps::test_util::Feed;
    use serde_json::json;

    fn join(missing: JoinMissing) -> Join {
        Join::new(&JoinConfig {
            table: "devices".into(),
            into: Some("device".into()),
            missing,
        })
        .expect("builds")
    }

    fn set_row(feed: &mut Feed, key: &[u8], row: Option<Json>) {
        let table = feed.stores.store("devices").expect("store");
        apply_table_record(table, key, row.as_ref());
    }

    #[test]
    fn rows_are_set_replaced_and_deleted_and_joined_by_key() {
        let mut feed = Feed::new();
        let mut step = join(JoinMissing::Keep);
        set_row(&mut feed, b"d1", Some(json!({"ward": "A"})));
        set_row(&mut feed, b"d2", Some(json!({"ward": "B"})));
        let out = feed
            .run(&mut step, "d1", json!({"hr": 70}), Some(1))
            .expect("joins");
        assert_eq!(out[0].value, json!({"hr": 70, "device": {"ward": "A"}}));
        let out = feed
            .run(&mut step, "d2", json!({"hr": 60}), Some(1))
            .expect("joins");
        assert_eq!(out[0].value["device"], json!({"ward": "B"}));

        // An update replaces the row; later records see the new one.
        set_row(&mut feed, b"d1", Some(json!({"ward": "C"})));
        let out = feed
            .run(&mut step, "d1", json!({"hr": 71}), Some(2))
            .expect("joins");
        assert_eq!(out[0].value["device"], json!({"ward": "C"}));

        // A tombstone deletes it: a left join keeps the record, with null.
        set_row(&mut feed, b"d1", None);
        let out = feed
            .run(&mut step, "d1", json!({"hr": 72}), Some(3))
            .expect("joins");
        assert_eq!(out[0].value, json!({"hr": 72, "device": null}));
        // No key: no row.
        let out = feed
            .run(&mut step, "", json!({"hr": 73}), Some(4))
            .expect("joins");
        assert_eq!(out[0].value["device"], Json::Null);
    }

    #[test]
    fn inner_join_drops_records_without_a_row_and_non_objects_are_errors() {
        let mut feed = Feed::new();
        let mut step = join(JoinMissing::Drop);
        let out = feed
            .run(&mut step, "nobody", json!({"hr": 1}), Some(1))
            .expect("runs");
        assert!(out.is_empty());
        set_row(&mut feed, b"d", Some(json!(1)));
        let err = feed.run(&mut step, "d", json!([1]), Some(2)).unwrap_err();
        assert!(matches!(err, StepError::Record(m) if m.contains("object")));
    }

    #[test]
    fn table_names_are_checked_and_into_defaults_to_the_table() {
        let step = Join::new(&JoinConfig {
            table: "devices".into(),
            into: None,
            missing: JoinMissing::Keep,
        })
        .expect("builds");
        assert_eq!(step.into, "devices");
        let err = Join::new(&JoinConfig {
            table: "bad name".into(),
            into: None,
            missing: JoinMissing::Keep,
        })
        .unwrap_err();
        assert!(err.contains("`table`"), "{err}");
    }
}

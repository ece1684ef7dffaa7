//! A custom stateful operator through Millrace's Rust API.
//!
//! `NewMaximum` emits a record only when a key's value beats that key's
//! previous maximum. Its state (the maximum per key) lives in a store it
//! declares in `stores()`, never in a field: the runtime changelogs the
//! store inside each Kafka transaction, restores it after a crash and moves
//! it with the partition, so the operator is exactly-once for free.
//!
//! Here it runs against in-memory stores; in a pipeline the runtime gives
//! it RocksDB-backed ones. Run with `cargo run --example custom_operator`.

use millrace::expr::Scope;
use millrace::state::MemStores;
use millrace::steps::{Operator, Origin, Record, StepContext, StepError};
use serde_json::json;

struct NewMaximum {
    store: String,
}

impl Operator for NewMaximum {
    fn kind(&self) -> &'static str {
        "new_maximum"
    }

    fn describe(&self) -> String {
        format!("new_maximum of value.v per key, store {}", self.store)
    }

    fn stores(&self) -> Vec<String> {
        vec![self.store.clone()]
    }

    fn process(
        &mut self,
        ctx: &mut StepContext<'_>,
        record: Record,
        out: &mut Vec<Record>,
    ) -> Result<(), StepError> {
        let key = record
            .key
            .clone()
            .ok_or_else(|| StepError::Record("new_maximum needs a keyed record".into()))?;
        let value = record.value["v"]
            .as_f64()
            .ok_or_else(|| StepError::Record("value.v must be a number".into()))?;
        let store = ctx.stores.store(&self.store)?;
        let previous = store
            .get(&key)?
            .and_then(|bytes| bytes.try_into().ok().map(f64::from_be_bytes));
        if previous.is_none_or(|p| value > p) {
            store.put(&key, &value.to_be_bytes());
            out.push(record);
        }
        Ok(())
    }
}

fn main() {
    let mut op = NewMaximum {
        store: "maxima".into(),
    };
    let scope = Scope::default();
    let mut stores = MemStores::default();
    for (offset, (key, v)) in [("a", 1.0), ("a", 0.5), ("b", 2.0), ("a", 3.0)]
        .iter()
        .enumerate()
    {
        let origin = Origin {
            topic: "readings".into(),
            partition: 0,
            offset: offset as i64,
        };
        let mut ctx = StepContext {
            scope: &scope,
            origin: &origin,
            stores: &mut stores,
        };
        let record = Record {
            key: Some(key.as_bytes().to_vec()),
            value: json!({ "v": v }),
            timestamp: None,
            route: None,
        };
        let mut out = Vec::new();
        match op.process(&mut ctx, record, &mut out) {
            Ok(()) => {
                for r in out {
                    println!("{key}: new maximum {}", r.value["v"]);
                }
            }
            Err(e) => eprintln!("{key}: {e:?}"),
        }
    }
}

//! Stream–table join on the real broker: a table loaded before the stream
//! starts, updates and deletions seen by later records, and the table
//! rebuilt from its changelog after a SIGKILL with the local state gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce_to, producer, progress, read_committed,
    unique,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureRecord;

const PARTITIONS: i32 = 2;
const DEVICES: usize = 20;
const FILLER_ROWS: usize = 20_000;

fn device(i: usize) -> String {
    format!("dev-{i:02}")
}

/// The partition of a device in both topics: co-partitioned by hand.
fn partition(i: usize) -> i32 {
    (i % PARTITIONS as usize) as i32
}

/// One reading per device, tagged with the batch it belongs to.
fn readings(batch: u32) -> Vec<(String, i32, Vec<u8>)> {
    (0..DEVICES)
        .map(|i| {
            let value = serde_json::json!({"batch": batch, "hr": 60 + i});
            (device(i), partition(i), value.to_string().into_bytes())
        })
        .collect()
}

fn rows(version: &str, devices: impl Iterator<Item = usize>) -> Vec<(String, i32, Vec<u8>)> {
    devices
        .map(|i| {
            let value = serde_json::json!({"ward": format!("{version}-{i}")});
            (device(i), partition(i), value.to_string().into_bytes())
        })
        .collect()
}

/// Waits for `count` outputs and returns device -> joined `ward` (or null)
/// for the outputs of `batch`.
fn joined(
    topic: &str,
    count: usize,
    batch: u32,
    m: &Millrace,
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let records: Vec<OwnedMessage> = loop {
        let records = read_committed(topic)?;
        if records.len() >= count || Instant::now() > deadline {
            assert_eq!(records.len(), count, "{topic}; log:\n{}", m.log_tail(30));
            break records;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut by_device = BTreeMap::new();
    for record in records {
        let v: serde_json::Value = serde_json::from_slice(record.payload().unwrap_or_default())?;
        if v["batch"].as_u64() == Some(u64::from(batch)) {
            let key = String::from_utf8_lossy(record.key().unwrap_or_default()).to_string();
            let ward = v["device"]
                .get("ward")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            assert!(
                by_device.insert(key.clone(), ward).is_none(),
                "{key} joined twice in batch {batch}"
            );
        }
    }
    assert_eq!(by_device.len(), DEVICES, "batch {batch}: {by_device:?}");
    Ok(by_device)
}

fn expect(f: impl Fn(usize) -> Option<String>) -> BTreeMap<String, serde_json::Value> {
    (0..DEVICES)
        .map(|i| (device(i), f(i).map_or(serde_json::Value::Null, Into::into)))
        .collect()
}

#[test]
fn joins_see_the_loaded_table_its_updates_and_survive_losing_local_state() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("join");
    let (input, table, output, dead) = (
        format!("{name}-readings"),
        format!("{name}-devices"),
        format!("{name}-out"),
        format!("{name}-dead"),
    );
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&table, PARTITIONS),
        (&output, 1),
        (&dead, 1),
    ]))?;
    let producer = producer();
    // The first readings are written *before* the table, and the table is
    // ~20 MB of other rows with the joined devices' rows last, so it takes
    // many fetches to read: the task must read its table to the end before
    // it joins the readings, or they would see no rows.
    rt.block_on(produce_to(&producer, &input, &readings(1)))?;
    let filler: Vec<(String, i32, Vec<u8>)> = (0..FILLER_ROWS)
        .map(|i| {
            let value = serde_json::json!({"ward": "other", "pad": "x".repeat(1_000)});
            (
                format!("other-{i}"),
                (i % PARTITIONS as usize) as i32,
                value.to_string().into_bytes(),
            )
        })
        .collect();
    rt.block_on(produce_to(&producer, &table, &filler))?;
    rt.block_on(produce_to(&producer, &table, &rows("v1", 0..DEVICES)))?;

    let state = tempfile::tempdir()?;
    let yaml = format!(
        r#"
pipeline: {name}
sources:
  - topic: {input}
  - topic: {table}
    table: devices
steps:
  - join: {{table: devices, into: device}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = state.path().display()
    );
    let mut m = Millrace::start(&yaml)?;
    let got = joined(&output, DEVICES, 1, &m)?;
    assert_eq!(got, expect(|i| Some(format!("v1-{i}"))), "loaded table");
    progress("join: batch 1 joined the whole table");

    // Updates for the even devices, deletions for every fifth.
    rt.block_on(produce_to(
        &producer,
        &table,
        &rows("v2", (0..DEVICES).filter(|i| i % 2 == 0)),
    ))?;
    for i in (0..DEVICES).filter(|i| i % 5 == 0) {
        let key = device(i);
        let tombstone: FutureRecord<'_, String, [u8]> =
            FutureRecord::to(&table).key(&key).partition(partition(i));
        rt.block_on(async {
            producer
                .send(tombstone, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("tombstone: {e}"))
        })?;
    }
    let group = format!("millrace-{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !group_caught_up(&group, &table) {
        assert!(Instant::now() < deadline, "table updates not consumed");
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(produce_to(&producer, &input, &readings(2)))?;
    let updated = |i: usize| match i {
        i if i % 5 == 0 => None,
        i if i % 2 == 0 => Some(format!("v2-{i}")),
        i => Some(format!("v1-{i}")),
    };
    let got = joined(&output, 2 * DEVICES, 2, &m)?;
    assert_eq!(got, expect(updated), "after updates and deletions");
    progress("join: batch 2 saw the updates and deletions");

    // SIGKILL, and the local state is lost: the table comes back from its
    // changelog, not from re-reading the table topic (its offsets are
    // committed), and joins the same.
    m.kill()?;
    std::fs::remove_dir_all(state.path())?;
    std::fs::create_dir_all(state.path())?;
    m.restart()?;
    rt.block_on(produce_to(&producer, &input, &readings(3)))?;
    let got = joined(&output, 3 * DEVICES, 3, &m)?;
    assert_eq!(got, expect(updated), "after a full restore");
    let full = m.metric("millrace_state_restores_total{kind=\"full\",store=\"devices\"}")?;
    assert_eq!(
        full, PARTITIONS as f64,
        "each task's table restored from the changelog"
    );
    assert!(read_committed(&dead)?.is_empty(), "no dead letters");
    m.stop_cleanly()?;
    Ok(())
}

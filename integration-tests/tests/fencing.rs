//! Two processes started with the same `kafka.instance_id` share one
//! transactional id, so each one's start fences the other's producer. The
//! output must stay exact through that, and the log must say what is
//! wrong and how to fix it, instead of an endless, unexplained rebuild.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce, producer, read_committed, unique,
};
use rdkafka::message::Message;

const RECORDS: u64 = 6_000;

#[test]
fn two_instances_sharing_an_instance_id_are_told_and_the_output_stays_exact() -> anyhow::Result<()>
{
    let name = unique("twins");
    let (input, output, group) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-g"),
    );
    let dead = format!("{name}-dead");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(create_topics(&[(&input, 2), (&output, 2), (&dead, 1)]))?;
    let yaml = format!(
        r#"
pipeline: {name}
kafka:
  group_id: {group}
  instance_id: the-same-for-both
sources: [{{topic: {input}, start: earliest}}]
steps:
  - set: {{double: "value.n * 2"}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
commit: {{interval: 100ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#
    );
    let mut first = Millrace::start(&yaml)?;
    let mut second = Millrace::start(&yaml)?;
    let p = producer();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
        let records: Vec<(Option<String>, Vec<u8>)> = chunk
            .iter()
            .map(|n| {
                (
                    Some(format!("k{}", n % 10)),
                    serde_json::json!({ "n": n }).to_string().into_bytes(),
                )
            })
            .collect();
        rt.block_on(produce(&p, &input, &records))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    // The operator's fix: stop one of the twins.
    second.stop_cleanly().or_else(|_| second.kill())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !group_caught_up(&group, &input) {
        assert!(
            Instant::now() < deadline,
            "not caught up; log:\n{}",
            first.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    first.stop_cleanly()?;

    let logs = [&first, &second]
        .iter()
        .map(|m| std::fs::read_to_string(m.log_path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        logs.contains("sharing kafka.instance_id"),
        "no log line names the shared instance id; logs:\n{}\n---\n{}",
        first.log_tail(30),
        second.log_tail(30)
    );

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for m in read_committed(&output)? {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let n = v["n"].as_u64().unwrap_or(u64::MAX);
        assert_eq!(v["double"].as_u64(), Some(n * 2));
        *seen.entry(n).or_default() += 1;
    }
    let duplicated = seen.values().filter(|c| **c > 1).count();
    let missing = (0..RECORDS).filter(|n| !seen.contains_key(n)).count();
    assert_eq!(
        (duplicated, missing),
        (0, 0),
        "duplicated and missing records"
    );
    Ok(())
}

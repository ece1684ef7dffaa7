//! Rebalance churn: up to three instances of a stateful pipeline in one
//! group, with an instance started, SIGKILLed or stopped with SIGTERM every
//! few seconds while input keeps arriving, so partitions (and their state)
//! keep moving between instances, some of them mid-transaction and some
//! mid-restore. A per-key count must come out exact: 1..n for every key.
//!
//! CI runs it for 60 s; `MILLRACE_CHURN_SECONDS` sets another length (the
//! soak runs it for minutes).

use std::time::{Duration, Instant};

use millrace_integration_tests::keyed::{Feed, check_counts};
use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, progress, read_committed, unique,
};
use rand::Rng;

const PARTITIONS: i32 = 4;
const KEYS: usize = 32;
const MAX_RUNNING: usize = 3;
/// Instance identities (each with its own state directory), reused as
/// instances come and go, so a returning instance finds its old state.
const IDENTITIES: usize = 5;

fn yaml(group: &str, input: &str, output: &str, instance: usize, state: &str) -> String {
    format!(
        r#"
pipeline: {group}
kafka:
  group_id: {group}
  instance_id: {group}-{instance}
  consumer_properties:
    session.timeout.ms: "4000"
    heartbeat.interval.ms: "400"
sources: [{{topic: {input}, start: earliest}}]
steps:
  - reduce: {{}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {output}-dead}}
state: {{dir: {state}}}
commit: {{interval: 200ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#
    )
}

#[test]
fn instances_coming_and_going_every_few_seconds_change_no_count() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("MILLRACE_CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let name = unique("churn");
    let (input, output, group) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-g"),
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&output, PARTITIONS),
        (&format!("{output}-dead"), 1),
    ]))?;
    let states: Vec<tempfile::TempDir> = (0..IDENTITIES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut instances: Vec<Millrace> = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let config = yaml(
            &group,
            &input,
            &output,
            i,
            &state.path().display().to_string(),
        );
        let mut m = Millrace::start(&config)?;
        if i >= 2 {
            m.kill()?;
        }
        instances.push(m);
    }

    let mut feed = Feed::start(&input, KEYS, PARTITIONS, 40);
    let mut rng = rand::rng();
    let (mut started, mut killed, mut stopped) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
        let running: Vec<usize> = (0..IDENTITIES)
            .filter(|i| instances[*i].is_running())
            .collect();
        let idle: Vec<usize> = (0..IDENTITIES).filter(|i| !running.contains(i)).collect();
        let start = running.len() <= 1 || (running.len() < MAX_RUNNING && rng.random_bool(0.5));
        if start {
            let i = idle[rng.random_range(0..idle.len())];
            instances[i].restart()?;
            started += 1;
        } else {
            let i = running[rng.random_range(0..running.len())];
            if rng.random_bool(0.6) {
                instances[i].kill()?;
                killed += 1;
            } else {
                instances[i].stop_cleanly()?;
                stopped += 1;
            }
        }
    }
    let sent = feed.stop()?;
    progress(&format!(
        "churn: {started} starts, {killed} SIGKILLs, {stopped} SIGTERMs in {seconds} s"
    ));

    // Every identity comes back: a SIGKILLed instance's open transaction
    // keeps read_committed readers of the outputs waiting until the broker
    // times it out (10 s), unless its successor fences and aborts it at
    // start, as here.
    for m in instances.iter_mut() {
        if !m.is_running() {
            m.restart()?;
        }
    }
    for m in instances.iter_mut() {
        m.wait_ready(Duration::from_secs(60))?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while !group_caught_up(&group, &input) {
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut logs = String::new();
    for m in instances.iter_mut() {
        if m.is_running() {
            m.stop_cleanly()?;
        }
        logs.push_str(&m.log_tail(15));
        logs.push_str("\n---\n");
    }
    let outputs = read_committed(&output)?;
    if let Err(problems) = check_counts(&outputs, &sent) {
        panic!("{problems}\nlogs:\n{logs}");
    }
    assert!(
        read_committed(&format!("{output}-dead"))?.is_empty(),
        "no dead letters expected"
    );
    assert!(killed + stopped >= 5, "too little churn to mean anything");
    progress(&format!(
        "churn: {} records over {} keys, every count exact",
        sent.values().sum::<i64>(),
        sent.len()
    ));
    Ok(())
}

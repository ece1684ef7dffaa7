//! Zombies: an instance paused (SIGSTOP) for longer than
//! `session.timeout.ms` is expelled from the group while its transaction is
//! open; the other instance takes its partitions and processes the same
//! records again from the committed offsets. When the paused instance
//! resumes (SIGCONT) it must not commit what it had: its assignment was
//! lost. The outputs of a per-key count must be exactly 1, 2, …, n for
//! every key: a zombie's commit shows as a repeated or skipped count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millrace_integration_tests::{
    Millrace, create_topics, group_caught_up, produce_to, producer, progress, read_committed,
    unique,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::message::Message;

const PARTITIONS: i32 = 2;
const KEYS: usize = 16;

fn yaml(group: &str, input: &str, output: &str, instance: &str, state: &str) -> String {
    format!(
        r#"
pipeline: zombie
kafka:
  group_id: {group}
  instance_id: {group}-{instance}
  consumer_properties:
    session.timeout.ms: "3000"
    heartbeat.interval.ms: "300"
  producer_properties:
    # Longer than the pause, so the broker does not abort the zombie's
    # transaction on its own: the zombie itself must not commit it.
    transaction.timeout.ms: "60000"
sources: [{{topic: {input}, start: earliest}}]
steps:
  - reduce: {{}}
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {output}-dead}}
state: {{dir: {state}}}
# A long interval keeps a transaction open at almost any instant.
commit: {{interval: 1500ms}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#
    )
}

fn signal(m: &Millrace, sig: Signal) -> anyhow::Result<()> {
    let pid = m.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
    kill(Pid::from_raw(pid as i32), sig)?;
    Ok(())
}

#[test]
fn a_paused_instance_expelled_from_the_group_commits_nothing_when_it_resumes() -> anyhow::Result<()>
{
    let name = unique("zombie");
    let (input, output, group) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-g"),
    );
    let rt = tokio::runtime::Runtime::new()?;
    let dead = format!("{output}-dead");
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&output, PARTITIONS),
        (&dead, 1),
    ]))?;
    let state_a = tempfile::tempdir()?;
    let state_b = tempfile::tempdir()?;
    let mut a = Millrace::start(&yaml(
        &group,
        &input,
        &output,
        "a",
        &state_a.path().display().to_string(),
    ))?;
    let mut b = Millrace::start(&yaml(
        &group,
        &input,
        &output,
        "b",
        &state_b.path().display().to_string(),
    ))?;
    a.wait_ready(Duration::from_secs(60))?;
    b.wait_ready(Duration::from_secs(60))?;

    // Input keeps arriving through the pauses.
    let feeding = Arc::new(AtomicBool::new(true));
    let sent: Arc<std::sync::Mutex<BTreeMap<String, i64>>> = Arc::default();
    let feeder = {
        let (input, feeding, sent) = (input.clone(), feeding.clone(), sent.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Runtime::new()?;
            let p = producer();
            let mut i = 0usize;
            while feeding.load(Ordering::SeqCst) {
                let batch: Vec<(String, i32, Vec<u8>)> = (0..20)
                    .map(|j| {
                        let k = (i + j) % KEYS;
                        (format!("k{k}"), (k as i32) % PARTITIONS, b"{}".to_vec())
                    })
                    .collect();
                rt.block_on(produce_to(&p, &input, &batch))?;
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                for (key, _, _) in &batch {
                    *sent.entry(key.clone()).or_default() += 1;
                }
                i += 20;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };

    for round in 0..4 {
        std::thread::sleep(Duration::from_secs(3));
        let paused = if round % 2 == 0 { &a } else { &b };
        signal(paused, Signal::SIGSTOP)?;
        progress(&format!("round {round}: paused an instance for 7 s"));
        std::thread::sleep(Duration::from_secs(7));
        signal(paused, Signal::SIGCONT)?;
    }
    std::thread::sleep(Duration::from_secs(3));
    feeding.store(false, Ordering::SeqCst);
    feeder.join().expect("feeder")?;

    let deadline = Instant::now() + Duration::from_secs(120);
    while !group_caught_up(&group, &input) {
        assert!(
            Instant::now() < deadline,
            "not caught up; logs:\n{}\n---\n{}",
            a.log_tail(30),
            b.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    a.stop_cleanly()?;
    b.stop_cleanly()?;

    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in read_committed(&output)? {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        seen.entry(v["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["count"].as_i64().unwrap_or(-1));
    }
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (key, n) in &sent {
        let counts = seen.get(key).cloned().unwrap_or_default();
        let expected: Vec<i64> = (1..=*n).collect();
        if counts != expected {
            let repeated = counts.windows(2).filter(|w| w[1] <= w[0]).count();
            panic!(
                "{key}: {} outputs for {n} inputs, {repeated} repeated or out of order; \
                 first differences: {:?}\nlogs:\n{}\n---\n{}",
                counts.len(),
                counts
                    .iter()
                    .zip(&expected)
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .collect::<Vec<_>>(),
                a.log_tail(40),
                b.log_tail(40)
            );
        }
    }
    progress(&format!(
        "{} keys, {} records, counts exact",
        sent.len(),
        sent.values().sum::<i64>()
    ));
    Ok(())
}

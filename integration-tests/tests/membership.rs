//! Group membership as an operator meets it, on the real broker:
//!
//! - a pipeline restarted after SIGKILL processes again at once with the
//!   default configuration (static membership: it rejoins under its
//!   `group.instance.id` instead of waiting for its dead predecessor's
//!   45-second session to expire);
//! - an instance stopped with SIGTERM hands its partitions to the others at
//!   once (it leaves the group, which librdkafka does not do for a static
//!   member by itself);
//! - an instance that does have to wait for the group says what it waits
//!   for, instead of sitting silent.
//!
//! Each wait bound is well under the 45 s that the fixed behaviour took.

use std::time::{Duration, Instant};

use millrace_integration_tests::{Millrace, create_topics, progress, read_committed, unique};
use rdkafka::producer::{BaseRecord, Producer};

/// Longest wait for output that a restart or hand-over may cost. The
/// behaviour these tests guard against costs librdkafka's default
/// `session.timeout.ms`, 45 s.
const PROMPT: Duration = Duration::from_secs(20);

struct Topics {
    input: String,
    output: String,
    dead: String,
}

fn topics(name: &str) -> anyhow::Result<Topics> {
    let t = Topics {
        input: format!("{name}-in"),
        output: format!("{name}-out"),
        dead: format!("{name}-dead"),
    };
    tokio::runtime::Runtime::new()?.block_on(create_topics(&[
        (&t.input, 2),
        (&t.output, 1),
        (&t.dead, 1),
    ]))?;
    Ok(t)
}

/// A stateless pipeline with the default membership settings; `kafka` adds
/// lines to the `kafka:` section.
fn yaml(name: &str, instance: &str, t: &Topics, kafka: &str) -> String {
    format!(
        r#"
pipeline: {name}
kafka:
  instance_id: {instance}
{kafka}
sources: [{{topic: {input}}}]
steps:
  - filter: 'has(value.n)'
sinks: {{out: {{topic: {output}}}}}
dead_letter: {{topic: {dead}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        input = t.input,
        output = t.output,
        dead = t.dead,
    )
}

/// Writes records `range` to both input partitions (even to 0, odd to 1).
fn produce(topic: &str, range: std::ops::Range<u32>) -> anyhow::Result<()> {
    let producer = millrace_integration_tests::bench::loader()?;
    for n in range {
        let body = format!("{{\"n\":{n}}}");
        let key = n.to_string();
        producer
            .send(
                BaseRecord::to(topic)
                    .key(&key)
                    .partition((n % 2) as i32)
                    .payload(&body),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// Waits until `topic` holds `count` committed records; returns how long
/// that took, or fails after `within`.
fn wait_output(topic: &str, count: usize, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let seen = read_committed(topic)?.len();
        anyhow::ensure!(
            seen <= count,
            "{seen} records in {topic}, more than the {count} expected"
        );
        if seen == count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            anyhow::bail!("{seen} of {count} records in {topic} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pipeline_restarted_after_sigkill_processes_again_at_once() -> anyhow::Result<()> {
    let name = unique("member-restart");
    let t = topics(&name)?;
    let mut m = Millrace::start(&yaml(&name, "only", &t, ""))?;
    m.wait_ready(Duration::from_secs(60))?;
    produce(&t.input, 0..20)?;
    wait_output(&t.output, 20, Duration::from_secs(60))?;

    m.kill()?;
    produce(&t.input, 20..40)?;
    m.restart()?;
    let took = wait_output(&t.output, 40, PROMPT).map_err(|e| {
        anyhow::anyhow!(
            "{e}: the restarted pipeline did not process in time; log:\n{}",
            m.log_tail(40)
        )
    })?;
    progress(&format!("processing again {took:?} after the restart"));
    m.stop_cleanly()
}

#[test]
fn an_instance_stopped_gracefully_hands_its_partitions_over_at_once() -> anyhow::Result<()> {
    let name = unique("member-handover");
    let t = topics(&name)?;
    let mut a = Millrace::start(&yaml(&name, "a", &t, ""))?;
    a.wait_ready(Duration::from_secs(60))?;
    let mut b = Millrace::start(&yaml(&name, "b", &t, ""))?;
    b.wait_ready(Duration::from_secs(60))?;
    // Both members hold a partition once each has been assigned one.
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.metric("millrace_assigned_partitions")? != 1.0
        || b.metric("millrace_assigned_partitions")? != 1.0
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the two instances did not share the two partitions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(&t.input, 0..20)?;
    wait_output(&t.output, 20, Duration::from_secs(60))?;

    a.stop_cleanly()?;
    produce(&t.input, 20..40)?;
    let took = wait_output(&t.output, 40, PROMPT).map_err(|e| {
        anyhow::anyhow!(
            "{e}: the remaining instance did not take the stopped one's partition in time; \
             stopped instance's log:\n{}\nremaining instance's log:\n{}",
            a.log_tail(20),
            b.log_tail(20)
        )
    })?;
    progress(&format!("hand-over took {took:?}"));
    b.stop_cleanly()
}

#[test]
fn an_instance_waiting_for_the_group_says_what_it_waits_for() -> anyhow::Result<()> {
    let name = unique("member-wait");
    let t = topics(&name)?;
    // A dynamic member restarted after SIGKILL must wait for its dead
    // predecessor's session (here 20 s) to expire.
    let kafka =
        "  static_membership: false\n  consumer_properties: {session.timeout.ms: \"20000\"}";
    let mut m = Millrace::start(&yaml(&name, "only", &t, kafka))?;
    m.wait_ready(Duration::from_secs(60))?;
    produce(&t.input, 0..10)?;
    wait_output(&t.output, 10, Duration::from_secs(60))?;

    m.kill()?;
    m.restart()?;
    produce(&t.input, 10..20)?;
    wait_output(&t.output, 20, Duration::from_secs(60))?;
    let log = std::fs::read_to_string(m.log_path())?;
    let restarted = log
        .rfind("serving /metrics")
        .map(|i| &log[i..])
        .unwrap_or(log.as_str());
    for expected in [
        "waiting for the consumer group to assign partitions",
        "session_timeout_ms=20000",
        "the group assigned this instance its partitions",
    ] {
        anyhow::ensure!(
            restarted.contains(expected),
            "the restarted instance's log lacks {expected:?}:\n{}",
            m.log_tail(30)
        );
    }
    m.stop_cleanly()
}

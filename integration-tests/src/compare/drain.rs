//! Backlog runs: a system starts on a topic already holding every input
//! record, and the time runs from its start to its consumer group's
//! committed offsets reaching the end of the input (so start-up, the JVM's
//! included, is part of it, as it is for a user draining a backlog).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::engines::{Guarantee, Launcher, System};
use crate::bench::{self, Usage};
use crate::process::Engine;
use crate::{create_topics, group_caught_up, progress};

/// One drain's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub system: System,
    pub guarantee: Guarantee,
    pub records: usize,
    /// Start to the last offset committed.
    pub seconds: f64,
    pub records_per_second: f64,
    /// Start until the system said it runs (Millrace's `/readyz`, Kafka
    /// Streams' state RUNNING); `None` if it never said so before draining.
    pub startup_seconds: Option<f64>,
    /// Records per second after start-up.
    pub processing_records_per_second: Option<f64>,
    /// The system's user + system CPU over the run.
    pub cpu_seconds: f64,
    pub cpu_seconds_per_million: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// The broker's CPU over the run, when its pid is known.
    pub broker_cpu_seconds: Option<f64>,
    /// Every core's busy time over the run, all processes.
    pub machine_cpu_seconds: f64,
}

/// What the run left to look at before its topics go.
pub struct Drained {
    pub figures: Drain,
    /// Its output topic.
    pub output: String,
}

/// Drains `input` (holding `records` records) with `system`, writing to a
/// new topic `<name>-out`; `name` prefixes everything the run creates.
pub fn drain(
    launcher: &Launcher,
    system: System,
    guarantee: Guarantee,
    name: &str,
    input: &str,
    records: usize,
    within: Duration,
) -> anyhow::Result<Drained> {
    let output = format!("{name}-out");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[(&output, super::engines::PARTITIONS)]))?;
    progress(&format!(
        "{} {}: draining {records} records",
        system.label(),
        guarantee.label()
    ));
    let broker = bench::broker_pid();
    let broker_before = broker.and_then(|p| bench::usage(p).ok());
    let machine_before = bench::machine_busy_seconds();
    let started = Instant::now();
    let mut run = launcher.window(system, guarantee, name, input, &output)?;
    let (usage, ready) = watch_drain(run.engine.as_mut(), &run.group, input, started + within)?;
    let startup_seconds = ready.map(|r| (r - started).as_secs_f64());
    let seconds = started.elapsed().as_secs_f64();
    let machine_cpu_seconds = bench::machine_busy_seconds() - machine_before;
    let broker_cpu_seconds = broker
        .and_then(|p| bench::usage(p).ok())
        .zip(broker_before)
        .map(|(after, before)| after.cpu_seconds - before.cpu_seconds);
    run.engine
        .stop()
        .with_context(|| format!("stopping {}", system.label()))?;
    let figures = Drain {
        system,
        guarantee,
        records,
        seconds,
        records_per_second: records as f64 / seconds,
        startup_seconds,
        processing_records_per_second: startup_seconds
            .filter(|s| *s < seconds)
            .map(|s| records as f64 / (seconds - s)),
        cpu_seconds: usage.cpu_seconds,
        cpu_seconds_per_million: usage.cpu_seconds / (records as f64 / 1e6),
        peak_rss_mib: usage.peak_rss as f64 / 1048576.0,
        broker_cpu_seconds,
        machine_cpu_seconds,
    };
    progress(&format!(
        "{} {}: {seconds:.1} s (start-up {}), {:.0} records/s, {:.1} CPU s, peak RSS {:.0} MiB",
        system.label(),
        guarantee.label(),
        startup_seconds.map_or("?".into(), |s| format!("{s:.1} s")),
        figures.records_per_second,
        figures.cpu_seconds,
        figures.peak_rss_mib
    ));
    Ok(Drained { figures, output })
}

/// Samples the engine's usage every 100 ms until `group` has committed the
/// end of `input`; returns the last sample and when the engine first said it
/// was running (it may drain before it says so).
pub fn watch_drain(
    engine: &mut dyn Engine,
    group: &str,
    input: &str,
    deadline: Instant,
) -> anyhow::Result<(Usage, Option<Instant>)> {
    let pid = engine.pid().context("the process is not running")?;
    let mut usage = Usage::default();
    let mut ready = None;
    loop {
        if let Ok(u) = bench::usage(pid) {
            usage = u;
        }
        if ready.is_none() && engine.is_ready() {
            ready = Some(Instant::now());
        }
        if group_caught_up(group, input) {
            break;
        }
        anyhow::ensure!(
            engine.is_running(),
            "the process exited; log:\n{}",
            engine.log_tail(40)
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "{group} did not drain {input} in time; log:\n{}",
            engine.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(u) = bench::usage(pid) {
        usage = u;
    }
    Ok((usage, ready))
}

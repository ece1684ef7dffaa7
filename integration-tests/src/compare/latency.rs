//! Latency at a fixed input rate.
//!
//! Readings are produced live at `rate` records/s with their event time `t`
//! set to the wall clock when they are handed to the producer. A window
//! `[start, end)` of a partition closes on the first reading of that
//! partition with `t >= end + CLOSE_AFTER_MS` (both systems' rule), so the
//! result's wait for its window is over the moment that *closing reading*
//! is produced. A result's latency is the time from its closing reading's
//! production (its `t`) to the result becoming visible to a
//! `read_committed` consumer: it holds the system's buffering, processing,
//! commit interval and transaction commit, and none of the window's own
//! length.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;
use serde_json::Value as Json;

use super::engines::{
    CLOSE_AFTER_MS, Guarantee, Launcher, PARTITIONS, START_WITHIN, System, WINDOW_MS,
};
use super::now_ms;
use super::watch::Watcher;
use crate::bench;
use crate::{bootstrap, create_topics, progress};

/// One latency run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub system: System,
    pub guarantee: Guarantee,
    pub target_rate: u64,
    /// Records produced per second, as achieved.
    pub achieved_rate: f64,
    pub seconds: u64,
    /// Results measured (windows closed after the warm-up).
    pub measured: usize,
    /// Windows that closed during the run and the results seen for them.
    pub expected: usize,
    pub received: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The latency at every whole percentile 0..=100.
    pub percentiles: Vec<f64>,
    /// The system's CPU while the input was produced, % of one core.
    pub cpu_percent: f64,
    pub peak_rss_mib: f64,
    /// Process start until it said it runs, with an empty input.
    pub startup_seconds: f64,
}

/// Runs `system` on live input at `rate` records/s for `seconds`; results of
/// windows that close in the first `warmup` seconds are not measured.
pub fn latency(
    launcher: &Launcher,
    system: System,
    guarantee: Guarantee,
    name: &str,
    rate: u64,
    seconds: u64,
    warmup: u64,
) -> anyhow::Result<Latency> {
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[
        (&input, PARTITIONS),
        (&output, PARTITIONS),
    ]))?;
    let starting = Instant::now();
    let mut run = launcher.window(system, guarantee, name, &input, &output)?;
    run.engine.wait_running(START_WITHIN)?;
    let startup_seconds = starting.elapsed().as_secs_f64();
    let pid = run.engine.pid().context("the process is not running")?;
    let watcher = Watcher::start(&output)?;
    progress(&format!(
        "{} {}: {rate} records/s for {seconds} s",
        system.label(),
        guarantee.label()
    ));

    let before = bench::usage(pid)?;
    let produced = produce_at(&input, rate, seconds)?;
    let after = bench::usage(pid)?;
    anyhow::ensure!(
        run.engine.is_running(),
        "{} exited; log:\n{}",
        system.label(),
        run.engine.log_tail(40)
    );

    // Wait for the results of every window that has closed.
    let expected = produced.closed_windows();
    let deadline = Instant::now() + Duration::from_secs(30);
    while watcher.count() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = bench::usage(pid).map_or(after.peak_rss, |u| u.peak_rss);
    let arrivals = watcher.finish()?;
    run.engine.stop()?;

    let measure_from = produced.started_ms + (warmup * 1000) as i64;
    let mut latencies = Vec::new();
    for a in &arrivals {
        let value: Json = serde_json::from_slice(&a.value).context("a result is not JSON")?;
        let (Some(key), Some(end)) = (
            value.get("key").and_then(Json::as_str),
            value.get("end").and_then(Json::as_i64),
        ) else {
            anyhow::bail!("a result without key or end: {value}");
        };
        let partition = partition_of(key)?;
        if let Some(closer) = produced.closer(partition, end + CLOSE_AFTER_MS)
            && closer >= measure_from
        {
            latencies.push((a.at_ms - closer) as f64);
        }
    }
    anyhow::ensure!(
        !latencies.is_empty(),
        "{}: no results after the warm-up ({} arrived)",
        system.label(),
        arrivals.len()
    );
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            [((q / 100.0 * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let produce_seconds = produced.seconds;
    let figures = Latency {
        system,
        guarantee,
        target_rate: rate,
        achieved_rate: produced.count as f64 / produce_seconds,
        seconds,
        measured: latencies.len(),
        expected,
        received: arrivals.len(),
        p50_ms: at(50.0),
        p99_ms: at(99.0),
        max_ms: latencies[latencies.len() - 1],
        percentiles: (0..=100).map(|q| at(f64::from(q))).collect(),
        cpu_percent: (after.cpu_seconds - before.cpu_seconds) / produce_seconds * 100.0,
        peak_rss_mib: peak as f64 / 1048576.0,
        startup_seconds,
    };
    progress(&format!(
        "{} {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} results ({}/{} arrived), \
         {:.0}% CPU",
        system.label(),
        guarantee.label(),
        figures.p50_ms,
        figures.p99_ms,
        figures.max_ms,
        figures.measured,
        figures.received,
        figures.expected,
        figures.cpu_percent
    ));
    Ok(figures)
}

/// The input partition of a device key (`dev-00042` → 42 mod partitions),
/// as the producer chose it.
fn partition_of(key: &str) -> anyhow::Result<usize> {
    let device: usize = key
        .strip_prefix("dev-")
        .and_then(|d| d.parse().ok())
        .with_context(|| format!("unexpected result key {key}"))?;
    Ok(device % PARTITIONS as usize)
}

/// What was produced: per partition, the distinct event times in order and
/// the windows that received readings.
struct Produced {
    started_ms: i64,
    seconds: f64,
    count: usize,
    times: Vec<Vec<i64>>,
    windows: Vec<BTreeSet<(usize, i64)>>,
}

impl Produced {
    /// The event time of the first reading of `partition` at or after `at`.
    fn closer(&self, partition: usize, at: i64) -> Option<i64> {
        let times = &self.times[partition];
        let i = times.partition_point(|t| *t < at);
        times.get(i).copied()
    }

    /// Windows that received readings and have closed by the last reading.
    fn closed_windows(&self) -> usize {
        self.windows
            .iter()
            .zip(&self.times)
            .map(|(windows, times)| {
                let last = times.last().copied().unwrap_or(i64::MIN);
                windows
                    .iter()
                    .filter(|(_, start)| start + WINDOW_MS + CLOSE_AFTER_MS <= last)
                    .count()
            })
            .sum()
    }
}

/// Produces readings of 1,000 devices at `rate` per second for `seconds`,
/// event time = now.
fn produce_at(topic: &str, rate: u64, seconds: u64) -> anyhow::Result<Produced> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the producer")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let partitions = PARTITIONS as usize;
    let mut produced = Produced {
        started_ms: now_ms(),
        seconds: 0.0,
        count: 0,
        times: vec![Vec::new(); partitions],
        windows: vec![BTreeSet::new(); partitions],
    };
    let mut devices: HashMap<usize, String> = HashMap::new();
    let started = Instant::now();
    let total = (rate * seconds) as usize;
    while produced.count < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        while produced.count < due {
            let device = rng.random_range(0..1_000usize);
            let partition = device % partitions;
            let key = devices
                .entry(device)
                .or_insert_with(|| format!("dev-{device:05}"));
            let t = now_ms();
            let value = format!(
                r#"{{"device":"{key}","t":{t},"hr":{}}}"#,
                60.0 + rng.random_range(0.0..60.0)
            );
            let mut record = BaseRecord::to(topic)
                .key(key.as_str())
                .partition(partition as i32)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e).context("producing input"),
                }
            }
            if produced.times[partition].last() != Some(&t) {
                produced.times[partition].push(t);
            }
            produced.windows[partition].insert((device, t.div_euclid(WINDOW_MS) * WINDOW_MS));
            produced.count += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    produced.seconds = started.elapsed().as_secs_f64();
    producer
        .flush(Duration::from_secs(60))
        .context("flushing input")?;
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_closes_on_the_first_reading_past_its_end_plus_lateness() {
        let produced = Produced {
            started_ms: 0,
            seconds: 1.0,
            count: 4,
            times: vec![vec![9_500, 10_999, 11_000, 11_002], Vec::new()],
            windows: vec![BTreeSet::from([(0, 0), (4, 10_000)]), BTreeSet::new()],
        };
        // [0, 10 s) closes at event time 11 s exactly.
        assert_eq!(produced.closer(0, WINDOW_MS + CLOSE_AFTER_MS), Some(11_000));
        assert_eq!(produced.closer(0, 11_001), Some(11_002));
        assert_eq!(produced.closer(0, 12_000), None);
        assert_eq!(produced.closer(1, 0), None);
        // Only the first window has closed by the last reading.
        assert_eq!(produced.closed_windows(), 1);
        assert_eq!(partition_of("dev-00042").unwrap(), 2);
        assert!(partition_of("device-1").is_err());
    }
}

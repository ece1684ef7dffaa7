//! Benchmark support: loading input fast, watching a process's CPU time and
//! memory, waiting for a group to drain, and describing the machine.
//!
//! Timings here are measurements for reports, never assertions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::{bootstrap, group_caught_up, progress};

/// A producer tuned for loading input: large batches, no per-record wait.
pub fn loader() -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the loader")
}

/// Produces `count` records made by `record(i)` = (key, partition, value),
/// showing progress, and flushes. Returns the records per second achieved.
pub fn load(
    topic: &str,
    count: usize,
    mut record: impl FnMut(usize) -> (String, i32, Vec<u8>),
) -> anyhow::Result<f64> {
    let producer = loader()?;
    let started = Instant::now();
    let step = (count / 10).max(1);
    for i in 0..count {
        let (key, partition, value) = record(i);
        let mut next = BaseRecord::to(topic)
            .key(&key)
            .partition(partition)
            .payload(&value);
        loop {
            match producer.send(next) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    next = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing input"),
            }
        }
        if (i + 1) % step == 0 {
            progress(&format!("loaded {}/{count} into {topic}", i + 1));
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("flushing input")?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// CPU time and memory of a running process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss: u64,
}

/// Reads `pid`'s usage so far.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("utime/stime in /proc/<pid>/stat")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    Ok(Usage {
        cpu_seconds: ticks / clock_ticks(),
        peak_rss: peak_kib * 1024,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux), asked once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds the whole machine has spent busy (every core, all
/// processes: `/proc/stat` minus idle and iowait) since boot. The
/// difference over a run, less what the measured processes used, is the
/// load others put on the machine meanwhile.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / clock_ticks()
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The local broker's process id when it was started by `scripts/kafka`
/// (from its pid file), to count its CPU time too.
pub fn broker_pid() -> Option<u32> {
    let home = std::env::var_os("MILLRACE_KAFKA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|c| c.join("millrace/kafka"))
        })?;
    let port = std::env::var("MILLRACE_KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    let pid: u32 = std::fs::read_to_string(home.join(format!("data-{port}/kafka.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Deletes every topic whose name starts with `prefix`; returns how many.
/// Benchmarks name all their topics (and the systems' internal topics)
/// after one unique prefix so that this frees their disk space.
pub fn delete_topics(prefix: &str) -> anyhow::Result<usize> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .context("listing topics")?;
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for result in runtime.block_on(admin.delete_topics(&refs, &options))? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => anyhow::bail!("deleting {name}: {code}"),
        }
    }
    Ok(names.len())
}

/// Waits until `group` has committed the end of every partition of
/// `topic`; returns when it did, or an error after `within`.
pub fn wait_drained(group: &str, topic: &str, within: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if group_caught_up(group, topic) {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{group} did not drain {topic} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes under a directory.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The machine and versions, for the report's header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
        );
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string());
    format!(
        "{cores} cores ({cpu}), {mem} RAM; Millrace {rev} (release build); \
         Apache Kafka 4.1.1, one KRaft node on 127.0.0.1"
    )
}

/// Megabytes, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1048576.0)
}

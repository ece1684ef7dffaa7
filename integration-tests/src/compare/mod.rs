//! Millrace side by side with Kafka Streams on one broker and one machine,
//! in one run (issue 7), and both against what the broker sustains with no
//! processing at all. `bench/run` builds everything and runs
//! `millrace-bench compare`, which calls [`run`]:
//!
//! 1. loads a backlog of JSON readings keyed by device;
//! 2. drains it with each system, exactly-once and at-least-once
//!    ([`drain`]), and checks that both produced the same window results
//!    ([`sanity`]);
//! 3. drains it with plain pass-through loops, transactional and not, in
//!    Java and with librdkafka ([`passthrough`]): the broker's limit;
//! 4. drains it once more with Millrace under `perf` ([`profile`]);
//! 5. feeds each system live input at a fixed rate and times its results
//!    ([`latency`]);
//! 6. kills each system with a large state and times its recovery
//!    ([`recovery`]);
//! 7. writes the raw figures (`bench/results.json`), the report
//!    (`bench/report.md`, see [`report`]) and the README's table.
//!
//! Every topic of a run starts with one unique prefix and is deleted when
//! the part that needed it ends (and, whatever happens, when the run ends),
//! since the disk is usually the scarce resource.

pub mod drain;
pub mod engines;
pub mod latency;
pub mod log_audit;
pub mod passthrough;
pub mod profile;
pub mod recovery;
pub mod report;
pub mod sanity;
pub mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use self::drain::Drain;
use self::engines::{Guarantee, Launcher, PARTITIONS, Peer, System};
use self::latency::Latency;
use self::recovery::{Loaded, Recovery};
use self::sanity::Comparison;
use crate::bench;
use crate::{create_topics, progress, unique};

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parts of the run, to leave some out while working on the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Drain,
    Passthrough,
    Profile,
    Latency,
    Recovery,
}

/// What to run and where to write.
pub struct Options {
    /// Backlog records for the drains.
    pub records: usize,
    /// Distinct devices (keys).
    pub keys: usize,
    /// Input rate of the latency runs, records/s.
    pub rate: u64,
    /// Length of each latency run.
    pub latency_seconds: u64,
    /// Results of windows closing in the first seconds are not measured.
    pub warmup_seconds: u64,
    /// Table size for the recovery runs, MiB.
    pub state_mib: usize,
    /// The Kafka Streams peer's directory (built).
    pub peer_dir: PathBuf,
    pub java: PathBuf,
    pub java_opts: Vec<String>,
    /// `millrace-bench` itself (runs the librdkafka pass-through).
    pub bench_bin: PathBuf,
    pub report: PathBuf,
    pub results: PathBuf,
    /// Folded stacks of the profile, for the flame graph.
    pub folded: PathBuf,
    /// README whose marked section gets the summary table.
    pub readme: Option<PathBuf>,
    /// Parts left out.
    pub skip: Vec<Part>,
    /// The command line, for the report.
    pub command: String,
}

/// Everything measured, as written to `results.json`.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub java: String,
    pub java_opts: String,
    pub command: String,
    pub records: usize,
    pub keys: usize,
    pub partitions: i32,
    /// Average input value size, bytes.
    pub record_bytes: f64,
    pub load_records_per_second: f64,
    pub load_average_before: f64,
    pub load_average_after: f64,
    pub total_seconds: f64,
    pub drains: Vec<Drain>,
    pub passthrough: Vec<Drain>,
    pub sanity: Vec<Comparison>,
    pub profile: Option<profile::Profile>,
    /// The profiled drain (slower than the measured one: perf runs beside it).
    pub profiled_drain: Option<Drain>,
    pub latency: Vec<Latency>,
    pub table_mib: f64,
    pub loaded: Vec<Loaded>,
    pub recovery: Vec<Recovery>,
    /// Parts that failed, with their errors.
    pub failures: Vec<String>,
    /// ERROR and WARN lines in Millrace's logs of this run.
    pub log_audit: log_audit::LogAudit,
}

/// Deletes the run's topics when dropped, whatever happened.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        match bench::delete_topics(&self.0) {
            Ok(0) => {}
            Ok(n) => progress(&format!("deleted {n} leftover topics")),
            Err(e) => progress(&format!("could not delete the {}* topics: {e:#}", self.0)),
        }
    }
}

/// Runs the comparison and writes the report; fails (after writing it) if
/// any part failed.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = unique("cmp");
    let _cleanup = Cleanup(name.clone());
    // Logs and every system's local state live under this directory.
    let logs = tempfile::Builder::new()
        .prefix("millrace-compare")
        .tempdir()?;
    on_interrupt(name.clone(), logs.path().to_path_buf())?;
    crate::archive_logs_to(logs.path());
    let launcher = Launcher {
        peer: Peer::locate(
            &options.peer_dir,
            options.java.clone(),
            options.java_opts.clone(),
        )?,
        bench_bin: options.bench_bin.clone(),
        logs: logs.path().to_path_buf(),
    };
    let mut results = Results {
        date: date(),
        machine: bench::machine(),
        java: launcher.peer.java_version(),
        java_opts: launcher.peer.java_opts(),
        command: options.command.clone(),
        records: options.records,
        keys: options.keys,
        partitions: PARTITIONS,
        load_average_before: bench::load_average(),
        ..Results::default()
    };
    let runs = |part| !options.skip.contains(&part);
    // A flame graph of an earlier run must not pass for this one's.
    let _ = std::fs::remove_file(&options.folded);
    let within = Duration::from_secs(1800);

    if runs(Part::Drain) || runs(Part::Passthrough) || runs(Part::Profile) {
        let input = format!("{name}-in");
        let (rate, bytes) = load_backlog(&input, options.records, options.keys)?;
        results.load_records_per_second = rate;
        results.record_bytes = bytes;
        if runs(Part::Drain) {
            drains(&launcher, &name, &input, options, &mut results);
        }
        if runs(Part::Passthrough) {
            for guarantee in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
                for system in [System::PassJava, System::PassRdkafka] {
                    let run = format!("{name}-{}-{}", system.short(), guarantee.short());
                    let outcome = drain::drain(
                        &launcher,
                        system,
                        guarantee,
                        &run,
                        &input,
                        options.records,
                        within,
                    );
                    match outcome {
                        Ok(d) => results.passthrough.push(d.figures),
                        Err(e) => fail(
                            &mut results,
                            &format!("{} {}", system.label(), guarantee.label()),
                            e,
                        ),
                    }
                    delete(&run);
                }
            }
        }
        if runs(Part::Profile) {
            if profile::available() {
                if let Err(e) = profiled(&launcher, &name, &input, options, &mut results) {
                    fail(&mut results, "profile", e);
                }
            } else {
                fail(
                    &mut results,
                    "profile",
                    anyhow::anyhow!("`perf stat -e instructions true` does not work here"),
                );
            }
            delete(&format!("{name}-prof"));
        }
        delete(&input);
    }

    if runs(Part::Latency) {
        for system in [System::Millrace, System::KafkaStreams] {
            let run = format!("{name}-lat-{}", system.short());
            let outcome = latency::latency(
                &launcher,
                system,
                Guarantee::ExactlyOnce,
                &run,
                options.rate,
                options.latency_seconds,
                options.warmup_seconds,
            );
            match outcome {
                Ok(l) => results.latency.push(l),
                Err(e) => fail(&mut results, &format!("{} latency", system.label()), e),
            }
            delete(&run);
        }
    }

    if runs(Part::Recovery) {
        let prefix = format!("{name}-rec");
        match recovery::load_table(&prefix, options.state_mib) {
            Ok(table) => {
                results.table_mib = table.mib;
                for system in [System::Millrace, System::KafkaStreams] {
                    match recovery::recovery(&launcher, system, &prefix, &table) {
                        Ok((loaded, restarts)) => {
                            results.loaded.push(loaded);
                            results.recovery.extend(restarts);
                        }
                        Err(e) => fail(&mut results, &format!("{} recovery", system.label()), e),
                    }
                    delete(&format!("{prefix}-{}", system.short()));
                }
            }
            Err(e) => fail(&mut results, "loading the recovery table", e),
        }
        delete(&prefix);
    }

    results.load_average_after = bench::load_average();
    results.total_seconds = started.elapsed().as_secs_f64();
    results.log_audit = log_audit::audit(logs.path());
    progress(&format!(
        "logs: {} ERROR and {} WARN lines in {} Millrace logs",
        results.log_audit.errors, results.log_audit.warnings, results.log_audit.logs
    ));
    report::write(&results, options)?;
    progress(&format!(
        "report written to {} after {:.0} s",
        options.report.display(),
        results.total_seconds
    ));
    anyhow::ensure!(
        results.failures.is_empty(),
        "{} part(s) failed: {}",
        results.failures.len(),
        results.failures.join("; ")
    );
    Ok(())
}

/// The exactly-once and at-least-once drains of both systems, each pair
/// checked for equal results.
fn drains(launcher: &Launcher, name: &str, input: &str, options: &Options, results: &mut Results) {
    let within = Duration::from_secs(1800);
    for guarantee in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        let mut outputs = Vec::new();
        for system in [System::Millrace, System::KafkaStreams] {
            let run = format!("{name}-{}-{}", system.short(), guarantee.short());
            let outcome = drain::drain(
                launcher,
                system,
                guarantee,
                &run,
                input,
                options.records,
                within,
            )
            .and_then(|d| Ok((sanity::read_results(&d.output)?, d.figures)));
            match outcome {
                Ok((windows, figures)) => {
                    progress(&format!(
                        "{} {}: {} window results",
                        system.label(),
                        guarantee.label(),
                        windows.windows.len()
                    ));
                    results.drains.push(figures);
                    outputs.push((system, windows));
                }
                Err(e) => fail(
                    results,
                    &format!("{} {}", system.label(), guarantee.label()),
                    e,
                ),
            }
            delete(&run);
        }
        if let [(a, left), (b, right)] = outputs.as_slice() {
            let c = sanity::compare(
                &format!("{} {}", a.label(), guarantee.label()),
                left,
                &format!("{} {}", b.label(), guarantee.label()),
                right,
            );
            progress(&format!(
                "sanity {}: {} equal, {} different, {} only {}, {} only {}",
                guarantee.label(),
                c.equal,
                c.different,
                c.only_left,
                a.label(),
                c.only_right,
                b.label()
            ));
            results.sanity.push(c);
        }
    }
}

/// A Millrace exactly-once drain under `perf record`.
fn profiled(
    launcher: &Launcher,
    name: &str,
    input: &str,
    options: &Options,
    results: &mut Results,
) -> anyhow::Result<()> {
    const FREQUENCY: u32 = 199;
    let run = format!("{name}-prof");
    let output = format!("{run}-out");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[(&output, PARTITIONS)]))?;
    progress("Millrace exactly-once under perf: draining");
    let data = launcher.logs.join("perf.data");
    let started = Instant::now();
    let mut running = launcher.window(
        System::Millrace,
        Guarantee::ExactlyOnce,
        &run,
        input,
        &output,
    )?;
    // `perf record -p` samples the threads that exist when it attaches, so
    // it attaches once Millrace is ready: its processing thread and the
    // clients' threads are running by then, and the drain has just begun.
    running.engine.wait_running(engines::START_WITHIN)?;
    let pid = running
        .engine
        .pid()
        .ok_or_else(|| anyhow::anyhow!("millrace is not running"))?;
    let recording = profile::record(pid, FREQUENCY, &data)?;
    let outcome = drain::watch_drain(
        running.engine.as_mut(),
        &running.group,
        input,
        started + Duration::from_secs(1800),
    );
    let seconds = started.elapsed().as_secs_f64();
    let profile = recording.finish(FREQUENCY, &options.folded);
    running.engine.stop()?;
    let (usage, _) = outcome?;
    let profile = profile?;
    results.profiled_drain = Some(Drain {
        system: System::Millrace,
        guarantee: Guarantee::ExactlyOnce,
        records: options.records,
        seconds,
        records_per_second: options.records as f64 / seconds,
        startup_seconds: None,
        processing_records_per_second: None,
        cpu_seconds: usage.cpu_seconds,
        cpu_seconds_per_million: usage.cpu_seconds / (options.records as f64 / 1e6),
        peak_rss_mib: usage.peak_rss as f64 / 1048576.0,
        broker_cpu_seconds: None,
        machine_cpu_seconds: 0.0,
    });
    progress(&format!(
        "profile: {} samples; top components (inclusive): {}",
        profile.samples,
        profile
            .inclusive_components
            .iter()
            .take(4)
            .map(|(s, n)| format!("{n} {s:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    results.profile = Some(profile);
    Ok(())
}

/// Loads the backlog: readings of `keys` devices with event times over 20
/// minutes ending 5 minutes ago, each up to 0.5 s out of order, partitioned
/// by device. Returns (records/s loaded, average value bytes).
fn load_backlog(topic: &str, records: usize, keys: usize) -> anyhow::Result<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[(topic, PARTITIONS)]))?;
    let now = now_ms();
    let span = 20 * 60 * 1_000;
    let base = now - 5 * 60 * 1_000 - span;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bytes = 0usize;
    let rate = bench::load(topic, records, |i| {
        let device = rng.random_range(0..keys);
        let t = base + (i as i64 * span) / records as i64 + rng.random_range(-500..=0);
        let key = format!("dev-{device:05}");
        let value = format!(
            r#"{{"device":"{key}","t":{t},"hr":{}}}"#,
            60.0 + rng.random_range(0.0..60.0)
        );
        bytes += value.len();
        (
            key,
            (device % PARTITIONS as usize) as i32,
            value.into_bytes(),
        )
    })?;
    progress(&format!("loaded {records} records at {rate:.0}/s"));
    Ok((rate, bytes as f64 / records.max(1) as f64))
}

fn fail(results: &mut Results, what: &str, error: anyhow::Error) {
    progress(&format!("{what} FAILED: {error:#}"));
    results.failures.push(format!("{what}: {error:#}"));
}

/// The signal that interrupted the run, 0 while none has.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_signal(signal: nix::libc::c_int) {
    INTERRUPTED.store(signal, std::sync::atomic::Ordering::Relaxed);
}

/// On SIGINT or SIGTERM: kills the systems this process started (its
/// children), deletes the run's topics and local state, and exits, so that
/// an interrupted run leaves no processes and no disk space behind. The
/// handler only notes the signal; a thread watching for it does the rest.
/// (Blocking the signals instead would block them in the children too,
/// which inherit the mask, so Millrace would ignore the SIGTERM that stops it.)
fn on_interrupt(prefix: String, work: PathBuf) -> anyhow::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe. Children get default dispositions at exec.
        unsafe { signal(s, SigHandler::Handler(note_signal)) }?;
    }
    std::thread::spawn(move || {
        let signal = loop {
            match INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                0 => std::thread::sleep(Duration::from_millis(100)),
                s => break s,
            }
        };
        progress("interrupted: stopping the systems, deleting the run's topics and state");
        kill_children();
        if let Err(e) = bench::delete_topics(&prefix) {
            progress(&format!("could not delete the {prefix}* topics: {e:#}"));
        }
        let _ = std::fs::remove_dir_all(&work);
        std::process::exit(128 + signal);
    });
    Ok(())
}

/// SIGKILLs every process whose parent is this one.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // Fields after the command name: state, then the parent pid.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().nth(1).map(str::to_string)
            });
        if parent.as_deref() == Some(me.as_str()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Deletes a finished part's topics.
fn delete(prefix: &str) {
    if let Err(e) = bench::delete_topics(prefix) {
        progress(&format!("could not delete the {prefix}* topics: {e:#}"));
    }
}

/// UTC date and time, for the report.
fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string())
}

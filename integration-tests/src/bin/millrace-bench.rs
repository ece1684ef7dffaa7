//! `millrace-bench`: benchmarks of Millrace on the local broker, each
//! writing a Markdown report. Run through `bench/stateful` (which builds
//! the release binary and starts the broker), not by hand.
//!
//! `stateful`: a windowed aggregate over a backlog of keyed JSON records,
//! with exactly-once and with at-least-once, side by side; then the time
//! from restart to first output after a SIGKILL with a large state, with
//! the local state kept (tail restore) and deleted (full restore).
//!
//! `compare`: Millrace side by side with Kafka Streams and against the
//! broker's own limit (run through `bench/run`; see
//! `millrace_integration_tests::compare`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use millrace_integration_tests::bench::{self, Usage};
use millrace_integration_tests::{Millrace, create_topics, progress, read_committed, unique};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Millrace benchmarks on the local broker")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Windowed aggregate throughput (exactly-once vs at-least-once) and
    /// restart time with a large state.
    Stateful {
        /// Input records for the throughput runs.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Distinct keys (devices).
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        /// Approximate state size for the restart runs, MiB.
        #[arg(long, default_value_t = 1024)]
        state_mib: usize,
        /// Where to write the report.
        #[arg(long, default_value = "bench/stateful-report.md")]
        report: PathBuf,
    },
    /// Millrace against Kafka Streams (built in `--peer`) and against
    /// pass-through loops: backlog drains, latency at a fixed rate, restart
    /// after SIGKILL with a large state, and a profile of Millrace.
    Compare(CompareArgs),
    /// The librdkafka pass-through loop `compare` runs as a process of its
    /// own (copies `--input` to `--output` until SIGTERM).
    #[command(hide = true)]
    Passthrough {
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        #[arg(long, action = clap::ArgAction::Set)]
        transactional: bool,
        #[arg(long, default_value_t = 100)]
        commit_ms: u64,
    },
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Backlog records for the drains.
    #[arg(long, default_value_t = 2_000_000)]
    records: usize,
    /// Distinct devices (keys).
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Input rate of the latency runs, records/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 60)]
    latency_seconds: u64,
    /// Results of windows closing in the first seconds of a latency run
    /// are not measured.
    #[arg(long, default_value_t = 15)]
    warmup_seconds: u64,
    /// Table size for the recovery runs, MiB.
    #[arg(long, default_value_t = 1024)]
    state_mib: usize,
    /// The Kafka Streams peer, built with `mvn compile dependency:build-classpath`.
    #[arg(long, default_value = "bench/peers/kafka-streams")]
    peer: PathBuf,
    /// The `java` command.
    #[arg(long, env = "JAVA", default_value = "java")]
    java: PathBuf,
    /// JVM options of the peer, split on whitespace.
    #[arg(long, env = "MILLRACE_BENCH_JAVA_OPTS", default_value = "-Xmx1g")]
    java_opts: String,
    /// Parts to leave out.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<millrace_integration_tests::compare::Part>,
    /// Where to write the report.
    #[arg(long, default_value = "bench/report.md")]
    report: PathBuf,
    /// Where to write every raw figure (read by bench/charts.py).
    #[arg(long, default_value = "bench/results.json")]
    results: PathBuf,
    /// Where to write the profile's folded stacks (for the flame graph).
    #[arg(long, default_value = "bench/profile.folded")]
    folded: PathBuf,
    /// README whose `<!-- compare:begin -->` section gets the summary
    /// (`bench/run` passes README.md).
    #[arg(long)]
    readme: Option<PathBuf>,
}

const PARTITIONS: i32 = 4;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Stateful {
            records,
            keys,
            state_mib,
            report,
        } => stateful(records, keys, state_mib, &report),
        Bench::Compare(args) => compare(args),
        Bench::Passthrough {
            input,
            output,
            group,
            transactional,
            commit_ms,
        } => millrace_integration_tests::compare::passthrough::run(
            millrace_integration_tests::bootstrap(),
            &input,
            &output,
            &group,
            transactional,
            Duration::from_millis(commit_ms),
        ),
    }
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().skip(1).collect();
    let options = millrace_integration_tests::compare::Options {
        records: args.records,
        keys: args.keys,
        rate: args.rate,
        latency_seconds: args.latency_seconds,
        warmup_seconds: args.warmup_seconds,
        state_mib: args.state_mib,
        peer_dir: args.peer,
        java: args.java,
        java_opts: args
            .java_opts
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        bench_bin: std::env::current_exe().context("locating millrace-bench")?,
        report: args.report,
        results: args.results,
        folded: args.folded,
        readme: args.readme,
        skip: args.skip,
        command: format!("millrace-bench {}", command.join(" ")),
    };
    millrace_integration_tests::compare::run(&options)
}

/// One throughput run's figures.
struct Throughput {
    mode: &'static str,
    seconds: f64,
    usage: Usage,
    outputs: usize,
}

impl Throughput {
    fn per_second(&self, records: usize) -> f64 {
        records as f64 / self.seconds
    }
    fn cpu_per_million(&self, records: usize) -> f64 {
        self.usage.cpu_seconds / (records as f64 / 1e6)
    }
}

fn stateful(records: usize, keys: usize, state_mib: usize, report: &PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("bench-window");
    let input = format!("{name}-in");
    rt.block_on(create_topics(&[(&input, PARTITIONS)]))?;

    // Event times: `records` readings spread over 20 minutes ending 5
    // minutes ago, each up to 500 ms out of order; 10 s windows per device.
    let now = now_ms();
    let span = 20 * 60 * 1_000;
    let base = now - 5 * 60 * 1_000 - span;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let loaded = bench::load(&input, records, |i| {
        let device = rng.random_range(0..keys);
        let t = base + (i as i64 * span) / records as i64 + rng.random_range(-500..=0);
        let value = serde_json::json!({
            "device": format!("dev-{device:05}"),
            "t": t,
            "hr": 60.0 + rng.random_range(0.0..60.0),
        });
        (
            format!("dev-{device:05}"),
            (device % PARTITIONS as usize) as i32,
            value.to_string().into_bytes(),
        )
    })?;
    progress(&format!("loaded {records} records at {loaded:.0}/s"));

    let mut runs = Vec::new();
    for (mode, guarantee) in [
        ("exactly-once", "exactly_once"),
        ("at-least-once", "at_least_once"),
    ] {
        runs.push(throughput_run(&name, &input, mode, guarantee)?);
    }
    let restart = restart_runs(&name, state_mib)?;

    let mut out = String::new();
    writeln!(out, "# Stateful benchmark\n")?;
    writeln!(out, "Machine: {}.\n", bench::machine())?;
    writeln!(
        out,
        "Command: `bench/stateful --records {records} --keys {keys} --state-mib {state_mib}`. \
         Input: {records} JSON readings, {keys} devices, {PARTITIONS} partitions, event times \
         over 20 minutes up to 0.5 s out of order. Pipeline: `window` tumbling 10 s per device, \
         count/sum/min/max/mean of `hr`, lateness 1 s, `emit: final`, commit every 100 ms. \
         Each run is a fresh consumer group reading the same backlog; the time runs from \
         process start to the group's committed offsets reaching the end of the input.\n"
    )?;
    writeln!(
        out,
        "| mode | drain time | records/s | CPU s per M records | peak RSS | window results |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for r in &runs {
        writeln!(
            out,
            "| {} | {:.1} s | {:.0} | {:.2} | {} | {} |",
            r.mode,
            r.seconds,
            r.per_second(records),
            r.cpu_per_million(records),
            bench::mib(r.usage.peak_rss),
            r.outputs
        )?;
    }
    if let [eos, alo] = runs.as_slice() {
        writeln!(
            out,
            "\nExactly-once throughput is {:.2}× at-least-once's (CPU per record {:.2}×).\n",
            eos.per_second(records) / alo.per_second(records),
            eos.cpu_per_million(records) / alo.cpu_per_million(records),
        )?;
    }
    out.push_str(&restart);
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(report, &out).with_context(|| format!("writing {}", report.display()))?;
    println!("{out}");
    progress(&format!("report written to {}", report.display()));
    Ok(())
}

fn throughput_run(
    name: &str,
    input: &str,
    mode: &'static str,
    guarantee: &str,
) -> anyhow::Result<Throughput> {
    let pipeline = format!("{name}-{guarantee}").replace('_', "-");
    let output = format!("{pipeline}-out");
    let rt = tokio::runtime::Runtime::new()?;
    let dead = format!("{pipeline}-dead-letter");
    rt.block_on(create_topics(&[(&output, PARTITIONS), (&dead, 1)]))?;
    let state = tempfile::tempdir()?;
    let yaml = format!(
        r#"
pipeline: {pipeline}
sources: [{{topic: {input}}}]
steps:
  - window:
      type: tumbling
      size: 10s
      time: value.t
      value: value.hr
      aggregates: [count, sum, min, max, mean]
      lateness: 1s
      emit: final
sinks: {{out: {{topic: {output}}}}}
commit: {{interval: 100ms, guarantee: {guarantee}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
"#,
        dir = state.path().display()
    );
    progress(&format!("{mode}: draining {input}"));
    let started = Instant::now();
    let mut m = Millrace::start(&yaml)?;
    let pid = m.pid().context("millrace is not running")?;
    let mut usage = Usage::default();
    let group = format!("millrace-{pipeline}");
    let deadline = started + Duration::from_secs(1800);
    let done = loop {
        if let Ok(u) = bench::usage(pid) {
            usage = u;
        }
        if millrace_integration_tests::group_caught_up(&group, input) {
            break Instant::now();
        }
        anyhow::ensure!(m.is_running(), "millrace exited; log:\n{}", m.log_tail(30));
        anyhow::ensure!(
            Instant::now() < deadline,
            "{mode}: did not drain in 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Ok(u) = bench::usage(pid) {
        usage = u;
    }
    m.stop_cleanly()?;
    let seconds = (done - started).as_secs_f64();
    let outputs = read_committed(&output)?.len();
    progress(&format!(
        "{mode}: {seconds:.1} s, {:.1} CPU s, peak RSS {}, {outputs} results",
        usage.cpu_seconds,
        bench::mib(usage.peak_rss)
    ));
    Ok(Throughput {
        mode,
        seconds,
        usage,
        outputs,
    })
}

/// Builds a large state (a table of ~`state_mib` MiB joined by a stream),
/// then measures restart to first committed output after a SIGKILL, with
/// the local state kept and with it deleted.
fn restart_runs(name: &str, state_mib: usize) -> anyhow::Result<String> {
    let rt = tokio::runtime::Runtime::new()?;
    let (stream, table, output) = (
        format!("{name}-events"),
        format!("{name}-table"),
        format!("{name}-joined"),
    );
    let dead = format!("{name}-restart-dead-letter");
    rt.block_on(create_topics(&[
        (&stream, PARTITIONS),
        (&table, PARTITIONS),
        (&output, 1),
        (&dead, 1),
    ]))?;
    const ROW: usize = 10_000;
    let rows = state_mib * 1024 * 1024 / ROW;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    bench::load(&table, rows, |i| {
        // Random text, so that compression cannot shrink the state.
        let blob: String = (0..ROW)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        let value = serde_json::json!({ "row": i, "blob": blob });
        (
            format!("row-{i:08}"),
            (i % PARTITIONS as usize) as i32,
            value.to_string().into_bytes(),
        )
    })?;
    let state = tempfile::tempdir()?;
    let pipeline = format!("{name}-restart");
    let yaml = format!(
        r#"
pipeline: {pipeline}
sources:
  - topic: {stream}
  - topic: {table}
    table: rows
steps:
  - join: {{table: rows, into: row}}
  - project: [n, row.row]
sinks: {{out: {{topic: {output}}}}}
state: {{dir: {dir}}}
http: {{listen: "127.0.0.1:{{ops_port}}"}}
kafka:
  static_membership: true
  consumer_properties: {{session.timeout.ms: "10000"}}
"#,
        dir = state.path().display()
    );
    progress(&format!("restart: loading a {rows}-row table into state"));
    let started = Instant::now();
    let mut m = Millrace::start(&yaml)?;
    let group = format!("millrace-{pipeline}");
    bench::wait_drained(&group, &table, Duration::from_secs(1800))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let pid = m.pid().context("millrace is not running")?;
    let load_usage = bench::usage(pid)?;
    let local = bench::dir_size(state.path());
    progress(&format!(
        "restart: table in state after {load_seconds:.0} s, {} on disk",
        bench::mib(local)
    ));

    let mut lines = Vec::new();
    let mut sent = 0;
    for (label, wipe) in [
        ("local state kept (tail restore)", false),
        (
            "local state deleted (full restore from the changelog)",
            true,
        ),
    ] {
        m.kill()?;
        if wipe {
            std::fs::remove_dir_all(state.path())?;
            std::fs::create_dir_all(state.path())?;
        }
        let restarted = Instant::now();
        m.restart()?;
        sent += 1;
        let key = format!("row-{:08}", sent * 7 % rows);
        let partition = ((sent * 7 % rows) % PARTITIONS as usize) as i32;
        rt.block_on(millrace_integration_tests::produce_to(
            &millrace_integration_tests::producer(),
            &stream,
            &[(
                key,
                partition,
                serde_json::json!({ "n": sent }).to_string().into_bytes(),
            )],
        ))?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            if read_committed(&output)?.len() >= sent {
                break;
            }
            anyhow::ensure!(m.is_running(), "millrace exited; log:\n{}", m.log_tail(30));
            anyhow::ensure!(Instant::now() < deadline, "no output after restart");
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = restarted.elapsed().as_secs_f64();
        // What the restart restored, from its own metrics: a tail restore
        // reads (almost) nothing, a full one every row.
        let restored = m.metric("millrace_state_restored_records_total{store=\"rows\"}")?;
        progress(&format!(
            "restart, {label}: first output after {seconds:.2} s, {restored} changelog records restored"
        ));
        lines.push(format!("| {label} | {seconds:.2} s | {restored} |"));
    }
    m.stop_cleanly()?;

    let mut out = String::new();
    writeln!(
        out,
        "## Restart after SIGKILL with a large state\n\n\
         A table of {rows} rows of ~10 KB ({}) joined by a stream: {} of RocksDB on disk \
         after loading (loading took {load_seconds:.0} s, peak RSS {}). The process is killed \
         with SIGKILL, restarted, and one stream record is produced; the time runs from the \
         restart to that record's joined output being committed. The pipeline uses static \
         group membership (`kafka.static_membership: true`, `session.timeout.ms` 10 s), as \
         a deployment that restarts instances in place should: the restarted instance takes \
         its partitions back at once. With the default dynamic membership the group waits \
         for the dead member's session to expire first (librdkafka's default 45 s), and that \
         wait, not the restore, is then the restart time.\n",
        bench::mib((rows * ROW) as u64),
        bench::mib(local),
        bench::mib(load_usage.peak_rss),
    )?;
    writeln!(
        out,
        "| restart | time to first output | changelog records restored |"
    )?;
    writeln!(out, "|---|---|---|")?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

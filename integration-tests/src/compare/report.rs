//! The comparison's outputs: `results.json` (every raw figure, which the
//! chart script reads), the Markdown report, and the summary table in the
//! book's Benchmarks chapter (docs/src/benchmarks.md) between
//! `<!-- compare:begin -->` and `<!-- compare:end -->`. The table links the
//! report's directory: mdBook rewrites every link to a `.md` file into
//! `.html`, which would break a link to the report itself.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::drain::Drain;
use super::engines::{CLOSE_AFTER_MS, COMMIT_MS, Guarantee, System, WINDOW_MS};
use super::latency::Latency;
use super::{Options, Results};

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";

/// Writes the JSON, the report and the README table.
pub fn write(results: &Results, options: &Options) -> anyhow::Result<()> {
    for path in [&options.results, &options.report] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(
        &options.results,
        serde_json::to_string_pretty(results)? + "\n",
    )
    .with_context(|| format!("writing {}", options.results.display()))?;
    std::fs::write(&options.report, markdown(results)?)
        .with_context(|| format!("writing {}", options.report.display()))?;
    if let Some(readme) = &options.readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => {
                let updated = format!(
                    "{}{BEGIN}\n{}{}",
                    &text[..b],
                    readme_table(results)?,
                    &text[e..]
                );
                std::fs::write(readme, updated)?;
            }
            _ => crate::progress(&format!(
                "{} has no {BEGIN} ... {END} section; its table is not updated",
                readme.display()
            )),
        }
    }
    Ok(())
}

fn find(list: &[Drain], system: System, guarantee: Guarantee) -> Option<&Drain> {
    list.iter()
        .find(|d| d.system == system && d.guarantee == guarantee)
}

/// The broker's limit for a guarantee: the faster pass-through.
fn limit(results: &Results, guarantee: Guarantee) -> Option<&Drain> {
    results
        .passthrough
        .iter()
        .filter(|d| d.guarantee == guarantee)
        .max_by(|a, b| a.records_per_second.total_cmp(&b.records_per_second))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn latency_of(results: &Results, system: System) -> Option<&Latency> {
    results.latency.iter().find(|l| l.system == system)
}

fn recovery_of(results: &Results, system: System, local: &str) -> Option<f64> {
    results
        .recovery
        .iter()
        .find(|r| r.system == system && r.local_state == local)
        .map(|r| r.seconds)
}

/// (figure, Millrace, Kafka Streams, Millrace ÷ Kafka Streams, which is better).
fn summary_rows(results: &Results) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    let pair = |f: &dyn Fn(System) -> Option<f64>| (f(System::Millrace), f(System::KafkaStreams));
    for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        let (m, k) = pair(&|s| find(&results.drains, s, g).map(|d| d.records_per_second));
        rows.push([
            format!("backlog drain, {}: records/s (higher is better)", g.label()),
            num(m, 0),
            num(k, 0),
            ratio(m, k),
        ]);
        if let Some(l) = limit(results, g) {
            let lim = Some(l.records_per_second);
            rows.push([
                format!(
                    "— as a share of the broker's limit, {} ({:.0} records/s, {})",
                    g.label(),
                    l.records_per_second,
                    l.system.label()
                ),
                m.zip(lim)
                    .map_or("–".into(), |(m, l)| format!("{:.0}%", m / l * 100.0)),
                k.zip(lim)
                    .map_or("–".into(), |(k, l)| format!("{:.0}%", k / l * 100.0)),
                String::new(),
            ]);
        }
        let (m, k) =
            pair(&|s| find(&results.drains, s, g).and_then(|d| d.processing_records_per_second));
        rows.push([
            format!(
                "— records/s after start-up, {} (higher is better)",
                g.label()
            ),
            num(m, 0),
            num(k, 0),
            ratio(m, k),
        ]);
        let (m, k) = pair(&|s| find(&results.drains, s, g).and_then(|d| d.startup_seconds));
        rows.push([
            format!(
                "— start-up (process start to ready), {}, s (lower is better)",
                g.label()
            ),
            num(m, 1),
            num(k, 1),
            ratio(m, k),
        ]);
        let (m, k) = pair(&|s| find(&results.drains, s, g).map(|d| d.cpu_seconds_per_million));
        rows.push([
            format!(
                "CPU seconds per million records, {} (lower is better)",
                g.label()
            ),
            num(m, 1),
            num(k, 1),
            ratio(m, k),
        ]);
        let (m, k) = pair(&|s| find(&results.drains, s, g).map(|d| d.peak_rss_mib));
        rows.push([
            format!("peak RSS, {}, MiB (lower is better)", g.label()),
            num(m, 0),
            num(k, 0),
            ratio(m, k),
        ]);
    }
    type Pick = fn(&Latency) -> f64;
    let picks: [(&str, Pick); 3] = [
        ("p50", |l| l.p50_ms),
        ("p99", |l| l.p99_ms),
        ("max", |l| l.max_ms),
    ];
    for (label, f) in picks {
        let (m, k) = pair(&|s| latency_of(results, s).map(f));
        if m.is_some() || k.is_some() {
            let rate = results.latency.first().map_or(0, |l| l.target_rate);
            rows.push([
                format!("latency {label} at {rate} records/s, exactly-once, ms (lower is better)"),
                num(m, 0),
                num(k, 0),
                ratio(m, k),
            ]);
        }
    }
    for local in ["kept", "deleted"] {
        let (m, k) = pair(&|s| recovery_of(results, s, local));
        if m.is_some() || k.is_some() {
            rows.push([
                format!(
                    "restart after SIGKILL to first output, {:.0} MiB table, local state {local}, s \
                     (lower is better)",
                    results.table_mib
                ),
                num(m, 1),
                num(k, 1),
                ratio(m, k),
            ]);
        }
    }
    rows
}

fn readme_table(results: &Results) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "Measured by `bench/run` on {} ({}); all figures from one run, on one broker. \
         Full report with the raw numbers, charts and the profile: \
         [bench/report.md](../../bench/).\n",
        results.date, results.machine
    )?;
    writeln!(out, "| | Millrace | Kafka Streams | Millrace ÷ KS |")?;
    writeln!(out, "|---|---|---|---|")?;
    for [figure, m, k, r] in summary_rows(results) {
        writeln!(out, "| {figure} | {m} | {k} | {r} |")?;
    }
    if !results.failures.is_empty() {
        writeln!(
            out,
            "\nParts of this run failed (see the report): {}.",
            results.failures.len()
        )?;
    }
    Ok(out)
}

fn markdown(r: &Results) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# Millrace against Kafka Streams\n")?;
    writeln!(
        out,
        "Written by `bench/run` ({}) on {}. Every figure below comes from this one run: \
         same machine, same broker, same input, one system after the other.\n",
        r.command, r.date
    )?;
    writeln!(out, "- Machine: {}.", r.machine)?;
    writeln!(
        out,
        "- Kafka Streams 4.1.1 (`bench/peers/kafka-streams`) on {}, JVM options `{}`; \
         one stream thread (Millrace processes on one thread too), RocksDB state, defaults \
         otherwise.",
        r.java,
        if r.java_opts.is_empty() {
            "(none)"
        } else {
            r.java_opts.as_str()
        }
    )?;
    let shared = r.load_average_before > 1.0 || r.load_average_after > 1.0;
    writeln!(
        out,
        "- Load average (1 min) {:.1} before and {:.1} after the run{}. The run took {:.0} s.\n",
        r.load_average_before,
        r.load_average_after,
        if shared {
            ": **the machine was shared with other work**, so absolute figures are lower and \
             noisier than on a quiet machine; the columns \"machine CPU\" and \"others\" below \
             show how much CPU the rest took during each drain, and ratios between runs made \
             minutes apart carry that noise too"
        } else {
            ""
        },
        r.total_seconds
    )?;
    if !r.failures.is_empty() {
        writeln!(out, "**Parts of this run failed:**\n")?;
        for f in &r.failures {
            writeln!(out, "- {}", f.replace('\n', " "))?;
        }
        writeln!(out)?;
    }

    let audit = &r.log_audit;
    writeln!(
        out,
        "- Logs: {} ERROR and {} WARN lines in Millrace's {} logs of this run (a healthy run \
         logs no ERROR).{}\n",
        audit.errors,
        audit.warnings,
        audit.logs,
        if audit.first_errors.is_empty() {
            String::new()
        } else {
            format!(
                " The first: {}",
                audit
                    .first_errors
                    .iter()
                    .map(|l| format!("`{}`", l.replace('`', "'")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    )?;

    writeln!(out, "## Summary\n")?;
    writeln!(out, "| | Millrace | Kafka Streams | Millrace ÷ KS |")?;
    writeln!(out, "|---|---|---|---|")?;
    for [figure, m, k, ratio] in summary_rows(r) {
        writeln!(out, "| {figure} | {m} | {k} | {ratio} |")?;
    }
    writeln!(out, "\n![throughput](charts/throughput.png)\n")?;

    writeln!(out, "## Workload\n")?;
    writeln!(
        out,
        "{} JSON readings `{{\"device\", \"t\", \"hr\"}}` (about {:.0} bytes each) keyed by \
         device, {} devices, {} partitions, event times spread over 20 minutes ending 5 minutes \
         before the run, each up to 0.5 s out of order. The pipeline, the same in both \
         systems: per device, a tumbling {} s window on the event time `t` with \
         count/sum/min/max/mean of `hr`, final results only, as JSON \
         `{{\"key\",\"start\",\"end\",\"count\",\"sum\",\"min\",\"max\",\"mean\"}}` keyed by \
         device; state in RocksDB with a changelog topic; commit every {COMMIT_MS} ms. A \
         window closes once its task (partition) has seen an event time at least {} ms past \
         its end: Millrace's `lateness: {CLOSE_AFTER_MS}ms` (grace 0), Kafka Streams' \
         `TimeWindows.ofSizeAndGrace(10s, {CLOSE_AFTER_MS}ms)` with \
         `suppress(untilWindowCloses)` and a timestamp extractor reading `t`. Millrace: \
         `bench/run`'s pipeline in `integration-tests/src/compare/engines.rs`; Kafka Streams: \
         `bench/peers/kafka-streams/src/main/java/dev/millrace/bench/WindowApp.java`.\n",
        r.records,
        r.record_bytes,
        r.keys,
        r.partitions,
        WINDOW_MS / 1000,
        CLOSE_AFTER_MS
    )?;

    writeln!(out, "## Backlog throughput\n")?;
    writeln!(
        out,
        "All {} records are in the input topic before a system starts (loaded at {:.0} \
         records/s); each run is a fresh consumer group and a fresh state. The time runs \
         from starting the process (JVM start-up included) to the group's committed offsets \
         reaching the end of the input; \"start-up\" is the part until the system said it \
         runs (Millrace's `/readyz` answering 200, Kafka Streams' state RUNNING; the \
         pass-through loops print it once subscribed), and the rate after start-up divides \
         the records by the rest. CPU is the process's user + system time \
         (`/proc/<pid>/stat`), peak RSS its `VmHWM`, both read the same way for the JVM and \
         Millrace. \"Broker CPU\" is the Kafka broker's CPU over the run, \"machine CPU\" \
         every core's busy time (`/proc/stat`), and \"others\" the machine's minus the \
         system's and the broker's (the benchmark driver's polling and other users of the \
         machine).\n",
        r.records, r.load_records_per_second
    )?;
    writeln!(
        out,
        "| system | guarantee | drain time | records/s | start-up | records/s after start-up | CPU s | CPU s per M | peak RSS | broker CPU s | machine CPU s | others CPU s |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for d in r.drains.iter().chain(&r.passthrough) {
        let others = d
            .broker_cpu_seconds
            .map(|b| d.machine_cpu_seconds - d.cpu_seconds - b);
        writeln!(
            out,
            "| {} | {} | {:.1} s | {:.0} | {} | {} | {:.1} | {:.1} | {:.0} MiB | {} | {:.1} | {} |",
            d.system.label(),
            d.guarantee.label(),
            d.seconds,
            d.records_per_second,
            d.startup_seconds
                .map_or("–".into(), |s| format!("{s:.1} s")),
            num(d.processing_records_per_second, 0),
            d.cpu_seconds,
            d.cpu_seconds_per_million,
            d.peak_rss_mib,
            num(d.broker_cpu_seconds, 1),
            d.machine_cpu_seconds,
            num(others, 1),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "**The broker's limit.** The pass-through rows copy the same input records (same \
         bytes, same partitions) to an output topic with no processing and no state: a plain \
         consumer and producer, each once with the Java client (Kafka Streams' client) and \
         once with librdkafka (Millrace's client), on default client settings except the \
         two Millrace itself changes for librdkafka (`fetch.queue.backoff.ms` 10 ms, and \
         waiting for deliveries in 1 ms steps before a commit instead of rust-rdkafka's \
         100 ms flush slices). \
         Transactional (the \"exactly-once\" rows): read_committed, produce in a transaction, \
         offsets committed in it every {COMMIT_MS} ms — the least an exactly-once processor \
         must do. Otherwise: flush, then commit offsets every {COMMIT_MS} ms. The faster of \
         the two clients is the limit each system is compared with. A stream processor can \
         beat it only by batching differently; the window pipeline also writes less output \
         than its input (one result per device per window) but writes changelog records.\n"
    )?;
    writeln!(
        out,
        "| guarantee | limit (records/s) | Millrace | Kafka Streams |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        if let Some(l) = limit(r, g) {
            let share = |s| {
                find(&r.drains, s, g).map_or("–".into(), |d| {
                    format!(
                        "{:.0}%",
                        d.records_per_second / l.records_per_second * 100.0
                    )
                })
            };
            writeln!(
                out,
                "| {} | {:.0} ({}) | {} | {} |",
                g.label(),
                l.records_per_second,
                l.system.label(),
                share(System::Millrace),
                share(System::KafkaStreams)
            )?;
        }
    }
    writeln!(out, "\n![CPU per record](charts/cpu.png)\n")?;

    writeln!(out, "## Same work\n")?;
    writeln!(
        out,
        "The window results of the two systems' drains over the same input, read back with a \
         `read_committed` consumer and compared as sets of (key, start, end) → (count, sum, \
         min, max, mean), floats within a relative 1e-9.\n"
    )?;
    writeln!(
        out,
        "| compared | results | equal | different | only left | only right | duplicates | same? |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for c in &r.sanity {
        writeln!(
            out,
            "| {} vs {} | {} / {} | {} | {} | {} | {} | {} / {} | {} |",
            c.left,
            c.right,
            c.left_windows,
            c.right_windows,
            c.equal,
            c.different,
            c.only_left,
            c.only_right,
            c.left_duplicates,
            c.right_duplicates,
            if c.same() { "yes" } else { "**no**" }
        )?;
        for e in &c.examples {
            writeln!(out, "|  | `{e}` | | | | | | |")?;
        }
    }
    writeln!(out)?;

    writeln!(out, "## Latency at a fixed rate\n")?;
    writeln!(
        out,
        "Readings are produced live (same devices and partitions as the backlog) at a fixed \
         rate, with `t` = the wall clock when each is handed to the producer, to a fresh \
         topic per system, exactly-once. A window's result cannot exist before the first \
         reading of its partition with `t >= end + {CLOSE_AFTER_MS} ms` (the *closing \
         reading*) has been produced. **Latency = the time the result became visible to a \
         `read_committed` consumer minus the closing reading's `t`**: producer batching, the \
         broker, the system's processing, its commit interval ({COMMIT_MS} ms) and \
         transaction commit, and the reader's fetch; not the window's own length. Results of \
         windows closing during the warm-up are left out.\n"
    )?;
    writeln!(
        out,
        "| system | target rate | achieved rate | run | results measured | results / windows closed | p50 | p99 | max | CPU (% of a core) | peak RSS | start-up |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for l in &r.latency {
        writeln!(
            out,
            "| {} | {} | {:.0} | {} s | {} | {} / {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0}% | {:.0} MiB | {:.1} s |",
            l.system.label(),
            l.target_rate,
            l.achieved_rate,
            l.seconds,
            l.measured,
            l.received,
            l.expected,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.cpu_percent,
            l.peak_rss_mib,
            l.startup_seconds
        )?;
    }
    writeln!(out, "\n![latency](charts/latency.png)\n")?;

    writeln!(out, "## Recovery after SIGKILL with a large state\n")?;
    writeln!(
        out,
        "A table of {:.0} MiB (10 KB rows of random letters, so compression cannot shrink it) \
         is read into each system's RocksDB store, which has a changelog topic; a stream \
         joined with it on the record key, exactly-once, commit every {COMMIT_MS} ms, static \
         group membership and `session.timeout.ms` 10 s in both (a restarted instance takes \
         its partitions back without waiting for its dead predecessor). Once the table is \
         loaded the process is killed with SIGKILL and started again, and one stream record \
         is produced; the time runs from the restart (process start, JVM included) to that \
         record's joined output becoming visible to a `read_committed` reader. Then again \
         with the local state deleted before the restart, which makes both restore the whole \
         changelog. The last column counts the changelog records each restart restored \
         before its first output, from the system's own log lines: a restore of the whole \
         table shows as about as many records as the table has rows.\n",
        r.table_mib
    )?;
    writeln!(
        out,
        "| system | rows | load time | local state on disk | peak RSS while loading |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for l in &r.loaded {
        writeln!(
            out,
            "| {} | {} | {:.0} s | {:.0} MiB | {:.0} MiB |",
            l.system.label(),
            l.rows,
            l.load_seconds,
            l.local_mib,
            l.peak_rss_mib
        )?;
    }
    writeln!(
        out,
        "\n| system | local state at restart | restart to first output | changelog records restored (from its log) |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for x in &r.recovery {
        writeln!(
            out,
            "| {} | {} | {:.2} s | {} |",
            x.system.label(),
            x.local_state,
            x.seconds,
            x.restored_records.map_or("none logged".into(), |n| {
                match r.loaded.iter().find(|l| l.system == x.system) {
                    Some(l) if l.rows > 0 => {
                        format!("{n} ({:.0}% of the rows)", n as f64 / l.rows as f64 * 100.0)
                    }
                    _ => n.to_string(),
                }
            })
        )?;
    }
    writeln!(out, "\n![recovery](charts/recovery.png)\n")?;

    writeln!(out, "## Where Millrace spends its time\n")?;
    match &r.profile {
        None => writeln!(out, "No profile in this run.\n")?,
        Some(p) => {
            if let Some(d) = &r.profiled_drain {
                writeln!(
                    out,
                    "`perf record -F {} --call-graph dwarf` attached to Millrace during one more \
                     exactly-once drain of the same backlog ({:.1} s, {:.0} records/s under \
                     perf), {} samples of on-CPU time. A sample belongs to the innermost component \
                     in its stack (a `malloc` called by the state layer is the state layer's; \
                     the allocator row holds what nothing else claims); the inclusive column \
                     counts it for every component its stack passes through. Time Millrace \
                     spends waiting (for the broker, a commit, a restore) is not sampled. \
                     Flame graph: [charts/flamegraph.png](charts/flamegraph.png).\n",
                    p.frequency, d.seconds, d.records_per_second, p.samples
                )?;
            }
            writeln!(out, "| component | own | inclusive |")?;
            writeln!(out, "|---|---|---|")?;
            for (share, name) in &p.self_components {
                let inclusive = p
                    .inclusive_components
                    .iter()
                    .find(|(_, n)| n == name)
                    .map_or("–".into(), |(s, _)| format!("{s:.1}%"));
                writeln!(out, "| {name} | {share:.1}% | {inclusive} |")?;
            }
            writeln!(out, "\n| thread | share of samples |")?;
            writeln!(out, "|---|---|")?;
            for (share, name) in &p.threads {
                writeln!(out, "| {} | {share:.1}% |", code(name))?;
            }
            writeln!(out, "\nFunctions by their own time:\n")?;
            writeln!(out, "| self | function |")?;
            writeln!(out, "|---|---|")?;
            for (share, name) in &p.self_top {
                writeln!(out, "| {share:.1}% | {} |", code(name))?;
            }
            writeln!(
                out,
                "\nWhere in each component (the frames that claimed its samples):\n"
            )?;
            writeln!(out, "| component | frames |")?;
            writeln!(out, "|---|---|")?;
            for c in &p.breakdown {
                writeln!(
                    out,
                    "| {} ({:.1}%) | {} |",
                    c.name,
                    c.share,
                    functions(&c.functions)
                )?;
            }
            writeln!(out, "\nFunctions by inclusive time (the first 40):\n")?;
            writeln!(out, "| inclusive | function |")?;
            writeln!(out, "|---|---|")?;
            for (share, name) in &p.inclusive_top {
                writeln!(out, "| {share:.1}% | {} |", code(name))?;
            }
            writeln!(out)?;
            writeln!(out, "## Closing note: the top three costs\n")?;
            writeln!(
                out,
                "By the profile above (on-CPU samples, each given to the innermost component \
                 of its stack), Millrace's three largest costs while draining the backlog \
                 exactly-once were:\n"
            )?;
            for (i, c) in p
                .breakdown
                .iter()
                .filter(|c| c.name != "other")
                .take(3)
                .enumerate()
            {
                writeln!(
                    out,
                    "{}. **{}**: {:.0}% of the samples; in {}.",
                    i + 1,
                    c.name,
                    c.share,
                    functions(&c.functions)
                )?;
            }
            writeln!(out)?;
        }
    }
    Ok(out)
}

/// "`f` (12.0%), `g` (3.1%)".
fn functions(list: &[(f64, String)]) -> String {
    list.iter()
        .map(|(share, name)| format!("{} ({share:.1}%)", code(name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A name as inline code that cannot break a table row.
fn code(name: &str) -> String {
    format!("`{}`", name.replace('|', "\\|").replace('`', "'"))
}

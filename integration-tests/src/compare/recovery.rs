//! Recovery after SIGKILL with a large state.
//!
//! Both systems load a table of ~`state_mib` MiB of 10 KB rows (random
//! letters, so compression cannot shrink it) into a RocksDB store with a
//! changelog topic, joined by a stream on the record key, exactly-once,
//! with static group membership (so neither waits for its dead
//! predecessor's session to expire). Once the table is loaded the process
//! is killed with SIGKILL and started again, and one stream record is
//! produced; the time runs from the restart to that record's joined output
//! becoming visible to a `read_committed` reader. Each system is measured
//! with its local state left as the kill left it, and with the local state
//! deleted (a restore of the whole changelog).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::engines::{Launcher, PARTITIONS, Running, START_WITHIN, System};
use super::watch::Watcher;
use crate::bench;
use crate::process::{log_len, log_since};
use crate::{create_topics, produce_to, producer, progress};

/// Size of one table row's text.
const ROW: usize = 10_000;

/// One restart's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub system: System,
    /// "kept" or "deleted": the local state at restart.
    pub local_state: &'static str,
    /// Restart to the first new output committed.
    pub seconds: f64,
    /// Changelog records restored before that output, as the system logged
    /// them (None when it logged none).
    pub restored_records: Option<u64>,
}

/// The loaded state of one system before its restarts.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub system: System,
    pub rows: usize,
    /// Start to the table read to its end.
    pub load_seconds: f64,
    /// Local state on disk after loading, MiB.
    pub local_mib: f64,
    pub peak_rss_mib: f64,
}

/// The table topic shared by both systems' runs.
pub struct Table {
    pub topic: String,
    pub rows: usize,
    pub mib: f64,
}

/// Loads a table of about `state_mib` MiB into `<name>-table`.
pub fn load_table(name: &str, state_mib: usize) -> anyhow::Result<Table> {
    let topic = format!("{name}-table");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[(&topic, PARTITIONS)]))?;
    let rows = (state_mib * 1024 * 1024 / ROW).max(PARTITIONS as usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rate = bench::load(&topic, rows, |i| {
        let blob: String = (0..ROW)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        let value = serde_json::json!({ "row": i, "blob": blob });
        (
            row_key(i),
            (i % PARTITIONS as usize) as i32,
            value.to_string().into_bytes(),
        )
    })?;
    progress(&format!("table: {rows} rows loaded at {rate:.0}/s"));
    Ok(Table {
        topic,
        rows,
        mib: (rows * ROW) as f64 / 1048576.0,
    })
}

fn row_key(i: usize) -> String {
    format!("row-{i:08}")
}

/// Loads the table into `system`, then restarts it after SIGKILL with its
/// local state kept and deleted. `name` is the table's prefix; the run's
/// own topics are `<name>-<system>-...`.
pub fn recovery(
    launcher: &Launcher,
    system: System,
    name: &str,
    table: &Table,
) -> anyhow::Result<(Loaded, Vec<Recovery>)> {
    let run_name = format!("{name}-{}", system.short());
    let output = format!("{run_name}-out");
    // Each system its own stream: both read it from the start.
    let stream = format!("{run_name}-events");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(create_topics(&[(&output, 1), (&stream, PARTITIONS)]))?;
    progress(&format!(
        "{}: loading a {}-row table into state",
        system.label(),
        table.rows
    ));
    let started = Instant::now();
    let mut run = launcher.join(system, &run_name, &stream, &table.topic, &output)?;
    let (usage, _) = super::drain::watch_drain(
        run.engine.as_mut(),
        &run.group,
        &table.topic,
        started + Duration::from_secs(1800),
    )?;
    let loaded = Loaded {
        system,
        rows: table.rows,
        load_seconds: started.elapsed().as_secs_f64(),
        local_mib: bench::dir_size(run.state.path()) as f64 / 1048576.0,
        peak_rss_mib: usage.peak_rss as f64 / 1048576.0,
    };
    progress(&format!(
        "{}: table in state after {:.0} s, {:.0} MiB on disk",
        system.label(),
        loaded.load_seconds,
        loaded.local_mib
    ));

    let watcher = Watcher::start(&output)?;
    let producer = producer();
    let mut restarts = Vec::new();
    for (n, local_state) in [(1usize, "kept"), (2, "deleted")] {
        run.engine.kill()?;
        if local_state == "deleted" {
            wipe(&run)?;
        }
        let log_from = log_len(run.engine.log_file());
        let restarted = Instant::now();
        run.engine.restart()?;
        // A row the event joins with, on the row's partition.
        let row = (n * 7919) % table.rows;
        rt.block_on(produce_to(
            &producer,
            &stream,
            &[(
                row_key(row),
                (row % PARTITIONS as usize) as i32,
                serde_json::json!({ "n": n }).to_string().into_bytes(),
            )],
        ))?;
        let deadline = restarted + Duration::from_secs(1800);
        while watcher.count() < n {
            anyhow::ensure!(
                run.engine.is_running(),
                "{} exited after restart; log:\n{}",
                system.label(),
                run.engine.log_tail(40)
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: no output within 30 minutes of the restart",
                system.label()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = restarted.elapsed().as_secs_f64();
        let restored_records = restored(&log_since(run.engine.log_file(), log_from));
        progress(&format!(
            "{}: restart with the local state {local_state}: first output after {seconds:.2} s \
             ({} changelog records restored)",
            system.label(),
            restored_records.map_or("no".into(), |n| n.to_string())
        ));
        restarts.push(Recovery {
            system,
            local_state,
            seconds,
            restored_records,
        });
    }
    // Let the last restart settle before it is stopped.
    run.engine.wait_running(START_WITHIN).ok();
    watcher.finish()?;
    run.engine.stop()?;
    Ok((loaded, restarts))
}

/// Changelog records a restart restored, summed over the log lines that
/// say so: Millrace's `restored ... records=N` and Kafka Streams' `Finished
/// restoring changelog ... with a total number of N records`.
fn restored(log: &str) -> Option<u64> {
    let mut total = None;
    for line in log.lines() {
        let line = strip_ansi(line);
        let n = if line.contains("restored") {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("records="))
                .and_then(|v| {
                    v.trim_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u64>()
                        .ok()
                })
        } else if line.contains("Finished restoring changelog") {
            line.split_once("total number of ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        } else {
            None
        };
        if let Some(n) = n {
            *total.get_or_insert(0) += n;
        }
    }
    total
}

/// A log line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Deletes the local state, keeping the directory. Kafka Streams keeps its
/// process identity (`kafka-streams-process-metadata`) there too; it is
/// kept, as deleting a task's store directories is what losing the state
/// means for it (a new identity would also change its transactional ids).
fn wipe(run: &Running) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(run.state.path())? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == "kafka-streams-process-metadata" {
            continue;
        }
        if path.is_dir() {
            wipe_dir_keeping_metadata(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Kafka Streams' layout is `<state-dir>/<application id>/<task>/...` with
/// the process metadata file in `<application id>/`; Millrace's is
/// `<state-dir>/<group id>/task-<n>/...`. Both lose every task directory.
fn wipe_dir_keeping_metadata(dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == "kafka-streams-process-metadata" {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("deleting {}", path.display()))?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::restored;

    #[test]
    fn restored_records_are_read_from_either_log() {
        let millrace = "2025 INFO restored store=\"rows\" partition=0 full=true records=120 elapsed=1s\n\
                        2025 INFO restored store=\"rows\" partition=1 full=true records=30 elapsed=1s";
        assert_eq!(restored(millrace), Some(150));
        let coloured =
            "\u{1b}[32m INFO\u{1b}[0m restored \u{1b}[3mrecords\u{1b}[0m\u{1b}[2m=\u{1b}[0m7";
        assert_eq!(restored(coloured), Some(7));
        let streams = "[t] INFO ... Finished restoring changelog app-rows-changelog-2 to store rows \
                       with a total number of 26214 records";
        assert_eq!(restored(streams), Some(26214));
        assert_eq!(restored("state RUNNING"), None);
    }
}

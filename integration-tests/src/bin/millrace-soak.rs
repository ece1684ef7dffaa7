//! `millrace-soak`: the fault matrix of issue #12 in a loop for a given
//! time — the pipeline SIGKILLed, the broker SIGKILLed, the network between
//! them degraded and cut — each round checked for lost, duplicated,
//! reordered or wrong outputs; writes a Markdown report after every round.
//! Run through `scripts/soak` (which builds it and sets `MILLRACE_BIN`);
//! not part of CI.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use millrace_integration_tests::faults::report::{Header, Round, render};
use millrace_integration_tests::faults::scenario::{Promise, run_promising};
use millrace_integration_tests::faults::{Lab, Matrix};
use millrace_integration_tests::{progress, repo_root};

#[derive(Parser)]
#[command(about = "Exactly-once under faults, in a loop, with a report")]
struct Cli {
    /// How long to run; the round under way when time is up finishes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Where the report goes.
    #[arg(long, default_value = "bench/soak-report.md")]
    report: PathBuf,
    /// Seed of the first round's random instants (round n uses seed + n);
    /// default: a fresh one.
    #[arg(long)]
    seed: Option<u64>,
    /// Only these matrices (default: all three in turn).
    #[arg(long, value_enum)]
    matrix: Vec<Which>,
    /// A control run: the pipeline at `commit.guarantee: at_least_once`,
    /// where faults should show as duplicates; it succeeds when the check
    /// sees them.
    #[arg(long)]
    at_least_once: bool,
    /// Faults per round, instead of each matrix's default (8 pipeline
    /// kills, 3 broker kills, 6 network faults); more per round spends
    /// less of the run on the checks between rounds.
    #[arg(long)]
    faults_per_round: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    Pipeline,
    Broker,
    Network,
    /// On a private 3-node cluster: rolling restarts, partition-leader
    /// kills and transaction-coordinator kills, with a gateway subscriber
    /// and a registry running beside the pipeline.
    Cluster,
}

/// Faults per round: enough to land in every phase (start-up, restore,
/// steady processing), few enough that a round stays near a minute.
fn faults_per_round(matrix: Matrix) -> usize {
    match matrix {
        Matrix::PipelineKill => 8,
        Matrix::BrokerKill => 3,
        Matrix::Network => 6,
        Matrix::RollingRestart | Matrix::LeaderKill | Matrix::CoordinatorKill => 3,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = if cli.report.is_absolute() {
        cli.report.clone()
    } else {
        repo_root().join(&cli.report)
    };
    let matrices: Vec<Matrix> = if cli.matrix.is_empty() {
        vec![Matrix::PipelineKill, Matrix::BrokerKill, Matrix::Network]
    } else {
        cli.matrix
            .iter()
            .flat_map(|w| match w {
                Which::Pipeline => vec![Matrix::PipelineKill],
                Which::Broker => vec![Matrix::BrokerKill],
                Which::Network => vec![Matrix::Network],
                Which::Cluster => vec![
                    Matrix::RollingRestart,
                    Matrix::LeaderKill,
                    Matrix::CoordinatorKill,
                ],
            })
            .collect()
    };
    let base_seed = cli.seed.unwrap_or_else(rand::random);
    let command = std::env::args()
        .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let started_text = started_at();
    let budget = Duration::from_secs_f64(cli.minutes * 60.0);
    // Only the labs the chosen matrices need: a single proxied node, a
    // 3-node cluster, or both.
    let lab = if matrices.iter().any(|m| !m.is_cluster()) {
        Some(Lab::start_proxied().context("starting the private broker and toxiproxy")?)
    } else {
        None
    };
    let cluster = if matrices.iter().any(|m| m.is_cluster()) {
        Some(Lab::start_cluster().context("starting the private cluster")?)
    } else {
        None
    };
    let started = Instant::now();
    let mut rounds = Vec::new();
    while started.elapsed() < budget {
        let n = rounds.len();
        let matrix = matrices[n % matrices.len()];
        let seed = base_seed.wrapping_add(n as u64);
        let promise = if cli.at_least_once {
            Promise::AtLeastOnce
        } else {
            Promise::ExactlyOnce
        };
        let lab = if matrix.is_cluster() {
            cluster.as_ref()
        } else {
            lab.as_ref()
        }
        .context("no lab for the matrix")?;
        let round = match run_promising(
            lab,
            matrix,
            cli.faults_per_round
                .unwrap_or_else(|| faults_per_round(matrix)),
            seed,
            promise,
        ) {
            Ok(outcome) => {
                progress(&format!(
                    "round {}: {} — {}",
                    n + 1,
                    matrix.name(),
                    outcome.verdict.describe()
                ));
                Round::Done(Box::new(outcome))
            }
            Err(e) => {
                progress(&format!(
                    "round {} ({}) failed: {e:#}",
                    n + 1,
                    matrix.name()
                ));
                Round::Failed {
                    matrix: matrix.name(),
                    seed,
                    error: format!("{e:#}"),
                }
            }
        };
        rounds.push(round);
        let header = Header {
            control: cli.at_least_once,
            command: command.clone(),
            started: started_text.clone(),
            elapsed: started.elapsed(),
            machine: machine(),
        };
        let text = render(&header, &rounds);
        std::fs::write(&report, text).with_context(|| format!("writing {}", report.display()))?;
    }
    progress(&format!("report: {}", report.display()));
    let all_exact = rounds
        .iter()
        .all(|r| matches!(r, Round::Done(o) if o.verdict.is_exact()));
    if cli.at_least_once {
        anyhow::ensure!(
            !all_exact,
            "the control run's faults left no trace the check saw: see {}",
            report.display()
        );
    } else {
        anyhow::ensure!(
            all_exact,
            "not every round was exact: see {}",
            report.display()
        );
    }
    Ok(())
}

/// The wall-clock start, in UTC, from `date` (no time crate here).
fn started_at() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string());
    format!(
        "{cores} cores shared with other work; Millrace {rev} (debug build, as the tests); \
         Apache Kafka 4.1.1: one private KRaft node on 127.0.0.1, three for the cluster matrices \
         (replication factor 3, min.insync.replicas 2)."
    )
}

//! The soak's Markdown report: what faults it injected, how many of each,
//! records in and out, and what was lost, duplicated or wrong, in all and
//! per round. Pure text from the rounds' outcomes; the soak writes it
//! after every round, so an interrupted soak leaves a report too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::scenario::Outcome;

/// One round of the soak: its outcome, or why it could not finish.
pub enum Round {
    Done(Box<Outcome>),
    Failed {
        matrix: &'static str,
        seed: u64,
        error: String,
    },
}

/// What the report says about where and how the soak ran.
pub struct Header {
    /// A control run at at-least-once, where faults should show.
    pub control: bool,
    /// The command line, as a reader would repeat it.
    pub command: String,
    pub started: String,
    pub elapsed: Duration,
    pub machine: String,
}

/// The report for the rounds so far.
pub fn render(header: &Header, rounds: &[Round]) -> String {
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut records_in, mut outputs, mut expected) = (0, 0, 0);
    let (mut lost, mut duplicated, mut reordered, mut wrong, mut final_state) = (0, 0, 0, 0, 0);
    let mut failed = 0;
    for round in rounds {
        match round {
            Round::Done(o) => {
                for (kind, n) in &o.faults {
                    *faults.entry(*kind).or_default() += n;
                }
                records_in += o.records_in;
                outputs += o.verdict.outputs;
                expected += o.verdict.expected;
                lost += o.verdict.lost;
                duplicated += o.verdict.duplicated;
                reordered += o.verdict.reordered;
                wrong += o.verdict.wrong;
                final_state += o.verdict.final_state_mismatches;
                if !o.verdict.is_exact() {
                    failed += 1;
                }
            }
            Round::Failed { .. } => failed += 1,
        }
    }
    let mut md = String::new();
    if header.control {
        let _ = writeln!(
            md,
            "# Control soak: the same faults at `commit.guarantee: at_least_once`\n\n\
             Not a guarantee Millrace makes: this run shows that the check sees what the \
             faults do to a pipeline without transactions (duplicates, and state that \
             counted records twice). Rounds that are not exact are the expected result.\n"
        );
    } else {
        let _ = writeln!(md, "# Soak: exactly-once under faults\n");
    }
    let _ = writeln!(
        md,
        "`{}`, started {}, ran {:.1} min. {}\n",
        header.command,
        header.started,
        header.elapsed.as_secs_f64() / 60.0,
        header.machine
    );
    let _ = writeln!(
        md,
        "Each round runs a stateful pipeline (a running count and sum per key, `reduce`, \
         4 partitions, 64 keys, ~2,000 records/s of input) on a private broker while faults \
         of one kind hit it at random instants; then deletes its local state, rebuilds it \
         from the changelog, probes it with one record per key, and checks every committed \
         output (`read_committed`) against a reference computed from the input \
         (`integration-tests/src/faults/`). Network faults go through Toxiproxy between \
         Millrace and the broker; test input and the reader bypass it.\n"
    );
    let verdict = if header.control {
        "control run, see above"
    } else if failed == 0 && !rounds.is_empty() {
        "**every round exact**"
    } else if rounds.is_empty() {
        "no round finished"
    } else {
        "**NOT EXACT: see the failures below**"
    };
    let _ = writeln!(md, "## Totals: {verdict}\n");
    let _ = writeln!(md, "| fault | injected |\n|---|---:|");
    for (kind, n) in &faults {
        let _ = writeln!(md, "| {kind} | {n} |");
    }
    let _ = writeln!(md, "| **all** | **{}** |\n", faults.values().sum::<u64>());
    let _ = writeln!(
        md,
        "| rounds | failed | records in | outputs expected | outputs committed | lost | duplicated | reordered | wrong | final-state mismatches |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        md,
        "| {} | {failed} | {records_in} | {expected} | {outputs} | {lost} | {duplicated} | {reordered} | {wrong} | {final_state} |\n",
        rounds.len()
    );
    let _ = writeln!(md, "## Rounds\n");
    let _ = writeln!(
        md,
        "| # | matrix | seed | faults | records in | outputs | lost | dup. | reord. | wrong | final | client rebuilds | broker restarts (s) | time (s) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    );
    for (n, round) in rounds.iter().enumerate() {
        match round {
            Round::Done(o) => {
                let v = &o.verdict;
                let restarts: Vec<String> = o
                    .broker_restarts
                    .iter()
                    .map(|d| format!("{:.1}", d.as_secs_f64()))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                    n + 1,
                    o.matrix.name(),
                    o.seed,
                    o.faults.values().sum::<u64>(),
                    o.records_in,
                    v.outputs,
                    v.lost,
                    v.duplicated,
                    v.reordered,
                    v.wrong,
                    v.final_state_mismatches,
                    o.client_rebuilds,
                    restarts.join(", "),
                    o.elapsed.as_secs_f64()
                );
            }
            Round::Failed { matrix, seed, .. } => {
                let _ = writeln!(
                    md,
                    "| {} | {matrix} | {seed} | – | – | – | – | – | – | – | – | – | – | – (did not finish) |",
                    n + 1
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nClient rebuilds: times the pipeline process running at the end rebuilt its \
         Kafka clients after an error (the metric starts again with every process, so \
         pipeline-SIGKILL rounds show 0). Broker restarts: from SIGKILL to serving again, \
         log recovery included."
    );
    let failures: Vec<String> = rounds
        .iter()
        .enumerate()
        .filter_map(|(n, round)| match round {
            Round::Done(o) if !o.verdict.is_exact() => Some(format!(
                "### Round {} ({}, seed {})\n\n```\n{}\n```\n\nPipeline log (end):\n\n```\n{}\n```\n",
                n + 1,
                o.matrix.name(),
                o.seed,
                o.verdict.describe(),
                o.log_tail
            )),
            Round::Failed {
                matrix,
                seed,
                error,
            } => Some(format!(
                "### Round {} ({matrix}, seed {seed}) did not finish\n\n```\n{error}\n```\n",
                n + 1
            )),
            Round::Done(_) => None,
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for f in failures {
            let _ = writeln!(md, "{f}");
        }
    }
    let _ = writeln!(
        md,
        "\nReplay a round's instants: `scripts/soak --seed <seed> --matrix \
         pipeline|broker|network`, or `MILLRACE_FAULT_SEED=<seed>` with the test of its \
         matrix (`cargo test --workspace --test faults`)."
    );
    md
}

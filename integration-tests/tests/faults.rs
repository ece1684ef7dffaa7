//! Exactly-once under real faults (issue #12), on a private broker so the
//! shared one is never touched: the broker's JVM is SIGKILLed and restarted
//! mid-transaction, and the network between Millrace and the broker is
//! slowed, blackholed, reset, throttled and cut (Toxiproxy), while a
//! stateful pipeline processes input that keeps arriving. Its committed
//! output must equal the reference — nothing lost, nothing duplicated,
//! order per key kept — and its state, rebuilt from the changelog, too.
//! (SIGKILL of the pipeline itself: `crash.rs`, `stateful.rs`, and the
//! soak.)
//!
//! This is the short form CI runs (a few faults each);
//! `MILLRACE_FAULT_ROUNDS=n` repeats the faults n times, and
//! `MILLRACE_FAULT_SEED` replays the instants of a failed run. The network
//! test needs toxiproxy and fails, saying how to install it, without it.

use millrace_integration_tests::faults::scenario::NETWORK_FAULTS;
use millrace_integration_tests::faults::{Lab, Matrix, Outcome, rounds, run_scenario, seed};
use millrace_integration_tests::progress;

/// Broker kills per round: each restart of a single KRaft node after a
/// crash takes 5–15 s on a busy 2-core machine.
const BROKER_KILLS: usize = 3;

/// One private broker and pipeline at a time: the machine has 2 cores.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn assert_exact(outcome: &Outcome) {
    progress(&format!(
        "{}: seed {}, faults {:?}, {} records in, client rebuilds {}, broker restarts {:?}, {:.0} s: {}",
        outcome.matrix.name(),
        outcome.seed,
        outcome.faults,
        outcome.records_in,
        outcome.client_rebuilds,
        outcome.broker_restarts,
        outcome.elapsed.as_secs_f64(),
        outcome.verdict.describe()
    ));
    assert!(
        outcome.verdict.is_exact(),
        "{} faults (seed {}; replay with MILLRACE_FAULT_SEED={}): {}\npipeline log:\n{}",
        outcome.matrix.name(),
        outcome.seed,
        outcome.seed,
        outcome.verdict.describe(),
        outcome.log_tail
    );
}

#[test]
fn broker_sigkill_mid_transaction_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::start()?;
    let kills = BROKER_KILLS * rounds();
    let outcome = run_scenario(&lab, Matrix::BrokerKill, kills, seed())?;
    assert_exact(&outcome);
    assert_eq!(
        outcome.faults.get("broker SIGKILL").copied(),
        Some(kills as u64)
    );
    // Kills that land among open transactions make the pipeline rebuild
    // its clients; none at all would mean they never reached it.
    assert!(
        outcome.client_rebuilds > 0,
        "no broker kill reached the pipeline (no client rebuild)"
    );
    Ok(())
}

#[test]
fn network_faults_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::start_proxied()?;
    let faults = NETWORK_FAULTS.len() * rounds();
    let outcome = run_scenario(&lab, Matrix::Network, faults, seed())?;
    assert_exact(&outcome);
    for kind in NETWORK_FAULTS {
        assert_eq!(
            outcome.faults.get(kind).copied(),
            Some(rounds() as u64),
            "{kind} injected"
        );
    }
    // Faults that outlast the timeouts must have made the pipeline rebuild
    // its clients at least once, or they did not reach it.
    assert!(
        outcome.client_rebuilds > 0,
        "the network faults never reached the pipeline (no client rebuild)"
    );
    Ok(())
}

//! Faults for the exactly-once tests of issue #12: a private broker that can
//! be SIGKILLed and restarted ([`broker`]), a Toxiproxy between Millrace and
//! that broker for network faults ([`toxiproxy`]), a stateful pipeline run
//! while faults are injected ([`scenario`]) and the pure check of its
//! committed output against a reference ([`check`]).
//!
//! The tests (`tests/faults.rs`) run a short form of each fault matrix;
//! the soak (`scripts/soak`, `millrace-soak`) runs them in a loop for as
//! long as it is told. `MILLRACE_FAULT_ROUNDS` (default 1) multiplies the
//! faults of every test run; `MILLRACE_FAULT_SEED` replays the random
//! instants of a failed run (its seed is printed and reported).

pub mod broker;
pub mod check;
pub mod companions;
pub mod report;
pub mod scenario;
pub mod toxiproxy;

use std::net::TcpListener;

pub use broker::PrivateBroker;
pub use scenario::{Lab, Matrix, Outcome, run_scenario};
pub use toxiproxy::Toxiproxy;

/// How many times the short form of a fault test repeats its faults:
/// `MILLRACE_FAULT_ROUNDS`, default 1 (the CI form).
pub fn rounds() -> usize {
    std::env::var("MILLRACE_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The seed for a run's random instants: `MILLRACE_FAULT_SEED` when set
/// (to replay a failure), else a fresh one.
pub fn seed() -> u64 {
    std::env::var("MILLRACE_FAULT_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// `count` consecutive ports, all free right now, away from the shared
/// broker's 9092/9093: a private broker takes its port, the next for its
/// controller, the next for its proxied listener, and the next for the
/// proxy in front of it.
pub fn free_ports(count: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..40_000);
        let all_free =
            (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} consecutive free ports found between 20000 and 40000")
}

//! A keyed input that keeps arriving while a test injects faults, and the
//! reference a per-key count (`reduce: {}`) must meet: for every key, the
//! committed outputs carry the counts 1, 2, …, n exactly once each and in
//! order, where n is the number of records sent with that key. A lost
//! record shows as a missing count, a duplicate as a repeated one, and a
//! stale or foreign state as counts that start elsewhere.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};

use crate::{produce_to, producer};

/// A feed running in its own thread until [`Feed::stop`].
pub struct Feed {
    feeding: Arc<AtomicBool>,
    sent: Arc<Mutex<BTreeMap<String, i64>>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Feed {
    /// Sends `batch` records every 100 ms to `input`, round-robin over
    /// `keys` keys (`k0`, `k1`, …); key `k<i>` goes to partition
    /// `i % partitions`, so each key's order is the partition's.
    pub fn start(input: &str, keys: usize, partitions: i32, batch: usize) -> Feed {
        let feeding = Arc::new(AtomicBool::new(true));
        let sent: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
        let thread = {
            let (input, feeding, sent) = (input.to_string(), feeding.clone(), sent.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Runtime::new()?;
                let p = producer();
                let mut i = 0usize;
                while feeding.load(Ordering::SeqCst) {
                    let records: Vec<(String, i32, Vec<u8>)> = (0..batch)
                        .map(|j| {
                            let k = (i + j) % keys;
                            (format!("k{k}"), (k as i32) % partitions, b"{}".to_vec())
                        })
                        .collect();
                    rt.block_on(produce_to(&p, &input, &records))?;
                    let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                    for (key, _, _) in &records {
                        *sent.entry(key.clone()).or_default() += 1;
                    }
                    i += batch;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })
        };
        Feed {
            feeding,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops sending; returns the number of records sent per key.
    pub fn stop(&mut self) -> anyhow::Result<BTreeMap<String, i64>> {
        self.feeding.store(false, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the feed thread panicked"))??;
        }
        Ok(self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.feeding.store(false, Ordering::SeqCst);
    }
}

/// Compares a per-key count's committed outputs (`{"key", "count"}`) with
/// what was sent. `Err` describes the first keys that differ.
pub fn check_counts(outputs: &[OwnedMessage], sent: &BTreeMap<String, i64>) -> Result<(), String> {
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in outputs {
        let v: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
        seen.entry(v["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["count"].as_i64().unwrap_or(-1));
    }
    let mut problems = Vec::new();
    for (key, n) in sent {
        let counts = seen.remove(key).unwrap_or_default();
        let expected: Vec<i64> = (1..=*n).collect();
        if counts != expected {
            let differences: Vec<(i64, i64)> = counts
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .take(5)
                .map(|(a, b)| (*a, *b))
                .collect();
            problems.push(format!(
                "{key}: {} outputs for {n} inputs; first differences (got, expected): \
                 {differences:?}",
                counts.len()
            ));
        }
    }
    for key in seen.keys() {
        problems.push(format!("{key}: outputs for a key never sent"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(5);
        Err(problems.join("\n"))
    }
}

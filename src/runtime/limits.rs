//! What the broker would refuse, checked before it is asked: records larger
//! than the producer's `message.max.bytes`, and timestamps too far ahead of
//! the clock.
//!
//! A refused record fails its whole transaction, and the retry fails the
//! same way, forever. So every record a transaction carries is checked
//! first: an output the broker would refuse becomes a dead letter (see
//! [`Limits::check_outputs`]); a state write that would not fit in a
//! changelog record fails the input record that made it (see
//! [`Limits::check_state`]); a dead letter is cut to fit (see
//! [`super::dead_letter::DeadLetter::fit`]).

use crate::pipeline::{FailedOutput, Failure, FailureReason, Output, Produced};
use crate::state::manager::StateManager;

/// Bytes librdkafka adds around a record; kept free under
/// `message.max.bytes` when checking record sizes.
pub const RECORD_OVERHEAD: usize = 512;

/// How far ahead of the clock a record's timestamp may be. Brokers refuse
/// records beyond `message.timestamp.after.max.ms`, one hour by default
/// since Kafka 4.0 (KIP-937).
pub const MAX_TIMESTAMP_AHEAD_MS: i64 = 60 * 60 * 1_000;

/// The producer's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The producer's `message.max.bytes`.
    message_max_bytes: usize,
}

impl Limits {
    pub fn new(message_max_bytes: usize) -> Limits {
        Limits { message_max_bytes }
    }

    /// The most a record's key, value and headers may take.
    pub fn record_bytes(&self) -> usize {
        self.message_max_bytes.saturating_sub(RECORD_OVERHEAD)
    }

    /// The limit, said so that a reader knows where it comes from.
    fn describe(&self) -> String {
        format!(
            "{} bytes (the producer's message.max.bytes, {}, less {RECORD_OVERHEAD} for framing)",
            self.record_bytes(),
            self.message_max_bytes
        )
    }

    /// Why the broker would refuse `out`, if it would.
    fn refusal(&self, out: &Output, now_ms: i64) -> Option<Failure> {
        let at = format!("output to {}", out.topic);
        if let Some(t) = out.timestamp
            && too_far_ahead(t, now_ms)
        {
            return Some(Failure {
                reason: FailureReason::Encode,
                at,
                message: format!(
                    "the output's timestamp {t} is {} s ahead of the clock; brokers refuse \
                     records more than an hour ahead (message.timestamp.after.max.ms)",
                    (t - now_ms) / 1_000
                ),
            });
        }
        let size = out.payload.len() + out.key.as_ref().map_or(0, Vec::len);
        (size > self.record_bytes()).then(|| Failure {
            reason: FailureReason::Encode,
            at,
            message: format!(
                "the output record is {size} bytes; the limit is {}",
                self.describe()
            ),
        })
    }

    /// Moves the outputs the broker would refuse out of the way: one that
    /// a stateful step emitted becomes a failed output (dead-lettered
    /// alone); one of the input's own fails the input record.
    pub fn check_outputs(&self, produced: Produced, now_ms: i64) -> Result<Produced, Failure> {
        let Produced {
            outputs,
            mut failed,
        } = produced;
        let mut passed = Vec::with_capacity(outputs.len());
        for out in outputs {
            let Some(failure) = self.refusal(&out, now_ms) else {
                passed.push(out);
                continue;
            };
            match out.emitted {
                Some(emitted) => failed.push(FailedOutput {
                    failure,
                    emitted,
                    payload: out.payload,
                    timestamp: out.timestamp,
                }),
                None => return Err(failure),
            }
        }
        Ok(Produced {
            outputs: passed,
            failed,
        })
    }

    /// Fails the input record (or timer) whose state writes in `task` would
    /// not fit in a changelog record. The caller then undoes the writes.
    pub fn check_state(&self, state: &StateManager, task: i32) -> Result<(), Failure> {
        match state.oversized_write(task, self.record_bytes()) {
            None => Ok(()),
            Some((store, bytes)) => Err(Failure {
                reason: FailureReason::StateTooLarge,
                at: format!("state store {store}"),
                message: format!(
                    "the record would make an entry of {bytes} bytes (key and value), too \
                     large for its changelog record: the limit is {}",
                    self.describe()
                ),
            }),
        }
    }
}

/// Whether a broker would refuse timestamp `t` at wall-clock time `now_ms`.
pub fn too_far_ahead(t: i64, now_ms: i64) -> bool {
    t > now_ms.saturating_add(MAX_TIMESTAMP_AHEAD_MS)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Emitted;

    fn output(bytes: usize, timestamp: Option<i64>, emitted: bool) -> Output {
        Output {
            topic: "out".into(),
            key: None,
            payload: vec![b'x'; bytes],
            timestamp,
            emitted: emitted.then(|| Emitted {
                step: 0,
                kind: "window",
                key: Some(b"k".to_vec()),
                window: Some((0, 10)),
            }),
        }
    }

    fn produced(outputs: Vec<Output>) -> Produced {
        Produced {
            outputs,
            failed: Vec::new(),
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn outputs_a_broker_would_refuse_fail_the_input() {
        let limits = Limits::new(100 + RECORD_OVERHEAD);
        let fine = produced(vec![output(10, Some(NOW), false), output(10, None, false)]);
        assert_eq!(limits.check_outputs(fine.clone(), NOW), Ok(fine));
        let too_big = limits
            .check_outputs(produced(vec![output(101, Some(NOW), false)]), NOW)
            .unwrap_err();
        assert_eq!(too_big.reason, FailureReason::Encode);
        assert!(too_big.message.contains("101 bytes"), "{}", too_big.message);
        assert!(too_big.message.contains("612"), "{}", too_big.message);
        let ahead = limits
            .check_outputs(
                produced(vec![output(10, Some(NOW + 7_200_000), false)]),
                NOW,
            )
            .unwrap_err();
        assert!(
            ahead.message.contains("ahead of the clock"),
            "{}",
            ahead.message
        );
    }

    #[test]
    fn refused_outputs_of_state_fail_alone() {
        let limits = Limits::new(100 + RECORD_OVERHEAD);
        let checked = limits
            .check_outputs(
                produced(vec![
                    output(101, Some(NOW), true),
                    output(10, Some(NOW), true),
                    output(10, Some(NOW + 7_200_000), true),
                ]),
                NOW,
            )
            .expect("not the input's failure");
        assert_eq!(checked.outputs, [output(10, Some(NOW), true)]);
        assert_eq!(checked.failed.len(), 2);
        assert_eq!(checked.failed[0].payload.len(), 101);
        assert_eq!(checked.failed[0].emitted.window, Some((0, 10)));
        assert!(checked.failed[1].failure.message.contains("ahead"));
    }
}

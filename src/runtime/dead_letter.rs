//! Dead letters: the records that go to the dead-letter topic, with headers
//! that say where they came from and why they failed.
//!
//! There are two kinds (header [`header::FAILED`]):
//! - `input`: a consumed record that failed, exactly as it was consumed
//!   (key, value, headers, timestamp);
//! - `output`: one output of a stateful step (a window's result, a timer's
//!   event) that failed on its way to a sink, while the state that emitted
//!   it was kept: its key, its value as JSON, the step, the window, and the
//!   record or timer that triggered it.
//!
//! A dead letter is made to fit what the broker accepts
//! ([`DeadLetter::fit`]): one it would refuse would fail every transaction
//! that carries it, forever.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::limits::too_far_ahead;
use crate::pipeline::{FailedOutput, Failure};
use crate::steps::Origin;

/// Header names, stable for consumers of the dead-letter topic.
pub mod header {
    pub const PIPELINE: &str = "millrace.pipeline";
    pub const REASON: &str = "millrace.reason";
    pub const ERROR: &str = "millrace.error";
    pub const AT: &str = "millrace.at";
    pub const SOURCE_TOPIC: &str = "millrace.source.topic";
    pub const SOURCE_PARTITION: &str = "millrace.source.partition";
    pub const SOURCE_OFFSET: &str = "millrace.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "millrace.source.timestamp";
    /// `input` (the consumed record failed) or `output` (one output of a
    /// stateful step failed; the state was kept).
    pub const FAILED: &str = "millrace.failed";
    /// Output dead letters: the step that emitted the output, `steps[i] (kind)`.
    pub const STEP: &str = "millrace.step";
    /// Output dead letters: the output's key as the step emitted it.
    pub const OUTPUT_KEY: &str = "millrace.output.key";
    /// Output dead letters: the output's own timestamp (ms).
    pub const OUTPUT_TIMESTAMP: &str = "millrace.output.timestamp";
    /// Output dead letters of a `window`: the window's start (ms).
    pub const WINDOW_START: &str = "millrace.window.start";
    /// Output dead letters of a `window`: the window's end (ms, exclusive).
    pub const WINDOW_END: &str = "millrace.window.end";
    /// Output dead letters of a timer: the wall-clock time it fired (ms).
    pub const TIMER: &str = "millrace.timer";
    /// Set when the dead letter was cut to fit the producer's
    /// `message.max.bytes`: `original=<n> bytes` (the value's size), and
    /// what else was cut.
    pub const TRUNCATED: &str = "millrace.truncated";
}

/// The `topic` label of `millrace_records_dead_lettered_total` for the
/// outputs of timers, which have no source topic.
pub const TIMER_TOPIC_LABEL: &str = "timer";

/// What made an output: a consumed record, or a task's timers.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    Record {
        origin: &'a Origin,
        timestamp: Option<i64>,
    },
    Timer {
        task: i32,
        now_ms: i64,
    },
}

/// A record for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    /// In order: the input's original headers (input dead letters), then
    /// Millrace's.
    headers: Vec<(String, Vec<u8>)>,
    /// How many of `headers` are the input's original ones.
    original_headers: usize,
}

/// Bytes a header costs besides its name and value (length varints).
const HEADER_OVERHEAD: usize = 10;
/// Header values are cut to this when cutting the value, the original
/// headers and the key was not enough.
const SHORT_HEADER: usize = 64;
/// Room kept for the [`header::TRUNCATED`] note's value (its longest
/// form, every cut listed, is about 120 bytes).
const NOTE: usize = 160;

impl DeadLetter {
    /// The dead letter of a consumed record that failed.
    pub fn of_input<H: Headers>(
        pipeline: &str,
        origin: &Origin,
        timestamp: Option<i64>,
        failure: &Failure,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        original: Option<&H>,
    ) -> DeadLetter {
        let mut headers = Vec::new();
        if let Some(original) = original {
            for h in original.iter() {
                headers.push((h.key.to_string(), h.value.unwrap_or_default().to_vec()));
            }
        }
        let mut letter = DeadLetter {
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            timestamp,
            original_headers: headers.len(),
            headers,
        };
        letter.add(header::PIPELINE, pipeline);
        letter.add(header::FAILED, "input");
        letter.add_failure(failure);
        letter.add_origin(origin, timestamp);
        letter
    }

    /// The dead letter of one output of a stateful step that failed.
    pub fn of_output(pipeline: &str, trigger: Trigger<'_>, failed: &FailedOutput) -> DeadLetter {
        let emitted = &failed.emitted;
        let mut letter = DeadLetter {
            key: emitted.key.clone(),
            payload: Some(failed.payload.clone()),
            timestamp: failed.timestamp,
            headers: Vec::new(),
            original_headers: 0,
        };
        letter.add(header::PIPELINE, pipeline);
        letter.add(header::FAILED, "output");
        letter.add_failure(&failed.failure);
        letter.add(header::STEP, &emitted.step_name());
        if let Some(key) = &emitted.key {
            letter
                .headers
                .push((header::OUTPUT_KEY.to_string(), key.clone()));
        }
        if let Some(t) = failed.timestamp {
            letter.add(header::OUTPUT_TIMESTAMP, &t.to_string());
        }
        if let Some((start, end)) = emitted.window {
            letter.add(header::WINDOW_START, &start.to_string());
            letter.add(header::WINDOW_END, &end.to_string());
        }
        match trigger {
            Trigger::Record { origin, timestamp } => letter.add_origin(origin, timestamp),
            Trigger::Timer { task, now_ms } => {
                letter.add(header::SOURCE_PARTITION, &task.to_string());
                letter.add(header::TIMER, &now_ms.to_string());
            }
        }
        letter
    }

    fn add(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
    }

    fn add_failure(&mut self, failure: &Failure) {
        self.add(header::REASON, failure.reason.as_str());
        self.add(header::ERROR, &failure.message);
        self.add(header::AT, &failure.at);
    }

    fn add_origin(&mut self, origin: &Origin, timestamp: Option<i64>) {
        self.add(header::SOURCE_TOPIC, &origin.topic);
        self.add(header::SOURCE_PARTITION, &origin.partition.to_string());
        self.add(header::SOURCE_OFFSET, &origin.offset.to_string());
        if let Some(ts) = timestamp {
            self.add(header::SOURCE_TIMESTAMP, &ts.to_string());
        }
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Bytes the record takes against `message.max.bytes` (less framing).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + HEADER_OVERHEAD)
                .sum::<usize>()
    }

    /// Makes the dead letter one the broker accepts: a timestamp more than
    /// an hour ahead of `now_ms` is dropped (the producer stamps it then),
    /// and a record over `max_bytes` is cut, in this order until it fits:
    /// the value (to a prefix), the input's original headers, the key,
    /// Millrace's header values (to their first bytes), then every header
    /// but the reason. [`header::TRUNCATED`] says what was cut.
    pub fn fit(&mut self, max_bytes: usize, now_ms: i64) {
        if self.timestamp.is_some_and(|t| too_far_ahead(t, now_ms)) {
            self.timestamp = None;
        }
        if self.size() <= max_bytes {
            return;
        }
        let budget = max_bytes.saturating_sub(header::TRUNCATED.len() + NOTE + HEADER_OVERHEAD);
        let mut cut = Vec::new();
        let rest = self.size() - self.payload.as_ref().map_or(0, Vec::len);
        if let Some(payload) = self.payload.as_mut() {
            cut.push(format!("original={} bytes", payload.len()));
            payload.truncate(budget.saturating_sub(rest));
        }
        if self.size() > budget && self.original_headers > 0 {
            self.headers.drain(..self.original_headers);
            self.original_headers = 0;
            cut.push("original headers dropped".to_string());
        }
        let rest = self.size() - self.key.as_ref().map_or(0, Vec::len);
        if self.size() > budget
            && let Some(key) = self.key.as_mut()
        {
            cut.push(format!("key original={} bytes", key.len()));
            key.truncate(budget.saturating_sub(rest));
        }
        if self.size() > budget {
            for (_, value) in &mut self.headers {
                value.truncate(SHORT_HEADER);
            }
            cut.push(format!("header values cut to {SHORT_HEADER} bytes"));
        }
        if self.size() > budget {
            self.headers.retain(|(name, _)| name == header::REASON);
            cut.push("headers dropped".to_string());
        }
        self.add(header::TRUNCATED, &cut.join("; "));
    }

    /// The headers, for the producer.
    pub fn owned_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new(), |out, (name, value)| {
                out.insert(Header {
                    key: name,
                    value: Some(value),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Emitted, FailureReason};

    fn pairs(letter: &DeadLetter) -> Vec<(String, String)> {
        letter
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn has(letter: &DeadLetter, name: &str, value: &str) -> bool {
        letter.header(name) == Some(value.as_bytes())
    }

    fn origin() -> Origin {
        Origin {
            topic: "in".into(),
            partition: 2,
            offset: 17,
        }
    }

    fn input_letter(payload: &[u8]) -> DeadLetter {
        let original = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("abc"),
        });
        let failure = Failure {
            reason: FailureReason::Decode,
            at: "source in".into(),
            message: "invalid JSON".into(),
        };
        DeadLetter::of_input(
            "p",
            &origin(),
            Some(5),
            &failure,
            Some(b"k"),
            Some(payload),
            Some(&original),
        )
    }

    #[test]
    fn input_dead_letters_keep_the_record_and_say_why() {
        let letter = input_letter(b"nope");
        assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letter.payload.as_deref(), Some(&b"nope"[..]));
        assert_eq!(letter.timestamp, Some(5));
        assert_eq!(pairs(&letter)[0], ("trace".into(), "abc".into()));
        assert!(has(&letter, header::FAILED, "input"));
        assert!(has(&letter, header::REASON, "decode"));
        assert!(has(&letter, header::SOURCE_PARTITION, "2"));
        assert!(has(&letter, header::SOURCE_OFFSET, "17"));
        assert!(has(&letter, header::ERROR, "invalid JSON"));
        assert!(letter.header(header::TRUNCATED).is_none());
        let owned = letter.owned_headers();
        assert_eq!(owned.count(), letter.headers.len());
    }

    fn failed_output(timestamp: i64) -> FailedOutput {
        FailedOutput {
            failure: Failure {
                reason: FailureReason::Route,
                at: "route".into(),
                message: "no sink named `nowhere`".into(),
            },
            emitted: Emitted {
                step: 1,
                kind: "window",
                key: Some(b"bad".to_vec()),
                window: Some((10_000, 20_000)),
            },
            payload: br#"{"key": "bad", "count": 3}"#.to_vec(),
            timestamp: Some(timestamp),
        }
    }

    #[test]
    fn output_dead_letters_name_the_step_the_window_and_the_trigger() {
        let origin = origin();
        let trigger = Trigger::Record {
            origin: &origin,
            timestamp: Some(25_000),
        };
        let letter = DeadLetter::of_output("p", trigger, &failed_output(20_000));
        assert_eq!(letter.key.as_deref(), Some(&b"bad"[..]));
        assert_eq!(letter.timestamp, Some(20_000));
        assert!(has(&letter, header::FAILED, "output"));
        assert!(has(&letter, header::REASON, "route"));
        assert!(has(&letter, header::STEP, "steps[1] (window)"));
        assert!(has(&letter, header::OUTPUT_KEY, "bad"));
        assert!(has(&letter, header::WINDOW_START, "10000"));
        assert!(has(&letter, header::WINDOW_END, "20000"));
        assert!(has(&letter, header::SOURCE_OFFSET, "17"));
        assert!(has(&letter, header::SOURCE_TIMESTAMP, "25000"));

        let trigger = Trigger::Timer {
            task: 3,
            now_ms: 30_000,
        };
        let letter = DeadLetter::of_output("p", trigger, &failed_output(20_000));
        assert!(has(&letter, header::SOURCE_PARTITION, "3"));
        assert!(has(&letter, header::TIMER, "30000"));
        assert!(letter.header(header::SOURCE_OFFSET).is_none());
        assert!(letter.header(header::SOURCE_TOPIC).is_none());
    }

    #[test]
    fn a_dead_letter_over_the_limit_is_cut_to_fit() {
        let mut letter = input_letter(&[b'x'; 10_000]);
        letter.fit(1_488, 0);
        assert!(letter.size() <= 1_488, "{}", letter.size());
        assert!(has(&letter, header::TRUNCATED, "original=10000 bytes"));
        let payload = letter.payload.as_deref().unwrap_or_default();
        assert!(payload.len() > 500, "as much of the value as fits");
        assert!(has(&letter, "trace", "abc"), "the rest is kept");
        assert!(has(&letter, header::REASON, "decode"));

        // Under the limit: untouched.
        let mut small = input_letter(b"nope");
        small.fit(1_488, 0);
        assert_eq!(small, input_letter(b"nope"));
    }

    #[test]
    fn a_dead_letter_whose_key_and_headers_are_too_large_still_fits() {
        let original = OwnedHeaders::new().insert(Header {
            key: "big",
            value: Some(&[b'h'; 3_000][..]),
        });
        let failure = Failure {
            reason: FailureReason::Eval,
            at: "steps[0] (filter)".into(),
            message: "e".repeat(2_000),
        };
        let key = vec![b'k'; 2_000];
        let mut letter = DeadLetter::of_input(
            "p",
            &origin(),
            None,
            &failure,
            Some(&key),
            Some(&[b'x'; 5_000]),
            Some(&original),
        );
        letter.fit(488, 0);
        assert!(letter.size() <= 488, "{}", letter.size());
        assert!(has(&letter, header::REASON, "eval"));
        let note = String::from_utf8_lossy(letter.header(header::TRUNCATED).unwrap_or_default())
            .into_owned();
        assert!(
            note.starts_with(
                "original=5000 bytes; original headers dropped; key original=2000 bytes"
            ),
            "{note}"
        );
        assert!(letter.header("big").is_none());
    }

    #[test]
    fn a_timestamp_the_broker_would_refuse_is_dropped() {
        let origin = origin();
        let trigger = Trigger::Record {
            origin: &origin,
            timestamp: None,
        };
        let now = 1_800_000_000_000;
        let mut letter = DeadLetter::of_output("p", trigger, &failed_output(now + 7_200_000));
        letter.fit(1_000_000, now);
        assert_eq!(letter.timestamp, None);
        let kept = (now + 7_200_000).to_string();
        assert!(has(&letter, header::OUTPUT_TIMESTAMP, &kept));
    }
}

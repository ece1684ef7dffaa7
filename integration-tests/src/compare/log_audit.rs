//! The log audit at the end of a run: the ERROR and WARN lines Millrace
//! printed. A healthy run logs no ERROR (an operator's alerting pages on
//! them), so the report says how many there were and shows the first few.
//!
//! Millrace's lines (its own and librdkafka's, through `tracing`) start
//! with an RFC 3339 UTC timestamp followed by the level; the Kafka Streams
//! peer's logs have another shape and are not counted.

use std::path::Path;

use serde::Serialize;

/// ERROR and WARN lines found in Millrace's logs.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LogAudit {
    pub logs: usize,
    pub errors: usize,
    pub warnings: usize,
    /// The first ERROR lines (at most [`SHOWN`]).
    pub first_errors: Vec<String>,
}

/// ERROR lines quoted in the report.
const SHOWN: usize = 5;

/// Reads every `*.log` file directly under `dir`.
pub fn audit(dir: &Path) -> LogAudit {
    let mut audit = LogAudit::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return audit;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut millrace = false;
        for line in text.lines() {
            match level(line) {
                Some("ERROR") => {
                    millrace = true;
                    audit.errors += 1;
                    if audit.first_errors.len() < SHOWN {
                        audit.first_errors.push(line.chars().take(300).collect());
                    }
                }
                Some("WARN") => {
                    millrace = true;
                    audit.warnings += 1;
                }
                Some(_) => millrace = true,
                None => {}
            }
        }
        if millrace {
            audit.logs += 1;
        }
    }
    audit
}

/// The level of a `tracing` line (`2026-12-06T04:23:32.301461Z  WARN ...`).
fn level(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let stamp = words.next()?;
    let looks_like_time = stamp.ends_with('Z') && stamp.contains('T') && stamp.starts_with("20");
    let level = words.next()?;
    (looks_like_time && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level))
        .then_some(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_millrace_levels_and_ignores_other_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.log"),
            "2026-12-06T04:23:32.301461Z  INFO millrace::cli: serving\n\
             2026-12-06T04:23:33.000000Z ERROR librdkafka: boom\n\
             2026-12-06T04:23:34.000000Z  WARN millrace::runtime: slow\n\
             [main] ERROR org.apache.kafka.streams: not ours\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("b.txt"), "2026-12-06T04:23:33Z ERROR x\n").expect("write");
        let a = audit(dir.path());
        assert_eq!((a.logs, a.errors, a.warnings), (1, 1, 1));
        assert!(a.first_errors[0].contains("boom"));
    }
}

//! Log setup: human-readable lines by default, JSON with `--log-format json`.
//! The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stderr so that commands whose
/// stdout is meant for people or scripts (`validate`, `topics create`) keep
/// it clean.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Kafka client context for readers that ask for end-of-partition events
/// (`enable.partition.eof`): the gateway's tail and history readers, the
/// registry's log reader, the state restorer. librdkafka reports reaching
/// the end of a partition as a global error too, which rust-rdkafka's
/// default context logs at ERROR: an operator alerting on ERROR would be
/// paged by normal operation. Here it is dropped (the reader sees the same
/// event in its poll); every other client error is logged as a warning,
/// since librdkafka retries them itself and the reader decides what is
/// fatal.
pub struct KafkaLog {
    /// Which reader this is, for the log line.
    pub role: &'static str,
}

impl rdkafka::ClientContext for KafkaLog {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::warn!(role = self.role, %error, reason, "Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for KafkaLog {}

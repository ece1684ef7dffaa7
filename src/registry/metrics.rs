//! Prometheus metrics of a registry instance, served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// All metrics of one registry process, on a registry of its own.
pub struct RegistryMetrics {
    registry: Registry,
    /// API requests answered, by method, route template and status.
    pub requests: IntCounterVec,
    /// Records of the schemas topic applied to the state.
    pub records_read: IntCounter,
    /// Records skipped: undecodable, or contradicting the state.
    pub records_skipped: IntCounter,
    /// Write transactions, by outcome (`committed`, `retried`, `failed`).
    pub writes: IntCounterVec,
    /// Time of one write: commit plus reading the record back.
    pub write_seconds: Histogram,
    /// Times this instance became the writer (fencing the previous one).
    pub writer_epochs: IntCounter,
    /// Subjects with at least one live version.
    pub subjects: IntGauge,
    /// Distinct schemas (ids) in use.
    pub schemas: IntGauge,
    /// The highest schema id allocated.
    pub max_id: IntGauge,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric definitions are static; an error here is a programming bug
    // caught by the first test run, never something input can cause.
    result.expect("valid metric definition")
}

impl RegistryMetrics {
    pub fn new() -> RegistryMetrics {
        let registry = Registry::new();
        crate::metrics::register_process_metrics(&registry, "registry");
        let requests = must(IntCounterVec::new(
            Opts::new(
                "millrace_registry_requests_total",
                "Registry API requests answered",
            ),
            &["method", "route", "status"],
        ));
        let records_read = must(IntCounter::new(
            "millrace_registry_records_read_total",
            "Records of the schemas topic applied",
        ));
        let records_skipped = must(IntCounter::new(
            "millrace_registry_records_skipped_total",
            "Records of the schemas topic skipped as invalid or contradictory",
        ));
        let writes = must(IntCounterVec::new(
            Opts::new(
                "millrace_registry_writes_total",
                "Write transactions to the schemas topic, by outcome",
            ),
            &["outcome"],
        ));
        let write_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "millrace_registry_write_seconds",
                "Time to commit a write and read it back",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        ));
        let writer_epochs = must(IntCounter::new(
            "millrace_registry_writer_epochs_total",
            "Times this instance took the writer role",
        ));
        let subjects = must(IntGauge::new(
            "millrace_registry_subjects",
            "Subjects with at least one live version",
        ));
        let schemas = must(IntGauge::new(
            "millrace_registry_schemas",
            "Distinct schemas in use",
        ));
        let max_id = must(IntGauge::new(
            "millrace_registry_max_schema_id",
            "The highest schema id allocated",
        ));
        // Known outcomes start at zero (rates and alerts work from the start).
        for outcome in ["committed", "retried", "failed"] {
            writes.with_label_values(&[outcome]);
        }
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(records_read.clone()),
            Box::new(records_skipped.clone()),
            Box::new(writes.clone()),
            Box::new(write_seconds.clone()),
            Box::new(writer_epochs.clone()),
            Box::new(subjects.clone()),
            Box::new(schemas.clone()),
            Box::new(max_id.clone()),
        ] {
            must(registry.register(collector));
        }
        RegistryMetrics {
            registry,
            requests,
            records_read,
            records_skipped,
            writes,
            write_seconds,
            writer_epochs,
            subjects,
            schemas,
            max_id,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        RegistryMetrics::new()
    }
}

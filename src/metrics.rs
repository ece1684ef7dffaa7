//! Prometheus metrics of a running pipeline, served at `/metrics`.
//!
//! Record counters move when a transaction commits, not when a record is
//! read: an aborted transaction is replayed, and counting it twice would
//! make the counters disagree with what `read_committed` readers see.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All metrics of one process, on a registry of its own.
pub struct Metrics {
    pub registry: Registry,
    /// Records consumed and committed, by source topic.
    pub records_in: IntCounterVec,
    /// Records produced and committed, by output topic.
    pub records_out: IntCounterVec,
    /// Records sent to the dead-letter topic and committed, by source topic
    /// and reason.
    pub records_dead_lettered: IntCounterVec,
    /// Time to commit one transaction (flush, offsets, commit).
    pub commit_seconds: Histogram,
    /// Transactions ended, by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Records between this instance's position and the last stable offset,
    /// per assigned partition.
    pub consumer_lag: IntGaugeVec,
    /// Partitions currently assigned to this instance.
    pub assigned_partitions: IntGauge,
    /// Times the Kafka clients were torn down and rebuilt after an error.
    pub restarts: IntCounter,
    /// Store restores from changelogs, by store and kind (`tail`: from the
    /// local copy's offset; `full`: no local copy).
    pub state_restores: IntCounterVec,
    /// Changelog records replayed into local stores, by store.
    pub state_restored_records: IntCounterVec,
    /// Time to restore one store of one task.
    pub state_restore_seconds: Histogram,
    /// Bytes of state writes buffered in the open transaction.
    pub state_pending_bytes: IntGauge,
    /// Local task states deleted (and restored whole) because they no
    /// longer matched their changelog.
    pub state_wipes: IntCounter,
    /// Task directories deleted because this instance had not owned them
    /// for `state.cleanup_delay`.
    pub state_dirs_cleaned: IntCounter,
    /// Records held back (their partition paused, to be read again) because
    /// the schema registry could not be reached for their writer schema.
    pub registry_waits: IntCounter,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric definitions are static; an error here is a programming bug
    // caught by the first test run, never something input can cause.
    result.expect("valid metric definition")
}

/// Registers on `registry` what every Millrace process exports besides its
/// own metrics: `millrace_build_info{component,version}` (always 1; what
/// dashboards and alert rules use to tell Millrace's processes from others
/// in the same scrape job, see `deploy/`) and the standard `process_*`
/// metrics (resident memory, CPU seconds, open and maximum file
/// descriptors, start time).
pub fn register_process_metrics(registry: &Registry, component: &str) {
    let info = must(IntGaugeVec::new(
        Opts::new(
            "millrace_build_info",
            "Always 1: the Millrace component and version of this process",
        ),
        &["component", "version"],
    ));
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    must(registry.register(Box::new(info)));
    #[cfg(target_os = "linux")]
    must(registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )));
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        register_process_metrics(&registry, "pipeline");
        let records_in = must(IntCounterVec::new(
            Opts::new(
                "millrace_records_in_total",
                "Records consumed and committed",
            ),
            &["topic"],
        ));
        let records_out = must(IntCounterVec::new(
            Opts::new(
                "millrace_records_out_total",
                "Records produced and committed",
            ),
            &["topic"],
        ));
        let records_dead_lettered = must(IntCounterVec::new(
            Opts::new(
                "millrace_records_dead_lettered_total",
                "Records sent to the dead-letter topic and committed",
            ),
            &["topic", "reason"],
        ));
        let commit_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "millrace_transaction_commit_seconds",
                "Time to commit one transaction",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        ));
        let transactions = must(IntCounterVec::new(
            Opts::new(
                "millrace_transactions_total",
                "Transactions ended, by outcome (committed, aborted, abandoned: a producer stuck in librdkafka)",
            ),
            &["outcome"],
        ));
        let consumer_lag = must(IntGaugeVec::new(
            Opts::new(
                "millrace_consumer_lag",
                "Records between the consumer position and the last stable offset",
            ),
            &["topic", "partition"],
        ));
        let assigned_partitions = must(IntGauge::new(
            "millrace_assigned_partitions",
            "Partitions assigned to this instance",
        ));
        let restarts = must(IntCounter::new(
            "millrace_client_restarts_total",
            "Times the Kafka clients were rebuilt after an error",
        ));
        let state_restores = must(IntCounterVec::new(
            Opts::new(
                "millrace_state_restores_total",
                "Store restores, by kind (tail or full)",
            ),
            &["store", "kind"],
        ));
        let state_restored_records = must(IntCounterVec::new(
            Opts::new(
                "millrace_state_restored_records_total",
                "Changelog records replayed into local stores",
            ),
            &["store"],
        ));
        let state_restore_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "millrace_state_restore_seconds",
                "Time to restore one store of one task",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        ));
        let state_pending_bytes = must(IntGauge::new(
            "millrace_state_pending_bytes",
            "Bytes of state writes buffered in the open transaction",
        ));
        let state_wipes = must(IntCounter::new(
            "millrace_state_wipes_total",
            "Local task states deleted and restored whole because they no longer matched \
             their changelog",
        ));
        let state_dirs_cleaned = must(IntCounter::new(
            "millrace_state_dirs_cleaned_total",
            "Task directories deleted after state.cleanup_delay without ownership",
        ));
        let registry_waits = must(IntCounter::new(
            "millrace_registry_unavailable_total",
            "Records held back because the schema registry could not be reached",
        ));
        // Known outcomes start at zero (rates and alerts work from the start).
        for outcome in ["committed", "aborted", "abandoned"] {
            transactions.with_label_values(&[outcome]);
        }
        for collector in [
            Box::new(records_in.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(records_out.clone()),
            Box::new(records_dead_lettered.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(transactions.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(assigned_partitions.clone()),
            Box::new(restarts.clone()),
            Box::new(state_restores.clone()),
            Box::new(state_restored_records.clone()),
            Box::new(state_restore_seconds.clone()),
            Box::new(state_pending_bytes.clone()),
            Box::new(state_wipes.clone()),
            Box::new(state_dirs_cleaned.clone()),
            Box::new(registry_waits.clone()),
        ] {
            must(registry.register(collector));
        }
        Metrics {
            registry,
            records_in,
            records_out,
            records_dead_lettered,
            commit_seconds,
            transactions,
            consumer_lag,
            assigned_partitions,
            restarts,
            state_restores,
            state_restored_records,
            state_restore_seconds,
            state_pending_bytes,
            state_wipes,
            state_dirs_cleaned,
            registry_waits,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.records_in.with_label_values(&["vitals"]).inc_by(3);
        m.transactions.with_label_values(&["committed"]).inc();
        let text = m.render();
        assert!(
            text.contains("millrace_records_in_total{topic=\"vitals\"} 3"),
            "{text}"
        );
        assert!(text.contains("millrace_transactions_total{outcome=\"committed\"} 1"));
    }
}

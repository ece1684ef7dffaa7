//! Prometheus metrics of the gateway, served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All gateway metrics, on a registry of their own.
pub struct GatewayMetrics {
    pub registry: Registry,
    /// Subscribers connected now, by transport (`sse`, `ws`).
    pub subscribers: IntGaugeVec,
    /// Records sent, by transport and topic.
    pub events_sent: IntCounterVec,
    /// Bytes of messages sent, by transport and topic.
    pub bytes_sent: IntCounterVec,
    /// Subscriptions ended, by reason (`client`, `lagged`, `shutdown`,
    /// `heartbeat`, `write_timeout`, `error`).
    pub disconnects: IntCounterVec,
    /// Kafka record timestamp to hand-over to the connection, by transport.
    pub delivery_latency: HistogramVec,
    /// Requests refused, by HTTP status.
    pub rejected: IntCounterVec,
    /// Records dropped by the `skip` policy, and replaced by `conflate`.
    pub skipped: IntCounterVec,
    pub conflated: IntCounterVec,
    /// Records whose filter failed to evaluate (not delivered).
    pub filter_errors: IntCounterVec,
    /// Records read by the live tails, by topic.
    pub tail_records: IntCounterVec,
    /// Subscribers reading history from Kafka now.
    pub history_readers: IntGauge,
    /// Connections open now (API listener).
    pub connections: IntGauge,
    /// Connections closed at accept, by limit (`total`, `per_ip`).
    pub connections_refused: IntCounterVec,
    /// Times a subscriber fell off a live tail's shared buffer and went back
    /// to reading Kafka, by topic.
    pub live_lagged: IntCounterVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric definitions are static; an error is a programming bug caught
    // by the first test run, never something input can cause.
    result.expect("valid metric definition")
}

impl GatewayMetrics {
    pub fn new() -> GatewayMetrics {
        let registry = Registry::new();
        crate::metrics::register_process_metrics(&registry, "gateway");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let events_sent = counter(
            "millrace_gateway_events_sent_total",
            "Records sent to subscribers",
            &["transport", "topic"],
        );
        let bytes_sent = counter(
            "millrace_gateway_bytes_sent_total",
            "Bytes of messages sent to subscribers",
            &["transport", "topic"],
        );
        let disconnects = counter(
            "millrace_gateway_disconnects_total",
            "Subscriptions ended, by reason",
            &["reason"],
        );
        let rejected = counter(
            "millrace_gateway_rejected_total",
            "Requests refused, by HTTP status",
            &["status"],
        );
        let skipped = counter(
            "millrace_gateway_skipped_records_total",
            "Records dropped for slow subscribers under the skip policy",
            &["topic"],
        );
        let conflated = counter(
            "millrace_gateway_conflated_records_total",
            "Waiting records replaced by a newer one of the same key (conflate policy)",
            &["topic"],
        );
        let filter_errors = counter(
            "millrace_gateway_filter_errors_total",
            "Records on which a subscriber's filter failed (not delivered)",
            &["topic"],
        );
        let tail_records = counter(
            "millrace_gateway_tail_records_total",
            "Records read by the live tail",
            &["topic"],
        );
        let live_lagged = counter(
            "millrace_gateway_live_lagged_total",
            "Subscribers that fell off the live tail's buffer and re-read from Kafka",
            &["topic"],
        );
        let subscribers = must(IntGaugeVec::new(
            Opts::new("millrace_gateway_subscribers", "Subscribers connected"),
            &["transport"],
        ));
        must(registry.register(Box::new(subscribers.clone())));
        let history_readers = must(IntGauge::new(
            "millrace_gateway_history_readers",
            "Subscribers reading history from Kafka",
        ));
        must(registry.register(Box::new(history_readers.clone())));
        let connections = must(IntGauge::new(
            "millrace_gateway_connections",
            "Connections open on the API listener",
        ));
        must(registry.register(Box::new(connections.clone())));
        let connections_refused = counter(
            "millrace_gateway_connections_refused_total",
            "Connections closed at accept, by the limit reached",
            &["limit"],
        );
        let delivery_latency = must(HistogramVec::new(
            HistogramOpts::new(
                "millrace_gateway_delivery_latency_seconds",
                "Kafka record timestamp to hand-over to the subscriber's connection",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["transport"],
        ));
        must(registry.register(Box::new(delivery_latency.clone())));
        // Series with known label values start at zero rather than appear
        // at their first event, so that rates and alerts on them work from
        // the start (Prometheus' "avoid missing metrics").
        for transport in ["sse", "ws"] {
            subscribers.with_label_values(&[transport]);
            delivery_latency.with_label_values(&[transport]);
        }
        for reason in [
            "client",
            "lagged",
            "shutdown",
            "heartbeat",
            "write_timeout",
            "error",
        ] {
            disconnects.with_label_values(&[reason]);
        }
        for limit in ["total", "per_ip"] {
            connections_refused.with_label_values(&[limit]);
        }
        GatewayMetrics {
            registry,
            subscribers,
            events_sent,
            bytes_sent,
            disconnects,
            delivery_latency,
            rejected,
            skipped,
            conflated,
            filter_errors,
            tail_records,
            history_readers,
            connections,
            connections_refused,
            live_lagged,
        }
    }

    /// Starts the per-topic series of a bridged topic at zero.
    pub fn init_topic(&self, topic: &str) {
        for counter in [
            &self.skipped,
            &self.conflated,
            &self.filter_errors,
            &self.tail_records,
            &self.live_lagged,
        ] {
            counter.with_label_values(&[topic]);
        }
        for transport in ["sse", "ws"] {
            self.events_sent.with_label_values(&[transport, topic]);
            self.bytes_sent.with_label_values(&[transport, topic]);
        }
    }

    /// The counters one subscription updates on every message, looked up
    /// once: a label lookup hashes and locks, and a subscriber sends
    /// thousands of messages.
    pub fn sent_by(&self, transport: &str, topic: &str) -> SentMetrics {
        SentMetrics {
            events: self.events_sent.with_label_values(&[transport, topic]),
            bytes: self.bytes_sent.with_label_values(&[transport, topic]),
            latency: self.delivery_latency.with_label_values(&[transport]),
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

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}

/// A subscription's per-message metrics (see [`GatewayMetrics::sent_by`]).
pub struct SentMetrics {
    events: IntCounter,
    bytes: IntCounter,
    latency: Histogram,
}

impl SentMetrics {
    /// Counts a message handed to a connection; `timestamp` (a live
    /// record's Kafka timestamp) feeds the delivery latency histogram.
    pub fn sent(&self, bytes: usize, timestamp: Option<i64>) {
        self.events.inc();
        self.bytes.inc_by(bytes as u64);
        if let Some(ts) = timestamp {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            // Clamp clock skew below zero.
            let secs = (now_ms - ts).max(0) as f64 / 1000.0;
            self.latency.observe(secs);
        }
    }
}

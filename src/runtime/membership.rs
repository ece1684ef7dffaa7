//! This instance's membership of its consumer group, seen from the
//! processing loop: saying what the instance waits for while the group has
//! not given it partitions, and leaving the group on a graceful stop.
//!
//! Static membership (KIP-345, `kafka.static_membership`, the default) lets
//! an instance restarted after a crash take its partitions back at once.
//! Its cost is on the way out: librdkafka never sends a static member's
//! LeaveGroup while the consumer closes (KIP-345: a static member restarting
//! must not cause a rebalance), so the group would keep a stopped
//! instance's partitions for `session.timeout.ms`. Unsubscribing *before*
//! the close does send it, which is how `shutdown.leave_group` works.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use tracing::{info, warn};

use crate::config::PipelineConfig;

/// How often the loop repeats that it is still waiting for the group.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(10);

/// librdkafka's `session.timeout.ms` when the configuration sets none.
const DEFAULT_SESSION_TIMEOUT_MS: &str = "45000";

/// Longest wait for the group to take a leaving member's partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches whether the group has given this member its share, and logs what
/// the instance waits for when it has not for a while. A newcomer whose
/// pipeline sits silent after a restart otherwise reads it as a hang.
pub struct GroupWait {
    in_group: Arc<AtomicBool>,
    waiting_since: Option<Instant>,
    next_report: Option<Instant>,
    group: String,
    session_timeout_ms: String,
    static_member: Option<String>,
}

impl GroupWait {
    pub fn new(config: &PipelineConfig, in_group: Arc<AtomicBool>) -> Self {
        let session_timeout_ms = config
            .kafka
            .consumer_properties
            .get("session.timeout.ms")
            .or_else(|| config.kafka.properties.get("session.timeout.ms"))
            .cloned()
            .unwrap_or_else(|| DEFAULT_SESSION_TIMEOUT_MS.to_string());
        GroupWait {
            in_group,
            waiting_since: None,
            next_report: None,
            group: config.group_id(),
            session_timeout_ms,
            static_member: config.kafka.static_membership.then(|| config.instance_id()),
        }
    }

    /// Called on the loop's timed chores.
    pub fn check(&mut self, now: Instant) {
        if self.in_group.load(Ordering::SeqCst) {
            if let Some(since) = self.waiting_since.take()
                && self
                    .next_report
                    .take()
                    .is_some_and(|n| n > since + WAIT_REPORT_EVERY)
            {
                // The wait was reported: say that it is over.
                info!(
                    group = %self.group,
                    waited_s = now.duration_since(since).as_secs(),
                    "the group assigned this instance its partitions"
                );
            }
            return;
        }
        let since = *self.waiting_since.get_or_insert(now);
        // The first report comes after WAIT_REPORT_EVERY (a normal join
        // takes a few seconds), then one every WAIT_REPORT_EVERY.
        let next = *self.next_report.get_or_insert(since + WAIT_REPORT_EVERY);
        if now < next {
            return;
        }
        self.next_report = Some(now + WAIT_REPORT_EVERY);
        let waited_s = now.duration_since(since).as_secs();
        match &self.static_member {
            Some(instance) => info!(
                group = %self.group,
                group_instance_id = %instance,
                waited_s,
                session_timeout_ms = %self.session_timeout_ms,
                "waiting for the consumer group to assign partitions: the coordinator rebalances \
                 once every member it knows has rejoined, and waits for a member that stopped \
                 without leaving (killed, or shut down with shutdown.leave_group: false) until \
                 its session times out; a restart of this same instance is recognised by its \
                 group.instance.id at once"
            ),
            None => info!(
                group = %self.group,
                waited_s,
                session_timeout_ms = %self.session_timeout_ms,
                "waiting for the consumer group to assign partitions: the coordinator rebalances \
                 once every member it knows has rejoined, and waits for a member that stopped \
                 without leaving (killed, like this instance's previous run may have been) until \
                 its session times out; kafka.static_membership: true makes a restarted \
                 instance take its partitions back at once"
            ),
        }
    }
}

/// Leaves the group before the consumer closes, so that a static member's
/// partitions move to the other instances at once (a dynamic member leaves
/// in the close anyway). The caller has committed or aborted the open
/// transaction: the revocation this causes finds nothing to commit.
pub fn leave_group<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    consumer.unsubscribe();
    // The revocation (the rebalance callback runs inside poll), then the
    // LeaveGroup request, happen on the next polls. librdkafka forgets the
    // member id when it sends the request, and a close waits for the answer
    // of a request in flight: an empty member id means the close may begin.
    // A message polled here is never processed; the next owner reads it
    // from the committed offset.
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        if member_id(consumer).is_empty() {
            info!("left the consumer group");
            return;
        }
    }
    warn!(
        timeout = ?LEAVE_TIMEOUT,
        "the consumer had not left the group in time; closing anyway (the group keeps \
         its partitions until session.timeout.ms passes)"
    );
}

/// The member id the group coordinator gave this consumer; empty before it
/// joined and after it left. rust-rdkafka does not expose it.
fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> String {
    use rdkafka::bindings::{rd_kafka_mem_free, rd_kafka_memberid};
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is a live consumer handle for the duration of the call.
    // rd_kafka_memberid returns NULL or a NUL-terminated copy that the
    // caller owns and must free with rd_kafka_mem_free, as done below.
    unsafe {
        let id = rd_kafka_memberid(rk);
        if id.is_null() {
            return String::new();
        }
        let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rd_kafka_mem_free(rk, id.cast());
        text
    }
}

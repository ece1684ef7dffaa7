//! One fault run: a stateful pipeline (a running count and sum per key, the
//! `reduce` step) processes input that keeps arriving while faults of one
//! kind hit it at random instants; then the input stops, the pipeline
//! catches up, its local state is deleted and rebuilt from the changelog,
//! one more record per key probes that state, and every committed output is
//! checked against the reference (see [`check`](super::check)).
//!
//! The fault matrix ([`Matrix`]): the pipeline SIGKILLed and restarted; the
//! broker SIGKILLed and restarted on its data; the network between the
//! pipeline and the broker made slow, silent, reset, narrow or cut
//! (Toxiproxy). The test input and the reader use the broker directly, so
//! network faults hit Millrace alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::Message;
use serde_json::json;

use super::check::{Reference, Update, Verdict, check};
use super::companions::{GatewayCheck, GatewayWatch, RegistryCheck, RegistryWatch};
use super::{PrivateBroker, Toxiproxy, free_ports};
use crate::registry::Registry;
use crate::{
    Millrace, create_topics_on, group_caught_up_on, produce_to, producer_on, progress,
    read_committed_on, unique,
};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

const PARTITIONS: i32 = 4;
const KEYS: u64 = 64;
/// Input records per batch, and the pause between batches: up to 2,000
/// records/s, little enough for a 2-core machine shared with the broker,
/// in small batches so that input never pauses long and a transaction is
/// open at almost every instant (with 500 every 250 ms, most of the time
/// none was, and a broker kill could miss every transaction).
const BATCH: u64 = 100;
const BATCH_PAUSE: Duration = Duration::from_millis(50);
/// The pipeline's commit timeout (`commit.timeout`). The blackhole lasts
/// longer than this, than the transaction timeout (10 s, see
/// `runtime/clients.rs`) and than the session timeout (6 s, below).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
const BLACKHOLE: Duration = Duration::from_secs(15);
/// Longest wait for the pipeline to process all input after the faults.
const CATCH_UP: Duration = Duration::from_secs(240);
/// Before each fault the pipeline must have committed this many more
/// records, so that every fault lands while transactions flow (a broker
/// restart alone takes 5–15 s, after which clients reconnect slowly).
const FLOWING: f64 = 1_000.0;
/// Longest wait for that: past it, the pipeline did not recover.
const RECOVERY: Duration = Duration::from_secs(180);
/// The proxy's name in Toxiproxy.
const PROXY: &str = "kafka";

/// The kinds of fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Matrix {
    /// SIGKILL of the `millrace` process, restarted at once.
    PipelineKill,
    /// SIGKILL of the broker's JVM, restarted on the same data.
    BrokerKill,
    /// Toxiproxy between Millrace and the broker: latency with jitter, a
    /// blackhole longer than the timeouts, connection resets, a bandwidth
    /// limit, and the connection cut.
    Network,
    /// A replicated cluster ([`Lab::start_cluster`]) restarted one node at
    /// a time, each stopped gracefully (controlled shutdown) and started
    /// again, as an upgrade does.
    RollingRestart,
    /// SIGKILL of the node leading a partition the pipeline reads or
    /// writes (input, output or changelog), restarted after a while.
    LeaderKill,
    /// SIGKILL of the node hosting the pipeline's transaction coordinator
    /// (the leader of its `__transaction_state` partition), mid-transaction.
    CoordinatorKill,
}

impl Matrix {
    pub fn name(self) -> &'static str {
        match self {
            Matrix::PipelineKill => "pipeline SIGKILL",
            Matrix::BrokerKill => "broker SIGKILL",
            Matrix::Network => "network",
            Matrix::RollingRestart => "rolling restart",
            Matrix::LeaderKill => "partition leader SIGKILL",
            Matrix::CoordinatorKill => "transaction coordinator SIGKILL",
        }
    }

    /// Whether the matrix needs a replicated cluster; its runs also keep a
    /// gateway subscriber and a registry busy beside the pipeline.
    pub fn is_cluster(self) -> bool {
        matches!(
            self,
            Matrix::RollingRestart | Matrix::LeaderKill | Matrix::CoordinatorKill
        )
    }
}

/// The network faults, in the order a run cycles through them. The last is
/// this single-node lab's form of a slow changelog leader: the pipeline is
/// SIGKILLed, its local state deleted, and it restarts to restore the
/// whole changelog through a slow, narrow link that is lifted mid-restore.
pub const NETWORK_FAULTS: [&str; 6] = [
    "latency+jitter",
    "blackhole",
    "reset_peer",
    "bandwidth",
    "connection cut",
    "slow restore",
];

/// Of the pipeline SIGKILLs, one in this many is followed by a second kill
/// while the restarted process starts up (joins, restores, opens its
/// producer) rather than while it processes.
const STARTUP_KILL_EVERY: u32 = 3;

/// What the pipeline promises in a run: exactly-once (`commit.guarantee`'s
/// default), or at-least-once, a control run showing that the check sees
/// what the faults do to a pipeline without transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    ExactlyOnce,
    AtLeastOnce,
}

impl Promise {
    fn guarantee(self) -> &'static str {
        match self {
            Promise::ExactlyOnce => "exactly_once",
            Promise::AtLeastOnce => "at_least_once",
        }
    }
}

/// A private broker, and a Toxiproxy in front of it when network faults
/// are wanted.
pub struct Lab {
    pub broker: PrivateBroker,
    proxy: Option<Toxiproxy>,
    /// Where the pipeline connects: the proxy, or the broker itself.
    pipeline_bootstrap: String,
}

impl Lab {
    /// A private broker on free ports; the pipeline connects to it
    /// directly.
    pub fn start() -> anyhow::Result<Lab> {
        let port = free_ports(3)?;
        let broker = PrivateBroker::start(port)?;
        let pipeline_bootstrap = broker.bootstrap().to_string();
        Ok(Lab {
            broker,
            proxy: None,
            pipeline_bootstrap,
        })
    }

    /// A private broker with a Toxiproxy in front: the pipeline connects
    /// through the proxy (and, from the broker's metadata, stays behind
    /// it). Fails, saying how to install it, when toxiproxy is missing.
    pub fn start_proxied() -> anyhow::Result<Lab> {
        let toxiproxy = Toxiproxy::start()?;
        let port = free_ports(4)?;
        let proxy_port = port + 3;
        let broker = PrivateBroker::start_proxied(port, proxy_port)?;
        let listen = format!("127.0.0.1:{proxy_port}");
        toxiproxy.create_proxy(
            PROXY,
            &listen,
            &format!("127.0.0.1:{}", broker.proxied_port()),
        )?;
        Ok(Lab {
            broker,
            proxy: Some(toxiproxy),
            pipeline_bootstrap: listen,
        })
    }

    /// A private cluster of three KRaft nodes (replication factor 3,
    /// `min.insync.replicas` 2); the pipeline bootstraps from all three.
    pub fn start_cluster() -> anyhow::Result<Lab> {
        // Node n takes base + 10(n-1) and the port above it.
        let port = free_ports(22)?;
        let broker = PrivateBroker::start_cluster(port, 3)?;
        let pipeline_bootstrap = broker.bootstrap().to_string();
        Ok(Lab {
            broker,
            proxy: None,
            pipeline_bootstrap,
        })
    }

    fn proxy(&self) -> anyhow::Result<&Toxiproxy> {
        self.proxy
            .as_ref()
            .context("network faults need Lab::start_proxied")
    }
}

/// What a run did and what its output got wrong.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub matrix: Matrix,
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Input records (including the final probes).
    pub records_in: u64,
    pub verdict: Verdict,
    /// Times the pipeline rebuilt its Kafka clients (while it was not
    /// killed: the metric restarts with the process).
    pub client_rebuilds: u64,
    /// Broker restart times, for broker faults.
    pub broker_restarts: Vec<Duration>,
    pub elapsed: Duration,
    /// The end of the pipeline's log when the verdict is not exact.
    pub log_tail: String,
    /// Cluster runs: what the gateway's subscriber and the registry saw.
    pub gateway: Option<GatewayCheck>,
    pub registry: Option<RegistryCheck>,
}

fn key(i: u64) -> String {
    format!("key-{:02}", i % KEYS)
}

fn value(i: u64) -> i64 {
    ((i * 7_919) % 1_000) as i64 + 1
}

fn records(range: std::ops::Range<u64>) -> Vec<(String, i32, Vec<u8>)> {
    range
        .map(|i| {
            let body = json!({"v": value(i), "i": i});
            (
                key(i),
                ((i % KEYS) % PARTITIONS as u64) as i32,
                body.to_string().into_bytes(),
            )
        })
        .collect()
}

fn pipeline_yaml(
    name: &str,
    input: &str,
    output: &str,
    dead: &str,
    state: &str,
    promise: Promise,
) -> String {
    format!(
        r#"
pipeline: {name}
kafka:
  group_id: {name}
  instance_id: {name}-a
  static_membership: true
  consumer_properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
sources:
  - topic: {input}
steps:
  - reduce:
      value: value.v
      aggregates: [count, sum]
sinks:
  out: {{topic: {output}}}
dead_letter:
  topic: {dead}
state:
  dir: {state}
commit:
  interval: 100ms
  timeout: {timeout}s
  guarantee: {guarantee}
http:
  listen: "127.0.0.1:{{ops_port}}"
"#,
        timeout = COMMIT_TIMEOUT.as_secs(),
        guarantee = promise.guarantee()
    )
}

/// Produces batches of input to the broker directly until `stop`; returns
/// how many records it produced.
fn feed(bootstrap: String, input: String, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Runtime::new()?;
    // Idempotent, so retries across a broker restart neither lose nor
    // repeat input; reconnecting within a second of the broker's return
    // (librdkafka backs off up to 10 s) keeps input flowing between faults.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("reconnect.backoff.max.ms", "1000")
        .create()?;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        rt.block_on(produce_to(&producer, &input, &records(n..n + BATCH)))?;
        n += BATCH;
        std::thread::sleep(BATCH_PAUSE);
    }
    Ok(n)
}

/// Runs `matrix` with `faults` faults at random instants drawn from `seed`.
pub fn run_scenario(
    lab: &Lab,
    matrix: Matrix,
    faults: usize,
    seed: u64,
) -> anyhow::Result<Outcome> {
    run_promising(lab, matrix, faults, seed, Promise::ExactlyOnce)
}

/// [`run_scenario`] with the pipeline promising `promise`.
pub fn run_promising(
    lab: &Lab,
    matrix: Matrix,
    faults: usize,
    seed: u64,
    promise: Promise,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let direct = lab.broker.bootstrap().to_string();
    let rt = tokio::runtime::Runtime::new()?;
    let name = unique("faults");
    let (input, output, dead) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dead"),
    );
    rt.block_on(create_topics_on(
        &direct,
        &[(&input, PARTITIONS), (&output, PARTITIONS), (&dead, 1)],
    ))?;
    let state = tempfile::tempdir()?;
    let yaml = pipeline_yaml(
        &name,
        &input,
        &output,
        &dead,
        &state.path().display().to_string(),
        promise,
    );
    progress(&format!(
        "{}: {faults} faults, seed {seed}, pipeline {name} via {}",
        matrix.name(),
        lab.pipeline_bootstrap
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (direct, input, stop) = (direct.clone(), input.clone(), stop.clone());
        std::thread::spawn(move || feed(direct, input, stop))
    };
    let mut millrace = Millrace::start_on(&lab.pipeline_bootstrap, &yaml)?;
    let mut companions = if matrix.is_cluster() {
        Some(Companions::start(&direct, &name, &output)?)
    } else {
        None
    };
    let task_dirs = state.path().join(&name);
    let target = Target {
        input: &input,
        output: &output,
        changelog: &format!("{name}-reduce-0-changelog"),
        transactional_id: &format!("millrace-{name}-{name}-a"),
        state_dir: &task_dirs,
    };
    let injected = inject_all(
        lab,
        &mut millrace,
        companions.as_mut(),
        &target,
        matrix,
        faults,
        seed,
    );
    stop.store(true, Ordering::SeqCst);
    let fed = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("the feeder panicked"))?;
    let Injected {
        counts,
        broker_restarts,
        rebuilds_before_kills,
    } = injected?;
    let fed = fed.context("feeding input")?;
    progress(&format!(
        "{}: faults done ({counts:?}), {fed} records fed; catching up",
        matrix.name()
    ));

    wait_caught_up(&direct, &name, &input, &mut millrace)?;
    let client_rebuilds =
        rebuilds_before_kills + millrace.metric("millrace_client_restarts_total")? as u64;
    millrace.stop_cleanly()?;

    // The final state, twice over: the local state is deleted, so the
    // restart rebuilds it from the changelog alone, and one more record per
    // key makes that state show in the output.
    std::fs::remove_dir_all(state.path().join(&name))
        .with_context(|| format!("deleting the local state of {name}"))?;
    let total = fed + KEYS;
    rt.block_on(produce_to(
        &producer_on(&direct),
        &input,
        &records(fed..total),
    ))?;
    millrace.restart()?;
    wait_caught_up(&direct, &name, &input, &mut millrace)?;
    millrace.stop_cleanly()?;

    let reference = Reference::of((0..total).map(|i| (key(i), value(i))));
    let consumed = read_input(&direct, &input)?;
    if consumed != reference {
        bail!(
            "the input topic does not hold what was produced ({} records read, {total} \
             produced): the broker lost or repeated input, so the output cannot be judged",
            consumed.records()
        );
    }
    let verdict = read_verdict(&direct, &output, &reference)?;
    let (gateway, registry) = match companions {
        Some(c) => {
            let (g, r) = c.finish(&direct, &output)?;
            (Some(g), Some(r))
        }
        None => (None, None),
    };
    let dead_letters = read_committed_on(&direct, &dead)?.len();
    if dead_letters > 0 {
        bail!("{dead_letters} dead letters; none expected");
    }
    let log_tail = if verdict.is_exact() {
        String::new()
    } else {
        millrace.log_tail(80)
    };
    Ok(Outcome {
        matrix,
        seed,
        faults: counts,
        records_in: total,
        verdict,
        client_rebuilds,
        broker_restarts,
        elapsed: started.elapsed(),
        log_tail,
        gateway,
        registry,
    })
}

/// What [`inject_all`] did.
struct Injected {
    counts: BTreeMap<&'static str, u64>,
    broker_restarts: Vec<Duration>,
    /// Client rebuilds counted by processes that were then SIGKILLed (a
    /// restarted process counts from zero).
    rebuilds_before_kills: u64,
}

/// Injects `faults` faults of `matrix`, each after a random stretch of
/// normal work, and checks after each that the pipeline is still running
/// (only its own SIGKILL may stop it).
fn inject_all(
    lab: &Lab,
    millrace: &mut Millrace,
    mut companions: Option<&mut Companions>,
    target: &Target<'_>,
    matrix: Matrix,
    faults: usize,
    seed: u64,
) -> anyhow::Result<Injected> {
    let (input, state_dir) = (target.input, target.state_dir);
    let direct = lab.broker.bootstrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut broker_restarts = Vec::new();
    let mut rebuilds_before_kills = 0;
    for n in 0..faults {
        let recovered = wait_flowing(millrace, input)?;
        let gap = Duration::from_millis(rng.random_range(500..4_000));
        std::thread::sleep(gap);
        let kind = match matrix {
            Matrix::PipelineKill => {
                millrace.kill()?;
                millrace.restart()?;
                if rng.random_ratio(1, STARTUP_KILL_EVERY) {
                    // Lands in start-up: the join, the restore, the
                    // producer's init_transactions, the first poll.
                    *counts.entry("pipeline SIGKILL").or_default() += 1;
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..2_500)));
                    millrace.kill()?;
                    millrace.restart()?;
                    "pipeline SIGKILL at start-up"
                } else {
                    "pipeline SIGKILL"
                }
            }
            Matrix::BrokerKill => {
                lab.broker.kill()?;
                std::thread::sleep(Duration::from_millis(rng.random_range(0..3_000)));
                broker_restarts.push(lab.broker.restart()?);
                "broker SIGKILL"
            }
            Matrix::Network => {
                let kind = NETWORK_FAULTS[n % NETWORK_FAULTS.len()];
                if kind == "slow restore" {
                    rebuilds_before_kills += rebuilds(millrace);
                    slow_restore(lab.proxy()?, millrace, state_dir, &mut rng)?;
                } else {
                    network_fault(lab.proxy()?, kind, &mut rng)?;
                }
                kind
            }
            Matrix::RollingRestart => {
                let node = (n % usize::from(lab.broker.nodes())) as u8 + 1;
                lab.broker.stop_node(node)?;
                std::thread::sleep(Duration::from_millis(rng.random_range(500..3_000)));
                broker_restarts.push(lab.broker.restart_node(node)?);
                "rolling restart"
            }
            Matrix::LeaderKill => {
                let topics = [target.input, target.output, target.changelog];
                let topic = topics[rng.random_range(0..topics.len())];
                let partition = rng.random_range(0..PARTITIONS);
                let node = leader_node(lab, direct, topic, partition)?;
                progress(&format!(
                    "killing node {node}, leader of {topic}[{partition}]"
                ));
                lab.broker.kill_node(node)?;
                std::thread::sleep(Duration::from_millis(rng.random_range(1_000..6_000)));
                broker_restarts.push(lab.broker.restart_node(node)?);
                "partition leader SIGKILL"
            }
            Matrix::CoordinatorKill => {
                let partition = transaction_state_partition(target.transactional_id);
                let node = leader_node(lab, direct, "__transaction_state", partition)?;
                progress(&format!(
                    "killing node {node}, coordinator of {} (__transaction_state[{partition}])",
                    target.transactional_id
                ));
                lab.broker.kill_node(node)?;
                std::thread::sleep(Duration::from_millis(rng.random_range(1_000..6_000)));
                broker_restarts.push(lab.broker.restart_node(node)?);
                "transaction coordinator SIGKILL"
            }
        };
        if let Some(c) = companions.as_deref_mut() {
            let took = c.registry_watch.write()?;
            progress(&format!(
                "the registry took a registration {took:?} after the fault"
            ));
        }
        *counts.entry(kind).or_default() += 1;
        progress(&format!(
            "{}: fault {} ({kind}) {gap:?} after the pipeline was flowing again \
             (which took {recovered:?})",
            matrix.name(),
            n + 1
        ));
        if !millrace.is_running() {
            bail!(
                "millrace exited after a {kind} fault; log:\n{}",
                millrace.log_tail(60)
            );
        }
    }
    Ok(Injected {
        counts,
        broker_restarts,
        rebuilds_before_kills,
    })
}

/// One network fault between the pipeline and the broker, held for a
/// while, then lifted.
fn network_fault(proxy: &Toxiproxy, kind: &str, rng: &mut StdRng) -> anyhow::Result<()> {
    let both = ["upstream", "downstream"];
    let toxic = |name: &str, toxic: &str, attributes: serde_json::Value| {
        for stream in both {
            proxy.add_toxic(
                PROXY,
                &format!("{name}-{stream}"),
                toxic,
                stream,
                attributes.clone(),
            )?;
        }
        anyhow::Ok(())
    };
    let lift = |name: &str| {
        for stream in both {
            proxy.remove_toxic(PROXY, &format!("{name}-{stream}"))?;
        }
        anyhow::Ok(())
    };
    let hold = |range: std::ops::Range<u64>, rng: &mut StdRng| {
        std::thread::sleep(Duration::from_millis(rng.random_range(range)));
    };
    match kind {
        "latency+jitter" => {
            toxic("latency", "latency", json!({"latency": 250, "jitter": 200}))?;
            hold(5_000..9_000, rng);
            lift("latency")
        }
        "blackhole" => {
            // Nothing passes and nothing is closed: the pipeline's requests
            // time out; lifting the toxic closes the connections.
            toxic("blackhole", "timeout", json!({"timeout": 0}))?;
            std::thread::sleep(BLACKHOLE);
            lift("blackhole")
        }
        "reset_peer" => {
            // Every connection that sends anything is reset (TCP RST).
            toxic("reset", "reset_peer", json!({"timeout": 0}))?;
            hold(2_000..5_000, rng);
            lift("reset")
        }
        "bandwidth" => {
            // 16 KB/s each way: less than the outputs and changelog need.
            toxic("bandwidth", "bandwidth", json!({"rate": 16}))?;
            hold(6_000..10_000, rng);
            lift("bandwidth")
        }
        "connection cut" => {
            proxy.set_enabled(PROXY, false)?;
            hold(3_000..7_000, rng);
            proxy.set_enabled(PROXY, true)
        }
        other => bail!("unknown network fault {other}"),
    }
}

/// The topics and ids a run's faults aim at.
struct Target<'a> {
    input: &'a str,
    output: &'a str,
    changelog: &'a str,
    transactional_id: &'a str,
    state_dir: &'a std::path::Path,
}

/// The cluster node leading `topic[partition]` now, from the metadata.
fn leader_node(lab: &Lab, bootstrap: &str, topic: &str, partition: i32) -> anyhow::Result<u8> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let leader = metadata
            .topics()
            .first()
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .map(|p| p.leader());
        let node = leader.and_then(|id| {
            metadata
                .brokers()
                .iter()
                .find(|b| b.id() == id)
                .and_then(|b| u16::try_from(b.port()).ok())
                .and_then(|port| lab.broker.node_of_port(port))
        });
        if let Some(node) = node {
            return Ok(node);
        }
        // No leader right now (an election under way): ask again.
        if Instant::now() > deadline {
            bail!("{topic}[{partition}] has no leader");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The `__transaction_state` partition that holds `transactional_id`, as
/// the broker places it: the absolute value of Java's `String.hashCode`
/// modulo the partition count (`transaction.state.log.num.partitions`, 4
/// in `scripts/kafka`).
fn transaction_state_partition(transactional_id: &str) -> i32 {
    let hash = transactional_id
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    // Kafka's Utils.abs: MIN_VALUE maps to 0.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % 4
}

/// A gateway serving the output topic, and a registry, on the same
/// cluster as the pipeline, each watched.
struct Companions {
    _registry: Registry,
    registry_watch: RegistryWatch,
    gateway: Millrace,
    gateway_watch: GatewayWatch,
}

impl Companions {
    fn start(bootstrap: &str, name: &str, output: &str) -> anyhow::Result<Companions> {
        let registry = Registry::start_on(bootstrap, &format!("{name}-schemas"))?;
        let mut registry_watch = RegistryWatch::start(&registry.url())?;
        registry_watch.write()?;
        let mut gateway = Millrace::start_gateway_on(
            bootstrap,
            &crate::gateway::gateway_yaml(&format!("  - topic: {output}"), ""),
        )?;
        gateway.wait_ready(Duration::from_secs(60))?;
        let gateway_watch = GatewayWatch::start(gateway.ops_port, output);
        Ok(Companions {
            _registry: registry,
            registry_watch,
            gateway,
            gateway_watch,
        })
    }

    /// Stops both; the gateway subscriber's records checked against what
    /// the cluster committed to `output`.
    fn finish(
        mut self,
        bootstrap: &str,
        output: &str,
    ) -> anyhow::Result<(GatewayCheck, RegistryCheck)> {
        let mut committed: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for m in read_committed_on(bootstrap, output)? {
            committed.entry(m.partition()).or_default().push(m.offset());
        }
        let gateway = self.gateway_watch.finish(&committed)?;
        self.gateway.stop_cleanly()?;
        Ok((gateway, self.registry_watch.finish()))
    }
}

/// The client rebuilds the running process has counted (0 when it does
/// not answer yet).
fn rebuilds(millrace: &Millrace) -> u64 {
    millrace
        .metric("millrace_client_restarts_total")
        .unwrap_or(0.0) as u64
}

/// A slow changelog leader, as one node can show it: the link narrowed and
/// slowed, the pipeline SIGKILLed and its local state deleted, so the
/// restart restores every task from the changelog through that link; the
/// link is restored mid-restore.
fn slow_restore(
    proxy: &Toxiproxy,
    millrace: &mut Millrace,
    state_dir: &std::path::Path,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let streams = ["upstream", "downstream"];
    for stream in streams {
        proxy.add_toxic(
            PROXY,
            &format!("slow-latency-{stream}"),
            "latency",
            stream,
            json!({"latency": 60, "jitter": 40}),
        )?;
        proxy.add_toxic(
            PROXY,
            &format!("slow-bandwidth-{stream}"),
            "bandwidth",
            stream,
            json!({"rate": 256}),
        )?;
    }
    millrace.kill()?;
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("deleting {}: {e}", state_dir.display()),
    }
    millrace.restart()?;
    std::thread::sleep(Duration::from_millis(rng.random_range(6_000..12_000)));
    for stream in streams {
        proxy.remove_toxic(PROXY, &format!("slow-latency-{stream}"))?;
        proxy.remove_toxic(PROXY, &format!("slow-bandwidth-{stream}"))?;
    }
    Ok(())
}

/// Waits until the pipeline has committed [`FLOWING`] more input records
/// than when called; returns how long that took.
fn wait_flowing(millrace: &mut Millrace, input: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let series = format!("millrace_records_in_total{{topic=\"{input}\"}}");
    // A process just restarted does not answer yet: its count starts at 0.
    let base = millrace.metric(&series).unwrap_or(0.0);
    loop {
        if millrace.metric(&series).unwrap_or(0.0) >= base + FLOWING {
            return Ok(started.elapsed());
        }
        if !millrace.is_running() {
            bail!("millrace exited; log:\n{}", millrace.log_tail(60));
        }
        if started.elapsed() > RECOVERY {
            bail!(
                "the pipeline committed fewer than {FLOWING} records in {RECOVERY:?} after a \
                 fault ({}); log:\n{}",
                post_mortem(millrace, input),
                millrace.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps what a stuck pipeline leaves: its whole log, and the stacks of
/// its threads (through gdb, when installed), in a directory that outlives
/// the run; says where.
fn post_mortem(millrace: &Millrace, input: &str) -> String {
    let dir = std::env::temp_dir()
        .join("millrace-faults")
        .join(input.trim_end_matches("-in"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return format!("no post-mortem: {e}");
    }
    let _ = std::fs::copy(millrace.log_path(), dir.join("millrace.log"));
    if let Some(pid) = millrace.pid() {
        let stacks = std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(std::process::Stdio::null())
            .output();
        if let Ok(out) = stacks {
            let _ = std::fs::write(dir.join("stacks.txt"), [out.stdout, out.stderr].concat());
        }
    }
    format!("log and thread stacks kept in {}", dir.display())
}

fn wait_caught_up(
    bootstrap: &str,
    group: &str,
    input: &str,
    millrace: &mut Millrace,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    while !group_caught_up_on(bootstrap, group, input) {
        if !millrace.is_running() {
            bail!("millrace exited; log:\n{}", millrace.log_tail(60));
        }
        if Instant::now() > deadline {
            bail!(
                "the pipeline did not process all input within {CATCH_UP:?} ({}); log:\n{}",
                post_mortem(millrace, input),
                millrace.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The input topic as the pipeline read it, as a reference.
fn read_input(bootstrap: &str, input: &str) -> anyhow::Result<Reference> {
    let mut pairs = Vec::new();
    for m in read_committed_on(bootstrap, input)? {
        let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        pairs.push((key, body["v"].as_i64().context("input without v")?));
    }
    Ok(Reference::of(pairs))
}

/// Reads the committed output and checks it. An output short of the
/// reference is read again for a while: a transaction the broker has not
/// yet aborted holds back `read_committed` readers, which is not a loss.
fn read_verdict(bootstrap: &str, output: &str, reference: &Reference) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut updates = Vec::new();
        for m in read_committed_on(bootstrap, output)? {
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
            let number = |field: &str| {
                body[field]
                    .as_i64()
                    .or_else(|| body[field].as_f64().map(|f| f as i64))
                    .with_context(|| format!("{field} in output {body}"))
            };
            updates.push(Update {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                count: number("count")?,
                sum: number("sum")?,
            });
        }
        let verdict = check(reference, &updates);
        if verdict.outputs >= verdict.expected || Instant::now() > deadline {
            // The check must be able to fail on this very output: one
            // output dropped and another repeated must not pass.
            let mut damaged = updates.clone();
            if let Some(first) = damaged.first().cloned() {
                damaged.pop();
                damaged.push(first);
            }
            if check(reference, &damaged).is_exact() {
                bail!("the check passed a damaged copy of the output; it checks nothing");
            }
            return Ok(verdict);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

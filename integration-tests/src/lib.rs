//! Test harness for Millrace against a real Kafka broker.
//!
//! Where the broker comes from, in order:
//! 1. `MILLRACE_BOOTSTRAP`, when set (CI starts one with `scripts/kafka`);
//! 2. a testcontainers `apache/kafka` container, when a Docker engine answers;
//! 3. `scripts/kafka start`, which assembles a KRaft broker from Maven
//!    Central and runs it on 127.0.0.1 (it is left running for the next
//!    test run; `scripts/kafka stop` stops it).
//!
//! Every test makes its own topics with [`unique`] names, so tests run in
//! parallel against one broker. The fault tests run a private broker of
//! their own (see [`faults`]); the functions ending in `_on` take its
//! address instead of the shared one.

pub mod bench;
pub mod compare;
pub mod faults;
pub mod process;
pub mod registry;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod gateway;
pub mod keyed;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

/// The repository root. `cargo test` tells the test process where its
/// package is; that wins over the path compiled in, which goes stale when
/// a shared target directory serves a second checkout whose files are
/// older than the build (cargo then reuses the build, path and all).
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package
        .parent()
        .expect("integration-tests sits inside the repository")
        .to_path_buf()
}

/// The bootstrap address of the test broker, starting one if needed.
pub fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| match find_or_start_broker() {
        Ok(address) => address,
        Err(e) => panic!("no Kafka broker for the tests: {e:#}"),
    })
}

fn find_or_start_broker() -> anyhow::Result<String> {
    if let Ok(address) = std::env::var("MILLRACE_BOOTSTRAP")
        && !address.trim().is_empty()
    {
        return Ok(address);
    }
    if docker_answers() {
        return start_container();
    }
    start_with_script()
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn start_container() -> anyhow::Result<String> {
    use testcontainers::ImageExt;
    use testcontainers::runners::SyncRunner;
    use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
    let container = Kafka::default()
        .with_jvm_image()
        .with_tag("4.1.1")
        .start()
        .context("starting apache/kafka with testcontainers")?;
    let port = container.get_host_port_ipv4(KAFKA_PORT)?;
    // The container lives as long as the test process; testcontainers
    // removes it when the process's Docker session ends.
    Box::leak(Box::new(container));
    Ok(format!("127.0.0.1:{port}"))
}

fn start_with_script() -> anyhow::Result<String> {
    let script = repo_root().join("scripts/kafka");
    let output = Command::new("bash")
        .arg(&script)
        .arg("start")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} start failed ({})", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let address = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("scripts/kafka start printed no address")?;
    Ok(address.trim().to_string())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Creates topics (name, partitions) and waits until their metadata is seen.
pub async fn create_topics(topics: &[(&str, i32)]) -> anyhow::Result<()> {
    create_topics_on(bootstrap(), topics).await
}

/// [`create_topics`] on the broker at `bootstrap`.
pub async fn create_topics_on(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(new.iter(), &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating {name}: {code}"),
        }
    }
    Ok(())
}

/// A plain (non-transactional) producer for test input.
pub fn producer() -> FutureProducer {
    producer_on(bootstrap())
}

/// [`producer`] for the broker at `bootstrap`. Idempotent, and it retries
/// for librdkafka's default 300 s, so test input survives a broker restart
/// without gaps or duplicates.
pub fn producer_on(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("test producer")
}

/// Produces records (key, value) to a topic, in order, and flushes.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(records.len());
    for (key, value) in records {
        let mut record = FutureRecord::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => bail!("produce: {e}"),
        }
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await?
                    .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
            }
        }
    }
    for d in pending {
        d.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    producer.flush(Timeout::After(Duration::from_secs(30)))?;
    Ok(())
}

/// Produces records (key, partition, value) to chosen partitions, in order,
/// and flushes.
pub async fn produce_to(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, i32, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(records.len());
    for (key, partition, value) in records {
        let record = FutureRecord::to(topic)
            .key(key)
            .partition(*partition)
            .payload(value);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
    for d in pending {
        d.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    producer.flush(Timeout::After(Duration::from_secs(30)))?;
    Ok(())
}

/// Reads every committed record of a topic, from the beginning to the end
/// (the last stable offset of every partition), as a `read_committed`
/// consumer outside any group.
pub fn read_committed(topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    read_committed_on(bootstrap(), topic)
}

/// [`read_committed`] from the broker at `bootstrap`.
pub fn read_committed_on(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions {
        if Instant::now() > deadline {
            bail!("reading {topic} did not reach the end in time");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(m.detach());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
        }
    }
    Ok(out)
}

/// Whether `group` has committed offsets at the end of every partition of
/// `topic` (it has processed all input). A broker too busy to answer in
/// time counts as "not yet".
pub fn group_caught_up(group: &str, topic: &str) -> bool {
    group_caught_up_on(bootstrap(), group, topic)
}

/// [`group_caught_up`] on the broker at `bootstrap`.
pub fn group_caught_up_on(bootstrap: &str, group: &str, topic: &str) -> bool {
    check_caught_up(bootstrap, group, topic).unwrap_or(false)
}

fn check_caught_up(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    for element in committed.elements() {
        let (_, high) =
            consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(10))?;
        match element.offset() {
            rdkafka::Offset::Offset(n) if n >= high => {}
            _ => return Ok(false),
        }
    }
    Ok(partitions > 0)
}

/// The headers of a message as a map of strings.
pub fn header_map(message: &OwnedMessage) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            map.insert(
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            );
        }
    }
    map
}

/// Headers for test input.
pub fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(rdkafka::message::Header {
            key: k,
            value: Some(*v),
        })
    })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `millrace` process running a pipeline file written by the test.
pub struct Millrace {
    child: Option<Child>,
    /// `run` for a pipeline, `gateway` for a gateway.
    subcommand: &'static str,
    pub config: PathBuf,
    pub ops_port: u16,
    /// What `MILLRACE_BOOTSTRAP` is set to: the shared broker, or a fault
    /// test's private one (or its proxy).
    bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `millrace` binary under test: this package's `millrace-it`, which
/// cargo builds (fresh) before it runs the package's tests. Test
/// executables live in `target/<profile>/deps/`, the binary one level up;
/// this package's own binaries (`millrace-soak`) sit beside it.
pub fn millrace_bin() -> PathBuf {
    if let Ok(path) = std::env::var("MILLRACE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let own_dir = exe.parent().expect("the executable's directory");
    if own_dir.join("millrace-it").exists() {
        return own_dir.join("millrace-it");
    }
    let profile_dir = own_dir
        .parent()
        .expect("test executable inside target/<profile>/deps");
    let bin = profile_dir.join("millrace-it");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// Writes a pipeline file into a temporary directory. `{ops_port}` in the
/// text is replaced by a free port for the operations endpoint.
pub fn write_config(yaml: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf, u16)> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let path = dir.path().join("pipeline.yaml");
    let text = yaml.replace("{ops_port}", &port.to_string());
    std::fs::write(&path, text)?;
    Ok((dir, path, port))
}

impl Millrace {
    /// Starts `millrace run` on a pipeline file (see [`write_config`]).
    pub fn start(yaml: &str) -> anyhow::Result<Millrace> {
        Millrace::start_command("run", yaml, bootstrap())
    }

    /// Starts `millrace run` against the broker at `bootstrap` instead of
    /// the shared test broker (a fault test's private broker or proxy).
    pub fn start_on(bootstrap: &str, yaml: &str) -> anyhow::Result<Millrace> {
        Millrace::start_command("run", yaml, bootstrap)
    }

    /// Starts `millrace gateway` on a gateway file (see [`write_config`];
    /// `{ops_port}` is meant for `http.listen`, which also serves `/readyz`).
    pub fn start_gateway(yaml: &str) -> anyhow::Result<Millrace> {
        Millrace::start_command("gateway", yaml, bootstrap())
    }

    /// [`Millrace::start_gateway`] against the broker at `bootstrap`.
    pub fn start_gateway_on(bootstrap: &str, yaml: &str) -> anyhow::Result<Millrace> {
        Millrace::start_command("gateway", yaml, bootstrap)
    }

    fn start_command(
        subcommand: &'static str,
        yaml: &str,
        bootstrap: &str,
    ) -> anyhow::Result<Millrace> {
        let (dir, config, ops_port) = write_config(yaml)?;
        let log = dir.path().join("millrace.log");
        let mut m = Millrace {
            child: None,
            subcommand,
            config,
            ops_port,
            bootstrap: bootstrap.to_string(),
            log,
            _dir: dir,
        };
        m.restart()?;
        Ok(m)
    }

    /// Starts the process again (after a kill), appending to the same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(millrace_bin())
            .args([self.subcommand, "--config"])
            .arg(&self.config)
            .env("MILLRACE_BOOTSTRAP", &self.bootstrap)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting millrace")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process gets no chance to commit or leave the group.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        // A process signalled in the first milliseconds after its start,
        // before it listens for SIGTERM, dies of the signal: wait until its
        // HTTP endpoint (bound after the handler) answers.
        let listening_by = Instant::now() + Duration::from_secs(30);
        while self.is_running() && self.get("/healthz").is_err() && Instant::now() < listening_by {
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        // Already gone (a test may have signalled it itself): its status.
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("millrace did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and asserts a clean exit (code 0) within 30 s, showing the
    /// log when it is not.
    pub fn stop_cleanly(&mut self) -> anyhow::Result<()> {
        let code = self.terminate(Duration::from_secs(30))?;
        if code != Some(0) {
            bail!(
                "millrace exited with {code:?} after SIGTERM; log:\n{}",
                self.log_tail(60)
            );
        }
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// GETs a path of the operations endpoint: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.ops_port);
        let response = reqwest::blocking::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()?;
        let status = response.status().as_u16();
        Ok((status, response.text()?))
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!("millrace exited early; log:\n{}", self.log_tail(40));
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "millrace not ready within {within:?}; log:\n{}",
            self.log_tail(40)
        )
    }

    /// The value of a metric line (`name{labels}` exactly as exposed), or 0.
    pub fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (_, body) = self.get("/metrics")?;
        Ok(body
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process's log file (appended to by every restart).
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Millrace {
    fn drop(&mut self) {
        let _ = self.kill();
        // The log lives in the process's temporary directory, gone with
        // it; a benchmark that audits logs asked for a copy.
        if let Some(dir) = LOG_ARCHIVE.get() {
            static COPIES: AtomicUsize = AtomicUsize::new(0);
            let n = COPIES.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::copy(&self.log, dir.join(format!("millrace-{n}.log")));
        }
    }
}

static LOG_ARCHIVE: OnceLock<PathBuf> = OnceLock::new();

/// From now on, every [`Millrace`] copies its log into `dir` when it is
/// dropped (as `millrace-<n>.log`), so that a benchmark can audit the logs
/// of every process it ran. Set once per process; later calls are ignored.
pub fn archive_logs_to(dir: &Path) {
    let _ = LOG_ARCHIVE.set(dir.to_path_buf());
}

/// Runs `millrace` with arguments to completion: (exit code, stdout,
/// stderr). With `broker`, it is pointed at the test broker.
pub fn millrace_cli(args: &[&str], broker: bool) -> anyhow::Result<(i32, String, String)> {
    let mut command = Command::new(millrace_bin());
    command.args(args);
    if broker {
        command.env("MILLRACE_BOOTSTRAP", bootstrap());
    } else {
        command.env_remove("MILLRACE_BOOTSTRAP");
    }
    let output = command.output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Writes a line to the test's output right away (progress of long tests).
pub fn progress(line: &str) {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "[millrace-it] {line}");
}

/// What the browser tests drive: headless Chromium (`$CHROMIUM`, else
/// Debian's) and `integration-tests/browser` with its npm packages.
pub struct BrowserTooling {
    pub chromium: String,
    /// `integration-tests/browser`, its `node_modules` installed.
    pub dir: PathBuf,
}

/// The browser tooling, installing the npm packages on first use; `None`
/// (the test skips, saying so) when Chromium or Node is missing, which CI
/// does not allow.
pub fn browser_tooling(test: &str) -> anyhow::Result<Option<BrowserTooling>> {
    let chromium = std::env::var("CHROMIUM").ok().or_else(|| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .find(|p| Path::new(p).exists())
            .map(|p| p.to_string())
    });
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let (Some(chromium), true) = (chromium, node) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the {test} test: install `chromium` and `node` (scripts/setup does)"
        );
        progress(&format!(
            "{test} test skipped: chromium or node is missing (scripts/setup installs them)"
        ));
        return Ok(None);
    };
    let dir = repo_root().join("integration-tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "npm ci in {} failed", dir.display());
    }
    Ok(Some(BrowserTooling { chromium, dir }))
}

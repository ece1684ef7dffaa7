//! A private broker — one node, or a replicated cluster of three — on its
//! own ports for fault tests: it can be SIGKILLed and restarted (all of it,
//! or one node) without touching the shared test broker at 127.0.0.1:9092
//! that every other test uses. It is driven through `scripts/kafka`
//! (`start`, `stop`, `kill`, `restart`, `reset`, with `--brokers N` and a
//! node number for a cluster) with `MILLRACE_KAFKA_PORT` set, so it has its
//! own data directory (`data-<port>`, `cluster-<port>`), which dropping it
//! deletes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::repo_root;

/// A broker (or cluster) this process started, stopped and deleted on
/// drop.
pub struct PrivateBroker {
    port: u16,
    /// Nodes: 1, or a cluster's size (node n listens on port + 10(n-1)).
    nodes: u8,
    /// The port a proxy in front of the broker listens on, advertised by
    /// its proxied listener (see `MILLRACE_KAFKA_PROXY_PORT`).
    proxy_port: Option<u16>,
    bootstrap: String,
}

impl PrivateBroker {
    /// Starts a fresh broker on `port` (its controller on `port + 1`),
    /// deleting whatever an earlier run left in its data directory.
    pub fn start(port: u16) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::launch(port, None, 1)
    }

    /// A fresh cluster of `nodes` KRaft nodes (each broker and controller)
    /// with replication factor 3 and `min.insync.replicas` 2: node n
    /// listens on `port + 10(n-1)`, its controller one above.
    pub fn start_cluster(port: u16, nodes: u8) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::launch(port, None, nodes)
    }

    /// [`PrivateBroker::start`] with a third listener on `port + 2` that
    /// advertises `127.0.0.1:proxy_port`: clients bootstrapped through a
    /// proxy on `proxy_port` (upstream `port + 2`) stay behind the proxy.
    pub fn start_proxied(port: u16, proxy_port: u16) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::launch(port, Some(proxy_port), 1)
    }

    fn launch(port: u16, proxy_port: Option<u16>, nodes: u8) -> anyhow::Result<PrivateBroker> {
        anyhow::ensure!(
            !matches!(port, 9091..=9094 | 9191..=9214),
            "port {port} is the shared test broker's (or cluster's) neighbourhood; pick another"
        );
        let bootstrap = (0..u16::from(nodes))
            .map(|n| format!("127.0.0.1:{}", port + 10 * n))
            .collect::<Vec<_>>()
            .join(",");
        let broker = PrivateBroker {
            port,
            nodes,
            proxy_port,
            bootstrap,
        };
        broker.script("reset")?;
        broker.script("start")?;
        Ok(broker)
    }

    /// The broker's own address (not through any proxy): for test input,
    /// topic creation and reading the results.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The proxied listener's port, the proxy's upstream.
    pub fn proxied_port(&self) -> u16 {
        self.port + 2
    }

    /// How many nodes: 1, or the cluster's size.
    pub fn nodes(&self) -> u8 {
        self.nodes
    }

    /// SIGKILLs the broker's JVM (every node's): a crash, with open
    /// transactions and unflushed state left behind. Returns once the
    /// process is gone.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.script("kill").map(drop)
    }

    /// SIGKILLs node `node` (1-based) of a cluster.
    pub fn kill_node(&self, node: u8) -> anyhow::Result<()> {
        self.script(&format!("kill {node}")).map(drop)
    }

    /// Stops node `node` gracefully (SIGTERM: a controlled shutdown that
    /// moves its leaderships away first), as a rolling restart does.
    pub fn stop_node(&self, node: u8) -> anyhow::Result<()> {
        self.script(&format!("stop {node}")).map(drop)
    }

    /// Starts node `node` again on its data and waits until it serves;
    /// returns how long that took.
    pub fn restart_node(&self, node: u8) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.script(&format!("restart {node}"))?;
        Ok(started.elapsed())
    }

    /// The node (1-based) whose client port is `port`.
    pub fn node_of_port(&self, port: u16) -> Option<u8> {
        let offset = port.checked_sub(self.port)?;
        (offset % 10 == 0 && offset / 10 < u16::from(self.nodes)).then(|| (offset / 10 + 1) as u8)
    }

    /// Starts the broker again on its data (after [`PrivateBroker::kill`])
    /// and waits until it serves; returns how long that took.
    pub fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.script("restart")?;
        Ok(started.elapsed())
    }

    /// Runs `scripts/kafka command` for this broker; its stderr is passed
    /// through, its stdout returned.
    fn script(&self, command: &str) -> anyhow::Result<String> {
        let script = repo_root().join("scripts/kafka");
        let mut run = Command::new("bash");
        run.arg(&script)
            .args(command.split_whitespace())
            .args(["--brokers", &self.nodes.to_string()])
            .env("MILLRACE_KAFKA_PORT", self.port.to_string())
            .env_remove("MILLRACE_KAFKA_BROKERS")
            .env_remove("MILLRACE_KAFKA_CONTROLLER_PORT")
            .env_remove("MILLRACE_KAFKA_PROXIED_PORT")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        match self.proxy_port {
            Some(p) => run.env("MILLRACE_KAFKA_PROXY_PORT", p.to_string()),
            None => run.env_remove("MILLRACE_KAFKA_PROXY_PORT"),
        };
        let output = run
            .output()
            .with_context(|| format!("running {} {command}", script.display()))?;
        if !output.status.success() {
            bail!(
                "scripts/kafka {command} for port {} failed ({})",
                self.port,
                output.status
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL first: a graceful stop takes seconds and nothing of this
        // broker is kept.
        let _ = self.script("kill");
        let _ = self.script("reset");
    }
}

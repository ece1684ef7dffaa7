//! A private single-node broker on its own port for fault tests: it can be
//! SIGKILLed and restarted without touching the shared test broker at
//! 127.0.0.1:9092 that every other test uses. It is driven through
//! `scripts/kafka` (`start`, `kill`, `restart`, `reset`) with
//! `MILLRACE_KAFKA_PORT` set, so it has its own data directory
//! (`data-<port>`), which dropping it deletes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::repo_root;

/// A broker this process started, stopped and deleted on drop.
pub struct PrivateBroker {
    port: u16,
    /// The port a proxy in front of the broker listens on, advertised by
    /// its proxied listener (see `MILLRACE_KAFKA_PROXY_PORT`).
    proxy_port: Option<u16>,
    bootstrap: String,
}

impl PrivateBroker {
    /// Starts a fresh broker on `port` (its controller on `port + 1`),
    /// deleting whatever an earlier run left in its data directory.
    pub fn start(port: u16) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::launch(port, None)
    }

    /// [`PrivateBroker::start`] with a third listener on `port + 2` that
    /// advertises `127.0.0.1:proxy_port`: clients bootstrapped through a
    /// proxy on `proxy_port` (upstream `port + 2`) stay behind the proxy.
    pub fn start_proxied(port: u16, proxy_port: u16) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::launch(port, Some(proxy_port))
    }

    fn launch(port: u16, proxy_port: Option<u16>) -> anyhow::Result<PrivateBroker> {
        anyhow::ensure!(
            !matches!(port, 9091..=9094),
            "port {port} is the shared test broker's neighbourhood; pick another"
        );
        let broker = PrivateBroker {
            port,
            proxy_port,
            bootstrap: format!("127.0.0.1:{port}"),
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

    /// SIGKILLs the broker's JVM: a crash, with open transactions and
    /// unflushed state left behind. Returns once the process is gone.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.script("kill").map(drop)
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
            .arg(command)
            .env("MILLRACE_KAFKA_PORT", self.port.to_string())
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

//! A `millrace registry` process for tests, and a JSON HTTP helper to talk
//! to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{bootstrap, free_port, millrace_bin};

/// Confluent's content type.
pub const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// A running `millrace registry` on a test topic.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    pub topic: String,
    bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Registry {
    /// Starts an instance serving `topic` and waits until it is ready.
    pub fn start(topic: &str) -> anyhow::Result<Registry> {
        Registry::start_on(bootstrap(), topic)
    }

    /// [`Registry::start`] against the broker (or cluster) at `bootstrap`.
    pub fn start_on(bootstrap: &str, topic: &str) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let mut registry = Registry {
            child: None,
            port: free_port(),
            topic: topic.to_string(),
            bootstrap: bootstrap.to_string(),
            log: dir.path().join("registry.log"),
            _dir: dir,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        registry.restart()?;
        Ok(registry)
    }

    /// Starts the process again (same port and topic) and waits until it
    /// is ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(millrace_bin())
            .args(["registry", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--topic", &self.topic])
            .env("MILLRACE_BOOTSTRAP", &self.bootstrap)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting millrace registry")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!(
                    "millrace registry exited early; log:\n{}",
                    self.log_tail(40)
                );
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "millrace registry not ready within {within:?}; log:\n{}",
            self.log_tail(40)
        )
    }

    /// SIGTERM, and asserts a clean exit within 30 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if status.code() != Some(0) {
                    bail!(
                        "millrace registry exited with {status} after SIGTERM; log:\n{}",
                        self.log_tail(40)
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("millrace registry did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends a request; returns the status, the content type and the body
    /// (parsed as JSON when it is JSON, else as a string).
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, String, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url()))
            .header("Accept", SR_JSON);
        if let Some(body) = body {
            request = request
                .header("Content-Type", SR_JSON)
                .body(body.to_string());
        }
        let response = request.send().with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, content_type, value))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::GET, path, None)
            .map(|(s, _, v)| (s, v))
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::POST, path, Some(body))
            .map(|(s, _, v)| (s, v))
    }

    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::PUT, path, Some(body))
            .map(|(s, _, v)| (s, v))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::DELETE, path, None)
            .map(|(s, _, v)| (s, v))
    }

    /// Registers an Avro schema; returns the id, failing on any other
    /// answer than 200.
    pub fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u64> {
        let (status, body) = self.post(
            &format!("/subjects/{subject}/versions"),
            &serde_json::json!({ "schema": schema }),
        )?;
        if status != 200 {
            bail!("registering under {subject}: HTTP {status}: {body}");
        }
        body["id"].as_u64().context("an id")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

//! Toxiproxy (github.com/Shopify/toxiproxy), a TCP proxy whose faults
//! ("toxics") are switched on and off over an HTTP API: started here on a
//! free port of 127.0.0.1 and driven with blocking reqwest calls.
//!
//! The server binary is `$TOXIPROXY_SERVER`, else `toxiproxy-server` on the
//! PATH, else `server` in Go's bin directory, where `go install
//! github.com/Shopify/toxiproxy/v2/cmd/server@latest` puts it (.ci/run does
//! that). A missing binary is an error that says how to install it: the
//! network fault test never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::free_port;

/// How to install the server, for error messages.
pub const INSTALL: &str = "scripts/setup (it runs `go install \
     github.com/Shopify/toxiproxy/v2/cmd/server@latest`, which lands in $(go env GOPATH)/bin/server), \
     or set TOXIPROXY_SERVER to a toxiproxy-server binary";

/// A running toxiproxy server, killed on drop.
pub struct Toxiproxy {
    child: Child,
    api: String,
    http: reqwest::blocking::Client,
}

/// Whether `path` runs and calls itself toxiproxy (Go's generic `server`
/// name could be anything).
fn is_toxiproxy(path: &Path) -> bool {
    Command::new(path)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).contains("toxiproxy")
        })
}

/// The toxiproxy server binary, or an error saying how to install it.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TOXIPROXY_SERVER") {
        let path = PathBuf::from(path);
        if is_toxiproxy(&path) {
            return Ok(path);
        }
        bail!(
            "TOXIPROXY_SERVER={} does not run as toxiproxy-server; install it with: {INSTALL}",
            path.display()
        );
    }
    let mut candidates = vec![PathBuf::from("toxiproxy-server")];
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    if let Some(gopath) = gopath {
        candidates.push(Path::new(&gopath).join("bin/server"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join("go/bin/server"));
    }
    candidates
        .into_iter()
        .find(|c| is_toxiproxy(c))
        .with_context(|| format!("toxiproxy is not installed; install it with: {INSTALL}"))
}

impl Toxiproxy {
    /// Starts the server with its API on a free port of 127.0.0.1 and waits
    /// until the API answers.
    pub fn start() -> anyhow::Result<Toxiproxy> {
        let binary = server_binary()?;
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut proxy = Toxiproxy {
            child,
            api: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if proxy
                .http
                .get(format!("{}/version", proxy.api))
                .send()
                .is_ok()
            {
                return Ok(proxy);
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                bail!("{} exited at start ({status})", binary.display());
            }
            if Instant::now() > deadline {
                bail!("toxiproxy's API on port {port} did not answer within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<()> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .with_context(|| format!("toxiproxy {method} {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().unwrap_or_default();
            bail!("toxiproxy {method} {path}: {status}: {text}");
        }
        Ok(())
    }

    /// Creates proxy `name`, listening on `listen`, forwarding to
    /// `upstream` (both `host:port`).
    pub fn create_proxy(&self, name: &str, listen: &str, upstream: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/proxies",
            Some(json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true})),
        )
    }

    /// Adds a toxic to one direction of a proxy: `stream` is `upstream`
    /// (client to server) or `downstream`; `kind` and `attributes` as
    /// toxiproxy documents them (`latency`, `timeout`, `reset_peer`,
    /// `bandwidth`, ...).
    pub fn add_toxic(
        &self,
        proxy: &str,
        name: &str,
        kind: &str,
        stream: &str,
        attributes: Value,
    ) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}/toxics"),
            Some(json!({
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            })),
        )
    }

    /// Removes a toxic.
    pub fn remove_toxic(&self, proxy: &str, name: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/proxies/{proxy}/toxics/{name}"),
            None,
        )
    }

    /// Enables or disables a proxy. Disabling closes every connection
    /// through it and stops listening: a cut cable.
    pub fn set_enabled(&self, proxy: &str, enabled: bool) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}"),
            Some(json!({"enabled": enabled})),
        )
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What runs beside the pipeline in the cluster fault runs, as it would in
//! production: a `millrace gateway` with one subscriber that keeps
//! disconnecting and resuming from its last position, and a `millrace
//! registry` that is read continuously and written after every fault.
//! Each watcher records what it saw; the checks compare that with what the
//! cluster committed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng;
use serde_json::{Value, json};

use crate::gateway::{Sse, token_for};

/// Longest a write to the registry may take after a fault (it needs its
/// log topic's leader and two in-sync replicas).
const REGISTRY_WRITE_WITHIN: Duration = Duration::from_secs(60);
/// How long the subscriber's last connection may take to read what is
/// left once the pipeline has caught up.
const GATEWAY_DRAIN_WITHIN: Duration = Duration::from_secs(90);

/// The offsets a subscriber received, per partition, in order.
type Received = BTreeMap<i32, Vec<i64>>;

/// An SSE subscriber of `topic` that reads a random number of records,
/// disconnects, and resumes with `Last-Event-ID`, until stopped.
pub struct GatewayWatch {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<Subscriber>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    url: String,
    token: String,
}

#[derive(Default)]
struct Subscriber {
    received: Received,
    last_id: Option<String>,
    reconnects: u64,
}

/// What the subscriber saw, against what was committed.
#[derive(Debug, Clone)]
pub struct GatewayCheck {
    pub reconnects: u64,
    pub received: usize,
    pub committed: usize,
    /// Empty when every partition's received offsets equal the committed
    /// ones (no gap, no repeat, in order); else what differs.
    pub differences: Vec<String>,
}

impl GatewayCheck {
    pub fn is_exact(&self) -> bool {
        self.differences.is_empty()
    }
}

impl GatewayWatch {
    /// Starts subscribing to `topic` on the gateway whose operations port
    /// (which serves the API too) is `port`.
    pub fn start(port: u16, topic: &str) -> GatewayWatch {
        let url = format!("http://127.0.0.1:{port}/v1/topics/{topic}/sse?start=earliest");
        let token = format!("Bearer {}", token_for(&[topic]));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(Subscriber::default()));
        let thread = {
            let (stop, state, url, token) =
                (stop.clone(), state.clone(), url.clone(), token.clone());
            std::thread::spawn(move || subscribe_in_turns(&url, &token, &stop, &state))
        };
        GatewayWatch {
            stop,
            state,
            thread: Some(thread),
            url,
            token,
        }
    }

    /// Stops the coming and going, reads what is left in one last
    /// connection, and compares everything received with `committed`.
    pub fn finish(mut self, committed: &Received) -> anyhow::Result<GatewayCheck> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the subscriber thread panicked"))??;
        }
        let total: usize = committed.values().map(Vec::len).sum();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let have: usize = state.received.values().map(Vec::len).sum();
        if have < total {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(read_some(
                &self.url,
                &self.token,
                &mut state,
                total - have,
                GATEWAY_DRAIN_WITHIN,
            ))
            .context("the last connection reading what was left")?;
        }
        let mut differences = Vec::new();
        for (p, want) in committed {
            let got = state.received.get(p).cloned().unwrap_or_default();
            if &got != want {
                let first = got.iter().zip(want).position(|(a, b)| a != b);
                differences.push(format!(
                    "partition {p}: received {} records, {} committed; first difference at {first:?}",
                    got.len(),
                    want.len()
                ));
            }
        }
        for p in state.received.keys().filter(|p| !committed.contains_key(p)) {
            differences.push(format!("partition {p}: received records, none committed"));
        }
        Ok(GatewayCheck {
            reconnects: state.reconnects,
            received: state.received.values().map(Vec::len).sum(),
            committed: total,
            differences,
        })
    }
}

/// The subscriber's life until stopped: connect (resuming from the last
/// position), read 1–400 records or until nothing comes for a while (a
/// fault may pause the output), disconnect, pause, again.
fn subscribe_in_turns(
    url: &str,
    token: &str,
    stop: &AtomicBool,
    state: &Mutex<Subscriber>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut rng = rand::rng();
    while !stop.load(Ordering::SeqCst) {
        let want = rng.random_range(1..=400);
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        // A refused or broken connection (the gateway itself reconnecting
        // to a changed cluster) is retried; only wrong data fails the run.
        if let Err(e) = rt.block_on(read_some(url, token, &mut s, want, Duration::from_secs(5))) {
            crate::progress(&format!("gateway subscriber: {e:#}; reconnecting"));
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
    }
    Ok(())
}

/// One connection: reads up to `want` records (fewer if none comes within
/// `quiet`), recording each record's position.
async fn read_some(
    url: &str,
    token: &str,
    s: &mut Subscriber,
    want: usize,
    quiet: Duration,
) -> anyhow::Result<()> {
    let mut headers = vec![("authorization", token)];
    let last = s.last_id.clone();
    if let Some(id) = &last {
        headers.push(("last-event-id", id.as_str()));
    }
    s.reconnects += 1;
    let mut sse = Sse::open(url, &headers)
        .await?
        .map_err(|(status, body)| anyhow::anyhow!("refused with {status}: {body}"))?;
    let mut got = 0;
    while got < want {
        let event = match sse.next(quiet).await {
            Ok(Some(event)) => event,
            Ok(None) => bail!("the gateway ended the stream"),
            // Nothing within `quiet`: fine during a fault.
            Err(_) if quiet < GATEWAY_DRAIN_WITHIN => return Ok(()),
            Err(e) => return Err(e),
        };
        // `ready` and the like carry no record.
        if event.event == "message" {
            let v: Value = serde_json::from_str(&event.data).context("record envelope")?;
            let p = v["partition"].as_i64().context("partition")? as i32;
            let o = v["offset"].as_i64().context("offset")?;
            s.received.entry(p).or_default().push(o);
            got += 1;
        }
        if event.id.is_some() {
            s.last_id = event.id;
        }
    }
    Ok(())
}

/// Reads `GET /subjects` every 200 ms from a registry, counting failures
/// and the longest stretch without an answer.
pub struct RegistryWatch {
    url: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<RegistryCheck>>,
    thread: Option<JoinHandle<()>>,
    http: reqwest::blocking::Client,
    writes: u64,
}

/// What the registry did through the faults.
#[derive(Debug, Clone, Default)]
pub struct RegistryCheck {
    pub reads: u64,
    pub failed_reads: u64,
    /// The longest time between two successful reads.
    pub longest_read_gap: Duration,
    pub writes: u64,
    /// The longest a registration took to succeed after a fault.
    pub slowest_write: Duration,
}

impl RegistryWatch {
    pub fn start(url: &str) -> anyhow::Result<RegistryWatch> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(RegistryCheck::default()));
        let thread = {
            let (stop, counts, http, url) =
                (stop.clone(), counts.clone(), http.clone(), url.to_string());
            std::thread::spawn(move || {
                let mut last_ok = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let ok = http
                        .get(format!("{url}/subjects"))
                        .send()
                        .is_ok_and(|r| r.status().is_success());
                    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                    c.reads += 1;
                    if ok {
                        c.longest_read_gap = c.longest_read_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    } else {
                        c.failed_reads += 1;
                    }
                    drop(c);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Ok(RegistryWatch {
            url: url.to_string(),
            stop,
            counts,
            thread: Some(thread),
            http,
            writes: 0,
        })
    }

    /// Registers a new schema under a new subject, retrying until the
    /// registry accepts it (it must within [`REGISTRY_WRITE_WITHIN`]), and
    /// checks it reads back under the id it was given.
    pub fn write(&mut self) -> anyhow::Result<Duration> {
        self.writes += 1;
        let subject = format!("cluster-fault-{}", self.writes);
        let schema = json!({
            "type": "record",
            "name": format!("R{}", self.writes),
            "fields": [{"name": "n", "type": "long"}]
        })
        .to_string();
        let started = Instant::now();
        let id = loop {
            let answer = self
                .http
                .post(format!("{}/subjects/{subject}/versions", self.url))
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .json(&json!({ "schema": schema }))
                .send();
            if let Ok(r) = answer
                && r.status().is_success()
                && let Ok(body) = r.json::<Value>()
                && let Some(id) = body["id"].as_u64()
            {
                break id;
            }
            if started.elapsed() > REGISTRY_WRITE_WITHIN {
                bail!("the registry accepted no registration for {REGISTRY_WRITE_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let took = started.elapsed();
        let back: Value = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.url))
            .send()?
            .json()?;
        let same = back["schema"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            == serde_json::from_str::<Value>(&schema).ok();
        anyhow::ensure!(same, "schema id {id} reads back as {back}");
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.writes += 1;
        c.slowest_write = c.slowest_write.max(took);
        Ok(took)
    }

    /// Stops reading; what was seen.
    pub fn finish(mut self) -> RegistryCheck {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

//! Load client for the gateway benchmark (`bench/gateway/run`): opens many
//! SSE or WebSocket subscribers on loopback, produces records at a fixed
//! rate, and reports delivered events/s, delivery latency (Kafka record
//! timestamp to receipt), and the gateway's RSS and CPU.
//!
//! gateway-load --url http://127.0.0.1:8080 --topic bench --bootstrap 127.0.0.1:9092 \
//!   --transport sse --subscribers 10000 --rate 5 --seconds 30 --gateway-pid 1234

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct Args {
    url: String,
    topic: String,
    bootstrap: String,
    transport: String,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    gateway_pid: Option<u32>,
    payload: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        topic: "bench".into(),
        bootstrap: "127.0.0.1:9092".into(),
        transport: "sse".into(),
        subscribers: 1000,
        rate: 5,
        seconds: 30,
        gateway_pid: None,
        payload: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--topic" => a.topic = value,
            "--bootstrap" => a.bootstrap = value,
            "--transport" => a.transport = value,
            "--subscribers" => a.subscribers = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--gateway-pid" => a.gateway_pid = Some(value.parse()?),
            "--payload" => a.payload = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Latency histogram with 1 ms buckets up to 60 s.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Shared {
    fn received(&self, ts: u64) {
        if ts >= self.window_from.load(Ordering::Relaxed)
            && ts < self.window_to.load(Ordering::Relaxed)
        {
            self.events.fetch_add(1, Ordering::Relaxed);
            self.latency.record(now_ms().saturating_sub(ts));
        }
    }
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..60_001).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
    fn record(&self, ms: u64) {
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ms, Ordering::Relaxed);
    }
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target.max(1) {
                return i as u64;
            }
        }
        0
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Pulls `"timestamp":<ms>` out of an envelope without a full parse.
fn timestamp_of(text: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"\"timestamp\":";
    let at = text.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut ms: u64 = 0;
    let mut any = false;
    for d in digits {
        ms = ms.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(ms)
}

struct Shared {
    /// Records (by producer timestamp) inside the measured window count.
    window_from: AtomicU64,
    window_to: AtomicU64,
    events: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    latency: Histogram,
}

/// Reads one SSE subscription until `stop` turns true. The client shares
/// the cores with the gateway, so it is kept cheap: bytes are scanned for
/// `data:` lines in place, and a stop signal (not a timer per read) ends it.
async fn sse_subscriber(
    host: String,
    path: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(&host).await?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut pending: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut counted = false;
    loop {
        let n = tokio::select! {
            r = socket.read(&mut buf) => r?,
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            bail!("closed");
        }
        pending.extend_from_slice(&buf[..n]);
        // Every record event has a `data:` line with the envelope.
        let mut start = 0;
        while let Some(len) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + len];
            if let Some(data) = line.strip_prefix(b"data: ") {
                if let Some(ts) = timestamp_of(data) {
                    shared.received(ts);
                }
            } else if !counted && line == b"event: ready" {
                counted = true;
                shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            start += len + 1;
        }
        pending.drain(..start);
    }
}

async fn ws_subscriber(
    url: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let mut counted = false;
    loop {
        let message = tokio::select! {
            m = socket.next() => match m {
                None => bail!("closed"),
                Some(m) => m?,
            },
            _ = stop.changed() => return Ok(()),
        };
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            if !counted {
                counted = true;
                shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            if text.starts_with("{\"type\":\"record\"")
                && let Some(ts) = timestamp_of(text.as_bytes())
            {
                shared.received(ts);
            }
        }
    }
}

/// (RSS KiB, CPU seconds) of a process.
fn proc_stats(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// `gateway-load create-topic --topic T --bootstrap B`: one partition.
async fn create_topic() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let find = |flag: &str| {
        rest.iter()
            .position(|a| a == flag)
            .and_then(|i| rest.get(i + 1).cloned())
            .with_context(|| format!("{flag} is required"))
    };
    let (topic, bootstrap) = (find("--topic")?, find("--bootstrap")?);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("create-topic") {
        return create_topic().await;
    }
    let a = args()?;
    let shared = Arc::new(Shared {
        window_from: AtomicU64::new(u64::MAX),
        window_to: AtomicU64::new(u64::MAX),
        events: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latency: Histogram::new(),
    });
    let (stop, stopped) = watch::channel(false);
    let host = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (rss_idle, _) = a.gateway_pid.map(proc_stats).unwrap_or_default();

    // Connect in waves so the accept queue keeps up.
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let shared2 = shared.clone();
        let task = if a.transport == "ws" {
            let url = format!("ws://{host}/v1/topics/{}/ws?format=json", a.topic);
            let stopped = stopped.clone();
            tokio::spawn(async move {
                if ws_subscriber(url, shared2.clone(), stopped.clone())
                    .await
                    .is_err()
                    && !*stopped.borrow()
                {
                    shared2.failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        } else {
            let (h, path) = (host.clone(), format!("/v1/topics/{}/sse", a.topic));
            let stopped = stopped.clone();
            tokio::spawn(async move {
                if sse_subscriber(h, path, shared2.clone(), stopped.clone())
                    .await
                    .is_err()
                    && !*stopped.borrow()
                {
                    shared2.failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        tasks.push(task);
        if i % 250 == 249 {
            while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
                < (i as u64 + 1) * 9 / 10
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < a.subscribers as u64
        && started.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    eprintln!("{connected} subscribers connected in {connect_secs:.1} s");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("linger.ms", "0")
        .create()?;
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(a.payload));
    // Warm up, then measure.
    let warm = Duration::from_secs(3);
    let (_, cpu0) = a.gateway_pid.map(proc_stats).unwrap_or_default();
    let mut measured_at = None;
    let mut produced = 0u64;
    let total = warm + Duration::from_secs(a.seconds);
    let begin = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut next = Instant::now();
    let mut cpu_start = cpu0;
    let mut client_cpu_start = 0.0;
    let mut rss_peak = 0;
    while begin.elapsed() < total {
        if measured_at.is_none() && begin.elapsed() >= warm {
            shared.window_from.store(now_ms(), Ordering::Relaxed);
            produced = 0;
            cpu_start = a.gateway_pid.map(proc_stats).unwrap_or_default().1;
            client_cpu_start = proc_stats(std::process::id()).1;
            measured_at = Some(Instant::now());
        }
        let key = format!("k{}", produced % 100);
        let _ = producer
            .send(
                FutureRecord::to(&a.topic).key(&key).payload(&payload),
                Duration::from_secs(5),
            )
            .await;
        produced += 1;
        if let Some(pid) = a.gateway_pid {
            rss_peak = rss_peak.max(proc_stats(pid).0);
        }
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    shared.window_to.store(now_ms(), Ordering::Relaxed);
    let elapsed = measured_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let (rss_end, cpu_end) = a.gateway_pid.map(proc_stats).unwrap_or_default();
    let client_cpu_end = proc_stats(std::process::id()).1;
    // Let the last records of the window arrive.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let _ = stop.send(true);
    let events = shared.events.load(Ordering::Relaxed);
    let expected = produced * connected;
    let per_sub_kib = if connected > 0 {
        (rss_peak.max(rss_end).saturating_sub(rss_idle)) as f64 / connected as f64
    } else {
        0.0
    };
    let cpu = (cpu_end - cpu_start) / elapsed.max(0.001);
    let client_cpu = (client_cpu_end - client_cpu_start) / elapsed.max(0.001);
    println!(
        "| transport | subscribers | produced/s | delivered events/s | delivered | latency p50 | p99 | max | gateway RSS idle -> peak | RSS per subscriber | gateway CPU | load client CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {:.2}% | {} ms | {} ms | {} ms | {} -> {} MiB | {:.1} KiB | {:.0}% of a core | {:.0}% of a core |",
        a.transport,
        connected,
        a.rate,
        events as f64 / elapsed.max(0.001),
        if expected > 0 {
            events as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        shared.latency.quantile(0.5),
        shared.latency.quantile(0.99),
        shared.latency.max.load(Ordering::Relaxed),
        rss_idle / 1024,
        rss_peak.max(rss_end) / 1024,
        per_sub_kib,
        cpu * 100.0,
        client_cpu * 100.0,
    );
    eprintln!(
        "failed connections: {}; connect time {connect_secs:.1} s",
        shared.failed.load(Ordering::Relaxed)
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

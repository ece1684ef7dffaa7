//! `millrace gen`: produces realistic telemetry to Kafka, paced by the
//! clock — ECG waveform batches at 250 Hz and vitals readings from a fleet
//! of simulated monitors ([`fleet`]) with known injected events.

pub mod fleet;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tracing::{error, info};

use fleet::{Fleet, FleetConfig, Stream};

/// `millrace gen` options.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "MILLRACE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Number of simulated monitors.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Seed: the same seed gives the same devices, signals and events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Waveform samples per second.
    #[arg(long, default_value_t = 250.0)]
    sample_rate: f64,
    /// Samples per waveform record.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Time between two vitals readings of a device.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    vitals_every: Duration,
    /// Every n-th device has a tachycardia episode (165 bpm from 20 s to
    /// 50 s); 0 for none.
    #[arg(long, default_value_t = 4)]
    anomaly_every: usize,
    /// Every n-th device goes silent from 30 s to 45 s; 0 for none.
    #[arg(long, default_value_t = 5)]
    silence_every: usize,
    /// Topic of waveform batches (`format: waveform`).
    #[arg(long, default_value = "telemetry-waveforms")]
    waveform_topic: String,
    /// Topic of vitals readings (JSON).
    #[arg(long, default_value = "telemetry-vitals")]
    vitals_topic: String,
    /// Partitions of the topics, when the generator creates them.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Stop after this long (default: until SIGINT / SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Simulated seconds per real second (2 = twice as fast as life).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Write the injected ground truth (per device: base bpm, anomaly,
    /// silence) to this JSON file.
    #[arg(long)]
    truth: Option<PathBuf>,
}

/// Runs the generator until stopped; the exit code for the process.
pub fn main(args: GenArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the signal handler");
            return ExitCode::FAILURE;
        }
    };
    let flag = stop.clone();
    runtime.spawn(async move {
        let signal = crate::ops::shutdown_signal().await;
        info!(signal, "stopping the generator");
        flag.store(true, Ordering::SeqCst);
    });
    let worker = std::thread::spawn(move || generate(&args, &stop));
    match worker.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            error!(error = %format!("{e:#}"), "generator stopped");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn generate(args: &GenArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    if args.devices == 0 || args.batch == 0 {
        bail!("--devices and --batch must be at least 1");
    }
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let start_ms = now_ms();
    let mut fleet = Fleet::new(FleetConfig {
        devices: args.devices,
        seed: args.seed,
        sample_rate: args.sample_rate,
        batch: args.batch,
        vitals_every_ms: i64::try_from(args.vitals_every.as_millis())
            .context("--vitals-every is too long")?
            .max(1),
        anomaly_every: args.anomaly_every,
        silence_every: args.silence_every,
        start_ms,
    })
    .context("the signal settings")?;
    if let Some(path) = &args.truth {
        let truth = serde_json::json!({ "start_ms": start_ms, "devices": fleet.truth() });
        std::fs::write(path, serde_json::to_vec_pretty(&truth)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("compression.type", "lz4")
        .create()
        .context("creating the producer")?;
    create_missing_topics(args)?;
    info!(
        devices = args.devices,
        seed = args.seed,
        waveforms = %args.waveform_topic,
        vitals = %args.vitals_topic,
        "generating"
    );
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    loop {
        let elapsed = started.elapsed();
        if stop.load(Ordering::SeqCst) || args.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let now = start_ms + (elapsed.as_secs_f64() * 1000.0 * args.speed) as i64;
        for record in fleet.advance_to(now) {
            let topic = match record.kind {
                Stream::Waveform => &args.waveform_topic,
                Stream::Vitals => &args.vitals_topic,
            };
            send(&producer, topic, &record)?;
            records += 1;
            bytes += record.payload.len() as u64;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            info!(
                records,
                mib = bytes as f64 / 1048576.0,
                records_per_s = (records as f64 / secs).round(),
                simulated_s = ((now - start_ms) / 1000),
                "progress"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the last records")?;
    info!(records, "generator done");
    Ok(())
}

/// Creates the output topics that do not exist yet (`--partitions`,
/// replication 1: a generator is for development and demos).
fn create_missing_topics(args: &GenArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()
        .context("creating the admin client")?;
    let topics = [&args.waveform_topic, &args.vitals_topic];
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, args.partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(new.iter(), &options))
        .with_context(|| format!("creating topics on {}", args.bootstrap))?;
    for result in results {
        match result {
            Ok(name) => info!(topic = %name, "created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    record: &fleet::GenRecord,
) -> anyhow::Result<()> {
    let mut next = BaseRecord::to(topic)
        .key(&record.key)
        .payload(&record.payload)
        .timestamp(record.timestamp_ms);
    loop {
        match producer.send(next) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                next = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).with_context(|| format!("producing to {topic}")),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

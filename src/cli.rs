//! The `millrace` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::admin::{TopicOutcome, create_topics};
use crate::config::{self, PipelineConfig};
use crate::logging::{self, LogFormat};
use crate::metrics::Metrics;
use crate::ops::{self, Health};
use crate::pipeline::Pipeline;
use crate::reset::ResetTo;
use crate::runtime;

/// Millrace: an exactly-once stream processor beside Apache Kafka or Redpanda.
#[derive(Debug, Parser)]
#[command(name = "millrace", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MILLRACE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until SIGTERM or SIGINT.
    Run {
        /// The pipeline file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a pipeline file and print its operator graph.
    Validate {
        /// The pipeline file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Bridge Kafka topics to browsers and services over Server-Sent Events
    /// and WebSocket (read_committed, exact resume), until SIGTERM or SIGINT.
    Gateway {
        /// The gateway file (YAML), e.g. config/gateway.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage the pipeline's topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Rewind a pipeline: move its group's offsets, delete its changelog
    /// topics and local state, so the next run reprocesses from there and
    /// rebuilds state consistently. Dry run unless --execute. Refuses while
    /// the group has live members.
    Reset {
        /// The pipeline file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// `earliest`, `latest`, a time (RFC 3339 or epoch ms), or
        /// `topic:partition:offset,...`.
        #[arg(long)]
        to: String,
        /// Apply the reset (default: only print what would happen).
        #[arg(long)]
        execute: bool,
    },
    /// Produce simulated telemetry (ECG waveforms and vitals of a fleet
    /// of monitors, with injected anomalies and silences) to Kafka.
    Gen(crate::generator::GenArgs),
    /// Print a gateway bearer token (HS256 JWT) signed with the key in
    /// $MILLRACE_GATEWAY_SECRET, the gateway's auth.hs256_secret.
    Token(crate::gateway::token::TokenArgs),
    /// Serve a Confluent-compatible schema registry whose state lives in a
    /// compacted Kafka topic (`_schemas`), until SIGTERM or SIGINT.
    Registry(crate::registry::cli::RegistryArgs),
    /// Register or check Avro schemas (`.avsc` files) against a
    /// Confluent-compatible registry.
    Schemas {
        #[command(subcommand)]
        command: crate::registry::cli::SchemasCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the topics a pipeline reads and writes (sources, sinks and the
    /// dead-letter topic), with `topics.partitions` and
    /// `topics.replication_factor`, and the changelogs of its stateful steps
    /// (compacted, as many partitions as the sources). Existing topics are
    /// left as they are.
    Create {
        /// The pipeline file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Exit code for a configuration the program refuses.
const EXIT_CONFIG: u8 = 2;

/// Entry point of the `millrace` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => run(&config),
        Command::Gateway { config } => crate::gateway::run(&config),
        Command::Topics {
            command: TopicsCommand::Create { config },
        } => topics_create(&config),
        Command::Reset {
            config,
            to,
            execute,
        } => reset(&config, &to, execute),
        Command::Gen(args) => crate::generator::main(args),
        Command::Token(args) => crate::gateway::token::main(args),
        Command::Registry(args) => crate::registry::cli::registry(args),
        Command::Schemas { command } => crate::registry::cli::schemas(command),
    }
}

fn reset(path: &Path, to: &str, execute: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let to = match ResetTo::parse(to) {
        Ok(to) => to,
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let pipeline = match Pipeline::build(&config) {
        Ok(p) => p,
        Err(_) => return ExitCode::from(EXIT_CONFIG),
    };
    let result = tokio_runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(crate::reset::reset(&config, &pipeline, &to, execute)));
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<PipelineConfig, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn validate(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match Pipeline::build(&config) {
        Ok(pipeline) => {
            print!("{}", pipeline.describe(&config));
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        // `load` validated already; this only guards against drift.
        Err(issues) => {
            for (p, m) in issues {
                eprintln!("error: {}: {p}: {m}", path.display());
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn topics_create(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pipeline = match Pipeline::build(&config) {
        Ok(p) => p,
        Err(_) => return ExitCode::from(EXIT_CONFIG),
    };
    let result = tokio_runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(create_topics(&config, &pipeline)));
    match result {
        Ok(outcomes) => {
            for (topic, outcome) in outcomes {
                let what = match outcome {
                    TopicOutcome::Created => "created",
                    TopicOutcome::AlreadyExists => "exists",
                };
                println!("{what:8} {topic}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(config))
}

async fn serve(config: PipelineConfig) -> ExitCode {
    // Listen for SIGTERM before anything else, so that a stop requested
    // while starting up is a clean stop, not death by the signal.
    let shutdown = crate::ops::shutdown_signal();
    let metrics = Arc::new(Metrics::new());
    // A commit can legitimately block the loop for up to commit.timeout.
    let health = Arc::new(Health::new(config.commit.timeout * 2));
    let stop = Arc::new(AtomicBool::new(false));

    let (addr, server) = match ops::bind(&config.http.listen, metrics.clone(), health.clone()).await
    {
        Ok(bound) => bound,
        Err(e) => {
            error!(listen = %config.http.listen, error = %e, "cannot bind http.listen");
            return ExitCode::FAILURE;
        }
    };
    info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = server.await {
            error!(error = %e, "operations endpoint failed");
        }
    });

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let shutdown_timeout = config.shutdown.timeout;
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("millrace-pipeline".into())
            .spawn(move || {
                let result = runtime::run(&config, metrics, health, stop);
                let _ = done_tx.send(result);
            })
            .map_err(|e| error!(error = %e, "cannot start the pipeline thread"))
            .ok();
    }

    let mut done_rx = done_rx;
    let result = tokio::select! {
        result = &mut done_rx => result,
        signal = shutdown => {
            info!(signal, "stopping: committing the open transaction and leaving the group");
            stop.store(true, Ordering::SeqCst);
            match tokio::time::timeout(shutdown_timeout, done_rx).await {
                Ok(result) => result,
                Err(_) => {
                    error!(timeout = ?shutdown_timeout, "shutdown took too long; exiting");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match result {
        Ok(Ok(())) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            runtime::report_fatal(&e);
            ExitCode::FAILURE
        }
        Err(_) => {
            error!("the pipeline thread ended without a result");
            ExitCode::FAILURE
        }
    }
}

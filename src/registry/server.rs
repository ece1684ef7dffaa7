//! `millrace registry`: wires the pieces together and runs until SIGTERM.
//!
//! The HTTP listener is bound first, so `/healthz` and `/readyz` answer
//! while Kafka is unreachable or the topic is being replayed; API calls get
//! 503 until the replay is done.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::api;
use super::config::RegistryConfig;
use super::log::{self, Progress, Writer};
use super::metrics::RegistryMetrics;
use super::service::Registry;
use super::store::Store;
use crate::ops::Health;

/// How long to wait between attempts to reach Kafka at start.
const KAFKA_RETRY: Duration = Duration::from_secs(2);

/// Runs the registry until SIGTERM or SIGINT.
pub async fn serve(config: RegistryConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(RegistryMetrics::new());
    // The reader thread turns every 100 ms; a minute without a turn means
    // it is stuck.
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let store = Arc::new(RwLock::new(Store::new(config.compatibility)));
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let registry = Arc::new(Registry::new(
        store.clone(),
        Writer::new(&config),
        progress_rx,
        metrics.clone(),
        config.write_timeout,
    ));

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot bind listen address {}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, topic = %config.topic, "serving the schema registry API, /metrics, /healthz and /readyz");
    let (stop_http, stopped) = watch::channel(false);
    let app = api::router(registry, metrics.clone(), health.clone());
    let server = tokio::spawn(async move {
        let mut stopped = stopped;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });

    let signal = crate::ops::shutdown_signal();
    tokio::pin!(signal);
    let stop = Arc::new(AtomicBool::new(false));

    // Reach Kafka and the topic, retrying: a registry started before its
    // broker waits for it instead of exiting.
    health.set_not_ready(format!(
        "reaching topic {} on {}",
        config.topic, config.kafka.bootstrap
    ));
    loop {
        health.turn();
        tokio::select! {
            name = &mut signal => {
                info!(signal = name, "stopping before the topic was reached");
                let _ = stop_http.send(true);
                return Ok(());
            }
            result = log::ensure_topic(&config) => match result {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot reach the schemas topic; retrying");
                    health.set_not_ready(format!("waiting for Kafka: {e:#}"));
                }
            }
        }
        tokio::select! {
            name = &mut signal => {
                info!(signal = name, "stopping before the topic was reached");
                let _ = stop_http.send(true);
                return Ok(());
            }
            () = tokio::time::sleep(KAFKA_RETRY) => {}
        }
    }
    let reader = log::start_reader(
        &config,
        store,
        health.clone(),
        metrics,
        stop.clone(),
        progress_tx,
    )?;

    let name = (&mut signal).await;
    info!(signal = name, "stopping: finishing requests");
    health.set_not_ready("stopping");
    let _ = stop_http.send(true);
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => error!(error = %e, "the HTTP server failed"),
        Ok(Err(e)) => error!(error = %e, "the HTTP server task failed"),
        Err(_) => warn!(timeout = ?config.shutdown_timeout, "requests still open at shutdown"),
    }
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || reader.join())
        .await
        .ok();
    info!("stopped");
    Ok(())
}

//! The operations endpoint: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` answers whether the process is alive and its processing loop
//! is turning; `/readyz` whether it is doing its job right now (clients up,
//! group joined, not shutting down), with the reason when it is not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Liveness and readiness, written by the processing loop and read by the
/// HTTP handlers.
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the loop's last turn.
    last_turn_ms: AtomicU64,
    /// `None` when ready, else why not.
    not_ready: Mutex<Option<String>>,
    /// How long the loop may go without turning before `/healthz` fails.
    stall_limit: Duration,
}

impl Health {
    pub fn new(stall_limit: Duration) -> Health {
        Health {
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            not_ready: Mutex::new(Some("starting".to_string())),
            stall_limit,
        }
    }

    /// Called by the processing loop on every turn.
    pub fn turn(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn set_not_ready(&self, why: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.into());
    }

    /// `Err(why)` when not ready.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// `Err(why)` when the loop has stalled.
    pub fn liveness(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        if since > self.stall_limit {
            Err(format!("processing loop has not turned for {since:?}"))
        } else {
            Ok(())
        }
    }
}

/// Binds the endpoint and returns the bound address and the server future.
pub async fn bind(
    listen: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>> + use<>,
)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
        .merge(health_router(health));
    Ok((addr, async move { axum::serve(listener, app).await }))
}

/// `/healthz` and `/readyz` alone, for components that serve their own
/// metrics (the schema registry).
pub fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Resolves on SIGTERM or SIGINT with the signal's name. The handlers are
/// installed when this is called, not when the future is first polled, so
/// a signal that arrives in between is not lost (or fatal). Call it inside
/// the async runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            (term, int) => {
                let e = term.err().or(int.err()).map(|e| e.to_string());
                tracing::warn!(error = ?e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_loop() {
        let h = Health::new(Duration::from_secs(30));
        assert_eq!(h.readiness(), Err("starting".to_string()));
        h.set_ready();
        assert_eq!(h.readiness(), Ok(()));
        h.set_not_ready("rejoining the group");
        assert!(h.readiness().unwrap_err().contains("rejoining"));
        h.turn();
        assert!(h.liveness().is_ok());
    }

    #[test]
    fn a_stalled_loop_is_not_live() {
        let h = Health::new(Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.liveness().is_err());
    }
}

//! Starting and stopping the gateway: topics and live tails, the router
//! (API, CORS, ops endpoints), the listener, and graceful shutdown that
//! tells every subscriber to reconnect.
//!
//! Endpoints (all `GET`):
//!
//! | path | what |
//! |---|---|
//! | `/v1/topics` | bridged topics, partitions, offsets |
//! | `/v1/topics/{topic}/sse` | Server-Sent Events subscription |
//! | `/v1/topics/{topic}/ws` | WebSocket subscription |
//! | `/v1/topics/{topic}/latest` | latest record per key |
//! | `/v1/topics/{topic}/records` | a page of records from a position |
//! | `/metrics`, `/healthz`, `/readyz` | operations (on `http.ops_listen` if set) |
//! | `/dashboard` | the telemetry page, if `dashboard.enabled` ([`super::dashboard`]) |

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_service::Service;
use tracing::{debug, error, info, warn};

use super::auth::Authenticator;
use super::config::{self, GatewayConfig};
use super::decode::Decoder;
use super::kafka::{self, Meta};
use super::latest::Latest;
use super::limits::{RateLimiter, SubscriberLimits};
use super::listener::{ClientAddr, ConnectionGate, StallListener};
use super::metrics::GatewayMetrics;
use super::open_files;
use super::proxies::TrustedProxies;
use super::tail::{self, TopicHub};
use super::{Gateway, dashboard, rest, sse, ws};

/// Exit code for a configuration the program refuses.
const EXIT_CONFIG: u8 = 2;

/// `millrace gateway --config <file>`: runs until SIGTERM or SIGINT.
pub fn run(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let auth = match Authenticator::new(&config.auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(config, auth))
}

async fn serve(config: GatewayConfig, auth: Authenticator) -> ExitCode {
    if auth.is_open() {
        for line in [
            "AUTHENTICATION IS OFF (auth.mode: open)",
            "anyone who can reach this gateway can read every bridged topic",
            "use auth.mode: jwt for anything but a local demo",
        ] {
            warn!("{line}");
        }
    }
    open_files::raise_for(config.http.max_connections);
    let metrics = Arc::new(GatewayMetrics::new());
    let meta = match Meta::new(&config) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            error!(error = %e, "cannot create the Kafka client");
            return ExitCode::FAILURE;
        }
    };

    // Every bridged topic must exist: a typo should stop the start, not
    // produce a gateway that answers 503 forever.
    let mut hubs = HashMap::new();
    let mut missing = Vec::new();
    for topic in &config.topics {
        let m = meta.clone();
        let name = topic.topic.clone();
        let partitions = tokio::task::spawn_blocking(move || m.partitions(&name))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let decoder = match Decoder::for_format(topic.format, config.registry.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                error!(topic = %topic.topic, error = %e, "unsupported format");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match partitions {
            Ok(n) => {
                metrics.init_topic(&topic.topic);
                hubs.insert(
                    topic.topic.clone(),
                    TopicHub::new(
                        topic,
                        decoder,
                        n,
                        config.subscribers.policy,
                        config.subscribers.live_buffer,
                        Latest::new(config.latest.max_keys, config.latest.max_bytes),
                    ),
                );
            }
            Err(e) => missing.push(e),
        }
    }
    if !missing.is_empty() {
        for e in &missing {
            error!(error = %e, "cannot bridge a topic");
        }
        return ExitCode::FAILURE;
    }

    let stop_tails = Arc::new(AtomicBool::new(false));
    let mut tails = Vec::new();
    for topic in &config.topics {
        let hub = hubs[&topic.topic].clone();
        match tail::spawn(
            &config,
            topic,
            hub,
            meta.clone(),
            metrics.clone(),
            stop_tails.clone(),
        ) {
            Ok(handle) => tails.push(handle),
            Err(e) => {
                error!(topic = %topic.topic, error = %e, "cannot start the live tail thread");
                return ExitCode::FAILURE;
            }
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let gateway = Arc::new(Gateway {
        history_client: kafka::consumer_config(&config, "history"),
        history_permits: Arc::new(Semaphore::new(config.limits.max_history_readers)),
        rest_permits: Arc::new(Semaphore::new(config.limits.max_rest_requests)),
        limits: SubscriberLimits::new(
            config.limits.max_subscribers,
            config.limits.max_subscribers_per_token,
        ),
        rate: RateLimiter::new(
            config.limits.requests_per_second,
            config.limits.request_burst,
        ),
        proxies: TrustedProxies::new(&config.http.trusted_proxies),
        hubs,
        meta,
        metrics,
        auth,
        shutdown: shutdown_rx,
        config,
    });

    let code = serve_http(gateway.clone(), shutdown_tx).await;
    stop_tails.store(true, Ordering::SeqCst);
    gateway.history_permits.close();
    for handle in tails {
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
    if code == ExitCode::SUCCESS {
        info!("stopped");
    }
    code
}

async fn serve_http(gateway: Arc<Gateway>, shutdown_tx: watch::Sender<bool>) -> ExitCode {
    let config = &gateway.config;
    let listener = match TcpListener::bind(&config.http.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.http.listen, error = %e, "cannot bind http.listen");
            return ExitCode::FAILURE;
        }
    };
    let ops = ops_router(gateway.clone());
    let mut app = api_router(gateway.clone());
    let header_timeout = config.http.header_read_timeout;
    match &config.http.ops_listen {
        None => app = app.merge(ops),
        Some(listen) => match TcpListener::bind(listen).await {
            Ok(l) => {
                if let Ok(addr) = l.local_addr() {
                    info!(%addr, "serving /metrics, /healthz and /readyz");
                }
                // Its own gate: a flood of the API port must not blind the
                // operators' view.
                let gate = ConnectionGate::new(
                    OPS_MAX_CONNECTIONS,
                    OPS_MAX_CONNECTIONS,
                    TrustedProxies::default(),
                    None,
                );
                let l = StallListener::new(l, config.subscribers.write_timeout, gate);
                // Runs until the process exits: its stop signal never comes.
                tokio::spawn(async move {
                    let (_never_sent, never) = watch::channel(false);
                    serve_connections(l, ops, header_timeout, never).await;
                });
            }
            Err(e) => {
                error!(listen = %listen, error = %e, "cannot bind http.ops_listen");
                return ExitCode::FAILURE;
            }
        },
    }
    let gate = ConnectionGate::new(
        config.http.max_connections,
        config.http.max_connections_per_ip,
        TrustedProxies::new(&config.http.trusted_proxies),
        Some(gateway.metrics.clone()),
    );
    let listener = StallListener::new(listener, config.subscribers.write_timeout, gate);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, topics = config.topics.len(), "gateway listening");
    }
    let timeout = config.shutdown.timeout;
    let shutdown = crate::ops::shutdown_signal();
    tokio::spawn(async move {
        let name = shutdown.await;
        info!(signal = name, "stopping: telling subscribers to reconnect");
        // Subscriptions end with a `disconnect` message, then their
        // connections close.
        shutdown_tx.send_replace(true);
        // Dropping the sender is fine: receivers keep the last value.
    });
    let mut stopped = gateway.shutdown.clone();
    let server = serve_connections(listener, app, header_timeout, gateway.shutdown.clone());
    // A client that ignores the disconnect must not hold the process past
    // the timeout.
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(timeout).await;
    };
    tokio::pin!(deadline);
    tokio::select! {
        () = server => {}
        _ = &mut deadline => {
            warn!(?timeout, "connections still open after the shutdown timeout; closing them");
            return ExitCode::SUCCESS;
        }
    };
    // WebSocket connections left the HTTP server when they upgraded: give
    // them the same time to send their close frames.
    let drained = async {
        while gateway.limits.total() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = drained => {}
        _ = &mut deadline => warn!("subscribers still open after the shutdown timeout"),
    }
    ExitCode::SUCCESS
}

/// Connections the separate operations listener holds at once.
const OPS_MAX_CONNECTIONS: usize = 64;

/// Serves HTTP/1.1 (with upgrades, for WebSocket) on every connection the
/// listener admits, until `stop` turns true; then stops accepting, lets
/// each connection finish its current response (subscriptions end by
/// themselves on the same signal), and returns once all have closed.
///
/// This is axum's `serve` loop with what it does not expose: the header
/// read timeout, which closes a connection that has not sent a complete
/// request head within `header_timeout` of opening or of its previous
/// response. HTTP/2 is not offered: without TLS browsers never use it, and
/// its cleartext preface read has no timeout.
async fn serve_connections(
    mut listener: StallListener,
    app: Router,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Every connection task holds a receiver; `closed()` tells when all
    // are gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut stopping = stop.clone();
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = until_true(&mut stopping) => break,
        };
        let app = app.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(addr)));
            // A Router is always ready: no `poll_ready` needed.
            let mut app = app.clone();
            app.call(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(%addr, error = %e, "connection ended");
                    }
                }
                () = until_true(&mut stop) => {
                    // Idle keep-alive connections close now; one in the
                    // middle of a response closes after it.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// Waits for a watched flag to turn true (or its sender to go).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}

fn api_router(gateway: Arc<Gateway>) -> Router {
    let cors = &gateway.config.http.cors;
    let mut router = Router::new()
        .route("/v1/topics", get(rest::topics))
        .route("/v1/topics/{topic}/sse", get(sse::subscribe))
        .route("/v1/topics/{topic}/ws", get(ws::subscribe))
        .route("/v1/topics/{topic}/latest", get(rest::latest))
        .route("/v1/topics/{topic}/records", get(rest::records))
        .with_state(gateway.clone());
    if gateway.config.dashboard.enabled {
        router = router.merge(dashboard::router(gateway.clone()));
        info!("serving the dashboard at /dashboard");
    }
    if !cors.allowed_origins.is_empty() {
        let mut layer = CorsLayer::new()
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(cors.max_age);
        layer = if cors.allowed_origins.iter().any(|o| o == "*") {
            layer.allow_origin(Any)
        } else {
            let origins: Vec<HeaderValue> = cors
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            layer.allow_origin(AllowOrigin::list(origins))
        };
        if cors.allow_credentials {
            layer = layer.allow_credentials(true);
        }
        router = router.layer(layer);
    }
    router
}

fn ops_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(gateway)
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    if *gw.shutdown.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stopping\n".to_string(),
        );
    }
    let waiting: Vec<&str> = gw
        .hubs
        .values()
        .filter(|h| !h.is_started())
        .map(|h| h.name.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: live tail not started for {}\n",
                waiting.join(", ")
            ),
        )
    }
}

//! `millrace gateway`: Kafka topics to browsers and services over
//! Server-Sent Events and WebSocket, with exact resume.
//!
//! Where to look:
//! - [`config`]: the gateway file.
//! - [`tail`]: one `read_committed` consumer per topic, shared by every live
//!   subscriber ([`tail::TopicHub`]).
//! - [`pump`]: a subscriber's reader — its own [`history`] reader, then the
//!   live tail, with an exact handover — feeding its [`outbox`], the bounded
//!   buffer where the slow-client policies live.
//! - [`position`]: positions and the resume token.
//! - [`session`] opens a subscription; [`sse`] and [`ws`] are the
//!   transports; [`rest`] the REST endpoints; [`server`] the router, CORS,
//!   ops endpoints and shutdown.
//! - [`auth`] (JWT), [`limits`], [`listener`] (connection limits),
//!   [`proxies`] (who the client is), [`request`] (admission and errors),
//!   [`query`] (parameters), [`selection`] (keys and filters), [`record`]
//!   (what subscribers receive), [`decode`] (value formats; the Avro seam).
//! - [`dashboard`]: the live telemetry page at `/dashboard`.
//! - [`token`]: `millrace token`, bearer tokens signed with the gateway's key.

pub mod auth;
pub mod avro;
pub mod config;
pub mod dashboard;
pub mod decode;
pub mod history;
pub mod kafka;
pub mod latest;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod open_files;
pub mod outbox;
pub mod position;
pub mod proxies;
pub mod pump;
pub mod query;
pub mod record;
pub mod request;
pub mod rest;
pub mod selection;
pub mod server;
pub mod session;
pub mod sse;
pub mod tail;
pub mod token;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::ClientConfig;
use tokio::sync::{Semaphore, watch};

pub use server::run;

/// Everything a request handler needs, shared.
pub struct Gateway {
    pub config: config::GatewayConfig,
    pub hubs: HashMap<String, Arc<tail::TopicHub>>,
    pub meta: Arc<kafka::Meta>,
    pub metrics: Arc<metrics::GatewayMetrics>,
    pub auth: auth::Authenticator,
    pub limits: Arc<limits::SubscriberLimits>,
    pub rate: limits::RateLimiter,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub proxies: proxies::TrustedProxies,
    /// One permit per history reader that may run.
    pub history_permits: Arc<Semaphore>,
    /// One permit per REST response (`/latest`, `/records`) being built.
    pub rest_permits: Arc<Semaphore>,
    /// Settings of history readers.
    pub history_client: ClientConfig,
    /// Becomes true when the gateway starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

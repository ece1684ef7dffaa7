//! Opening a subscription, whatever the transport: admission, parameters,
//! the subscriber limit, the start position, the buffer and the reader.
//! The transports ([`super::sse`], [`super::ws`]) only move what the
//! [`Session`]'s outbox yields onto their connection.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};

use super::Gateway;
use super::limits::SubscriberPermit;
use super::metrics::SentMetrics;
use super::outbox::{Outbox, Policy};
use super::position::Start;
use super::pump::Pump;
use super::query::{self, Endpoint, Params, WireFormat};
use super::request::ApiError;
use super::selection::Selection;

/// The transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
        }
    }
}

/// A running subscription. Dropping it stops its reader and gives back its
/// place under the subscriber limits.
pub struct Session {
    pub gateway: Arc<Gateway>,
    pub topic: String,
    pub transport: Transport,
    pub format: WireFormat,
    pub policy: Policy,
    /// The position the subscription starts from, as a token.
    pub start: String,
    pub outbox: Arc<Outbox>,
    pump: tokio::task::JoinHandle<()>,
    sent: SentMetrics,
    end_reason: &'static str,
    _permit: SubscriberPermit,
}

impl Session {
    /// Opens a subscription. `resume` is a position the client sent back
    /// (SSE's `Last-Event-ID`); it wins over `?start=`.
    pub async fn open(
        gateway: &Arc<Gateway>,
        topic: &str,
        headers: &HeaderMap,
        raw_query: Option<&str>,
        client: IpAddr,
        transport: Transport,
        resume: Option<&str>,
    ) -> Result<Session, ApiError> {
        let gw = gateway;
        let pairs = query::pairs(raw_query).map_err(|e| gw.rejected(ApiError::bad_request(e)))?;
        let (principal, hub) = gw.admit(topic, headers, &pairs, client)?;
        let params = Params::parse(
            &pairs,
            Endpoint::Subscribe,
            &gw.config.auth.query_param,
            gw.config.limits.max_keys,
        )
        .map_err(|e| gw.rejected(ApiError::bad_request(e)))?;

        let format = match (params.format, transport, hub.decoder.is_raw()) {
            (Some(WireFormat::Binary), Transport::Sse, _) => {
                return Err(gw.rejected(ApiError::bad_request(
                    "SSE carries text: use format=json (raw values come as base64), or the \
                     WebSocket endpoint for binary frames",
                )));
            }
            (Some(WireFormat::Binary), _, false) => {
                return Err(gw.rejected(ApiError::bad_request(format!(
                    "binary frames carry the bytes of raw topics; `{topic}` is {}: use \
                     format=json",
                    gw.config
                        .topic(topic)
                        .map_or("json".into(), |t| t.format.to_string())
                ))));
            }
            (Some(f), _, _) => f,
            (None, Transport::WebSocket, true) => WireFormat::Binary,
            (None, _, _) => WireFormat::Json,
        };

        if let Some(prefixes) = &principal.key_prefixes
            && let Some(key) = params
                .keys
                .iter()
                .find(|k| !prefixes.iter().any(|p| k.starts_with(p)))
        {
            return Err(gw.rejected(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the token does not allow key `{}`",
                    String::from_utf8_lossy(key)
                ),
            )));
        }
        let selection = Selection::new(
            topic,
            params.keys.clone(),
            principal.key_prefixes.clone(),
            params.filter.as_deref(),
            gw.config.limits.max_filter_bytes,
        )
        .map_err(|e| gw.rejected(ApiError::bad_request(e)))?;

        let start = match resume.map(str::trim).filter(|r| !r.is_empty()) {
            Some(token) => match Start::parse(token) {
                Ok(s @ Start::Offsets(_)) => s,
                _ => {
                    return Err(gw.rejected(ApiError::bad_request(format!(
                        "Last-Event-ID `{token}` is not a position (`partition:offset,...`)"
                    ))));
                }
            },
            None => params.start.clone().unwrap_or(Start::Latest),
        };

        let permit = gw
            .limits
            .acquire(&principal.subject)
            .map_err(|why| gw.rejected(ApiError::new(StatusCode::TOO_MANY_REQUESTS, why)))?;
        let position = gw.resolve_start(&hub, &start).await?;
        // A start in the past needs a history reader: wait for one here,
        // bounded, so that a busy gateway answers 503 instead of a stream
        // that never moves.
        let history_permit = match hub.position() {
            Some(live) if !position.reached(&live) => Some(gw.history_permit().await?),
            _ => None,
        };
        let policy = params.policy.unwrap_or(hub.policy);
        let outbox = Outbox::new(
            policy,
            gw.config.subscribers.buffer_events,
            gw.config.subscribers.buffer_bytes,
        );
        let start_token = position.token();
        let pump = tokio::spawn(
            Pump {
                gateway: gw.clone(),
                hub: hub.clone(),
                selection,
                outbox: outbox.clone(),
                position,
                history_permit,
            }
            .run(),
        );
        gw.metrics
            .subscribers
            .with_label_values(&[transport.label()])
            .inc();
        tracing::debug!(topic, transport = transport.label(), start = %start_token, %policy, "subscribed");
        Ok(Session {
            gateway: gw.clone(),
            topic: topic.to_string(),
            transport,
            format,
            policy,
            start: start_token,
            outbox,
            pump,
            sent: gw.metrics.sent_by(transport.label(), topic),
            end_reason: "client",
            _permit: permit,
        })
    }

    /// Records why the subscription ends (for the disconnects metric);
    /// the default is that the client went away.
    pub fn ended(&mut self, reason: &'static str) {
        self.end_reason = reason;
    }

    /// Counts a message handed to the connection.
    pub fn sent(&self, bytes: usize, timestamp: Option<i64>) {
        self.sent.sent(bytes, timestamp);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pump.abort();
        let metrics = &self.gateway.metrics;
        metrics
            .subscribers
            .with_label_values(&[self.transport.label()])
            .dec();
        // A subscriber closed for lagging may still be stuck writing when
        // its connection dies: the close reason says more than "client".
        let reason = match self.end_reason {
            "client" => self.outbox.close_label().unwrap_or("client"),
            other => other,
        };
        metrics.disconnects.with_label_values(&[reason]).inc();
    }
}

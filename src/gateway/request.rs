//! What every API request goes through: the rate limit, authentication,
//! the topic lookup and its authorization, and resolving a start position
//! against Kafka. Errors carry the HTTP status and a sentence for the
//! client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::Gateway;
use super::auth::{AuthError, Principal};
use super::position::{Position, Start};
use super::tail::TopicHub;

/// An error answer: status and message, as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// For 429 and 503: when to retry.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"millrace\""),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl Gateway {
    /// The client behind a connection from `peer`: `peer`, or the
    /// `X-Forwarded-For` client when `peer` is a trusted proxy.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.proxies.client(peer, headers)
    }

    /// Rate limit, authentication, topic lookup and authorization. `peer`
    /// is the TCP peer; the client is resolved through trusted proxies.
    pub fn admit(
        &self,
        topic: &str,
        headers: &HeaderMap,
        query: &[(String, String)],
        peer: IpAddr,
    ) -> Result<(Principal, Arc<TopicHub>), ApiError> {
        let client = self.client(peer, headers);
        self.check_rate(client)?;
        let principal = self
            .auth
            .authenticate(headers, query, client)
            .map_err(|e| self.rejected(e.into()))?;
        let Some(hub) = self.hubs.get(topic) else {
            return Err(self.rejected(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("topic `{topic}` is not bridged by this gateway (see GET /v1/topics)"),
            )));
        };
        if !principal.may_read(topic) {
            return Err(self.rejected(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("the token does not allow topic `{topic}`"),
            )));
        }
        Ok((principal, hub.clone()))
    }

    /// The per-address request rate.
    pub fn check_rate(&self, client: IpAddr) -> Result<(), ApiError> {
        self.rate.check(client).map_err(|wait| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests from {client}: at most {} per second",
                    self.config.limits.requests_per_second
                ),
            );
            e.retry_after = Some(wait);
            self.rejected(e)
        })
    }

    /// A place for a history reader, waiting at most
    /// `limits.history_wait`: 503 with `Retry-After` when every reader stays
    /// busy that long, rather than a request that hangs.
    pub async fn history_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let wait = self.config.limits.history_wait;
        match tokio::time::timeout(wait, self.history_permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::unavailable("the gateway is stopping")),
            Err(_) => {
                let mut e = ApiError::unavailable(format!(
                    "all {} history readers are busy; retry shortly",
                    self.config.limits.max_history_readers
                ));
                e.retry_after = Some(Duration::from_secs(1));
                Err(self.rejected(e))
            }
        }
    }

    /// A place for one REST response being built, or 503 with
    /// `Retry-After` when `limits.max_rest_requests` are.
    pub fn rest_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.rest_permits.clone().try_acquire_owned().map_err(|_| {
            let mut e = ApiError::unavailable(format!(
                "the gateway is answering its maximum of {} REST requests; retry shortly",
                self.config.limits.max_rest_requests
            ));
            e.retry_after = Some(Duration::from_secs(1));
            self.rejected(e)
        })
    }

    /// Counts a refusal and returns it.
    pub fn rejected(&self, e: ApiError) -> ApiError {
        self.metrics
            .rejected
            .with_label_values(&[e.status.as_str()])
            .inc();
        e
    }

    /// Waits (briefly) for a topic's live tail to have started.
    pub async fn tail_started(&self, hub: &TopicHub) -> Result<(), ApiError> {
        if hub.wait_started(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(self.rejected(ApiError::unavailable(format!(
                "the live tail of `{}` has not started yet (is Kafka reachable?); retry shortly",
                hub.name
            ))))
        }
    }

    /// Turns a start position into offsets for every partition. `latest` is
    /// the live tail's position, so a subscriber starting there needs no
    /// history reader.
    pub async fn resolve_start(
        &self,
        hub: &Arc<TopicHub>,
        start: &Start,
    ) -> Result<Position, ApiError> {
        self.tail_started(hub).await?;
        let live = hub
            .position()
            .ok_or_else(|| ApiError::unavailable("the live tail is restarting; retry shortly"))?;
        let partitions = hub.partitions;
        match start {
            Start::Latest => Ok(live),
            Start::Offsets(pairs) => {
                if let Some((p, _)) = pairs
                    .iter()
                    .find(|(p, _)| *p < 0 || *p as usize >= partitions)
                {
                    return Err(self.rejected(ApiError::bad_request(format!(
                        "partition {p} in the position does not exist: `{}` has {partitions}",
                        hub.name
                    ))));
                }
                if let Some((p, o)) = pairs.iter().find(|(_, o)| *o < 0) {
                    return Err(self.rejected(ApiError::bad_request(format!(
                        "offset {o} of partition {p} is negative"
                    ))));
                }
                let mut next = if pairs.len() == partitions {
                    vec![0; partitions]
                } else {
                    // Partitions the position does not list start at their
                    // oldest record.
                    self.watermarks(hub)
                        .await?
                        .into_iter()
                        .map(|(low, _)| low)
                        .collect()
                };
                for (p, o) in pairs {
                    next[*p as usize] = *o;
                }
                Ok(Position::new(next))
            }
            Start::Earliest => Ok(Position::new(
                self.watermarks(hub)
                    .await?
                    .into_iter()
                    .map(|(low, _)| low)
                    .collect(),
            )),
            Start::Timestamp(ms) => {
                let meta = self.meta.clone();
                let (name, ms) = (hub.name.clone(), *ms);
                let found = tokio::task::spawn_blocking(move || {
                    meta.offsets_for_time(&name, partitions, ms)
                })
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?
                .map_err(ApiError::unavailable)?;
                // No record that recent: from the live tail on.
                Ok(Position::new(
                    found
                        .iter()
                        .zip(live.offsets())
                        .map(|(f, l)| f.unwrap_or(*l))
                        .collect(),
                ))
            }
        }
    }

    /// `(low, high)` per partition of a bridged topic.
    pub async fn watermarks(&self, hub: &TopicHub) -> Result<Vec<(i64, i64)>, ApiError> {
        let meta = self.meta.clone();
        let (name, partitions) = (hub.name.clone(), hub.partitions);
        tokio::task::spawn_blocking(move || meta.watermarks(&name, partitions))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(ApiError::unavailable)
    }
}

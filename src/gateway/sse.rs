//! Server-Sent Events: `GET /v1/topics/{topic}/sse`.
//!
//! The stream, in order:
//!
//! - `event: ready`, with `id:` the start position and `retry:` the
//!   suggested reconnect delay. Carrying an id means a client that drops
//!   before the first record still resumes exactly where it started.
//! - one event per record: default type (`onmessage`), `id:` the position
//!   after it, `data:` the record envelope (see [`super::record`]).
//! - `event: lagged` (skip policy): `id:` the position after the skipped
//!   records, `data:` `{"skipped":[{"partition","first","last","count"}]}`.
//! - `event: disconnect` before the server ends the stream, `data:`
//!   `{"reason": "lagged"|"shutdown"|"error", "detail": "..."}`. It has no
//!   id, so the browser reconnects with the last record's position.
//! - heartbeats: `:heartbeat` comment lines while nothing else is sent.
//!
//! `EventSource` reconnects by itself with `Last-Event-ID`, which resumes
//! with the next record: no gap, no repeat.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde_json::json;

use super::Gateway;
use super::listener::ClientAddr;
use super::outbox::{CloseReason, Out};
use super::session::{Session, Transport};

pub async fn subscribe(
    State(gateway): State<Arc<Gateway>>,
    Path(topic): Path<String>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let session = match Session::open(
        &gateway,
        &topic,
        &headers,
        query.as_deref(),
        client.ip(),
        Transport::Sse,
        resume.as_deref(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let heartbeat = gateway.config.subscribers.heartbeat;
    let mut response = Sse::new(events(session))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Reverse proxies must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

enum Phase {
    Ready,
    Streaming,
    Done,
}

fn events(session: Session) -> impl Stream<Item = Result<Event, Infallible>> {
    let shutdown = session.gateway.shutdown.clone();
    stream::unfold(
        (session, shutdown, Phase::Ready),
        |(mut session, mut shutdown, phase)| async move {
            match phase {
                Phase::Done => return None,
                Phase::Ready => {
                    let data = json!({
                        "topic": session.topic,
                        "position": session.start,
                        "policy": session.policy.to_string(),
                    })
                    .to_string();
                    let event = Event::default()
                        .event("ready")
                        .id(session.start.clone())
                        .retry(session.gateway.config.subscribers.retry)
                        .data(data);
                    return Some((Ok(event), (session, shutdown, Phase::Streaming)));
                }
                Phase::Streaming => {}
            }
            let out = tokio::select! {
                out = session.outbox.next() => out,
                _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                    Out::Close(CloseReason::Shutdown)
                }
            };
            let (event, next) = match out {
                Out::Record(item) => {
                    let data = item.record.envelope();
                    session.sent(
                        data.len() + item.position.len(),
                        item.live.then_some(item.record.timestamp).flatten(),
                    );
                    (
                        Event::default().id(item.position).data(data),
                        Phase::Streaming,
                    )
                }
                Out::Lagged { skipped, position } => {
                    let skipped: Vec<_> = skipped
                        .iter()
                        .map(|s| {
                            json!({"partition": s.partition, "first": s.first,
                                   "last": s.last, "count": s.count})
                        })
                        .collect();
                    (
                        Event::default()
                            .event("lagged")
                            .id(position)
                            .data(json!({ "skipped": skipped }).to_string()),
                        Phase::Streaming,
                    )
                }
                Out::Close(reason) => {
                    session.ended(reason.label());
                    let data = json!({"reason": reason.label(), "detail": reason.detail()});
                    (
                        Event::default().event("disconnect").data(data.to_string()),
                        Phase::Done,
                    )
                }
            };
            Some((Ok(event), (session, shutdown, next)))
        },
    )
}

//! WebSocket: `GET /v1/topics/{topic}/ws`.
//!
//! Messages from the server:
//!
//! - text `{"type":"ready","topic":...,"position":"0:15,1:20","policy":...}`
//! - records, as text (`format=json`, the default for JSON topics):
//!   `{"type":"record","position":"...", <envelope fields>}`, or as binary
//!   frames (`format=binary`, the default for raw topics): a 4-byte
//!   big-endian header length, the JSON header (the same fields without the
//!   value), then the value bytes untouched.
//! - text `{"type":"lagged","position":"...","skipped":[...]}` (skip policy)
//! - text `{"type":"disconnect","reason":...,"detail":...}`, then a close
//!   frame: 1013 (try again later) when the client fell behind, 1012
//!   (service restart) at shutdown, 1011 on an error.
//!
//! `position` is the position after the message; to resume, reconnect with
//! `?start=<position>`. The server pings every `subscribers.heartbeat`; a
//! client silent (no pong, no message) for `subscribers.pong_timeout` is
//! disconnected, and so is one whose writes stall for
//! `subscribers.write_timeout`. Messages from the client are ignored.
//!
//! Clients only answer pings, so their messages and frames are limited to
//! [`MAX_CLIENT_MESSAGE`] bytes; a larger one ends the connection with
//! close code 1009 (message too big). The frame limit matters as much as
//! the message limit: a frame is buffered whole before it is checked
//! against the message limit, and the default frame limit is 16 MiB.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::json;

use super::Gateway;
use super::listener::ClientAddr;
use super::outbox::{CloseReason, Out};
use super::query::WireFormat;
use super::request::ApiError;
use super::session::{Session, Transport};

/// Largest message, and largest frame, accepted from a client (they only
/// answer pings).
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

pub async fn subscribe(
    State(gateway): State<Arc<Gateway>>,
    Path(topic): Path<String>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers attach cookies to cross-site WebSocket handshakes and CORS
    // does not apply to them: check the origin here, against the same list.
    let allowed = &gateway.config.http.cors.allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && !allowed.is_empty()
        && !allowed.iter().any(|a| a == "*" || a == origin)
    {
        return gateway
            .rejected(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("origin `{origin}` is not in http.cors.allowed_origins"),
            ))
            .into_response();
    }
    let session = match Session::open(
        &gateway,
        &topic,
        &headers,
        query.as_deref(),
        client.ip(),
        Transport::WebSocket,
        None,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // Clients only answer pings: small read buffers. Messages are flushed
    // one by one (the outbox is the buffer), so the write buffer stays small
    // too. With tens of thousands of subscribers these dominate memory.
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, session))
}

enum Step {
    Continue,
    Stop,
}

/// Sends a message, giving up after `within` without completing; every
/// write to the client goes through it. A send nearly always completes at
/// once (the socket has room), so the timer is armed only when it does
/// not: one timer per message, per subscriber, is a measurable share of a
/// large fan-out.
async fn send_within(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    within: Duration,
) -> Result<Result<(), axum::Error>, tokio::time::error::Elapsed> {
    let mut send = sink.send(message);
    if let Poll::Ready(sent) = futures::poll!(&mut send) {
        return Ok(sent);
    }
    tokio::time::timeout(within, send).await
}

async fn serve(socket: WebSocket, mut session: Session) {
    let config = session.gateway.config.subscribers.clone();
    let (mut sink, mut incoming) = socket.split();
    let mut shutdown = session.gateway.shutdown.clone();
    let mut stopping = false;
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval(config.heartbeat);
    ping.tick().await;

    let ready = json!({"type": "ready", "topic": session.topic, "position": session.start,
                       "policy": session.policy.to_string()})
    .to_string();
    let sent = send_within(&mut sink, Message::text(ready), config.write_timeout).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }

    loop {
        let step = tokio::select! {
            out = session.outbox.next() => {
                let (message, close) = render(&session, out);
                match send_within(&mut sink, message, config.write_timeout).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        session.ended("write_timeout");
                        break;
                    }
                }
                match close {
                    None => Step::Continue,
                    Some(reason) => {
                        session.ended(reason.label());
                        let code = match reason {
                            CloseReason::Lagged(_) => close_code::AGAIN,
                            CloseReason::Shutdown => close_code::RESTART,
                            CloseReason::Error(_) => close_code::ERROR,
                        };
                        let frame = CloseFrame {
                            code,
                            reason: reason.label().into(),
                        };
                        let _ = send_within(&mut sink, Message::Close(Some(frame)), config.write_timeout).await;
                        Step::Stop
                    }
                }
            }
            message = incoming.next() => match message {
                None | Some(Ok(Message::Close(_))) => Step::Stop,
                Some(Err(e)) => {
                    // Tell a client that broke the rules which rule; the
                    // connection is unusable either way.
                    if let Some(code) = read_error_close_code(e) {
                        session.ended("client_error");
                        let frame = CloseFrame { code, reason: "".into() };
                        let _ = send_within(&mut sink, Message::Close(Some(frame)), config.write_timeout).await;
                    }
                    Step::Stop
                }
                Some(Ok(_)) => {
                    heard = Instant::now();
                    Step::Continue
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > config.pong_timeout {
                    session.ended("heartbeat");
                    Step::Stop
                } else {
                    match send_within(&mut sink, Message::Ping(Default::default()), config.write_timeout).await
                    {
                        Ok(Ok(())) => Step::Continue,
                        Ok(Err(_)) => Step::Stop,
                        Err(_) => {
                            session.ended("write_timeout");
                            Step::Stop
                        }
                    }
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; }, if !stopping => {
                stopping = true;
                session.outbox.close(CloseReason::Shutdown);
                Step::Continue
            }
        };
        if let Step::Stop = step {
            break;
        }
    }
}

/// The close code for an error reading from the client, if the client
/// caused it: 1009 for a frame or message over [`MAX_CLIENT_MESSAGE`], 1002
/// for a protocol violation. None for I/O errors (the connection is gone).
fn read_error_close_code(error: axum::Error) -> Option<u16> {
    match *error.into_inner().downcast::<tungstenite::Error>().ok()? {
        tungstenite::Error::Capacity(_) => Some(close_code::SIZE),
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => Some(close_code::PROTOCOL),
        _ => None,
    }
}

/// The message for an outbox item, and the close reason if it ends the
/// subscription.
fn render(session: &Session, out: Out) -> (Message, Option<CloseReason>) {
    match out {
        Out::Record(item) => {
            let timestamp = item.live.then_some(item.record.timestamp).flatten();
            let message = match session.format {
                WireFormat::Binary => Message::Binary(item.record.ws_binary(&item.position).into()),
                WireFormat::Json => Message::text(item.record.ws_text(&item.position)),
            };
            let bytes = match &message {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                _ => 0,
            };
            session.sent(bytes, timestamp);
            (message, None)
        }
        Out::Lagged { skipped, position } => {
            let skipped: Vec<_> = skipped
                .iter()
                .map(|s| {
                    json!({"partition": s.partition, "first": s.first, "last": s.last,
                           "count": s.count})
                })
                .collect();
            let text = json!({"type": "lagged", "position": position, "skipped": skipped});
            (Message::text(text.to_string()), None)
        }
        Out::Close(reason) => {
            let text = json!({"type": "disconnect", "reason": reason.label(),
                              "detail": reason.detail()});
            (Message::text(text.to_string()), Some(reason))
        }
    }
}

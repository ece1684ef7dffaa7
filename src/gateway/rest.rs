//! The REST endpoints:
//!
//! - `GET /v1/topics`: the bridged topics the token may read, with format,
//!   partitions and their offsets (`low`, and `end`: the last stable
//!   offset), and live subscribers.
//! - `GET /v1/topics/{topic}/latest[?key=...]`: the latest record per key
//!   seen by the live tail (bounded; see `latest` in the config).
//! - `GET /v1/topics/{topic}/records?start=...&limit=...[&key=...][&filter=...]`:
//!   a page of records from a position (default `earliest`), each with the
//!   position after it, and `next`, the position to ask for the next page.
//!   A page ends at `limit` records, at the end of every partition, after a
//!   few seconds, or before it would exceed `limits.max_response_bytes`.
//!
//! Responses are bounded in bytes (`limits.max_response_bytes`: a page ends
//! early, `/latest` beyond it is refused — select keys) and in number at
//! once (`limits.max_rest_requests`), so that no request, or burst of
//! them, makes the gateway build unbounded bodies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Gateway;
use super::history::{HistoryReader, Read};
use super::listener::ClientAddr;
use super::position::Start;
use super::query::{self, Endpoint, Params};
use super::request::ApiError;
use super::selection::{Match, Selection};

/// Longest time one page read takes.
const PAGE_TIME: Duration = Duration::from_secs(5);

pub async fn topics(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let pairs = query::pairs(raw.as_deref()).map_err(ApiError::bad_request)?;
        let client = gw.client(client.ip(), &headers);
        gw.check_rate(client)?;
        let principal = gw
            .auth
            .authenticate(&headers, &pairs, client)
            .map_err(|e| gw.rejected(e.into()))?;
        let mut out = Vec::new();
        for topic in &gw.config.topics {
            if !principal.may_read(&topic.topic) {
                continue;
            }
            let Some(hub) = gw.hubs.get(&topic.topic) else {
                continue;
            };
            let partitions: Vec<_> = gw
                .watermarks(hub)
                .await?
                .iter()
                .enumerate()
                .map(|(p, (low, high))| json!({"partition": p, "low": low, "end": high}))
                .collect();
            out.push(json!({
                "topic": topic.topic,
                "format": topic.format.to_string(),
                "policy": hub.policy.to_string(),
                "partitions": partitions,
                "live_subscribers": hub.receivers(),
            }));
        }
        Ok::<_, ApiError>(Json(json!({ "topics": out })))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn latest(
    State(gw): State<Arc<Gateway>>,
    Path(topic): Path<String>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        let pairs = query::pairs(raw.as_deref()).map_err(ApiError::bad_request)?;
        let (principal, hub) = gw.admit(&topic, &headers, &pairs, client.ip())?;
        let _permit = gw.rest_permit()?;
        let params = Params::parse(
            &pairs,
            Endpoint::Latest,
            &gw.config.auth.query_param,
            gw.config.limits.max_keys,
        )
        .map_err(|e| gw.rejected(ApiError::bad_request(e)))?;
        let keys: HashSet<Vec<u8>> = params.keys.into_iter().collect();
        let prefixes = principal.key_prefixes;
        let records = hub.latest(|r| {
            let Some(key) = r.key.as_deref() else {
                return false;
            };
            (keys.is_empty() || keys.contains(key))
                && prefixes
                    .as_ref()
                    .is_none_or(|ps| ps.iter().any(|p| key.starts_with(p)))
        });
        // Measured before anything is copied.
        let max = gw.config.limits.max_response_bytes;
        let size = records
            .iter()
            .map(|r| r.envelope().len() + 1)
            .sum::<usize>()
            + topic.len()
            + 32;
        if size > max {
            return Err(gw.rejected(ApiError::bad_request(format!(
                "the latest values of `{topic}` are {size} bytes, above the response limit of \
                 {max} (limits.max_response_bytes): select keys with `key=`"
            ))));
        }
        // The envelopes are JSON already: splice them instead of re-parsing.
        let mut body = String::with_capacity(size);
        body.push_str("{\"topic\":");
        body.push_str(&serde_json::Value::String(topic.clone()).to_string());
        body.push_str(",\"records\":[");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r.envelope());
        }
        body.push_str("]}");
        Ok::<_, ApiError>(body)
    })();
    match result {
        Ok(body) => json_response(body),
        Err(e) => e.into_response(),
    }
}

pub async fn records(
    State(gw): State<Arc<Gateway>>,
    Path(topic): Path<String>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    match page(&gw, &topic, raw.as_deref(), &headers, client.ip()).await {
        Ok(body) => json_response(body),
        Err(e) => e.into_response(),
    }
}

async fn page(
    gw: &Arc<Gateway>,
    topic: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Result<String, ApiError> {
    let pairs = query::pairs(raw).map_err(|e| gw.rejected(ApiError::bad_request(e)))?;
    let (principal, hub) = gw.admit(topic, headers, &pairs, client)?;
    let params = Params::parse(
        &pairs,
        Endpoint::Page,
        &gw.config.auth.query_param,
        gw.config.limits.max_keys,
    )
    .map_err(|e| gw.rejected(ApiError::bad_request(e)))?;
    let max = gw.config.limits.max_page_records;
    let limit = params.limit.unwrap_or(100.min(max));
    if limit > max {
        return Err(gw.rejected(ApiError::bad_request(format!(
            "limit {limit} is above the maximum of {max}"
        ))));
    }
    if let Some(prefixes) = &principal.key_prefixes
        && params
            .keys
            .iter()
            .any(|k| !prefixes.iter().any(|p| k.starts_with(p)))
    {
        return Err(gw.rejected(ApiError::new(
            StatusCode::FORBIDDEN,
            "the token does not allow one of the keys",
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
    let _rest = gw.rest_permit()?;
    let start = params.start.clone().unwrap_or(Start::Earliest);
    let mut position = gw.resolve_start(&hub, &start).await?;

    let permit = gw.history_permit().await?;
    let mut reader = HistoryReader::open(
        &gw.history_client,
        topic,
        hub.decoder.clone(),
        &position,
        permit,
        gw.metrics.history_readers.clone(),
    )
    .map_err(ApiError::unavailable)?;

    // Room left for records after the `next` position and brackets.
    let max_bytes = gw
        .config
        .limits
        .max_response_bytes
        .saturating_sub(position.token().len() * 2 + 64);
    let mut full = false;
    let mut body = String::from("{\"records\":[");
    let mut count = 0;
    let mut ended: HashSet<i32> = HashSet::new();
    let deadline = tokio::time::Instant::now() + PAGE_TIME;
    while count < limit && ended.len() < hub.partitions {
        let read = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => break,
            Ok(read) => read.map_err(ApiError::unavailable)?,
        };
        match read {
            Read::Record(record) => {
                let before = position.clone();
                if !position.advance(record.partition, record.offset) {
                    continue;
                }
                if selection.matches(&record) == Match::Yes {
                    let text = record.ws_text(&position.token());
                    // A page holds at least one record, so that paging
                    // always moves; the record that does not fit starts
                    // the next page.
                    if count > 0 && body.len() + 1 + text.len() > max_bytes {
                        position = before;
                        full = true;
                        break;
                    }
                    if count > 0 {
                        body.push(',');
                    }
                    body.push_str(&text);
                    count += 1;
                }
            }
            Read::End(p) => {
                ended.insert(p);
            }
        }
    }
    // Every record the reader returned went through `position`; what lies
    // between it and the reader's read-to position is transaction markers
    // or aborted records, so the next page may start past them. Not when
    // the page was full: the reader has read the record that did not fit.
    if !full {
        for (p, at) in reader.read_to().offsets().iter().enumerate() {
            position.raise(p as i32, *at);
        }
    }
    body.push_str("],\"next\":");
    body.push_str(&serde_json::Value::String(position.token()).to_string());
    body.push('}');
    Ok(body)
}

fn json_response(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

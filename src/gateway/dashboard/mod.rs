//! The live telemetry dashboard: `GET /dashboard`, when
//! `dashboard.enabled` is set.
//!
//! A single page, plain JavaScript and CSS with no framework and no build
//! step, embedded in the binary at compile time so that it works offline
//! and always matches the gateway that serves it:
//!
//! | path | what |
//! |---|---|
//! | `/dashboard` | the page |
//! | `/dashboard/app.js`, `/dashboard/app.css` | its script and style |
//! | `/dashboard/config.json` | topic names and title from `dashboard:` |
//!
//! The page is a client of the public API like any other: it discovers
//! devices with `/v1/topics/{waveforms}/latest`, draws waveforms from one
//! binary WebSocket (resuming with `start=<position>`), and follows heart
//! rates and alerts over two `EventSource`s (resuming with
//! `Last-Event-ID`). One stream per topic rather than per device, because
//! browsers allow only six HTTP/1.1 connections per host and every open
//! `EventSource` holds one.
//!
//! The page itself carries no data, so it is served without a token; the
//! page passes the token it finds in its own URL (`?access_token=`, the
//! `auth.query_param`) on to the API, or the browser sends the token cookie.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use super::Gateway;
use super::config::AuthMode;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only the page's own files and same-origin API calls: no CDN, no inline
/// script, nothing a injected record value could turn into markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        // The page uses relative URLs, which resolve from `/dashboard` only.
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("../dashboard") }),
        )
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route("/dashboard/config.json", get(config))
        .with_state(gateway)
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn config(State(gw): State<Arc<Gateway>>) -> Response {
    let d = &gw.config.dashboard;
    let body = json!({
        "title": d.title,
        "waveform_topic": d.waveform_topic,
        "heart_rate_topic": d.heart_rate_topic,
        "alerts_topic": d.alerts_topic,
        "alerts_lookback_ms": u64::try_from(d.alerts_lookback.as_millis()).unwrap_or(u64::MAX),
        "token_param": gw.config.auth.query_param,
        "open": gw.config.auth.mode == AuthMode::Open,
    });
    asset("application/json", &body.to_string())
}

fn asset(content_type: &'static str, body: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files that change with the binary: revalidate each load.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://"), "no absolute URLs");
            assert!(!text.contains("https://"), "no CDN");
        }
        assert!(PAGE.contains(r#"src="dashboard/app.js""#));
        assert!(PAGE.contains(r#"href="dashboard/app.css""#));
        assert!(!PAGE.contains("<script>"), "the CSP forbids inline script");
    }
}

//! The REST API: Confluent Schema Registry's routes, content types and
//! error bodies, plus `/metrics`, `/healthz` and `/readyz`. Handlers only
//! translate HTTP to [`Registry`] calls and back.
//!
//! Responses are `application/vnd.schemaregistry.v1+json` unless the client
//! accepts only `application/json`. Request bodies may be either (or carry
//! no content type). Boolean query flags accept `true`/`false` in any case
//! (Python clients send `True`/`False`). Errors are
//! `{"error_code": <code>, "message": "..."}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::compat::CompatibilityLevel;
use super::error::RegistryError;
use super::metrics::RegistryMetrics;
use super::service::{Registry, SchemaRequest};
use super::store::VersionSpec;
use crate::ops::{self, Health};

/// Confluent's content type.
pub const SCHEMA_REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<RegistryMetrics>,
}

type Flags = Result<Query<HashMap<String, String>>, QueryRejection>;
type ApiResult = Result<Response, RegistryError>;

/// The whole HTTP surface of a registry instance.
pub fn router(
    registry: Arc<Registry>,
    metrics: Arc<RegistryMetrics>,
    health: Arc<Health>,
) -> Router {
    let state = AppState { registry, metrics };
    let api = Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .route(
            "/config",
            get(global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/metrics", get(metrics_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(not_found)
        .with_state(state);
    api.merge(ops::health_router(health))
}

/// Counts requests and applies content negotiation.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let plain_json = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            !accept.contains("vnd.schemaregistry") && accept.contains("application/json")
        });
    let mut response = next.run(request).await;
    if plain_json
        && response.headers().get(header::CONTENT_TYPE)
            == Some(&HeaderValue::from_static(SCHEMA_REGISTRY_JSON))
    {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    state
        .metrics
        .requests
        .with_label_values(&[method.as_str(), &route, response.status().as_str()])
        .inc();
    response
}

fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, SCHEMA_REGISTRY_JSON)],
            bytes,
        )
            .into_response(),
        Err(e) => RegistryError::Store(format!("cannot encode the answer: {e}")).into_response(),
    }
}

fn ok<T: Serialize>(body: &T) -> ApiResult {
    Ok(reply(StatusCode::OK, body))
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %self, "request failed");
        }
        reply(
            status,
            &json!({"error_code": self.code(), "message": self.to_string()}),
        )
    }
}

async fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        &json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
    )
}

/// Query parameters; a malformed query string is a 400.
fn params(query: Flags) -> Result<HashMap<String, String>, RegistryError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| RegistryError::BadRequest(e.body_text()))
}

/// A boolean flag: absent is false; `true`/`false` in any case.
fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, RegistryError> {
    match params.get(name).map(|v| v.trim()) {
        None | Some("") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(RegistryError::BadRequest(format!(
            "query parameter `{name}` must be true or false, not `{v}`"
        ))),
    }
}

/// `offset` and `limit` (-1: no limit) applied to a list.
fn page<T>(items: Vec<T>, params: &HashMap<String, String>) -> Result<Vec<T>, RegistryError> {
    let number = |name: &str, default: i64| -> Result<i64, RegistryError> {
        match params.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                RegistryError::BadRequest(format!("query parameter `{name}` must be a number"))
            }),
        }
    };
    let offset = usize::try_from(number("offset", 0)?.max(0)).unwrap_or(usize::MAX);
    let limit = number("limit", -1)?;
    let items = items.into_iter().skip(offset);
    Ok(if limit < 0 {
        items.collect()
    } else {
        items
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    })
}

fn parse_id(text: &str) -> Result<u32, RegistryError> {
    text.parse()
        .map_err(|_| RegistryError::BadRequest(format!("`{text}` is not a schema id")))
}

/// Parses a JSON request body. Accepts Confluent's content types, plain
/// JSON, octet-stream and none; refuses others with 415.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, RegistryError> {
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
        let mime = text.split(';').next().unwrap_or_default().trim();
        let accepted = mime == "application/json"
            || mime == "application/octet-stream"
            || mime.starts_with("application/vnd.schemaregistry");
        if !accepted {
            return Err(RegistryError::UnsupportedMediaType(mime.to_string()));
        }
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            RegistryError::UnprocessableEntity(format!("invalid request: {e}"))
        }
        _ => RegistryError::BadRequest(format!("the body is not JSON: {e}")),
    })
}

async fn root() -> Response {
    reply(StatusCode::OK, &json!({}))
}

async fn schema_types(State(s): State<AppState>) -> ApiResult {
    ok(&s.registry.schema_types())
}

/// `GET /schemas/ids/{id}`. The `subject` parameter is accepted and, as in
/// Confluent's default context, does not narrow the lookup: ids are
/// global.
async fn schema_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Flags,
) -> ApiResult {
    params(query)?;
    ok(&s.registry.schema_by_id(parse_id(&id)?)?)
}

async fn raw_schema_by_id(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let schema = s.registry.schema_by_id(parse_id(&id)?)?;
    Ok(raw_schema(schema.schema))
}

/// A schema text as the body itself (`.../schema` routes).
fn raw_schema(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, SCHEMA_REGISTRY_JSON)],
        text,
    )
        .into_response()
}

async fn id_subjects(State(s): State<AppState>, Path(id): Path<String>, query: Flags) -> ApiResult {
    let p = params(query)?;
    let mut subjects = s
        .registry
        .id_subjects(parse_id(&id)?, flag(&p, "deleted")?)?;
    if let Some(subject) = p.get("subject") {
        subjects.retain(|s| s == subject);
    }
    ok(&page(subjects, &p)?)
}

async fn id_versions(State(s): State<AppState>, Path(id): Path<String>, query: Flags) -> ApiResult {
    let p = params(query)?;
    let mut versions = s
        .registry
        .id_versions(parse_id(&id)?, flag(&p, "deleted")?)?;
    if let Some(subject) = p.get("subject") {
        versions.retain(|v| &v.subject == subject);
    }
    ok(&page(versions, &p)?)
}

async fn subjects(State(s): State<AppState>, query: Flags) -> ApiResult {
    let p = params(query)?;
    let subjects = s.registry.subjects(
        flag(&p, "deleted")?,
        flag(&p, "deleted_only")?,
        p.get("subjectPrefix").map(String::as_str),
    )?;
    ok(&page(subjects, &p)?)
}

async fn versions(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    let versions =
        s.registry
            .versions(&subject, flag(&p, "deleted")?, flag(&p, "deleted_only")?)?;
    ok(&page(versions, &p)?)
}

async fn register(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let p = params(query)?;
    let request: SchemaRequest = body(&headers, &bytes)?;
    let id = s
        .registry
        .register(&subject, &request, flag(&p, "normalize")?)
        .await?;
    ok(&json!({ "id": id }))
}

async fn lookup(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let p = params(query)?;
    let request: SchemaRequest = body(&headers, &bytes)?;
    ok(&s.registry.lookup(
        &subject,
        &request,
        flag(&p, "normalize")?,
        flag(&p, "deleted")?,
    )?)
}

async fn delete_subject(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    ok(&s
        .registry
        .delete_subject(&subject, flag(&p, "permanent")?)
        .await?)
}

async fn version(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    let spec = VersionSpec::parse(&version)?;
    ok(&s.registry.version(&subject, spec, flag(&p, "deleted")?)?)
}

async fn raw_version_schema(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    let spec = VersionSpec::parse(&version)?;
    let found = s.registry.version(&subject, spec, flag(&p, "deleted")?)?;
    Ok(raw_schema(found.schema))
}

async fn referenced_by(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    ok(&s.registry.referenced_by(&subject, spec)?)
}

async fn delete_version(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    let spec = VersionSpec::parse(&version)?;
    ok(&s
        .registry
        .delete_version(&subject, spec, flag(&p, "permanent")?)
        .await?)
}

async fn compatibility_version(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let p = params(query)?;
    let spec = VersionSpec::parse(&version)?;
    let request: SchemaRequest = body(&headers, &bytes)?;
    ok(&s.registry.test_compatibility(
        &subject,
        Some(spec),
        &request,
        flag(&p, "normalize")?,
        flag(&p, "verbose")?,
    )?)
}

async fn compatibility_all(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let p = params(query)?;
    let request: SchemaRequest = body(&headers, &bytes)?;
    ok(&s.registry.test_compatibility(
        &subject,
        None,
        &request,
        flag(&p, "normalize")?,
        flag(&p, "verbose")?,
    )?)
}

/// The body of `PUT /config`: `{"compatibility": "FULL"}`.
fn level_from(headers: &HeaderMap, bytes: &Bytes) -> Result<CompatibilityLevel, RegistryError> {
    let value: serde_json::Value = body(headers, bytes)?;
    value
        .get("compatibility")
        .or_else(|| value.get("compatibilityLevel"))
        .and_then(|v| v.as_str())
        .and_then(CompatibilityLevel::parse)
        .ok_or(RegistryError::InvalidCompatibilityLevel)
}

async fn global_config(State(s): State<AppState>) -> ApiResult {
    ok(&json!({"compatibilityLevel": s.registry.global_level()?}))
}

async fn put_global_config(
    State(s): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let level = level_from(&headers, &bytes)?;
    let level = s.registry.set_level(None, level).await?;
    ok(&json!({ "compatibility": level }))
}

async fn delete_global_config(State(s): State<AppState>) -> ApiResult {
    ok(&json!({"compatibilityLevel": s.registry.delete_level(None).await?}))
}

async fn subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> ApiResult {
    let p = params(query)?;
    let level = s
        .registry
        .subject_level(&subject, flag(&p, "defaultToGlobal")?)?;
    ok(&json!({ "compatibilityLevel": level }))
}

async fn put_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let level = level_from(&headers, &bytes)?;
    let level = s.registry.set_level(Some(&subject), level).await?;
    ok(&json!({ "compatibility": level }))
}

async fn delete_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
) -> ApiResult {
    ok(&json!({"compatibilityLevel": s.registry.delete_level(Some(&subject)).await?}))
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

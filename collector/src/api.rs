//! HTTP routes: ingest, controls for filters, the read API and health.

use crate::controls::Controls;
use crate::error::ApiError;
use crate::ingest;
use crate::keys::Credential;
use crate::metrics::Metrics;
use crate::rollup;
use crate::sender::Sender;
use crate::store::{EventFilter, Org, Store, StoreError};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest ingest body accepted; the filter's batches are far smaller.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `GET /v1/controls` answers, kept current (see `controls`).
    pub controls: Arc<Controls>,
    /// Served over TLS: session cookies are marked `Secure`.
    pub tls: bool,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .route("/v1/controls", get(controls))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/events.csv", get(export_events))
        .route("/api/v1/session", get(crate::web::session_info))
        .route("/metrics", get(metrics))
        .route("/", get(crate::web::index))
        .route(
            "/login",
            get(crate::web::login_page).post(crate::web::login),
        )
        .route("/logout", post(crate::web::logout))
        .route("/assets/{file}", get(crate::web::asset))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: nothing here may be framed, sniffed or cached by a proxy
/// (unless the route says otherwise: `/v1/controls` is `no-cache`, to revalidate by ETag), and
/// pages may load only what the collector itself serves.
async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // `same-origin`, not `no-referrer`: with the latter browsers send `Origin: null` on the
        // dashboard's own form posts, and the origin check would refuse them.
        ("referrer-policy", "same-origin"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    resp
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("task: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// The org of a read call: by org key, or by the dashboard's session cookie.
async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Org, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authenticate(state, headers).await;
    }
    crate::web::current_session(state, headers)
        .await
        .map(|s| s.org)
        .ok_or(ApiError::Unauthorized)
}

/// The org of an org key (`Authorization: Bearer tly_...`).
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Org, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::keys::from_authorization)
        .ok_or(ApiError::Unauthorized)?
        .to_string();
    let store = state.store.clone();
    blocking(move || store.org_for_key(&key))
        .await?
        .ok_or(ApiError::Unauthorized)
}

async fn ingest_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let started = std::time::Instant::now();
    let result = ingest(&state, &headers, body).await;
    state
        .metrics
        .batch(result.as_ref().map(|(a, d)| (*a, *d)), started.elapsed());
    let (accepted, duplicates) = result?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": accepted, "duplicates": duplicates})),
    ))
}

/// How much of a body over [`MAX_BATCH_BYTES`] is read, and dropped, before the 413 goes out.
const DRAIN_LIMIT: usize = 4 * MAX_BATCH_BYTES;

/// The batch's bytes, at most [`MAX_BATCH_BYTES`]. A larger body is still read to its end (up to
/// [`DRAIN_LIMIT`]) before the 413: a client still sending when the server stops reading meets a
/// reset connection instead of the answer.
async fn read_batch(headers: &HeaderMap, mut body: Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(ApiError::PayloadTooLarge(MAX_BATCH_BYTES));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BATCH_BYTES));
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read = read.saturating_add(data.len());
        if read <= MAX_BATCH_BYTES {
            bytes.extend_from_slice(&data);
        } else if read > DRAIN_LIMIT {
            break;
        } else {
            bytes = Vec::new();
        }
    }
    if read > MAX_BATCH_BYTES {
        return Err(ApiError::PayloadTooLarge(MAX_BATCH_BYTES));
    }
    Ok(bytes)
}

/// The org key or mesh token of `Authorization: Bearer ...`.
fn credential(headers: &HeaderMap) -> Result<Credential<'_>, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::keys::credential)
        .ok_or(ApiError::Unauthorized)
}

/// Who sends a batch: an org (by its key) or a mesh token.
async fn sender(state: &AppState, headers: &HeaderMap) -> Result<Sender, ApiError> {
    let secret = credential(headers)?.secret().to_string();
    let store = state.store.clone();
    blocking(move || match crate::keys::classify(&secret) {
        Some(credential) => Sender::find(&store, credential),
        None => Ok(None),
    })
    .await?
    .ok_or(ApiError::Unauthorized)
}

async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(usize, usize), ApiError> {
    let sender = sender(state, headers).await?;
    let bytes = read_batch(headers, body).await?;
    let who = sender.describe();
    let rejected = |e: &ApiError| {
        // The field's name only: values could be labels a client chose.
        let field = match e {
            ApiError::BadRequest { field, .. } => field.as_deref().unwrap_or("-"),
            _ => "-",
        };
        crate::log::warn(&format!(
            "{who}: rejected a batch of {} bytes (field {field})",
            bytes.len()
        ));
    };
    let (batch, unknown) = ingest::parse_counting(&bytes).inspect_err(rejected)?;
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    // 202 only once the transaction has committed (and, with synchronous=FULL, reached disk).
    blocking(move || {
        let owners = match sender.owners(&store, &batch) {
            Ok(owners) => owners,
            Err(e) => return Ok(Err(e)),
        };
        let batch = std::sync::Arc::new(batch);
        let (accepted, duplicates, new) =
            store.insert_owned(owners.clone(), batch.clone(), now_ms())?;
        metrics.events(&owners, &batch, &new);
        metrics.unknown_fields(&unknown);
        Ok(Ok((accepted, duplicates)))
    })
    .await?
    .inspect_err(rejected)
}

const EVENT_PARAMS: [&str; 13] = [
    "from",
    "to",
    "limit",
    "team",
    "app",
    "feature",
    "task",
    "model",
    "provider",
    "user",
    "status",
    "namespace",
    "workload",
];

fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            tally::time::parse_rfc3339_ms(v).ok_or_else(|| {
                ApiError::field(
                    name,
                    format!("{name} must be an RFC 3339 date-time or a date"),
                )
            })
        })
        .transpose()
}

fn status_param(v: &str) -> Result<(u16, u16), ApiError> {
    let bad = || {
        ApiError::field(
            "status",
            "status must be a code like 429 or a class like 5xx",
        )
    };
    if let Some(class) = v.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        if !(1..=5).contains(&c) {
            return Err(bad());
        }
        return Ok((c * 100, c * 100 + 99));
    }
    let s: u16 = v.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&s) {
        return Err(bad());
    }
    Ok((s, s))
}

/// The filters of the events list and its CSV export; `limit` defaults to `default` and may be
/// at most `max`.
fn event_filter(
    q: &HashMap<String, String>,
    default: u32,
    max: u32,
) -> Result<EventFilter, ApiError> {
    only(q, &EVENT_PARAMS)?;
    let limit = match q.get("limit") {
        None => default,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!("limit must be 1 to {max}"),
                ))
            }
        },
    };
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(EventFilter {
        from_ms: time_param(q, "from")?,
        to_ms: time_param(q, "to")?,
        limit,
        team: s("team"),
        app: s("app"),
        feature: s("feature"),
        task: s("task"),
        model: s("model"),
        provider: s("provider"),
        user: s("user"),
        namespace: s("namespace"),
        workload: s("workload"),
        status: q.get("status").map(|v| status_param(v)).transpose()?,
    })
}

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    let filter = event_filter(&q, 100, 1000)?;
    let store = state.store.clone();
    let events = blocking(move || store.query_events(&org, &filter)).await?;
    Ok(Json(json!({ "events": events })))
}

/// The same filters as the events list, as CSV (up to 100 000 rows, newest first).
async fn export_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    let filter = event_filter(&q, 10_000, 100_000)?;
    let store = state.store.clone();
    let events = blocking(move || store.query_events(&org, &filter)).await?;
    let csv = crate::csv::events(&events);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"tally-events.csv\"",
            ),
        ],
        csv,
    ))
}

/// Only the listed parameters, or a 400 naming the stranger.
fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::field(
            k.clone(),
            format!("unknown parameter; use {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn group_by(q: &HashMap<String, String>) -> Result<Option<&'static str>, ApiError> {
    match q.get("group_by").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(g) => rollup::DIMENSIONS
            .iter()
            .find(|d| **d == g)
            .map(|d| Some(*d))
            .ok_or_else(|| {
                ApiError::field(
                    "group_by",
                    format!("group_by must be one of {}", rollup::DIMENSIONS.join(", ")),
                )
            }),
    }
}

/// `from`/`to`, defaulting to the last 24 hours; `to` after `from`, a range of 400 days at most.
fn range(q: &HashMap<String, String>, now: i64) -> Result<(i64, i64), ApiError> {
    let to = time_param(q, "to")?.unwrap_or(now);
    let from = time_param(q, "from")?.unwrap_or(to - rollup::DAY);
    if from >= to {
        return Err(ApiError::field("from", "from must be before to"));
    }
    if to - from > 400 * rollup::DAY {
        return Err(ApiError::field("from", "a range may span 400 days at most"));
    }
    Ok((from, to))
}

/// A key as the API shows it: `null` for the total and for events without that label.
fn key_json(dim: Option<&str>, key: &str) -> serde_json::Value {
    if dim.is_none() || key.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(key.to_string())
    }
}

fn figures(a: &rollup::Agg) -> serde_json::Map<String, serde_json::Value> {
    let ms = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), json!(a.requests));
    m.insert("errors".into(), json!(a.errors));
    m.insert("input_tokens".into(), json!(a.input_tokens));
    m.insert("output_tokens".into(), json!(a.output_tokens));
    // Sums of f64 costs, rounded to the pico-dollar the filter prices in.
    m.insert("cost_usd".into(), json!((a.cost_usd * 1e12).round() / 1e12));
    let avg = (a.requests > 0).then(|| a.latency_sum_ms / a.requests as f64);
    m.insert("latency_avg_ms".into(), json!(ms(avg)));
    m.insert("latency_p50_ms".into(), json!(ms(a.latency.quantile(0.5))));
    m.insert("latency_p95_ms".into(), json!(ms(a.latency.quantile(0.95))));
    m.insert("ttfb_p50_ms".into(), json!(ms(a.ttfb.quantile(0.5))));
    m
}

async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    only(&q, &["group_by", "from", "to"])?;
    let dim = group_by(&q)?;
    let now = now_ms();
    let (from, to) = range(&q, now)?;
    let store = state.store.clone();
    let rows = blocking(move || store.summary(&org, dim, from, to, now)).await?;
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|(key, agg)| {
            let mut m = figures(agg);
            m.insert("key".into(), key_json(dim, key));
            serde_json::Value::Object(m)
        })
        .collect();
    Ok(Json(json!({
        "group_by": dim,
        "from": tally::time::format_rfc3339_ms(from),
        "to": tally::time::format_rfc3339_ms(to),
        "rows": rows,
    })))
}

async fn timeseries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    only(&q, &["bucket", "group_by", "from", "to"])?;
    let dim = group_by(&q)?;
    let bucket = match q.get("bucket").map(String::as_str) {
        None | Some("hour") => rollup::HOUR,
        Some("minute") => rollup::MINUTE,
        Some("day") => rollup::DAY,
        Some(_) => {
            return Err(ApiError::field(
                "bucket",
                "bucket must be minute, hour or day",
            ))
        }
    };
    if bucket < rollup::finest(dim) {
        return Err(ApiError::field(
            "group_by",
            "this dimension is kept per hour and per day: use bucket=hour or day",
        ));
    }
    let (from, to) = range(&q, now_ms())?;
    if (to - from) / bucket > 10_000 {
        return Err(ApiError::field(
            "bucket",
            "more than 10000 buckets: choose a larger bucket or a shorter range",
        ));
    }
    let store = state.store.clone();
    let rows = blocking(move || store.timeseries(&org, bucket, dim, from, to)).await?;
    let points: Vec<serde_json::Value> = rows
        .iter()
        .map(|(t, key, agg)| {
            let mut m = figures(agg);
            m.insert("bucket".into(), json!(tally::time::format_rfc3339_ms(*t)));
            m.insert("key".into(), key_json(dim, key));
            serde_json::Value::Object(m)
        })
        .collect();
    Ok(Json(json!({
        "bucket": q.get("bucket").map_or("hour", String::as_str),
        "group_by": dim,
        "points": points,
    })))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.clone();
    let db_bytes = tokio::task::spawn_blocking(move || store.db_bytes())
        .await
        .unwrap_or(0);
    let text = state.metrics.render(db_bytes);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// `GET /v1/controls`: the org keys a filter may accept (see `controls`), with an ETag; a
/// request that already has the current answer gets 304 and no body.
async fn controls(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let secret = credential(&headers)?.secret();
    let answer = match state.controls.answer(secret) {
        Some(a) => a,
        None => {
            let (controls, secret) = (state.controls.clone(), secret.to_string());
            tokio::task::spawn_blocking(move || controls.answer_fresh(&secret))
                .await
                .map_err(|e| ApiError::Internal(format!("task: {e}")))?
                .ok_or(ApiError::Unauthorized)?
        }
    };
    let etag = header::HeaderValue::from_str(&answer.etag)
        .map_err(|e| ApiError::Internal(format!("etag: {e}")))?;
    let cache = (
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| crate::controls::not_modified(v, &answer.etag));
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            cache,
        ],
        answer.body.clone(),
    )
        .into_response())
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

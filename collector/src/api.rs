//! HTTP routes: ingest, controls for filters, the read API and health.

use crate::controls::Controls;
use crate::error::ApiError;
use crate::ingest;
use crate::keys::Credential;
use crate::metrics::Metrics;
use crate::rollup;
use crate::sender::Sender;
use crate::store::{EventFilter, Org, Read, Store, StoreError};
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
    /// Who may read `/metrics`.
    pub metrics_access: MetricsAccess,
    /// How people sign in to the dashboard: passwords, SSO.
    pub sign_in: Arc<crate::web::SignIn>,
    /// The filters polling `/v1/controls` for each org (budget shares).
    pub pollers: Arc<crate::budgets::Pollers>,
    /// OpenTelemetry export (`--otlp-endpoint`).
    pub otlp: Option<Arc<crate::otlp::Exporter>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .route("/v1/controls", get(controls))
        .route("/v1/vocab/{name}", get(vocab))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/timeseries", get(timeseries))
        .route("/api/v1/events.csv", get(export_events))
        .route("/api/v1/session", get(crate::web::session_info))
        .route("/api/v1/rules", get(crate::rules_report::list))
        .route(
            "/api/v1/budgets",
            get(crate::budgets::http::list).post(crate::budgets::http::set),
        )
        .route(
            "/api/v1/budgets/{name}",
            axum::routing::delete(crate::budgets::http::delete),
        )
        .route(
            "/api/v1/alerts",
            get(crate::alerts::http::list).post(crate::alerts::http::create),
        )
        .route(
            "/api/v1/alerts/{name}",
            axum::routing::delete(crate::alerts::http::delete),
        )
        .route("/metrics", get(metrics))
        .route("/", get(crate::web::index))
        .route(
            "/login",
            get(crate::web::login_page).post(crate::web::login),
        )
        .route("/logout", post(crate::web::logout))
        .route("/auth/login", get(crate::web::sso_start))
        .route("/auth/callback", get(crate::web::sso_callback))
        .route("/assets/{file}", get(crate::web::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
pub async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Org, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authenticate(state, headers).await;
    }
    crate::web::current_session(state, headers)
        .await
        .map(|s| s.org)
        .ok_or(ApiError::Unauthorized)
}

/// The org of a call that changes something (budgets, alert hooks): an org key, or the session
/// of an org admin that sends its CSRF token in `X-CSRF-Token` from this site. A viewer gets 403.
pub async fn admin(state: &AppState, headers: &HeaderMap) -> Result<Org, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authenticate(state, headers).await;
    }
    let session = crate::web::current_session(state, headers)
        .await
        .ok_or(ApiError::Unauthorized)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !crate::web::same_origin(headers)
        || !crate::keys::constant_time_eq(session.csrf.as_bytes(), sent.as_bytes())
    {
        return Err(ApiError::Forbidden(
            "a change from the dashboard needs its CSRF token (X-CSRF-Token) and the same origin"
                .into(),
        ));
    }
    session
        .require_admin()
        .map_err(|_| ApiError::Forbidden("only an admin of the org may change this".into()))?;
    Ok(session.org)
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

/// The id a filter (one per Envoy) sends its polls and batches with (`X-Tally-Filter`).
fn filter_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-tally-filter")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
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
    // Which Envoy sent it (`X-Tally-Filter`), so that budgets count each filter's own spend.
    let filter = filter_id(headers);
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let otlp = state.otlp.clone();
    // Events the sending filter dropped since its last accepted batch (alerts).
    let dropped = headers.get("x-tally-dropped").cloned();
    // 202 only once the transaction has committed (and, with synchronous=FULL, reached disk).
    blocking(move || {
        let owners = match sender.owners(&store, &batch) {
            Ok(owners) => owners,
            Err(e) => return Ok(Err(e)),
        };
        let mut batch = batch;
        store.price(&owners, &mut batch);
        let batch = std::sync::Arc::new(batch);
        let (accepted, duplicates, new) =
            store.insert_from(owners.clone(), batch.clone(), now_ms(), filter)?;
        metrics.events(&owners, &batch, &new);
        if let Some(o) = &otlp {
            o.observe(&owners, &batch, &new);
        }
        metrics.unknown_fields(&unknown);
        crate::alerts::batch_dropped(&store, dropped.as_ref(), &owners, accepted);
        Ok(Ok((accepted, duplicates)))
    })
    .await?
    .inspect_err(rejected)
}

/// The events list's filters, which summaries and time series take too.
const FILTER_PARAMS: [&str; 12] = [
    "from",
    "to",
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

pub(crate) fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
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

/// The filters of the events list (and of summaries and time series), unchecked for strangers.
fn filters(q: &HashMap<String, String>) -> Result<EventFilter, ApiError> {
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(EventFilter {
        from_ms: time_param(q, "from")?,
        to_ms: time_param(q, "to")?,
        limit: 0,
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
        before: q.get("cursor").map(|c| parse_cursor(c)).transpose()?,
    })
}

/// A page's cursor: the last event's time and request id, opaque to clients.
fn cursor(ts_ms: i64, request_id: &str) -> String {
    let hex: String = request_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{ts_ms}.{hex}")
}

fn parse_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::field(
            "cursor",
            "cursor must be a next_cursor from a previous page",
        )
    };
    let (ts, hex) = c.split_once('.').ok_or_else(bad)?;
    let ts = ts.parse::<i64>().map_err(|_| bad())?;
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok((ts, String::from_utf8(bytes).map_err(|_| bad())?))
}

/// The filters of the events list and its CSV export; `limit` defaults to `default` and may be
/// at most `max`.
fn event_filter(
    q: &HashMap<String, String>,
    default: u32,
    max: u32,
) -> Result<EventFilter, ApiError> {
    let mut allowed = FILTER_PARAMS.to_vec();
    allowed.extend(["limit", "cursor"]);
    only(q, &allowed)?;
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
    Ok(EventFilter {
        limit,
        ..filters(q)?
    })
}

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    let mut filter = event_filter(&q, 100, 1000)?;
    let limit = filter.limit as usize;
    // One more than the page, to know whether another follows.
    filter.limit += 1;
    let store = state.store.clone();
    let mut events = blocking(move || store.query_events(&org, &filter)).await?;
    let next = (events.len() > limit)
        .then(|| {
            events.truncate(limit);
            let last = events.last()?;
            let ts = tally::time::parse_rfc3339_ms(&last.timestamp)?;
            Some(cursor(ts, &last.request_id))
        })
        .flatten();
    Ok(Json(json!({ "events": events, "next_cursor": next })))
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

/// Dollars summed from f64 costs, rounded to the pico-dollar the filter prices in.
fn usd(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

fn figures(a: &rollup::Agg) -> serde_json::Map<String, serde_json::Value> {
    let ms = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), json!(a.requests));
    m.insert("errors".into(), json!(a.errors));
    m.insert("input_tokens".into(), json!(a.input_tokens));
    m.insert("output_tokens".into(), json!(a.output_tokens));
    m.insert("cached_input_tokens".into(), json!(a.cached_input_tokens));
    // Of the priced requests; null when there were requests and none had a known price.
    m.insert("cost_usd".into(), json!(a.known_cost().map(usd)));
    m.insert("unpriced_requests".into(), json!(a.unpriced_requests));
    m.insert(
        "unpriced_input_tokens".into(),
        json!(a.unpriced_input_tokens),
    );
    m.insert(
        "unpriced_output_tokens".into(),
        json!(a.unpriced_output_tokens),
    );
    m.insert("cache_savings_usd".into(), json!(usd(a.cache_savings_usd)));
    let avg = (a.requests > 0).then(|| a.latency_sum_ms / a.requests as f64);
    m.insert("latency_avg_ms".into(), json!(ms(avg)));
    m.insert("latency_p50_ms".into(), json!(ms(a.latency.quantile(0.5))));
    m.insert("latency_p95_ms".into(), json!(ms(a.latency.quantile(0.95))));
    m.insert("ttfb_p50_ms".into(), json!(ms(a.ttfb.quantile(0.5))));
    m
}

/// How a summary or time series was read, as the API names it.
fn resolution(read: Read) -> &'static str {
    match read {
        Read::Rollups(rollup::MINUTE) => "minute",
        Read::Rollups(rollup::DAY) => "day",
        Read::Rollups(_) => "hour",
        Read::Events => "exact",
    }
}

fn bucket_name(ms: i64) -> &'static str {
    match ms {
        rollup::MINUTE => "minute",
        rollup::DAY => "day",
        _ => "hour",
    }
}

/// The filters of a summary or time series, with `extra` parameters allowed besides.
fn query_filter(q: &HashMap<String, String>, extra: &[&str]) -> Result<EventFilter, ApiError> {
    let mut allowed = FILTER_PARAMS.to_vec();
    allowed.extend(extra);
    only(q, &allowed)?;
    filters(q)
}

async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    let filter = query_filter(&q, &["group_by"])?;
    let dim = group_by(&q)?;
    let now = now_ms();
    let (from, to) = range(&q, now)?;
    let store = state.store.clone();
    let (rows, read) = blocking(move || store.summary(&org, dim, &filter, from, to, now)).await?;
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
        "resolution": resolution(read),
        "rows": rows,
    })))
}

/// Most points a time series answers (buckets times keys, once empty buckets are filled).
const MAX_POINTS: usize = 200_000;

async fn timeseries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = reader(&state, &headers).await?;
    let filter = query_filter(&q, &["bucket", "group_by"])?;
    let filter_is_empty = filter.is_empty();
    let dim = group_by(&q)?;
    let requested = match q.get("bucket").map(String::as_str) {
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
    let now = now_ms();
    let (from, to) = range(&q, now)?;
    if (to - from) / requested > 10_000 {
        return Err(ApiError::field(
            "bucket",
            "more than 10000 buckets: choose a larger bucket or a shorter range",
        ));
    }
    let store = state.store.clone();
    let (rows, bucket, read) =
        blocking(move || store.timeseries(&org, requested, dim, &filter, from, to, now)).await?;
    let note = (bucket != requested).then(|| match (dim, read) {
        (Some(d), Read::Rollups(_)) if rollup::finest(Some(d)) > requested => {
            format!("{d} is kept per hour: shown in hour buckets")
        }
        (_, Read::Rollups(_)) if filter_is_empty => format!(
            "minute figures are kept for {} days: shown in hour buckets",
            crate::store::MINUTE_ROLLUP_DAYS
        ),
        _ => format!(
            "with a filter, ranges over {} hours (or older than the stored events) are kept \
             per hour: shown in hour buckets",
            crate::store::EVENTS_RANGE_MS / rollup::HOUR
        ),
    });
    // Every bucket of the range, per key, zero where nothing happened: a true time axis.
    let first = from.div_euclid(bucket) * bucket;
    let buckets: Vec<i64> = (0..)
        .map(|i| first + i * bucket)
        .take_while(|t| *t < to)
        .collect();
    let mut keys: Vec<&str> = rows.iter().map(|(_, k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    if dim.is_none() {
        keys = vec![""];
    }
    if buckets.len().saturating_mul(keys.len()) > MAX_POINTS {
        return Err(ApiError::field(
            "group_by",
            format!("more than {MAX_POINTS} points: choose a larger bucket, a shorter range or a filter"),
        ));
    }
    let found: HashMap<(i64, &str), &rollup::Agg> =
        rows.iter().map(|(t, k, a)| ((*t, k.as_str()), a)).collect();
    let empty = rollup::Agg::default();
    let mut points = Vec::with_capacity(buckets.len() * keys.len());
    for &t in &buckets {
        for &k in &keys {
            let agg = found.get(&(t, k)).copied().unwrap_or(&empty);
            let mut m = figures(agg);
            m.insert("bucket".into(), json!(tally::time::format_rfc3339_ms(t)));
            m.insert("key".into(), key_json(dim, k));
            points.push(serde_json::Value::Object(m));
        }
    }
    Ok(Json(json!({
        "bucket": bucket_name(bucket),
        "bucket_requested": bucket_name(requested),
        "note": note,
        "group_by": dim,
        "resolution": resolution(read),
        "points": points,
    })))
}

/// `serve`'s options for `/metrics`.
#[derive(clap::Args, Debug, Default)]
pub struct MetricsArgs {
    /// Require `Authorization: Bearer <token>` on /metrics, the token read from this file
    /// (or from TALLY_METRICS_TOKEN); without it, /metrics answers loopback callers only.
    #[arg(long, value_name = "PATH", conflicts_with = "metrics_public")]
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Let anyone who reaches the port read /metrics (spend by org).
    #[arg(long)]
    pub metrics_public: bool,
}

/// The environment variable a metrics token may come from instead of a file.
pub const METRICS_TOKEN_ENV: &str = "TALLY_METRICS_TOKEN";

impl MetricsArgs {
    pub fn access(&self) -> Result<MetricsAccess, String> {
        let token = match &self.metrics_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--metrics-token-file {}: {e}", path.display()))?,
            ),
            None => std::env::var(METRICS_TOKEN_ENV).ok(),
        };
        match token.map(|t| t.trim().to_string()) {
            Some(_) if self.metrics_public => Err(format!(
                "--metrics-public and a metrics token (--metrics-token-file or \
                 {METRICS_TOKEN_ENV}) contradict each other: choose one"
            )),
            Some(t) if t.len() < 16 => {
                Err("the metrics token must have at least 16 characters".to_string())
            }
            Some(t) => Ok(MetricsAccess::Token(crate::keys::hash(&t))),
            None if self.metrics_public => Ok(MetricsAccess::Public),
            None => Ok(MetricsAccess::Loopback),
        }
    }
}

/// Who may read `/metrics`, which lists spend by org.
#[derive(Clone, Debug, Default)]
pub enum MetricsAccess {
    /// Callers on a loopback address only: a scraper on the same host, or one reaching the
    /// collector through its mesh sidecar (which forwards from loopback). The default.
    #[default]
    Loopback,
    /// Callers with `Authorization: Bearer <token>`, from anywhere: the token's SHA-256 (hex).
    Token(String),
    /// Anyone who can reach the port (`--metrics-public`).
    Public,
}

impl MetricsAccess {
    /// Whether a caller from `peer` (unknown: refused unless public) with these headers may read.
    /// A request a proxy forwarded comes from loopback when the proxy runs on the host, whoever
    /// sent it: one carrying a proxy's headers is not taken as local.
    pub fn allows(&self, peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> bool {
        let proxied = ["forwarded", "x-forwarded-for", "x-real-ip", "via"]
            .iter()
            .any(|h| headers.contains_key(*h));
        match self {
            MetricsAccess::Public => true,
            MetricsAccess::Loopback if proxied => false,
            MetricsAccess::Loopback => peer.is_some_and(|ip| match ip {
                std::net::IpAddr::V4(v4) => v4.is_loopback(),
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            }),
            MetricsAccess::Token(token) => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| {
                    crate::keys::constant_time_eq(
                        crate::keys::hash(given.trim()).as_bytes(),
                        token.as_bytes(),
                    )
                }),
        }
    }
}

async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<impl IntoResponse, ApiError> {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if !state.metrics_access.allows(peer, &headers) {
        return Err(match state.metrics_access {
            MetricsAccess::Token(_) => ApiError::Unauthenticated(
                "/metrics needs Authorization: Bearer <the metrics token>".into(),
            ),
            _ => ApiError::Forbidden(
                "/metrics answers loopback callers only (not through a proxy); see \
                 --metrics-token-file"
                    .into(),
            ),
        });
    }
    // OpenMetrics when the scraper asks for it (Prometheus does, first), else the text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let store = state.store.clone();
    let db_bytes = tokio::task::spawn_blocking(move || store.db_bytes())
        .await
        .unwrap_or(0);
    let otlp = state.otlp.as_ref().map(|o| {
        use std::sync::atomic::Ordering::Relaxed;
        crate::metrics::OtlpCounts {
            sent: o.sent.load(Relaxed),
            failed: o.failed.load(Relaxed),
            spans_dropped: o.spans_dropped.load(Relaxed),
        }
    });
    let text = state.metrics.render_with(db_bytes, openmetrics, otlp);
    let kind = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, kind)], text))
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
    // The filter's id (one per Envoy): its share of each budget, and its spend counted so far.
    let filter = filter_id(&headers).unwrap_or_default();
    // How often it polls (`X-Tally-Refresh-Ms`), so that it counts as active that long.
    let refresh = headers
        .get("x-tally-refresh-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(std::time::Duration::ZERO, |ms| {
            std::time::Duration::from_millis(ms.min(3_600_000))
        });
    let (store, pollers) = (state.store.clone(), state.pollers.clone());
    let answer = blocking(move || {
        crate::controls::with_budgets(&store, &pollers, answer, &filter, refresh, now_ms())
    })
    .await?;
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

/// A tiktoken vocabulary, packed as the filter's build packs it: the wasm filter fetches one
/// the first time a stream needs counting (`src/vocab.rs`). Public data (OpenAI publishes it),
/// so no credential is asked for; the filter checks it against the SHA-256 it was built with.
async fn vocab(axum::extract::Path(name): axum::extract::Path<String>) -> axum::response::Response {
    let Some(blob) = tally::measure::Encoding::from_name(&name).and_then(tally::vocab::packed)
    else {
        return ApiError::NotFound.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // The same bytes for as long as this build runs.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        blob,
    )
        .into_response()
}

/// Liveness: the process serves. It says nothing of the database (see `/readyz`), so that a
/// database outage does not get every replica restarted.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: whether the database answers, so that a load balancer sends ingest elsewhere
/// while it does not (503, with why).
async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.ready()).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "message": format!("database: {e}")})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "message": "the check did not finish"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_answer_loopback_callers_a_token_holder_or_anyone_as_configured() {
        let none = HeaderMap::new();
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            "Bearer scrape-me-0123456789".parse().unwrap(),
        );
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let local = MetricsAccess::Loopback;
        for peer in ["127.0.0.1", "127.0.0.6", "::1", "::ffff:127.0.0.1"] {
            assert!(local.allows(ip(peer), &none), "{peer}");
        }
        for peer in ["10.0.0.7", "192.168.1.2", "fd00::1", "::ffff:10.0.0.7"] {
            assert!(!local.allows(ip(peer), &bearer), "{peer}");
        }
        assert!(!local.allows(None, &none));
        for proxy in ["forwarded", "x-forwarded-for", "x-real-ip", "via"] {
            let mut h = HeaderMap::new();
            h.insert(proxy, "10.0.0.7".parse().unwrap());
            assert!(!local.allows(ip("127.0.0.1"), &h), "{proxy}");
        }
        let token = MetricsAccess::Token(crate::keys::hash("scrape-me-0123456789"));
        assert!(token.allows(ip("10.0.0.7"), &bearer));
        assert!(!token.allows(ip("127.0.0.1"), &none));
        assert!(MetricsAccess::Public.allows(ip("10.0.0.7"), &none));
    }

    #[test]
    fn cursors_round_trip_and_forged_ones_are_refused() {
        let c = cursor(1_795_503_600_000, "req-1/ü");
        assert_eq!(
            parse_cursor(&c).unwrap(),
            (1_795_503_600_000, "req-1/ü".to_string())
        );
        for bad in ["", "12", "x.00", "12.0", "12.zz", "12.ff"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}

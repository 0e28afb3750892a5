//! HTTP routes: ingest, the read API and health.

use crate::error::ApiError;
use crate::ingest;
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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .route("/api/v1/events", get(list_events))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: nothing here may be framed, sniffed or cached by a proxy,
/// and pages may load only what the collector itself serves.
async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    resp
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("task: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

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
    let org = authenticate(&state, &headers).await?;
    let bytes = axum::body::to_bytes(body, MAX_BATCH_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_BATCH_BYTES))?;
    let batch = ingest::parse(&bytes).inspect_err(|e| {
        // The field's name only: values could be labels a client chose.
        let field = match e {
            ApiError::BadRequest { field, .. } => field.as_deref().unwrap_or("-"),
            _ => "-",
        };
        crate::log::warn(&format!(
            "org {}: rejected a batch of {} bytes (field {field})",
            org.name,
            bytes.len()
        ));
    })?;
    let store = state.store.clone();
    // 202 only once the transaction has committed (and, with synchronous=FULL, reached disk).
    let (accepted, duplicates) =
        blocking(move || store.insert_events(&org, &batch, now_ms())).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": accepted, "duplicates": duplicates})),
    ))
}

const EVENT_PARAMS: [&str; 11] = [
    "from", "to", "limit", "team", "app", "feature", "task", "model", "provider", "user", "status",
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

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let org = authenticate(&state, &headers).await?;
    if let Some(unknown) = q.keys().find(|k| !EVENT_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown.clone(),
            format!("unknown parameter; use {}", EVENT_PARAMS.join(", ")),
        ));
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(ApiError::field("limit", "limit must be 1 to 1000")),
        },
    };
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = EventFilter {
        from_ms: time_param(&q, "from")?,
        to_ms: time_param(&q, "to")?,
        limit,
        team: s("team"),
        app: s("app"),
        feature: s("feature"),
        task: s("task"),
        model: s("model"),
        provider: s("provider"),
        user: s("user"),
        status: q.get("status").map(|v| status_param(v)).transpose()?,
    };
    let store = state.store.clone();
    let events = blocking(move || store.query_events(&org, &filter)).await?;
    Ok(Json(json!({ "events": events })))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

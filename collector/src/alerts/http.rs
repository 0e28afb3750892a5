//! `/api/v1/alerts`: an org's hooks and alert history (read with `reader`), hooks added and
//! deleted by an org admin (`admin`: the org key, or an admin's session with its CSRF token).

use super::{AlertError, SECRET_PREFIX};
use crate::api::{admin, blocking, now_ms, reader, AppState};
use crate::error::ApiError;
use crate::store::StoreError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Alerts listed by default, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// `GET /api/v1/alerts?limit=N`: `{"hooks":[...],"history":[...]}`, newest alert first.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = reader(&state, &headers).await?;
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::field("limit", format!("1 to {MAX_LIMIT}")))?,
    };
    if let Some(bad) = q.keys().find(|k| *k != "limit") {
        return Err(ApiError::field(
            bad.clone(),
            "unknown parameter (limit only)",
        ));
    }
    let store = state.store.clone();
    let (hooks, history) = blocking(move || {
        let mut conn = store.reader();
        let hooks = super::list_hooks(&mut conn, org.id)?;
        let history = super::history(&mut conn, org.id, &org.name, limit)?;
        Ok::<_, StoreError>((hooks, history))
    })
    .await?;
    let hooks: Vec<Value> = hooks
        .into_iter()
        .map(|h| {
            json!({
                "name": h.name,
                "url": h.url,
                "kinds": h.kinds.unwrap_or_else(|| super::KINDS.iter().map(|k| k.to_string()).collect()),
                "allow_private": h.allow_private,
                "created": tally::time::format_rfc3339_ms(h.created_ms),
            })
        })
        .collect();
    Ok(Json(json!({"hooks": hooks, "history": history})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHook {
    name: String,
    url: String,
    kinds: Option<Vec<String>>,
}

/// `POST /api/v1/alerts` `{"name":..,"url":..,"kinds"?:[..]}`: 201 with the hook's secret, shown
/// this once.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = admin(&state, &headers).await?;
    let new: NewHook = {
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            // The message names what was wrong, never the value given (it may be a URL).
            let message = match e.inner().classify() {
                serde_json::error::Category::Data => format!("{field}: {}", e.inner()),
                _ => "the body must be JSON: {\"name\":..,\"url\":..,\"kinds\":[..]}".into(),
            };
            ApiError::field(if field == "." { "body".into() } else { field }, message)
        })?
    };
    let store = state.store.clone();
    let policy = super::policy();
    let name = new.name.clone();
    let added = blocking(move || {
        // A connection of its own: the destination's lookup must not hold ingest's.
        let mut conn = store.open_writer()?;
        Ok(super::add_hook(
            &mut conn,
            org.id,
            &new.name,
            &new.url,
            new.kinds.as_deref(),
            false,
            &policy,
            now_ms(),
        ))
    })
    .await?;
    match added {
        Ok(secret) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "name": name,
                "secret": secret,
                "note": format!(
                    "the secret ({SECRET_PREFIX}...) is shown this once: deliveries carry \
                     X-Tally-Signature: sha256=HMAC-SHA256(secret, X-Tally-Timestamp + \".\" + body)"
                ),
            })),
        )),
        Err(AlertError::Field(field, m)) => Err(ApiError::field(field, m)),
        Err(AlertError::Duplicate(n)) => Err(ApiError::field(
            "name",
            format!("the org already has an alert hook {n}"),
        )),
        Err(AlertError::Db(e)) => Err(e.into()),
    }
}

/// `DELETE /api/v1/alerts/{name}`.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = admin(&state, &headers).await?;
    let store = state.store.clone();
    let n = name.clone();
    let deleted = blocking(move || Ok(super::delete_hook(&mut store.conn(), org.id, &n)?)).await?;
    if !deleted {
        return Err(ApiError::field(
            "name",
            "the org has no alert hook of this name",
        ));
    }
    Ok(Json(json!({"deleted": name})))
}

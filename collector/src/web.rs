//! The dashboard's pages and sign-in: `/login`, `/logout`, `/` and its assets, and the session
//! cookie the read API accepts beside org keys.
//!
//! The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the collector serves
//! TLS. State-changing calls (`POST /login`, `POST /logout`) must come from the collector's own
//! pages: a cross-site `Origin` is refused, and logout also needs the session's CSRF token.

use crate::api::{blocking, now_ms, AppState};
use crate::error::ApiError;
use crate::users::{Session, SESSION_MS};
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

pub const COOKIE: &str = "tally_session";

const INDEX: &str = include_str!("../dashboard/index.html");
const LOGIN: &str = include_str!("../dashboard/login.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
/// Chart.js, from the dashboard's npm dependencies (`make build` installs them).
const CHART_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/chart.umd.js"));

/// The session token from the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .map(str::to_string)
}

pub async fn current_session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = session_token(headers)?;
    let store = state.store.clone();
    blocking(move || store.session(&token, now_ms()))
        .await
        .ok()
        .flatten()
}

/// A POST from another site (by its `Origin`) is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers send Origin on POST; clients without one are not browsers.
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

fn cookie(state: &AppState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if state.tls { "; Secure" } else { "" };
    let v =
        format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if current_session(&state, &headers).await.is_none() {
        return Redirect::to("/login").into_response();
    }
    Html(INDEX).into_response()
}

pub async fn login_page() -> Html<&'static str> {
    Html(LOGIN)
}

#[derive(Deserialize)]
pub struct LoginForm {
    email: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Ok((StatusCode::FORBIDDEN, "cross-site sign-in refused").into_response());
    }
    let store = state.store.clone();
    let result = blocking(move || store.login(&form.email, &form.password, now_ms())).await?;
    let Some((token, _)) = result else {
        return Ok(Redirect::to("/login?error=1").into_response());
    };
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&state, &token, SESSION_MS / 1000),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers).await;
    let token = session_token(&headers);
    match (session, token) {
        (Some(s), Some(token))
            if same_origin(&headers)
                && crate::keys::constant_time_eq(s.csrf.as_bytes(), form.csrf.as_bytes()) =>
        {
            let store = state.store.clone();
            blocking(move || store.logout(&token)).await?;
            let mut resp = Redirect::to("/login").into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, cookie(&state, "", 0));
            Ok(resp)
        }
        _ => Ok((StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response()),
    }
}

/// Who is signed in, and the CSRF token the page needs for logout.
pub async fn session_info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let s = current_session(&state, &headers)
        .await
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(
        json!({"org": s.org.name, "email": s.email, "csrf": s.csrf}),
    ))
}

pub async fn asset(uri: axum::http::Uri) -> Response {
    let (body, kind) = match uri.path() {
        "/assets/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/assets/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "/assets/chart.umd.js" => (CHART_JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::NotFound.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

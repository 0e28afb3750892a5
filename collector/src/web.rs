//! The dashboard's pages and sign-in: `/login`, `/logout`, `/` and its assets, sign-in by SSO
//! (`/auth/login`, `/auth/callback`, see `oidc`), and the session cookie the read API accepts
//! beside org keys.
//!
//! The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the collector serves
//! TLS (or its SSO callback URL is https). State-changing calls (`POST /login`, `POST /logout`)
//! must come from the collector's own pages: a cross-site `Origin` is refused, and logout also
//! needs the session's CSRF token.

use crate::api::{blocking, now_ms, AppState};
use crate::error::ApiError;
use crate::log;
use crate::oidc::{Callback, Sso, SsoError};
use crate::users::{Session, SsoRefusal, SESSION_MS};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub const COOKIE: &str = "tally_session";
/// Binds a started SSO sign-in to the browser that started it (`oidc`): `SameSite=Lax`, since
/// the provider's redirect back is a cross-site navigation.
pub const SSO_COOKIE: &str = "tally_sso";

/// How people sign in: with a password (unless turned off), and by SSO when configured.
pub struct SignIn {
    pub local: bool,
    pub sso: Option<Arc<Sso>>,
}

impl Default for SignIn {
    fn default() -> SignIn {
        SignIn {
            local: true,
            sso: None,
        }
    }
}

const INDEX: &str = include_str!("../dashboard/index.html");
const LOGIN: &str = include_str!("../dashboard/login.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
const FAVICON: &str = include_str!("../dashboard/favicon.svg");
const LOGIN_CSS: &str = include_str!("../dashboard/login.css");
/// Chart.js, from the dashboard's npm dependencies (`make build` installs them).
const CHART_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/chart.umd.js"));

/// A cookie's value from the request.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .map(str::to_string)
}

/// The session token from the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, COOKIE)
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
pub fn same_origin(headers: &HeaderMap) -> bool {
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

/// Browsers reach the collector over https (its own TLS, or a proxy in front of the URL the
/// SSO callback is registered at).
fn secure(state: &AppState) -> bool {
    state.tls
        || state
            .sign_in
            .sso
            .as_ref()
            .is_some_and(|s| s.secure_callback())
}

fn cookie(state: &AppState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if secure(state) { "; Secure" } else { "" };
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

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login page: the SSO button when configured, the password form unless turned off, and
/// a message (why the last sign-in failed).
fn login_html(sign_in: &SignIn, message: Option<&str>) -> String {
    let hidden = |show: bool| if show { "" } else { " hidden" };
    LOGIN
        .replace("{{sso_hidden}}", hidden(sign_in.sso.is_some()))
        .replace("{{local_hidden}}", hidden(sign_in.local))
        .replace("{{message_hidden}}", hidden(message.is_some()))
        // Last: the message is the only text from elsewhere, and is escaped.
        .replace("{{message}}", &escape_html(message.unwrap_or("")))
}

fn login_error(state: &AppState, status: StatusCode, message: &str) -> Response {
    (status, Html(login_html(&state.sign_in, Some(message)))).into_response()
}

pub async fn login_page(State(state): State<AppState>) -> Html<String> {
    Html(login_html(&state.sign_in, None))
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
    if !state.sign_in.local {
        return Ok(login_error(
            &state,
            StatusCode::FORBIDDEN,
            "Sign-in with a password is turned off here: sign in with SSO.",
        ));
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
        json!({"org": s.org.name, "email": s.email, "csrf": s.csrf, "role": s.role.as_str()}),
    ))
}

/// The cookie binding a started SSO sign-in to this browser; `Path` left to its default (the
/// directory of `/auth/login`), which covers the callback under any prefix a proxy adds.
fn sso_cookie(state: &AppState, value: &str, max_age_s: u64) -> HeaderValue {
    let secure = if secure(state) { "; Secure" } else { "" };
    let v = format!("{SSO_COOKIE}={value}; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /auth/login`: sends the browser to the identity provider.
pub async fn sso_start(State(state): State<AppState>) -> Response {
    let Some(sso) = state.sign_in.sso.clone() else {
        return ApiError::NotFound.into_response();
    };
    match sso.start().await {
        Ok(started) => {
            let mut resp = Redirect::to(&started.location).into_response();
            resp.headers_mut().append(
                header::SET_COOKIE,
                sso_cookie(&state, &started.binding, crate::oidc::PENDING_TTL.as_secs()),
            );
            resp
        }
        Err(e) => {
            log::warn(&format!("sso: sign-in not started: {}", e.log_reason()));
            login_error(&state, status_of(&e), &e.to_string())
        }
    }
}

fn status_of(e: &SsoError) -> StatusCode {
    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Shown after an SSO sign-in: a same-site step to the dashboard, whose `SameSite=Strict`
/// session cookie a browser leaves out of a redirect that began at the provider.
const SIGNED_IN: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="0; url=/">
<title>Tally · signed in</title>
<link rel="stylesheet" href="/assets/app.css">
</head>
<body class="login">
<main>
  <h1>Tally</h1>
  <p id="signed-in">Signed in. <a href="/">Continue to the dashboard</a>.</p>
</main>
</body>
</html>
"#;

/// `GET /auth/callback`: the provider's answer. Opens a session, or shows why not.
pub async fn sso_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(sso) = state.sign_in.sso.clone() else {
        return ApiError::NotFound.into_response();
    };
    let callback = query.map(|Query(c)| c).unwrap_or_default();
    let binding = cookie_value(&headers, SSO_COOKIE);
    // The binding is single-use whatever happens next.
    let clear = sso_cookie(&state, "", 0);
    let issuer = &sso.config().issuer;
    let mut resp = match sso.finish(&callback, binding.as_deref()).await {
        Err((e, subject)) => {
            let who = subject.map_or(String::new(), |s| format!(" subject {}", &s[..12]));
            log::warn(&format!(
                "sso: sign-in refused (issuer {issuer}{who}): {}",
                e.log_reason()
            ));
            login_error(&state, status_of(&e), &e.to_string())
        }
        Ok(user) => {
            let store = state.store.clone();
            let short = user.subject_hash[..12].to_string();
            let who = user.clone();
            match blocking(move || store.sso_sign_in(&who, now_ms())).await {
                Ok(Ok((token, session))) => {
                    log::info(&format!(
                        "sso: signed in (issuer {issuer} subject {short}) to org {} as {}",
                        session.org.name,
                        session.role.as_str()
                    ));
                    let mut resp = Html(SIGNED_IN).into_response();
                    resp.headers_mut().append(
                        header::SET_COOKIE,
                        cookie(&state, &token, SESSION_MS / 1000),
                    );
                    resp
                }
                Ok(Err(refusal)) => {
                    let reason = match &refusal {
                        SsoRefusal::NoSuchOrg(_) => "the mapped org does not exist",
                        SsoRefusal::OrgDisabled(_) => "the mapped org is disabled",
                        SsoRefusal::EmailTaken => "the email belongs to another user",
                    };
                    log::warn(&format!(
                        "sso: sign-in refused (issuer {issuer} subject {short}): {reason}"
                    ));
                    let text = format!("Sign-in refused: {refusal}.");
                    login_error(&state, StatusCode::FORBIDDEN, &text)
                }
                Err(e) => {
                    log::error(&format!(
                        "sso: sign-in failed (issuer {issuer} subject {short}): {e:?}"
                    ));
                    login_error(
                        &state,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Sign-in failed on the collector's side. Please try again.",
                    )
                }
            }
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, clear);
    resp
}

pub async fn asset(uri: axum::http::Uri) -> Response {
    let (body, kind) = match uri.path() {
        "/assets/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/assets/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "/assets/favicon.svg" => (FAVICON, "image/svg+xml"),
        "/assets/login.css" => (LOGIN_CSS, "text/css; charset=utf-8"),
        "/assets/chart.umd.js" => (CHART_JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::NotFound.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

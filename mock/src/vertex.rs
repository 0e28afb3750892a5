//! Google Vertex AI, as the mock serves it:
//!
//! | path | answer |
//! |---|---|
//! | `/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent` | Gemini's body, with Vertex's `createTime` and `usageMetadata.trafficType` |
//! | `...:streamGenerateContent?alt=sse` | Gemini's SSE; early chunks carry only `trafficType`, the last the counts |
//! | `...:streamGenerateContent` | the same chunks as one JSON array, an element per chunk |
//! | `.../publishers/anthropic/models/{m}:rawPredict`, `:streamRawPredict` | Anthropic's Messages body or SSE, the model named `claude-x-YYYYMMDD` for the path's `claude-x@YYYYMMDD` |
//!
//! Express mode's `/{v}/publishers/...` (no project) is answered the same. The request headers
//! of the main module steer it (`x-mock-usage`, `x-mock-status`, `x-mock-raw-*`, ...). The Gemini
//! API's own route shares the Gemini answer ([`gemini_answer`]), so both framings exist there too.

use super::{
    anthropic_answer, ask, bad_request, event_stream, json_response, raw_response, record, words,
    Ask, Seen,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// Vertex's routes, to merge into the mock's router.
pub fn routes() -> Router<Seen> {
    Router::new()
        .route("/v1/projects/{*rest}", post(vertex))
        .route("/v1beta1/projects/{*rest}", post(vertex))
        .route("/v1/publishers/{*rest}", post(vertex))
        .route("/v1beta1/publishers/{*rest}", post(vertex))
}

async fn vertex(State(seen): State<Seen>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    record(&seen, "POST", &path, &headers);
    let Some((publisher, model, method)) = path
        .rsplit_once("/publishers/")
        .and_then(|(_, rest)| rest.split_once("/models/"))
        .and_then(|(publisher, rest)| {
            let (model, method) = rest.split_once(':')?;
            Some((publisher, model, method))
        })
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match publisher {
        "anthropic" if matches!(method, "rawPredict" | "streamRawPredict") => {
            anthropic_answer(&headers, &body, Some(model)).await
        }
        "google" => {
            if let Some(r) = raw_response(&headers) {
                return r;
            }
            let a = match ask(&headers, &body, Some(model)) {
                Ok(a) => a,
                Err(m) => return bad_request(&m),
            };
            tokio::time::sleep(a.delay).await;
            if let Some(r) = google_error(&a) {
                return r;
            }
            gemini_answer(&a, method, alt_sse(&uri), true)
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether the query asks for SSE framing (`alt=sse`).
pub(crate) fn alt_sse(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"))
}

/// Google's error body for `x-mock-status`.
pub(crate) fn google_error(a: &Ask) -> Option<Response> {
    let s = a.status?;
    let status = match s {
        429 => "RESOURCE_EXHAUSTED",
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    Some(json_response(
        StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"error": {"code": s, "message": "mock error", "status": status}}),
    ))
}

/// A Gemini answer: the body, or the stream (SSE when `sse`, else one JSON array). Usage is
/// given as running totals; on Vertex the chunks before the last carry only `trafficType`.
pub(crate) fn gemini_answer(a: &Ask, method: &str, sse: bool, vertex: bool) -> Response {
    let u = a.usage;
    let usage = |output: u64, last: bool| {
        if vertex && !last {
            return json!({"trafficType": "ON_DEMAND"});
        }
        let mut m = json!({"promptTokenCount": u.input,
            "candidatesTokenCount": output.saturating_sub(u.reasoning),
            "cachedContentTokenCount": u.cached, "thoughtsTokenCount": u.reasoning,
            "totalTokenCount": u.input + output});
        if vertex {
            m["trafficType"] = json!("ON_DEMAND");
        }
        m
    };
    let doc = |text: &str, usage: Value, last: bool| {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if last {
            candidate["finishReason"] = json!("STOP");
        }
        let mut d = json!({"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": a.actual, "responseId": "mock-gemini-1"});
        if vertex {
            d["createTime"] = json!("2026-11-30T09:13:02.101277Z");
        }
        d
    };
    match method {
        "generateContent" => {
            json_response(StatusCode::OK, doc(&a.reply, usage(u.output, true), true))
        }
        "streamGenerateContent" => {
            let parts = words(&a.reply);
            let n = parts.len();
            let docs = parts.iter().enumerate().map(|(i, w)| {
                // Running totals, as Gemini streams them; the last one is final.
                let so_far = (u.output * (i as u64 + 1)) / n as u64;
                doc(w, usage(so_far, i + 1 == n), i + 1 == n)
            });
            if sse {
                let chunks = docs.map(|d| format!("data: {d}\r\n\r\n")).collect();
                event_stream(a, "text/event-stream", chunks)
            } else {
                // Google's framing: `[` first, each element pretty-printed, `\r\n,\r\n` between,
                // `\r\n]` last; one element per chunk.
                let chunks = docs
                    .enumerate()
                    .map(|(i, d)| {
                        let pretty = serde_json::to_string_pretty(&d)
                            .unwrap_or_default()
                            .replace('\n', "\r\n");
                        let lead = if i == 0 { "[" } else { "\r\n,\r\n" };
                        let tail = if i + 1 == n { "\r\n]" } else { "" };
                        format!("{lead}{pretty}{tail}")
                    })
                    .collect();
                event_stream(a, "application/json; charset=UTF-8", chunks)
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

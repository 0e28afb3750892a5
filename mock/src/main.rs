//! `tally-mock`: an offline stand-in for the OpenAI, Anthropic and Gemini APIs.
//!
//! Serves the wire formats Tally meters (OpenAI chat completions, completions, Responses and
//! embeddings, also under Groq's `/openai/v1` and Azure's deployment paths; Anthropic messages;
//! Gemini generateContent, its stream as SSE (`alt=sse`) or one JSON array; Vertex AI's Gemini
//! and Claude, in `vertex.rs`; each streamed or not) with usage that a test can predict. Request headers steer it:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-usage: input=12,output=5,cached=2,cache_write=3,reasoning=1` | the usage reported |
//! | `x-mock-reply: text` | the answer's text (default: a fixed sentence) |
//! | `x-mock-model: name` | the model reported (default: a dated snapshot of the requested one) |
//! | `x-mock-status: 429` | answer with that status and the provider's error body |
//! | `x-mock-delay-ms: 20` | wait before the headers and between stream chunks |
//! | `x-mock-cut-after: 3` | send that many stream events, then reset the connection |
//! | `x-mock-raw-b64: <base64>` | answer exactly these bytes (with `x-mock-raw-type` as the content type and `x-mock-raw-encoding` as the content encoding): hostile responses for tests |
//! | `x-mock-raw-file: /path` | the same, with the bytes of a file (too large for a header) |
//! | `x-mock-encoding: gzip` | gzip the (non-streamed) JSON body, with `content-encoding: gzip` |
//!
//! Without `x-mock-usage`, input is the request body's length / 4 (rounded up) and output the
//! number of words of the reply. `GET /__mock/requests` returns the method, path and header
//! names of the last 200 requests, so tests can check what reached the provider. AWS Bedrock's
//! endpoints, which check each request's SigV4 signature, are in `bedrock.rs`.

mod bedrock;
mod sigv4;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod vertex;

const DEFAULT_REPLY: &str = "Hello from the Tally mock provider. Usage figures are predictable.";

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<VecDeque<Value>>>);

#[derive(Clone, Copy, Default)]
struct Usage {
    input: u64,
    output: u64,
    cached: u64,
    cache_write: u64,
    reasoning: u64,
}

struct Ask {
    actual: String,
    stream: bool,
    include_usage: bool,
    reply: String,
    usage: Usage,
    status: Option<u16>,
    delay: Duration,
    gzip: bool,
    cut_after: Option<usize>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Dated snapshots, as providers report them for an alias.
fn snapshot(model: &str) -> String {
    match model {
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18".into(),
        "gpt-4o" => "gpt-4o-2024-08-06".into(),
        "claude-sonnet-4-5" => "claude-sonnet-4-5-20250929".into(),
        "claude-haiku-4-5" => "claude-haiku-4-5-20251001".into(),
        // Vertex names Claude's snapshots `claude-x@YYYYMMDD` and answers `claude-x-YYYYMMDD`.
        other if other.starts_with("claude-") => other.replace('@', "-"),
        other => other.into(),
    }
}

/// Read a request; `Err` holds the message of a 400 answer.
fn ask(headers: &HeaderMap, body: &[u8], path_model: Option<&str>) -> Result<Ask, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let model = path_model
        .map(str::to_string)
        .or_else(|| v.get("model").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let reply = header(headers, "x-mock-reply")
        .unwrap_or(DEFAULT_REPLY)
        .to_string();
    let mut usage = Usage {
        input: (body.len() as u64).div_ceil(4),
        output: reply.split_whitespace().count() as u64,
        ..Usage::default()
    };
    if let Some(spec) = header(headers, "x-mock-usage") {
        for part in spec.split(',') {
            let (k, n) = part.split_once('=').unwrap_or((part, ""));
            let n: u64 = n.trim().parse().unwrap_or(0);
            match k.trim() {
                "input" => usage.input = n,
                "output" => usage.output = n,
                "cached" => usage.cached = n,
                "cache_write" => usage.cache_write = n,
                "reasoning" => usage.reasoning = n,
                _ => {}
            }
        }
    }
    Ok(Ask {
        actual: header(headers, "x-mock-model").map_or_else(|| snapshot(&model), str::to_string),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        reply,
        usage,
        status: header(headers, "x-mock-status").and_then(|s| s.parse().ok()),
        gzip: header(headers, "x-mock-encoding") == Some("gzip"),
        cut_after: header(headers, "x-mock-cut-after").and_then(|s| s.parse().ok()),
        delay: Duration::from_millis(
            header(headers, "x-mock-delay-ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
    })
}

fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// A response whose body is sent as separate chunks, `delay` apart.
/// A stream event response, chunk by chunk, `delay` apart; cut (the connection reset) after
/// `cut_after` chunks when asked.
fn event_stream<C: Into<Bytes> + Send + 'static>(
    a: &Ask,
    content_type: &str,
    chunks: Vec<C>,
) -> Response {
    let delay = a.delay;
    let cut = a.cut_after.unwrap_or(usize::MAX);
    let stream = futures_util::stream::unfold(
        (chunks.into_iter(), 0usize),
        move |(mut it, sent)| async move {
            if sent == cut {
                // Let what was sent reach the peer first.
                tokio::time::sleep(delay).await;
                // An error in the body makes hyper abort the response mid-stream.
                return Some((
                    Err(std::io::Error::other("cut by x-mock-cut-after")),
                    (it, sent + 1),
                ));
            }
            let next = it.next()?;
            if sent > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, std::io::Error>(next.into()), (it, sent + 1)))
        },
    );
    let status = StatusCode::OK;
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"type": "invalid_request_error", "message": message}}),
    )
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

/// A JSON body, gzipped when the request asked for it.
fn body_response(a: &Ask, v: Value) -> Response {
    if !a.gzip {
        return json_response(StatusCode::OK, v);
    }
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let bytes = e
        .write_all(v.to_string().as_bytes())
        .and_then(|()| e.finish())
        .unwrap_or_default();
    Response::builder()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Body::from(bytes))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The response a test dictated byte for byte, if it did.
fn raw_response(headers: &HeaderMap) -> Option<Response> {
    use base64::Engine;
    let bytes = if let Some(path) = header(headers, "x-mock-raw-file") {
        match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Some(bad_request(&format!("x-mock-raw-file: {e}"))),
        }
    } else {
        let b64 = header(headers, "x-mock-raw-b64")?;
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(b) => b,
            Err(e) => return Some(bad_request(&format!("x-mock-raw-b64: {e}"))),
        }
    };
    let mut r = Response::builder().status(
        header(headers, "x-mock-status")
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK),
    );
    if let Some(t) = header(headers, "x-mock-raw-type") {
        r = r.header("content-type", t);
    }
    if let Some(e) = header(headers, "x-mock-raw-encoding") {
        r = r.header("content-encoding", e);
    }
    Some(
        r.body(Body::from(bytes))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    )
}

fn record(seen: &Seen, method: &str, path: &str, headers: &HeaderMap) {
    let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    if let Ok(mut q) = seen.0.lock() {
        if q.len() >= 200 {
            q.pop_front();
        }
        q.push_back(json!({"method": method, "path": path, "headers": names}));
    }
}

/// Every OpenAI-format path, whatever its prefix (`/v1`, `/openai/v1`, Azure's
/// `/openai/deployments/{deployment}`), by its last segments.
async fn openai(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    record(&seen, "POST", &path, &headers);
    if let Some(r) = raw_response(&headers) {
        return r;
    }
    let deployment = path
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split('/').next())
        .map(str::to_string);
    let a = match ask(&headers, &body, None) {
        Ok(a) => a,
        Err(m) => return bad_request(&m),
    };
    let a = Ask {
        actual: if a.actual.is_empty() {
            deployment.unwrap_or_default()
        } else {
            a.actual
        },
        ..a
    };
    tokio::time::sleep(a.delay).await;
    if let Some(s) = a.status {
        let (kind, code) = match s {
            429 => ("requests", "rate_limit_exceeded"),
            401 => ("invalid_request_error", "invalid_api_key"),
            400 => ("invalid_request_error", "context_length_exceeded"),
            _ => ("server_error", "server_error"),
        };
        return json_response(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error": {"message": "mock error", "type": kind, "param": null, "code": code}}),
        );
    }
    if path.ends_with("/chat/completions") {
        openai_chat(a)
    } else if path.ends_with("/responses") {
        openai_responses(a)
    } else if path.ends_with("/embeddings") {
        body_response(
            &a,
            json!({"object": "list", "model": a.actual,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789]}],
                "usage": {"prompt_tokens": a.usage.input, "total_tokens": a.usage.input}}),
        )
    } else if path.ends_with("/completions") {
        openai_completions(a)
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Legacy completions: `choices[].text`, usage last when asked.
fn openai_completions(a: Ask) -> Response {
    let u = a.usage;
    let usage = json!({"prompt_tokens": u.input, "completion_tokens": u.output,
        "total_tokens": u.input + u.output});
    if !a.stream {
        return body_response(
            &a,
            json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_764_000_000,
                "model": a.actual, "choices": [{"text": a.reply, "index": 0, "logprobs": null,
                "finish_reason": "stop"}], "usage": usage}),
        );
    }
    let mut out: Vec<String> = words(&a.reply)
        .into_iter()
        .map(|w| {
            let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_764_000_000,
                "model": a.actual, "choices": [{"text": w, "index": 0, "logprobs": null,
                "finish_reason": null}]});
            format!("data: {c}\n\n")
        })
        .collect();
    if a.include_usage {
        let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_764_000_000,
            "model": a.actual, "choices": [], "usage": usage});
        out.push(format!("data: {c}\n\n"));
    }
    out.push("data: [DONE]\n\n".into());
    event_stream(&a, "text/event-stream; charset=utf-8", out)
}

/// The Responses API: usage inside `response` of `response.completed`.
fn openai_responses(a: Ask) -> Response {
    let u = a.usage;
    let usage = json!({"input_tokens": u.input, "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output});
    let response = |status: &str, usage: Value, text: &str| {
        json!({"id": "resp_mock", "object": "response", "created_at": 1_764_000_000,
            "status": status, "error": null, "model": a.actual,
            "output": if text.is_empty() { json!([]) } else { json!([{"type": "message",
                "id": "msg_mock", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}]) },
            "usage": usage})
    };
    if !a.stream {
        return body_response(&a, response("completed", usage, &a.reply));
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![ev(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0,
            "response": response("in_progress", Value::Null, "")}),
    )];
    for (i, w) in words(&a.reply).into_iter().enumerate() {
        out.push(ev(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": w}),
        ));
    }
    out.push(ev(
        "response.completed",
        json!({"type": "response.completed", "sequence_number": 999,
            "response": response("completed", usage, &a.reply)}),
    ));
    event_stream(&a, "text/event-stream; charset=utf-8", out)
}

fn openai_chat(a: Ask) -> Response {
    let u = a.usage;
    let usage = json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    let id = "chatcmpl-mock0001";
    if !a.stream {
        return body_response(
            &a,
            json!({
                "id": id, "object": "chat.completion", "created": 1_764_000_000, "model": a.actual,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": a.reply,
                    "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock"
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000,
            "model": a.actual, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if a.include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    for w in words(&a.reply) {
        out.push(chunk(json!({"content": w}), Value::Null));
    }
    out.push(chunk(json!({}), json!("stop")));
    if a.include_usage {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000,
            "model": a.actual, "system_fingerprint": "fp_mock", "choices": [], "usage": usage});
        out.push(format!("data: {c}\n\n"));
    }
    out.push("data: [DONE]\n\n".into());
    event_stream(&a, "text/event-stream; charset=utf-8", out)
}

async fn anthropic_messages(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, "POST", "/v1/messages", &headers);
    anthropic_answer(&headers, &body, None).await
}

/// Anthropic's Messages answer; Claude on Vertex names its model in the path.
async fn anthropic_answer(headers: &HeaderMap, body: &[u8], path_model: Option<&str>) -> Response {
    if let Some(r) = raw_response(headers) {
        return r;
    }
    let a = match ask(headers, body, path_model) {
        Ok(a) => a,
        Err(m) => return bad_request(&m),
    };
    tokio::time::sleep(a.delay).await;
    if let Some(s) = a.status {
        let kind = match s {
            429 => "rate_limit_error",
            401 => "authentication_error",
            400 => "invalid_request_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        return json_response(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"type": "error", "error": {"type": kind, "message": "mock error"}}),
        );
    }
    let u = a.usage;
    // Anthropic reports input without the cache parts.
    let base_input = u.input.saturating_sub(u.cached + u.cache_write);
    let id = "msg_mock0001";
    if !a.stream {
        return body_response(
            &a,
            json!({
                "id": id, "type": "message", "role": "assistant", "model": a.actual,
                "content": [{"type": "text", "text": a.reply}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": base_input, "cache_creation_input_tokens": u.cache_write,
                    "cache_read_input_tokens": u.cached, "output_tokens": u.output,
                    "service_tier": "standard"}
            }),
        );
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": a.actual, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": base_input, "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cached, "output_tokens": 1, "service_tier": "standard"}}}),
    )];
    out.push(ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(ev("ping", json!({"type": "ping"})));
    for w in words(&a.reply) {
        out.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    out.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    // Cumulative output, with the input fields repeated as the API now does: never to be summed.
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": base_input, "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cached, "output_tokens": u.output}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    event_stream(&a, "text/event-stream; charset=utf-8", out)
}

async fn gemini(
    State(seen): State<Seen>,
    Path(rest): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&seen, "POST", &format!("/v1beta/models/{rest}"), &headers);
    let Some((model, method)) = rest.rsplit_once(':') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let a = match ask(&headers, &body, Some(model)) {
        Ok(a) => a,
        Err(m) => return bad_request(&m),
    };
    tokio::time::sleep(a.delay).await;
    if let Some(r) = vertex::google_error(&a) {
        return r;
    }
    // `alt=sse` frames the stream as SSE; without it, one JSON array.
    vertex::gemini_answer(&a, method, vertex::alt_sse(&uri), false)
}

async fn requests(State(seen): State<Seen>) -> Response {
    let list: Vec<Value> = seen
        .0
        .lock()
        .map(|q| q.iter().cloned().collect())
        .unwrap_or_default();
    Json(json!({"requests": list})).into_response()
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 9800).into();
    // The mock answers anyone with fake completions: off loopback only where a private network
    // (compose's offline profile) keeps it out of reach, and only when told so.
    let mut private_network = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--private-network" {
            private_network = true;
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => match v.parse() {
                Ok(a) => listen = a,
                Err(e) => {
                    eprintln!("tally-mock: --listen {v}: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: tally-mock [--listen 127.0.0.1:9800] [--private-network]");
                std::process::exit(2);
            }
        }
    }
    if !listen.ip().is_loopback() && !private_network {
        eprintln!(
            "tally-mock: serves loopback addresses only, unless --private-network says that \
             {listen} is on a private container network"
        );
        std::process::exit(2);
    }
    let app = Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/v1/completions", post(openai))
        .route("/v1/responses", post(openai))
        .route("/v1/embeddings", post(openai))
        .route("/openai/v1/chat/completions", post(openai))
        .route("/openai/deployments/{deployment}/{*api}", post(openai))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1beta/models/{*rest}", post(gemini))
        .route("/model/{model}/{op}", post(bedrock::model))
        .merge(vertex::routes())
        .route("/__mock/requests", get(requests))
        // Tests send request bodies of many MiB.
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(Seen::default());
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tally-mock: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(listen);
    eprintln!("tally-mock listening on http://{bound}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("tally-mock: {e}");
        std::process::exit(1);
    }
}

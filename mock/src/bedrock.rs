//! AWS Bedrock Runtime: `POST /model/{modelId}/invoke`, `/invoke-with-response-stream`,
//! `/converse` and `/converse-stream`.
//!
//! Every request must carry a valid SigV4 signature made with the test credentials
//! ([`crate::sigv4`]), checked over the path as it arrived, the signed headers and the body:
//! anything changed on the way is refused with 403 `InvalidSignatureException`, as AWS does.
//!
//! InvokeModel answers in the model family's own body, chosen by the model id: Anthropic
//! (default, also for ARNs), Meta Llama (`meta.`), Amazon Nova (`amazon.nova`), Amazon Titan
//! (`amazon.titan`), with the `x-amzn-bedrock-input-token-count` / `-output-token-count` headers.
//! Streams are AWS event-stream framing, made by `tally::eventstream::encode`. Besides the
//! common `x-mock-*` headers: `x-mock-stream-exception: throttlingException` ends a stream with
//! that exception after its first events.

use super::{ask, event_stream, header, record, words, Ask, Seen};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%' {
            if let Some(Ok(v)) = hex.map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({ "message": message })),
    )
        .into_response();
    if let Ok(v) = format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/").parse() {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

fn exception_for(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

fn frame(kind: &str, payload: &Value) -> Vec<u8> {
    tally::eventstream::encode(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// A model event inside a `chunk` event, base64 in a PayloadPart.
fn chunk(event: &Value) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    frame("chunk", &json!({ "bytes": b64, "p": "abcdefgh" }))
}

fn exception(name: &str) -> Vec<u8> {
    tally::eventstream::encode(
        &[
            (":exception-type", name),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({"message": "mock stream exception"})
            .to_string()
            .as_bytes(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Anthropic,
    Llama,
    Nova,
    Titan,
}

fn family(model: &str) -> Family {
    if model.contains("meta.") {
        Family::Llama
    } else if model.contains("amazon.nova") {
        Family::Nova
    } else if model.contains("amazon.titan") {
        Family::Titan
    } else {
        Family::Anthropic
    }
}

pub async fn model(
    State(seen): State<Seen>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    record(&seen, "POST", &path, &headers);
    let get = |n: &str| header(&headers, n).map(str::to_string);
    if let Err(why) = crate::sigv4::verify("POST", &path, get, &body) {
        return error(403, "InvalidSignatureException", &why);
    }
    let Some((id, op)) = path
        .strip_prefix("/model/")
        .and_then(|r| r.rsplit_once('/'))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let id = decode(id);
    let a = match ask(&headers, &body, Some(&id)) {
        Ok(a) => a,
        Err(m) => return error(400, "ValidationException", &m),
    };
    tokio::time::sleep(a.delay).await;
    if let Some(s) = a.status {
        return error(s, exception_for(s), "mock error");
    }
    let fam = family(&id);
    let stream_exception = header(&headers, "x-mock-stream-exception").map(str::to_string);
    match op {
        "invoke" => invoke(&a, fam),
        "invoke-with-response-stream" => invoke_stream(&a, fam, stream_exception.as_deref()),
        "converse" => converse(&a),
        "converse-stream" => converse_stream(&a, stream_exception.as_deref()),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Input without the cache parts, as Bedrock reports it.
fn base_input(a: &Ask) -> u64 {
    a.usage
        .input
        .saturating_sub(a.usage.cached + a.usage.cache_write)
}

fn invoke(a: &Ask, fam: Family) -> Response {
    let u = a.usage;
    let body = match fam {
        Family::Anthropic => json!({
            "id": "msg_bdrk_mock0001", "type": "message", "role": "assistant",
            "model": "claude-mock", "content": [{"type": "text", "text": a.reply}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": base_input(a), "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cached, "output_tokens": u.output}
        }),
        Family::Llama => json!({
            "generation": a.reply, "prompt_token_count": u.input,
            "generation_token_count": u.output, "stop_reason": "stop"
        }),
        Family::Nova => json!({
            "output": {"message": {"role": "assistant", "content": [{"text": a.reply}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": base_input(a), "outputTokens": u.output,
                "totalTokens": u.input + u.output, "cacheReadInputTokenCount": u.cached,
                "cacheWriteInputTokenCount": u.cache_write}
        }),
        Family::Titan => json!({
            "inputTextTokenCount": u.input,
            "results": [{"tokenCount": u.output, "outputText": a.reply, "completionReason": "FINISH"}]
        }),
    };
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    let h = r.headers_mut();
    for (name, n) in [
        ("x-amzn-bedrock-input-token-count", base_input(a)),
        ("x-amzn-bedrock-output-token-count", u.output),
        ("x-amzn-bedrock-invocation-latency", 321),
    ] {
        h.insert(name, n.into());
    }
    r
}

fn metrics(a: &Ask) -> Value {
    json!({"inputTokenCount": base_input(a), "outputTokenCount": a.usage.output,
        "invocationLatency": 321, "firstByteLatency": 123})
}

fn invoke_stream(a: &Ask, fam: Family, exception_name: Option<&str>) -> Response {
    let u = a.usage;
    let mut events: Vec<Value> = Vec::new();
    match fam {
        Family::Llama => {
            let w = words(&a.reply);
            let n = w.len();
            for (i, word) in w.into_iter().enumerate() {
                let last = i + 1 == n;
                let mut e = json!({
                    "generation": word,
                    "prompt_token_count": if i == 0 { json!(u.input) } else { Value::Null },
                    "generation_token_count": i + 1,
                    "stop_reason": if last { json!("stop") } else { Value::Null },
                });
                if last {
                    e["amazon-bedrock-invocationMetrics"] = metrics(a);
                }
                events.push(e);
            }
        }
        _ => {
            events.push(json!({"type": "message_start", "message": {"id": "msg_bdrk_mock0001",
                "type": "message", "role": "assistant", "model": "claude-mock", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": base_input(a), "cache_creation_input_tokens": u.cache_write,
                    "cache_read_input_tokens": u.cached, "output_tokens": 1}}}));
            events.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}));
            for w in words(&a.reply) {
                events.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}));
            }
            events.push(json!({"type": "content_block_stop", "index": 0}));
            events.push(json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": u.output}}));
            events.push(json!({"type": "message_stop",
                "amazon-bedrock-invocationMetrics": metrics(a)}));
        }
    }
    let mut chunks: Vec<Vec<u8>> = events.iter().map(chunk).collect();
    if let Some(name) = exception_name {
        chunks.truncate(2);
        chunks.push(exception(name));
    }
    event_stream(a, "application/vnd.amazon.eventstream", chunks)
}

fn converse_usage(a: &Ask) -> Value {
    let u = a.usage;
    json!({"inputTokens": base_input(a), "outputTokens": u.output,
        "totalTokens": u.input + u.output, "cacheReadInputTokens": u.cached,
        "cacheWriteInputTokens": u.cache_write})
}

fn converse(a: &Ask) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": a.reply}]}},
            "stopReason": "end_turn",
            "usage": converse_usage(a),
            "metrics": {"latencyMs": 321}
        })),
    )
        .into_response()
}

fn converse_stream(a: &Ask, exception_name: Option<&str>) -> Response {
    let mut chunks = vec![frame("messageStart", &json!({"role": "assistant"}))];
    for w in words(&a.reply) {
        chunks.push(frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": w}}),
        ));
    }
    chunks.push(frame("contentBlockStop", &json!({"contentBlockIndex": 0})));
    chunks.push(frame("messageStop", &json!({"stopReason": "end_turn"})));
    chunks.push(frame(
        "metadata",
        &json!({"usage": converse_usage(a), "metrics": {"latencyMs": 321}}),
    ));
    if let Some(name) = exception_name {
        chunks.truncate(2);
        chunks.push(exception(name));
    }
    event_stream(a, "application/vnd.amazon.eventstream", chunks)
}

//! Google Vertex AI (Gemini and Claude) and Gemini's JSON-array stream through a real Envoy with
//! tally.wasm: the client gets the provider's bytes, and the event's fields and cost (priced by
//! the collector at the published rates) are exact.

mod common;

use common::{agent, send, Stack};
use serde_json::{json, Value};

/// USD from integer pico-dollars, as the collector prices.
fn usd(pico: u64) -> f64 {
    pico as f64 / 1e12
}

const VERTEX: &str = "/v1/projects/acme-prod/locations/us-central1/publishers";
const VERTEX_GLOBAL: &str = "/v1beta1/projects/acme-prod/locations/global/publishers";

struct Call {
    user: &'static str,
    host: &'static str,
    path: String,
    body: Value,
    usage: &'static str,
    want: Value,
}

fn post(stack: &Stack, c: &Call) -> (u16, String, Vec<(String, String)>) {
    send(
        agent()
            .post(&stack.url(&c.path))
            .set("host", c.host)
            .set("content-type", "application/json")
            .set("authorization", "Bearer ya29.test-access-token")
            .set("x-tally-user", c.user)
            .set("x-mock-usage", c.usage),
        Some(&c.body.to_string()),
    )
}

#[test]
fn vertex_and_gemini_array_streams_metered_exactly() {
    let stack = Stack::start();
    let gemini_body =
        json!({"contents": [{"role": "user", "parts": [{"text": "What is a tally stick?"}]}]});
    let claude_body = |stream: bool| {
        json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 256, "stream": stream,
            "messages": [{"role": "user", "content": "What is a tally stick?"}]})
    };
    let regional = "us-central1-aiplatform.googleapis.com";
    let global = "aiplatform.googleapis.com";
    let calls = [
        Call {
            user: "u-vertex-gemini",
            host: regional,
            path: format!("{VERTEX}/google/models/gemini-2.5-flash:generateContent"),
            body: gemini_body.clone(),
            usage: "input=2210,output=288,cached=2048,reasoning=271",
            want: json!({"provider": "vertex_ai", "api": "generate_content", "streaming": false,
                "endpoint": format!("{VERTEX}/google/models/gemini-2.5-flash:generateContent"),
                "model_requested": "gemini-2.5-flash", "model_actual": "gemini-2.5-flash",
                "input_tokens": 2210, "output_tokens": 288, "cached_input_tokens": 2048,
                "cache_write_tokens": 0, "reasoning_tokens": 271,
                // $0.30 in, $0.03 cached, $2.50 out per 1M.
                "cost_usd": usd(162 * 300_000 + 2048 * 30_000 + 288 * 2_500_000)}),
        },
        Call {
            user: "u-vertex-gemini-sse",
            host: regional,
            path: format!("{VERTEX}/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
            body: gemini_body.clone(),
            usage: "input=31,output=1036,reasoning=1024",
            want: json!({"provider": "vertex_ai", "api": "generate_content", "streaming": true,
                "endpoint": format!("{VERTEX}/google/models/gemini-2.5-pro:streamGenerateContent"),
                "model_requested": "gemini-2.5-pro", "model_actual": "gemini-2.5-pro",
                "input_tokens": 31, "output_tokens": 1036, "cached_input_tokens": 0,
                "cache_write_tokens": 0, "reasoning_tokens": 1024,
                // $1.25 in, $10 out per 1M (under 200k tokens of prompt).
                "cost_usd": usd(31 * 1_250_000 + 1036 * 10_000_000)}),
        },
        Call {
            user: "u-vertex-gemini-array",
            host: global,
            path: format!("{VERTEX_GLOBAL}/google/models/gemini-2.5-pro:streamGenerateContent"),
            body: gemini_body.clone(),
            usage: "input=31,output=1036,reasoning=1024",
            want: json!({"provider": "vertex_ai", "api": "generate_content", "streaming": true,
                "endpoint": format!("{VERTEX_GLOBAL}/google/models/gemini-2.5-pro:streamGenerateContent"),
                "model_requested": "gemini-2.5-pro", "model_actual": "gemini-2.5-pro",
                "input_tokens": 31, "output_tokens": 1036, "cached_input_tokens": 0,
                "cache_write_tokens": 0, "reasoning_tokens": 1024,
                "cost_usd": usd(31 * 1_250_000 + 1036 * 10_000_000)}),
        },
        Call {
            user: "u-vertex-claude",
            host: regional,
            path: format!("{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
            body: claude_body(false),
            usage: "input=4521,output=14,cached=3000,cache_write=1500",
            want: json!({"provider": "vertex_ai", "api": "messages", "streaming": false,
                "endpoint": format!("{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
                "model_requested": "claude-sonnet-4-5@20250929",
                "model_actual": "claude-sonnet-4-5-20250929",
                "input_tokens": 4521, "output_tokens": 14, "cached_input_tokens": 3000,
                "cache_write_tokens": 1500, "reasoning_tokens": 0,
                // $3 in, $3.75 five-minute cache write, $0.30 cache read, $15 out per 1M.
                "cost_usd": usd(21 * 3_000_000 + 1500 * 3_750_000 + 3000 * 300_000 + 14 * 15_000_000)}),
        },
        Call {
            user: "u-vertex-claude-stream",
            host: global,
            path: format!(
                "{VERTEX_GLOBAL}/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict"
            ),
            body: claude_body(true),
            usage: "input=1042,output=16,cached=1024",
            want: json!({"provider": "vertex_ai", "api": "messages", "streaming": true,
                "endpoint": format!("{VERTEX_GLOBAL}/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict"),
                "model_requested": "claude-haiku-4-5@20251001",
                "model_actual": "claude-haiku-4-5-20251001",
                "input_tokens": 1042, "output_tokens": 16, "cached_input_tokens": 1024,
                "cache_write_tokens": 0, "reasoning_tokens": 0,
                // $1 in, $0.10 cache read, $5 out per 1M.
                "cost_usd": usd(18 * 1_000_000 + 1024 * 100_000 + 16 * 5_000_000)}),
        },
        // The Gemini API's stream without `alt=sse`: one JSON array.
        Call {
            user: "u-gemini-array",
            host: "generativelanguage.googleapis.com",
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent".into(),
            body: gemini_body.clone(),
            usage: "input=14,output=287,reasoning=249",
            want: json!({"provider": "gemini", "api": "generate_content", "streaming": true,
                "endpoint": "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                "model_requested": "gemini-2.5-flash", "model_actual": "gemini-2.5-flash",
                "input_tokens": 14, "output_tokens": 287, "cached_input_tokens": 0,
                "cache_write_tokens": 0, "reasoning_tokens": 249,
                "cost_usd": usd(14 * 300_000 + 287 * 2_500_000)}),
        },
    ];
    for c in &calls {
        let (status, text, headers) = post(&stack, c);
        assert_eq!(status, 200, "{}: {text}", c.user);
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        // What the client got is the provider's answer, whole.
        if c.path.contains("alt=sse") || c.path.ends_with(":streamRawPredict") {
            assert!(content_type.starts_with("text/event-stream"), "{}", c.user);
            assert!(text.contains("data: "), "{}: {text}", c.user);
        } else if c.path.ends_with(":streamGenerateContent") {
            assert!(content_type.starts_with("application/json"), "{}", c.user);
            let elements: Vec<Value> = serde_json::from_str(&text).expect("a JSON array");
            assert!(elements.len() > 1, "{}: {text}", c.user);
            assert!(
                text.starts_with("[{") && text.contains("\r\n,\r\n"),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).expect("a JSON body");
            assert!(v.is_object(), "{}: {text}", c.user);
        }
        let ev = &stack.wait_events(&format!("user={}", c.user), 1)[0];
        for (k, v) in c.want.as_object().unwrap() {
            assert_eq!(&ev[k], v, "{}: {k} in {ev:#}", c.user);
        }
        assert_eq!(ev["status"], 200, "{}", c.user);
        assert_eq!(ev["token_source"], "exact", "{}", c.user);
        assert_eq!(ev["error_category"], Value::Null, "{}", c.user);
        assert_eq!(ev["error_source"], Value::Null, "{}", c.user);
    }
    // Every call reached the provider at its own path, without Tally's headers.
    let seen = stack.mock_requests();
    for c in &calls {
        let path = c.path.split('?').next().unwrap();
        let r = seen
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path} not seen: {seen:#?}"));
        let names = r["headers"].as_array().unwrap();
        assert!(
            !names
                .iter()
                .any(|h| h.as_str().unwrap().starts_with("x-tally-")),
            "{names:?}"
        );
    }
}

/// A Vertex error in Google's format: the event says what went wrong, and the input is unknown.
#[test]
fn vertex_errors_are_classified() {
    let stack = Stack::start();
    for (user, path, status, category) in [
        (
            "u-vertex-429",
            format!("{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent"),
            429,
            "rate_limited",
        ),
        (
            "u-vertex-claude-503",
            format!("{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
            529,
            "overloaded",
        ),
    ] {
        let (got, text, _) = send(
            agent()
                .post(&stack.url(&path))
                .set("content-type", "application/json")
                .set("x-tally-user", user)
                .set("x-mock-status", &status.to_string()),
            Some(r#"{"anthropic_version":"vertex-2023-10-16","contents":[],"messages":[]}"#),
        );
        assert_eq!(got, status, "{text}");
        let ev = &stack.wait_events(&format!("user={user}"), 1)[0];
        assert_eq!(ev["provider"], "vertex_ai", "{ev:#}");
        assert_eq!(ev["status"], status, "{ev:#}");
        assert_eq!(ev["error_category"], category, "{ev:#}");
        assert_eq!(ev["error_source"], "provider", "{ev:#}");
        assert_eq!(ev["input_tokens"], Value::Null, "{ev:#}");
    }
}

/// The provider's connection breaks in the middle of a JSON-array stream: the event still comes,
/// with the output of the elements that passed counted, and the break as a network error. On the
/// Gemini API every element carries the running prompt count, so the input stays known.
#[test]
fn interrupted_array_stream_is_measured() {
    let stack = Stack::start();
    let resp = agent()
        .post(&stack.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent"))
        .set("content-type", "application/json")
        .set("x-tally-user", "u-array-cut")
        .set("x-mock-reply", "alpha beta gamma delta epsilon")
        .set("x-mock-usage", "input=40,output=9")
        .set("x-mock-cut-after", "2")
        // Paced, so the headers and first elements leave before the cut.
        .set("x-mock-delay-ms", "30")
        .send_string(r#"{"contents":[{"parts":[{"text":"Count."}]}]}"#)
        .unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut resp.into_reader(), &mut raw);
    let got = String::from_utf8_lossy(&raw);
    assert!(got.contains("beta") && !got.contains("gamma"), "{got}");
    let ev = &stack.wait_events("user=u-array-cut", 1)[0];
    let counted = tally::measure::Tokenizers::default()
        .count(tally::measure::Encoding::O200k, "alpha beta ")
        .tokens()
        .unwrap();
    assert_eq!(ev["provider"], "gemini", "{ev:#}");
    assert_eq!(ev["streaming"], true);
    assert_eq!(ev["input_tokens"], 40, "{ev:#}");
    assert_eq!(ev["output_tokens"], counted, "{ev:#}");
    assert_eq!(ev["token_source"], "measured", "{ev:#}");
    assert_eq!(ev["error_category"], "provider_error", "{ev:#}");
    assert_eq!(ev["error_source"], "network");
    assert_eq!(ev["cost_usd"], usd(40 * 300_000 + counted * 2_500_000));
}

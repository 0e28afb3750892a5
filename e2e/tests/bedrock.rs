//! AWS Bedrock through a real Envoy with tally.wasm: InvokeModel and Converse, each streamed and
//! not, every request signed with SigV4 in the test and verified by the mock provider, so a byte
//! of the host, the path, a signed header or the body changed on the way would fail it.

mod common;

#[allow(dead_code)]
#[path = "../../mock/src/sigv4.rs"]
mod sigv4;

use common::{agent, Stack};
use serde_json::{json, Value};

const CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const CLAUDE_IN_PATH: &str = "anthropic.claude-3-5-haiku-20241022-v1%3A0";
const REGION: &str = "us-east-1";

fn amz_date() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // 2026-12-01T12:00:00.000Z -> 20261201T120000Z
    let t = tally::time::format_rfc3339_ms(ms);
    format!("{}Z", t[..19].replace(['-', ':'], ""))
}

/// POST a SigV4-signed body: `host`, `content-type`, `x-amz-date`, `x-amz-content-sha256` and
/// `x-tally-team` signed, with `signed_extra`; `x-tally-user`, `x-tally-feature` and `unsigned`
/// (the mock's steering) not. `sign_body` is what the signature covers (the body itself, unless
/// a test forges).
fn post_signed_full(
    stack: &Stack,
    path: &str,
    user: &str,
    body: &str,
    sign_body: &str,
    signed_extra: &[(&str, &str)],
    unsigned: &[(&str, &str)],
) -> (u16, Vec<u8>, Vec<(String, String)>) {
    let url = stack.url(path);
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let date = amz_date();
    let hash = sigv4::sha256_hex(sign_body.as_bytes());
    let mut signed = vec![
        ("content-type", "application/json"),
        ("host", host.as_str()),
        ("x-amz-content-sha256", hash.as_str()),
        ("x-amz-date", date.as_str()),
        ("x-tally-team", "payments"),
    ];
    signed.extend_from_slice(signed_extra);
    let auth = sigv4::authorization("POST", path, &signed, sign_body.as_bytes(), &date, REGION);
    let mut req = agent().post(&url);
    for (k, v) in signed.iter().filter(|(k, _)| *k != "host") {
        req = req.set(k, v);
    }
    req = req
        .set("authorization", &auth)
        .set("x-tally-user", user)
        .set("x-tally-feature", "bedrock-e2e");
    for (k, v) in unsigned {
        req = req.set(k, v);
    }
    let (status, headers, resp) = common::answered(req.send_bytes(body.as_bytes()));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    (status, bytes, headers)
}

fn post_signed(
    stack: &Stack,
    path: &str,
    user: &str,
    usage: &str,
    body: &str,
    sign_body: &str,
) -> (u16, Vec<u8>, Vec<(String, String)>) {
    post_signed_full(
        stack,
        path,
        user,
        body,
        sign_body,
        &[],
        &[("x-mock-usage", usage)],
    )
}

/// Cost in USD from integer pico-dollars, the way prices are applied.
fn usd(pico: u64) -> f64 {
    pico as f64 / 1e12
}

/// Claude 3.5 Haiku on Bedrock ($0.80 in, $0.08 cache read, $1 cache write, $4 out per 1M) for
/// 1200 input tokens of which 1024 cache reads and 100 cache writes, and 9 output tokens.
fn haiku_cost() -> f64 {
    usd(76 * 800_000 + 1024 * 80_000 + 100 * 1_000_000 + 9 * 4_000_000)
}

fn check(ev: &Value, expected: Value) {
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(ev.get(k), Some(v), "field {k} of {ev:#}");
    }
}

fn common_fields(user: &str) -> Value {
    json!({
        "provider": "bedrock", "status": 200, "error_category": null, "error_source": null,
        "token_source": "exact", "user": user, "team": "payments", "feature": "bedrock-e2e",
        "reasoning_tokens": 0,
    })
}

fn expect(stack: &Stack, user: &str, fields: Value) -> Value {
    let ev = stack.wait_events(&format!("user={user}"), 1)[0].clone();
    check(&ev, common_fields(user));
    check(&ev, fields);
    ev
}

const ANTHROPIC_BODY: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":256,"messages":[{"role":"user","content":"What is a tally?"}]}"#;
const CONVERSE_BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"What is a tally?"}]}],"inferenceConfig":{"maxTokens":256}}"#;

#[test]
fn bedrock_invoke_and_converse_streamed_and_not() {
    let stack = Stack::start();
    let usage = "input=1200,output=9,cached=1024,cache_write=100";

    // A forged body (signed over other bytes) is refused by the mock: the check is real.
    let (status, body, _) = post_signed(
        &stack,
        &format!("/model/{CLAUDE_IN_PATH}/invoke"),
        "u-forged",
        usage,
        ANTHROPIC_BODY,
        &ANTHROPIC_BODY.replace("256", "257"),
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    // 1. InvokeModel, Anthropic's body.
    let path = format!("/model/{CLAUDE_IN_PATH}/invoke");
    let (status, body, headers) = post_signed(
        &stack,
        &path,
        "u-invoke",
        usage,
        ANTHROPIC_BODY,
        ANTHROPIC_BODY,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-amzn-bedrock-input-token-count" && v == "76"));
    let ev = expect(
        &stack,
        "u-invoke",
        json!({"api": "invoke_model", "endpoint": path, "model_requested": CLAUDE,
            "model_actual": CLAUDE, "streaming": false, "input_tokens": 1200,
            "output_tokens": 9, "cached_input_tokens": 1024, "cache_write_tokens": 100,
            "cost_usd": haiku_cost()}),
    );
    assert!(ev["measured_output_tokens"].is_null());

    // 2. InvokeModelWithResponseStream: the event stream reaches the client byte for byte.
    let path = format!("/model/{CLAUDE_IN_PATH}/invoke-with-response-stream");
    let (status, body, headers) = post_signed(
        &stack,
        &path,
        "u-invoke-stream",
        usage,
        ANTHROPIC_BODY,
        ANTHROPIC_BODY,
    );
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/vnd.amazon.eventstream"));
    let mut decoder = tally::eventstream::Decoder::new(tally::eventstream::MAX_MESSAGE);
    let mut kinds = Vec::new();
    decoder.push(&body, &mut |m: tally::eventstream::Message<'_>| {
        kinds.push(m.event_type.unwrap_or("").to_string())
    });
    assert_eq!(decoder.finish(), None);
    assert!(
        kinds.len() > 5 && kinds.iter().all(|k| k == "chunk"),
        "{kinds:?}"
    );
    expect(
        &stack,
        "u-invoke-stream",
        json!({"api": "invoke_model", "endpoint": path, "model_requested": CLAUDE,
            "model_actual": CLAUDE, "streaming": true, "input_tokens": 1200,
            "output_tokens": 9, "cached_input_tokens": 1024, "cache_write_tokens": 100,
            "cost_usd": haiku_cost()}),
    );

    // 3. Converse, under an inference profile.
    let profile = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
    let path = format!("/model/{}/converse", profile.replace(':', "%3A"));
    let (status, body, _) = post_signed(
        &stack,
        &path,
        "u-converse",
        usage,
        CONVERSE_BODY,
        CONVERSE_BODY,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["usage"]["inputTokens"], 76);
    expect(
        &stack,
        "u-converse",
        json!({"api": "converse", "endpoint": path, "model_requested": profile,
            "model_actual": profile, "streaming": false, "input_tokens": 1200,
            "output_tokens": 9, "cached_input_tokens": 1024, "cache_write_tokens": 100,
            "cost_usd": haiku_cost()}),
    );

    // 4. ConverseStream, Meta Llama.
    let llama = "meta.llama3-1-8b-instruct-v1:0";
    let path = format!("/model/{}/converse-stream", llama.replace(':', "%3A"));
    let (status, _, _) = post_signed(
        &stack,
        &path,
        "u-converse-stream",
        "input=40,output=12",
        CONVERSE_BODY,
        CONVERSE_BODY,
    );
    assert_eq!(status, 200);
    expect(
        &stack,
        "u-converse-stream",
        json!({"api": "converse", "endpoint": path, "model_requested": llama,
            "model_actual": llama, "streaming": true, "input_tokens": 40,
            "output_tokens": 12, "cached_input_tokens": 0, "cache_write_tokens": 0,
            // Llama 3.1 8B: $0.22 in and out per 1M.
            "cost_usd": usd(40 * 220_000 + 12 * 220_000)}),
    );

    // What reached the provider: the signed attribution header, not the unsigned ones.
    let seen = stack.mock_requests();
    let bedrock: Vec<&Value> = seen
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/model/")))
        .collect();
    assert_eq!(bedrock.len(), 5);
    for r in bedrock {
        let names: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(names.contains(&"x-tally-team"), "{names:?}");
        assert!(!names.contains(&"x-tally-feature"), "{names:?}");
        assert!(!names.contains(&"x-tally-user"), "{names:?}");
    }
}

#[test]
fn bedrock_errors_and_a_signed_org_key() {
    let stack = Stack::start();
    let path = format!("/model/{CLAUDE_IN_PATH}/invoke-with-response-stream");
    let post = |user: &str, signed: &[(&str, &str)], unsigned: &[(&str, &str)]| {
        post_signed_full(
            &stack,
            &path,
            user,
            ANTHROPIC_BODY,
            ANTHROPIC_BODY,
            signed,
            unsigned,
        )
    };
    // Throttled before the stream starts: 429 with Bedrock's error type.
    let (status, _, headers) = post("u-throttled", &[], &[("x-mock-status", "429")]);
    assert_eq!(status, 429);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-amzn-errortype" && v.starts_with("ThrottlingException")));
    expect_error(&stack, "u-throttled", 429, "rate_limited");

    // An exception inside a 200 stream.
    let (status, _, _) = post(
        "u-stream-exception",
        &[],
        &[("x-mock-stream-exception", "throttlingException")],
    );
    assert_eq!(status, 200);
    expect_error(&stack, "u-stream-exception", 200, "rate_limited");

    // InvokeModel answering 424: by its status a bad request, by `x-amzn-errortype` the model's
    // error.
    let invoke = format!("/model/{CLAUDE_IN_PATH}/invoke");
    let (status, _, _) = post_signed_full(
        &stack,
        &invoke,
        "u-model-error",
        ANTHROPIC_BODY,
        ANTHROPIC_BODY,
        &[],
        &[("x-mock-status", "424")],
    );
    assert_eq!(status, 424);
    let ev = stack.wait_events("user=u-model-error", 1)[0].clone();
    check(
        &ev,
        json!({"provider": "bedrock", "api": "invoke_model", "status": 424, "streaming": false,
            "error_category": "provider_error", "error_source": "provider"}),
    );

    // An org key under the signature can be neither removed nor sent on: refused at the proxy.
    let before = stack.mock_requests().len();
    let (status, body, _) = post("u-signed-key", &[("x-tally-key", stack.key.as_str())], &[]);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("SigV4"));
    assert_eq!(
        stack.mock_requests().len(),
        before,
        "never reached the provider"
    );
}

fn expect_error(stack: &Stack, user: &str, status: u16, category: &str) {
    let ev = stack.wait_events(&format!("user={user}"), 1)[0].clone();
    check(
        &ev,
        json!({"provider": "bedrock", "api": "invoke_model", "status": status,
            "streaming": true, "error_category": category, "error_source": "provider",
            "model_requested": CLAUDE, "model_actual": CLAUDE}),
    );
}

//! The four main API shapes through a real Envoy with tally.wasm: every event field asserted.

mod common;

use common::{agent, send, Stack};
use serde_json::{json, Value};

const PROVIDER_KEY: &str = "sk-test-provider-key-0001";

/// Cost in USD from integer pico-dollars, the way the filter computes it.
fn usd(pico: u64) -> f64 {
    pico as f64 / 1e12
}

fn post(
    stack: &Stack,
    path: &str,
    user: &str,
    usage: &str,
    body: &Value,
) -> (u16, String, Vec<(String, String)>) {
    send(
        agent()
            .post(&stack.url(path))
            .set("content-type", "application/json")
            .set("authorization", &format!("Bearer {PROVIDER_KEY}"))
            .set("x-api-key", PROVIDER_KEY)
            .set("anthropic-version", "2023-06-01")
            .set("X-Tally-Team", "payments")
            .set("X-Tally-App", "checkout")
            .set("X-Tally-Feature", "receipt-summary")
            .set("X-Tally-Task", "summarise")
            .set("X-Tally-Session", "sess-42")
            .set("X-Tally-User", user)
            .set("x-mock-usage", usage),
        Some(&body.to_string()),
    )
}

/// Assert every field of an event: the fixed ones exactly, times as bounds.
fn check_event(ev: &Value, expected: Value) {
    let obj = ev.as_object().expect("event object");
    let exp = expected.as_object().expect("expected object");
    for (k, v) in exp {
        assert_eq!(obj.get(k), Some(v), "field {k} of {ev:#}");
    }
    let fixed = exp.len();
    // The rest: id, timestamp, times, and org.
    assert_eq!(obj.len(), fixed + 5, "unexpected fields in {ev:#}");
    assert_eq!(ev["org_id"], "acme");
    let id = ev["request_id"].as_str().expect("request_id");
    assert_eq!(id.len(), 36, "uuid: {id}");
    let ts = ev["timestamp"].as_str().expect("timestamp");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "RFC 3339 UTC with milliseconds: {ts}"
    );
    let ts_ms = tally::time::parse_rfc3339_ms(ts).expect("parses");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - ts_ms).abs() < 60_000, "timestamp {ts} is not now");
    let latency = ev["latency_ms"].as_f64().expect("latency_ms");
    let ttfb = ev["ttfb_ms"].as_f64().expect("ttfb_ms");
    assert!(ttfb > 0.0, "ttfb {ttfb}");
    assert!(latency >= ttfb, "latency {latency} < ttfb {ttfb}");
    assert!(latency < 10_000.0, "latency {latency}");
}

fn base(user: &str) -> Value {
    json!({
        "team": "payments", "app": "checkout", "feature": "receipt-summary", "task": "summarise",
        "session_id": "sess-42", "user": user, "rule": null, "routed": false, "shadow": false, "model_routed": null, "trace_id": null, "span_id": null, "status": 200,
        "error_category": null, "error_source": null, "token_source": "exact",
        "measured_output_tokens": null,
        // Plain Envoy: no mesh identity.
        "namespace": null, "workload": null, "principal": null,
    })
}

/// Wait for the one event of `user` and check it against the common fields plus `fields`.
fn expect_event(stack: &Stack, user: &str, fields: Value) {
    let mut expected = base(user);
    for (k, v) in fields.as_object().unwrap() {
        expected[k] = v.clone();
    }
    check_event(&stack.wait_events(&format!("user={user}"), 1)[0], expected);
}

#[test]
fn four_api_shapes_are_metered_exactly() {
    let stack = Stack::start();

    // 1. OpenAI chat completions, not streamed; the model comes after a long `messages`.
    let long = "lorem ipsum ".repeat(20_000);
    let body = json!({"messages": [{"role": "user", "content": long}], "temperature": 0.1, "model": "gpt-4o-mini"});
    let (status, text, _) = post(
        &stack,
        "/v1/chat/completions",
        "u-openai",
        "input=1200,output=345,cached=200,reasoning=45",
        &body,
    );
    assert_eq!(status, 200, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        reply["usage"]["prompt_tokens"], 1200,
        "client gets the provider's body"
    );
    // gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per 1M.
    expect_event(
        &stack,
        "u-openai",
        json!({
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
            "streaming": false, "input_tokens": 1200, "output_tokens": 345,
            "cached_input_tokens": 200, "cache_write_tokens": 0, "reasoning_tokens": 45, "cache_write_1h_tokens": null, "web_search_requests": null, "service_tier": "default",
            "cost_usd": usd(1000 * 150_000 + 200 * 75_000 + 345 * 600_000),
        }),
    );

    // 2. OpenAI streamed with include_usage.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, text, headers) = post(
        &stack,
        "/v1/chat/completions",
        "u-openai-stream",
        "input=50,output=12,cached=0,reasoning=0",
        &body,
    );
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("text/event-stream"))
    );
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream passes whole: {text}"
    );
    let last: Value = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .last()
        .and_then(|d| serde_json::from_str(d).ok())
        .expect("a last data chunk");
    assert_eq!(
        last["choices"],
        json!([]),
        "usage chunk reaches the client that asked for it"
    );
    assert_eq!(last["usage"]["prompt_tokens"], 50);
    expect_event(
        &stack,
        "u-openai-stream",
        json!({
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
            "streaming": true, "input_tokens": 50, "output_tokens": 12,
            "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "cache_write_1h_tokens": null, "web_search_requests": null, "service_tier": null,
            "cost_usd": usd(50 * 150_000 + 12 * 600_000),
        }),
    );

    // 3. Anthropic messages, not streamed, with cache reads and writes.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}]});
    let (status, text, _) = post(
        &stack,
        "/v1/messages",
        "u-anthropic",
        "input=1500,output=420,cached=300,cache_write=200",
        &body,
    );
    assert_eq!(status, 200, "{text}");
    // claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out per 1M.
    expect_event(
        &stack,
        "u-anthropic",
        json!({
            "provider": "anthropic", "api": "messages", "endpoint": "/v1/messages",
            "model_requested": "claude-sonnet-4-5", "model_actual": "claude-sonnet-4-5-20250929",
            "streaming": false, "input_tokens": 1500, "output_tokens": 420,
            "cached_input_tokens": 300, "cache_write_tokens": 200, "reasoning_tokens": 0, "cache_write_1h_tokens": null, "web_search_requests": null, "service_tier": "standard",
            "cost_usd": usd(1000 * 3_000_000 + 300 * 300_000 + 200 * 3_750_000 + 420 * 15_000_000),
        }),
    );

    // 4. Anthropic streamed: message_start usage plus the cumulative message_delta, not summed.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let (status, text, _) = post(
        &stack,
        "/v1/messages",
        "u-anthropic-stream",
        "input=900,output=77,cached=100,cache_write=0",
        &body,
    );
    assert_eq!(status, 200);
    assert!(text.contains("event: message_stop"), "{text}");
    expect_event(
        &stack,
        "u-anthropic-stream",
        json!({
            "provider": "anthropic", "api": "messages", "endpoint": "/v1/messages",
            "model_requested": "claude-sonnet-4-5", "model_actual": "claude-sonnet-4-5-20250929",
            "streaming": true, "input_tokens": 900, "output_tokens": 77,
            "cached_input_tokens": 100, "cache_write_tokens": 0, "reasoning_tokens": 0, "cache_write_1h_tokens": null, "web_search_requests": null, "service_tier": "standard",
            "cost_usd": usd(800 * 3_000_000 + 100 * 300_000 + 77 * 15_000_000),
        }),
    );

    // No attribution header reached the provider; credentials did, untouched.
    let seen = stack.mock_requests();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        let names: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("x-tally-")),
            "{names:?}"
        );
        assert!(
            names.contains(&"authorization") && names.contains(&"x-api-key"),
            "{names:?}"
        );
    }
    assert_eq!(stack.envoy_counter("wasmcustom.tally.requests_metered"), 4);
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_sent"), 4);
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_dropped"), 0);
}

#[test]
fn unknown_model_has_null_cost_and_errors_are_categorised() {
    let stack = Stack::start();
    let body = json!({"model": "my-private-finetune", "messages": []});
    let (status, _, _) = post(
        &stack,
        "/v1/chat/completions",
        "u-unknown",
        "input=10,output=2",
        &body,
    );
    assert_eq!(status, 200);
    let ev = &stack.wait_events("user=u-unknown", 1)[0];
    assert_eq!(ev["input_tokens"], 10);
    assert_eq!(
        ev["cost_usd"],
        Value::Null,
        "unknown model: no price, not zero"
    );

    let (status, _, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-mock-status", "429")
            .set("X-Tally-User", "u-limited"),
        Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
    );
    assert_eq!(status, 429);
    let ev = &stack.wait_events("user=u-limited", 1)[0];
    assert_eq!(ev["status"], 429);
    assert_eq!(ev["error_category"], "rate_limited");
    assert_eq!(ev["error_source"], "provider");
    assert_eq!(ev["input_tokens"], Value::Null);
    assert_eq!(ev["token_source"], Value::Null);
    assert_eq!(
        ev["feature"],
        Value::Null,
        "no feature header: null, shown as untagged"
    );

    // Not an LLM call: passes, no event.
    let (status, _, _) = send(agent().get(&stack.url("/__mock/requests")), None);
    assert_eq!(status, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(stack.query_events("limit=1000").len(), 2);
}

#[test]
fn gzipped_responses_are_metered_and_reach_the_client_as_sent() {
    let stack = Stack::start();
    for (path, body, user) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": []}),
            "u-gz-openai",
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}),
            "u-gz-anthropic",
        ),
    ] {
        let resp = agent()
            .post(&stack.url(path))
            .set("accept-encoding", "gzip")
            .set("x-mock-encoding", "gzip")
            .set("x-mock-usage", "input=321,output=54,cached=21")
            .set("x-tally-user", user)
            .send_string(&body.to_string())
            .unwrap();
        assert_eq!(resp.header("content-encoding"), Some("gzip"));
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut raw).unwrap();
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut plain)
            .expect("the client gets the provider's gzip bytes");
        assert!(plain.contains("\"usage\""));
        let ev = &stack.wait_events(&format!("user={user}"), 1)[0];
        assert_eq!(ev["input_tokens"], 321);
        assert_eq!(ev["output_tokens"], 54);
        assert_eq!(ev["cached_input_tokens"], 21);
        assert_eq!(ev["token_source"], "exact");
    }
}

/// A streamed chat completion without `stream_options`: Tally asks for usage and hides the
/// usage chunk, so the client's bytes are the provider's (as sent with usage on) less that chunk.
#[test]
fn usage_is_requested_for_streams_and_hidden_from_the_client() {
    let stack = Stack::start();
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let usage = "input=64,output=11,cached=0,reasoning=0";
    let (status, through_envoy, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("content-type", "application/json")
            .set("x-tally-user", "u-added")
            .set("x-mock-usage", usage),
        Some(&body.to_string()),
    );
    assert_eq!(status, 200);
    // What the provider sends when usage is on, asked directly.
    let mut with_usage = body.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let (_, provider_bytes, _) = send(
        agent()
            .post(&format!(
                "http://127.0.0.1:{}/v1/chat/completions",
                stack.mock_port
            ))
            .set("x-mock-usage", usage),
        Some(&with_usage.to_string()),
    );
    let events: Vec<&str> = provider_bytes.split_inclusive("\n\n").collect();
    let usage_only: Vec<&&str> = events
        .iter()
        .filter(|e| e.contains(r#""choices":[]"#))
        .collect();
    assert_eq!(usage_only.len(), 1, "{provider_bytes}");
    let expected: String = events
        .iter()
        .filter(|e| !e.contains(r#""choices":[]"#))
        .copied()
        .collect();
    assert_eq!(through_envoy, expected);
    assert!(!through_envoy.contains(r#""prompt_tokens""#));

    let ev = &stack.wait_events("user=u-added", 1)[0];
    assert_eq!(ev["input_tokens"], 64);
    assert_eq!(ev["output_tokens"], 11);
    assert_eq!(ev["token_source"], "exact");
    assert_eq!(ev["streaming"], true);

    // A request that is not streamed is passed as it is (no usage request added).
    let (status, text, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-user", "u-plain")
            .set("x-mock-usage", "input=3,output=2"),
        Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(stack.wait_events("user=u-plain", 1)[0]["input_tokens"], 3);
}

#[test]
fn usage_request_can_be_switched_off() {
    let stack = Stack::start_with(common::Options {
        filter_config: r#"{"flush_interval_ms": 100, "stream_usage": false,
            "header_aliases": {"feature": ["Helicone-Property-Feature"], "team": ["X-ModelTrack-Team"]}}"#
            .into(),
        ..common::Options::default()
    });
    // Each VM counts itself and its linear memory in gauges: at one worker, the VM Envoy loads
    // the module into and its copies on the main thread and the worker. No tokenizer yet, and
    // each within the 8 MiB a VM may take.
    // Natively there is one root context per filter configuration, and no VM memory of its own.
    const MIB: u64 = 1 << 20;
    let wasm = common::build() == common::Build::Wasm;
    let vms = stack.wait_stat("wasmcustom.tally.vms", |n| n == if wasm { 3 } else { 1 });
    let memory = stack.envoy_counter("wasmcustom.tally.vm_memory_bytes");
    if wasm {
        assert_eq!(vms, 3);
        assert_eq!(memory % 65_536, 0, "whole wasm pages: {memory}");
        assert!(
            (MIB..=8 * MIB).contains(&(memory / vms)),
            "{memory} bytes in {vms} VMs"
        );
    } else {
        assert_eq!((vms, memory), (1, 0));
    }
    let (status, text, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-user", "u-off")
            .set("Helicone-Property-Feature", "search-rerank")
            .set("X-ModelTrack-Team", "relevance")
            .set("x-mock-usage", "input=64,output=11"),
        Some(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#),
    );
    assert_eq!(status, 200);
    assert!(
        !text.contains("\"usage\""),
        "the provider was not asked for usage: {text}"
    );
    let ev = &stack.wait_events("user=u-off", 1)[0];
    assert_eq!(ev["streaming"], true);
    // No usage: the output is counted (o200k_base for gpt-4o-mini), the input is unknown, and
    // so is the cost.
    let reply = "Hello from the Tally mock provider. Usage figures are predictable.";
    let counted = tally::measure::Tokenizers::default()
        .count(tally::measure::Encoding::O200k, reply)
        .tokens()
        .unwrap();
    assert_eq!(ev["token_source"], "measured");
    assert_eq!(ev["output_tokens"], counted);
    assert_eq!(ev["measured_output_tokens"], counted);
    // The worker's VM fetched the vocabulary from the collector for this stream and unpacked
    // it: at most 10 MiB more, once (tiktoken-rs's tokenizer took 28).
    let grown = if wasm {
        let grown = stack.wait_stat("wasmcustom.tally.vm_memory_bytes", |m| m > memory) - memory;
        assert!((4 * MIB..=10 * MIB).contains(&grown), "{grown} bytes");
        grown
    } else {
        0
    };
    // A second such stream reuses it.
    let (status, _, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-user", "u-off-again"),
        Some(r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#),
    );
    assert_eq!(status, 200);
    let again = &stack.wait_events("user=u-off-again", 1)[0];
    assert_eq!(again["measured_output_tokens"], counted);
    // Ticks every 50 ms: a few of them pass.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        stack.envoy_counter("wasmcustom.tally.vm_memory_bytes"),
        memory + grown
    );
    assert_eq!(ev["input_tokens"], Value::Null);
    assert_eq!(ev["cost_usd"], Value::Null);
    assert_eq!(ev["error_category"], Value::Null);
    // Other tools' headers, configured as aliases, fill the same fields and never go upstream.
    assert_eq!(ev["feature"], "search-rerank");
    assert_eq!(ev["team"], "relevance");
    let last = stack.mock_requests().pop().unwrap();
    let names = last["headers"].to_string();
    assert!(
        !names.contains("helicone") && !names.contains("modeltrack"),
        "{names}"
    );
}

/// Read a response whatever happens to it (a cut stream ends in an error).
fn read_all(resp: ureq::Response) -> String {
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut resp.into_reader(), &mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn interrupted_streams_still_yield_events() {
    let stack = Stack::start();
    // The provider cuts the stream after message_start, the block start, ping and two text
    // deltas: input is known from message_start, output is counted from the deltas.
    let reply = "alpha beta gamma delta epsilon";
    let resp = agent()
        .post(&stack.url("/v1/messages"))
        .set("x-tally-user", "u-cut")
        .set("x-mock-reply", reply)
        .set("x-mock-usage", "input=40,output=9")
        .set("x-mock-cut-after", "5")
        // Paced, so the headers and first events leave before the cut.
        .set("x-mock-delay-ms", "30")
        .send_string(r#"{"model":"claude-sonnet-4-5","max_tokens":50,"stream":true,"messages":[]}"#)
        .unwrap();
    let got = read_all(resp);
    assert!(
        got.contains("alpha") && !got.contains("message_stop"),
        "{got}"
    );
    let ev = &stack.wait_events("user=u-cut", 1)[0];
    let counted = tally::measure::Tokenizers::default()
        .count(tally::measure::Encoding::O200k, "alpha beta ")
        .tokens()
        .unwrap();
    assert_eq!(ev["input_tokens"], 40);
    assert_eq!(ev["output_tokens"], counted);
    assert_eq!(ev["token_source"], "measured");
    assert_eq!(ev["error_category"], "provider_error", "{ev:#}");
    assert_eq!(ev["error_source"], "network");
    let pico = 40 * 3_000_000 + counted * 15_000_000;
    assert_eq!(ev["cost_usd"], pico as f64 / 1e12);

    // The client leaves mid-stream.
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", stack.envoy_port)).unwrap();
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Tally-User: u-left\r\nX-Mock-Delay-Ms: 300\r\n\
         X-Mock-Reply: one two three four five six\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body.as_bytes()).unwrap();
    let mut first = [0u8; 512];
    let n = sock.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(sock);
    let ev = &stack.wait_events("user=u-left", 1)[0];
    assert_eq!(ev["error_category"], "client_disconnect", "{ev:#}");
    assert_eq!(ev["error_source"], "client");
    assert_eq!(ev["token_source"], "measured");
    assert_eq!(ev["streaming"], true);

    // Envoy gives up on a slow provider: a timeout, from the network.
    let (status, _, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-user", "u-timeout")
            .set("x-test-short-timeout", "1")
            .set("x-mock-delay-ms", "2000"),
        Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
    );
    assert_eq!(status, 504);
    let ev = &stack.wait_events("user=u-timeout", 1)[0];
    assert_eq!(ev["status"], 504);
    assert_eq!(ev["error_category"], "timeout", "{ev:#}");
    assert_eq!(ev["error_source"], "network");
    assert_eq!(ev["model_requested"], "gpt-4o-mini");
}

/// Every other API shape through Envoy: exact tokens, models, provider and cost.
#[test]
fn more_api_shapes_through_envoy() {
    let stack = Stack::start();
    let p = |pico: u64| pico as f64 / 1e12;
    // (user, path, body, extra request headers, expected event fields)
    type Case<'a> = (&'a str, &'a str, Value, Vec<(&'a str, &'a str)>, Value);
    let cases: Vec<Case> = vec![
        (
            "u-responses",
            "/v1/responses",
            json!({"model": "gpt-4.1", "input": "hi"}),
            vec![(
                "x-mock-usage",
                "input=500,output=120,cached=100,reasoning=20",
            )],
            json!({"api": "responses", "provider": "openai", "streaming": false,
                "model_actual": "gpt-4.1", "input_tokens": 500, "output_tokens": 120,
                "cached_input_tokens": 100, "reasoning_tokens": 20, "token_source": "exact",
                "cost_usd": p(400 * 2_000_000 + 100 * 500_000 + 120 * 8_000_000)}),
        ),
        (
            "u-responses-stream",
            "/v1/responses",
            json!({"model": "o4-mini", "input": "hi", "stream": true}),
            vec![("x-mock-usage", "input=60,output=30,cached=0,reasoning=10")],
            json!({"api": "responses", "streaming": true, "input_tokens": 60,
                "output_tokens": 30, "reasoning_tokens": 10, "token_source": "exact",
                "cost_usd": p(60 * 1_100_000 + 30 * 4_400_000)}),
        ),
        (
            "u-embeddings",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "the food was delicious"}),
            vec![("x-mock-usage", "input=42")],
            json!({"api": "embeddings", "input_tokens": 42, "output_tokens": 0,
                "cost_usd": p(42 * 20_000)}),
        ),
        (
            "u-completions",
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": true}),
            vec![("x-mock-usage", "input=5,output=4")],
            json!({"api": "completions", "streaming": true, "input_tokens": 5,
                "output_tokens": 4, "token_source": "exact",
                "cost_usd": p(5 * 1_500_000 + 4 * 2_000_000)}),
        ),
        (
            "u-azure",
            "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            vec![
                ("x-mock-usage", "input=19,output=9"),
                ("x-mock-model", "gpt-4o-2024-11-20"),
                ("api-key", "azure-key-0001"),
            ],
            json!({"provider": "azure", "endpoint": "/openai/deployments/prod-chat/chat/completions",
                "model_requested": "prod-chat", "model_actual": "gpt-4o-2024-11-20",
                "input_tokens": 19, "output_tokens": 9,
                "cost_usd": p(19 * 2_500_000 + 9 * 10_000_000)}),
        ),
        (
            "u-groq",
            "/openai/v1/chat/completions",
            json!({"model": "llama-3.3-70b-versatile", "stream": true, "messages": []}),
            vec![
                ("x-mock-usage", "input=48,output=7"),
                ("x-tally-provider", "Groq"),
            ],
            json!({"provider": "groq", "model_actual": "llama-3.3-70b-versatile",
                "input_tokens": 48, "output_tokens": 7, "token_source": "exact"}),
        ),
        (
            "u-gemini",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            json!({"contents": [{"parts": [{"text": "hi"}]}]}),
            vec![(
                "x-mock-usage",
                "input=1204,output=387,cached=1024,reasoning=352",
            )],
            json!({"provider": "gemini", "api": "generate_content", "streaming": false,
                "model_requested": "gemini-2.5-flash", "input_tokens": 1204,
                "output_tokens": 387, "cached_input_tokens": 1024, "reasoning_tokens": 352,
                "cost_usd": p(180 * 300_000 + 1024 * 30_000 + 387 * 2_500_000)}),
        ),
        (
            "u-gemini-stream",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            json!({"contents": [{"parts": [{"text": "hi"}]}]}),
            vec![("x-mock-usage", "input=9,output=1141,reasoning=1021")],
            json!({"provider": "gemini", "streaming": true, "model_requested": "gemini-2.5-pro",
                "input_tokens": 9, "output_tokens": 1141, "reasoning_tokens": 1021,
                "token_source": "exact", "cost_usd": p(9 * 1_250_000 + 1141 * 10_000_000)}),
        ),
    ];
    for (user, path, body, headers, want) in &cases {
        let mut req = agent()
            .post(&stack.url(path))
            .set("content-type", "application/json")
            .set("x-tally-user", user);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let (status, text, _) = send(req, Some(&body.to_string()));
        assert_eq!(status, 200, "{user}: {text}");
        let ev = &stack.wait_events(&format!("user={user}"), 1)[0];
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&ev[k], v, "{user}: {k} in {ev:#}");
        }
        assert_eq!(ev["status"], 200);
        assert_eq!(ev["error_category"], Value::Null, "{user}");
    }
    // The Azure key passed through untouched; no attribution header went upstream.
    for r in stack.mock_requests() {
        let names: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("x-tally-")),
            "{names:?}"
        );
        if r["path"]
            .as_str()
            .unwrap()
            .starts_with("/openai/deployments/")
        {
            assert!(names.contains(&"api-key"));
        }
    }
}

//! Native cost of the metering logic for one request (no Envoy, no wasm): headers, a 2 KB
//! request body, a JSON response with usage (or, with `stream` as second argument, a 200-chunk
//! SSE stream in one piece; with `paced`, the same stream one event per piece, as a provider
//! sends it), the event, its JSON line. With `rewrite` or `hold` as second argument, the body
//! has `messages` before `model` (the OpenAI SDK's order) and rules act: `rewrite` rewrites the
//! model (only its value is held), `hold` also has a block rule on the model (the whole body is
//! held until the model); `plain-sdk` is that body with no rule, to compare. For profiling
//! (`valgrind --tool=callgrind target/release/examples/exchange_cost 2000 [stream]`) and quick
//! timing; built for wasm32-wasip1 it also runs under Node's V8 (`scripts/wasi-run.sh`).

use tally::config::Config;
use tally::exchange::{begin, Finish};
use tally::measure::Tokenizers;
use tally::request_id::IdGen;

/// No budget in these runs.
struct NoBudgets;
impl tally::rules::Ledger for NoBudgets {
    fn acting(&mut self, _: usize, _: &tally::rules::Budget) -> bool {
        false
    }
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let rules = match mode.as_str() {
        "rewrite" => {
            r#"{"rules":[{"name":"r","match":{"model":"gpt-4o-mini"},"rewrite_model":"gpt-4.1-nano"}]}"#
        }
        "hold" => {
            r#"{"rules":[{"name":"b","match":{"model":"o1*"},"block":true},{"name":"r","match":{"model":"gpt-4o-mini"},"rewrite_model":"gpt-4.1-nano"}]}"#
        }
        _ => "",
    };
    let cfg = Config::parse(
        rules.as_bytes(),
        Some("tly_0123456789abcdefghijABCDEFGHIJ0123456789".into()),
    )
    .expect("config");
    let mut tokenizers = Tokenizers::default();
    let headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "127.0.0.1:10000"),
        ("content-type", "application/json"),
        (
            "authorization",
            "Bearer sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ),
        ("x-tally-team", "payments"),
        ("x-tally-feature", "search"),
        ("user-agent", "OpenAI/Python 1.99.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sdk_order = matches!(mode.as_str(), "rewrite" | "hold" | "plain-sdk");
    let body = if sdk_order {
        format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"gpt-4o-mini"}}"#,
            "x".repeat(1900)
        )
    } else {
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(1900)
        )
    };
    let (stream, paced) = (mode == "stream" || mode == "paced", mode == "paced");
    let mut sse = String::new();
    for i in 0..199 {
        sse.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    sse.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":199,\"total_tokens\":249}}\n\ndata: [DONE]\n\n");
    let (response, content_type): (&[u8], _) = if stream {
        (sse.as_bytes(), "text/event-stream")
    } else {
        (
            include_bytes!("../fixtures/openai/chat_completion.json"),
            "application/json",
        )
    };
    // The paced stream's pieces: one event each.
    let mut events: Vec<&[u8]> = Vec::new();
    let mut rest = response;
    while let Some(end) = rest.windows(2).position(|w| w == b"\n\n") {
        let (event, tail) = rest.split_at(end + 2);
        events.push(event);
        rest = tail;
    }
    let mut ids = IdGen::new(7);
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        let b = begin(&cfg, &headers, 1000.0);
        let mut ex = b.exchange.expect("metered");
        if cfg.rules.is_empty() {
            let _ = ex.on_request_body(body.as_bytes());
            let _ = ex.on_request_body(&[]);
        } else {
            // As the filter does: decide at the headers, then with the model, in 4 KB chunks.
            let mut decide = |f: &tally::rules::Facts<'_>| {
                tally::rules::decide(&cfg.rules, &[], &mut NoBudgets, f)
            };
            let step = decide(&ex.facts(ex.model_at_headers()));
            let _ = ex.at_headers(step, cfg.model_hold_bytes);
            let chunks: Vec<&[u8]> = body.as_bytes().chunks(4096).collect();
            for (i, c) in chunks.iter().enumerate() {
                let _ = ex.on_request_chunk(c, i + 1 == chunks.len(), &mut decide);
            }
        }
        ex.on_response_headers(Some(200), Some(content_type), None, 1010.0);
        if paced {
            for event in &events {
                let _ = ex.on_response_body(event, false);
            }
            let _ = ex.on_response_body(&[], true);
        } else {
            let _ = ex.on_response_body(response, true);
        }
        let ev = ex
            .finish(
                Finish {
                    now_unix_ms: 1050.0,
                    request_id: ids.next_uuid(1050),
                    code_details: Some("via_upstream"),
                    final_status: Some(200),
                },
                &mut tokenizers,
            )
            .0;
        let mut line = Vec::with_capacity(1024);
        ev.write_json(&mut line);
        bytes += line.len();
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let how = if cfg!(target_arch = "wasm32") {
        "in wasm"
    } else {
        "natively"
    };
    println!("{per:.2} us per request {how} ({n} requests, {bytes} event bytes)");
}

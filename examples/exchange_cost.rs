//! Native cost of the metering logic for one request (no Envoy, no wasm): headers, a 2 KB
//! request body, a JSON response with usage, the event, its JSON line. For profiling
//! (`valgrind --tool=callgrind target/release/examples/exchange_cost`) and quick timing.

use tally::config::Config;
use tally::exchange::{begin, Finish};
use tally::measure::Tokenizers;
use tally::pricing::PriceTable;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let cfg = Config::parse(
        b"",
        Some("tly_0123456789abcdefghijABCDEFGHIJ0123456789".into()),
    )
    .expect("config");
    let prices = PriceTable::builtin().expect("prices");
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
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1900)
    );
    let response = include_bytes!("../fixtures/openai/chat_completion.json");
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let b = begin(&cfg, &headers, 1000.0);
        let mut ex = b.exchange.expect("metered");
        let _ = ex.on_request_body(body.as_bytes());
        let _ = ex.on_request_body(&[]);
        ex.on_response_headers(Some(200), Some("application/json"), None, 1010.0);
        let _ = ex.on_response_body(response, true);
        let ev = ex.finish(
            Finish {
                now_unix_ms: 1050.0,
                request_id: format!("r{i}"),
                code_details: Some("via_upstream"),
                final_status: Some(200),
            },
            &prices,
            &mut tokenizers,
        );
        bytes += serde_json::to_string(&ev).map(|s| s.len()).unwrap_or(0);
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{per:.2} us per request natively ({n} requests, {bytes} event bytes)");
}

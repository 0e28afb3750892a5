//! A whole exchange on arbitrary bodies, for every API, streamed or not, plain or gzipped: no
//! panic, and the event always fits the collector's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::config::Config;
use tally::exchange::{begin, Finish};
use tally::measure::Tokenizers;

const PATHS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
    "/openai/deployments/d/chat/completions",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
    "/model/us.amazon.nova-lite-v1:0/converse",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (head, rest) = data.split_at(3);
    let cfg = Config::parse(b"", Some("tly_0123456789abcdefghijABCDEFGHIJ0123456789".into()))
        .expect("config");
    let path = PATHS[usize::from(head[0]) % PATHS.len()];
    let headers: Vec<(String, String)> = [(":method", "POST"), (":path", path)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Some(mut ex) = begin(&cfg, &headers, 0.0).exchange else {
        return;
    };
    // The same bytes serve as request and response body.
    let at = usize::from(head[1]).min(rest.len());
    let _ = ex.on_request_body(&rest[..at]);
    let _ = ex.on_request_body(&rest[at..]);
    let ct = if head[2] & 16 != 0 {
        "application/vnd.amazon.eventstream"
    } else if head[2] & 1 == 0 {
        "text/event-stream"
    } else {
        "application/json"
    };
    let enc = match head[2] >> 1 & 3 {
        0 => None,
        1 => Some("gzip"),
        2 => Some("br"),
        _ => Some("deflate"),
    };
    ex.on_response_headers(Some(200), Some(ct), enc, 1.0);
    if ex.reads_provider_headers() {
        // Bedrock's counts and error type, from the same bytes.
        let text = String::from_utf8_lossy(&rest[..at.min(24)]);
        ex.on_provider_headers(&tally::provider::ProviderHeaders {
            input_tokens: Some(&text),
            output_tokens: text.get(..4),
            error_type: Some(&text),
        });
    }
    let _ = ex.on_response_body(&rest[..at], false);
    let _ = ex.on_response_body(&rest[at..], head[2] & 8 == 0);
    let fin = Finish {
        now_unix_ms: 2.0,
        request_id: "r".into(),
        code_details: None,
        final_status: Some(200),
    };
    let mut tokenizers = Tokenizers::default();
    let ev = ex.finish(fin, &mut tokenizers).0;
    let line = serde_json::to_vec(&ev).expect("serializes");
    if let Err(e) = tally_collector::ingest::parse(&line) {
        panic!("the collector refuses the filter's event: {e:?}\n{}", String::from_utf8_lossy(&line));
    }
});

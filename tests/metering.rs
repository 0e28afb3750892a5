//! The metering logic on recorded-shape wire formats, natively: request headers and body in,
//! response split at every byte offset, event out.

use tally::config::Config;
use tally::event::{ErrorCategory, ErrorSource, Event};
use tally::exchange::{begin, Finish};
use tally::measure::Tokenizers;
use tally::pricing::{PriceTable, Pricer};
use tally::usage::TokenSource;

const KEY: &str = "tly_0123456789abcdefghijABCDEFGHIJ0123456789";

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Case<'a> {
    path: &'a str,
    request: &'a [u8],
    content_type: &'a str,
    status: u16,
    response: Vec<u8>,
}

fn run(case: &Case<'_>, chunks: &[&[u8]]) -> Event {
    let cfg = Config::parse(b"", Some(KEY.into())).unwrap();
    let headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", case.path),
        (":authority", "127.0.0.1:10000"),
        ("authorization", "Bearer sk-secret"),
        ("x-tally-feature", "search"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let b = begin(&cfg, &headers, 1_000.0);
    assert_eq!(b.strip, vec!["x-tally-feature".to_string()]);
    let mut ex = b.exchange.expect("metered");
    // The request body in uneven chunks, then the empty end-of-stream callback.
    let (a, rest) = case.request.split_at(case.request.len() / 3);
    ex.on_request_body(a);
    ex.on_request_body(rest);
    ex.on_request_body(&[]);
    ex.on_response_headers(Some(case.status), Some(case.content_type), None, 1_010.0);
    for c in chunks {
        ex.on_response_body(c, false);
    }
    ex.on_response_body(&[], true);
    let fin = Finish {
        now_unix_ms: 1_050.5,
        request_id: "r".into(),
        code_details: Some("via_upstream"),
        final_status: Some(case.status),
    };
    // Tokenizers are built once per VM; once per test thread here.
    let ev = TOKENIZERS.with(|t| ex.finish(fin, &mut t.borrow_mut()).0);
    priced(ev)
}

/// The event as the collector stores it: priced by the shared pricing core (the filter sends
/// no cost), so these tests check the whole way from wire bytes to dollars.
fn priced(mut ev: Event) -> Event {
    assert_eq!(ev.cost_usd, None, "the filter prices nothing");
    ev.cost_usd = PRICES.with(|prices| Pricer::default().cost_usd(prices, &ev));
    ev
}

/// Tokenizers with both vocabularies at hand. The wasm build (these tests run under it too)
/// embeds none and fetches them from the collector; here they come from the build's own output.
fn tokenizers() -> Tokenizers {
    let mut t = Tokenizers::default();
    if cfg!(target_arch = "wasm32") {
        for (enc, blob) in [
            (
                tally::measure::Encoding::O200k,
                &include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.vocab"))[..],
            ),
            (
                tally::measure::Encoding::Cl100k,
                &include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.vocab"))[..],
            ),
        ] {
            t.provide(enc, blob).unwrap();
        }
    }
    t
}

thread_local! {
    static PRICES: PriceTable = PriceTable::builtin().unwrap();
    static TOKENIZERS: std::cell::RefCell<Tokenizers> = std::cell::RefCell::new(tokenizers());
}

/// The same event whatever the chunking: whole, split at every offset, byte by byte.
fn check_every_split(case: &Case<'_>, check: impl Fn(&Event)) {
    // Beside exact usage, Tally's own count is a calibration sample taken one stream in
    // several once a tokenizer is loaded: not part of what must be equal.
    let run = |chunks: &[&[u8]]| {
        let mut ev = run(case, chunks);
        if ev.token_source == Some(TokenSource::Exact) {
            ev.measured_output_tokens = None;
        }
        ev
    };
    let body = &case.response;
    let whole = run(&[body]);
    check(&whole);
    for at in 0..=body.len() {
        let ev = run(&[&body[..at], &body[at..]]);
        assert_eq!(ev, whole, "split at {at}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(run(&bytes), whole, "byte by byte");
}

fn crlf(b: &[u8]) -> Vec<u8> {
    String::from_utf8(b.to_vec())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes()
}

fn tokens(ev: &Event) -> [Option<u64>; 5] {
    [
        ev.input_tokens,
        ev.output_tokens,
        ev.cached_input_tokens,
        ev.cache_write_tokens,
        ev.reasoning_tokens,
    ]
}

#[test]
fn openai_chat_completion_json() {
    let case = Case {
        path: "/v1/chat/completions",
        request: br#"{"messages":[{"role":"user","content":"What is in this image? \"model\":\"x\""}],"model":"gpt-4o","max_tokens":300}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("openai/chat_completion.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.model_requested.as_deref(), Some("gpt-4o"));
        assert_eq!(ev.model_actual.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            tokens(ev),
            [Some(1117), Some(46), Some(1024), Some(0), Some(0)]
        );
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        assert!(!ev.streaming);
        // gpt-4o: $2.50 in, $1.25 cached, $10 out per 1M.
        let pico: u64 = 93 * 2_500_000 + 1024 * 1_250_000 + 46 * 10_000_000;
        assert_eq!(ev.cost_usd, Some(pico as f64 / 1e12));
        assert_eq!(ev.feature.as_deref(), Some("search"));
        assert_eq!(ev.latency_ms, 50.5);
        assert_eq!(ev.ttfb_ms, Some(10.0));
        assert_eq!(ev.error_category, None);
    });
}

#[test]
fn openai_chat_completion_stream_usage_chunk() {
    for response in [
        fixture("openai/chat_completion_stream.sse"),
        crlf(&fixture("openai/chat_completion_stream.sse")),
    ] {
        let case = Case {
            path: "/v1/chat/completions",
            request: br#"{"model":"o3-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            content_type: "text/event-stream; charset=utf-8",
            status: 200,
            response,
        };
        check_every_split(&case, |ev| {
            assert!(ev.streaming);
            assert_eq!(ev.model_actual.as_deref(), Some("o3-mini-2025-01-31"));
            // Text that looks like usage inside a delta is content, not usage.
            assert_eq!(
                tokens(ev),
                [Some(2006), Some(300), Some(1920), Some(0), Some(192)]
            );
            // o3-mini: $1.10 in, $0.55 cached, $4.40 out.
            let pico: u64 = 86 * 1_100_000 + 1920 * 550_000 + 300 * 4_400_000;
            assert_eq!(ev.cost_usd, Some(pico as f64 / 1e12));
        });
    }
}

#[test]
fn anthropic_message_json() {
    let case = Case {
        path: "/v1/messages",
        request: br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Hello"}]}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("anthropic/message.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "anthropic");
        assert_eq!(ev.api, "messages");
        assert_eq!(
            ev.model_actual.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        // input = uncached + cache writes + cache reads.
        assert_eq!(
            tokens(ev),
            [
                Some(2095 + 503 + 1800),
                Some(503),
                Some(1800),
                Some(503),
                Some(0)
            ]
        );
        let pico: u64 = 2095 * 3_000_000 + 1800 * 300_000 + 503 * 3_750_000 + 503 * 15_000_000;
        assert_eq!(ev.cost_usd, Some(pico as f64 / 1e12));
    });
}

#[test]
fn anthropic_stream_takes_latest_cumulative_usage() {
    for response in [
        fixture("anthropic/message_stream.sse"),
        crlf(&fixture("anthropic/message_stream.sse")),
    ] {
        let case = Case {
            path: "/v1/messages",
            request: br#"{"model":"claude-opus-4-1","stream":true,"max_tokens":10,"messages":[]}"#,
            content_type: "text/event-stream",
            status: 200,
            response,
        };
        check_every_split(&case, |ev| {
            assert!(ev.streaming);
            assert_eq!(ev.model_actual.as_deref(), Some("claude-opus-4-1-20250805"));
            // 184 is the last cumulative output; input fields repeated on message_delta are
            // not added again.
            assert_eq!(
                tokens(ev),
                [Some(472 + 2048), Some(184), Some(2048), Some(0), Some(0)]
            );
        });
    }
}

#[test]
fn anthropic_error_event_in_a_200_stream() {
    let case = Case {
        path: "/v1/messages",
        request: br#"{"model":"claude-haiku-4-5","stream":true,"messages":[]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("anthropic/error_overloaded_stream.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.status, Some(200));
        assert_eq!(ev.error_category, Some(ErrorCategory::Overloaded));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
        assert_eq!(
            ev.model_actual.as_deref(),
            Some("claude-haiku-4-5-20251001")
        );
        // The input side came with `message_start`; no output text did, and the placeholder
        // output count is not taken as final.
        assert_eq!(tokens(ev), [Some(25), Some(0), Some(0), Some(0), None]);
        assert_eq!(ev.token_source, Some(TokenSource::Measured));
    });
}

#[test]
fn gemini_json_and_stream() {
    let case = Case {
        path: "/v1beta/models/gemini-2.5-flash:generateContent",
        request: br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
        content_type: "application/json; charset=UTF-8",
        status: 200,
        response: fixture("gemini/generate_content.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.model_requested.as_deref(), Some("gemini-2.5-flash"));
        // Thoughts are output and reasoning.
        assert_eq!(
            tokens(ev),
            [Some(1204), Some(35 + 352), Some(1024), Some(0), Some(352)]
        );
        let pico: u64 = 180 * 300_000 + 1024 * 30_000 + 387 * 2_500_000;
        assert_eq!(ev.cost_usd, Some(pico as f64 / 1e12));
    });
    let case = Case {
        path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        request: br#"{"contents":[]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("gemini/stream_generate_content.sse"),
    };
    check_every_split(&case, |ev| {
        assert!(ev.streaming);
        assert_eq!(
            ev.endpoint,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
        );
        assert_eq!(
            tokens(ev),
            [Some(9), Some(1141), Some(0), Some(0), Some(1021)]
        );
    });
}

#[test]
fn stream_cut_short_keeps_what_arrived() {
    let text = String::from_utf8(fixture("anthropic/message_stream.sse")).unwrap();
    // Cut inside the first content delta: only message_start has arrived (and ping).
    let cut = text.find("Okay").unwrap();
    let case = Case {
        path: "/v1/messages",
        request: br#"{"model":"claude-opus-4-1","stream":true}"#,
        content_type: "text/event-stream",
        status: 200,
        response: text.as_bytes()[..cut].to_vec(),
    };
    let ev = run(&case, &[&case.response]);
    // The input side was reported (message_start); no output text arrived, so none is counted,
    // and the provider's placeholder output count (2) is not taken as final.
    assert_eq!(ev.input_tokens, Some(2520));
    assert_eq!(ev.output_tokens, Some(0));
    assert_eq!(ev.token_source, Some(TokenSource::Measured));

    // Cut after two content deltas: their text is counted.
    let cut = text.find("event: content_block_stop").unwrap();
    let case = Case {
        response: text.as_bytes()[..cut].to_vec(),
        ..case
    };
    let ev = run(&case, &[&case.response]);
    let counted = tokenizers()
        .count(
            tally::measure::Encoding::O200k,
            "Okay, let's break \"usage\":{\"output_tokens\":9999} that down",
        )
        .tokens()
        .unwrap();
    assert!(counted > 10);
    assert_eq!(ev.output_tokens, Some(counted));
    assert_eq!(ev.measured_output_tokens, Some(counted));
    assert_eq!(ev.token_source, Some(TokenSource::Measured));
    // claude-opus-4-1: $15 in, $1.50 cache read, $75 out per 1M.
    let pico = 472 * 15_000_000 + 2048 * 1_500_000 + counted * 75_000_000;
    assert_eq!(ev.cost_usd, Some(pico as f64 / 1e12));
}

#[test]
fn unmetered_requests_still_lose_their_tally_headers() {
    let cfg = Config::parse(
        br#"{"header_aliases":{"feature":["Helicone-Property-Feature"]}}"#,
        Some(KEY.into()),
    )
    .unwrap();
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/v1/models"),
        ("x-tally-team", "a"),
        ("x-tally-key", "tly_secret"),
        ("x-tally-unknown", "b"),
        ("helicone-property-feature", "c"),
        ("authorization", "Bearer sk"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let b = begin(&cfg, &headers, 0.0);
    assert!(b.exchange.is_none());
    assert_eq!(
        b.strip,
        [
            "x-tally-team",
            "x-tally-key",
            "x-tally-unknown",
            "helicone-property-feature"
        ]
    );
}

#[test]
fn compressed_responses_are_metered_exactly() {
    let cfg = Config::parse(b"", Some(KEY.into())).unwrap();
    for (encoding, file, path, ct) in [
        (
            "gzip",
            "openai/chat_completion.json.gz",
            "/v1/chat/completions",
            "application/json",
        ),
        (
            "br",
            "openai/chat_completion.json.br",
            "/v1/chat/completions",
            "application/json",
        ),
        (
            "br",
            "anthropic/message_stream.sse.br",
            "/v1/messages",
            "text/event-stream",
        ),
    ] {
        let body = fixture(file);
        for chunk in [1, 17, body.len()] {
            let headers: Vec<(String, String)> = [(":method", "POST"), (":path", path)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut ex = begin(&cfg, &headers, 0.0).exchange.unwrap();
            ex.on_request_body(br#"{"model":"gpt-4o"}"#);
            ex.on_response_headers(Some(200), Some(ct), Some(encoding), 1.0);
            for c in body.chunks(chunk) {
                ex.on_response_body(c, false);
            }
            ex.on_response_body(&[], true);
            let fin = Finish {
                now_unix_ms: 2.0,
                request_id: "r".into(),
                code_details: None,
                final_status: Some(200),
            };
            let ev = priced(ex.finish(fin, &mut tokenizers()).0);
            let want = if path == "/v1/messages" {
                [Some(2520), Some(184), Some(2048), Some(0), Some(0)]
            } else {
                [Some(1117), Some(46), Some(1024), Some(0), Some(0)]
            };
            assert_eq!(tokens(&ev), want, "{file} in chunks of {chunk}");
        }
    }
}

#[test]
fn compression_bomb_and_unknown_encoding_give_no_usage() {
    use std::io::Write;
    let cfg = Config::parse(br#"{"max_decompressed_bytes": 65536}"#, Some(KEY.into())).unwrap();
    // A valid JSON response padded to 1 MiB of spaces before its usage: past the cap.
    let mut doc = b"{\"model\":\"gpt-4o\",".to_vec();
    doc.extend(std::iter::repeat_n(b' ', 1 << 20));
    doc.extend_from_slice(br#""usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&doc).unwrap();
    let bomb = gz.finish().unwrap();
    for (encoding, body) in [("gzip", bomb), ("zstd", b"\x28\xb5\x2f\xfd".to_vec())] {
        let headers: Vec<(String, String)> =
            [(":method", "POST"), (":path", "/v1/chat/completions")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let mut ex = begin(&cfg, &headers, 0.0).exchange.unwrap();
        ex.on_response_headers(Some(200), Some("application/json"), Some(encoding), 1.0);
        for c in body.chunks(4096) {
            ex.on_response_body(c, false);
        }
        ex.on_response_body(&[], true);
        let fin = Finish {
            now_unix_ms: 2.0,
            request_id: "r".into(),
            code_details: None,
            final_status: Some(200),
        };
        let ev = priced(ex.finish(fin, &mut tokenizers()).0);
        assert_eq!(ev.input_tokens, None, "{encoding}");
        assert_eq!(ev.token_source, None);
    }
}

fn usd(pico: u64) -> Option<f64> {
    Some(pico as f64 / 1e12)
}

#[test]
fn openai_responses_api_json_and_streams() {
    let case = Case {
        path: "/v1/responses",
        request: br#"{"model":"gpt-4.1","input":"Tell me a story"}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("openai/responses.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.api, "responses");
        assert_eq!(ev.model_actual.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(tokens(ev), [Some(36), Some(87), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.cost_usd, usd(36 * 2_000_000 + 87 * 8_000_000));
    });
    for file in [
        "openai/responses_stream.sse",
        "openai/responses_stream_incomplete.sse",
    ] {
        let case = Case {
            path: "/v1/responses",
            request: br#"{"model":"o4-mini","input":"hi","stream":true}"#,
            content_type: "text/event-stream",
            status: 200,
            response: fixture(file),
        };
        check_every_split(&case, |ev| {
            assert!(ev.streaming);
            assert_eq!(
                ev.model_actual.as_deref(),
                Some("o4-mini-2025-04-16"),
                "{file}"
            );
            assert_eq!(
                tokens(ev),
                [Some(1200), Some(640), Some(1024), Some(0), Some(576)],
                "{file}"
            );
            assert_eq!(ev.token_source, Some(TokenSource::Exact));
            assert_eq!(
                ev.error_category, None,
                "{file}: stopping at a limit is no error"
            );
            assert_eq!(
                ev.cost_usd,
                usd(176 * 1_100_000 + 1024 * 275_000 + 640 * 4_400_000)
            );
        });
    }
    let case = Case {
        path: "/v1/responses",
        request: br#"{"model":"gpt-4.1","input":"hi","stream":true}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("openai/responses_stream_failed.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(tokens(ev), [Some(210), Some(0), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.error_category, Some(ErrorCategory::ProviderError));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
    });
}

#[test]
fn openai_embeddings_and_legacy_completions() {
    let case = Case {
        path: "/v1/embeddings",
        request: br#"{"input":"The food was delicious","model":"text-embedding-3-small"}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("openai/embeddings.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.api, "embeddings");
        assert_eq!(tokens(ev), [Some(8), Some(0), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.cost_usd, usd(8 * 20_000));
    });
    let case = Case {
        path: "/v1/completions",
        request: br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","stream":true,"stream_options":{"include_usage":true}}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("openai/completions_stream.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.api, "completions");
        assert_eq!(tokens(ev), [Some(5), Some(4), Some(0), Some(0), Some(0)]);
    });
}

#[test]
fn openai_compatible_quirks() {
    for (file, want) in [
        // Usage on the last content chunk (choices not empty).
        (
            "openai/compat_usage_on_last_choice.sse",
            [Some(40), Some(2)],
        ),
        // Usage chunk with `"choices": null`.
        ("openai/compat_choices_null.sse", [Some(12), Some(8)]),
        // Groq: usage in `x_groq.usage`.
        ("openai/groq_x_groq.sse", [Some(48), Some(7)]),
    ] {
        let case = Case {
            path: "/openai/v1/chat/completions",
            request: br#"{"model":"m","stream":true,"messages":[]}"#,
            content_type: "text/event-stream",
            status: 200,
            response: fixture(file),
        };
        check_every_split(&case, |ev| {
            assert_eq!([ev.input_tokens, ev.output_tokens], want, "{file}");
            assert_eq!(ev.token_source, Some(TokenSource::Exact), "{file}");
        });
    }
}

#[test]
fn azure_deployment_names_the_model_when_the_body_does_not() {
    let case = Case {
        path: "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
        request: br#"{"messages":[{"role":"user","content":"hi"}]}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("openai/azure_chat_completion.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "azure");
        assert_eq!(
            ev.endpoint,
            "/openai/deployments/prod-chat/chat/completions"
        );
        assert_eq!(ev.model_requested.as_deref(), Some("prod-chat"));
        assert_eq!(ev.model_actual.as_deref(), Some("gpt-4o-2024-11-20"));
        assert_eq!(tokens(ev), [Some(19), Some(9), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.cost_usd, usd(19 * 2_500_000 + 9 * 10_000_000));
    });
}

#[test]
fn tokenizer_is_not_built_while_exact_usage_arrives() {
    let cfg = Config::parse(b"", Some(KEY.into())).unwrap();
    let mut tokenizers = Tokenizers::default();
    let headers: Vec<(String, String)> = [(":method", "POST"), (":path", "/v1/chat/completions")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for _ in 0..20 {
        let mut ex = begin(&cfg, &headers, 0.0).exchange.unwrap();
        ex.on_request_body(br#"{"model":"o3-mini","stream":true}"#);
        ex.on_response_headers(Some(200), Some("text/event-stream"), None, 1.0);
        ex.on_response_body(&fixture("openai/chat_completion_stream.sse"), true);
        let fin = Finish {
            now_unix_ms: 2.0,
            request_id: "r".into(),
            code_details: None,
            final_status: Some(200),
        };
        let ev = priced(ex.finish(fin, &mut tokenizers).0);
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        assert_eq!(ev.measured_output_tokens, None);
    }
    assert!(!tokenizers.is_loaded(tally::measure::Encoding::O200k));
    assert!(!tokenizers.is_loaded(tally::measure::Encoding::Cl100k));
}

// Quirks seen in real traffic (issue 18): each on a fixture of its wire shape.

fn measured(model: &str, text: &str) -> u64 {
    tokenizers()
        .count(tally::measure::encoding_for(model), text)
        .tokens()
        .unwrap()
}

#[test]
fn azure_stream_whose_first_chunk_has_an_empty_model() {
    // Azure's first chunk carries only the prompt's content-filter results, with `"model": ""`,
    // and so does a late content-filter chunk: the model is the first non-empty value.
    let case = Case {
        path: "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
        request: br#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        content_type: "text/event-stream; charset=utf-8",
        status: 200,
        response: fixture("openai/azure_stream_content_filter.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "azure");
        assert!(ev.streaming);
        assert_eq!(ev.model_requested.as_deref(), Some("prod-chat"));
        assert_eq!(ev.model_actual.as_deref(), Some("gpt-4o-2024-11-20"));
        assert_eq!(tokens(ev), [Some(19), Some(2), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        assert_eq!(ev.cost_usd, usd(19 * 2_500_000 + 2 * 10_000_000));
        assert_eq!(ev.error_category, None);
    });
}

#[test]
fn deepseek_cache_hits_under_their_own_names() {
    // `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens` = `prompt_tokens`: the hits are
    // the cached part of the input, which still counts them.
    let case = Case {
        path: "/chat/completions",
        request: br#"{"model":"deepseek-reasoner","stream":true,"messages":[]}"#,
        content_type: "text/event-stream; charset=utf-8",
        status: 200,
        response: fixture("openai/deepseek_cache_hit_stream.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.model_actual.as_deref(), Some("deepseek-reasoner"));
        assert_eq!(
            tokens(ev),
            [Some(1536), Some(412), Some(1472), Some(0), Some(380)]
        );
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        // deepseek-reasoner: $0.28 in, $0.028 cache hit, $0.42 out per 1M.
        assert_eq!(
            ev.cost_usd,
            usd(64 * 280_000 + 1472 * 28_000 + 412 * 420_000)
        );
    });
}

#[test]
fn openrouter_cache_writes_in_prompt_tokens_details() {
    // OpenRouter's `prompt_tokens_details.cache_write_tokens` is the part of `prompt_tokens`
    // written to the cache.
    let case = Case {
        path: "/api/v1/chat/completions",
        request: br#"{"model":"anthropic/claude-sonnet-4.5","messages":[]}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("openai/openrouter_cache_write.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(
            ev.model_actual.as_deref(),
            Some("anthropic/claude-sonnet-4.5")
        );
        assert_eq!(
            tokens(ev),
            [Some(3210), Some(85), Some(0), Some(3005), Some(0)]
        );
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
    });
}

#[test]
fn anthropic_newer_usage_fields_leave_the_counts_exact() {
    // `cache_creation` (5-minute and 1-hour writes), `server_tool_use.web_search_requests` and
    // `service_tier` are read past; the totals are those of the three token counts, and the
    // stream's final `message_delta` input (grown by the search results) is the one taken.
    let want = [
        Some(9815 + 3000 + 1200),
        Some(417),
        Some(1200),
        Some(3000),
        Some(0),
    ];
    for (file, content_type) in [
        (
            "anthropic/web_search_cache_1h_stream.sse",
            "text/event-stream",
        ),
        (
            "anthropic/message_web_search_cache_1h.json",
            "application/json",
        ),
    ] {
        let case = Case {
            path: "/v1/messages",
            request: br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[],"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":1}]}"#,
            content_type,
            status: 200,
            response: fixture(file),
        };
        check_every_split(&case, |ev| {
            assert_eq!(
                ev.model_actual.as_deref(),
                Some("claude-sonnet-4-5-20250929"),
                "{file}"
            );
            assert_eq!(tokens(ev), want, "{file}");
            assert_eq!(ev.token_source, Some(TokenSource::Exact), "{file}");
            assert_eq!(ev.error_category, None, "{file}");
            // Priced by each part: claude-sonnet-4-5 at $3 in, $0.30 cache read, $3.75 for a
            // five-minute write, $6 for an hour-long one, $15 out per 1M, $0.01 per search.
            assert_eq!(ev.cache_write_1h_tokens, Some(2000), "{file}");
            assert_eq!(ev.web_search_requests, Some(1), "{file}");
            let pico = 9815 * 3_000_000u64
                + 1200 * 300_000
                + 1000 * 3_750_000
                + 2000 * 6_000_000
                + 417 * 15_000_000
                + 10_000_000_000;
            assert_eq!(ev.cost_usd, usd(pico), "{file}");
        });
    }
}

#[test]
fn openai_service_tiers_are_reported_and_priced_at_their_rates() {
    // The response's own tier wins over the request's; a request's tier stands when the
    // response names none.
    for (request, response_tier, want, input, cached, output) in [
        (
            r#"{"model":"gpt-5","service_tier":"flex","messages":[]}"#,
            Some("flex"),
            "flex",
            625_000u64,
            62_500u64,
            5_000_000u64,
        ),
        (
            r#"{"model":"gpt-5","service_tier":"auto","messages":[]}"#,
            Some("priority"),
            "priority",
            2_500_000,
            250_000,
            20_000_000,
        ),
        (
            r#"{"model":"gpt-5","service_tier":"flex","messages":[]}"#,
            None,
            "flex",
            625_000,
            62_500,
            5_000_000,
        ),
        (
            r#"{"model":"gpt-5","messages":[]}"#,
            Some("default"),
            "default",
            1_250_000,
            125_000,
            10_000_000,
        ),
    ] {
        let tier = response_tier.map_or(String::new(), |t| format!(r#","service_tier":"{t}""#));
        let body = format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-5-2025-08-07"{tier},"choices":[],"usage":{{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100,"prompt_tokens_details":{{"cached_tokens":400}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#
        );
        let case = Case {
            path: "/v1/chat/completions",
            request: request.as_bytes(),
            content_type: "application/json",
            status: 200,
            response: body.into_bytes(),
        };
        check_every_split(&case, |ev| {
            assert_eq!(ev.service_tier.as_deref(), Some(want), "{request}");
            assert_eq!(
                ev.cost_usd,
                usd(600 * input + 400 * cached + 100 * output),
                "{request}"
            );
        });
    }
}

#[test]
fn gemini_model_version_with_a_models_prefix() {
    let case = Case {
        path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        request: br#"{"contents":[{"parts":[{"text":"What do tallies do?"}]}]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("gemini/stream_model_version_prefixed.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.model_requested.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(ev.model_actual.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            tokens(ev),
            [Some(12), Some(5 + 24), Some(0), Some(0), Some(24)]
        );
        assert_eq!(ev.cost_usd, usd(12 * 300_000 + 29 * 2_500_000));
    });
}

#[test]
fn error_event_ending_a_200_stream_is_an_error() {
    // OpenAI: a bare `{"error": {...}}` data line, then the stream closes.
    let case = Case {
        path: "/v1/chat/completions",
        request: br#"{"model":"gpt-4.1","stream":true,"messages":[]}"#,
        content_type: "text/event-stream; charset=utf-8",
        status: 200,
        response: fixture("openai/error_in_200_stream.sse"),
    };
    let out = measured("gpt-4.1-2025-04-14", "Counting sheep");
    check_every_split(&case, |ev| {
        assert_eq!(ev.status, Some(200));
        assert_eq!(ev.error_category, Some(ErrorCategory::ProviderError));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
        assert_eq!(ev.model_actual.as_deref(), Some("gpt-4.1-2025-04-14"));
        // No usage came: the output that passed is counted, the input is unknown.
        assert_eq!(tokens(ev), [None, Some(out), None, None, None]);
        assert_eq!(ev.token_source, Some(TokenSource::Measured));
    });
    // OpenRouter: the error's code is the HTTP status it stands for.
    let case = Case {
        path: "/api/v1/chat/completions",
        request: br#"{"model":"openai/gpt-4o","stream":true,"messages":[]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("openai/openrouter_error_in_200_stream.sse"),
    };
    let out = measured("openai/gpt-4o", "Sure");
    check_every_split(&case, |ev| {
        assert_eq!(ev.error_category, Some(ErrorCategory::ProviderError));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
        assert_eq!(ev.model_actual.as_deref(), Some("openai/gpt-4o"));
        assert_eq!(tokens(ev), [None, Some(out), None, None, None]);
        assert_eq!(ev.token_source, Some(TokenSource::Measured));
    });
}

#[test]
fn error_json_served_as_an_event_stream() {
    // A whole JSON error body under `text/event-stream`, without SSE framing: read as the JSON
    // it is, whatever the status says.
    for status in [400, 200] {
        let case = Case {
            path: "/v1/chat/completions",
            request: br#"{"model":"gpt-4o","stream":true,"messages":[]}"#,
            content_type: "text/event-stream; charset=utf-8",
            status,
            response: fixture("openai/error_json_as_event_stream.json"),
        };
        check_every_split(&case, |ev| {
            assert_eq!(ev.status, Some(status));
            assert_eq!(ev.error_category, Some(ErrorCategory::ContextLength));
            assert_eq!(ev.error_source, Some(ErrorSource::Provider));
            assert!(ev.streaming);
            assert_eq!(ev.model_actual, None);
            assert_eq!(tokens(ev), [None; 5]);
            assert_eq!(ev.token_source, None);
        });
    }
    let case = Case {
        path: "/v1/messages",
        request: br#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("anthropic/error_json_as_event_stream.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.error_category, Some(ErrorCategory::Overloaded));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
        assert_eq!(tokens(ev), [None; 5]);
        assert_eq!(ev.token_source, None);
    });
}

#[test]
fn usage_null_after_the_usage_chunk_keeps_the_usage() {
    let case = Case {
        path: "/v1/chat/completions",
        request: br#"{"model":"meta-llama/Llama-3.3-70B-Instruct-Turbo","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        content_type: "text/event-stream",
        status: 200,
        response: fixture("openai/compat_usage_then_null.sse"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(
            ev.model_actual.as_deref(),
            Some("meta-llama/Llama-3.3-70B-Instruct-Turbo")
        );
        assert_eq!(tokens(ev), [Some(27), Some(9), Some(0), Some(0), Some(0)]);
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        assert_eq!(ev.error_category, None);
    });
}

/// Gemini's `streamGenerateContent` without `alt=sse`: one JSON array, its elements split
/// anywhere, read element by element (text that looks like usage is content).
#[test]
fn gemini_stream_without_alt_sse_is_one_json_array() {
    let crlf_array = fixture("gemini/stream_generate_content_array.json");
    let lf_array = String::from_utf8(crlf_array.clone())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes();
    for response in [crlf_array, lf_array] {
        let case = Case {
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            request: br#"{"contents":[{"parts":[{"text":"What do tallies do?"}]}]}"#,
            content_type: "application/json; charset=UTF-8",
            status: 200,
            response,
        };
        check_every_split(&case, |ev| {
            assert_eq!(ev.provider, "gemini");
            assert_eq!(ev.api, "generate_content");
            assert_eq!(
                ev.endpoint,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            );
            assert_eq!(ev.model_requested.as_deref(), Some("gemini-2.5-flash"));
            assert_eq!(ev.model_actual.as_deref(), Some("gemini-2.5-flash"));
            assert!(ev.streaming);
            assert_eq!(ev.status, Some(200));
            // The last element's running totals; thoughts are output and reasoning.
            assert_eq!(
                tokens(ev),
                [Some(14), Some(38 + 249), Some(0), Some(0), Some(249)]
            );
            assert_eq!(ev.token_source, Some(TokenSource::Exact));
            assert_eq!(ev.error_category, None);
            // gemini-2.5-flash: $0.30 in, $2.50 out per 1M.
            assert_eq!(ev.cost_usd, usd(14 * 300_000 + 287 * 2_500_000));
        });
    }
}

/// An array stream cut short (the connection lost before `]`) is a stream cut short: the
/// running totals it carried are not final, the output of the whole elements that passed is
/// counted, and the event says what broke.
#[test]
fn gemini_array_stream_cut_short_is_measured() {
    let text = String::from_utf8(fixture("gemini/stream_generate_content_array.json")).unwrap();
    // Inside the last element, after its text, before its usage.
    let cut = text.rfind("\"usageMetadata\"").unwrap();
    let cfg = Config::parse(b"", Some(KEY.into())).unwrap();
    let headers = [
        (":method", "POST"),
        (
            ":path",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        ),
        (":authority", "generativelanguage.googleapis.com"),
    ];
    let mut ex = begin(&cfg, &headers, 1_000.0).exchange.expect("metered");
    ex.on_request_body(br#"{"contents":[]}"#);
    ex.on_response_headers(
        Some(200),
        Some("application/json; charset=UTF-8"),
        None,
        1_010.0,
    );
    for piece in text.as_bytes()[..cut].chunks(97) {
        ex.on_response_body(piece, false);
    }
    let fin = Finish {
        now_unix_ms: 1_050.5,
        request_id: "r".into(),
        code_details: Some("upstream_reset_after_response_started{connection_termination}"),
        final_status: Some(200),
    };
    let ev = TOKENIZERS.with(|t| ex.finish(fin, &mut t.borrow_mut()).0);
    let out = measured(
        "gemini-2.5-flash",
        "Tallies count: a notch per sheep, brackets ] and }, {\"quotes\": [\"ok\"]} in text,\\ ",
    );
    assert!(out > 10);
    assert!(ev.streaming);
    assert_eq!(ev.token_source, Some(TokenSource::Measured));
    // The prompt count of the last whole element stays; output is what passed, counted.
    assert_eq!(tokens(&ev), [Some(14), Some(out), Some(0), Some(0), None]);
    assert_eq!(ev.error_category, Some(ErrorCategory::ProviderError));
    assert_eq!(ev.error_source, Some(ErrorSource::Network));
}

/// An error answered to a streaming call, in an array or alone.
#[test]
fn gemini_array_stream_error_bodies() {
    for body in [
        &br#"[{
  "error": {
    "code": 503,
    "message": "The model is overloaded. Please try again later.",
    "status": "UNAVAILABLE"
  }
}
]"#[..],
        br#"{"error":{"code":429,"message":"Resource exhausted.","status":"RESOURCE_EXHAUSTED"}}"#,
    ] {
        let status = if body.starts_with(b"[") { 200 } else { 429 };
        let case = Case {
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            request: br#"{"contents":[]}"#,
            content_type: "application/json; charset=UTF-8",
            status,
            response: body.to_vec(),
        };
        check_every_split(&case, |ev| {
            let category = if status == 200 {
                ErrorCategory::Overloaded
            } else {
                ErrorCategory::RateLimited
            };
            assert_eq!(ev.error_category, Some(category));
            assert_eq!(ev.error_source, Some(ErrorSource::Provider));
            assert_eq!(ev.input_tokens, None);
            if status == 200 {
                // A stream whose one element is an error: no output passed, counted as such.
                assert_eq!(ev.output_tokens, Some(0));
                assert_eq!(ev.token_source, Some(TokenSource::Measured));
            } else {
                // One JSON object: a body, not a stream; nothing to count.
                assert_eq!(tokens(ev), [None; 5]);
                assert_eq!(ev.token_source, None);
            }
        });
    }
}

const VERTEX_GEMINI: &str =
    "/v1/projects/acme-prod/locations/us-central1/publishers/google/models/gemini-2.5-flash";

#[test]
fn vertex_gemini_generate_content() {
    let path = format!("{VERTEX_GEMINI}:generateContent");
    let case = Case {
        path: &path,
        request: br#"{"contents":[{"role":"user","parts":[{"text":"What is a tally stick?"}]}]}"#,
        content_type: "application/json; charset=UTF-8",
        status: 200,
        response: fixture("vertex/gemini_generate_content.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "vertex_ai");
        assert_eq!(ev.api, "generate_content");
        assert_eq!(ev.endpoint, path);
        assert_eq!(ev.model_requested.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(ev.model_actual.as_deref(), Some("gemini-2.5-flash"));
        assert!(!ev.streaming);
        assert_eq!(
            tokens(ev),
            [Some(2210), Some(17 + 271), Some(2048), Some(0), Some(271)]
        );
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        assert_eq!(ev.error_category, None);
        // gemini-2.5-flash on Vertex: $0.30 in, $0.03 cached, $2.50 out per 1M.
        assert_eq!(
            ev.cost_usd,
            usd(162 * 300_000 + 2048 * 30_000 + 288 * 2_500_000)
        );
    });
}

/// Vertex's Gemini streams, both framings: early chunks carry only `trafficType`, the last one
/// the counts.
#[test]
fn vertex_gemini_streams_with_and_without_alt_sse() {
    let base = "/v1beta1/projects/acme-prod/locations/global/publishers/google/models/gemini-2.5-pro:streamGenerateContent";
    let sse_path = format!("{base}?alt=sse");
    let cases = [
        (
            sse_path.as_str(),
            "text/event-stream",
            fixture("vertex/gemini_stream.sse"),
        ),
        (
            base,
            "application/json; charset=UTF-8",
            fixture("vertex/gemini_stream_array.json"),
        ),
        (
            base,
            "application/json; charset=UTF-8",
            crlf(&fixture("vertex/gemini_stream_array.json")),
        ),
    ];
    for (path, content_type, response) in cases {
        let case = Case {
            path,
            request: br#"{"contents":[{"role":"user","parts":[{"text":"Tally sticks?"}]}]}"#,
            content_type,
            status: 200,
            response,
        };
        check_every_split(&case, |ev| {
            assert_eq!(ev.provider, "vertex_ai");
            assert_eq!(ev.api, "generate_content");
            assert_eq!(ev.endpoint, base);
            assert_eq!(ev.model_requested.as_deref(), Some("gemini-2.5-pro"));
            assert_eq!(ev.model_actual.as_deref(), Some("gemini-2.5-pro"));
            assert!(ev.streaming);
            assert_eq!(
                tokens(ev),
                [Some(31), Some(12 + 1024), Some(0), Some(0), Some(1024)]
            );
            assert_eq!(ev.token_source, Some(TokenSource::Exact));
            assert_eq!(ev.error_category, None);
            // gemini-2.5-pro: $1.25 in, $10 out per 1M (prompts up to 200k tokens).
            assert_eq!(ev.cost_usd, usd(31 * 1_250_000 + 1036 * 10_000_000));
        });
    }
}

/// Claude on Vertex: Anthropic's Messages shapes, the model only in the path (with Vertex's `@`
/// snapshot), the served model in the response.
#[test]
fn vertex_claude_raw_predict_and_stream() {
    let path = "/v1/projects/acme-prod/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict";
    let case = Case {
        path,
        request: br#"{"anthropic_version":"vertex-2023-10-16","max_tokens":1024,"messages":[{"role":"user","content":"What is a tally stick?"}]}"#,
        content_type: "application/json",
        status: 200,
        response: fixture("vertex/claude_raw_predict.json"),
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "vertex_ai");
        assert_eq!(ev.api, "messages");
        assert_eq!(ev.endpoint, path);
        assert_eq!(
            ev.model_requested.as_deref(),
            Some("claude-sonnet-4-5@20250929")
        );
        assert_eq!(
            ev.model_actual.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert!(!ev.streaming);
        // input = uncached + cache writes + cache reads.
        assert_eq!(
            tokens(ev),
            [
                Some(21 + 1500 + 3000),
                Some(14),
                Some(3000),
                Some(1500),
                Some(0)
            ]
        );
        assert_eq!(ev.token_source, Some(TokenSource::Exact));
        // $3 in, $3.75 five-minute cache write, $0.30 cache read, $15 out per 1M.
        assert_eq!(
            ev.cost_usd,
            usd(21 * 3_000_000 + 1500 * 3_750_000 + 3000 * 300_000 + 14 * 15_000_000)
        );
    });
    let path = "/v1/projects/acme-prod/locations/global/publishers/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict";
    for response in [
        fixture("vertex/claude_stream_raw_predict.sse"),
        crlf(&fixture("vertex/claude_stream_raw_predict.sse")),
    ] {
        let case = Case {
            path,
            request: br#"{"anthropic_version":"vertex-2023-10-16","stream":true,"max_tokens":256,"messages":[]}"#,
            content_type: "text/event-stream; charset=utf-8",
            status: 200,
            response,
        };
        check_every_split(&case, |ev| {
            assert_eq!(ev.provider, "vertex_ai");
            assert_eq!(ev.api, "messages");
            assert_eq!(
                ev.model_requested.as_deref(),
                Some("claude-haiku-4-5@20251001")
            );
            assert_eq!(
                ev.model_actual.as_deref(),
                Some("claude-haiku-4-5-20251001")
            );
            assert!(ev.streaming);
            // The cumulative output of `message_delta`; text that looks like usage is content.
            assert_eq!(
                tokens(ev),
                [Some(18 + 1024), Some(16), Some(1024), Some(0), Some(0)]
            );
            assert_eq!(ev.token_source, Some(TokenSource::Exact));
            // $1 in, $0.10 cache read, $5 out per 1M.
            assert_eq!(
                ev.cost_usd,
                usd(18 * 1_000_000 + 1024 * 100_000 + 16 * 5_000_000)
            );
        });
    }
}

// AWS Bedrock: the model from the path, usage from each model family's body, from the event
// stream (`application/vnd.amazon.eventstream`), from the response headers; the request never
// changed (its SigV4 signature covers it).

const BEDROCK_CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const BEDROCK_CLAUDE_PATH: &str = "anthropic.claude-3-5-haiku-20241022-v1%3A0";
const ANTHROPIC_BODY: &[u8] =
    br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":256,"messages":[{"role":"user","content":"What is a tally?"}]}"#;
const CONVERSE_BODY: &[u8] =
    br#"{"messages":[{"role":"user","content":[{"text":"What is a tally?"}]}],"inferenceConfig":{"maxTokens":256}}"#;

fn bedrock_case(path: String, request: &[u8], ct: &str, response: Vec<u8>) -> Case<'static> {
    Case {
        path: Box::leak(path.into_boxed_str()),
        request: Box::leak(request.to_vec().into_boxed_slice()),
        content_type: Box::leak(ct.to_string().into_boxed_str()),
        status: 200,
        response,
    }
}

/// Bedrock's prices per 1M tokens, as `make prices` lists them: Claude 3.5 Haiku $0.80 in, $0.08
/// cache read, $1 cache write, $4 out (also under the `us.` inference profile); Llama 3.1 8B $0.22
/// in and out; Nova Lite $0.06 in, $0.015 cache read, $0.24 out; Titan Text Express $0.20 in,
/// $0.60 out. `pico` is the expected cost in pico-dollars.
fn assert_bedrock(
    ev: &Event,
    api: &str,
    model: &str,
    streaming: bool,
    t: [Option<u64>; 5],
    pico: u64,
) {
    assert_eq!(ev.cost_usd, usd(pico), "cost of {model}");
    assert_eq!(ev.provider, "bedrock");
    assert_eq!(ev.api, api);
    assert_eq!(ev.model_requested.as_deref(), Some(model));
    assert_eq!(ev.model_actual.as_deref(), Some(model));
    assert_eq!(ev.streaming, streaming);
    assert_eq!(ev.status, Some(200));
    assert_eq!(tokens(ev), t);
    assert_eq!(ev.token_source, Some(TokenSource::Exact));
    assert_eq!(ev.error_category, None);
}

#[test]
fn bedrock_invoke_model_bodies_of_each_family() {
    let cases = [
        (
            BEDROCK_CLAUDE,
            BEDROCK_CLAUDE_PATH,
            "bedrock/invoke_claude.json",
            // Anthropic's input leaves the cache out: 14 + 2048.
            [Some(2062), Some(38), Some(2048), Some(0), Some(0)],
            14 * 800_000 + 2048 * 80_000 + 38 * 4_000_000,
        ),
        (
            "meta.llama3-1-8b-instruct-v1:0",
            "meta.llama3-1-8b-instruct-v1%3A0",
            "bedrock/invoke_llama.json",
            [Some(23), Some(41), Some(0), Some(0), Some(0)],
            (23 + 41) * 220_000,
        ),
        (
            "us.amazon.nova-lite-v1:0",
            "us.amazon.nova-lite-v1:0",
            "bedrock/invoke_nova.json",
            [Some(1033), Some(27), Some(1024), Some(0), Some(0)],
            9 * 60_000 + 1024 * 15_000 + 27 * 240_000,
        ),
        (
            "amazon.titan-text-express-v1",
            "amazon.titan-text-express-v1",
            "bedrock/invoke_titan.json",
            [Some(6), Some(33), Some(0), Some(0), Some(0)],
            6 * 200_000 + 33 * 600_000,
        ),
    ];
    for (model, in_path, file, t, pico) in cases {
        let case = bedrock_case(
            format!("/model/{in_path}/invoke"),
            ANTHROPIC_BODY,
            "application/json",
            fixture(file),
        );
        check_every_split(&case, |ev| {
            assert_bedrock(ev, "invoke_model", model, false, t, pico);
            assert_eq!(ev.endpoint, format!("/model/{in_path}/invoke"));
        });
    }
}

#[test]
fn bedrock_invoke_model_with_response_stream() {
    let case = bedrock_case(
        format!("/model/{BEDROCK_CLAUDE_PATH}/invoke-with-response-stream"),
        ANTHROPIC_BODY,
        "application/vnd.amazon.eventstream",
        fixture("bedrock/invoke_stream_claude.eventstream"),
    );
    check_every_split(&case, |ev| {
        assert_bedrock(
            ev,
            "invoke_model",
            BEDROCK_CLAUDE,
            true,
            [Some(25), Some(12), Some(0), Some(0), Some(0)],
            25 * 800_000 + 12 * 4_000_000,
        );
    });
    // Llama: counts in the chunks, the invocation metrics at the end.
    let case = bedrock_case(
        "/model/meta.llama3-1-8b-instruct-v1%3A0/invoke-with-response-stream".into(),
        br#"{"prompt":"What is a tally?","max_gen_len":256}"#,
        "application/vnd.amazon.eventstream",
        fixture("bedrock/invoke_stream_llama.eventstream"),
    );
    check_every_split(&case, |ev| {
        assert_bedrock(
            ev,
            "invoke_model",
            "meta.llama3-1-8b-instruct-v1:0",
            true,
            [Some(18), Some(10), Some(0), Some(0), Some(0)],
            (18 + 10) * 220_000,
        );
    });
}

#[test]
fn bedrock_converse_and_converse_stream() {
    let case = bedrock_case(
        "/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse".into(),
        CONVERSE_BODY,
        "application/json",
        fixture("bedrock/converse.json"),
    );
    check_every_split(&case, |ev| {
        assert_bedrock(
            ev,
            "converse",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            false,
            [Some(2062), Some(38), Some(2048), Some(0), Some(0)],
            14 * 800_000 + 2048 * 80_000 + 38 * 4_000_000,
        );
    });
    let case = bedrock_case(
        format!("/model/{BEDROCK_CLAUDE_PATH}/converse-stream"),
        CONVERSE_BODY,
        "application/vnd.amazon.eventstream",
        fixture("bedrock/converse_stream.eventstream"),
    );
    check_every_split(&case, |ev| {
        assert_bedrock(
            ev,
            "converse",
            BEDROCK_CLAUDE,
            true,
            [Some(25), Some(12), Some(0), Some(0), Some(0)],
            25 * 800_000 + 12 * 4_000_000,
        );
    });
}

#[test]
fn bedrock_exception_in_a_stream_is_the_providers_error() {
    let case = bedrock_case(
        format!("/model/{BEDROCK_CLAUDE_PATH}/invoke-with-response-stream"),
        ANTHROPIC_BODY,
        "application/vnd.amazon.eventstream",
        fixture("bedrock/invoke_stream_model_error.eventstream"),
    );
    check_every_split(&case, |ev| {
        assert_eq!(ev.status, Some(200));
        assert_eq!(ev.error_category, Some(ErrorCategory::ProviderError));
        assert_eq!(ev.error_source, Some(ErrorSource::Provider));
        // `message_start` only: no complete usage, and no text to count from a Bedrock stream.
        assert_eq!(ev.token_source, None);
        assert_eq!(ev.output_tokens, None);
    });
}

/// A Bedrock exchange with a given configuration, request headers and response headers.
fn bedrock_event(
    cfg_json: &str,
    path: &str,
    extra: &[(&str, &str)],
    response_headers: (Option<&str>, Option<&str>),
    body: &[u8],
) -> (tally::exchange::Begin, Option<Event>) {
    let cfg = Config::parse(cfg_json.as_bytes(), Some(KEY.into())).unwrap();
    let mut headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", path),
        (":authority", "bedrock-runtime.us-east-1.amazonaws.com"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    headers.sort();
    let mut b = begin(&cfg, &headers, 1_000.0);
    let Some(mut ex) = b.exchange.take() else {
        return (b, None);
    };
    assert_eq!(ex.on_request_body(ANTHROPIC_BODY), None, "never rewritten");
    assert_eq!(ex.on_request_body(&[]), None);
    ex.on_response_headers(Some(200), Some("application/json"), None, 1_010.0);
    assert!(ex.reads_provider_headers());
    ex.on_provider_headers(&tally::provider::ProviderHeaders {
        input_tokens: response_headers.0,
        output_tokens: response_headers.1,
        error_type: None,
    });
    ex.on_response_body(body, true);
    let fin = Finish {
        now_unix_ms: 1_050.5,
        request_id: "r".into(),
        code_details: Some("via_upstream"),
        final_status: Some(200),
    };
    let ev = priced(TOKENIZERS.with(|t| ex.finish(fin, &mut t.borrow_mut()).0));
    (b, Some(ev))
}

#[test]
fn bedrock_application_inference_profile_is_mapped_by_configuration() {
    let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6";
    let path = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fa1b2c3d4e5f6/invoke";
    let body = fixture("bedrock/invoke_claude.json");
    let (_, ev) = bedrock_event("", path, &[], (None, None), &body);
    let ev = ev.expect("metered");
    assert_eq!(ev.provider, "bedrock");
    assert_eq!(ev.model_requested.as_deref(), Some(arn));
    // It names no model: none, and no price.
    assert_eq!(ev.model_actual, None);
    assert_eq!(ev.cost_usd, None);
    assert_eq!(ev.input_tokens, Some(2062));
    let cfg = format!(r#"{{"bedrock_models":{{"{arn}":"{BEDROCK_CLAUDE}"}}}}"#);
    let (_, ev) = bedrock_event(&cfg, path, &[], (None, None), &body);
    let ev = ev.expect("metered");
    assert_eq!(ev.model_requested.as_deref(), Some(arn));
    assert_eq!(ev.model_actual.as_deref(), Some(BEDROCK_CLAUDE));
    // Priced as the model it serves.
    assert_eq!(
        ev.cost_usd,
        usd(14 * 800_000 + 2048 * 80_000 + 38 * 4_000_000)
    );
    // A foundation-model ARN names its model.
    let (_, ev) = bedrock_event(
        "",
        &format!("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2F{BEDROCK_CLAUDE_PATH}/invoke"),
        &[],
        (None, None),
        &body,
    );
    assert_eq!(
        ev.expect("metered").model_actual.as_deref(),
        Some(BEDROCK_CLAUDE)
    );
}

#[test]
fn bedrock_usage_headers_count_when_the_body_does_not() {
    let path = format!("/model/{BEDROCK_CLAUDE_PATH}/invoke");
    // A body of a shape no family has: the headers' counts.
    let (_, ev) = bedrock_event("", &path, &[], (Some("31"), Some("7")), br#"{"x":1}"#);
    let ev = ev.expect("metered");
    assert_eq!(tokens(&ev), [Some(31), Some(7), Some(0), Some(0), Some(0)]);
    assert_eq!(ev.token_source, Some(TokenSource::Exact));
    // The body's own usage, with its cache parts, wins.
    let body = fixture("bedrock/invoke_claude.json");
    let (_, ev) = bedrock_event("", &path, &[], (Some("14"), Some("38")), &body);
    assert_eq!(
        tokens(&ev.expect("metered")),
        [Some(2062), Some(38), Some(2048), Some(0), Some(0)]
    );
}

#[test]
fn bedrock_signed_headers_are_never_removed() {
    let path = format!("/model/{BEDROCK_CLAUDE_PATH}/invoke");
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-tally-team, Signature=0123";
    let (b, _) = bedrock_event(
        "",
        &path,
        &[
            ("authorization", auth),
            ("x-tally-team", "payments"),
            ("x-tally-feature", "search"),
        ],
        (None, None),
        b"{}",
    );
    // The signed attribution header passes (and still attributes); the unsigned one goes.
    assert_eq!(b.strip, vec!["x-tally-feature".to_string()]);
    assert!(!b.signed_key);
    let auth_key = auth.replace("x-tally-team", "x-tally-key");
    let (b, _) = bedrock_event(
        "",
        &path,
        &[("authorization", &auth_key), ("x-tally-key", KEY)],
        (None, None),
        b"{}",
    );
    assert!(b.signed_key, "a signed org key is refused, never sent on");
    assert!(b.strip.is_empty());
    // Without SigV4, attribution headers are removed as always.
    let (b, _) = bedrock_event(
        "",
        &path,
        &[("x-tally-team", "payments")],
        (None, None),
        b"{}",
    );
    assert_eq!(b.strip, vec!["x-tally-team".to_string()]);
}

/// A presigned SigV4 request (`X-Amz-SignedHeaders` in its query): its signed headers are its
/// query's list, as the `Authorization` header's would be.
#[test]
fn bedrock_presigned_query_signs_headers() {
    let query = "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261201%2Fus-east-1%2Fbedrock%2Faws4_request&X-Amz-Date=20261201T000000Z&X-Amz-SignedHeaders=host%3Bx-tally-key%3Bx-tally-team&X-Amz-Signature=0123";
    let path = format!("/model/{BEDROCK_CLAUDE_PATH}/invoke{query}");
    let (b, ev) = bedrock_event(
        "",
        &path,
        &[("x-tally-team", "payments"), ("x-tally-feature", "search")],
        (Some("14"), Some("38")),
        b"{}",
    );
    assert_eq!(b.strip, vec!["x-tally-feature".to_string()]);
    assert!(!b.signed_key);
    let ev = ev.expect("metered");
    assert_eq!(ev.team.as_deref(), Some("payments"));
    assert_eq!(ev.endpoint, format!("/model/{BEDROCK_CLAUDE_PATH}/invoke"));
    let (b, _) = bedrock_event("", &path, &[("x-tally-key", KEY)], (None, None), b"{}");
    assert!(
        b.signed_key,
        "a presigned org key is refused, never sent on"
    );
    assert!(b.strip.is_empty());
}

/// Bedrock's OpenAI-compatible chat (`/openai/v1/chat/completions`), signed with SigV4: a
/// streaming request is never given `stream_options.include_usage` (the signature covers the
/// body's hash), its `content-length` stays, and it is metered all the same.
#[test]
fn sigv4_signed_stream_request_body_is_never_changed() {
    let cfg = Config::parse(b"", Some(KEY.into())).unwrap();
    let request: &[u8] =
        br#"{"model":"openai.gpt-oss-20b-1:0","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0123";
    let signs: [&[(&str, &str)]; 3] = [
        &[("authorization", auth)],
        &[("x-amz-content-sha256", "UNSIGNED-PAYLOAD")],
        &[],
    ];
    let queries = ["", "", "?X-Amz-SignedHeaders=host&X-Amz-Signature=0123"];
    for (extra, query) in signs.iter().zip(queries) {
        let path = format!("/openai/v1/chat/completions{query}");
        let headers: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", "bedrock-runtime.us-west-2.amazonaws.com"),
            ("x-tally-feature", "search"),
        ]
        .iter()
        .chain(extra.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let b = begin(&cfg, &headers, 1_000.0);
        assert!(!b.drop_content_length, "{extra:?} {query}");
        let mut ex = b.exchange.expect("metered");
        let (a, rest) = request.split_at(request.len() / 2);
        assert_eq!(ex.on_request_body(a), None);
        assert_eq!(ex.on_request_body(rest), None, "never rewritten");
        assert_eq!(ex.on_request_body(&[]), None);
        ex.on_response_headers(Some(200), Some("text/event-stream"), None, 1_010.0);
        assert!(!ex.rewrites_response());
        let body = fixture("openai/chat_completion_stream.sse");
        assert_eq!(ex.on_response_body(&body, true), None);
        let fin = Finish {
            now_unix_ms: 1_050.5,
            request_id: "r".into(),
            code_details: Some("via_upstream"),
            final_status: Some(200),
        };
        let ev = TOKENIZERS.with(|t| ex.finish(fin, &mut t.borrow_mut()).0);
        assert_eq!(ev.provider, "bedrock");
        assert_eq!(ev.api, "chat_completions");
        assert!(ev.streaming);
        assert_eq!(ev.feature.as_deref(), Some("search"));
        assert!(ev.output_tokens.is_some());
        assert_eq!(ev.error_category, None);
    }
    // Unsigned, the same request still gets `include_usage`.
    let headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", "/openai/v1/chat/completions"),
        (":authority", "bedrock-runtime.us-west-2.amazonaws.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let b = begin(&cfg, &headers, 1_000.0);
    assert!(b.drop_content_length);
    let mut ex = b.exchange.expect("metered");
    assert!(ex.on_request_body(request).is_some());
}

/// A streamed call answered with an error in JSON (not an event stream): read as that body.
#[test]
fn bedrock_json_error_on_a_stream_path() {
    let case = Case {
        status: 429,
        ..bedrock_case(
            format!("/model/{BEDROCK_CLAUDE_PATH}/invoke-with-response-stream"),
            ANTHROPIC_BODY,
            "application/json",
            br#"{"message":"Too many requests, please wait before trying again."}"#.to_vec(),
        )
    };
    check_every_split(&case, |ev| {
        assert_eq!(ev.provider, "bedrock");
        assert!(ev.streaming);
        assert_eq!(ev.status, Some(429));
        assert_eq!(ev.error_category, Some(ErrorCategory::RateLimited));
        // Nothing generated, nothing counted.
        assert_eq!(ev.token_source, None);
        assert_eq!(ev.output_tokens, None);
        assert_eq!(ev.measured_output_tokens, None);
    });
}

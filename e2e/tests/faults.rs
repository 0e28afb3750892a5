//! The filter never breaks traffic: a panic inside it, hostile requests and responses, and a
//! collector that is down, slow, failing or talking garbage leave every request as it would be
//! without Tally, and lose no event that can be kept.

mod common;

use common::{agent, send, start_collector, Options, Stack};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Status and raw body bytes of a request, whatever happens.
fn raw(req: ureq::Request, body: &[u8]) -> (u16, Vec<u8>) {
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    (status, bytes)
}

/// wasm: Envoy answers the one request during which the VM crashed with a 503 of its own (with
/// `FAIL_OPEN` as with `FAIL_RELOAD`, in 1.40); every later request passes, unmetered. native:
/// the module catches the panic at its boundary, counts it, and the request itself passes. The
/// filter denies `unwrap`, `expect` and `panic` so that this stays a test, not an incident.
#[test]
fn a_panic_inside_the_filter_fails_open() {
    let stack = Stack::start_with(Options {
        wasm: "target/wasm32-wasip1/fault/tally.wasm",
        ..Options::default()
    });
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let (status, text, _) = send(
        agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-fault", "panic"),
        Some(body),
    );
    let log = || std::fs::read_to_string(stack.logs_dir().join("envoy.stderr.log")).unwrap();
    match common::build() {
        common::Build::Wasm => {
            assert_eq!(
                status, 503,
                "Envoy's own answer to the crashed stream: {text}"
            );
            assert!(
                log().contains("[critical]") && log().contains("fault injected by x-tally-fault"),
                "the panic hook logs at critical"
            );
        }
        common::Build::Native => {
            assert_eq!(status, 200, "the request passes: {text}");
            assert_eq!(stack.envoy_counter("dynamicmodulescustom.tally.panics"), 1);
            // Where, never what: a panic's message may quote the bytes being read.
            assert!(log().contains("[critical]") && log().contains("panic caught at"));
            assert!(!log().contains("fault injected by x-tally-fault"));
        }
    }
    // Traffic keeps flowing, metered again natively.
    for i in 0..3 {
        let (status, _, _) = send(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("x-tally-user", &format!("after-{i}")),
            Some(body),
        );
        assert_eq!(status, 200);
    }
    if common::build() == common::Build::Native {
        assert_eq!(stack.wait_events("user=after-0", 1).len(), 1);
    }
}

#[test]
fn hostile_requests_pass_untouched() {
    let stack = Stack::start();
    let deep = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    let huge = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5 << 20)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid json",
            b"{\"model\": \"gpt-4o-mini\", \"messages\": [".to_vec(),
        ),
        (
            "invalid utf-8",
            b"{\"model\":\"gpt-\xff\xfe\",\"messages\":[]}".to_vec(),
        ),
        (
            "deep nesting",
            format!(r#"{{"model":"m","x":{deep}}}"#).into_bytes(),
        ),
        ("huge string", huge.into_bytes()),
        (
            "duplicate keys",
            br#"{"model":"a","model":"b","stream":true,"stream":false,"messages":[]}"#.to_vec(),
        ),
        (
            "wrong types",
            br#"{"model":42,"stream":"yes","messages":{}}"#.to_vec(),
        ),
        ("not an object", br#"["model","gpt-4o"]"#.to_vec()),
        ("empty", Vec::new()),
    ];
    let direct = format!("http://127.0.0.1:{}/v1/chat/completions", stack.mock_port);
    for (name, body) in &cases {
        let via = raw(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("x-tally-user", "hostile"),
            body,
        );
        let plain = raw(agent().post(&direct), body);
        assert_eq!(via.0, plain.0, "{name}: same status as without Tally");
        assert_eq!(via.1, plain.1, "{name}: same body as without Tally");
        assert!(via.0 < 500 && via.0 != 413, "{name}: {}", via.0);
    }
    let events = stack.wait_events("user=hostile", cases.len());
    assert_eq!(stack.envoy_counter("wasmcustom.tally.filter_errors"), 0);
    // Duplicate keys: the last wins, as for the provider's parser.
    assert!(events
        .iter()
        .any(|e| e["model_requested"] == "b" && e["streaming"] == false));
}

#[test]
fn hostile_responses_reach_the_client_as_sent() {
    let stack = Stack::start();
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b' '; 100 << 20]).unwrap();
        e.finish().unwrap()
    };
    let mut truncated_gzip = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
            .unwrap();
        e.finish().unwrap()
    };
    truncated_gzip.truncate(truncated_gzip.len() / 2);
    let long_line = format!("data: {}", "z".repeat(3 << 20)).into_bytes();
    let cases: Vec<(&str, &str, Option<&str>, Vec<u8>)> = vec![
        (
            "broken sse",
            "text/event-stream",
            None,
            b"data: {\"choices\":[\ndata: }}}}\n\n\r\r\n:\n\xff\xfe\n\ndata: [DONE]\n\n".to_vec(),
        ),
        ("endless sse line", "text/event-stream", None, long_line),
        (
            "invalid json",
            "application/json",
            None,
            b"{\"usage\": {\"prompt_tokens\": 1,".to_vec(),
        ),
        (
            "deep json",
            "application/json",
            None,
            format!("{{\"a\":{}{}}}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes(),
        ),
        (
            "wrong usage types",
            "application/json",
            None,
            br#"{"model":7,"usage":{"prompt_tokens":"many","completion_tokens":-1}}"#.to_vec(),
        ),
        ("gzip bomb", "application/json", Some("gzip"), bomb),
        (
            "truncated gzip",
            "application/json",
            Some("gzip"),
            truncated_gzip,
        ),
        (
            "unknown encoding",
            "application/json",
            Some("zstd"),
            b"\x28\xb5\x2f\xfd garbage".to_vec(),
        ),
    ];
    for (i, (name, ct, enc, body)) in cases.iter().enumerate() {
        let file = stack.dir.path().join(format!("response-{i}"));
        std::fs::write(&file, body).unwrap();
        let mut req = agent()
            .post(&stack.url("/v1/chat/completions"))
            .set("x-tally-user", "hostile-response")
            .set("x-mock-raw-file", file.to_str().unwrap())
            .set("x-mock-raw-type", ct);
        if let Some(e) = enc {
            req = req.set("x-mock-raw-encoding", e);
        }
        let (status, got) = raw(req, br#"{"model":"gpt-4o-mini","messages":[]}"#);
        assert_eq!(status, 200, "{name}");
        assert!(got == *body, "{name}: the client gets the provider's bytes");
    }
    let events = stack.wait_events("user=hostile-response", cases.len());
    for e in &events {
        // Garbage never becomes exact usage (a stream's text may still be counted).
        assert_ne!(e["token_source"], "exact", "no usage invented: {e:#}");
        assert_eq!(e["status"], 200);
    }
    assert_eq!(stack.envoy_counter("wasmcustom.tally.filter_errors"), 0);
}

/// A collector that answers 503, then garbage, then nothing at all.
fn bad_collector(listener: TcpListener, until: Instant) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut calls = 0;
        let mut held = Vec::new();
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut buf = [0u8; 65536];
                    let _ = s.read(&mut buf);
                    match calls % 3 {
                        0 => {
                            let _ = s.write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                            );
                        }
                        1 => {
                            let _ = s.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n");
                        }
                        // Hold the connection open and say nothing: the filter's call times out.
                        _ => held.push(s),
                    }
                    calls += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        calls
    })
}

#[test]
fn a_failing_collector_costs_traffic_nothing_and_loses_no_event() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stack = Stack::start_with(Options {
        start_collector: false,
        collector_port: Some(port),
        filter_config: r#"{"flush_interval_ms": 100, "call_timeout_ms": 300}"#.into(),
        ..Options::default()
    });
    let bad = bad_collector(listener, Instant::now() + Duration::from_secs(4));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let (status, _, _) = send(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("x-tally-user", "during-outage")
                .set("x-mock-usage", &format!("input={i},output=1")),
            Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
        );
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_millis(250),
        "requests do not wait for the collector: slowest {slowest:?}"
    );
    let calls = bad.join().unwrap();
    assert!(calls >= 3, "the filter kept trying: {calls} calls");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The real collector comes up on the same port: everything arrives, once.
    let (_collector, _) = start_collector(&stack.data_dir(), port, &stack.logs_dir(), "collector");
    let events = stack.wait_events("user=during-outage&limit=1000", 30);
    let mut inputs: Vec<u64> = events
        .iter()
        .map(|e| e["input_tokens"].as_u64().unwrap())
        .collect();
    inputs.sort();
    assert_eq!(inputs, (0..30).collect::<Vec<u64>>());
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_dropped"), 0);
    assert!(stack.envoy_counter("wasmcustom.tally.events_retried") > 0);
}

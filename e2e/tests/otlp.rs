//! OpenTelemetry export: traffic through a real Envoy reaches a collector started with
//! `--otlp-endpoint`, which pushes OTLP/HTTP protobuf to a receiver that decodes it with the
//! official generated code (`e2e/otlp/receiver.py`, opentelemetry-proto from PyPI) strictly.
//! The token sums must equal the stored events, the names and attributes must be the GenAI
//! conventions', and an endpoint that cannot be reached must not touch ingest.

mod common;

use common::{agent, collector_cli_ok, root, send, Options, Stack};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The receiver, and the file it appends each decoded export to.
fn receiver(dir: &std::path::Path, fail: u32) -> (common::Proc, u16, std::path::PathBuf) {
    let out = dir.join("otlp.jsonl");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut p = common::spawn(
        "otlp-receiver",
        Command::new(root().join(".venv/bin/python"))
            .arg(root().join("e2e/otlp/receiver.py"))
            .arg(&out)
            .args(["--fail", &fail.to_string()]),
        &logs,
    );
    let port = common::announced_port(&mut p, &logs);
    (p, port, out)
}

fn exports(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An attribute's string value, from the JSON form of a data point.
fn attr<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| kv["value"]["string_value"].as_str())
}

/// The data points of a metric, by name, in the last export.
fn points<'a>(export: &'a Value, name: &str) -> Vec<&'a Value> {
    let metrics = &export["message"]["resource_metrics"][0]["scope_metrics"][0]["metrics"];
    let m = metrics
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name}"));
    let data = if m.get("histogram").is_some() {
        &m["histogram"]
    } else {
        &m["sum"]
    };
    assert_eq!(
        data["aggregation_temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE",
        "{name}"
    );
    data["data_points"].as_array().unwrap().iter().collect()
}

#[test]
fn metrics_reach_an_otlp_receiver_by_the_genai_conventions_and_sum_to_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let key = collector_cli_ok(&data, &["org", "create", "acme"]);
    // The receiver refuses the first export: the next one still carries the totals.
    let (_receiver, port, out) = receiver(dir.path(), 1);
    let (_collector, cport) = common::start_collector_with(
        &data,
        0,
        &logs,
        "collector",
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--otlp-header",
            "x-otlp-tenant=tally-test",
            "--otlp-interval-ms",
            "200",
            "--otlp-attribute",
            "team",
            "--otlp-spans",
        ],
    );
    let stack = Stack::start_with(Options {
        start_collector: false,
        collector_port: Some(cport),
        org_key: Some(key.clone()),
        ..Options::default()
    });
    let chat = |team: &str, model: &str, usage: &str, status: Option<&str>| {
        let mut h = vec![("x-tally-team", team), ("x-mock-usage", usage)];
        if let Some(s) = status {
            h.push(("x-mock-status", s));
        }
        stack.post_json(
            "/v1/chat/completions",
            &h,
            &format!(r#"{{"model":"{model}","messages":[]}}"#),
        )
    };
    for _ in 0..3 {
        assert_eq!(
            chat(
                "web",
                "gpt-4o-mini",
                "input=1000,cached=300,output=200",
                None
            )
            .0,
            200
        );
    }
    assert_eq!(chat("ml", "gpt-4o", "input=50,output=5", None).0, 200);
    assert_eq!(chat("ml", "gpt-4o", "input=1,output=1", Some("429")).0, 429);
    // The caller's trace context: the span of this call is a child of the caller's.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{parent}-01");
    let (status, _) = stack.post_json(
        "/v1/messages",
        &[
            ("x-tally-team", "web"),
            ("x-mock-usage", "input=70,output=7"),
            ("traceparent", &traceparent),
        ],
        r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}"#,
    );
    assert_eq!(status, 200);
    let events = stack.wait_events("limit=100", 6);
    let sum = |f: &str| events.iter().filter_map(|e| e[f].as_u64()).sum::<u64>();
    let cost: f64 = events.iter().filter_map(|e| e["cost_usd"].as_f64()).sum();
    // The receiver's latest export carries every event.
    let mut last = Value::Null;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let all = exports(&out);
        for x in &all {
            assert_eq!(x["ok"], true, "a strict decode failed: {x}");
        }
        if let Some(x) = all.iter().rev().find(|x| x["path"] == "/v1/metrics") {
            let input: u64 = points(x, "gen_ai.client.token.usage")
                .iter()
                .filter(|p| attr(p, "gen_ai.token.type") == Some("input"))
                .map(|p| p["sum"].as_f64().unwrap() as u64)
                .sum();
            if input == sum("input_tokens") {
                last = x.clone();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !last.is_null(),
        "no export with every event: {:?}",
        exports(&out)
    );
    assert_eq!(last["content_type"], "application/x-protobuf");
    let tokens = points(&last, "gen_ai.client.token.usage");
    let by_type = |t: &str| {
        tokens
            .iter()
            .filter(|p| attr(p, "gen_ai.token.type") == Some(t))
            .map(|p| p["sum"].as_f64().unwrap() as u64)
            .sum::<u64>()
    };
    // Input already includes the 900 cached tokens: counted once. (The 429 carried no usage.)
    assert_eq!(by_type("input"), sum("input_tokens"));
    assert_eq!(by_type("input"), 3 * 1000 + 50 + 70);
    assert_eq!(by_type("output"), sum("output_tokens"));
    let count: u64 = tokens
        .iter()
        .map(|p| p["count"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(count, 2 * 5, "an input and an output per event with usage");
    // Every attribute a string, named by the conventions (or tally.* / opt-in).
    let allowed = [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.token.type",
        "error.type",
        "tally.org",
        "tally.team",
    ];
    for p in &tokens {
        for kv in p["attributes"].as_array().unwrap() {
            assert!(allowed.contains(&kv["key"].as_str().unwrap()), "{kv}");
            assert!(kv["value"]["string_value"].is_string(), "{kv}");
        }
        assert_eq!(attr(p, "gen_ai.operation.name"), Some("chat"));
    }
    let providers: std::collections::BTreeSet<&str> = tokens
        .iter()
        .filter_map(|p| attr(p, "gen_ai.provider.name"))
        .collect();
    assert_eq!(
        providers.into_iter().collect::<Vec<_>>(),
        ["anthropic", "openai"]
    );
    assert!(tokens.iter().any(|p| attr(p, "gen_ai.response.model")
        == Some("gpt-4o-mini-2024-07-18")
        && attr(p, "tally.team") == Some("web")));
    let durations = points(&last, "gen_ai.client.operation.duration");
    let n: u64 = durations
        .iter()
        .map(|p| p["count"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(n, 6);
    assert!(durations
        .iter()
        .any(|p| attr(p, "error.type") == Some("rate_limited")
            && attr(p, "gen_ai.request.model") == Some("gpt-4o")));
    let exported_cost: f64 = points(&last, "tally.client.operation.cost")
        .iter()
        .map(|p| p["as_double"].as_f64().unwrap())
        .sum();
    assert!(
        (exported_cost - cost).abs() < 1e-9,
        "{exported_cost} {cost}"
    );
    // Spans: one per event, the traced one a child of the caller's span.
    let mut spans: Vec<Value> = Vec::new();
    let started = Instant::now();
    while spans.len() < 6 && started.elapsed() < Duration::from_secs(10) {
        spans = exports(&out)
            .iter()
            .filter(|x| x["path"] == "/v1/traces")
            .flat_map(|x| x["spans"].as_array().cloned().unwrap_or_default())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let traced = spans
        .iter()
        .find(|s| s["trace_id"] == trace)
        .unwrap_or_else(|| panic!("no span in the caller's trace: {spans:#?}"));
    assert_eq!(traced["parent_span_id"], parent);
    assert_eq!(traced["name"], "chat claude-sonnet-4-5");
    assert_eq!(traced["kind"], 3, "SPAN_KIND_CLIENT");
    let a = &traced["attributes"];
    assert_eq!(a["gen_ai.provider.name"]["string_value"], "anthropic");
    assert_eq!(a["gen_ai.usage.input_tokens"]["int_value"], "70");
    assert_eq!(a["gen_ai.usage.output_tokens"]["int_value"], "7");
    let stored = events
        .iter()
        .find(|e| e["trace_id"] == trace)
        .expect("the event keeps the trace context");
    assert_eq!(stored["span_id"], parent);
    assert_eq!(a["tally.request_id"]["string_value"], stored["request_id"]);
    // The others are roots of traces of their own; the 429's is an error.
    assert!(spans
        .iter()
        .filter(|s| s["trace_id"] != trace)
        .all(|s| s["parent_span_id"] == ""));
    assert_eq!(
        spans.iter().filter(|s| s["status_code"] == 2).count(),
        1,
        "STATUS_CODE_ERROR on the 429"
    );
    // No content, no key anywhere in what was exported.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains(&key));
}

#[test]
fn an_unreachable_otlp_endpoint_never_touches_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let key = collector_cli_ok(&data, &["org", "create", "acme"]);
    let closed = common::free_port();
    let (_collector, port) = common::start_collector_with(
        &data,
        0,
        &logs,
        "collector",
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{closed}/v1/metrics"),
            "--otlp-interval-ms",
            "100",
        ],
    );
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let body = format!(
            r#"{{"request_id":"r{i}","timestamp":"{}","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","status":200,"streaming":false,"latency_ms":10.0,"input_tokens":10,"output_tokens":1,"routed":false}}"#,
            tally::time::format_rfc3339_ms(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64
            )
        );
        let t = Instant::now();
        let (status, _, _) = send(
            agent()
                .post(&format!("http://127.0.0.1:{port}/v1/events"))
                .set("authorization", &format!("Bearer {key}")),
            Some(&body),
        );
        assert_eq!(status, 202);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest ingest {slowest:?}"
    );
    // Counted on /metrics.
    let (_, metrics, _) = send(
        agent().get(&format!("http://127.0.0.1:{port}/metrics")),
        None,
    );
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_collector_otlp_exports_total{outcome=\"failed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(failed >= 1, "{metrics}");
    // The failure is said once, without the endpoint's path.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(logs.join("collector.stderr.log")).unwrap();
    assert_eq!(log.matches("otlp: export failed").count(), 1, "{log}");
}

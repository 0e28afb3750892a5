//! The collector's HTTP API and CLI, against the real binary.

mod common;

use common::{agent, artifact, send, start_collector};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

struct Collector {
    data: std::path::PathBuf,
    logs: std::path::PathBuf,
    port: u16,
    _proc: common::Proc,
    /// Last: removed once the collector has stopped (fields drop in order).
    _dir: tempfile::TempDir,
}

fn org_cmd(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["org"];
    all.extend_from_slice(args);
    common::collector_cli(data, &all)
}

fn start() -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The store is created by the CLI before the server starts, as `make run` does.
    assert!(org_cmd(&data, &["list"]).0);
    let (proc, port) = start_collector(&data, 0, &logs, "collector");
    Collector {
        _dir: dir,
        data,
        logs,
        port,
        _proc: proc,
    }
}

impl Collector {
    fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.port)
    }

    fn ingest(&self, key: &str, body: &str) -> (u16, Value) {
        let (s, b, _) = send(
            agent()
                .post(&self.url("/v1/events"))
                .set("authorization", &format!("Bearer {key}")),
            Some(body),
        );
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn events(&self, key: &str, query: &str) -> (u16, Value) {
        let (s, b, _) = send(
            agent()
                .get(&self.url(&format!("/api/v1/events?{query}")))
                .set("authorization", &format!("Bearer {key}")),
            None,
        );
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }
}

fn event(id: &str, ts: &str, extra: Value) -> Value {
    let mut e = json!({
        "request_id": id, "timestamp": ts, "org_id": null, "provider": "openai",
        "api": "chat_completions", "endpoint": "/v1/chat/completions",
        "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
        "status": 200, "streaming": false, "latency_ms": 120.5, "ttfb_ms": 80.25,
        "input_tokens": 100, "output_tokens": 20, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "token_source": "exact",
        "measured_output_tokens": null, "cost_usd": 0.000027, "error_category": null, "error_source": null,
        "cache_write_1h_tokens": null, "web_search_requests": null, "service_tier": null,
        "team": "payments", "app": "checkout", "feature": "search", "task": null,
        "session_id": null, "user": "ann", "namespace": null, "workload": null,
        "principal": null, "rule": null, "routed": false
    });
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

#[test]
fn ingest_is_idempotent_validated_and_scoped_to_the_org() {
    let c = start();
    let (ok, acme, err) = org_cmd(&c.data, &["create", "acme"]);
    assert!(ok, "{err}");
    assert!(tally::config::is_org_key(&acme), "{acme}");
    let (_, globex, _) = org_cmd(&c.data, &["create", "globex"]);
    let (ok, _, err) = org_cmd(&c.data, &["create", "acme"]);
    assert!(!ok && err.contains("already exists"), "{err}");

    // NDJSON batch: 202 with counts.
    let e1 = event("r1", "2026-11-24T08:00:00.000Z", json!({}));
    let e2 = event(
        "r2",
        "2026-11-24T08:01:00.000Z",
        json!({"team": "search", "status": 429,
        "error_category": "rate_limited", "error_source": "provider", "user": "bob"}),
    );
    let (s, v) = c.ingest(&acme, &format!("{e1}\n{e2}\n"));
    assert_eq!((s, v), (202, json!({"accepted": 2, "duplicates": 0})));
    // A retry of the same batch (as a JSON array) stores nothing twice.
    let (s, v) = c.ingest(&acme, &json!([e1, e2]).to_string());
    assert_eq!((s, v), (202, json!({"accepted": 0, "duplicates": 2})));

    // A bad batch: 400 naming the field, and nothing of it stored.
    let good = event("r3", "2026-11-24T08:02:00.000Z", json!({}));
    let bad = event(
        "r4",
        "2026-11-24T08:03:00.000Z",
        json!({"output_tokens": "many"}),
    );
    let (s, v) = c.ingest(&acme, &json!([good, bad]).to_string());
    assert_eq!(s, 400);
    assert_eq!(v["field"], "[1].output_tokens", "{v}");
    let (_, v) = c.events(&acme, "");
    assert_eq!(
        v["events"].as_array().unwrap().len(),
        2,
        "r3 was not stored"
    );

    // Bad and missing keys.
    let (s, _) = c.ingest(
        "tly_0000000000000000000000000000000000000000",
        &e1.to_string(),
    );
    assert_eq!(s, 401);
    let (s, _, _) = send(agent().get(&c.url("/api/v1/events")), None);
    assert_eq!(s, 401);

    // Newest first, every field back as sent, org from the key.
    let (s, v) = c.events(&acme, "");
    assert_eq!(s, 200);
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs[0]["request_id"], "r2");
    let mut want = e1.clone();
    want["org_id"] = json!("acme");
    // Fields the event did not name come back at their defaults.
    want["shadow"] = json!(false);
    want["model_routed"] = Value::Null;
    want["trace_id"] = Value::Null;
    want["span_id"] = Value::Null;
    assert_eq!(evs[1], want);

    // Filters.
    let ids = |q: &str| -> Vec<String> {
        let (s, v) = c.events(&acme, q);
        assert_eq!(s, 200, "{q}: {v}");
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("team=search"), ["r2"]);
    assert_eq!(ids("user=ann"), ["r1"]);
    assert_eq!(ids("status=429"), ["r2"]);
    assert_eq!(ids("status=2xx"), ["r1"]);
    assert_eq!(ids("model=gpt-4o-mini"), ["r2", "r1"]);
    assert_eq!(
        ids("model=gpt-4o-mini-2024-07-18&provider=openai&feature=search&app=checkout"),
        ["r2", "r1"]
    );
    assert_eq!(ids("from=2026-11-24T08:00:30Z"), ["r2"]);
    assert_eq!(ids("to=2026-11-24T08:00:30Z"), ["r1"]);
    assert_eq!(ids("limit=1"), ["r2"]);
    // Hostile values are data, not SQL.
    assert!(ids("team=x'%20OR%20'1'='1").is_empty());
    for (q, field) in [
        ("limit=0", "limit"),
        ("from=yesterday", "from"),
        ("status=abc", "status"),
        ("colour=red", "colour"),
    ] {
        let (s, v) = c.events(&acme, q);
        assert_eq!((s, v["field"].as_str()), (400, Some(field)), "{q}: {v}");
    }

    // Another org sees none of it, even with the same request ids.
    let (_, v) = c.events(&globex, "");
    assert_eq!(v["events"], json!([]));
    let (s, v) = c.ingest(&globex, &e1.to_string());
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)));
    let (_, v) = c.events(&acme, "");
    assert_eq!(v["events"].as_array().unwrap().len(), 2);

    // Rotation: the old key is refused at once by the running server.
    let (ok, new_key, _) = org_cmd(&c.data, &["rotate-key", "acme"]);
    assert!(ok);
    assert_eq!(c.events(&acme, "").0, 401);
    assert_eq!(c.events(&new_key, "").0, 200);
}

#[test]
fn oversized_batch_gets_413_and_garbage_gets_400() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let big = "x".repeat(17 << 20);
    let (s, v) = c.ingest(&key, &big);
    assert_eq!(s, 413, "{v}");
    for garbage in ["", "[]", "{", "null", "\u{0}\u{1}", "[{\"request_id\": 1}]"] {
        let (s, v) = c.ingest(&key, garbage);
        assert_eq!(s, 400, "{garbage:?}: {v}");
        assert!(v["message"].is_string());
    }
}

#[test]
fn serve_refuses_plain_http_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(artifact("target/release/tally-collector"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve plain HTTP"), "{err}");
    assert!(err.contains("--plaintext-behind-mesh"), "{err}");
}

/// Behind a mesh the collector listens on the pod's address in plain HTTP, the sidecar
/// terminating mTLS; it serves only when told so, and says in its log what it then trusts.
#[test]
fn serve_plain_http_off_loopback_only_behind_a_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut p = common::spawn(
        "collector",
        Command::new(artifact("target/release/tally-collector"))
            .args(["serve", "--listen", "0.0.0.0:0", "--plaintext-behind-mesh"])
            .arg("--data-dir")
            .arg(dir.path().join("data")),
        &logs,
    );
    let log = logs.join("collector.stderr.log");
    let mut port = 0u16;
    common::wait_until("the collector to listen", Duration::from_secs(15), || {
        assert!(
            p.alive(),
            "collector exited: {:?}",
            std::fs::read_to_string(&log)
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        port = text
            .split("listening on http://0.0.0.0:")
            .nth(1)
            .map(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        port != 0
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("--plaintext-behind-mesh: serving plain HTTP on 0.0.0.0:0, trusting"),
        "{text}"
    );
    let (s, _, _) = send(
        agent().get(&format!("http://127.0.0.1:{port}/healthz")),
        None,
    );
    assert_eq!(s, 200);
    // TLS and plain HTTP at once is a contradiction, refused before anything starts.
    let out = Command::new(artifact("target/release/tally-collector"))
        .args([
            "serve",
            "--plaintext-behind-mesh",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn measured_events_are_calibrated_per_model_once_enough_samples_exist() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let measured = |id: &str, m: u64| {
        event(
            id,
            "2026-11-24T09:00:00.000Z",
            json!({
                "model_requested": "claude-sonnet-4-5", "model_actual": "claude-sonnet-4-5-20250929",
                "input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": m,
                "measured_output_tokens": m, "token_source": "measured", "reasoning_tokens": null,
                "cost_usd": 0.5,
            }),
        )
    };
    // Too few samples: stored as measured, unchanged.
    let (s, _) = c.ingest(&key, &measured("m0", 200).to_string());
    assert_eq!(s, 202);
    // Exact events with Tally's own count beside them: exact 110 for every 100 counted.
    let samples: Vec<Value> = (0..5)
        .map(|i| {
            event(
                &format!("x{i}"),
                "2026-11-24T09:00:01.000Z",
                json!({
                    "model_actual": format!("claude-sonnet-4-5-2025092{i}"), "output_tokens": 110,
                    "measured_output_tokens": 100,
                }),
            )
        })
        .collect();
    let (s, _) = c.ingest(&key, &json!(samples[..4]).to_string());
    assert_eq!(s, 202);
    // A retry of the same samples teaches nothing more.
    let (_, v) = c.ingest(&key, &json!(samples[..4]).to_string());
    assert_eq!(v["duplicates"], 4);
    let (_, v) = c.ingest(&key, &measured("m1", 200).to_string());
    assert_eq!(v["accepted"], 1);
    c.ingest(&key, &samples[4].to_string());
    c.ingest(&key, &measured("m2", 200).to_string());

    let (_, v) = c.events(&key, "limit=1000");
    let by_id = |id: &str| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["request_id"] == id)
            .unwrap()
            .clone()
    };
    for id in ["m0", "m1"] {
        let e = by_id(id);
        assert_eq!(
            (e["token_source"].as_str(), e["output_tokens"].as_u64()),
            (Some("measured"), Some(200)),
            "{id}"
        );
    }
    let e = by_id("m2");
    assert_eq!(e["token_source"], "measured_calibrated");
    assert_eq!(e["output_tokens"], 220);
    assert_eq!(e["measured_output_tokens"], 200);
    // Cost recomputed at claude-sonnet-4-5 prices: 1000 in at $3, 220 out at $15 per 1M.
    assert_eq!(
        e["cost_usd"],
        (1000 * 3_000_000u64 + 220 * 15_000_000) as f64 / 1e12
    );
    // The rollups count events as stored: m2 calibrated, the retried samples once.
    let v = api_get(
        c.port,
        &key,
        "/api/v1/summary?from=2026-11-24T09:00:00Z&to=2026-11-24T10:00:00Z",
    );
    let total = &v["rows"][0];
    // 200 (m0) + 200 (m1) + 5 x 110 (samples) + 220 (m2).
    assert_eq!(
        (total["requests"].as_u64(), total["output_tokens"].as_u64()),
        (Some(8), Some(1170)),
        "{v}"
    );
}

/// A data directory with the org `acme`, for collectors a test starts and stops itself:
/// (the temporary directory, the data directory, the logs directory, acme's key).
fn acme_data() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (ok, key, _) = org_cmd(&data, &["create", "acme"]);
    assert!(ok);
    (dir, data, logs, key)
}

#[test]
fn a_202_batch_survives_kill_9_at_once() {
    let (_dir, data, logs, key) = acme_data();
    for round in 0..3 {
        let (mut proc, port) = start_collector(&data, 0, &logs, "collector");
        let s = post_at_eight(port, &key, (0..200).map(|i| format!("r{round}-{i}")));
        assert_eq!(s, 202);
        // SIGKILL the moment the 202 is in: no shutdown, no checkpoint.
        proc.stop();
    }
    let (_proc, port) = start_collector(&data, 0, &logs, "collector");
    let v = api_get(port, &key, "/api/v1/events?limit=1000");
    assert_eq!(v["events"].as_array().unwrap().len(), 600);
    // The rollups too: rows not yet written at a kill are counted again from the events at start.
    let log = std::fs::read_to_string(logs.join("collector.stderr.log")).unwrap();
    assert!(
        log.contains("rollups: counted 200 events stored after the last rollup write"),
        "{log}"
    );
    let v = api_get(port, &key, EIGHT_TO_NINE);
    assert_eq!(v["rows"][0]["requests"], 600, "{v}");
}

/// The summary of 2026-11-24 from 08:00 to 09:00.
const EIGHT_TO_NINE: &str = "/api/v1/summary?from=2026-11-24T08:00:00Z&to=2026-11-24T09:00:00Z";

/// POST a batch of events with these ids, at 2026-11-24T08:00, to the collector on `port`; the
/// status.
fn post_at_eight(port: u16, key: &str, ids: impl Iterator<Item = String>) -> u16 {
    let batch: Vec<Value> = ids
        .map(|id| event(&id, "2026-11-24T08:00:00.000Z", json!({})))
        .collect();
    let (s, _, _) = send(
        agent()
            .post(&format!("http://127.0.0.1:{port}/v1/events"))
            .set("authorization", &format!("Bearer {key}")),
        Some(&json!(batch).to_string()),
    );
    s
}

/// GET a path of the API of the collector on `port` with an org key: its JSON (status 200).
fn api_get(port: u16, key: &str, path: &str) -> Value {
    let (s, body, _) = send(
        agent()
            .get(&format!("http://127.0.0.1:{port}{path}"))
            .set("authorization", &format!("Bearer {key}")),
        None,
    );
    assert_eq!(s, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_clean_stop_writes_the_waiting_rollup_rows() {
    let (_dir, data, logs, key) = acme_data();
    let (mut proc, port) = start_collector(&data, 0, &logs, "first");
    assert_eq!(
        post_at_eight(port, &key, (0..50).map(|i| format!("t{i}"))),
        202
    );
    assert!(proc.terminate(), "no clean exit on SIGTERM");
    let (_proc, port) = start_collector(&data, 0, &logs, "second");
    let log = std::fs::read_to_string(logs.join("second.stderr.log")).unwrap();
    assert!(!log.contains("rollups: counted"), "{log}");
    let v = api_get(port, &key, EIGHT_TO_NINE);
    assert_eq!(v["rows"][0]["requests"], 50, "{v}");
}

#[test]
fn a_cli_command_beside_a_running_collector_counts_nothing_twice() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let s = post_at_eight(c.port, &key, (0..30).map(|i| format!("k{i}")));
    assert_eq!(s, 202);
    // The CLI opens the database while the collector holds these events' rollup rows in memory.
    let (ok, _, _) = org_cmd(&c.data, &["create", "other"]);
    assert!(ok);
    let v = api_get(c.port, &key, EIGHT_TO_NINE);
    assert_eq!(v["rows"][0]["requests"], 30, "{v}");
}

#[test]
fn answers_carry_security_headers() {
    let c = start();
    for path in ["/healthz", "/api/v1/events", "/nope"] {
        let (_, _, headers) = send(agent().get(&c.url(path)), None);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(get("x-content-type-options").as_deref(), Some("nosniff"));
        assert!(get("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'"));
    }
}

/// Events at known times and latencies, to check rollups against the raw figures.
fn timed(id: &str, ts: &str, extra: Value) -> Value {
    event(id, ts, extra)
}

#[test]
fn summary_and_timeseries_come_from_rollups_and_match_the_events() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let (_, other, _) = org_cmd(&c.data, &["create", "globex"]);
    // 300 events over three hours (one every 36 s from 07:00), in two features (one untagged),
    // two models; latencies 1..=300 ms; every tenth an error.
    let mut batch = Vec::new();
    for i in 0..300u64 {
        let ts = tally::time::format_rfc3339_ms(1_795_503_600_000 + (i as i64) * 36_000);
        let feature = if i % 3 == 0 {
            Value::Null
        } else {
            json!("search")
        };
        let model = if i % 2 == 0 {
            "gpt-4o-mini"
        } else {
            "claude-sonnet-4-5"
        };
        let mut extra = json!({"feature": feature, "model_actual": model, "latency_ms": (i + 1) as f64,
            "ttfb_ms": 1.0, "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.001});
        if i % 10 == 0 {
            extra["error_category"] = json!("rate_limited");
            extra["error_source"] = json!("provider");
            extra["status"] = json!(429);
        }
        batch.push(timed(&format!("e{i}"), &ts, extra));
    }
    for chunk in batch.chunks(70) {
        let (s, _) = c.ingest(&key, &json!(chunk).to_string());
        assert_eq!(s, 202);
    }
    let get = |k: &str, path: &str| {
        let (s, b, _) = send(
            agent()
                .get(&c.url(path))
                .set("authorization", &format!("Bearer {k}")),
            None,
        );
        assert_eq!(s, 200, "{path}: {b}");
        serde_json::from_str::<Value>(&b).unwrap()
    };
    // 07:00 to 10:00 covers everything; 07:10 to 09:40 mixes minute and hour rollups.
    let whole = "from=2026-11-24T07:00:00Z&to=2026-11-24T10:00:00Z";
    let v = get(&key, &format!("/api/v1/summary?{whole}"));
    let total = &v["rows"][0];
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert_eq!(total["key"], Value::Null);
    assert_eq!(total["requests"], 300);
    assert_eq!(total["errors"], 30);
    assert_eq!(total["input_tokens"], 3000);
    assert_eq!(total["output_tokens"], 600);
    assert_eq!(total["cost_usd"], 0.3);
    // Exact p50 of 1..=300 (lower quantile) is 150, p95 is 285: within 1 %.
    let p50 = total["latency_p50_ms"].as_f64().unwrap();
    let p95 = total["latency_p95_ms"].as_f64().unwrap();
    assert!((p50 - 150.0).abs() <= 1.5, "{p50}");
    assert!((p95 - 285.0).abs() <= 2.85, "{p95}");
    // Within the sketch's 1 % (the bound is reached exactly at a bucket edge).
    assert!((total["ttfb_p50_ms"].as_f64().unwrap() - 1.0).abs() <= 0.0101);

    let v = get(&key, &format!("/api/v1/summary?group_by=feature&{whole}"));
    let rows: Vec<(String, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("search".to_string(), 200), ("untagged".to_string(), 100)]
    );

    // Minute edges plus whole hours: events from 07:10:00 to 09:39:59 are i in [17, 266].
    let v = get(
        &key,
        "/api/v1/summary?group_by=model&from=2026-11-24T07:10:00Z&to=2026-11-24T09:40:00Z",
    );
    let n: u64 = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(n, (17..=266).count() as u64);

    let v = get(&key, &format!("/api/v1/timeseries?bucket=hour&{whole}"));
    let per_hour: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_hour, [100, 100, 100]);
    assert_eq!(v["points"][0]["bucket"], "2026-11-24T07:00:00.000Z");
    let v = get(
        &key,
        &format!("/api/v1/timeseries?bucket=day&group_by=model&{whole}"),
    );
    assert_eq!(v["points"].as_array().unwrap().len(), 2);
    let v = get(
        &key,
        "/api/v1/timeseries?bucket=minute&from=2026-11-24T07:00:00Z&to=2026-11-24T07:03:00Z",
    );
    let per_minute: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(
        per_minute,
        [2, 2, 1],
        "events at :00, :36, 1:12, 1:48, 2:24"
    );

    // Another org sees nothing; bad parameters are named.
    assert_eq!(
        get(&other, &format!("/api/v1/summary?{whole}"))["rows"],
        json!([])
    );
    for (q, field) in [
        ("/api/v1/summary?group_by=colour", "group_by"),
        (
            "/api/v1/summary?from=2026-11-24T10:00:00Z&to=2026-11-24T09:00:00Z",
            "from",
        ),
        ("/api/v1/timeseries?bucket=week", "bucket"),
        (
            "/api/v1/timeseries?bucket=minute&from=2026-01-01&to=2026-11-01",
            "bucket",
        ),
        ("/api/v1/summary?limit=3", "limit"),
    ] {
        let (s, b, _) = send(
            agent()
                .get(&c.url(q))
                .set("authorization", &format!("Bearer {key}")),
            None,
        );
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!((s, v["field"].as_str()), (400, Some(field)), "{q}");
    }
}

#[test]
fn metrics_show_health_and_spend_by_org_provider_and_model() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let e1 = event("m1", "2026-11-24T08:00:00.000Z", json!({"cost_usd": 0.25}));
    c.ingest(&key, &e1.to_string());
    c.ingest(&key, &e1.to_string());
    c.ingest(&key, "not json");
    let (s, text, headers) = send(agent().get(&c.url("/metrics")), None);
    assert_eq!(s, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("text/plain")));
    for line in [
        "tally_collector_ingest_batches_total{outcome=\"accepted\"} 2",
        "tally_collector_ingest_batches_total{outcome=\"rejected\"} 1",
        "tally_collector_ingest_events_total 1",
        "tally_collector_ingest_duplicates_total 1",
        "tally_cost_usd_total{org=\"acme\",provider=\"openai\",model=\"gpt-4o-mini-2024-07-18\"} 0.25",
        "tally_requests_total{org=\"acme\",provider=\"openai\",model=\"gpt-4o-mini-2024-07-18\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("tally_collector_db_bytes "));
    assert!(!text.contains("team="), "no unbounded labels");
}

#[test]
fn disabled_orgs_are_refused_at_once_and_retention_prunes_old_events() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    assert_eq!(c.events(&key, "").0, 200);
    assert!(org_cmd(&c.data, &["disable", "acme"]).0);
    assert_eq!(c.events(&key, "").0, 401);
    assert!(org_cmd(&c.data, &["enable", "acme"]).0);
    assert_eq!(c.events(&key, "").0, 200);
    let (ok, _, err) = org_cmd(&c.data, &["disable", "nobody"]);
    assert!(!ok && err.contains("no org"), "{err}");

    // Retention: an old and a new event; serving with --retention-days 30 prunes the old one at
    // start, and its rollups stay.
    let old = event("old", "2020-01-01T00:00:00.000Z", json!({}));
    let now = tally::time::format_rfc3339_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let new = event("new", &now, json!({}));
    c.ingest(&key, &json!([old, new]).to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::spawn(
        "collector-retention",
        Command::new(artifact("target/release/tally-collector"))
            .args([
                "serve",
                "--retention-days",
                "30",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&c.data),
        dir.path(),
    );
    let port = common::announced_port(&mut p, dir.path());
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    common::wait_until(
        "old events pruned",
        std::time::Duration::from_secs(10),
        || {
            let (_, b, _) = send(
                agent()
                    .get(&url("/api/v1/events"))
                    .set("authorization", &format!("Bearer {key}")),
                None,
            );
            let v: Value = serde_json::from_str(&b).unwrap_or_default();
            v["events"]
                .as_array()
                .is_some_and(|e| e.len() == 1 && e[0]["request_id"] == "new")
        },
    );
    let (_, b, _) = send(
        agent()
            .get(&url(
                "/api/v1/summary?from=2019-12-31T00:00:00Z&to=2020-01-02T00:00:00Z",
            ))
            .set("authorization", &format!("Bearer {key}")),
        None,
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["rows"][0]["requests"], 1,
        "rollups outlive raw events: {v}"
    );
}

/// One HTTP/1.1 exchange over TLS, trusting only `ca` (DER) for `localhost`.
fn https(port: u16, ca: &[u8], request: &str) -> String {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.to_vec().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn tls_serves_https_and_marks_session_cookies_secure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let (ok, _, _) = org_cmd(&data, &["create", "acme"]);
    assert!(ok);
    let out = Command::new(artifact("target/release/tally-collector"))
        .args([
            "user",
            "add",
            "--org",
            "acme",
            "--email",
            "ann@acme.test",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"correct horse battery staple\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let mut p = common::spawn(
        "collector-tls",
        Command::new(artifact("target/release/tally-collector"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--tls-cert")
            .arg(&cert_pem)
            .arg("--tls-key")
            .arg(&key_pem),
        dir.path(),
    );
    let port = common::announced_port(&mut p, dir.path());
    let ca = cert.cert.der().to_vec();
    let health = https(
        port,
        &ca,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = "email=ann%40acme.test&password=correct+horse+battery+staple";
    let login = https(
        port,
        &ca,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {login}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (s, _) = std::net::TcpStream::connect(("127.0.0.1", port))
        .map(|mut sock| {
            use std::io::{Read, Write};
            let _ = sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 64];
            sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let n = sock.read(&mut buf).unwrap_or(0);
            (String::from_utf8_lossy(&buf[..n]).into_owned(), ())
        })
        .unwrap();
    assert!(!s.starts_with("HTTP/1.1 200"), "{s}");
}

/// A `tally-collector` CLI command (`token ...`, `org ...`) on a data directory.
fn cli(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    common::collector_cli(data, args)
}

impl Collector {
    /// GET with a bearer credential: (status, body, headers).
    fn get(&self, path: &str, bearer: &str) -> (u16, String, Vec<(String, String)>) {
        send(
            agent()
                .get(&self.url(path))
                .set("authorization", &format!("Bearer {bearer}")),
            None,
        )
    }

    fn ids(&self, key: &str, query: &str) -> Vec<String> {
        let (s, v) = self.events(key, query);
        assert_eq!(s, 200, "{query}: {v}");
        let mut ids: Vec<String> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PRODUCT.md "Versions": a newer filter's field is accepted, not stored, counted and logged.
#[test]
fn event_fields_this_collector_does_not_know_are_counted_and_logged_once() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let newer = |id: &str| {
        event(
            id,
            "2026-11-24T08:00:00.000Z",
            json!({"future_field": 1, "later": {"x": [1, 2]}}),
        )
    };
    let (s, v) = c.ingest(&key, &json!([newer("f1"), newer("f2")]).to_string());
    assert_eq!((s, v), (202, json!({"accepted": 2, "duplicates": 0})));
    let (s, _) = c.ingest(&key, &format!("{}\n", newer("f3")));
    assert_eq!(s, 202);
    // A batch whose first event is as old as the collector is not looked into.
    let old = event("f4", "2026-11-24T08:00:00.000Z", json!({}));
    assert_eq!(
        c.ingest(&key, &json!([old, newer("f5")]).to_string()).0,
        202
    );
    // Stored without the unknown values.
    let (_, v) = c.events(&key, "");
    assert_eq!(v["events"].as_array().unwrap().len(), 5);
    assert!(v["events"][0].get("future_field").is_none(), "{v}");
    let (_, text, _) = send(agent().get(&c.url("/metrics")), None);
    for line in [
        "# TYPE tally_ingest_unknown_fields_total counter",
        "tally_ingest_unknown_fields_total{field=\"future_field\"} 3",
        "tally_ingest_unknown_fields_total{field=\"later\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let log = std::fs::read_to_string(c.logs.join("collector.stderr.log")).unwrap();
    let said = "ingest: events carry field \"future_field\", which this collector does not know; \
                it is not stored (upgrade the collector)";
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert_eq!(log.matches("carry field \"later\"").count(), 1, "{log}");
}

#[test]
fn namespace_and_workload_filter_group_and_export_and_survive_a_kill() {
    let mut c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let mesh = |id: &str, ns: Value, wl: Value| {
        event(
            id,
            "2026-11-24T08:00:00.000Z",
            json!({"namespace": ns, "workload": wl, "principal": "spiffe://cluster.local/ns/shop/sa/cart"}),
        )
    };
    let batch = json!([
        mesh("n1", json!("shop"), json!("cart")),
        mesh("n2", json!("shop"), json!("checkout")),
        mesh("n3", json!("lab"), json!("notebook")),
        mesh("n4", Value::Null, Value::Null),
    ]);
    assert_eq!(c.ingest(&key, &batch.to_string()).0, 202);
    assert_eq!(c.ids(&key, "namespace=shop"), ["n1", "n2"]);
    assert_eq!(c.ids(&key, "workload=notebook"), ["n3"]);
    assert_eq!(c.ids(&key, "namespace=shop&workload=cart"), ["n1"]);
    let (_, v) = c.events(&key, "workload=cart");
    assert_eq!(
        v["events"][0]["principal"],
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    let (s, csv, _) = c.get("/api/v1/events.csv?namespace=shop", &key);
    assert_eq!(s, 200);
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[col("namespace")], "shop");
    assert!(["cart", "checkout"].contains(&row[col("workload")]));
    assert_eq!(
        row[col("principal")],
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    // Killed before its rollup rows were written: counted again at start, by namespace too.
    c._proc.stop();
    let (_proc, port) = start_collector(&c.data, 0, &c.logs, "again");
    let by = |dim: &str| -> Vec<(Value, u64)> {
        let v = api_get(port, &key, &format!("{EIGHT_TO_NINE}&group_by={dim}"));
        let mut rows: Vec<(Value, u64)> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].clone(), r["requests"].as_u64().unwrap()))
            .collect();
        rows.sort_by_key(|(k, _)| k.to_string());
        rows
    };
    assert_eq!(
        by("namespace"),
        [(json!("lab"), 1), (json!("shop"), 2), (Value::Null, 1)]
    );
    assert_eq!(by("workload").len(), 4);
    let v = api_get(
        port,
        &key,
        "/api/v1/timeseries?bucket=hour&group_by=workload&from=2026-11-24T08:00:00Z&to=2026-11-24T09:00:00Z",
    );
    assert_eq!(v["points"].as_array().unwrap().len(), 4, "{v}");
    // Kept per hour and day, like team: a minute series is answered per hour, and says so.
    let (s, b, _) = send(
        agent()
            .get(&format!(
                "http://127.0.0.1:{port}/api/v1/timeseries?bucket=minute&group_by=namespace"
            ))
            .set("authorization", &format!("Bearer {key}")),
        None,
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (s, v["bucket"].as_str(), v["note"].as_str()),
        (
            200,
            Some("hour"),
            Some("namespace is kept per hour: shown in hour buckets")
        ),
        "{b}"
    );
}

#[test]
fn mesh_tokens_send_for_their_orgs_only_and_never_read() {
    let c = start();
    let mut keys = std::collections::HashMap::new();
    for org in ["acme", "globex", "initech", "umbrella"] {
        let (ok, key, err) = org_cmd(&c.data, &["create", org]);
        assert!(ok, "{err}");
        keys.insert(org, key);
    }
    let (ok, token, err) = cli(
        &c.data,
        &[
            "token", "create", "mesh", "--org", "acme", "--org", "globex",
        ],
    );
    assert!(ok, "{err}");
    assert!(tally::config::is_mesh_token(&token), "{token}");
    assert!(err.contains("shown once"), "{err}");
    // Refused at create: an unknown org, neither --org nor --all-orgs, a name taken.
    let (ok, out, err) = cli(&c.data, &["token", "create", "x", "--org", "nobody"]);
    assert!(
        !ok && out.is_empty() && err.contains("no org named"),
        "{err}"
    );
    assert!(!cli(&c.data, &["token", "create", "y"]).0);
    assert!(!cli(&c.data, &["token", "create", "mesh", "--all-orgs"]).0);
    let (ok, fleet, _) = cli(&c.data, &["token", "create", "fleet", "--all-orgs"]);
    assert!(ok);

    // One batch, two orgs: each event stored under the org it names.
    let for_org =
        |id: &str, org: Value| event(id, "2026-11-24T08:00:00.000Z", json!({ "org_id": org }));
    let batch = json!([
        for_org("m1", json!("acme")),
        for_org("m2", json!("globex")),
        for_org("m3", json!("acme")),
    ]);
    let (s, v) = c.ingest(&token, &batch.to_string());
    assert_eq!((s, v), (202, json!({"accepted": 3, "duplicates": 0})));
    let (s, v) = c.ingest(&token, &batch.to_string());
    assert_eq!((s, v), (202, json!({"accepted": 0, "duplicates": 3})));
    assert_eq!(c.ids(&keys["acme"], ""), ["m1", "m3"]);
    assert_eq!(c.ids(&keys["globex"], ""), ["m2"]);
    let (_, v) = c.events(&keys["acme"], "");
    assert_eq!(v["events"][0]["org_id"], "acme");
    let v = api_get(c.port, &keys["globex"], EIGHT_TO_NINE);
    assert_eq!(v["rows"][0]["requests"], 1, "{v}");

    // Any event it may not send refuses the whole batch, naming the event.
    assert!(org_cmd(&c.data, &["disable", "umbrella"]).0);
    for (org, says) in [
        (Value::Null, "must name its org"),
        (json!("nobody"), "no org named"),
        (json!("initech"), "may not send for org"),
    ] {
        let batch = json!([for_org("ok", json!("acme")), for_org("bad", org.clone())]);
        let (s, v) = c.ingest(&token, &batch.to_string());
        assert_eq!(
            (s, v["field"].as_str()),
            (400, Some("[1].org_id")),
            "{org}: {v}"
        );
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (s, v) = c.ingest(&fleet, &for_org("u1", json!("umbrella")).to_string());
    assert_eq!((s, v["field"].as_str()), (400, Some("[0].org_id")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("disabled"), "{v}");
    assert_eq!(
        c.ids(&keys["acme"], ""),
        ["m1", "m3"],
        "nothing of them stored"
    );
    // --all-orgs: any enabled org.
    let (s, _) = c.ingest(&fleet, &for_org("i1", json!("initech")).to_string());
    assert_eq!(s, 202);
    assert_eq!(c.ids(&keys["initech"], ""), ["i1"]);

    // An org key: its own org, named or not, never another.
    let (s, _) = c.ingest(&keys["acme"], &for_org("k1", json!("acme")).to_string());
    assert_eq!(s, 202);
    let (s, v) = c.ingest(
        &keys["acme"],
        &json!([for_org("k2", Value::Null), for_org("k3", json!("globex"))]).to_string(),
    );
    assert_eq!((s, v["field"].as_str()), (400, Some("[1].org_id")), "{v}");
    assert_eq!(c.ids(&keys["globex"], ""), ["m2"]);

    // Never the read API.
    for path in ["/api/v1/events", "/api/v1/summary", "/api/v1/events.csv"] {
        assert_eq!(c.get(path, &token).0, 401, "{path}");
    }
    let (ok, list, _) = cli(&c.data, &["token", "list"]);
    assert!(ok);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("fleet\tall orgs\tcreated 20"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("mesh\tacme,globex\tcreated 20"),
        "{list}"
    );
    assert!(!list.contains("revoked"));
    // Revoked: refused from that moment.
    let (ok, _, err) = cli(&c.data, &["token", "revoke", "mesh"]);
    assert!(ok, "{err}");
    assert_eq!(
        c.ingest(&token, &for_org("m9", json!("acme")).to_string())
            .0,
        401
    );
    let (_, list, _) = cli(&c.data, &["token", "list"]);
    assert!(
        list.lines().nth(1).unwrap().contains("\trevoked 20"),
        "{list}"
    );
    assert!(!cli(&c.data, &["token", "revoke", "nobody"]).0);
    // Nothing secret in the database or the log: hashes only.
    let db = std::fs::read(c.data.join("tally.db")).unwrap();
    let log = std::fs::read_to_string(c.logs.join("collector.stderr.log")).unwrap();
    for secret in [&token, &fleet] {
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!log.contains(secret.as_str()));
    }
}

#[test]
fn controls_give_each_caller_its_key_hashes_with_an_etag_and_follow_rotation() {
    let c = start();
    let (_, acme, _) = org_cmd(&c.data, &["create", "acme"]);
    let (_, globex, _) = org_cmd(&c.data, &["create", "globex"]);
    let (_, token, _) = cli(
        &c.data,
        &[
            "token", "create", "mesh", "--org", "globex", "--org", "acme",
        ],
    );
    // No events yet: no model's rates.
    let entry =
        |org: &str, key: &str| json!({"org_id": org, "key_sha256": [sha256_hex(key)], "rates": {}});
    let controls =
        |bearer: &str| -> (u16, String, Vec<(String, String)>) { c.get("/v1/controls", bearer) };
    let (s, body, headers) = controls(&acme);
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"orgs": [entry("acme", &acme)]})
    );
    assert_eq!(
        body,
        format!(
            r#"{{"orgs":[{{"org_id":"acme","key_sha256":["{}"],"rates":{{}}}}]}}"#,
            sha256_hex(&acme)
        ),
        "exactly this shape, compact"
    );
    let etag = header(&headers, "etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&body)));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    // The same ETag again: 304, no body.
    let (s, body304, h304) = send(
        agent()
            .get(&c.url("/v1/controls"))
            .set("authorization", &format!("Bearer {acme}"))
            .set("if-none-match", &etag),
        None,
    );
    assert_eq!((s, body304.as_str()), (304, ""));
    assert_eq!(header(&h304, "etag"), Some(etag.as_str()));
    // A mesh token: every org it may send for, by name.
    let (s, body, _) = controls(&token);
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"orgs": [entry("acme", &acme), entry("globex", &globex)]})
    );
    // No credential, a bad one, a session-less browser: 401 in JSON.
    for bearer in [
        "",
        "tly_0000000000000000000000000000000000000000",
        "tlm_0000000000000000000000000000000000000000",
    ] {
        let (s, body, _) = controls(bearer);
        assert_eq!(s, 401, "{bearer}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "unauthorized"
        );
    }

    // Rotation from the CLI (another process): measure when pollers see the new hash.
    let (ok, rotated, _) = org_cmd(&c.data, &["rotate-key", "acme"]);
    assert!(ok);
    let rotated_at = std::time::Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let (_, body, _) = controls(&token);
        if body.contains(&sha256_hex(&rotated)) {
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(1),
            "not visible within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = rotated_at.elapsed();
    eprintln!("controls: a rotated key was visible after {seen:?} ({polls} polls)");
    let (s, body, _) = controls(&token);
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"orgs": [entry("acme", &rotated), entry("globex", &globex)]})
    );
    assert_eq!(controls(&acme).0, 401, "the old key");
    // Ingest and the read API refuse the old key at once (looked up per request).
    assert_eq!(c.events(&acme, "").0, 401);
    let (s, _, h) = controls(&rotated);
    assert_eq!(s, 200);
    assert_ne!(header(&h, "etag"), Some(etag.as_str()));
    // A disabled org is left out, so filters refuse its key.
    assert!(org_cmd(&c.data, &["disable", "globex"]).0);
    let disabled_at = std::time::Instant::now();
    loop {
        let (_, body, _) = controls(&token);
        if !body.contains("globex") {
            break;
        }
        assert!(
            disabled_at.elapsed() < Duration::from_secs(1),
            "not within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(controls(&globex).0, 401);
    assert!(cli(&c.data, &["token", "revoke", "mesh"]).0);
    let revoked_at = std::time::Instant::now();
    while controls(&token).0 != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "not within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A GET with the org key; the status and the JSON answer.
fn get_json(c: &Collector, key: &str, path: &str) -> (u16, Value) {
    let (s, b, _) = send(
        agent()
            .get(&c.url(path))
            .set("authorization", &format!("Bearer {key}")),
        None,
    );
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

#[test]
fn summaries_and_time_series_take_the_events_filters_fill_gaps_and_never_call_unknown_cost_zero() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    // Three days: traffic on the first and the third only. Per day, 8 events: teams payments
    // (6) and search (2); the unknown model acme-llm-1 (2 of payments', no price, cost null).
    let mut batch = Vec::new();
    for day in ["2026-11-20", "2026-11-22"] {
        for i in 0..8 {
            let mut extra = json!({"team": if i < 6 { "payments" } else { "search" },
                "cost_usd": 0.5, "input_tokens": 100, "output_tokens": 10});
            if i < 2 {
                extra["model_requested"] = json!("acme-llm-1");
                extra["model_actual"] = Value::Null;
                extra["cost_usd"] = Value::Null;
            }
            if i == 7 {
                extra["status"] = json!(503);
                extra["error_category"] = json!("provider_error");
                extra["error_source"] = json!("provider");
            }
            batch.push(event(
                &format!("{day}-{i}"),
                &format!("{day}T10:0{i}:00.000Z"),
                extra,
            ));
        }
    }
    assert_eq!(c.ingest(&key, &json!(batch).to_string()).0, 202);
    let range = "from=2026-11-20T00:00:00Z&to=2026-11-23T00:00:00Z";

    // Filtered by team over three days: from pair rollups, hour resolution.
    let (s, v) = get_json(&c, &key, &format!("/api/v1/summary?team=payments&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["resolution"], "hour");
    let t = &v["rows"][0];
    assert_eq!(
        (t["requests"].as_u64(), t["unpriced_requests"].as_u64()),
        (Some(12), Some(4))
    );
    assert_eq!(
        (
            t["unpriced_input_tokens"].as_u64(),
            t["input_tokens"].as_u64()
        ),
        (Some(400), Some(1200))
    );
    assert_eq!(t["cost_usd"], 4.0, "8 priced requests at 0.5");
    // By model, unknown cost stays unknown: null, never 0.
    let (_, v) = get_json(
        &c,
        &key,
        &format!("/api/v1/summary?group_by=model&team=payments&{range}"),
    );
    let unknown = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "acme-llm-1")
        .unwrap()
        .clone();
    assert_eq!(
        (
            unknown["requests"].as_u64(),
            unknown["unpriced_requests"].as_u64()
        ),
        (Some(4), Some(4))
    );
    assert_eq!(unknown["cost_usd"], Value::Null);
    // A status class, and two filters (the status's pair rows grouped by team, at `search`):
    // the same figures as the log.
    let (_, v) = get_json(&c, &key, &format!("/api/v1/summary?status=5xx&{range}"));
    assert_eq!(v["rows"][0]["requests"], 2);
    let (_, v) = get_json(
        &c,
        &key,
        &format!("/api/v1/summary?status=5xx&team=search&group_by=team&{range}"),
    );
    assert_eq!(
        (
            v["resolution"].as_str(),
            v["rows"][0]["key"].as_str(),
            v["rows"][0]["requests"].as_u64()
        ),
        (Some("hour"), Some("search"), Some(2))
    );
    // Grouped by a third label, from the events.
    let (_, v) = get_json(
        &c,
        &key,
        &format!("/api/v1/summary?status=5xx&team=search&group_by=model&{range}"),
    );
    assert_eq!(
        (
            v["resolution"].as_str(),
            v["rows"].as_array().map(|r| r.len())
        ),
        (Some("exact"), Some(1))
    );
    assert_eq!(v["rows"][0]["requests"], 2);

    // Per day: a true axis, the empty day present with zeros.
    let (_, v) = get_json(
        &c,
        &key,
        &format!("/api/v1/timeseries?bucket=day&team=payments&{range}"),
    );
    let days: Vec<(String, u64, Value)> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["bucket"].as_str().unwrap().to_string(),
                p["requests"].as_u64().unwrap(),
                p["cost_usd"].clone(),
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2026-11-20T00:00:00.000Z".to_string(), 6, json!(2.0)),
            ("2026-11-21T00:00:00.000Z".to_string(), 0, json!(0.0)),
            ("2026-11-22T00:00:00.000Z".to_string(), 6, json!(2.0)),
        ]
    );
    // Grouped: every key in every bucket.
    let (_, v) = get_json(
        &c,
        &key,
        &format!("/api/v1/timeseries?bucket=day&group_by=team&{range}"),
    );
    assert_eq!(v["points"].as_array().unwrap().len(), 6);
    // Minute buckets of an hour-only dimension fall back to hours, and say so.
    let (s, v) = get_json(&c, &key, "/api/v1/timeseries?bucket=minute&group_by=team&from=2026-11-22T09:00:00Z&to=2026-11-22T12:00:00Z");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["bucket"].as_str(), v["bucket_requested"].as_str()),
        (Some("hour"), Some("minute"))
    );
    assert_eq!(v["note"], "team is kept per hour: shown in hour buckets");
    let per_hour: Vec<(Value, u64)> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].clone(), p["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        per_hour,
        [
            (json!("payments"), 0),
            (json!("search"), 0),
            (json!("payments"), 6),
            (json!("search"), 2),
            (json!("payments"), 0),
            (json!("search"), 0)
        ]
    );
    // A filtered short range is read from the events, per minute.
    let (_, v) = get_json(&c, &key, "/api/v1/timeseries?bucket=minute&team=search&from=2026-11-22T10:00:00Z&to=2026-11-22T10:10:00Z");
    assert_eq!(
        (v["bucket"].as_str(), v["note"].clone()),
        (Some("minute"), Value::Null)
    );
    let per_minute: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_minute, [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]);

    // Minute rows are kept for 31 days: an older minute series is answered per hour, and says so.
    let old = event("old-1", "2026-10-15T10:30:00.000Z", json!({}));
    assert_eq!(c.ingest(&key, &json!([old]).to_string()).0, 202);
    let (_, v) = get_json(
        &c,
        &key,
        "/api/v1/timeseries?bucket=minute&from=2026-10-15T09:00:00Z&to=2026-10-15T12:00:00Z",
    );
    assert_eq!(
        (v["bucket"].as_str(), v["note"].as_str()),
        (
            Some("hour"),
            Some("minute figures are kept for 31 days: shown in hour buckets")
        ),
        "{v}"
    );
    let per_hour: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_hour, [0, 1, 0]);

    // The metrics count unpriced requests beside the spend they are not in.
    let (_, text, _) = send(agent().get(&c.url("/metrics")), None);
    assert!(text.lines().any(|l| l == "tally_unpriced_requests_total{org=\"acme\",provider=\"openai\",model=\"acme-llm-1\"} 4"), "{text}");
}

#[test]
fn events_page_by_cursor_with_no_repeat_and_no_gap_while_events_arrive() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    // 250 events, some sharing a timestamp (ties are ordered by request id).
    let first: Vec<Value> = (0..250)
        .map(|i| {
            event(
                &format!("p{i:03}"),
                &format!("2026-11-24T08:{:02}:{:02}.000Z", i / 50, (i % 50) / 2),
                json!({}),
            )
        })
        .collect();
    assert_eq!(c.ingest(&key, &json!(first).to_string()).0, 202);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..10 {
        let q = match &cursor {
            Some(cur) => format!("limit=100&cursor={cur}"),
            None => "limit=100".to_string(),
        };
        let (s, v) = c.events(&key, &q);
        assert_eq!(s, 200, "{v}");
        seen.extend(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["request_id"].as_str().unwrap().to_string()),
        );
        // Meanwhile, newer events arrive (they belong before the first page), and one late
        // event older than everything (it belongs on a page still to come).
        let newer = event(&format!("new{page}"), "2026-11-24T09:30:00.000Z", json!({}));
        let late = event(
            &format!("late{page}"),
            "2026-11-24T07:00:00.000Z",
            json!({}),
        );
        assert_eq!(c.ingest(&key, &json!([newer, late]).to_string()).0, 202);
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    for i in 0..250 {
        assert!(seen.contains(&format!("p{i:03}")), "p{i:03} missed");
    }
    assert!(
        !seen.iter().any(|id| id.starts_with("new")),
        "newer events are not on later pages"
    );
    assert!(
        seen.iter().any(|id| id.starts_with("late")),
        "late events older than the cursor come"
    );
    // Filters hold across pages; a forged cursor is refused by name.
    let (_, v) = c.events(&key, "limit=1&team=payments");
    let next = v["next_cursor"].as_str().unwrap().to_string();
    let (_, v2) = c.events(&key, &format!("limit=1&team=payments&cursor={next}"));
    assert_ne!(v["events"][0]["request_id"], v2["events"][0]["request_id"]);
    let (s, v) = c.events(&key, "cursor=garbage");
    assert_eq!((s, v["field"].as_str()), (400, Some("cursor")));
}

/// The families of a /metrics page as Python's `prometheus_client` parses it (`openmetrics`:
/// its OpenMetrics parser, which refuses what the format does not allow): name -> samples.
fn parse_metrics(text: &str, openmetrics: bool) -> Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
parse = om if sys.argv[1] == "om" else text
out = {}
for f in parse(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = Command::new(artifact(".venv/bin/python"))
        .args(["-c", script, if openmetrics { "om" } else { "text" }])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the page: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_parse_as_prometheus_text_and_openmetrics_and_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (_, key, _) = org_cmd(&data, &["create", "acme"]);
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-0123456789\n").unwrap();
    let mut p = common::spawn(
        "collector-metrics",
        Command::new(artifact("target/release/tally-collector"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--metrics-token-file")
            .arg(&token_file),
        &logs,
    );
    let port = common::announced_port(&mut p, &logs);
    let url = format!("http://127.0.0.1:{port}");
    let batch = json!([
        event("m1", "2026-11-24T08:00:00.000Z", json!({})),
        event(
            "m2",
            "2026-11-24T08:00:00.000Z",
            json!({"model_requested": "acme-llm-1", "model_actual": null, "cost_usd": null})
        )
    ]);
    let (s, _, _) = send(
        agent()
            .post(&format!("{url}/v1/events"))
            .set("authorization", &format!("Bearer {key}")),
        Some(&batch.to_string()),
    );
    assert_eq!(s, 202);
    // Without the token, or with another, nothing: spend by org is not for anyone.
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some(format!("Bearer {key}").as_str()),
    ] {
        let mut req = agent().get(&format!("{url}/metrics"));
        if let Some(a) = auth {
            req = req.set("authorization", a);
        }
        let (s, body, _) = send(req, None);
        assert_eq!(s, 401, "{auth:?}: {body}");
        assert!(!body.contains("tally_"), "{body}");
    }
    let scrape = |accept: &str| {
        let (s, body, headers) = send(
            agent()
                .get(&format!("{url}/metrics"))
                .set("authorization", "Bearer scrape-me-0123456789")
                .set("accept", accept),
            None,
        );
        assert_eq!(s, 200);
        let kind = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .unwrap()
            .1
            .clone();
        (body, kind)
    };
    let (text, kind) = scrape("text/plain");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let (om, om_kind) =
        scrape("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5");
    assert!(
        om_kind.starts_with("application/openmetrics-text"),
        "{om_kind}"
    );
    for (families, om) in [
        (parse_metrics(&text, false), false),
        (parse_metrics(&om, true), true),
    ] {
        // Every family the collector writes has its samples, as both parsers read them.
        for family in [
            "tally_collector_ingest_batches",
            "tally_collector_ingest_events",
            "tally_collector_ingest_duplicates",
            "tally_ingest_unknown_fields",
            "tally_collector_ingest_batch_seconds",
            "tally_collector_db_bytes",
            "tally_requests",
            "tally_errors",
            "tally_input_tokens",
            "tally_output_tokens",
            "tally_cost_usd",
            "tally_unpriced_requests",
        ] {
            let f = &families[family];
            assert!(
                f.is_object(),
                "{family} missing (openmetrics: {om}): {families}"
            );
            if family != "tally_ingest_unknown_fields" {
                assert!(
                    !f["samples"].as_array().unwrap().is_empty(),
                    "{family} has no samples (openmetrics: {om})"
                );
            }
        }
        let sample = |family: &str, model: &str| {
            families[family]["samples"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s[1]["model"] == model)
                .map(|s| s[2].as_f64().unwrap())
        };
        assert_eq!(sample("tally_unpriced_requests", "acme-llm-1"), Some(1.0));
        assert_eq!(sample("tally_requests", "acme-llm-1"), Some(1.0));
        assert_eq!(
            sample("tally_cost_usd", "gpt-4o-mini-2024-07-18"),
            Some(0.000027)
        );
        assert_eq!(
            families["tally_collector_ingest_events"]["samples"][0][2],
            2.0
        );
    }
    drop(p);
}

#[test]
fn prices_change_while_the_collector_runs_and_past_events_can_be_priced_again() {
    let c = start();
    let (_, key, _) = org_cmd(&c.data, &["create", "acme"]);
    let cli_ok = |args: &[&str]| {
        let (ok, out, err) = common::collector_cli(&c.data, args);
        assert!(ok, "{args:?}: {err}");
        (out, err)
    };
    // As a filter sends them: no cost. gpt-5: $1.25 in, $0.125 cached, $10 out per 1M.
    let unpriced = |id: &str| {
        event(
            id,
            "2026-11-24T08:00:00.000Z",
            json!({"model_requested": "gpt-5", "model_actual": "gpt-5-2025-08-07",
                "input_tokens": 1000, "output_tokens": 100, "cached_input_tokens": 400, "cost_usd": null}),
        )
    };
    let total = || {
        let (_, v) = get_json(
            &c,
            &key,
            "/api/v1/summary?from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z",
        );
        (v["rows"][0]["cost_usd"].as_f64().unwrap() * 1e12).round() as u64
    };
    let list = 600 * 1_250_000u64 + 400 * 125_000 + 100 * 10_000_000;
    assert_eq!(c.ingest(&key, &json!([unpriced("a")]).to_string()).0, 202);
    assert_eq!(total(), list);
    // The org's own rate applies to new events within a second...
    cli_ok(&[
        "prices",
        "set-rate",
        "--org",
        "acme",
        "--model",
        "gpt-5-2025-08-07",
        "--input",
        "1",
        "--cached-input",
        "0.1",
        "--output",
        "2",
    ]);
    let own = 600 * 1_000_000u64 + 400 * 100_000 + 100 * 2_000_000;
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.ingest(&key, &json!([unpriced("b")]).to_string()).0, 202);
    assert_eq!(total(), list + own);
    // ...and `reprice` brings the stored ones to it, rollups included, and says what it did;
    // a model the table does not know, once the org has its rate, is priced too.
    let unknown = event(
        "u",
        "2026-11-24T09:00:00.000Z",
        json!({"model_requested": "acme-llm-1", "model_actual": null, "input_tokens": 1000,
            "output_tokens": 100, "cached_input_tokens": 0, "cost_usd": null}),
    );
    assert_eq!(c.ingest(&key, &json!([unknown]).to_string()).0, 202);
    let unknown_row = || {
        let (_, v) = get_json(
            &c,
            &key,
            "/api/v1/summary?group_by=model&from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z",
        );
        let row = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "acme-llm-1")
            .unwrap()
            .clone();
        (
            row["unpriced_requests"].as_u64().unwrap(),
            row["cost_usd"].clone(),
        )
    };
    assert_eq!(unknown_row(), (1, Value::Null));
    cli_ok(&[
        "prices",
        "set-rate",
        "--org",
        "acme",
        "--model",
        "acme-llm-1",
        "--input",
        "5",
        "--output",
        "10",
    ]);
    let (_, said) = cli_ok(&["reprice", "--org", "acme"]);
    assert!(said.contains("3 events priced again, 2 changed"), "{said}");
    let llm = 1000 * 5_000_000u64 + 100 * 10_000_000;
    assert_eq!(unknown_row(), (0, json!(llm as f64 / 1e12)));
    assert_eq!(total(), 2 * own + llm);
    cli_ok(&[
        "prices",
        "delete-rate",
        "--org",
        "acme",
        "--model",
        "acme-llm-1",
    ]);
    let (_, said) = cli_ok(&["reprice", "--org", "acme", "--from", "2026-11-24T09:00:00Z"]);
    assert!(said.contains("1 events priced again, 1 changed"), "{said}");
    assert_eq!(unknown_row(), (1, Value::Null));
    assert_eq!(total(), 2 * own);
    // A discount on every model, then a new table loaded while it runs.
    cli_ok(&[
        "prices",
        "set-rate",
        "--org",
        "acme",
        "--model",
        "*",
        "--discount-percent",
        "10",
    ]);
    cli_ok(&[
        "prices",
        "delete-rate",
        "--org",
        "acme",
        "--model",
        "gpt-5-2025-08-07",
    ]);
    let mut table: Value =
        serde_json::from_str(&std::fs::read_to_string(artifact("src/prices.json")).unwrap())
            .unwrap();
    for m in table["models"].as_array_mut().unwrap() {
        // The snapshot is listed too, and an exact name wins.
        if m["provider"] == "openai" && (m["model"] == "gpt-5" || m["model"] == "gpt-5-2025-08-07")
        {
            m["input"] = json!(2.0);
        }
    }
    let file = c.data.parent().unwrap().join("prices.json");
    std::fs::write(&file, table.to_string()).unwrap();
    let (_, said) = cli_ok(&["prices", "load", file.to_str().unwrap()]);
    assert!(said.contains("prices.json"), "{said}");
    let (out, _) = cli_ok(&["prices", "show"]);
    assert!(out.starts_with("prices.json\t"), "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.ingest(&key, &json!([unpriced("c")]).to_string()).0, 202);
    let loaded = 600 * 2_000_000u64 + 400 * 125_000 + 100 * 10_000_000;
    assert_eq!(total(), 2 * own + loaded * 9 / 10);
    // Bad input is refused by name.
    let (ok, _, err) = common::collector_cli(
        &c.data,
        &[
            "prices", "set-rate", "--org", "acme", "--model", "x", "--input", "1",
        ],
    );
    assert!(!ok && err.contains("--input and --output"), "{err}");
    std::fs::write(&file, "{\"models\": []}").unwrap();
    let (ok, _, err) = common::collector_cli(&c.data, &["prices", "load", file.to_str().unwrap()]);
    assert!(!ok && err.contains("lists no model"), "{err}");
}

/// The vocabularies the wasm filter fetches: the bytes the filter was built to expect, with no
/// credential asked for (public data), and nothing for a name that is no encoding.
#[test]
fn vocabularies_are_served_as_the_filter_expects_them() {
    let c = start();
    for enc in tally::measure::Encoding::ALL {
        let resp = agent()
            .get(&c.url(&format!("/v1/vocab/{}", enc.name())))
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.header("content-type"),
            Some("application/octet-stream")
        );
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        assert_eq!(body, tally::vocab::packed(enc).unwrap());
        // What a filter does with it.
        let mut t = tally::measure::Tokenizers::default();
        t.provide(enc, &body).unwrap();
        assert_eq!(
            t.count(enc, "Hello, world!"),
            tally::measure::Counted::Tokens(4)
        );
    }
    let (s, _, _) = send(agent().get(&c.url("/v1/vocab/p50k_base")), None);
    assert_eq!(s, 404);
}

//! The filter in a real Envoy: shipped config, large bodies, privacy, collector outages.

mod common;

use common::{agent, envoy_bin, root, send, start_collector, Options, Stack};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// Both shipped configurations: tally.wasm (`envoy.yaml`) and the native module
/// (`envoy-native.yaml`, whose ABI version Envoy checks as it loads it).
#[test]
fn shipped_envoy_yaml_validates_and_bad_config_fails_at_load() {
    for file in ["envoy.yaml", "envoy-native.yaml"] {
        let run = |key: Option<&str>| {
            let mut c = Command::new(envoy_bin());
            c.current_dir(root())
                .args(["--mode", "validate", "-c", file, "--disable-hot-restart"])
                .env_remove("TALLY_ORG_KEY");
            if let Some(k) = key {
                c.env("TALLY_ORG_KEY", k);
            }
            let out = c.output().expect("run envoy");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let (ok, log) = run(Some("tly_0123456789abcdefghijABCDEFGHIJ0123456789"));
        assert!(ok, "{log}");
        assert!(log.contains(&format!("configuration '{file}' OK")), "{log}");
        if file == "envoy-native.yaml" {
            assert!(
                log.contains("Dynamic module ABI version v0.2.0 matched"),
                "{log}"
            );
        }
        let (ok, log) = run(None);
        assert!(!ok);
        assert!(log.contains("configuration rejected: no org key"), "{log}");
        let (ok, log) = run(Some("not-a-key-CANARY"));
        assert!(!ok);
        assert!(log.contains("org key is malformed"), "{log}");
        assert!(!log.contains("CANARY"), "the bad key is not echoed");
    }
}

#[test]
fn large_request_bodies_flow_and_are_metered() {
    let stack = Stack::start();
    for (mib, user) in [(3usize, "u-3mib"), (9, "u-9mib")] {
        let filler = "a".repeat(mib << 20);
        let body =
            json!({"messages": [{"role": "user", "content": filler}], "model": "gpt-4o-mini"})
                .to_string();
        let (status, text, _) = send(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("content-type", "application/json")
                .set("x-tally-user", user)
                .set("x-mock-usage", "input=7,output=3"),
            Some(&body),
        );
        assert_eq!(status, 200, "{mib} MiB: {}", &text[..text.len().min(200)]);
        let ev = &stack.wait_events(&format!("user={user}"), 1)[0];
        assert_eq!(ev["model_requested"], "gpt-4o-mini");
        assert_eq!(ev["input_tokens"], 7);
    }
}

#[test]
fn no_content_or_secret_leaves_memory() {
    const PROMPT: &str = "CANARY-PROMPT-3f9a1c";
    const ANSWER: &str = "CANARY-ANSWER-b72e04";
    const PROVIDER_KEY: &str = "sk-CANARY-PROVIDERKEY-55d1";
    const ANTHROPIC_KEY: &str = "sk-ant-CANARY-ANTKEY-8e2b";
    const ORG_HEADER: &str = "tly_CANARYCANARYCANARYCANARYCANARYCANARY01";
    let stack = Stack::start();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": PROMPT}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": PROMPT}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": PROMPT}]}),
        ),
    ];
    for (path, body) in &cases {
        let (status, text, _) = send(
            agent()
                .post(&stack.url(path))
                .set("authorization", &format!("Bearer {PROVIDER_KEY}"))
                .set("x-api-key", ANTHROPIC_KEY)
                .set("x-goog-api-key", PROVIDER_KEY)
                .set("x-tally-key", ORG_HEADER)
                .set("x-tally-user", "privacy")
                .set("x-mock-reply", &format!("{ANSWER} and more")),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200);
        assert!(text.contains(ANSWER), "the client still gets its answer");
    }
    let events = stack.wait_events("user=privacy", cases.len());
    // The org key the filter sends with (from Envoy's environment) is a secret too.
    let canaries = [
        PROMPT,
        ANSWER,
        PROVIDER_KEY,
        ANTHROPIC_KEY,
        ORG_HEADER,
        "CANARY",
        stack.key.as_str(),
    ];
    let api_text = serde_json::to_string(&events).unwrap();
    let mut haystacks = vec![("events API".to_string(), api_text.into_bytes())];
    // The collector's own outputs: metrics, summaries, the CSV export.
    for path in [
        "/metrics",
        "/api/v1/summary?group_by=user",
        "/api/v1/events.csv",
    ] {
        let (status, body, _) = send(
            agent()
                .get(&stack.collector_url(path))
                .set("authorization", &format!("Bearer {}", stack.key)),
            None,
        );
        assert_eq!(status, 200, "{path}");
        haystacks.push((format!("collector {path}"), body.into_bytes()));
    }
    // Everything Envoy's admin interface would hand an operator.
    for path in [
        "/stats",
        "/stats/prometheus",
        "/clusters",
        "/config_dump",
        "/server_info",
        "/listeners",
    ] {
        let (status, body, _) = send(agent().get(&stack.admin_url(path)), None);
        assert_eq!(status, 200, "{path}");
        haystacks.push((format!("admin {path}"), body.into_bytes()));
    }
    // Every log and data file, the SQLite database and its WAL included.
    let mut files = 0;
    for dir in [stack.logs_dir(), stack.data_dir()] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            haystacks.push((p.display().to_string(), bytes));
            files += 1;
        }
    }
    assert!(
        files >= 7,
        "logs of envoy, collector, mock and the database: {files}"
    );
    for (name, hay) in &haystacks {
        for c in canaries {
            assert!(
                !hay.windows(c.len()).any(|w| w == c.as_bytes()),
                "{c} found in {name}"
            );
        }
    }
}

#[test]
fn events_wait_for_a_collector_that_is_down() {
    let stack = Stack::start_with(Options {
        start_collector: false,
        ..Options::default()
    });
    for i in 0..5 {
        let (status, _, _) = send(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("x-tally-user", "while-down")
                .set("x-mock-usage", &format!("input={i},output=1")),
            Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
        );
        assert_eq!(
            status, 200,
            "traffic is unaffected while the collector is down"
        );
    }
    // Let the filter fail at least once.
    common::wait_until("a failed batch", Duration::from_secs(10), || {
        stack.envoy_counter("wasmcustom.tally.events_retried") > 0
    });
    // Envoy's stats show them waiting, and none once the collector has them.
    assert_eq!(
        stack.wait_stat("wasmcustom.tally.events_waiting", |n| n == 5),
        5
    );
    let _collector = start_collector(
        &stack.data_dir(),
        stack.collector_port,
        &stack.logs_dir(),
        "collector-late",
    );
    let events = stack.wait_events("user=while-down", 5);
    let mut inputs: Vec<u64> = events
        .iter()
        .map(|e| e["input_tokens"].as_u64().unwrap())
        .collect();
    inputs.sort();
    assert_eq!(inputs, [0, 1, 2, 3, 4]);
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_dropped"), 0);
    assert_eq!(
        stack.wait_stat("wasmcustom.tally.events_waiting", |n| n == 0),
        0
    );
}

#[test]
fn waiting_events_cost_their_size_in_memory() {
    // The collector is down: 2 000 events wait in the worker's VM, and its memory grows by
    // their bytes (about 0.6 KB each here), not by an allocation per event or a buffer that
    // doubles.
    let stack = Stack::start_with(Options {
        start_collector: false,
        ..Options::default()
    });
    // A native module has no memory of its own to report: only the queue is checked there.
    let wasm = common::build() == common::Build::Wasm;
    let before = if wasm {
        stack.wait_stat("wasmcustom.tally.vm_memory_bytes", |m| m > 0)
    } else {
        0
    };
    for i in 0..2000 {
        let (status, _, _) = send(
            agent()
                .post(&stack.url("/v1/chat/completions"))
                .set("x-tally-user", "while-down")
                .set("x-tally-team", "payments")
                .set("x-mock-usage", &format!("input={i},output=1")),
            Some(r#"{"model":"gpt-4o-mini","messages":[]}"#),
        );
        assert_eq!(status, 200);
    }
    assert_eq!(
        stack.wait_stat("wasmcustom.tally.events_waiting", |n| n == 2000),
        2000
    );
    let grown = stack.envoy_counter("wasmcustom.tally.vm_memory_bytes") - before;
    if wasm {
        assert!(grown <= 2000 * 1024, "{grown} bytes for 2000 events");
    } else {
        assert_eq!(grown, 0);
    }
}

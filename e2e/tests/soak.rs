//! Soak: minutes of mixed traffic through Envoy with the collector killed and restarted midway.
//! Every request the client saw succeed is an event in the end, once; Envoy's and the collector's
//! memory stay flat. Bounded in time (TALLY_SOAK_SECONDS, default 180) and run by `make soak`,
//! not by `make test`.

mod common;

use common::{agent, send, start_collector, Options, Stack};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: u64 = 40;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "minutes long: make soak"]
fn soak_with_a_collector_restart() {
    let seconds: u64 = std::env::var("TALLY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180)
        .clamp(20, 3600);
    let mut stack = Stack::start_with(Options {
        concurrency: 2,
        filter_config: r#"{"flush_interval_ms": 200}"#.into(),
        ..Options::default()
    });
    let stack_url = stack.url("");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let shapes = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4.1", "stream": true, "messages": []}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": []}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "stream": true, "max_tokens": 50, "messages": []}),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            json!({"contents": []}),
        ),
    ];
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (sent, stop, url, shapes) = (
                sent.clone(),
                stop.clone(),
                stack_url.clone(),
                shapes.clone(),
            );
            std::thread::spawn(move || {
                let agent = agent();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let (path, body) = &shapes[(i % shapes.len() as u64) as usize];
                    let mut req = agent
                        .post(&format!("{url}{path}"))
                        .set("x-tally-user", &format!("soak-{}", i % USERS))
                        .set("x-mock-usage", "input=100,output=20,cached=10");
                    if i % 7 == 0 {
                        req = req.set("x-mock-encoding", "gzip");
                    }
                    let (status, _, _) = send(req, Some(&body.to_string()));
                    assert_eq!(status, 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 2;
                }
            })
        })
        .collect();

    let start = Instant::now();
    let quarter = Duration::from_secs(seconds / 4);
    std::thread::sleep(quarter);
    let envoy_early = rss_kib(stack.envoy.pid());
    let collector_early = rss_kib(stack.collector.as_ref().unwrap().pid());
    std::thread::sleep(quarter);
    // Midway: the collector dies without warning and comes back 5 s later on the same port.
    if let Some(mut c) = stack.collector.take() {
        c.stop();
    }
    std::thread::sleep(Duration::from_secs(5));
    let (collector, _) = start_collector(
        &stack.data_dir(),
        stack.collector_port,
        &stack.logs_dir(),
        "collector-restarted",
    );
    let collector_pid = collector.pid();
    stack.collector = Some(collector);
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(start.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let total = sent.load(Ordering::Relaxed);
    let envoy_late = rss_kib(stack.envoy.pid());

    // Every event arrives, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = (0..USERS)
            .map(|u| {
                stack
                    .query_events(&format!("user=soak-{u}&limit=1000"))
                    .len() as u64
            })
            .sum();
        if stored >= total {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let collector_late = rss_kib(collector_pid);
    println!(
        "soak: {seconds} s, {total} requests ({:.0}/s), {stored} events stored; \
         envoy RSS {envoy_early} -> {envoy_late} KiB; collector RSS {collector_early} KiB \
         (first), {collector_late} KiB (restarted, at the end)",
        total as f64 / seconds as f64
    );
    assert!(total / USERS < 1000, "per-user pages would overflow");
    assert_eq!(
        stored, total,
        "events counted at the client equal events stored"
    );
    // The rollups count them all too, those whose rows the killed collector had not yet written
    // included (the restarted one counts them again at start).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = tally::time::format_rfc3339_ms;
    let summary = stack.api(&format!(
        "/api/v1/summary?from={}&to={}",
        at(now - 86_400_000),
        at(now + 60_000)
    ));
    assert_eq!(summary["rows"][0]["requests"], total, "{summary}");
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_dropped"), 0);
    // Flat memory: Envoy's RSS grows by less than 25% from the first quarter to the end.
    assert!(
        envoy_late < envoy_early + envoy_early / 4,
        "envoy RSS {envoy_early} -> {envoy_late} KiB"
    );
    assert!(
        collector_late < 200 * 1024,
        "collector RSS {collector_late} KiB"
    );
}

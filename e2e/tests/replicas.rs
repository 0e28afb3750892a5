//! Two collector replicas on one PostgreSQL database behind Envoy's own load balancing: the
//! filter's `tally_collector` cluster is the shipped `deploy/replicas/collector-cluster.yaml`
//! (both replicas, health-checked on /readyz). One replica is killed (SIGKILL) mid-traffic:
//! every event the client's requests produced is stored, once, and the rollups count each
//! once, those the killed replica held in memory included.

mod common;

use common::{agent, collector_cli_ok, send, start_collector_with, wait_until, Options, Stack};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: u64 = 20;
const PROMPT: &str = "CANARY-PROMPT-7f3a-replicas";
const PROVIDER_KEY: &str = "sk-CANARY-KEY-91b2-replicas";

#[test]
fn a_replica_killed_mid_traffic_loses_no_event_and_counts_none_twice() {
    let pg = tally_testpg::TestPg::start();
    let url = pg.database("replicas");
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    // The data directory is not used: the store is the database.
    let unused = dir.path().join("unused");
    let key = collector_cli_ok(&unused, &["org", "create", "acme", "--database", &url]);
    let replica = |name: &'static str| {
        start_collector_with(
            &unused,
            0,
            &logs,
            name,
            &["--database", &url, "--replica", name],
        )
    };
    let (mut r1, p1) = replica("r1");
    let (r2, p2) = replica("r2");
    let cluster =
        std::fs::read_to_string(common::artifact("deploy/replicas/collector-cluster.yaml"))
            .expect("the shipped cluster")
            .replace("port_value: 9701", &format!("port_value: {p1}"))
            .replace("port_value: 9702", &format!("port_value: {p2}"));
    let indented: String = cluster
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("  {l}\n"))
        .collect();
    let stack = Stack::start_with(Options {
        start_collector: false,
        // The API is read from the replica that lives.
        collector_port: Some(p2),
        collector_cluster: Some("unused_collector".into()),
        extra_clusters: indented,
        org_key: Some(key.clone()),
        concurrency: 2,
        ..Options::default()
    });
    // Both replicas take batches before the kill.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (sent, stop, url) = (sent.clone(), stop.clone(), stack.url("/v1/chat/completions"));
            std::thread::spawn(move || {
                let agent = agent();
                let mut i = c;
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    // Canaries: a prompt and a provider key that must never be stored.
                    let req = agent
                        .post(&url)
                        .set("authorization", &format!("Bearer {PROVIDER_KEY}"))
                        .set("x-tally-user", &format!("rep-{}", i % USERS))
                        .set("x-mock-usage", "input=100,output=20");
                    let body = format!(
                        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
                    );
                    let (status, _, _) = send(req, Some(&body));
                    assert_eq!(status, 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 2;
                }
            })
        })
        .collect();
    let stored_by = |replica: &str| {
        tally_testpg::TestPg::value(
            &url,
            &format!("SELECT count(*) FROM events WHERE replica = '{replica}'"),
        )
    };
    wait_until(
        "both replicas to store events",
        Duration::from_secs(30),
        || stored_by("r1") > 0 && stored_by("r2") > 0,
    );
    std::thread::sleep(Duration::from_secs(2));
    r1.stop(); // SIGKILL: no shutdown, its rollup rows in memory lost with it
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 100, "{total} requests");
    // Every event, once (a batch r1 stored but could not answer for is sent again, to r2,
    // and found there a duplicate).
    let mut stored = 0;
    wait_until("every event stored", Duration::from_secs(60), || {
        stored = (0..USERS)
            .map(|u| {
                stack
                    .query_events(&format!("user=rep-{u}&limit=1000"))
                    .len() as u64
            })
            .sum();
        stored >= total
    });
    assert_eq!(stored, total);
    // The rollups count each once: r2 counts what r1 had not written (its lock is free).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let at = tally::time::format_rfc3339_ms;
    let path = format!(
        "/api/v1/summary?from={}&to={}",
        at(now - 86_400_000),
        at(now + 60_000)
    );
    let mut summary = serde_json::Value::Null;
    wait_until(
        "the rollups to count every event",
        Duration::from_secs(30),
        || {
            summary = stack.api(&path);
            summary["rows"][0]["requests"] == total
        },
    );
    assert_eq!(summary["rows"][0]["requests"], total, "{summary}");
    assert_eq!(stack.envoy_counter("wasmcustom.tally.events_dropped"), 0);
    // Neither the prompt, the provider key nor the org key is anywhere in the database or in
    // either replica's log.
    let dump = pg.dump("replicas");
    assert!(dump.contains("rep-0"), "the dump holds the events");
    let mut logs_text = String::new();
    for entry in std::fs::read_dir(&logs).expect("logs") {
        let path = entry.expect("log").path();
        logs_text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
    }
    for canary in [PROMPT, PROVIDER_KEY, key.as_str()] {
        assert!(!dump.contains(canary), "{canary} in the database");
        assert!(!logs_text.contains(canary), "{canary} in a replica's log");
    }
    // Readiness follows the database; liveness does not.
    let status = |path: &str| send(agent().get(&format!("http://127.0.0.1:{p2}{path}")), None).0;
    assert_eq!((status("/readyz"), status("/healthz")), (200, 200));
    pg.stop();
    assert_eq!((status("/readyz"), status("/healthz")), (503, 200));
    pg.start_again();
    wait_until("ready again", Duration::from_secs(30), || {
        status("/readyz") == 200
    });
    drop(r2);
}

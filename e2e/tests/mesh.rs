//! Spend by workload with no app changes, and org keys the proxy enforces, in real Envoy: a
//! bootstrap whose node metadata is what Istio's injector writes; a listener that requires
//! client certificates with SPIFFE IDs (a test CA made here); one Envoy for two orgs with a mesh
//! token; rotation, disabling and collector outages.

mod common;

use common::{agent, send, Options, Stack};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn chat(stack: &Stack, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("x-mock-usage", "input=10,output=3")];
    all.extend_from_slice(headers);
    stack.post_json(
        "/v1/chat/completions",
        &all,
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
}

/// The events of `feature` in the org of `key`, once there are `n`.
fn events_of(stack: &Stack, key: &str, feature: &str, n: usize) -> Vec<Value> {
    stack.wait_events_as(key, &format!("feature={feature}"), n)
}

#[test]
fn a_sidecar_knows_its_workload_from_node_metadata() {
    let stack = Stack::start_with(Options {
        // As Istio's injector writes it (a subset): strings, and the pod's labels as a map.
        node_metadata: Some(
            r#"{ NAMESPACE: payments, WORKLOAD_NAME: checkout-v2, SERVICE_ACCOUNT: checkout,
                 CLUSTER_ID: Kubernetes, MESH_ID: cluster.local,
                 LABELS: { app: checkout, "security.istio.io/tlsMode": istio } }"#
                .into(),
        ),
        filter_config: r#"{"flush_interval_ms": 100, "identity": {"trust_domain": "corp.example",
            "attribution": {"team": "namespace", "app": "label:app"}}}"#
            .into(),
        ..Options::default()
    });
    assert_eq!(chat(&stack, &[("x-tally-feature", "node")]).0, 200);
    assert_eq!(
        chat(
            &stack,
            &[("x-tally-feature", "node-team"), ("x-tally-team", "growth")]
        )
        .0,
        200
    );
    let ev = &events_of(&stack, &stack.key, "node", 1)[0];
    assert_eq!(ev["namespace"], "payments", "{ev}\n{}", stack.log_tails());
    assert_eq!(ev["workload"], "checkout-v2");
    assert_eq!(
        ev["principal"],
        "spiffe://corp.example/ns/payments/sa/checkout"
    );
    assert_eq!(ev["team"], "payments");
    assert_eq!(ev["app"], "checkout");
    // A request whose headers name a team keeps it.
    let ev = &events_of(&stack, &stack.key, "node-team", 1)[0];
    assert_eq!(ev["team"], "growth");
    assert_eq!(ev["app"], "checkout");
    assert_eq!(ev["namespace"], "payments");
    // The rollups group by it.
    let summary = stack.api("/api/v1/summary?group_by=namespace");
    let row = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "payments")
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["requests"], 2, "{summary}");
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate with a SPIFFE ID,
/// as PEM files in `dir`: (server cert, server key, CA, client cert, client key).
fn mesh_certs(dir: &std::path::Path, spiffe: &str) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    // Distinct names: a leaf named like its issuer looks self-signed to verifiers.
    let named = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = named("Tally test mesh CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = named("gateway");
    server.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let server = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = named("indexer");
    client.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
    let client = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    let files = [
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("ca.pem", ca_cert.pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

#[test]
fn a_gateway_knows_its_caller_from_the_peer_certificate() {
    let certs_dir = tempfile::tempdir().unwrap();
    let spiffe = "spiffe://cluster.local/ns/search/sa/indexer";
    let [cert, key, ca, client_cert, client_key] = mesh_certs(certs_dir.path(), spiffe);
    let stack = Stack::start_with(Options {
        listener_tls: Some((cert, key, ca.clone())),
        filter_config: r#"{"flush_interval_ms": 100, "identity": {"node": false,
            "peer_certificate": true, "attribution": {"team": "namespace"}}}"#
            .into(),
        ..Options::default()
    });
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", stack.envoy_port);
    let curl = |with_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                "x-tally-feature: peer",
            ])
            .args(["-H", "x-mock-usage: input=10,output=3"])
            .args(["--data", r#"{"model":"gpt-4o-mini","messages":[]}"#, &url]);
        if with_cert {
            c.arg("--cert")
                .arg(&client_cert)
                .arg("--key")
                .arg(&client_key);
        }
        let out = c.output().unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, err) = curl(true);
    assert_eq!(status, "200", "{err}\n{}", stack.log_tails());
    // The listener requires a client certificate: without one, no request at all.
    assert_eq!(curl(false).0, "000");
    let ev = &events_of(&stack, &stack.key, "peer", 1)[0];
    assert_eq!(ev["principal"], spiffe);
    assert_eq!(ev["namespace"], "search");
    assert_eq!(ev["team"], "search");
    assert_eq!(ev["workload"], Value::Null);
}

/// Two orgs through one Envoy with a mesh token: each request's event lands in its key's org,
/// and a missing or forged key gets the provider's 401 from the proxy.
fn two_org_stack(extra: &str) -> Stack {
    Stack::start_with(Options {
        token_orgs: vec!["globex"],
        org_key_env: false,
        filter_config: format!(
            r#"{{"flush_interval_ms": 100, "require_org_key": true, "controls_refresh_ms": 500{extra}}}"#
        ),
        ..Options::default()
    })
}

const FORGED: &str = "tly_ForgedForgedForgedForgedForgedForged1234";

/// Once a forged key is refused, the filter has the collector's key set.
fn wait_for_key_set(stack: &Stack) {
    wait_for_status(stack, FORGED, 401, Duration::from_secs(5));
}

fn wait_for_status(stack: &Stack, key: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, _) = chat(stack, &[("x-tally-key", key), ("x-tally-feature", "wait")]);
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {status} after {limit:?}, wanted {want}\n{}",
            stack.log_tails()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_envoy_for_two_orgs_refuses_missing_and_forged_keys() {
    let stack = two_org_stack("");
    let (acme, globex) = (stack.keys["acme"].clone(), stack.keys["globex"].clone());
    // The key set arrives within a refresh.
    wait_for_key_set(&stack);
    let before = stack.mock_requests().len();
    for (key, feature) in [(&acme, "org-a"), (&globex, "org-g"), (&globex, "org-g")] {
        assert_eq!(
            chat(
                &stack,
                &[("x-tally-key", key), ("x-tally-feature", feature)]
            )
            .0,
            200
        );
    }
    let forged = FORGED;
    let (status, body) = chat(&stack, &[("x-tally-feature", "nokey")]);
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key", "{body}");
    let (status, _) = chat(
        &stack,
        &[("x-tally-key", forged), ("x-tally-feature", "forged")],
    );
    assert_eq!(status, 401);
    // Anthropic's SDK gets Anthropic's error shape.
    let (status, body) = stack.post_json(
        "/v1/messages",
        &[],
        r#"{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[]}"#,
    );
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{body}");
    // A provider's other routes need a key too (here `GET /v1/models` to api.openai.com),
    // whether or not Tally meters them.
    let models = |key: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "host: api.openai.com",
        ]);
        if let Some(k) = key {
            c.args(["-H", &format!("x-tally-key: {k}")]);
        }
        c.arg(stack.url("/v1/models"));
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert_eq!(models(None), "401");
    assert_ne!(models(Some(&acme)), "401");
    // The provider never saw the refused requests, nor any org key.
    let seen = stack.mock_requests();
    // (The mock records the API calls it serves: the keyed models call is not among them.)
    assert_eq!(seen.len() - before, 3);
    assert!(!serde_json::to_string(&seen)
        .unwrap()
        .contains("x-tally-key"));

    let a = events_of(&stack, &acme, "org-a", 1);
    assert_eq!(a[0]["org_id"], "acme");
    assert_eq!(events_of(&stack, &acme, "org-g", 0).len(), 0);
    let g = events_of(&stack, &globex, "org-g", 2);
    assert!(g.iter().all(|e| e["org_id"] == "globex"));
    assert_eq!(events_of(&stack, &globex, "org-a", 0).len(), 0);
    // Refused requests made no event, in any org; they are counted.
    assert_eq!(events_of(&stack, &acme, "nokey", 0).len(), 0);
    assert_eq!(events_of(&stack, &globex, "forged", 0).len(), 0);
    // Four here, and the forged keys that waited for the key set.
    assert!(stack.wait_stat("wasmcustom.tally.requests_refused_key", |v| v >= 5) >= 5);

    // No key, in clear, anywhere: logs, Envoy's stats and config dump, the collector's files.
    let (_, stats, _) = send(agent().get(&stack.admin_url("/stats")), None);
    let (_, dump, _) = send(agent().get(&stack.admin_url("/config_dump")), None);
    let mut haystack = stats + &dump + &stack.log_tails();
    for dir in [stack.logs_dir(), stack.data_dir()] {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            haystack.push_str(&String::from_utf8_lossy(
                &std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    for secret in [&acme, &globex, forged, stack.token.as_deref().unwrap()] {
        assert!(!haystack.contains(secret), "a key in clear");
    }
}

#[test]
fn rotated_and_disabled_keys_are_refused_within_the_refresh() {
    let stack = two_org_stack("");
    let (acme, globex) = (stack.keys["acme"].clone(), stack.keys["globex"].clone());
    wait_for_key_set(&stack);
    assert_eq!(chat(&stack, &[("x-tally-key", &acme)]).0, 200);
    let cli = |args: &[&str]| common::collector_cli_ok(&stack.data_dir(), args);
    // controls_refresh_ms is 500: the bound is 1.5 s.
    let bound = Duration::from_millis(1500);
    let new_acme = cli(&["org", "rotate-key", "acme"]);
    let rotated = wait_for_status(&stack, &acme, 401, Duration::from_secs(10));
    let accepted = wait_for_status(&stack, &new_acme, 200, Duration::from_secs(10));
    cli(&["org", "disable", "globex"]);
    let disabled = wait_for_status(&stack, &globex, 401, Duration::from_secs(10));
    eprintln!(
        "refresh 500 ms: rotated key refused after {rotated:?}, new key accepted after \
         {accepted:?} more, disabled org's key refused after {disabled:?}"
    );
    assert!(
        rotated <= bound && disabled <= bound,
        "{rotated:?} {disabled:?}"
    );
    // A revoked mesh token: the collector refuses the filter itself, every VM drops its key set
    // (which may be stale from then on), and key_set_missing (pass) decides.
    cli(&["token", "revoke", "tally-test"]);
    let revoked = wait_for_status(&stack, FORGED, 200, Duration::from_secs(10));
    eprintln!("token revoked: key set dropped after {revoked:?}");
    assert!(revoked <= bound, "{revoked:?}");
}

#[test]
fn a_collector_outage_keeps_valid_traffic_flowing() {
    let mut stack = two_org_stack("");
    let acme = stack.keys["acme"].clone();
    wait_for_key_set(&stack);
    if let Some(c) = stack.collector.as_mut() {
        c.stop();
    }
    let forged = FORGED;
    // Several refresh intervals without a collector: the last key set stays.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert_eq!(chat(&stack, &[("x-tally-key", &acme)]).0, 200);
        assert_eq!(chat(&stack, &[("x-tally-key", forged)]).0, 401);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stack.wait_stat("wasmcustom.tally.controls_failed", |v| v >= 2) >= 2);
}

#[test]
fn before_any_key_set_the_policy_decides() {
    for (policy, want) in [("", 200), (r#", "key_set_missing": "refuse""#, 401)] {
        let stack = Stack::start_with(Options {
            token_orgs: vec!["globex"],
            org_key_env: false,
            // No collector answers: the filter never gets a key set.
            start_collector: false,
            filter_config: format!(
                r#"{{"flush_interval_ms": 100, "require_org_key": true, "controls_refresh_ms": 200{policy}}}"#
            ),
            ..Options::default()
        });
        let acme = stack.keys["acme"].clone();
        std::thread::sleep(Duration::from_millis(600));
        for _ in 0..3 {
            assert_eq!(chat(&stack, &[("x-tally-key", &acme)]).0, want, "{policy}");
        }
        if want == 200 {
            // Passed, unmetered and counted.
            assert_eq!(
                stack.wait_stat("wasmcustom.tally.requests_unattributed", |v| v >= 3),
                3
            );
        }
    }
}

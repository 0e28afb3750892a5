//! What `deploy/` ships, loaded by the real programs: each WasmPlugin's and
//! EnvoyExtensionPolicy's filter configuration runs in Envoy and meters a request through the
//! collector cluster it names (Istio's generated name included); the cluster that the
//! EnvoyPatchPolicy adds passes Envoy's validation; and every shipped configuration fails open.
//! (Schemas are checked by `e2e/deploy/validate.py`.)

mod common;

use common::{envoy_bin, root, Options, Stack};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every document of every YAML file under `deploy/<dir>`, with its file.
fn documents(dir: &str) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("deploy").join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.clone(), v));
            }
        }
    }
    docs
}

/// The filter configurations shipped: (where, JSON config, the Envoy it is for).
fn filter_configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, doc) in documents("istio") {
        if doc["kind"] == "WasmPlugin" {
            let spec = &doc["spec"];
            let at = format!("{} {}", file.display(), doc["metadata"]["name"]);
            assert_eq!(spec["failStrategy"], "FAIL_OPEN", "{at}: must fail open");
            assert_eq!(spec["pluginName"], "tally", "{at}: the module's root id");
            assert_eq!(
                spec["vmConfig"]["env"],
                json!([{"name": "TALLY_ORG_KEY", "valueFrom": "HOST"}]),
                "{at}: the key comes from the proxy's environment, never the manifest"
            );
            if spec.get("selector").is_some() {
                // Sidecars and gateways: outbound only (without it, inbound traffic too).
                assert_eq!(spec["match"][0]["mode"], "CLIENT", "{at}");
            }
            out.push((at, spec["pluginConfig"].clone()));
        }
    }
    for (file, doc) in documents("envoy-gateway") {
        if doc["kind"] == "EnvoyExtensionPolicy" {
            for w in doc["spec"]["wasm"].as_array().unwrap() {
                let at = format!("{} {}", file.display(), w["name"]);
                assert_eq!(w["failOpen"], true, "{at}: must fail open");
                assert_eq!(w["rootID"], "tally", "{at}");
                assert_eq!(w["env"]["hostKeys"], json!(["TALLY_ORG_KEY"]), "{at}");
                out.push((at, w["config"].clone()));
            }
        }
    }
    out
}

#[test]
fn every_shipped_filter_config_meters_through_the_cluster_it_names() {
    let configs = filter_configs();
    // Sidecar, egress gateway, waypoint, Envoy Gateway.
    assert_eq!(configs.len(), 4, "{configs:#?}");
    for (at, config) in configs {
        let cluster = config["collector_cluster"].as_str().unwrap().to_string();
        // Istio hands the plugin its pluginConfig as JSON text (a StringValue), Envoy Gateway
        // its config the same way: the filter parses exactly this.
        let stack = Stack::start_with(Options {
            filter_config: config.to_string(),
            collector_cluster: Some(cluster.clone()),
            ..Options::default()
        });
        let (status, _) = stack.post_json(
            "/v1/chat/completions",
            &[
                ("x-tally-feature", "deploy"),
                ("x-mock-usage", "input=9,output=2"),
            ],
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
        );
        assert_eq!(status, 200, "{at}");
        // Batches leave within the configured flush interval, on the cluster of that name.
        let ev = stack.wait_events("feature=deploy", 1);
        assert_eq!(ev[0]["input_tokens"], 9, "{at}");
        assert_eq!(
            stack.envoy_counter(&format!("cluster.{cluster}.upstream_rq_202")),
            1,
            "{at}: the batch went through {cluster}"
        );
    }
}

fn validate_bootstrap(dir: &Path, bootstrap: &Value) -> (bool, String) {
    let f = dir.join("bootstrap.json");
    std::fs::write(&f, bootstrap.to_string()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_collector_cluster_envoy_gateway_adds_is_valid_envoy_config() {
    let dir = tempfile::tempdir().unwrap();
    let patches: Vec<Value> = documents("envoy-gateway")
        .into_iter()
        .filter(|(_, d)| d["kind"] == "EnvoyPatchPolicy")
        .flat_map(|(_, d)| d["spec"]["jsonPatches"].as_array().unwrap().clone())
        .collect();
    assert_eq!(patches.len(), 1);
    let cluster = &patches[0]["operation"]["value"];
    assert_eq!(patches[0]["operation"]["op"], "add");
    assert_eq!(patches[0]["name"], cluster["name"]);
    // The name the EnvoyExtensionPolicy's config uses.
    let configs = filter_configs();
    assert!(configs
        .iter()
        .any(|(_, c)| c["collector_cluster"] == cluster["name"]));
    // Envoy reads the CA file: the one the EnvoyProxy mounts, stood in for by a real bundle.
    let mut cluster = cluster.clone();
    let tls = &mut cluster["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(
        tls["validation_context"]["trusted_ca"]["filename"],
        "/etc/tally/ca.crt"
    );
    let ca = dir.path().join("ca.crt");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &ca).unwrap();
    tls["validation_context"]["trusted_ca"]["filename"] = json!(ca);
    let (ok, log) = validate_bootstrap(
        dir.path(),
        &json!({"static_resources": {"clusters": [cluster]}}),
    );
    assert!(ok, "{log}");
    // The check is real: a field Envoy does not know fails it.
    let mut bad = cluster.clone();
    bad["load_assignment"]["endpoints"][0]["lb_endpointz"] = json!([]);
    let (ok, _) = validate_bootstrap(
        dir.path(),
        &json!({"static_resources": {"clusters": [bad]}}),
    );
    assert!(!ok);
}

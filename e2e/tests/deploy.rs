//! What `deploy/` ships, loaded by the real programs: each WasmPlugin's and
//! EnvoyExtensionPolicy's filter configuration runs in Envoy and meters a request through the
//! collector cluster it names (Istio's generated name included); the cluster that the
//! EnvoyPatchPolicy adds passes Envoy's validation; and every shipped wasm configuration fails
//! open. The native module's Envoy Gateway example (`deploy/envoy-gateway/native/`) loads the
//! module from the image its Dockerfile builds, on the Envoy the module is built for, with a key
//! it cannot start without. (Schemas are checked by `e2e/deploy/validate.py`.)

mod common;

use common::{envoy_bin, root, Options, Stack};
use serde_json::{json, Value};
use std::collections::BTreeSet;
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
            let before = out.len();
            for w in doc["spec"]["wasm"].as_array().into_iter().flatten() {
                let at = format!("{} {}", file.display(), w["name"]);
                assert_eq!(w["failOpen"], true, "{at}: must fail open");
                assert_eq!(w["rootID"], "tally", "{at}");
                assert_eq!(w["env"]["hostKeys"], json!(["TALLY_ORG_KEY"]), "{at}");
                out.push((at, w["config"].clone()));
            }
            // The native module: Envoy Gateway has no failOpen nor hostKeys for it (see
            // envoy_gateway_loads_the_native_module_from_its_image_with_a_required_key).
            for m in doc["spec"]["dynamicModule"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let at = format!("{} {}", file.display(), m["name"]);
                assert_eq!(m["filterName"], "tally", "{at}");
                assert_eq!(
                    m["terminalFilter"], false,
                    "{at}: the router sends the request on"
                );
                for secret in ["org_key", "collector_token"] {
                    assert!(
                        m["config"].get(secret).is_none(),
                        "{at}: the key comes from the proxy's environment, never the manifest"
                    );
                }
                out.push((at, m["config"].clone()));
            }
            assert!(
                out.len() > before,
                "{} {}: no Tally filter",
                file.display(),
                doc["metadata"]["name"]
            );
        }
    }
    out
}

#[test]
fn every_shipped_filter_config_meters_through_the_cluster_it_names() {
    let configs = filter_configs();
    // Sidecar, egress gateway, waypoint, Envoy Gateway (the wasm filter and the native module).
    assert_eq!(configs.len(), 5, "{configs:#?}");
    for (at, config) in configs {
        let cluster = config["collector_cluster"].as_str().unwrap().to_string();
        // Istio hands the plugin its pluginConfig as JSON text (a StringValue), Envoy Gateway
        // its config the same way, to the wasm filter and to the native module alike: the filter
        // parses exactly this. The stack runs the suite's build (TALLY_BUILD), the same parser.
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
    let docs = documents("envoy-gateway");
    let policies: Vec<&(PathBuf, Value)> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "EnvoyPatchPolicy")
        .collect();
    // Each example (tally.yaml, the wasm filter; native/, the module) carries the policy beside
    // its EnvoyExtensionPolicy: one object, the same in both, whichever is applied.
    let files = |kind: &str| {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(f, _)| f)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(files("EnvoyPatchPolicy"), files("EnvoyExtensionPolicy"));
    let (first, policy) = policies[0];
    for (file, copy) in &policies {
        assert_eq!(
            copy,
            policy,
            "{}: a copy of {}'s",
            file.display(),
            first.display()
        );
    }
    let patches: Vec<Value> = policy["spec"]["jsonPatches"].as_array().unwrap().clone();
    assert_eq!(patches.len(), 1);
    let cluster = &patches[0]["operation"]["value"];
    assert_eq!(patches[0]["operation"]["op"], "add");
    assert_eq!(patches[0]["name"], cluster["name"]);
    // The name the EnvoyExtensionPolicy's config uses.
    let configs = filter_configs();
    assert!(configs
        .iter()
        .any(|(_, c)| c["collector_cluster"] == cluster["name"]));
    for (at, c) in configs
        .iter()
        .filter(|(at, _)| at.contains("envoy-gateway"))
    {
        assert_eq!(c["collector_cluster"], cluster["name"], "{at}");
    }
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

/// Envoy Gateway's pattern for module names: `^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`.
fn is_module_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// The native module under Envoy Gateway: each EnvoyExtensionPolicy's module is registered by the
/// Gateway's EnvoyProxy, at the path where the Dockerfile beside it puts the module, in an image
/// of the Envoy the module is built for (the Makefile's ENVOY_VERSION: a module runs on its own
/// Envoy build only). The key comes from the wasm example's Secret and is required: a
/// configuration the module refuses makes Envoy refuse the listener, where the wasm filter fails
/// open. Otherwise that EnvoyProxy is the wasm example's.
#[test]
fn envoy_gateway_loads_the_native_module_from_its_image_with_a_required_key() {
    let docs = documents("envoy-gateway");
    let proxies: Vec<&(PathBuf, Value)> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "EnvoyProxy")
        .collect();
    fn container(proxy: &mut Value) -> &mut Value {
        &mut proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    }
    fn key_ref(proxy: &mut Value) -> &mut Value {
        let env = container(proxy)["env"].as_array_mut().expect("env");
        let key = env.iter_mut().find(|e| e["name"] == "TALLY_ORG_KEY");
        &mut key.expect("TALLY_ORG_KEY")["valueFrom"]["secretKeyRef"]
    }
    let (_, wasm_proxy) = proxies
        .iter()
        .copied()
        .find(|(_, p)| p["spec"].get("dynamicModules").is_none())
        .expect("the wasm example's EnvoyProxy");
    let wasm_key = key_ref(&mut wasm_proxy.clone()).clone();
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let envoy_version = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION := "))
        .expect("ENVOY_VERSION in the Makefile")
        .trim();
    let mut modules = 0;
    for (file, doc) in &docs {
        for m in doc["spec"]["dynamicModule"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let at = format!("{} {}", file.display(), m["name"]);
            let name = m["name"].as_str().expect("name");
            assert!(is_module_name(name), "{at}: Envoy Gateway's name pattern");
            // Envoy Gateway refuses a policy whose module no EnvoyProxy registers.
            let registered: Vec<(&PathBuf, &Value, &Value)> = proxies
                .iter()
                .filter_map(|(f, p)| {
                    let registry = p["spec"]["dynamicModules"].as_array()?;
                    Some((f, p, registry.iter().find(|e| e["name"] == name)?))
                })
                .collect();
            assert_eq!(registered.len(), 1, "{at}: registered by one EnvoyProxy");
            let (proxy_file, proxy, entry) = registered[0];
            assert!(
                docs.iter().any(|(_, g)| g["kind"] == "Gateway"
                    && g["spec"]["infrastructure"]["parametersRef"]["name"]
                        == proxy["metadata"]["name"]),
                "{at}: the Gateway runs that EnvoyProxy"
            );
            assert_eq!(entry["source"]["type"], "Local", "{at}");
            let path = entry["source"]["local"]["path"].as_str().expect("path");
            assert!(path.starts_with('/'), "{at}: an absolute path");
            // As envoy-native.yaml's do_not_close: queued events outlive a configuration.
            assert_eq!(entry["doNotClose"], true, "{at}");

            // The image: the Dockerfile beside the EnvoyProxy, on the Envoy the module is built
            // for, puts the module built by `make build-native` at that path, and its ignore
            // file lets that module into the context (the repository's leaves target/ out).
            let dir = proxy_file.parent().unwrap();
            let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
            let instructions: Vec<&str> = dockerfile
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let module = "target/release/libtally_envoy.so";
            assert_eq!(
                instructions,
                [
                    format!("FROM docker.io/envoyproxy/envoy:distroless-v{envoy_version}"),
                    format!("COPY {module} {path}"),
                ],
                "{at}"
            );
            let ignore = std::fs::read_to_string(dir.join("Dockerfile.dockerignore")).unwrap();
            assert!(
                ignore.lines().any(|l| l.strip_prefix('!') == Some(module)),
                "{at}"
            );

            // The Envoy container: that image, not Envoy Gateway's default Envoy.
            let mut proxy = proxy.clone();
            assert!(container(&mut proxy)["image"].is_string(), "{at}");
            // The wasm example's Secret, but required.
            let key = key_ref(&mut proxy);
            assert_eq!(key["name"], wasm_key["name"], "{at}");
            assert_eq!(key["key"], wasm_key["key"], "{at}");
            assert_eq!(
                key["optional"], false,
                "{at}: without its key the module refuses its configuration, and Envoy the listener"
            );
            // All else: the wasm example's EnvoyProxy (same name: one replaces the other).
            let mut expected = wasm_proxy.clone();
            expected["spec"]["dynamicModules"] = proxy["spec"]["dynamicModules"].clone();
            container(&mut expected)["image"] = container(&mut proxy)["image"].clone();
            *key_ref(&mut expected) = key_ref(&mut proxy).clone();
            assert_eq!(proxy, expected, "{at}: otherwise envoyproxy.yaml's");
            modules += 1;
        }
    }
    // deploy/envoy-gateway/native/tally-native.yaml's.
    assert_eq!(modules, 1);
}

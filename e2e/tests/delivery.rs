//! The filter delivered as control planes deliver it: an OCI image through a real registry
//! (Debian's `docker-registry`, read back by `skopeo`), remote code fetched by Envoy from the
//! registry's blob URL, and new versions pushed by extension config discovery (ECDS, how Istio
//! delivers a WasmPlugin) while traffic flows.

mod common;

use common::{agent, artifact, free_port, local_code, root, spawn, wait_until, Options, Stack};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WASM: &str = "target/wasm32-wasip1/release/tally.wasm";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn tool(name: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| panic!("{name} is missing: `make test` installs it (apt-get)"))
}

/// Debian's docker-registry on a loopback port, its storage in a temporary directory.
struct Registry {
    port: u16,
    _proc: common::Proc,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let mut proc = spawn(
            "registry",
            Command::new(tool("docker-registry"))
                .arg("serve")
                .arg(&config),
            dir,
        );
        wait_until("the registry", Duration::from_secs(15), || {
            assert!(
                proc.alive(),
                "docker-registry exited; see {}",
                dir.display()
            );
            agent()
                .get(&format!("http://127.0.0.1:{port}/v2/"))
                .call()
                .is_ok()
        });
        Registry { port, _proc: proc }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `scripts/oci.py build` into `out`, then `push` to `registry`/tally:TAG: the digests pushed,
/// (compat image, wasm artifact).
fn build_and_push(out: &Path, registry: &Registry, tag: &str) -> (String, String) {
    let run = |args: &[&str]| {
        let o = Command::new("python3")
            .current_dir(root())
            .arg("scripts/oci.py")
            .args(args)
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "oci.py {args:?}: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    };
    let out_s = out.to_str().unwrap();
    run(&["build", "--wasm", WASM, "--out", out_s, "--tag", tag]);
    let pushed = run(&[
        "push",
        &format!("{}/tally:{tag}", registry.host()),
        "--layout",
        out_s,
    ]);
    let digest = |line_tag: &str| {
        pushed
            .lines()
            .find(|l| l.contains(&format!("tally:{line_tag} ")))
            .and_then(|l| l.split('@').nth(1))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no digest for {line_tag} in {pushed}"))
    };
    (digest(tag), digest(&format!("{tag}-wasm")))
}

/// Copy an image by digest from the registry with skopeo (an independent client) into a
/// directory: the manifest and its blobs, named by their hex digest.
fn skopeo_pull(registry: &Registry, digest: &str, dest: &Path) -> Value {
    let out = Command::new(tool("skopeo"))
        .args(["copy", "--src-tls-verify=false", "--quiet"])
        .arg(format!("docker://{}/tally@{digest}", registry.host()))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest)), digest);
    serde_json::from_slice(&manifest).unwrap()
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(digest.trim_start_matches("sha256:"))).unwrap();
    assert_eq!(sha256_hex(&bytes), digest.trim_start_matches("sha256:"));
    bytes
}

#[test]
fn oci_image_survives_a_real_registry_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(artifact(WASM)).unwrap();
    let registry = Registry::start(dir.path());
    let (compat, wasm_artifact) = build_and_push(&dir.path().join("oci"), &registry, "t1");

    // skopeo reads the layout as written, too: the format is standard, not ours.
    let out = Command::new(tool("skopeo"))
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:t1", dir.path().join("oci").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(format!("sha256:{}", sha256_hex(&out.stdout)), compat);

    // The compat image, read as Istio's and Envoy Gateway's fetchers read it: the last layer is
    // a tar.gz whose plugin.wasm is the module.
    let pulled = dir.path().join("compat");
    let m = skopeo_pull(&registry, &compat, &pulled);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let layers = m["layers"].as_array().unwrap();
    let last = layers.last().unwrap();
    assert_eq!(
        last["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let gz = blob(&pulled, last["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let entry = tar_entry(&tar, "plugin.wasm").expect("plugin.wasm in the layer");
    assert_eq!(sha256_hex(entry), sha256_hex(&wasm));

    // The wasm artifact: the module is a layer of its own, its blob the raw bytes.
    let pulled = dir.path().join("artifact");
    let m = skopeo_pull(&registry, &wasm_artifact, &pulled);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    // As Istio's fetcher reads this shape: exactly two layers, one of them the raw module.
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let layer = layers
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm")
        .expect("the module's layer");
    assert_eq!(
        sha256_hex(&blob(&pulled, layer["digest"].as_str().unwrap())),
        sha256_hex(&wasm)
    );

    // Building again gives the same bytes: the image is reproducible.
    let o = Command::new("python3")
        .current_dir(root())
        .args([
            "scripts/oci.py",
            "build",
            "--wasm",
            WASM,
            "--tag",
            "t1",
            "--out",
        ])
        .arg(dir.path().join("oci2"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let index = |d: &str| std::fs::read(dir.path().join(d).join("index.json")).unwrap();
    assert_eq!(index("oci"), index("oci2"));
}

/// The bytes of the regular file `name` in a tar archive (ustar, PAX headers skipped).
fn tar_entry<'a>(tar: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let field = |from: usize, len: usize| {
            let f = &header[from..from + len];
            let end = f.iter().position(|&b| b == 0).unwrap_or(len);
            String::from_utf8_lossy(&f[..end]).trim().to_string()
        };
        let size = usize::from_str_radix(&field(124, 12), 8).ok()?;
        let (kind, entry_name) = (header[156], field(0, 100));
        let data = tar.get(at + 512..at + 512 + size)?;
        if (kind == b'0' || kind == 0) && entry_name == name {
            return Some(data);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}

/// `code` that fetches the module over HTTP from the registry cluster.
fn remote_code(uri: &str, sha256: &str) -> String {
    format!(
        r#"{{ remote: {{ http_uri: {{ uri: "{uri}", cluster: registry, timeout: 10s }}, sha256: "{sha256}", retry_policy: {{ num_retries: 1 }} }} }}"#
    )
}

fn registry_cluster(port: u16) -> String {
    format!(
        r#"
  - name: registry
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: registry
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}"#
    )
}

fn chat(stack: &Stack, feature: &str, delay_ms: u32) -> u16 {
    let delay = delay_ms.to_string();
    let headers = [
        ("x-tally-feature", feature),
        ("x-mock-usage", "input=11,output=4"),
        ("x-mock-delay-ms", delay.as_str()),
    ];
    stack
        .post_json(
            "/v1/chat/completions",
            &headers,
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .0
}

#[test]
fn envoy_loads_the_filter_from_a_registry_blob_url() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(artifact(WASM)).unwrap();
    let registry = Registry::start(dir.path());
    build_and_push(&dir.path().join("oci"), &registry, "remote");
    let sha = sha256_hex(&wasm);
    let uri = format!(
        "http://127.0.0.1:{}/v2/tally/blobs/sha256:{sha}",
        registry.port
    );
    let stack = Stack::start_with(Options {
        code: Some(remote_code(&uri, &sha)),
        extra_clusters: registry_cluster(registry.port),
        ..Options::default()
    });
    for _ in 0..3 {
        assert_eq!(chat(&stack, "remote", 0), 200);
    }
    let events = stack.wait_events("feature=remote", 3);
    assert!(events
        .iter()
        .all(|e| e["input_tokens"] == 11 && e["output_tokens"] == 4));
}

/// A module that cannot be fetched or whose digest is wrong: Envoy logs that the plugin failed
/// to load, the listener still comes up, and with `failure_policy: FAIL_OPEN` every request
/// passes to the provider unmetered (with FAIL_CLOSED, Envoy would answer 503 to all of them).
#[test]
fn a_module_that_cannot_load_lets_traffic_pass() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    build_and_push(&dir.path().join("oci"), &registry, "broken");
    let sha = sha256_hex(&std::fs::read(artifact(WASM)).unwrap());
    let zeros = "0".repeat(64);
    let blob_url = |d: &str| {
        format!(
            "http://127.0.0.1:{}/v2/tally/blobs/sha256:{d}",
            registry.port
        )
    };
    let nobody = free_port();
    let cases = [
        ("wrong digest", blob_url(&sha), zeros.clone(), registry.port),
        (
            "missing module",
            blob_url(&zeros),
            zeros.clone(),
            registry.port,
        ),
        ("registry unreachable", blob_url(&sha), sha.clone(), nobody),
    ];
    for (what, uri, digest, port) in cases {
        let stack = Stack::start_with(Options {
            code: Some(remote_code(&uri, &digest)),
            extra_clusters: registry_cluster(port),
            ..Options::default()
        });
        // The fetch and its retries end after the listener is up (requests meanwhile pass).
        let log = stack.logs_dir().join("envoy.stderr.log");
        wait_until(
            &format!("{what}: the load to fail"),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Plugin tally failed to load")
            },
        );
        for _ in 0..3 {
            assert_eq!(chat(&stack, "unloaded", 0), 200, "{what}");
        }
        assert_eq!(
            stack.mock_requests().len(),
            3,
            "{what}: every request reached the provider"
        );
        // Nothing was metered: no VM runs.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(stack.query_events("feature=unloaded").len(), 0, "{what}");
        assert_eq!(stack.envoy_counter("wasmcustom.tally.vms"), 0, "{what}");
    }
}

/// The same module with a custom section appended: other bytes, so Envoy starts a new VM for
/// it, as it would for a new release.
fn another_version(wasm: &[u8], label: &str) -> Vec<u8> {
    let name = b"tally-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(label.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// Move a new ECDS file into place, as a control plane's agent does (Envoy watches the path).
fn publish(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Istio pushes a WasmPlugin by ECDS. While clients keep streaming, the filter's configuration
/// changes (same module: same VM, new root context) and then its module changes twice (new
/// VMs): no request fails, and every request's event reaches the collector, those whose VM or
/// root context was replaced while they streamed included.
#[test]
fn ecds_updates_while_traffic_flows_fail_nothing_and_lose_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(artifact(WASM)).unwrap();
    let v2 = dir.path().join("tally-v2.wasm");
    let v3 = dir.path().join("tally-v3.wasm");
    std::fs::write(&v2, another_version(&wasm, "2")).unwrap();
    std::fs::write(&v3, another_version(&wasm, "3")).unwrap();
    let ecds = dir.path().join("tally-ecds.yaml");
    let local = local_code(&artifact(WASM));
    // A long flush interval: events wait in the VM, so a lost VM would lose them.
    publish(
        &ecds,
        &common::ecds_resource(
            r#"{"flush_interval_ms": 3000, "call_timeout_ms": 1000}"#,
            &local,
        ),
    );
    let stack = Arc::new(Stack::start_with(Options {
        ecds_file: Some(ecds.clone()),
        concurrency: 2,
        ..Options::default()
    }));
    let updates =
        || stack.envoy_counter("extension_config_discovery.http_filter.tally.config_reload");
    wait_until("the first ECDS config", Duration::from_secs(15), || {
        updates() >= 1
    });

    let running = Arc::new(AtomicBool::new(true));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stack, running, statuses) = (stack.clone(), running.clone(), statuses.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                // Streams of about 200 ms (the mock waits 40 ms between chunks) and quick calls.
                while running.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                    let s = chat(&stack, "ecds", if i % 2 == 0 { 40 } else { 0 });
                    statuses.lock().unwrap().push(s);
                }
            })
        })
        .collect();
    let steps = [
        common::ecds_resource(
            r#"{"flush_interval_ms": 2500, "call_timeout_ms": 1000}"#,
            &local,
        ),
        common::ecds_resource(
            r#"{"flush_interval_ms": 3000, "call_timeout_ms": 1000}"#,
            &local_code(&v2),
        ),
        common::ecds_resource(
            r#"{"flush_interval_ms": 3000, "call_timeout_ms": 1000}"#,
            &local_code(&v3),
        ),
    ];
    for (n, step) in steps.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(1500));
        publish(&ecds, step);
        wait_until("the ECDS update", Duration::from_secs(15), || {
            updates() >= n as u64 + 2
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let sent = statuses.len();
    assert!(sent > 50, "only {sent} requests");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        stack.envoy_counter("extension_config_discovery.http_filter.tally.config_fail"),
        0
    );
    // Every request's event, exactly once (the filter's own retries are idempotent).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stored = 0;
    while Instant::now() < deadline {
        let summary = stack.api("/api/v1/summary?group_by=feature");
        stored = summary["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == "ecds"))
            .and_then(|r| r["requests"].as_u64())
            .unwrap_or(0);
        if stored >= sent as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let handed = stack.envoy_counter("wasmcustom.tally.events_handed_over");
    let adopted = stack.envoy_counter("wasmcustom.tally.events_adopted");
    eprintln!(
        "ECDS: {sent} requests during 3 updates, {stored} events stored; \
         {handed} events handed over by stopping VMs, {adopted} taken over by running ones"
    );
    assert_eq!(stored, sent as u64, "{}", stack.log_tails());
    // The replaced VMs were torn down with events waiting: the hand-over is what saved them.
    assert!(adopted > 0 && handed >= adopted, "{handed} {adopted}");
}

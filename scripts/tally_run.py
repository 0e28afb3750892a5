#!/usr/bin/env python3
"""`make run` and `make demo`: start the collector and a real Envoy with the Tally filter.

run:  Envoy routes to the real OpenAI, Anthropic and Gemini APIs (envoy.yaml as shipped).
demo: the same filter and listener, but the provider clusters point at the offline mock provider,
      and a little synthetic traffic is sent so that events show up at once.

Everything runs in the foreground. Ctrl-C (or SIGTERM, or SIGHUP) stops every process this script
started, by PID: SIGTERM, then SIGKILL for any still running after 5 s; the script then says
"stopped" and exits 0. A process that exits on its own is reported, the others are stopped, and
the script exits 1.

Ctrl-C in a terminal signals the whole foreground process group, make included. GNU make, once
signalled, waits for its recipe and then kills itself with the same signal, so `make demo` would
end with status 130 however cleanly the recipe stopped. So, when it runs in a terminal's
foreground, the script moves itself (and so its children) to a process group of its own and makes
that group the terminal's foreground: Ctrl-C then reaches the script and its children only, and
make sees a clean exit. The terminal is given back before the script exits. Ctrl-Z is ignored
(it would stop the script's group with the terminal still held by it).

Ports and folders can be moved with environment variables, e.g. to run a second instance beside
`make run` (the tests do): TALLY_COLLECTOR_PORT (9700), TALLY_LISTENER_PORT (10000),
TALLY_ADMIN_PORT (9901), TALLY_MOCK_PORT (9800), TALLY_DATA_DIR (data/) and TALLY_RUN_DIR (.run/:
logs, the org key, the dashboard password, generated Envoy configs).

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
STATE = os.path.abspath(os.environ.get("TALLY_RUN_DIR") or os.path.join(ROOT, ".run"))
DATA = os.path.abspath(os.environ.get("TALLY_DATA_DIR") or os.path.join(ROOT, "data"))
COLLECTOR = os.path.join(ROOT, "target/release/tally-collector")
MOCK = os.path.join(ROOT, "target/release/tally-mock")
ENVOY = os.path.join(ROOT, ".venv/bin/envoy")
# The ports as shipped (envoy.yaml), and the variables that move them.
DEFAULT_PORTS = {"collector": 9700, "envoy listener": 10000, "envoy admin": 9901, "mock provider": 9800}
PORT_VARS = {"collector": "TALLY_COLLECTOR_PORT", "envoy listener": "TALLY_LISTENER_PORT",
             "envoy admin": "TALLY_ADMIN_PORT", "mock provider": "TALLY_MOCK_PORT"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_WAIT_SECONDS = 5

children = []


class Stop(Exception):
    """Raised by the signal handler: the user asked everything to stop."""


stopping = False  # set by the first stop signal; later ones are ignored while stopping
deferring = False  # a child is being started: the stop waits until it is in `children`
deferred = False


def on_stop_signal(signum, _frame):
    global stopping, deferred
    if stopping:
        return
    stopping = True
    if deferring:
        deferred = True
        return
    raise Stop(signal.Signals(signum).name)


def on_suspend_signal(_signum, _frame):
    print("tally: Ctrl-Z does not suspend this; Ctrl-C stops everything.", file=sys.stderr, flush=True)


def port_setting(name):
    var = PORT_VARS[name]
    value = os.environ.get(var)
    if not value:
        return DEFAULT_PORTS[name]
    if not value.isdigit() or not 0 < int(value) < 65536:
        print(f"tally: {var}={value!r} is not a port number", file=sys.stderr)
        sys.exit(2)
    return int(value)


PORTS = {name: port_setting(name) for name in DEFAULT_PORTS}
COLLECTOR_PORT = PORTS["collector"]
LISTENER_PORT = PORTS["envoy listener"]
ADMIN_PORT = PORTS["envoy admin"]
MOCK_PORT = PORTS["mock provider"]


def fail(msg):
    print(f"tally: {msg}", file=sys.stderr, flush=True)
    stop_all()
    sys.exit(1)


def shown(path):
    """A path as the banner and messages show it: relative to the repository when inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


class Terminal:
    """The terminal's foreground, taken for this script's own process group and given back (see
    the module's docstring)."""

    def __init__(self):
        self.fd = None
        self.foreground = None

    def take(self):
        try:
            fd = os.open("/dev/tty", os.O_RDWR)
        except OSError:
            return  # no controlling terminal: signals come from elsewhere, to whom they are sent
        try:
            foreground = os.tcgetpgrp(fd)
            if foreground != os.getpgrp() or os.getpgrp() == os.getpid():
                # In the background (the terminal's Ctrl-C does not reach us), or already a
                # group of our own (started by a shell with job control, not by make).
                raise OSError
            os.setpgid(0, 0)
        except OSError:
            os.close(fd)
            return
        self.fd, self.foreground = fd, foreground
        try:
            self._set_foreground(os.getpgrp())
        except OSError:
            os.setpgid(0, foreground)  # back where the terminal's Ctrl-C reaches us
            os.close(fd)
            self.fd = None
            return
        # Ctrl-Z would stop this group while it holds the terminal, and make's shell would not
        # know: ignored (children inherit that), with a word from the script.
        signal.signal(signal.SIGTSTP, signal.SIG_IGN)

    def _set_foreground(self, pgrp):
        # From the background, tcsetpgrp is allowed only with SIGTTOU ignored.
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self.fd, pgrp)
        finally:
            signal.signal(signal.SIGTTOU, previous)

    def give_back(self):
        if self.fd is None:
            return
        try:
            if os.tcgetpgrp(self.fd) == os.getpgrp():
                self._set_foreground(self.foreground)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def held(self):
        return self.fd is not None


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


def how_it_ended(proc):
    code = proc.returncode
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def died(proc):
    """Fail for a child that ended on its own; unless a stop signal arrives meanwhile (Ctrl-C
    reaches the children too, and one may end before this script's own handler has run)."""
    time.sleep(0.3)
    fail(f"{proc.name} {how_it_ended(proc)}; see {shown(proc.log_path)}")


def wait_for(url, proc, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            died(proc)
        if http(url)[0] == 200:
            return
        time.sleep(0.1)
    fail(f"{proc.name} not ready after {seconds}s; see {shown(proc.log_path)}")


def start(name, args, env=None):
    """Start a child and keep it in `children`; a stop signal meanwhile waits until it is kept."""
    global deferring
    log_path = os.path.join(STATE, f"{name}.log")
    with open(log_path, "ab") as log:
        deferring = True
        try:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
            proc.name, proc.log_path = name, log_path
            children.append(proc)
        finally:
            deferring = False
    if deferred:
        raise Stop("deferred")
    return proc


def stop_all():
    """SIGTERM to every child still running (newest first: Envoy before the collector), then
    SIGKILL to any still running after STOP_WAIT_SECONDS. How they end is not reported: during a
    stop, a child that got the terminal's Ctrl-C itself may exit with 0, 130 or -2."""
    global stopping
    stopping = True  # from here on, stop signals are ignored: this is bounded anyway
    for p in reversed(children):
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for p in reversed(children):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"tally: {p.name} still running {STOP_WAIT_SECONDS}s after SIGTERM: SIGKILL",
                  file=sys.stderr, flush=True)
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


def with_port(text, old, new):
    """`text` with the one address on 127.0.0.1:OLD moved to port NEW."""
    needle = f"address: 127.0.0.1, port_value: {old} }}"
    if text.count(needle) != 1:
        fail(f"envoy.yaml has no single address 127.0.0.1:{old} to move to port {new}")
    return text.replace(needle, f"address: 127.0.0.1, port_value: {new} }}")


def run_config():
    """envoy.yaml as shipped, or, when a port was moved, a copy with the ports moved."""
    shipped = os.path.join(ROOT, "envoy.yaml")
    moved = [name for name in ("collector", "envoy listener", "envoy admin")
             if PORTS[name] != DEFAULT_PORTS[name]]
    if not moved:
        return shipped
    with open(shipped) as f:
        text = f.read()
    for name in moved:
        text = with_port(text, DEFAULT_PORTS[name], PORTS[name])
    path = os.path.join(STATE, "envoy-run.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def demo_config():
    """envoy.yaml with the provider clusters replaced by plain-HTTP clusters to the mock."""
    with open(os.path.join(ROOT, "envoy.yaml")) as f:
        shipped = f.read()
    for name in ("envoy listener", "envoy admin"):
        if PORTS[name] != DEFAULT_PORTS[name]:
            shipped = with_port(shipped, DEFAULT_PORTS[name], PORTS[name])
    head, sep, _ = shipped.partition("\n  clusters:\n")
    if not sep:
        fail("envoy.yaml has no clusters section")
    clusters = []
    for name, port in [("openai", MOCK_PORT), ("anthropic", MOCK_PORT), ("gemini", MOCK_PORT),
                       ("tally_collector", COLLECTOR_PORT)]:
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
        status, _ = http(f"http://127.0.0.1:{LISTENER_PORT}{path}", json.dumps(body).encode(), headers,
                         timeout=10)
        sent += status is not None
    time.sleep(2.5)
    status, body = http(f"http://127.0.0.1:{COLLECTOR_PORT}/api/v1/events?limit=1000",
                        headers={"authorization": f"Bearer {key}"})
    count = len(json.loads(body)["events"]) if status == 200 else 0
    print(f"demo: sent {sent} requests through Envoy; the collector holds {count} events.", flush=True)


def main():
    demo = "--demo" in sys.argv[1:]
    terminal = Terminal()
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    try:
        try:
            terminal.take()
            run(demo, terminal)
        except Stop:
            stop_all()
            try:
                print(("\n" if sys.stdout.isatty() else "") + "tally: stopped.", flush=True)
            except OSError:
                pass  # the terminal is gone (SIGHUP)
        finally:
            stop_all()  # after a failure, or anything unforeseen
    finally:
        terminal.give_back()


def run(demo, terminal):
    os.makedirs(STATE, exist_ok=True)
    for path in (COLLECTOR, ENVOY) + ((MOCK,) if demo else ()):
        if not os.path.exists(path):
            fail(f"{path} is missing: run `make build`")
    names = [name for name in PORTS if demo or name != "mock provider"]
    busy = [f"{name} ({PORTS[name]})" for name in names if not port_free(PORTS[name])]
    if busy:
        fail("ports in use: " + ", ".join(busy) + ". Is another `make run` still running?"
             " (TALLY_COLLECTOR_PORT, TALLY_LISTENER_PORT, TALLY_ADMIN_PORT and TALLY_MOCK_PORT move them)")

    key = org_key()
    password = dashboard_login()

    collector = start("collector", [COLLECTOR, "serve", "--data-dir", DATA, "--listen",
                                    f"127.0.0.1:{COLLECTOR_PORT}"])
    wait_for(f"http://127.0.0.1:{COLLECTOR_PORT}/healthz", collector)
    if demo:
        mock = start("mock", [MOCK, "--listen", f"127.0.0.1:{MOCK_PORT}"])
        deadline = time.monotonic() + 15
        while not http(f"http://127.0.0.1:{MOCK_PORT}/__mock/requests")[0] and time.monotonic() < deadline:
            if mock.poll() is not None:
                died(mock)
            time.sleep(0.1)
    config = demo_config() if demo else run_config()
    env = dict(os.environ, TALLY_ORG_KEY=key)
    envoy = start("envoy", [ENVOY, "-c", config, "--disable-hot-restart", "--log-level", "info"], env=env)
    wait_for(f"http://127.0.0.1:{ADMIN_PORT}/ready", envoy)
    if terminal.held():
        signal.signal(signal.SIGTSTP, on_suspend_signal)

    state = shown(STATE)
    print(f"""
Tally is running{" (demo: offline, mock provider on 127.0.0.1:%d)" % MOCK_PORT if demo else ""}.

  Envoy listener   http://127.0.0.1:{LISTENER_PORT}   (OpenAI base_url .../v1, Anthropic base_url ...)
  Envoy admin      http://127.0.0.1:{ADMIN_PORT}/stats?filter=tally
  Dashboard        http://127.0.0.1:{COLLECTOR_PORT}/   sign in as {DASHBOARD_USER}, password {password or f"(see {state}/dashboard_password)"}
  Collector API    http://127.0.0.1:{COLLECTOR_PORT}/api/v1/events
  Org key          {key}
                   (also in {state}/org_key; use it as: Authorization: Bearer <key>)
  Logs             {state}/*.log   Data: {shown(DATA)}

  curl -s -H "Authorization: Bearer $(cat {state}/org_key)" http://127.0.0.1:{COLLECTOR_PORT}/api/v1/events

Ctrl-C stops everything.
""", flush=True)
    if demo:
        demo_traffic(key)
    while True:
        for p in children:
            if p.poll() is not None:
                died(p)
        time.sleep(0.5)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""docker-compose.yml, brought up for real with podman-compose and metering a request.

The compose file names public images, which cannot be pulled here, so local ones are swapped in
through its own variables (TALLY_*_IMAGE):
- the collector and the mock provider: the final stages of collector/Dockerfile, as written
  there, over the static binaries that its build stage makes (built here by `make
  test-containers` with the same cargo command);
- Envoy: the pinned binary of .venv, with the libraries it links (glibc only).

Containers share the loopback of a network namespace made for this run (an override file sets
their network to it): the compose file's fixed ports (10000, 9700, 9800) are then free whatever
else runs on the machine, and everything stays on 127.0.0.1. Needs root (ip netns), podman with runc, and
podman-compose (make test-containers installs them). KEEP=1 leaves the containers, images and
namespace in place, to look at a failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MUSL = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release")
VENV = os.path.join(ROOT, ".venv")
NS = f"tally-ct-{os.getpid()}"
PROJECT = f"tallyct{os.getpid()}"
TAG = f"ct{os.getpid()}"
CANARY = "CANARY-compose-prompt-7f3a"


def run(cmd, env=None, ns=False, check=True, timeout=300):
    if ns:
        cmd = ["ip", "netns", "exec", NS] + cmd
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p


def dockerfile_stage(name):
    """The text of one stage of collector/Dockerfile, its COPY --from=build made local."""
    text = open(os.path.join(ROOT, "collector", "Dockerfile")).read()
    stages = re.split(r"(?m)^(?=FROM )", text)
    stage = next(s for s in stages if re.match(rf"FROM \S+ AS {name}\s*$", s.splitlines()[0]))
    return re.sub(r"COPY --from=build ((?:--\S+ )*)/out/", r"COPY \1out/", stage)


def build_images(work, env):
    ctx = os.path.join(work, "ctx")
    os.makedirs(os.path.join(ctx, "out", "data"))
    os.makedirs(os.path.join(ctx, "out", "tmp"))
    for b in ("tally-collector", "tally-mock"):
        shutil.copy(os.path.join(MUSL, b), os.path.join(ctx, "out", b))
    images = {}
    for stage in ("collector", "mock"):
        f = os.path.join(work, f"Containerfile.{stage}")
        open(f, "w").write(dockerfile_stage(stage))
        images[stage] = f"localhost/tally-ct-{stage}:{TAG}"
        run(["podman", "build", "-q", "-f", f, "-t", images[stage], ctx], env=env)
    # Envoy from the pinned binary: it links only glibc.
    ectx = os.path.join(work, "envoy")
    envoy = os.path.realpath(os.path.join(VENV, "lib", "python3.11", "site-packages", "envoy", "_bin", "envoy"))
    lines = ["FROM scratch", "COPY envoy /usr/local/bin/envoy", "COPY ca.crt /etc/ssl/certs/ca-certificates.crt"]
    os.makedirs(ectx)
    shutil.copy(envoy, os.path.join(ectx, "envoy"))
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", os.path.join(ectx, "ca.crt"))
    for lib in re.findall(r"(/\S+\.so[\.\d]*) \(0x", run(["ldd", envoy]).stdout):
        name = os.path.basename(lib)
        shutil.copy(os.path.realpath(lib), os.path.join(ectx, name))
        lines.append(f"COPY {name} {lib}")
    open(os.path.join(ectx, "Containerfile"), "w").write("\n".join(lines) + "\n")
    images["envoy"] = f"localhost/tally-ct-envoy:{TAG}"
    run(["podman", "build", "-q", "-t", images["envoy"], ectx], env=env)
    return images


def http(url, body=None, headers=None, timeout=5):
    """An HTTP call made inside the namespace (curl there): status and body."""
    cmd = ["curl", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", url]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if body is not None:
        cmd += ["--data-binary", body]
    p = run(cmd, ns=True, check=False)
    text, _, code = p.stdout.rpartition("\n")
    return int(code or 0), text


def wait(what, check, limit=60):
    end = time.time() + limit
    while time.time() < end:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    work = tempfile.mkdtemp(prefix="tally-ct-")
    conf = os.path.join(work, "containers.conf")
    # runc (crun fails on this kernel's cgroups), explicit ulimits (root lacks CAP_SYS_RESOURCE).
    open(conf, "w").write(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=conf)
    images = {}
    compose = [os.path.join(VENV, "bin", "podman-compose"), "-p", PROJECT,
               "-f", "docker-compose.yml", "-f", os.path.join(work, "override.yml")]
    up = False
    ok = False
    try:
        images = build_images(work, env)
        # Every container joins the namespace's network (podman's `ns:` mode): they share its
        # loopback as with host networking. (Podman itself runs outside: `ip netns exec`
        # remounts /sys, where runc needs the cgroup mounts.)
        netns = f"ns:/run/netns/{NS}"
        open(os.path.join(work, "override.yml"), "w").write(
            "services:\n"
            f"  collector:\n    network_mode: {netns}\n    ports: !reset []\n"
            f"  envoy:\n    network_mode: {netns}\n    ports: !reset []\n"
            "    extra_hosts: [\"collector:127.0.0.1\", \"mock:127.0.0.1\"]\n"
            f"  mock:\n    network_mode: {netns}\n")
        env.update(TALLY_COLLECTOR_IMAGE=images["collector"], TALLY_MOCK_IMAGE=images["mock"],
                   TALLY_ENVOY_IMAGE=images["envoy"],
                   TALLY_CLUSTERS="./deploy/compose/clusters-offline.yaml")
        run(["ip", "netns", "add", NS])
        run(["ip", "link", "set", "lo", "up"], ns=True)

        # As the compose file's header says: an org, its key printed once.
        key = run(compose + ["run", "--rm", "-T", "collector", "org", "create", "acme",
                             "--data-dir", "/data"], env=env).stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"tly_[0-9A-Za-z]{40}", key), key
        env["TALLY_ORG_KEY"] = key
        up = True
        run(compose + ["--profile", "offline", "up", "-d"], env=env)
        wait("the collector", lambda: http("http://127.0.0.1:9700/healthz")[0] == 200)
        wait("envoy", lambda: http("http://127.0.0.1:9901/ready")[0] == 200)

        body = json.dumps({"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": CANARY}]})
        status, _ = http("http://127.0.0.1:10000/v1/chat/completions", body,
                         {"content-type": "application/json", "x-tally-feature": "compose",
                          "x-mock-usage": "input=21,output=8", "authorization": f"Bearer sk-{CANARY}"})
        assert status == 200, status
        events = []

        def stored():
            nonlocal events
            s, text = http("http://127.0.0.1:9700/api/v1/events?feature=compose",
                           headers={"authorization": f"Bearer {key}"})
            events = json.loads(text)["events"] if s == 200 else []
            return len(events) == 1
        wait("the event", stored, 30)
        ev = events[0]
        expect = {"provider": "openai", "api": "chat_completions", "model_requested": "gpt-4o-mini",
                  "status": 200, "input_tokens": 21, "output_tokens": 8, "feature": "compose",
                  "token_source": "exact"}
        wrong = {k: (ev.get(k), v) for k, v in expect.items() if ev.get(k) != v}
        assert not wrong, wrong
        assert ev["cost_usd"] and ev["cost_usd"] > 0, ev

        # Nothing of the prompt, the provider key or the org key in any container's log.
        logs = run(compose + ["logs"], env=env, check=False)
        text = logs.stdout + logs.stderr
        assert "tally-collector listening on http://0.0.0.0:9700" in text, text[-2000:]
        for secret in (CANARY, key):
            assert secret not in text, "a secret in the containers' logs"
        print(f"compose: org created, request metered through the compose stack: {json.dumps(expect)}")
        ok = True
    finally:
        if up and not ok:
            logs = run(compose + ["logs"], env=env, check=False)
            print("--- the containers' logs\n" + (logs.stdout + logs.stderr)[-6000:], file=sys.stderr)
        if up and not os.environ.get("KEEP"):
            run(compose + ["down", "-v", "-t", "2"], env=env, check=False)
        if not os.environ.get("KEEP"):
            run(["ip", "netns", "del", NS], check=False)
        for image in images.values() if not os.environ.get("KEEP") else ():
            run(["podman", "rmi", "-f", image], env=env, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

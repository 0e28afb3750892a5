#!/usr/bin/env python3
"""What mesh identity costs per request, in instructions counted by callgrind (make
bench-identity): one Envoy under callgrind with three listeners that differ only in the
filter's `identity` configuration, the chat workload of `make bench` through each:

- `plain`: no identity (a node without Istio metadata);
- `node`: Istio node metadata on the node, read once per VM, with an attribution mapping
  (team from the namespace, app from a label) applied per request;
- `peer`: the downstream peer's certificate read per request (`peer_certificate`; one host call,
  here on plaintext connections, so the call finds no certificate: the cost of asking).

Each listener has its own VM, whose code V8 tiers up at its own pace: the listeners are
measured in interleaved rounds (BENCH_IDENTITY_ROUNDS, 3 by default) and the median of each is
kept. Prints instructions per request for each and the differences. Reuses bench/run.py's
helpers.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as b  # noqa: E402

CONFIGS = {
    "plain": {"identity": {"node": False}},
    "node": {"identity": {"attribution": {"team": "namespace", "app": "label:app"}}},
    "peer": {"identity": {"node": False, "peer_certificate": True}},
}
NODE = ('node: {id: bench, cluster: bench, metadata: {NAMESPACE: payments, WORKLOAD_NAME: checkout-v2, '
        'SERVICE_ACCOUNT: checkout, LABELS: {app: checkout}}}\n')


def listener(name, port, config):
    filt = (b.TALLY_FILTER.replace(b.FILTER_CONFIG, json.dumps(json.dumps(config)))
            .replace("name: tally\n", f"name: tally-{name}\n").replace("vm_id: tally", f"vm_id: {name}"))
    return b.hcm(name, port, b.PROXY_ROUTES, filt)


def main():
    binary = b.envoy_binary()
    if not binary:
        sys.exit("bench-identity: the Envoy binary is missing (make build)")
    n, warm = b.INSTR_REQUESTS, b.INSTR_WARMUP
    with tempfile.TemporaryDirectory() as tmp:
        try:
            chat = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 60},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 512, "completion_tokens": 60, "total_tokens": 572}})
            resp_port, resp_admin = b.free_port(), b.free_port()
            b.start([b.ENVOY, "-c", b.write(tmp, "responder.yaml", b.responder_config(resp_port, resp_admin, [
                ("/v1/events", "application/json", b.write(tmp, "accepted.json", '{"accepted":0,"duplicates":0}'), None),
                ("/v1/chat/completions", "application/json", b.write(tmp, "chat.json", chat), None)])),
                "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"], os.path.join(tmp, "responder.log"))
            b.wait_ready(resp_admin, "the responder")
            ports = {k: b.free_port() for k in CONFIGS}
            admin = b.free_port()
            config = NODE + b.proxy_config(admin, [listener(k, ports[k], CONFIGS[k]) for k in CONFIGS], resp_port, resp_port)
            out = os.path.join(tmp, "callgrind.out")
            p = b.start(["valgrind", "--tool=callgrind", "--smc-check=all", "--compress-strings=no",
                         "--compress-pos=no", f"--callgrind-out-file={out}", binary, "-c",
                         b.write(tmp, "proxy.yaml", config), "--disable-hot-restart", "--concurrency", "1",
                         "--log-level", "warn"], os.path.join(tmp, "proxy.log"),
                        dict(os.environ, TALLY_ORG_KEY="tly_" + "0" * 40))
            b.wait_ready(admin, "Envoy under callgrind", limit=900)
            small = b.write(tmp, "small.json", json.dumps({"model": "gpt-4o-mini",
                                                            "messages": [{"role": "user", "content": "x" * 1900}]}))
            import http.client
            import subprocess

            def drive(port, count):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                body = open(small, "rb").read()
                for _ in range(count):
                    conn.request("POST", "/v1/chat/completions", body=body,
                                 headers={"content-type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        raise RuntimeError(f"bench-identity: {r.status} from port {port}")
                conn.close()

            rounds = int(os.environ.get("BENCH_IDENTITY_ROUNDS", "3"))
            counts = {name: [] for name in ports}
            for r in range(rounds):
                for name, port in ports.items():
                    drive(port, warm if r == 0 else n // 3)
                    subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=300)
                    drive(port, n)
                    subprocess.run(["callgrind_control", "-d", name, str(p.pid)], capture_output=True, timeout=300)
                    dumps = sorted((f for f in os.listdir(tmp) if f.startswith("callgrind.out.")),
                                   key=lambda f: int(f.rsplit(".", 1)[1]))
                    counts[name].append(sum(b.callgrind_costs(os.path.join(tmp, dumps[-1])).values()) / n)
            per = {name: sorted(c)[len(c) // 2] for name, c in counts.items()}
            print(f"instructions per chat request ({n} counted per round after {warm} to warm up, "
                  f"{rounds} interleaved rounds, median; 1 worker):")
            for name, v in per.items():
                rs = ", ".join(f"{c:.0f}" for c in counts[name])
                print(f"  {name:5}  {v:10.0f}  ({v - per['plain']:+.0f} against plain; rounds {rs})")
        finally:
            b.stop_all()


if __name__ == "__main__":
    main()

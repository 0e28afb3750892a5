#!/usr/bin/env python3
"""Module size and Envoy's RSS at concurrency 2 for two builds of the filter, side by side.

    python3 bench/module_rss.py BEFORE.wasm AFTER.wasm [ROUNDS]

Each round starts one Envoy per module (2 workers, the same listener and responder as `make
bench`), sends the same mixed traffic for 3 s, waits for the filter's tick, and reads VmRSS; rounds
alternate the two modules and the medians are printed. Standard library only, plus wrk (which `make
bench` installs).
"""

import importlib.util
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_run", os.path.join(HERE, "run.py"))
b = importlib.util.module_from_spec(spec)
spec.loader.exec_module(b)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    modules = {"before": os.path.abspath(sys.argv[1]), "after": os.path.abspath(sys.argv[2])}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with tempfile.TemporaryDirectory() as tmp:
        try:
            chat = ('{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",'
                    '"choices":[],"usage":{"prompt_tokens":512,"completion_tokens":60,"total_tokens":572}}')
            resp_port, resp_admin = b.free_port(), b.free_port()
            b.start([b.ENVOY, "-c", b.write(tmp, "responder.yaml", b.responder_config(resp_port, resp_admin, [
                ("/v1/events", "application/json", b.write(tmp, "accepted.json", '{"accepted":0,"duplicates":0}'), None),
                ("/v1/chat/completions", "application/json", b.write(tmp, "chat.json", chat), None),
            ])), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"],
                os.path.join(tmp, "responder.log"))
            b.wait_ready(resp_admin, "the responder")
            body = b.write(tmp, "small.json", '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + "x" * 1900 + '"}]}')
            rf = b.write(tmp, "req.tsv", f"/v1/chat/completions\t\t{body}\n")
            rss = {k: [] for k in modules}
            for r in range(rounds):
                for which, wasm in modules.items():
                    port, admin = b.free_port(), b.free_port()
                    filt = b.TALLY_FILTER.replace(b.WASM, wasm)
                    cfg = b.proxy_config(admin, [b.hcm("l", port, b.PROXY_ROUTES, filt)], resp_port, resp_port)
                    p = b.start([b.ENVOY, "-c", b.write(tmp, f"{which}-{r}.yaml", cfg), "--disable-hot-restart",
                                 "--concurrency", "2", "--log-level", "warn"], os.path.join(tmp, f"{which}-{r}.log"),
                                dict(os.environ, TALLY_ORG_KEY="tly_" + "0" * 40))
                    b.wait_ready(admin, f"Envoy with the {which} module")
                    b.wrk(port, rf, 3)
                    b.time.sleep(1.5)
                    rss[which].append(b.rss_kib(p.pid) / 1024)
                    p.kill()
                    p.wait()
            for which, wasm in modules.items():
                print(f"{which}: module {os.path.getsize(wasm):,} bytes; Envoy RSS at concurrency 2: "
                      f"{statistics.median(rss[which]):.1f} MiB median of {', '.join(f'{x:.1f}' for x in rss[which])}")
        finally:
            b.stop_all()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Package tally.wasm as OCI images and push them to a registry, with no container engine.

`build` writes an OCI image layout (https://github.com/opencontainers/image-spec, layout.md)
holding two manifests of the same module, both pulled by Istio's WasmPlugin and Envoy Gateway's
EnvoyExtensionPolicy (`oci://...`):

- `TAG` (the "compat" image): an ordinary OCI image whose one layer is a tar.gz holding
  `plugin.wasm`, what `FROM scratch` + `COPY plugin.wasm ./` would build; every registry and
  tool handles it;
- `TAG-wasm` (the wasm artifact): config `application/vnd.module.wasm.config.v1+json` and two
  layers, the module itself (`application/vnd.module.wasm.content.layer.v1+wasm`) and that
  config, as Istio's fetcher requires; the registry's blob URL of the module's layer serves the
  raw module (Envoy's `vm_config.code.remote` loads it from there).

The bytes are reproducible: tar and gzip carry no time stamps, JSON is written with sorted keys,
so the same tally.wasm gives the same digests.

`push REF` copies both manifests to REF (`host[:port]/repo:tag`) and `REF-wasm` over the
registry HTTP API (distribution spec): anonymous, HTTP basic or the bearer-token exchange,
with credentials from REGISTRY_USERNAME / REGISTRY_PASSWORD. Loopback registries are spoken
to in plain HTTP, every other one over HTTPS (REGISTRY_PLAIN_HTTP=1 forces plain HTTP).
Standard library only.
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
ARTIFACT_SUFFIX = "-wasm"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type, data, annotations=None):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def plugin_tar_gz(wasm):
    """A tar.gz with one entry, plugin.wasm, free of time stamps and owners."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(wasm))
    tar_bytes = raw.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(tar_bytes)
    return tar_bytes, out.getvalue()


def images(wasm, version):
    """The blobs and the two manifests: {name: bytes}, [(ref_suffix, manifest bytes)]."""
    blobs = {}

    def blob(data):
        blobs[sha256(data)] = data
        return data

    labels = {
        "org.opencontainers.image.title": "tally.wasm",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.description": "Tally: LLM cost and usage metering, a proxy-wasm filter",
    }
    tar_bytes, layer = plugin_tar_gz(wasm)
    blob(layer)
    config = blob(canonical({
        # The module runs on any platform; Istio and Envoy Gateway read only the layer.
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
    }))
    compat = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(IMAGE_CONFIG, config),
        "layers": [descriptor(TAR_GZIP, layer)],
        "annotations": labels,
    })
    blob(wasm)
    wasm_config = blob(canonical({"rootIds": ["tally"]}))
    artifact = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(WASM_CONFIG, wasm_config),
        # Istio's fetcher takes this shape only with exactly two layers (solo.io's wasm image
        # spec): the module, and its config again as a layer.
        "layers": [descriptor(WASM_LAYER, wasm, {"org.opencontainers.image.title": "plugin.wasm"}),
                   descriptor(WASM_CONFIG, wasm_config)],
        "annotations": labels,
    })
    return blobs, [("", compat), (ARTIFACT_SUFFIX, artifact)]


def build(args):
    wasm = open(args.wasm, "rb").read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{args.wasm} is not a WebAssembly module")
    blobs, manifests = images(wasm, args.tag)
    out = args.out
    if os.path.exists(os.path.join(out, "oci-layout")):
        shutil.rmtree(out)  # no stale blobs of an earlier build
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    for suffix, manifest in manifests:
        blobs[sha256(manifest)] = manifest
        index["manifests"].append(descriptor(
            MANIFEST, manifest, {"org.opencontainers.image.ref.name": args.tag + suffix}))
    for digest, data in blobs.items():
        with open(os.path.join(out, "blobs", "sha256", digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical(index))
    print(f"OCI image layout in {out}: module {sha256(wasm)} ({len(wasm)} bytes)")
    for m in index["manifests"]:
        print(f"  {m['annotations']['org.opencontainers.image.ref.name']}  {m['digest']}")


class Registry:
    """Just enough of the distribution API to push blobs and manifests."""

    def __init__(self, host, repo):
        plain = os.environ.get("REGISTRY_PLAIN_HTTP") == "1" or host.split(":")[0] in (
            "127.0.0.1", "localhost", "[::1]")
        self.base = ("http://" if plain else "https://") + host
        self.repo = repo
        self.auth = None
        user, password = os.environ.get("REGISTRY_USERNAME"), os.environ.get("REGISTRY_PASSWORD")
        self.basic = None
        if user and password:
            self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _token(self, challenge):
        params = dict(p.split("=", 1) for p in _split_params(challenge[len("Bearer "):]))
        params = {k: v.strip('"') for k, v in params.items()}
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope", f"repository:{self.repo}:pull,push")}
        req = urllib.request.Request(params["realm"] + "?" + urllib.parse.urlencode(query))
        if self.basic:
            req.add_header("Authorization", self.basic)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.load(r)
        return "Bearer " + (body.get("token") or body["access_token"])

    def request(self, method, url, data=None, headers=None):
        if url.startswith("/"):
            url = self.base + url
        for attempt in range(2):
            req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
            if self.auth:
                req.add_header("Authorization", self.auth)
            try:
                return urllib.request.urlopen(req, timeout=120)
            except urllib.error.HTTPError as e:
                challenge = e.headers.get("WWW-Authenticate", "")
                if e.code == 401 and attempt == 0 and challenge.startswith("Bearer "):
                    self.auth = self._token(challenge)
                    continue
                if e.code == 401 and attempt == 0 and challenge.startswith("Basic") and self.basic:
                    self.auth = self.basic
                    continue
                if e.code == 404 and method == "HEAD":
                    return None
                detail = e.read().decode(errors="replace")[:500]
                sys.exit(f"registry: {method} {url}: HTTP {e.code} {detail}")
        sys.exit(f"registry: {method} {url}: not authorized (set REGISTRY_USERNAME and REGISTRY_PASSWORD)")

    def put_blob(self, digest, data):
        if self.request("HEAD", f"/v2/{self.repo}/blobs/{digest}") is not None:
            return
        r = self.request("POST", f"/v2/{self.repo}/blobs/uploads/", data=b"")
        location = urllib.parse.urljoin(self.base + "/", r.headers["Location"])
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", data=data,
                     headers={"Content-Type": "application/octet-stream"})

    def put_manifest(self, tag, manifest):
        r = self.request("PUT", f"/v2/{self.repo}/manifests/{tag}", data=manifest,
                         headers={"Content-Type": MANIFEST})
        return r.headers.get("Docker-Content-Digest") or sha256(manifest)


def _split_params(text):
    """Split `a="x,y",b="z"` at the commas outside quotes."""
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def push(args):
    ref = args.ref
    if "://" in ref:
        sys.exit(f"give the image as host[:port]/repo:tag, not a URL: {ref}")
    host, _, rest = ref.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"):
        sys.exit(f"the image must name its registry host: {ref} (e.g. 127.0.0.1:5000/tally:0.1.0)")
    repo, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    if "@" in rest:
        sys.exit(f"push to a tag, not a digest: {ref}")
    index = json.load(open(os.path.join(args.layout, "index.json")))
    registry = Registry(host, repo)
    for m in index["manifests"]:
        name = m["annotations"]["org.opencontainers.image.ref.name"]
        suffix = ARTIFACT_SUFFIX if name.endswith(ARTIFACT_SUFFIX) else ""
        manifest = read_blob(args.layout, m["digest"])
        parsed = json.loads(manifest)
        for d in [parsed["config"], *parsed["layers"]]:
            registry.put_blob(d["digest"], read_blob(args.layout, d["digest"]))
        digest = registry.put_manifest(tag + suffix, manifest)
        if digest != m["digest"]:
            sys.exit(f"registry stored {digest} for {m['digest']}")
        print(f"pushed {host}/{repo}:{tag + suffix}  {host}/{repo}@{digest}")


def read_blob(layout, digest):
    data = open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb").read()
    if sha256(data) != digest:
        sys.exit(f"{layout}: blob {digest} is corrupt")
    return data


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the OCI image layout")
    b.add_argument("--wasm", default="target/wasm32-wasip1/release/tally.wasm")
    b.add_argument("--out", default="target/oci")
    b.add_argument("--tag", required=True)
    u = sub.add_parser("push", help="push the layout's images to REF and REF-wasm")
    u.add_argument("ref", help="host[:port]/repo:tag")
    u.add_argument("--layout", default="target/oci")
    args = p.parse_args()
    build(args) if args.cmd == "build" else push(args)


if __name__ == "__main__":
    main()

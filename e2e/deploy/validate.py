#!/usr/bin/env python3
"""Validate everything deploy/ ships against published schemas, strictly.

- Kubernetes kinds (the kustomize renders of deploy/kubernetes and deploy/kubernetes/tls, the
  patches applied to a Deployment): PyPI kubernetes-validate, strict (unknown fields fail).
- Istio kinds: PyPI cloudcoil-models-istio (pydantic models of Istio's CRDs), made strict here:
  those models accept unknown fields and snake_case names, so every model is switched to
  extra="forbid" and aliases only, and rebuilt.
- Envoy Gateway and Gateway API kinds: npm @kubernetes-models (validate-gateway.mjs): types,
  enums and required fields by the models' validators, field names against the models' type
  declarations (the validators accept unknown fields).
- A kind none of these knows fails.

Run by `make test-deploy` (which installs the packages into .venv and e2e/deploy/node_modules).
Exits 1 on any failure, after printing every problem.
"""

import copy
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import typing

import cloudcoil.models.istio as istio_root
import kubernetes_validate
import pydantic
import yaml
from cloudcoil import apimachinery
from cloudcoil.pydantic import BaseBuilder
from cloudcoil.resources import Resource

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
# The oldest Kubernetes the manifests claim to work on (kubernetes-validate ships 1.25 and on).
KUBERNETES = "1.29"


def strict_istio_models():
    """{(apiVersion, kind): model}, every model of the package rejecting unknown fields."""
    mods = [apimachinery] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(istio_root.__path__, istio_root.__name__ + ".")
    ]
    models = [
        c for m in mods for c in vars(m).values()
        if inspect.isclass(c) and issubclass(c, pydantic.BaseModel) and c.__module__ == m.__name__
        and not issubclass(c, (BaseBuilder, pydantic.RootModel))
    ]
    for c in models:
        c.model_config.update(extra="forbid", populate_by_name=False,
                              validate_by_name=False, validate_by_alias=True)
    # Twice: a parent rebuilt before its children would keep their lenient schemas.
    for _ in range(2):
        for c in models:
            c.model_rebuild(force=True)
    registry = {}
    for c in models:
        if issubclass(c, Resource) and "kind" in c.model_fields:
            kind = c.model_fields["kind"].default
            for arg in typing.get_args(c.model_fields["api_version"].annotation):
                for api in typing.get_args(arg):
                    registry[(api, kind)] = c
    return registry


ISTIO = strict_istio_models()
GATEWAY_GROUPS = ("gateway.envoyproxy.io/", "gateway.networking.k8s.io/")


def validate_gateway(docs):
    """Errors per document, from validate-gateway.mjs."""
    if not docs:
        return []
    out = subprocess.run(["node", os.path.join(HERE, "validate-gateway.mjs")], cwd=HERE,
                         input="".join(json.dumps(d) + "\n" for d in docs),
                         capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(docs), out.stdout + out.stderr
    return [[] if l == "OK" else [l.removeprefix("FAIL ")] for l in lines]


def validate(doc):
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion or kind)"]
    key = (doc["apiVersion"], doc["kind"])
    if key in ISTIO:
        try:
            ISTIO[key].model_validate_json(json.dumps(doc), strict=True)
            return []
        except pydantic.ValidationError as e:
            return ["%s: %s" % (".".join(map(str, x["loc"])), x["msg"]) for x in e.errors()]
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        return ["%s: %s" % (".".join(map(str, e.path)), e.message)]
    except kubernetes_validate.SchemaNotFoundError:
        return ["no schema for %s %s" % key]


def patched_deployment(patch):
    """A Deployment with a strategic-merge patch of ours applied (containers merged by name)."""
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
         "spec": {"selector": {"matchLabels": {"app": "app"}},
                  "template": {"metadata": {"labels": {"app": "app"}},
                               "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}
    tpl = patch["spec"]["template"]
    d["spec"]["template"]["metadata"]["labels"].update(tpl.get("metadata", {}).get("labels", {}))
    d["spec"]["template"]["spec"]["containers"] += copy.deepcopy(tpl["spec"]["containers"])
    return d


def documents():
    """(where, object) for everything shipped."""
    for overlay in ("deploy/kubernetes", "deploy/kubernetes/tls"):
        rendered = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, overlay)],
                                  capture_output=True, text=True, check=True).stdout
        for d in yaml.safe_load_all(rendered):
            yield f"{overlay} (rendered)", d
    for top in ("deploy/istio", "deploy/envoy-gateway"):
        for dirpath, _, files in sorted(os.walk(os.path.join(ROOT, top))):
            for f in sorted(files):
                if not f.endswith(".yaml"):
                    continue
                path = os.path.relpath(os.path.join(dirpath, f), ROOT)
                for d in yaml.safe_load_all(open(os.path.join(dirpath, f))):
                    if d is None:
                        continue
                    if "apiVersion" not in d:
                        # A patch for a workload's Deployment.
                        yield f"{path} (applied to a Deployment)", patched_deployment(d)
                        continue
                    yield path, d
                    if d["kind"] == "ConfigMap" and "deployment" in d.get("data", {}):
                        patch = yaml.safe_load(d["data"]["deployment"])
                        yield f"{path} (its Deployment overlay)", patched_deployment(patch)


def self_check(docs):
    """The checks can fail: a broken copy of shipped objects must be refused by each validator."""
    def find(kind, has=None):
        return copy.deepcopy(next(d for _, d in docs if d["kind"] == kind
                                  and (has is None or has in d.get("spec", {}))))
    broken = []
    d = find("WasmPlugin"); d["spec"]["vmConfig"]["envs"] = []; broken.append(d)
    d = find("WasmPlugin"); d["spec"]["failStrategy"] = "FAIL_SOMETIMES"; broken.append(d)
    d = find("WasmPlugin"); d["spec"]["plugin_config"] = d["spec"].pop("pluginConfig"); broken.append(d)
    d = find("DestinationRule", "trafficPolicy"); d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = "SIMPLEST"; broken.append(d)
    d = find("StatefulSet"); d["spec"]["template"]["spec"]["containers"][0]["argz"] = []; broken.append(d)
    d = find("NetworkPolicy"); d["spec"]["ingress"][0]["form"] = []; broken.append(d)
    d = find("WasmPlugin"); d["kind"] = "WasmPlugins"; broken.append(d)
    for d in broken:
        assert validate(d), f"a broken object passed: {json.dumps(d)[:300]}"
    gateway = []
    d = find("EnvoyExtensionPolicy", "wasm"); d["spec"]["wasm"][0]["code"]["type"] = "Bogus"; gateway.append(d)
    d = find("EnvoyExtensionPolicy", "wasm"); d["spec"]["wasm"][0]["failopen"] = True; gateway.append(d)
    d = find("EnvoyExtensionPolicy", "wasm"); d["spec"]["wasm"][0]["code"]["image"]["uri"] = "x"; gateway.append(d)
    d = find("HTTPRoute"); d["spec"]["rules"][0]["backendRefs"][0]["prot"] = 1; gateway.append(d)
    d = find("EnvoyProxy"); d["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["envs"] = []; gateway.append(d)
    d = find("EnvoyProxy", "dynamicModules"); d["spec"]["dynamicModules"][0]["source"]["local"]["path"] = "lib.so"; gateway.append(d)
    d = find("EnvoyExtensionPolicy", "dynamicModule"); d["spec"]["dynamicModule"][0]["filtername"] = "tally"; gateway.append(d)
    for d, errs in zip(gateway, validate_gateway(gateway)):
        assert errs, f"a broken object passed: {json.dumps(d)[:300]}"
    print(f"self-check: {len(broken) + len(gateway)} broken copies refused")


def main():
    docs = list(documents())
    self_check(docs)
    gateway = [i for i, (_, d) in enumerate(docs) if d["apiVersion"].startswith(GATEWAY_GROUPS)]
    errors = {i: validate(d) for i, (_, d) in enumerate(docs) if i not in gateway}
    errors.update(zip(gateway, validate_gateway([docs[i][1] for i in gateway])))
    failed = 0
    for i, (where, d) in enumerate(docs):
        errs = errors[i]
        print("%s %s %s/%s" % ("FAIL" if errs else "ok  ", where, d.get("kind"),
                               (d.get("metadata") or {}).get("name")))
        for e in errs:
            print("       " + e)
        failed += bool(errs)
    print(f"{len(docs)} objects, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make prices`: regenerate src/prices.json from LiteLLM's price map.

LiteLLM ships model_prices_and_context_window_backup.json inside its PyPI package; this script
downloads the wheel (no install, no dependencies) or reads a file given with --file, keeps the
text-token models of the providers Tally meters, and writes USD per 1M tokens, with long-context
tiers where published. Standard library only.

    python3 scripts/prices.py                 # latest litellm from PyPI
    python3 scripts/prices.py --version 1.109.1
    python3 scripts/prices.py --file path/to/model_prices_and_context_window.json
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "prices.json")
CURATED = os.path.join(ROOT, "prices", "curated.json")
MEMBER = "litellm/model_prices_and_context_window_backup.json"

# LiteLLM provider -> (Tally provider name, key prefix LiteLLM uses for it).
PROVIDERS = {
    "openai": ("openai", ""),
    "text-completion-openai": ("openai", ""),
    "anthropic": ("anthropic", ""),
    "gemini": ("gemini", "gemini/"),
    "azure": ("azure", "azure/"),
    "groq": ("groq", "groq/"),
    "mistral": ("mistral", "mistral/"),
    "deepseek": ("deepseek", "deepseek/"),
    "together_ai": ("together", "together_ai/"),
    "fireworks_ai": ("fireworks", "fireworks_ai/"),
    "openrouter": ("openrouter", "openrouter/"),
    "xai": ("xai", "xai/"),
    # Cloud channels, by the model names their APIs use (Bedrock model ids and inference
    # profiles; Vertex publisher model names, Anthropic's with their `@` version).
    "bedrock": ("bedrock", "bedrock/"),
    "bedrock_converse": ("bedrock", "bedrock/"),
    "vertex_ai-language-models": ("vertex_ai", "vertex_ai/"),
    "vertex_ai-anthropic_models": ("vertex_ai", "vertex_ai/"),
    "vertex_ai-llama_models": ("vertex_ai", "vertex_ai/"),
    "vertex_ai-mistral_models": ("vertex_ai", "vertex_ai/"),
}
SOURCES = {
    "openai": "https://platform.openai.com/docs/pricing",
    "anthropic": "https://platform.claude.com/docs/en/about-claude/pricing",
    "gemini": "https://ai.google.dev/gemini-api/docs/pricing",
    "azure": "https://azure.microsoft.com/pricing/details/cognitive-services/openai-service/",
    "groq": "https://groq.com/pricing",
    "mistral": "https://mistral.ai/pricing",
    "deepseek": "https://api-docs.deepseek.com/quick_start/pricing",
    "together": "https://www.together.ai/pricing",
    "fireworks": "https://fireworks.ai/pricing",
    "openrouter": "https://openrouter.ai/models",
    "xai": "https://docs.x.ai/docs/models",
    "bedrock": "https://aws.amazon.com/bedrock/pricing/",
    "vertex_ai": "https://cloud.google.com/vertex-ai/generative-ai/pricing",
}
MODES = {"chat", "completion", "embedding", "responses"}
TIER = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")


def per_million(v):
    """USD per token -> USD per 1M tokens, rounded to the micro-dollar the filter keeps."""
    return None if v is None else round(float(v) * 1e6, 6)


def load(args):
    if args.file:
        with open(args.file) as f:
            return json.load(f), f"file {os.path.basename(args.file)}"
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"litellm=={args.version}" if args.version else "litellm"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", "-d", tmp, spec], check=True)
        wheel = glob.glob(os.path.join(tmp, "litellm-*.whl"))[0]
        version = os.path.basename(wheel).split("-")[1]
        with zipfile.ZipFile(wheel) as z:
            return json.loads(z.read(MEMBER)), f"litellm {version} ({MEMBER})"


def convert(data):
    entries = {}
    for key, v in data.items():
        if not isinstance(v, dict) or v.get("mode") not in MODES:
            continue
        mapped = PROVIDERS.get(v.get("litellm_provider"))
        if not mapped or v.get("input_cost_per_token") is None:
            continue
        provider, prefix = mapped
        model = key[len(prefix):] if prefix and key.startswith(prefix) else key
        # Fine-tunes and LiteLLM's size-class placeholders are not model names; nor are
        # LiteLLM's region- or commitment-qualified Bedrock keys (`us-east-1/...`).
        if model.startswith("ft:") or re.match(r"^(together|fireworks)-ai-", model):
            continue
        if provider == "bedrock" and "/" in model:
            continue
        entry = {
            "provider": provider,
            "model": model,
            "input": per_million(v["input_cost_per_token"]),
            "cached_input": per_million(v.get("cache_read_input_token_cost")),
            "cache_write": per_million(v.get("cache_creation_input_token_cost")),
            "output": per_million(v.get("output_cost_per_token", 0.0)),
            "long_context": None,
        }
        # Anthropic's one-hour cache writes, where they cost more than five-minute ones.
        if v.get("cache_creation_input_token_cost_above_1hr") is not None:
            entry["cache_write_1h"] = per_million(v["cache_creation_input_token_cost_above_1hr"])
        # OpenAI's (and others') service tiers with rates of their own.
        for tier in ("flex", "priority"):
            if v.get(f"input_cost_per_token_{tier}") is not None:
                entry[tier] = {
                    "input": per_million(v[f"input_cost_per_token_{tier}"]),
                    "cached_input": per_million(v.get(f"cache_read_input_token_cost_{tier}")),
                    "cache_write": per_million(v.get(f"cache_creation_input_token_cost_{tier}")),
                    "output": per_million(v.get(f"output_cost_per_token_{tier}", v.get("output_cost_per_token", 0.0))),
                }
        # Server-side web search, per use (the medium search context where sizes differ).
        search = v.get("search_context_cost_per_query")
        if isinstance(search, dict) and search.get("search_context_size_medium") is not None:
            entry["web_search"] = float(search["search_context_size_medium"])
        tiers = sorted(int(m.group(1)) for k in v if (m := TIER.match(k)))
        if tiers:
            t = tiers[0]
            sfx = f"_above_{t}k_tokens"
            entry["long_context"] = {
                "threshold": t * 1000,
                "input": per_million(v[f"input_cost_per_token{sfx}"]),
                "cached_input": per_million(v.get(f"cache_read_input_token_cost{sfx}")),
                "cache_write": per_million(v.get(f"cache_creation_input_token_cost{sfx}")),
                "output": per_million(v.get(f"output_cost_per_token{sfx}", v.get("output_cost_per_token", 0.0))),
            }
            # Hour-long cache writes past the threshold (Anthropic's, on Vertex and Bedrock).
            if v.get(f"cache_creation_input_token_cost_above_1hr{sfx}") is not None:
                entry["long_context"]["cache_write_1h"] = per_million(
                    v[f"cache_creation_input_token_cost_above_1hr{sfx}"])
            # A service tier's own long-context rates (`..._above_272k_tokens_priority`); a
            # tier without them is scaled by the base long-context/base ratio when priced.
            for tier in ("flex", "priority"):
                if tier in entry and v.get(f"input_cost_per_token{sfx}_{tier}") is not None:
                    entry[tier]["long_context"] = {
                        "input": per_million(v[f"input_cost_per_token{sfx}_{tier}"]),
                        "cached_input": per_million(v.get(f"cache_read_input_token_cost{sfx}_{tier}")),
                        "cache_write": per_million(v.get(f"cache_creation_input_token_cost{sfx}_{tier}")),
                        "output": per_million(v.get(
                            f"output_cost_per_token{sfx}_{tier}",
                            v.get(f"output_cost_per_token_{tier}", v.get("output_cost_per_token", 0.0)))),
                    }
        # The first spelling of a (provider, model) wins; LiteLLM lists some twice.
        entries.setdefault((provider, model), entry)
    return sorted(entries.values(), key=lambda e: (e["provider"], e["model"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", help="a LiteLLM price map JSON instead of downloading")
    ap.add_argument("--version", help="litellm version to download (default: latest)")
    args = ap.parse_args()
    data, origin = load(args)
    models = convert(data)
    # Curated entries fill what LiteLLM lacks; they never override it.
    with open(CURATED) as f:
        curated = json.load(f)["models"]
    have = {(m["provider"], m["model"]) for m in models}
    added = [dict((k, v) for k, v in m.items() if k != "source") for m in curated
             if (m["provider"], m["model"]) not in have]
    models = sorted(models + added, key=lambda e: (e["provider"], e["model"]))
    if len(models) < 100:
        sys.exit(f"prices: only {len(models)} models found in {origin}; refusing to write")
    out = {
        "note": "USD per 1M tokens. input is the uncached prompt rate; cached_input the cache-read "
                "rate; cache_write the cache-write rate (cache_write_1h: for writes kept an hour); "
                "null means no separate rate (the input rate applies; in flex and priority, the base "
                "cache rate times the tier's input/base input). long_context applies to the "
                "whole request when its input tokens exceed threshold. flex and priority are the "
                "rates of those service tiers (their long_context: past the same threshold; "
                "without one, the tier's rates times the base long_context/base ratio). "
                "web_search is USD per server-side search (none listed: a request with "
                "searches has no known cost). "
                "Generated by `make prices`; do not edit by hand.",
        "generated_from": f"{origin}, plus {len(added)} entries of prices/curated.json",
        "sources": {p: SOURCES[p] for p in sorted({m["provider"] for m in models})},
        "models": models,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    counts = {}
    for m in models:
        counts[m["provider"]] = counts.get(m["provider"], 0) + 1
    print(f"prices: wrote {len(models)} models from {origin} to {os.path.relpath(OUT, ROOT)}: {counts}")


if __name__ == "__main__":
    main()

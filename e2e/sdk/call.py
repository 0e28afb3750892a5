"""One call through Envoy with an official SDK, for the rules and budgets tests.

Usage: call.py openai|anthropic BASE_URL MODEL HEADERS_JSON PROMPT_BYTES [stream]
Prints one JSON line: {"ok": true, "model": ...} or {"ok": false, "error": class name,
"status": ..., "retry_after": ...}. The SDKs keep their default retries, so a test can check
that a budget's 429 (x-should-retry: false) is not retried.
"""

import json
import sys


def main():
    kind, base_url, model, headers, prompt_bytes = sys.argv[1:6]
    stream = len(sys.argv) > 6 and sys.argv[6] == "stream"
    headers = json.loads(headers)
    prompt = ("canary-prompt " * (int(prompt_bytes) // 14 + 1))[: int(prompt_bytes)]
    try:
        if kind == "openai":
            import openai

            client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-canary-key-0000", default_headers=headers)
            if stream:
                got = None
                for chunk in client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], stream=True
                ):
                    got = chunk.model or got
                print(json.dumps({"ok": True, "model": got}))
            else:
                r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
                print(json.dumps({"ok": True, "model": r.model}))
        else:
            import anthropic

            client = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-canary-key-0000", default_headers=headers)
            r = client.messages.create(
                model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}]
            )
            print(json.dumps({"ok": True, "model": r.model}))
    except Exception as e:  # the SDK's own error type is the point
        resp = getattr(e, "response", None)
        print(
            json.dumps(
                {
                    "ok": False,
                    "error": type(e).__name__,
                    "status": getattr(e, "status_code", None),
                    "retry_after": resp.headers.get("retry-after") if resp is not None else None,
                }
            )
        )


main()

//! OpenAI wire formats: chat completions, legacy completions, embeddings and the Responses API.
//!
//! Usage arrives once: at the end of a JSON body, or in the last chunk of a stream (chat
//! completions with `stream_options.include_usage`; Responses API `response.completed`,
//! `response.incomplete` and `response.failed`, where it sits inside `response`).
//! `prompt_tokens` already includes `cached_tokens`, and `completion_tokens` already includes
//! `reasoning_tokens`, which is the shape of [`Usage`].
//!
//! OpenAI-compatible hosts report their prompt cache under other names, all parts of
//! `prompt_tokens` too: DeepSeek's `prompt_cache_hit_tokens` (beside `prompt_cache_miss_tokens`;
//! the two add up to `prompt_tokens`) and OpenRouter's `prompt_tokens_details.cache_write_tokens`.
//!
//! The model is the first non-empty `model`: Azure's first chunk has `"model": ""`.

use super::{
    count, member, model_name, parse_raw, push_str, read_object, Api, ErrorBody, Facts,
    ResponseMeter,
};
use crate::scan::{json_string, KeyProbe, TopLevelScanner};
use crate::usage::Usage;

/// The API of a path (without query), by its last segments, so that every OpenAI-compatible
/// mount works: `/v1/chat/completions`, `/openai/v1/...` (Groq), `/inference/v1/...`
/// (Fireworks), `/api/v1/...` (OpenRouter), `/chat/completions` (DeepSeek). Azure's
/// `/openai/deployments/{deployment}/...` also yields the deployment name.
pub fn api_for_path(path: &str) -> Option<(Api, Option<String>)> {
    let path = path.trim_end_matches('/');
    let (api, rest) = [
        ("/chat/completions", Api::ChatCompletions),
        ("/responses", Api::Responses),
        ("/completions", Api::Completions),
        ("/embeddings", Api::Embeddings),
    ]
    .iter()
    .find_map(|(tail, api)| path.strip_suffix(tail).map(|rest| (*api, rest)))?;
    let deployment = rest
        .strip_prefix("/openai/deployments/")
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .map(str::to_string);
    Some((api, deployment))
}

const KEYS: &[(&str, usize)] = &[
    ("model", 256),
    // `default`, `flex`, `priority`...: each billed at its own rates.
    ("service_tier", 64),
    ("usage", 4096),
    ("error", 8192),
    // Responses API stream events carry the whole response object, output included.
    ("response", 8 << 20),
    // Groq's streams put usage in `x_groq.usage` on the last chunk.
    ("x_groq", 4096),
];

/// Both usage shapes: chat/completions/embeddings (`prompt_tokens`, `*_tokens_details`) and
/// Responses (`input_tokens`, `*_tokens_details` under those names), with the cache counts of
/// compatible hosts.
#[derive(Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    /// DeepSeek's name for the cached part.
    prompt_cache_hit_tokens: Option<u64>,
    /// OpenRouter's `prompt_tokens_details.cache_write_tokens`.
    cache_write_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn read(raw: Option<&[u8]>) -> Option<WireUsage> {
        let mut u = WireUsage::default();
        read_object(raw, |k, v| match k {
            b"prompt_tokens" | b"input_tokens" => count(&mut u.prompt_tokens, v),
            b"completion_tokens" | b"output_tokens" => count(&mut u.completion_tokens, v),
            b"prompt_cache_hit_tokens" => count(&mut u.prompt_cache_hit_tokens, v),
            b"prompt_tokens_details" | b"input_tokens_details" => {
                u.cached_tokens = None;
                u.cache_write_tokens = None;
                details(v, |k, v| match k {
                    b"cached_tokens" => count(&mut u.cached_tokens, v),
                    b"cache_write_tokens" => count(&mut u.cache_write_tokens, v),
                    _ => true,
                })
            }
            b"completion_tokens_details" | b"output_tokens_details" => {
                u.reasoning_tokens = None;
                details(v, |k, v| {
                    k != b"reasoning_tokens" || count(&mut u.reasoning_tokens, v)
                })
            }
            _ => true,
        })?;
        Some(u)
    }

    fn into_usage(self) -> Option<Usage> {
        let input = self.prompt_tokens?;
        Some(Usage {
            input,
            output: self.completion_tokens.unwrap_or(0),
            // Both names count the same tokens; a host that sends both with one of them zero
            // (or absent) has the other right.
            cached_input: self
                .cached_tokens
                .max(self.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_write: self.cache_write_tokens.unwrap_or(0),
            reasoning: self.reasoning_tokens.unwrap_or(0),
            ..Usage::default()
        })
    }
}

/// A details object (`null`: none), its members read by `take`; the whole object replaces an
/// earlier one (the caller clears its counts first).
fn details(v: &[u8], take: impl FnMut(&[u8], &[u8]) -> bool) -> bool {
    v == b"null" || read_object(Some(v), take).is_some()
}

#[derive(Default)]
pub struct OpenAiMeter {
    facts: Facts,
}

impl ResponseMeter for OpenAiMeter {
    fn keys(&self) -> &'static [(&'static str, usize)] {
        KEYS
    }

    /// Once the model is known, only usage, errors and Responses API objects matter: the
    /// hundreds of content chunks of a stream need not be scanned.
    fn needs_only(&self) -> Option<&'static KeyProbe> {
        static LATER_KEYS: KeyProbe =
            KeyProbe::new(&["\"usage\"", "\"error\"", "\"response\"", "\"x_groq\""]);
        self.facts.model.is_some().then_some(&LATER_KEYS)
    }

    fn on_document(&mut self, doc: &TopLevelScanner) {
        let f = &mut self.facts;
        if f.model.is_none() {
            f.model = model_name(doc.string("model"));
        }
        if let Some(t) = doc.string("service_tier").filter(|t| !t.is_empty()) {
            f.service_tier = Some(t);
        }
        if let Some(u) = WireUsage::read(doc.raw("usage")).and_then(WireUsage::into_usage) {
            f.usage = Some(u);
            f.usage_final = true;
        }
        if let Some(e) = parse_raw::<ErrorBody>(doc.raw("error")).and_then(ErrorBody::best) {
            f.error = Some(e);
        }
        // Groq's streams: `x_groq.usage` on the last chunk.
        let mut groq = None;
        if read_object(doc.raw("x_groq"), |k, v| {
            k != b"usage" || member(&mut groq, v, |v| WireUsage::read(Some(v)))
        })
        .is_some()
        {
            if let Some(u) = groq.and_then(WireUsage::into_usage) {
                f.usage = Some(u);
                f.usage_final = true;
            }
        }
        // The Responses API's stream events carry the response object.
        let (mut model, mut usage, mut error, mut tier) = (None, None, None, None);
        if read_object(doc.raw("response"), |k, v| match k {
            b"model" => json_string(v).map(|m| model = m).is_ok(),
            b"service_tier" => json_string(v).map(|t| tier = t).is_ok(),
            b"usage" => member(&mut usage, v, |v| WireUsage::read(Some(v))),
            b"error" => member(&mut error, v, |v| parse_raw::<ErrorBody>(Some(v))),
            _ => true,
        })
        .is_some()
        {
            f.model = model_name(model).or(f.model.take());
            if let Some(u) = usage.and_then(WireUsage::into_usage) {
                f.usage = Some(u);
                f.usage_final = true;
            }
            f.error = error.and_then(ErrorBody::best).or(f.error.take());
            if let Some(t) = tier.filter(|t: &String| !t.is_empty()) {
                f.service_tier = Some(t);
            }
        }
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn output_text(&self, event: &serde_json::Value, out: &mut String) {
        // Chat completions (`delta`) and legacy completions (`text`).
        for choice in event["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            for key in ["content", "refusal", "reasoning_content"] {
                push_str(delta.get(key), out);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                push_str(call["function"].get("arguments"), out);
            }
            push_str(choice.get("text"), out);
        }
        // Responses API: `response.output_text.delta`, `response.function_call_arguments.delta`...
        if event["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(".delta"))
        {
            push_str(event.get("delta"), out);
        }
    }
}

//! OpenAI wire formats: chat completions, legacy completions, embeddings and the Responses API.
//!
//! Usage arrives once: at the end of a JSON body, or in the last chunk of a stream (chat
//! completions with `stream_options.include_usage`; Responses API `response.completed`,
//! `response.incomplete` and `response.failed`, where it sits inside `response`).
//! `prompt_tokens` already includes `cached_tokens`, and `completion_tokens` already includes
//! `reasoning_tokens`, which is the shape of [`Usage`].

use super::{parse_raw, push_str, Api, ErrorBody, Facts, ResponseMeter};
use crate::scan::{KeyProbe, TopLevelScanner};
use crate::usage::Usage;
use serde::Deserialize;

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
    ("usage", 4096),
    ("error", 8192),
    // Responses API stream events carry the whole response object, output included.
    ("response", 8 << 20),
    // Groq's streams put usage in `x_groq.usage` on the last chunk.
    ("x_groq", 4096),
];

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Both usage shapes: chat/completions/embeddings (`prompt_tokens`) and Responses (`input_tokens`).
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<Details>,
}

impl WireUsage {
    fn into_usage(self) -> Option<Usage> {
        let input = self.prompt_tokens?;
        Some(Usage {
            input,
            output: self.completion_tokens.unwrap_or(0),
            cached_input: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write: 0,
            reasoning: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        })
    }
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
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
            f.model = doc.string("model");
        }
        if let Some(u) = parse_raw::<WireUsage>(doc.raw("usage")).and_then(WireUsage::into_usage) {
            f.usage = Some(u);
            f.usage_final = true;
        }
        if let Some(e) = parse_raw::<ErrorBody>(doc.raw("error")).and_then(ErrorBody::best) {
            f.error = Some(e);
        }
        if let Some(u) = parse_raw::<XGroq>(doc.raw("x_groq"))
            .and_then(|x| x.usage)
            .and_then(WireUsage::into_usage)
        {
            f.usage = Some(u);
            f.usage_final = true;
        }
        if let Some(r) = parse_raw::<ResponseObject>(doc.raw("response")) {
            f.model = r.model.or(f.model.take());
            if let Some(u) = r.usage.and_then(WireUsage::into_usage) {
                f.usage = Some(u);
                f.usage_final = true;
            }
            f.error = r.error.and_then(ErrorBody::best).or(f.error.take());
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

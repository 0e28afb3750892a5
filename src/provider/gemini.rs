//! Google Gemini API: `models/{model}:generateContent` and `:streamGenerateContent`.
//!
//! The model is named in the path. Usage is `usageMetadata`, repeated on stream chunks with
//! running totals: the last one wins. `promptTokenCount` includes `cachedContentTokenCount`;
//! `thoughtsTokenCount` is billed as output but not included in `candidatesTokenCount`, so it is
//! added to output and reported as reasoning.
//!
//! `modelVersion` is sometimes a resource name (`models/gemini-2.5-flash`): the event carries the
//! model's name alone, as the path names it.

use super::{count, model_name, parse_raw, push_str, read_object, ErrorBody, Facts, ResponseMeter};
use crate::scan::TopLevelScanner;
use crate::usage::Usage;

/// `(model, streaming)` from `.../models/{model}:{method}`: `/v1beta/models/...`, `/v1/...`.
/// (Vertex AI's `.../publishers/google/models/...` paths are recognised first, by
/// [`super::vertex`], and read with this meter.)
pub fn model_for_path(path: &str) -> Option<(String, bool)> {
    let (_, rest) = path.rsplit_once("/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "generateContent" => Some((model.to_string(), false)),
        "streamGenerateContent" => Some((model.to_string(), true)),
        _ => None,
    }
}

/// A model name without its resource prefix: `models/gemini-2.5-flash` is `gemini-2.5-flash`.
fn bare_model(name: String) -> String {
    match name.strip_prefix("models/") {
        Some(bare) => bare.to_string(),
        None => name,
    }
}

const KEYS: &[(&str, usize)] = &[
    ("modelVersion", 256),
    ("usageMetadata", 4096),
    ("error", 8192),
];

#[derive(Default)]
struct WireUsage {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
}

impl WireUsage {
    fn read(raw: Option<&[u8]>) -> Option<WireUsage> {
        let mut u = WireUsage::default();
        read_object(raw, |k, v| match k {
            b"promptTokenCount" => count(&mut u.prompt_token_count, v),
            b"candidatesTokenCount" => count(&mut u.candidates_token_count, v),
            b"cachedContentTokenCount" => count(&mut u.cached_content_token_count, v),
            b"thoughtsTokenCount" => count(&mut u.thoughts_token_count, v),
            b"toolUsePromptTokenCount" => count(&mut u.tool_use_prompt_token_count, v),
            _ => true,
        })?;
        Some(u)
    }
}

#[derive(Default)]
pub struct GeminiMeter {
    facts: Facts,
}

impl ResponseMeter for GeminiMeter {
    fn keys(&self) -> &'static [(&'static str, usize)] {
        KEYS
    }

    fn on_document(&mut self, doc: &TopLevelScanner) {
        let f = &mut self.facts;
        if let Some(m) = model_name(doc.string("modelVersion").map(bare_model)) {
            f.model = Some(m);
        }
        if let Some(u) = WireUsage::read(doc.raw("usageMetadata")) {
            if let Some(input) = u.prompt_token_count {
                let thoughts = u.thoughts_token_count.unwrap_or(0);
                // Running totals: final only if the stream ends normally after them.
                f.usage_final = true;
                // Tool-use prompt tokens (results of the model's own tool calls, such as search)
                // are counted apart from the prompt, and billed as input.
                let input = input.saturating_add(u.tool_use_prompt_token_count.unwrap_or(0));
                f.usage = Some(Usage {
                    input,
                    output: u
                        .candidates_token_count
                        .unwrap_or(0)
                        .saturating_add(thoughts),
                    cached_input: u.cached_content_token_count.unwrap_or(0),
                    cache_write: 0,
                    reasoning: thoughts,
                    ..Usage::default()
                });
            }
        }
        if let Some(e) = parse_raw::<ErrorBody>(doc.raw("error")).and_then(ErrorBody::best) {
            f.error = Some(e);
        }
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn output_text(&self, event: &serde_json::Value, out: &mut String) {
        for candidate in event["candidates"].as_array().into_iter().flatten() {
            for part in candidate["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                push_str(part.get("text"), out);
            }
        }
    }
}

//! Anthropic Messages API.
//!
//! A JSON body carries `model` and `usage` at the top level. A stream carries them in
//! `message_start` (`message.model`, `message.usage` with the input side and a first
//! `output_tokens`), then `message_delta.usage` with the *cumulative* `output_tokens`, and
//! sometimes the input fields again. Every field takes its latest value; nothing is summed across
//! events, so repeated fields are never double counted. Anthropic's `input_tokens` excludes cache
//! reads and writes, so the total input is the sum of the three.
//!
//! Newer usage members are parts or counts beside these, not added to them:
//! `cache_creation.ephemeral_5m_input_tokens` and `ephemeral_1h_input_tokens` split
//! `cache_creation_input_tokens` by duration; `server_tool_use.web_search_requests` counts
//! searches (billed per use, not in tokens); `service_tier` names the tier. The hour-long part
//! and the searches are kept beside the totals, which stay those of the three counts.

use super::{
    count, member, model_name, parse_raw, push_str, read_object, Api, ErrorBody, Facts,
    ResponseMeter,
};
use crate::scan::{json_string, KeyProbe, TopLevelScanner};
use crate::usage::Usage;

/// `/v1/messages`, also behind a prefix (`/anthropic/v1/messages`). Not `count_tokens`.
pub fn api_for_path(path: &str) -> Option<Api> {
    path.trim_end_matches('/')
        .ends_with("/v1/messages")
        .then_some(Api::Messages)
}

const KEYS: &[(&str, usize)] = &[
    ("type", 64),
    ("model", 256),
    ("usage", 4096),
    ("error", 8192),
    // `message_start` carries the message without content; the cap bounds a hostile one.
    ("message", 64 << 10),
];

#[derive(Default)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_write_1h: Option<u64>,
    web_search_requests: Option<u64>,
    service_tier: Option<String>,
}

impl WireUsage {
    fn read(raw: Option<&[u8]>) -> Option<WireUsage> {
        let mut u = WireUsage::default();
        read_object(raw, |k, v| match k {
            b"input_tokens" => count(&mut u.input_tokens, v),
            b"output_tokens" => count(&mut u.output_tokens, v),
            b"cache_creation_input_tokens" => count(&mut u.cache_creation_input_tokens, v),
            b"cache_read_input_tokens" => count(&mut u.cache_read_input_tokens, v),
            b"cache_creation" => {
                v == b"null"
                    || read_object(Some(v), |k, v| {
                        k != b"ephemeral_1h_input_tokens" || count(&mut u.cache_write_1h, v)
                    })
                    .is_some()
            }
            b"server_tool_use" => {
                v == b"null"
                    || read_object(Some(v), |k, v| {
                        k != b"web_search_requests" || count(&mut u.web_search_requests, v)
                    })
                    .is_some()
            }
            b"service_tier" => json_string(v).map(|t| u.service_tier = t).is_ok(),
            _ => true,
        })?;
        Some(u)
    }
}

#[derive(Default)]
pub struct AnthropicMeter {
    input: Option<u64>,
    output: Option<u64>,
    cache_write: Option<u64>,
    cache_read: Option<u64>,
    cache_write_1h: Option<u64>,
    web_search: Option<u64>,
    facts: Facts,
}

impl AnthropicMeter {
    fn take(&mut self, u: WireUsage) {
        self.input = u.input_tokens.or(self.input);
        self.output = u.output_tokens.or(self.output);
        self.cache_write = u.cache_creation_input_tokens.or(self.cache_write);
        self.cache_read = u.cache_read_input_tokens.or(self.cache_read);
        self.cache_write_1h = u.cache_write_1h.or(self.cache_write_1h);
        self.web_search = u.web_search_requests.or(self.web_search);
        if let Some(t) = u.service_tier.filter(|t| !t.is_empty()) {
            self.facts.service_tier = Some(t);
        }
        self.facts.usage = self.usage();
    }

    fn usage(&self) -> Option<Usage> {
        let base = self.input?;
        let cache_write = self.cache_write.unwrap_or(0);
        let cache_read = self.cache_read.unwrap_or(0);
        Some(Usage {
            input: base.saturating_add(cache_write).saturating_add(cache_read),
            output: self.output.unwrap_or(0),
            cached_input: cache_read,
            cache_write,
            // Extended thinking is billed as output; the API does not report it apart.
            reasoning: 0,
            cache_write_1h: self.cache_write_1h.unwrap_or(0),
            web_search: self.web_search.unwrap_or(0),
        })
    }
}

impl ResponseMeter for AnthropicMeter {
    fn keys(&self) -> &'static [(&'static str, usize)] {
        KEYS
    }

    /// Only these keys teach the meter anything: a stream's many `content_block_delta` events
    /// (and pings) need not be scanned.
    fn needs_only(&self) -> Option<&'static KeyProbe> {
        static READ_KEYS: KeyProbe =
            KeyProbe::new(&["\"model\"", "\"usage\"", "\"message\"", "\"error\""]);
        Some(&READ_KEYS)
    }

    fn on_document(&mut self, doc: &TopLevelScanner) {
        if let Some(m) = model_name(doc.string("model")) {
            self.facts.model = Some(m);
        }
        if let Some(u) = WireUsage::read(doc.raw("usage")) {
            self.take(u);
            // Top-level usage is on a whole message body or on `message_delta`: both final.
            self.facts.usage_final = true;
        }
        // `message_start`: the message without content.
        let (mut model, mut usage) = (None, None);
        if read_object(doc.raw("message"), |k, v| match k {
            b"model" => json_string(v).map(|m| model = m).is_ok(),
            b"usage" => member(&mut usage, v, |v| WireUsage::read(Some(v))),
            _ => true,
        })
        .is_some()
        {
            if let Some(m) = model_name(model) {
                self.facts.model = Some(m);
            }
            if let Some(u) = usage {
                self.take(u);
            }
        }
        if let Some(e) = parse_raw::<ErrorBody>(doc.raw("error")).and_then(ErrorBody::best) {
            self.facts.error = Some(e);
        }
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn output_text(&self, event: &serde_json::Value, out: &mut String) {
        if event["type"] == "content_block_delta" {
            let delta = &event["delta"];
            for key in ["text", "partial_json", "thinking"] {
                push_str(delta.get(key), out);
            }
        }
    }
}

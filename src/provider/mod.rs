//! Provider detection and the per-provider reading of responses.
//!
//! Everything that differs between providers lives in one file each: which request paths and
//! hosts are theirs, which top-level response keys carry the model and usage, and how their usage
//! fields map onto [`Usage`]. The rest of the filter only sees [`ResponseMeter`].

pub mod anthropic;
pub mod gemini;
pub mod openai;

use crate::scan::TopLevelScanner;
use crate::usage::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }

    /// Names accepted in `X-Tally-Provider` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Provider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            "gemini" | "google" => Some(Provider::Gemini),
            _ => None,
        }
    }

    fn from_authority(authority: &str) -> Option<Provider> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        match host.to_ascii_lowercase().as_str() {
            "api.openai.com" => Some(Provider::OpenAi),
            "api.anthropic.com" => Some(Provider::Anthropic),
            "generativelanguage.googleapis.com" => Some(Provider::Gemini),
            _ => None,
        }
    }
}

/// The API shape of a request, which decides how its response is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    Messages,
    GenerateContent,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Messages => "messages",
            Api::GenerateContent => "generate_content",
        }
    }
}

/// What the request line tells about a metered call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub provider: Provider,
    pub api: Api,
    /// Gemini names the model in the path, not the body.
    pub path_model: Option<String>,
    /// Gemini's `streamGenerateContent` streams whatever the body says.
    pub path_streaming: bool,
}

/// Decide whether a request is a metered LLM call, and of which provider and API.
///
/// The path decides the API; the provider comes from `X-Tally-Provider`, else the host, else the
/// path (each provider's paths are distinct). Anything else passes unmetered.
pub fn detect(
    method: &str,
    path: &str,
    authority: &str,
    forced: Option<Provider>,
) -> Option<Route> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let by_host = Provider::from_authority(authority);
    let (provider, api, path_model, path_streaming) = if let Some(api) = openai::api_for_path(path)
    {
        (Provider::OpenAi, api, None, false)
    } else if let Some(api) = anthropic::api_for_path(path) {
        (Provider::Anthropic, api, None, false)
    } else if let Some((model, streaming)) = gemini::model_for_path(path) {
        (
            Provider::Gemini,
            Api::GenerateContent,
            Some(model),
            streaming,
        )
    } else {
        return None;
    };
    Some(Route {
        provider: forced.or(by_host).unwrap_or(provider),
        api,
        path_model,
        path_streaming,
    })
}

/// What a response has told so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Usage as far as the provider has reported it.
    pub usage: Option<Usage>,
    /// The provider's report is complete: no later event would change it. (Anthropic's
    /// `message_start` has the input side and a first output count; only `message_delta`
    /// completes it.)
    pub usage_final: bool,
    /// The model the provider says it served.
    pub model: Option<String>,
    /// The provider's machine-readable error code or type, when the body carried an error.
    pub error: Option<String>,
}

/// Reads one provider's response: either a whole JSON body or each SSE event's JSON data.
pub trait ResponseMeter {
    /// Top-level keys to record from each JSON document, with the most bytes kept of each.
    fn keys(&self) -> &'static [(&'static str, usize)];
    /// Take what a finished JSON document says (a body, or one stream event).
    fn on_document(&mut self, doc: &TopLevelScanner);
    fn facts(&self) -> &Facts;
    /// Append the generated text (content, tool-call arguments, reasoning) that one stream event
    /// carries; used to count output when no usage arrives.
    fn output_text(&self, event: &serde_json::Value, out: &mut String);
}

/// Append `v` when it is a string.
pub(crate) fn push_str(v: Option<&serde_json::Value>, out: &mut String) {
    if let Some(s) = v.and_then(serde_json::Value::as_str) {
        out.push_str(s);
    }
}

/// The meter follows the wire format (the API), not the label: an OpenAI-compatible provider
/// named by `X-Tally-Provider` still speaks chat completions.
pub fn response_meter(api: Api) -> Box<dyn ResponseMeter> {
    match api {
        Api::ChatCompletions | Api::Responses | Api::Completions | Api::Embeddings => {
            Box::new(openai::OpenAiMeter::default())
        }
        Api::Messages => Box::new(anthropic::AnthropicMeter::default()),
        Api::GenerateContent => Box::new(gemini::GeminiMeter::default()),
    }
}

/// Parse a recorded raw value as `T`, ignoring values of the wrong shape (and JSON `null`).
pub(crate) fn parse_raw<'a, T: serde::Deserialize<'a>>(raw: Option<&'a [u8]>) -> Option<T> {
    raw.and_then(|r| serde_json::from_slice::<Option<T>>(r).ok().flatten())
}

/// Error objects share a shape across providers: `{"error": {"type"|"code"|"status": ...}}`.
#[derive(serde::Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    #[serde(default)]
    pub status: Option<String>,
}

impl ErrorBody {
    /// The most specific code: `code` (when a string), else `status`, else `type`.
    pub fn best(self) -> Option<String> {
        match self.code {
            Some(serde_json::Value::String(c)) if !c.is_empty() => return Some(c),
            _ => {}
        }
        self.status.or(self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_path_host_and_override() {
        let r = detect("POST", "/v1/chat/completions?x=1", "127.0.0.1:10000", None).unwrap();
        assert_eq!(
            (r.provider, r.api),
            (Provider::OpenAi, Api::ChatCompletions)
        );
        let r = detect("POST", "/v1/messages", "localhost", None).unwrap();
        assert_eq!((r.provider, r.api), (Provider::Anthropic, Api::Messages));
        let r = detect(
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "generativelanguage.googleapis.com",
            None,
        )
        .unwrap();
        assert_eq!(r.provider, Provider::Gemini);
        assert_eq!(r.path_model.as_deref(), Some("gemini-2.5-flash"));
        assert!(r.path_streaming);
        let r = detect(
            "POST",
            "/v1/chat/completions",
            "api.openai.com",
            Some(Provider::Anthropic),
        )
        .unwrap();
        assert_eq!(r.provider, Provider::Anthropic);
        assert_eq!(detect("GET", "/v1/models", "api.openai.com", None), None);
        assert_eq!(detect("POST", "/v1/files", "api.openai.com", None), None);
    }
}

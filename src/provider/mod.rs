//! Provider detection and the per-provider reading of responses.
//!
//! Everything that differs between providers lives in one file each: which request paths and
//! hosts are theirs, which top-level response keys carry the model and usage, and how their usage
//! fields map onto [`Usage`]. The rest of the filter only sees [`ResponseMeter`].

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
pub mod vertex;

use crate::scan::TopLevelScanner;
use crate::usage::Usage;

/// Hosts of providers Tally knows, and their names in events. All but Anthropic and Gemini
/// speak the OpenAI wire formats.
const KNOWN_HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral"),
    ("api.deepseek.com", "deepseek"),
    ("api.together.xyz", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("openrouter.ai", "openrouter"),
    ("api.x.ai", "xai"),
];

/// A provider name as events carry it: 1 to 32 of `a-z 0-9 . _ -`.
pub fn valid_provider_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The provider a host belongs to, from the known list (Azure by its domain).
pub fn provider_for_host(authority: &str) -> Option<&'static str> {
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h)
        .to_ascii_lowercase();
    if host.ends_with(".openai.azure.com") || host.ends_with(".cognitiveservices.azure.com") {
        return Some("azure");
    }
    if bedrock::is_bedrock_host(&host) {
        return Some("bedrock");
    }
    if vertex::is_vertex_host(&host) {
        return Some(vertex::PROVIDER);
    }
    KNOWN_HOSTS
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, name)| *name)
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
    /// Bedrock's InvokeModel and InvokeModelWithResponseStream (the model's native body).
    BedrockInvoke,
    /// Bedrock's Converse and ConverseStream.
    BedrockConverse,
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
            Api::BedrockInvoke => "invoke_model",
            Api::BedrockConverse => "converse",
        }
    }
}

/// What the request line tells about a metered call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The provider's name in events (`openai`, `azure`, `groq`, `vllm`, ...).
    pub provider: String,
    pub api: Api,
    /// Gemini names the model in the path, Azure the deployment: used when the body names none.
    pub path_model: Option<String>,
    /// Gemini's `streamGenerateContent` streams whatever the body says.
    pub path_streaming: bool,
}

/// Decide whether a request is a metered LLM call, and of which provider and API.
///
/// The path decides the API (and so the wire format). The provider's name comes from
/// `forced` (`X-Tally-Provider`), else the configured `hosts` (authority, or host without port),
/// else the known provider hosts, else the path's own provider. Anything else passes unmetered.
pub fn detect(
    method: &str,
    path: &str,
    authority: &str,
    forced: Option<&str>,
    hosts: &[(String, String)],
) -> Option<Route> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let (by_path, api, path_model, path_streaming) =
        if let Some((api, deployment)) = openai::api_for_path(path) {
            let name = if deployment.is_some() {
                "azure"
            } else {
                "openai"
            };
            (name, api, deployment, false)
        } else if let Some(api) = anthropic::api_for_path(path) {
            ("anthropic", api, None, false)
        } else if let Some((api, model, streaming)) = vertex::route_for_path(path) {
            // Before Gemini's: a Vertex path also ends in `/models/{model}:generateContent`.
            (vertex::PROVIDER, api, Some(model), streaming)
        } else if let Some((model, streaming)) = gemini::model_for_path(path) {
            ("gemini", Api::GenerateContent, Some(model), streaming)
        } else if let Some((api, model, streaming)) = bedrock::route_for_path(path) {
            ("bedrock", api, Some(model), streaming)
        } else {
            return None;
        };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let configured = hosts
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(authority))
        .or_else(|| hosts.iter().find(|(h, _)| h.eq_ignore_ascii_case(host)))
        .map(|(_, name)| name.as_str());
    let provider = forced
        .or(configured)
        .or_else(|| provider_for_host(authority))
        .unwrap_or(by_path);
    Some(Route {
        provider: provider.to_string(),
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
    /// The service tier the provider says served the request.
    pub service_tier: Option<String>,
}

/// Reads one provider's response: either a whole JSON body or each SSE event's JSON data.
pub trait ResponseMeter {
    /// Top-level keys to record from each JSON document, with the most bytes kept of each.
    fn keys(&self) -> &'static [(&'static str, usize)];
    /// Take what a finished JSON document says (a body, or one stream event).
    fn on_document(&mut self, doc: &TopLevelScanner);
    /// Keys such that a stream event with none of them at its top level would teach this meter
    /// nothing now (so it need not be scanned); `None` while every event may matter.
    fn needs_only(&self) -> Option<&'static crate::scan::KeyProbe> {
        None
    }
    fn facts(&self) -> &Facts;
    /// Append the generated text (content, tool-call arguments, reasoning) that one stream event
    /// carries; used to count output when no usage arrives.
    fn output_text(&self, event: &serde_json::Value, out: &mut String);
    /// Take one message of an AWS event stream (Bedrock's streams).
    fn on_stream_message(&mut self, _m: &crate::eventstream::Message<'_>) {}
    /// Take what a response's headers say (Bedrock's): usage counts, and the error type.
    fn on_headers(&mut self, _h: &crate::provider::ProviderHeaders<'_>) {}
}

/// Response headers a provider reports in (Bedrock: `x-amzn-bedrock-input-token-count`,
/// `x-amzn-bedrock-output-token-count`, `x-amzn-errortype`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProviderHeaders<'a> {
    pub input_tokens: Option<&'a str>,
    pub output_tokens: Option<&'a str>,
    pub error_type: Option<&'a str>,
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
        // The model is the path's: see `bedrock::resolve_model`.
        Api::BedrockInvoke | Api::BedrockConverse => Box::new(bedrock::BedrockMeter::new(None)),
    }
}

/// Read a recorded object's members without serde (usage objects are read once per request):
/// `take(key, value)` says false when a member it reads has a value of the wrong type. `None`
/// when there is no object, it is not one, or a member was wrong (as serde's derive fails).
pub(crate) fn read_object(
    raw: Option<&[u8]>,
    mut take: impl FnMut(&[u8], &[u8]) -> bool,
) -> Option<()> {
    let mut typed = true;
    (crate::scan::for_each_member(raw?, |k, v| typed &= take(k, v)) && typed).then_some(())
}

/// A member object read into `slot` by `read`: false when the value is neither `null` nor
/// readable (a wrong type, as serde's derive fails on it).
pub(crate) fn member<T>(
    slot: &mut Option<T>,
    v: &[u8],
    read: impl FnOnce(&[u8]) -> Option<T>,
) -> bool {
    *slot = read(v);
    slot.is_some() || v == b"null"
}

/// A count into `slot`: false when the value is not `null` or an unsigned integer.
pub(crate) fn count(slot: &mut Option<u64>, v: &[u8]) -> bool {
    crate::scan::json_u64(v).map(|n| *slot = n).is_ok()
}

/// A model name as a provider reported it, if it names one: some send `""` (Azure's first chunk,
/// which carries only content-filter results), and an empty name must not hide the real one.
pub(crate) fn model_name(name: Option<String>) -> Option<String> {
    name.filter(|m| !m.trim().is_empty())
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
    /// The most specific code: `code` (when a string), else `status`, else `type`. A numeric
    /// `code` is an HTTP status (OpenRouter, vLLM, also inside a 200 stream): it is taken, in
    /// decimal, over a name the error mapping does not know.
    pub fn best(self) -> Option<String> {
        let number = match &self.code {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let name = match self.code {
            Some(serde_json::Value::String(c)) if !c.is_empty() => Some(c),
            _ => None,
        }
        .or(self.status)
        .or(self.kind);
        match (name, number) {
            (Some(name), Some(n)) if !crate::errors::is_known_code(&name) => Some(n),
            (name, number) => name.or(number),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_path_host_config_and_override() {
        let none: &[(String, String)] = &[];
        let d = |path: &str, host: &str, forced: Option<&str>| {
            detect("POST", path, host, forced, none).map(|r| (r.provider, r.api, r.path_model))
        };
        assert_eq!(
            d("/v1/chat/completions?x=1", "127.0.0.1:10000", None),
            Some(("openai".into(), Api::ChatCompletions, None))
        );
        assert_eq!(
            d("/v1/messages", "localhost", None),
            Some(("anthropic".into(), Api::Messages, None))
        );
        let r = detect(
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "generativelanguage.googleapis.com",
            None,
            none,
        )
        .unwrap();
        assert_eq!(r.provider, "gemini");
        assert_eq!(r.path_model.as_deref(), Some("gemini-2.5-flash"));
        assert!(r.path_streaming);
        // Azure: deployment in the path, resource host.
        assert_eq!(
            d(
                "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
                "acme.openai.azure.com",
                None
            ),
            Some((
                "azure".into(),
                Api::ChatCompletions,
                Some("prod-gpt4o".into())
            ))
        );
        // OpenAI-compatible hosts and their path prefixes.
        assert_eq!(
            d("/openai/v1/chat/completions", "api.groq.com", None).map(|r| r.0),
            Some("groq".into())
        );
        assert_eq!(
            d(
                "/inference/v1/chat/completions",
                "api.fireworks.ai:443",
                None
            )
            .map(|r| r.0),
            Some("fireworks".into())
        );
        assert_eq!(
            d("/api/v1/chat/completions", "openrouter.ai", None).map(|r| r.0),
            Some("openrouter".into())
        );
        assert_eq!(
            d("/chat/completions", "api.deepseek.com", None).map(|r| r.0),
            Some("deepseek".into())
        );
        // Configured hosts, by authority then host; the header wins over all.
        let hosts = vec![
            ("vllm.internal:8000".to_string(), "vllm".to_string()),
            ("ollama.local".to_string(), "ollama".to_string()),
        ];
        let c = |host: &str, forced| {
            detect("POST", "/v1/chat/completions", host, forced, &hosts).map(|r| r.provider)
        };
        assert_eq!(c("vllm.internal:8000", None), Some("vllm".into()));
        assert_eq!(c("ollama.local:11434", None), Some("ollama".into()));
        assert_eq!(c("api.openai.com", Some("mistral")), Some("mistral".into()));
        assert_eq!(d("/v1/models", "api.openai.com", None), None);
        assert_eq!(detect("GET", "/v1/chat/completions", "x", None, none), None);
        assert_eq!(d("/v1/files", "api.openai.com", None), None);
    }

    #[test]
    fn provider_names() {
        assert!(valid_provider_name("vllm"));
        assert!(valid_provider_name("together_ai"));
        assert!(!valid_provider_name("Bad Name"));
        assert!(!valid_provider_name(""));
    }

    /// What a meter takes from one JSON document.
    fn facts_of(api: Api, doc: &str) -> Facts {
        let mut meter = response_meter(api);
        let mut scanner = TopLevelScanner::new(meter.keys());
        scanner.feed(doc.as_bytes());
        meter.on_document(&scanner);
        meter.facts().clone()
    }

    fn usage(
        input: u64,
        output: u64,
        cached_input: u64,
        cache_write: u64,
        reasoning: u64,
    ) -> Usage {
        Usage {
            input,
            output,
            cached_input,
            cache_write,
            reasoning,
            ..Usage::default()
        }
    }

    #[test]
    fn usage_objects_read_without_serde() {
        let openai = |u: &str| facts_of(Api::ChatCompletions, &format!(r#"{{"usage":{u}}}"#)).usage;
        assert_eq!(
            openai(
                r#"{ "prompt_tokens" : 1117, "completion_tokens": 46, "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 7, "note": "a \"}\" b"},
                "extra": [{"x": [1, "]"]}], "tier": "default" }"#
            ),
            Some(usage(1117, 46, 1024, 0, 7))
        );
        // The Responses API's names, details given as null, unknown members of every type.
        assert_eq!(
            openai(
                r#"{"input_tokens":10,"output_tokens":5,"input_tokens_details":null,"output_tokens_details":{"reasoning_tokens":2},"x":true}"#
            ),
            Some(usage(10, 5, 0, 0, 2))
        );
        assert_eq!(openai(r#"{"prompt_tokens":3}"#), Some(usage(3, 0, 0, 0, 0)));
        // A repeated member: the last one wins, details whole.
        assert_eq!(
            openai(
                r#"{"prompt_tokens":1,"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":{}}"#
            ),
            Some(usage(9, 0, 0, 0, 0))
        );
        // No input count, a count of the wrong type, a broken object: no usage at all.
        for bad in [
            r#"{"completion_tokens":5}"#,
            r#"{"prompt_tokens":"5"}"#,
            r#"{"prompt_tokens":5,"completion_tokens":-1}"#,
            r#"{"prompt_tokens":5,"completion_tokens":2.0}"#,
            r#"{"prompt_tokens":5,"prompt_tokens_details":3}"#,
            r#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":"1"}}"#,
            r#"{"pr\u006fmpt_tokens":5}"#,
            "null",
            "[]",
        ] {
            assert_eq!(openai(bad), None, "{bad}");
        }
        // Groq's `x_groq.usage` and the Responses API's `response` object.
        assert_eq!(
            facts_of(
                Api::ChatCompletions,
                r#"{"choices":[],"x_groq":{"id":"r","usage":{"prompt_tokens":8,"completion_tokens":2}}}"#
            )
            .usage,
            Some(usage(8, 2, 0, 0, 0))
        );
        let r = facts_of(
            Api::Responses,
            r#"{"type":"response.completed","response":{"id":"r","model":"gpt-4.1","output":[{"content":[{"text":"{\"usage\":1}"}]}],"usage":{"input_tokens":6,"output_tokens":3,"input_tokens_details":{"cached_tokens":1}},"error":null}}"#,
        );
        assert_eq!(
            (r.model.as_deref(), r.usage),
            (Some("gpt-4.1"), Some(usage(6, 3, 1, 0, 0)))
        );
        let r = facts_of(
            Api::Responses,
            r#"{"response":{"model":"m","error":{"code":"server_error"},"usage":null}}"#,
        );
        assert_eq!(
            (r.model.as_deref(), r.usage, r.error.as_deref()),
            (Some("m"), None, Some("server_error"))
        );

        let anthropic = facts_of(
            Api::Messages,
            r#"{"model":"claude-sonnet-4-5","usage":{"input_tokens":500,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":60,"service_tier":"standard","cache_creation":{"ephemeral_5m_input_tokens":20}}}"#,
        );
        assert_eq!(anthropic.usage, Some(usage(620, 60, 100, 20, 0)));
        let start = facts_of(
            Api::Messages,
            r#"{"type":"message_start","message":{"id":"m","model":"claude-x","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        );
        assert_eq!(
            (start.model.as_deref(), start.usage),
            (Some("claude-x"), Some(usage(25, 1, 0, 0, 0)))
        );
        assert_eq!(
            facts_of(Api::Messages, r#"{"usage":{"input_tokens":null}}"#).usage,
            None
        );

        let gemini = facts_of(
            Api::GenerateContent,
            r#"{"usageMetadata":{"promptTokenCount":400,"candidatesTokenCount":60,"thoughtsTokenCount":12,"cachedContentTokenCount":100,"promptTokensDetails":[{"modality":"TEXT","tokenCount":400}]},"modelVersion":"gemini-2.5-flash"}"#,
        );
        assert_eq!(
            (gemini.model.as_deref(), gemini.usage),
            (Some("gemini-2.5-flash"), Some(usage(400, 72, 100, 0, 12)))
        );
    }

    /// What a meter takes from a run of JSON documents (stream events).
    fn facts_of_all(api: Api, docs: &[&str]) -> Facts {
        let mut meter = response_meter(api);
        let mut scanner = TopLevelScanner::new(meter.keys());
        for doc in docs {
            scanner.reset();
            scanner.feed(doc.as_bytes());
            meter.on_document(&scanner);
        }
        meter.facts().clone()
    }

    #[test]
    fn an_empty_model_never_hides_the_real_one() {
        let chat = facts_of_all(
            Api::ChatCompletions,
            &[
                r#"{"choices":[],"model":"","prompt_filter_results":[]}"#,
                r#"{"choices":[],"model":" "}"#,
                r#"{"choices":[],"model":"gpt-4o-2024-11-20"}"#,
                r#"{"choices":[],"model":""}"#,
            ],
        );
        assert_eq!(chat.model.as_deref(), Some("gpt-4o-2024-11-20"));
        let responses = facts_of_all(
            Api::Responses,
            &[
                r#"{"type":"response.created","response":{"model":"o4-mini-2025-04-16"}}"#,
                r#"{"type":"response.completed","response":{"model":""}}"#,
            ],
        );
        assert_eq!(responses.model.as_deref(), Some("o4-mini-2025-04-16"));
        let messages = facts_of_all(
            Api::Messages,
            &[
                r#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":1}}}"#,
                r#"{"type":"message_delta","model":"","usage":{"output_tokens":2}}"#,
            ],
        );
        assert_eq!(messages.model.as_deref(), Some("claude-x"));
        let gemini = facts_of_all(
            Api::GenerateContent,
            &[
                r#"{"modelVersion":"models/gemini-2.5-flash"}"#,
                r#"{"modelVersion":""}"#,
            ],
        );
        assert_eq!(gemini.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            facts_of(Api::GenerateContent, r#"{"modelVersion":"models/"}"#).model,
            None
        );
    }

    #[test]
    fn compatible_hosts_cache_counts() {
        let openai = |u: &str| facts_of(Api::ChatCompletions, &format!(r#"{{"usage":{u}}}"#)).usage;
        // DeepSeek: hits and misses add up to the prompt.
        assert_eq!(
            openai(
                r#"{"prompt_tokens":1536,"completion_tokens":4,"prompt_cache_hit_tokens":1472,"prompt_cache_miss_tokens":64}"#
            ),
            Some(usage(1536, 4, 1472, 0, 0))
        );
        // Both names: the same tokens, never added; a zero in one does not hide the other.
        assert_eq!(
            openai(
                r#"{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":64},"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}"#
            ),
            Some(usage(100, 0, 64, 0, 0))
        );
        assert_eq!(
            openai(
                r#"{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":64}"#
            ),
            Some(usage(100, 0, 64, 0, 0))
        );
        // OpenRouter: cache writes beside cache reads in the details.
        assert_eq!(
            openai(
                r#"{"prompt_tokens":194,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":100,"audio_tokens":0}}"#
            ),
            Some(usage(194, 2, 0, 100, 0))
        );
        // A later details object replaces the whole of an earlier one.
        assert_eq!(
            openai(
                r#"{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4,"cache_write_tokens":3},"prompt_tokens_details":{"cached_tokens":1}}"#
            ),
            Some(usage(9, 0, 1, 0, 0))
        );
        for bad in [
            r#"{"prompt_tokens":5,"prompt_cache_hit_tokens":"1"}"#,
            r#"{"prompt_tokens":5,"prompt_tokens_details":{"cache_write_tokens":-1}}"#,
        ] {
            assert_eq!(openai(bad), None, "{bad}");
        }
    }

    #[test]
    fn anthropic_usage_members_beside_the_counts() {
        let start = facts_of(
            Api::Messages,
            r#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":1,"service_tier":"standard","server_tool_use":null}}}"#,
        );
        // The hour-long part of the cache writes, and the tier, are kept beside the counts.
        assert_eq!(
            start.usage,
            Some(Usage {
                cache_write_1h: 2000,
                ..usage(3012, 1, 0, 3000, 0)
            })
        );
        assert_eq!(start.service_tier.as_deref(), Some("standard"));
        let body = facts_of(
            Api::Messages,
            r#"{"usage":{"input_tokens":10,"output_tokens":5,"server_tool_use":{"web_search_requests":2,"web_fetch_requests":1},"cache_creation":null}}"#,
        );
        assert_eq!(
            body.usage,
            Some(Usage {
                web_search: 2,
                ..usage(10, 5, 0, 0, 0)
            })
        );
    }

    #[test]
    fn error_codes_taken_from_error_objects() {
        let code = |e: &str| facts_of(Api::ChatCompletions, &format!(r#"{{"error":{e}}}"#)).error;
        assert_eq!(
            code(r#"{"message":"m","type":"server_error","param":null,"code":null}"#).as_deref(),
            Some("server_error")
        );
        // OpenRouter: the HTTP status as the code.
        assert_eq!(
            code(r#"{"code":502,"message":"m"}"#).as_deref(),
            Some("502")
        );
        // vLLM: a type no mapping knows, and the status: the status says more.
        assert_eq!(
            code(r#"{"object":"error","message":"m","type":"BadRequestError","param":null,"code":400}"#)
                .as_deref(),
            Some("400")
        );
        // Gemini: a known status name wins over the number.
        assert_eq!(
            code(r#"{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}"#).as_deref(),
            Some("RESOURCE_EXHAUSTED")
        );
        assert_eq!(code(r#"{"message":"m"}"#), None);
        assert_eq!(code("null"), None);
    }
}

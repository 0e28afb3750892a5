//! AWS Bedrock Runtime: `InvokeModel`, `InvokeModelWithResponseStream`, `Converse` and
//! `ConverseStream`, under `/model/{modelId}/invoke`, `/invoke-with-response-stream`,
//! `/converse` and `/converse-stream` on `bedrock-runtime[-fips].{region}.amazonaws.com`.
//!
//! The model is named by the path, URL-encoded: a model id (`anthropic.claude-3-5-haiku-...`),
//! an inference profile id (`us.anthropic...`), or an ARN. A foundation-model or
//! inference-profile ARN ends in the id it names; an application inference profile's ARN names
//! no model, so only the filter's `bedrock_models` configuration can map it (else the event's
//! `model_actual`, and so its cost, is null). `model_actual` is that Bedrock id, not the `model`
//! an Anthropic body carries, since Bedrock's prices are kept under its own ids.
//!
//! Usage, in the order it is trusted:
//! * the model's own usage in the body: Anthropic's `usage` (`input_tokens`, `output_tokens`,
//!   `cache_*`; `message_start` then `message_delta` in a stream), Amazon Nova's `usage`
//!   (`inputTokens`, `outputTokens`, `cacheReadInputTokenCount`, `cacheWriteInputTokenCount`;
//!   `metadata.usage` in a stream), Meta Llama's `prompt_token_count` and
//!   `generation_token_count`, Amazon Titan's `inputTextTokenCount` and `results[].tokenCount`,
//!   Converse's `usage` (`inputTokens`, `outputTokens`, `cacheReadInputTokens`,
//!   `cacheWriteInputTokens`; the `metadata` event of ConverseStream);
//! * a stream's last event's `amazon-bedrock-invocationMetrics` (`inputTokenCount`,
//!   `outputTokenCount`), for the counts the model's events did not give;
//! * InvokeModel's `x-amzn-bedrock-input-token-count` and `x-amzn-bedrock-output-token-count`
//!   response headers, when the body gave no counts.
//!
//! An error answer names its type in `x-amzn-errortype` (`ThrottlingException:http://...`),
//! taken as the provider's error code (so a 424 `ModelErrorException` is the model's error, not
//! the request's).
//!
//! Every input count Bedrock reports leaves cache reads and writes out (as Anthropic's does), so
//! the event's input is their sum. Cache writes kept for an hour, billed at their own rate, are
//! Anthropic's `cache_creation.ephemeral_1h_input_tokens` and Converse's `cacheDetails` entries
//! of `ttl` `1h`.
//!
//! A stream is AWS event-stream framing (`crate::eventstream`). InvokeModelWithResponseStream
//! sends each model event as a `chunk` event whose payload is `{"bytes":"<base64>"}`; ConverseStream
//! sends its events (`messageStart`, ..., `metadata`) as JSON payloads. An `exception` message
//! (`:exception-type`, e.g. `throttlingException`) or an `error` message (`:error-code`) is the
//! provider's error.
//!
//! Requests to Bedrock are signed with SigV4 over the host, the path, chosen headers and the
//! body's hash: nothing here or in the exchange changes them.

use super::{count, read_object, Api, Facts, ProviderHeaders, ResponseMeter};
use crate::eventstream::Message;
use crate::scan::TopLevelScanner;
use crate::usage::Usage;

/// `bedrock-runtime.{region}.amazonaws.com` and its FIPS variant (also in the China partition).
pub fn is_bedrock_host(host: &str) -> bool {
    let Some(rest) = host
        .strip_prefix("bedrock-runtime.")
        .or_else(|| host.strip_prefix("bedrock-runtime-fips."))
    else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        .unwrap_or("");
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The API, the model id as the path names it (decoded), and whether the response streams.
pub fn route_for_path(path: &str) -> Option<(Api, String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, op) = rest.rsplit_once('/')?;
    let (api, streaming) = match op {
        "invoke" => (Api::BedrockInvoke, false),
        "invoke-with-response-stream" => (Api::BedrockInvoke, true),
        "converse" => (Api::BedrockConverse, false),
        "converse-stream" => (Api::BedrockConverse, true),
        _ => return None,
    };
    let id = percent_decode(id)?;
    (!id.is_empty()).then_some((api, id, streaming))
}

/// `%XX` escapes decoded; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The Bedrock model a path's id stands for: the configured mapping first (application
/// inference profiles), then the id itself, or the id a foundation-model or inference-profile
/// ARN ends in. `None` for an ARN that names no model (application inference profiles,
/// provisioned, custom and imported models) without a mapping.
pub fn resolve_model(id: &str, mapped: &[(String, String)]) -> Option<String> {
    if let Some((_, model)) = mapped.iter().find(|(arn, _)| arn == id) {
        return Some(model.clone());
    }
    if !id.starts_with("arn:") {
        return Some(id.to_string());
    }
    // arn:PARTITION:bedrock:REGION:ACCOUNT:TYPE/NAME (a model id may itself hold `:`).
    let resource = id.splitn(6, ':').nth(5)?;
    match resource.split_once('/')? {
        ("foundation-model" | "inference-profile", name) if !name.is_empty() => {
            Some(name.to_string())
        }
        _ => None,
    }
}

/// Whether `arn` is an ARN a `bedrock_models` entry can map (checked at configuration load).
pub fn is_mappable_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "bedrock", region, _, resource]
        if partition.starts_with("aws") && !region.is_empty() && resource.contains('/'))
}

/// Standard base64 (with or without padding) into `out`; `false` on any other byte.
fn base64_decode(s: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let (mut acc, mut bits) = (0u32, 0u32);
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return false,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    true
}

/// Counts as one report gave them; each absent unless reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// The part of `cache_write` kept for an hour (billed at its own rate).
    cache_write_1h: Option<u64>,
}

/// One of Converse's `cacheDetails`: cache writes of one duration.
#[derive(serde::Deserialize)]
struct CacheDetail {
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default, rename = "inputTokens")]
    input_tokens: Option<u64>,
}

impl Counts {
    /// A `usage` object under any of the names Bedrock's models and Converse use.
    fn read_usage(raw: Option<&[u8]>) -> Option<Counts> {
        let mut c = Counts::default();
        read_object(raw, |k, v| match k {
            // OpenAI's models on Bedrock (gpt-oss) answer in chat completions' names.
            b"input_tokens" | b"inputTokens" | b"prompt_tokens" => count(&mut c.input, v),
            b"output_tokens" | b"outputTokens" | b"completion_tokens" => count(&mut c.output, v),
            b"cache_read_input_tokens" | b"cacheReadInputTokens" | b"cacheReadInputTokenCount" => {
                count(&mut c.cache_read, v)
            }
            b"cache_creation_input_tokens"
            | b"cacheWriteInputTokens"
            | b"cacheWriteInputTokenCount" => count(&mut c.cache_write, v),
            // Anthropic's split of its cache writes by duration.
            b"cache_creation" => {
                v == b"null"
                    || read_object(Some(v), |k, v| {
                        k != b"ephemeral_1h_input_tokens" || count(&mut c.cache_write_1h, v)
                    })
                    .is_some()
            }
            // Converse's: `[{"ttl":"1h","inputTokens":N},{"ttl":"5m",...}]`.
            b"cacheDetails" => {
                let details = serde_json::from_slice::<Option<Vec<CacheDetail>>>(v);
                if let Ok(Some(details)) = &details {
                    c.cache_write_1h = Some(
                        details
                            .iter()
                            .filter(|d| d.ttl.as_deref() == Some("1h"))
                            .filter_map(|d| d.input_tokens)
                            .fold(0, u64::saturating_add),
                    );
                }
                details.is_ok()
            }
            _ => true,
        })?;
        c.any().then_some(c)
    }

    /// `amazon-bedrock-invocationMetrics`.
    fn read_metrics(raw: Option<&[u8]>) -> Option<Counts> {
        let mut c = Counts::default();
        read_object(raw, |k, v| match k {
            b"inputTokenCount" => count(&mut c.input, v),
            b"outputTokenCount" => count(&mut c.output, v),
            b"cacheReadInputTokenCount" => count(&mut c.cache_read, v),
            b"cacheWriteInputTokenCount" => count(&mut c.cache_write, v),
            _ => true,
        })?;
        c.any().then_some(c)
    }

    fn any(&self) -> bool {
        self.input.is_some()
            || self.output.is_some()
            || self.cache_read.is_some()
            || self.cache_write.is_some()
    }

    /// These counts where reported, `older` where not.
    fn over(self, older: Counts) -> Counts {
        Counts {
            input: self.input.or(older.input),
            output: self.output.or(older.output),
            cache_read: self.cache_read.or(older.cache_read),
            cache_write: self.cache_write.or(older.cache_write),
            cache_write_1h: self.cache_write_1h.or(older.cache_write_1h),
        }
    }

    fn usage(&self) -> Option<Usage> {
        let base = self.input?;
        let cache_read = self.cache_read.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        Some(Usage {
            input: base.saturating_add(cache_read).saturating_add(cache_write),
            output: self.output.unwrap_or(0),
            cached_input: cache_read,
            cache_write,
            cache_write_1h: self.cache_write_1h.unwrap_or(0),
            ..Usage::default()
        })
    }
}

/// Top-level keys of a body, a model's stream event or a ConverseStream payload.
const KEYS: &[(&str, usize)] = &[
    ("usage", 4096),
    // Anthropic's `message_start`: the message without content.
    ("message", 64 << 10),
    // Nova's last stream event: `{"metadata":{"usage":{...}}}`.
    ("metadata", 4096),
    ("prompt_token_count", 32),
    ("generation_token_count", 32),
    ("inputTextTokenCount", 32),
    // Titan's generations, text included: bounded, counts only read.
    ("results", 1 << 20),
    ("amazon-bedrock-invocationMetrics", 1024),
];

/// A `chunk` event's payload, `{"bytes":"<base64>"}` (plus Bedrock's padding member `p`): the
/// cap is the documented most bytes of a part once base64 encodes them.
const PART_KEYS: &[(&str, usize)] = &[("bytes", 1_333_336)];

#[derive(serde::Deserialize)]
struct TitanResult {
    #[serde(default, rename = "tokenCount")]
    token_count: Option<u64>,
}

pub struct BedrockMeter {
    /// The model's own counts (latest value of each field).
    model: Counts,
    /// `amazon-bedrock-invocationMetrics`.
    metrics: Counts,
    /// InvokeModel's response headers.
    headers: Counts,
    /// The model's counts are complete.
    model_final: bool,
    facts: Facts,
    part: TopLevelScanner,
    event: TopLevelScanner,
    decoded: Vec<u8>,
}

impl BedrockMeter {
    /// A meter whose `model_actual` is `model` (see [`resolve_model`]).
    pub fn new(model: Option<String>) -> Self {
        BedrockMeter {
            model: Counts::default(),
            metrics: Counts::default(),
            headers: Counts::default(),
            model_final: false,
            facts: Facts {
                model,
                ..Facts::default()
            },
            part: TopLevelScanner::new(PART_KEYS),
            event: TopLevelScanner::new(KEYS),
            decoded: Vec::new(),
        }
    }

    /// Take one JSON document: a whole body (`body`), or one stream event.
    fn take(&mut self, doc: &TopLevelScanner, body: bool) {
        let mut found = Counts::default();
        let mut complete = false;
        if let Some(u) = Counts::read_usage(doc.raw("usage")) {
            found = u;
            // A body's usage, Anthropic's `message_delta`, a ConverseStream `metadata` event.
            complete = true;
        }
        let mut meta_usage = None;
        if read_object(doc.raw("metadata"), |k, v| {
            if k == b"usage" {
                meta_usage = Counts::read_usage(Some(v));
            }
            true
        })
        .is_some()
        {
            if let Some(u) = meta_usage {
                found = u.over(found);
                complete = true;
            }
        }
        // Anthropic's `message_start`: the input side and a first output count.
        let mut start_usage = None;
        if read_object(doc.raw("message"), |k, v| {
            if k == b"usage" {
                start_usage = Counts::read_usage(Some(v));
            }
            true
        })
        .is_some()
        {
            if let Some(u) = start_usage {
                found = u.over(found);
            }
        }
        // Meta Llama.
        let mut llama = Counts::default();
        let _ = count(
            &mut llama.input,
            doc.raw("prompt_token_count").unwrap_or(b"null"),
        );
        let _ = count(
            &mut llama.output,
            doc.raw("generation_token_count").unwrap_or(b"null"),
        );
        if llama.any() {
            found = llama.over(found);
            complete |= body;
        }
        // Amazon Titan.
        let mut titan = Counts::default();
        let _ = count(
            &mut titan.input,
            doc.raw("inputTextTokenCount").unwrap_or(b"null"),
        );
        if let Some(results) = super::parse_raw::<Vec<TitanResult>>(doc.raw("results")) {
            titan.output = Some(
                results
                    .iter()
                    .filter_map(|r| r.token_count)
                    .fold(0u64, u64::saturating_add),
            );
        }
        if titan.any() {
            found = titan.over(found);
            complete |= body;
        }
        if found.any() {
            self.model = found.over(self.model);
            self.model_final |= complete || body;
        }
        if let Some(m) = Counts::read_metrics(doc.raw("amazon-bedrock-invocationMetrics")) {
            self.metrics = m.over(self.metrics);
        }
        self.refresh();
    }

    /// Facts from what has been read: the model's counts, filled from the invocation metrics,
    /// else the headers' counts.
    fn refresh(&mut self) {
        let streamed = self.model.over(self.metrics);
        let (usage, complete) = if streamed.input.is_some() {
            (
                streamed.usage(),
                self.model_final || self.metrics.input.is_some(),
            )
        } else {
            (self.headers.usage(), self.headers.input.is_some())
        };
        self.facts.usage = usage;
        self.facts.usage_final = complete && usage.is_some();
    }
}

impl ResponseMeter for BedrockMeter {
    fn keys(&self) -> &'static [(&'static str, usize)] {
        KEYS
    }

    fn on_document(&mut self, doc: &TopLevelScanner) {
        self.take(doc, true);
    }

    fn on_headers(&mut self, h: &ProviderHeaders<'_>) {
        let n = |v: Option<&str>| v.and_then(|s| s.trim().parse::<u64>().ok());
        self.headers = Counts {
            input: n(h.input_tokens),
            output: n(h.output_tokens),
            ..Counts::default()
        };
        // `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`
        if let Some(kind) = h.error_type.and_then(|t| t.split(':').next()) {
            let kind = kind.trim();
            if !kind.is_empty() {
                self.facts.error = Some(kind.to_string());
            }
        }
        self.refresh();
    }

    fn on_stream_message(&mut self, m: &Message<'_>) {
        // An exception or error message fails the request even when it does not name its type:
        // the provider's error, unknown (`errors` maps it to `provider_error`).
        let named = |code: Option<&str>| {
            code.map(str::trim)
                .filter(|c| !c.is_empty())
                .unwrap_or(crate::errors::UNKNOWN_PROVIDER_ERROR)
                .to_string()
        };
        match m.message_type {
            Some("exception") => {
                self.facts.error = Some(named(m.exception_type));
                return;
            }
            Some("error") => {
                self.facts.error = Some(named(m.error_code));
                return;
            }
            _ => {}
        }
        let mut event = std::mem::replace(&mut self.event, TopLevelScanner::new(&[]));
        event.reset();
        if m.event_type == Some("chunk") {
            // InvokeModelWithResponseStream: the model's own event, base64 in a PayloadPart.
            self.part.reset();
            self.part.feed(m.payload);
            let mut decoded = std::mem::take(&mut self.decoded);
            let ok = self
                .part
                .string("bytes")
                .is_some_and(|b64| base64_decode(b64.as_bytes(), &mut decoded));
            if ok {
                event.feed(&decoded);
                self.take(&event, false);
            }
            self.decoded = decoded;
        } else {
            // ConverseStream: the event is the payload.
            event.feed(m.payload);
            self.take(&event, false);
        }
        self.event = event;
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn output_text(&self, _event: &serde_json::Value, _out: &mut String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(is_bedrock_host("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(is_bedrock_host(
            "bedrock-runtime-fips.us-gov-west-1.amazonaws.com"
        ));
        assert!(is_bedrock_host(
            "bedrock-runtime.cn-north-1.amazonaws.com.cn"
        ));
        assert!(!is_bedrock_host("bedrock.us-east-1.amazonaws.com"));
        assert!(!is_bedrock_host("bedrock-runtime..amazonaws.com"));
        assert!(!is_bedrock_host("bedrock-runtime.us-east-1.example.com"));
    }

    #[test]
    fn paths_and_models() {
        assert_eq!(
            route_for_path("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke"),
            Some((
                Api::BedrockInvoke,
                "anthropic.claude-3-5-haiku-20241022-v1:0".into(),
                false
            ))
        );
        assert_eq!(
            route_for_path("/model/us.amazon.nova-lite-v1:0/converse-stream"),
            Some((
                Api::BedrockConverse,
                "us.amazon.nova-lite-v1:0".into(),
                true
            ))
        );
        let arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fa1b2c3d4e5f6";
        let (api, id, streaming) =
            route_for_path(&format!("/model/{arn}/invoke-with-response-stream")).unwrap();
        assert_eq!((api, streaming), (Api::BedrockInvoke, true));
        assert_eq!(
            id,
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
        );
        assert_eq!(resolve_model(&id, &[]), None);
        let mapped = vec![(
            id.clone(),
            "anthropic.claude-3-5-haiku-20241022-v1:0".into(),
        )];
        assert_eq!(
            resolve_model(&id, &mapped).as_deref(),
            Some("anthropic.claude-3-5-haiku-20241022-v1:0")
        );
        assert!(is_mappable_arn(&id));
        assert!(!is_mappable_arn("anthropic.claude"));
        assert_eq!(
            resolve_model(
                "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0",
                &[]
            )
            .as_deref(),
            Some("meta.llama3-8b-instruct-v1:0")
        );
        assert_eq!(
            resolve_model(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
                &[]
            )
            .as_deref(),
            Some("us.anthropic.claude-3-5-haiku-20241022-v1:0")
        );
        assert_eq!(
            resolve_model("arn:aws:bedrock:us-east-1:1:provisioned-model/x", &[]),
            None
        );
        assert_eq!(route_for_path("/model/x/other"), None);
        assert_eq!(route_for_path("/model//invoke"), None);
        assert_eq!(route_for_path("/v1/model/x/invoke"), None);
    }

    #[test]
    fn base64() {
        let mut out = Vec::new();
        for (enc, dec) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert!(base64_decode(enc.as_bytes(), &mut out), "{enc}");
            assert_eq!(out, dec.as_bytes());
        }
        assert!(!base64_decode(b"Zm9v!", &mut out));
        assert!(!base64_decode(b"Zm\\u0039v", &mut out));
    }

    fn body(doc: &str) -> Facts {
        let mut m = BedrockMeter::new(Some("m".into()));
        let mut s = TopLevelScanner::new(m.keys());
        s.feed(doc.as_bytes());
        m.on_document(&s);
        m.facts().clone()
    }

    #[test]
    fn hour_long_cache_writes() {
        let anthropic = body(
            r#"{"usage":{"input_tokens":10,"cache_creation_input_tokens":300,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"output_tokens":5}}"#,
        );
        let u = anthropic.usage.unwrap();
        assert_eq!((u.input, u.cache_write, u.cache_write_1h), (310, 300, 200));
        let converse = body(
            r#"{"usage":{"inputTokens":10,"outputTokens":5,"totalTokens":315,"cacheWriteInputTokens":300,"cacheDetails":[{"ttl":"1h","inputTokens":200},{"ttl":"5m","inputTokens":100}]}}"#,
        );
        let u = converse.usage.unwrap();
        assert_eq!((u.input, u.cache_write, u.cache_write_1h), (310, 300, 200));
        // A details list of the wrong shape spoils the usage, as a wrong count does.
        assert_eq!(
            body(r#"{"usage":{"inputTokens":10,"cacheDetails":{"ttl":"1h"}}}"#).usage,
            None
        );
    }

    fn usage(input: u64, output: u64, cached: u64, write: u64) -> Option<Usage> {
        Some(Usage {
            input,
            output,
            cached_input: cached,
            cache_write: write,
            ..Usage::default()
        })
    }

    #[test]
    fn invoke_bodies_of_each_model_family() {
        let f = body(
            r#"{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":9}}"#,
        );
        assert_eq!(f.usage, usage(170, 9, 50, 100));
        assert!(f.usage_final);
        // The path's model, not the body's.
        assert_eq!(f.model.as_deref(), Some("m"));
        let llama = body(
            r#"{"generation":"Hello","prompt_token_count":18,"generation_token_count":7,"stop_reason":"stop"}"#,
        );
        assert_eq!(llama.usage, usage(18, 7, 0, 0));
        let nova = body(
            r#"{"output":{"message":{"content":[{"text":"Hi"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":4,"totalTokens":34,"cacheReadInputTokenCount":10,"cacheWriteInputTokenCount":0}}"#,
        );
        assert_eq!(nova.usage, usage(40, 4, 10, 0));
        let titan = body(
            r#"{"inputTextTokenCount":5,"results":[{"tokenCount":11,"outputText":"\n]}Hello","completionReason":"FINISH"}]}"#,
        );
        assert_eq!(titan.usage, usage(5, 11, 0, 0));
        let converse = body(
            r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":25,"outputTokens":12,"totalTokens":237,"cacheReadInputTokens":200,"cacheWriteInputTokens":0},"metrics":{"latencyMs":400}}"#,
        );
        assert_eq!(converse.usage, usage(225, 12, 200, 0));
        assert_eq!(body(r#"{"message":"Too many requests"}"#).usage, None);
    }

    fn counts(input: &str, output: &str) -> ProviderHeaders<'static> {
        ProviderHeaders {
            input_tokens: Some(Box::leak(input.into())),
            output_tokens: Some(Box::leak(output.into())),
            error_type: None,
        }
    }

    #[test]
    fn headers_count_when_the_body_does_not() {
        let mut m = BedrockMeter::new(None);
        m.on_headers(&counts("12", " 3"));
        assert_eq!(m.facts().usage, usage(12, 3, 0, 0));
        assert!(m.facts().usage_final);
        let mut s = TopLevelScanner::new(KEYS);
        s.feed(br#"{"usage":{"input_tokens":10,"cache_read_input_tokens":2,"output_tokens":3}}"#);
        m.on_document(&s);
        assert_eq!(m.facts().usage, usage(12, 3, 2, 0));
        let mut m = BedrockMeter::new(None);
        m.on_headers(&counts("x", ""));
        assert_eq!(m.facts().usage, None);
    }

    #[test]
    fn error_type_header() {
        let mut m = BedrockMeter::new(None);
        m.on_headers(&ProviderHeaders {
            error_type: Some(
                "ModelErrorException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
            ..ProviderHeaders::default()
        });
        assert_eq!(m.facts().error.as_deref(), Some("ModelErrorException"));
        assert_eq!(m.facts().usage, None);
        let mut m = BedrockMeter::new(None);
        m.on_headers(&ProviderHeaders {
            error_type: Some("ThrottlingException"),
            ..ProviderHeaders::default()
        });
        assert_eq!(m.facts().error.as_deref(), Some("ThrottlingException"));
    }

    #[test]
    fn stream_exception_or_error_without_its_type_is_a_provider_error() {
        use crate::event::{ErrorCategory, ErrorSource};
        for message_type in ["exception", "error"] {
            let mut m = BedrockMeter::new(None);
            m.on_stream_message(&Message {
                message_type: Some(message_type),
                payload: br#"{"message":"something went wrong"}"#,
                ..Message::default()
            });
            let code = m.facts().error.clone();
            assert!(code.is_some(), "{message_type}");
            assert_eq!(
                crate::errors::classify(Some(200), code.as_deref(), Some("via_upstream"), false),
                Some((ErrorCategory::ProviderError, ErrorSource::Provider)),
                "{message_type}"
            );
        }
        // Named, the type stays the provider's own.
        let mut m = BedrockMeter::new(None);
        m.on_stream_message(&Message {
            message_type: Some("exception"),
            exception_type: Some("throttlingException"),
            ..Message::default()
        });
        assert_eq!(m.facts().error.as_deref(), Some("throttlingException"));
    }

    #[test]
    fn stream_events_of_each_family() {
        let mut m = BedrockMeter::new(Some("m".into()));
        let feed = |m: &mut BedrockMeter, event: &str| {
            let mut e = TopLevelScanner::new(KEYS);
            e.feed(event.as_bytes());
            m.take(&e, false);
        };
        // Nova: `metadata.usage` in its last event, then the invocation metrics.
        feed(&mut m, r#"{"messageStart":{"role":"assistant"}}"#);
        feed(
            &mut m,
            r#"{"contentBlockDelta":{"delta":{"text":"Hi"},"contentBlockIndex":0}}"#,
        );
        assert_eq!(m.facts().usage, None);
        feed(
            &mut m,
            r#"{"metadata":{"usage":{"inputTokens":7,"outputTokens":3,"cacheReadInputTokenCount":4}},"amazon-bedrock-invocationMetrics":{"inputTokenCount":7,"outputTokenCount":3,"invocationLatency":9,"firstByteLatency":5}}"#,
        );
        assert_eq!(m.facts().usage, usage(11, 3, 4, 0));
        assert!(m.facts().usage_final);
        // Anthropic's `message_start` alone is not complete; its `message_delta` is.
        let mut m = BedrockMeter::new(None);
        feed(
            &mut m,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#,
        );
        assert_eq!(m.facts().usage, usage(5, 1, 0, 0));
        assert!(!m.facts().usage_final);
        feed(
            &mut m,
            r#"{"type":"message_delta","usage":{"output_tokens":8}}"#,
        );
        assert_eq!(m.facts().usage, usage(5, 8, 0, 0));
        assert!(m.facts().usage_final);
        // gpt-oss answers InvokeModel in chat completions' shape.
        let f = body(r#"{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":6}}"#);
        assert_eq!(f.usage, usage(20, 6, 0, 0));
    }
}

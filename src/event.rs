//! The metering event: one per metered request, the unit the filter sends and the collector
//! stores. Field names are the product contract (PRODUCT.md). Nothing here can hold content,
//! keys or bodies: every field is a count, a time, a label or an identifier.

use crate::usage::TokenSource;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    RateLimited,
    Auth,
    InvalidRequest,
    ContextLength,
    ContentFilter,
    NotFound,
    ProviderError,
    Overloaded,
    Timeout,
    UpstreamUnreachable,
    ClientDisconnect,
    ProxyError,
    /// Refused by a budget.
    BudgetExceeded,
    /// Refused by a rule.
    Blocked,
}

impl ErrorCategory {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCategory::RateLimited => "rate_limited",
            ErrorCategory::Auth => "auth",
            ErrorCategory::InvalidRequest => "invalid_request",
            ErrorCategory::ContextLength => "context_length",
            ErrorCategory::ContentFilter => "content_filter",
            ErrorCategory::NotFound => "not_found",
            ErrorCategory::ProviderError => "provider_error",
            ErrorCategory::Overloaded => "overloaded",
            ErrorCategory::Timeout => "timeout",
            ErrorCategory::UpstreamUnreachable => "upstream_unreachable",
            ErrorCategory::ClientDisconnect => "client_disconnect",
            ErrorCategory::ProxyError => "proxy_error",
            ErrorCategory::BudgetExceeded => "budget_exceeded",
            ErrorCategory::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    Provider,
    Proxy,
    Client,
    Network,
}

impl ErrorSource {
    pub fn name(self) -> &'static str {
        match self {
            ErrorSource::Provider => "provider",
            ErrorSource::Proxy => "proxy",
            ErrorSource::Client => "client",
            ErrorSource::Network => "network",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub request_id: String,
    /// When the request arrived: RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    /// The org's name: set by the filter when it sends with a mesh token (the org of the
    /// request's key), else by the collector from the key that sent the event.
    #[serde(default)]
    pub org_id: Option<String>,
    pub provider: String,
    pub api: String,
    pub endpoint: String,
    pub model_requested: Option<String>,
    pub model_actual: Option<String>,
    /// The HTTP status the client got; `None` when it got none (it left first).
    pub status: Option<u16>,
    pub streaming: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// The part of `cache_write_tokens` cached for an hour (Anthropic), billed at its own rate.
    #[serde(default)]
    pub cache_write_1h_tokens: Option<u64>,
    /// Server-side web searches the provider ran (billed per use).
    #[serde(default)]
    pub web_search_requests: Option<u64>,
    /// The service tier that served the request (`default`, `flex`, `priority`, ...), as the
    /// response says, else as the request asked; each is billed at its own rates.
    #[serde(default)]
    pub service_tier: Option<String>,
    pub token_source: Option<TokenSource>,
    /// Output tokens as Tally counted them, when it did: for a `measured` event the same as
    /// `output_tokens` before calibration; beside exact usage, a sample that teaches the
    /// collector the model's exact/measured ratio.
    #[serde(default)]
    pub measured_output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub error_category: Option<ErrorCategory>,
    pub error_source: Option<ErrorSource>,
    pub team: Option<String>,
    pub app: Option<String>,
    pub feature: Option<String>,
    pub task: Option<String>,
    pub session_id: Option<String>,
    pub user: Option<String>,
    /// Mesh identity of the caller (node metadata on a sidecar, the peer's SPIFFE ID at a
    /// gateway); absent from events of filters older than these fields.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[serde(default)]
    pub principal: Option<String>,
    pub rule: Option<String>,
    #[serde(default)]
    pub routed: bool,
    /// True when `rule` is a budget in shadow mode, which changed nothing.
    #[serde(default)]
    pub shadow: bool,
    /// The model sent upstream when a rule or budget changed it.
    #[serde(default)]
    pub model_routed: Option<String>,
    /// The request's W3C `traceparent`: its trace id and the caller's span id (hex), so that an
    /// exported span is a child of the caller's.
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub span_id: Option<String>,
}

impl Event {
    /// The model the event is priced and broken down by: the one that answered, else the one
    /// asked for.
    pub fn model(&self) -> Option<&str> {
        self.model_actual
            .as_deref()
            .or(self.model_requested.as_deref())
    }

    /// Refused by the proxy (a rule or a budget): it never reached a provider, so it cost
    /// nothing and counts against no budget.
    pub fn refused_by_proxy(&self) -> bool {
        self.error_source == Some(ErrorSource::Proxy)
            && matches!(
                self.error_category,
                Some(ErrorCategory::Blocked | ErrorCategory::BudgetExceeded)
            )
    }

    /// Append the event as one JSON line (no newline), byte for byte what `serde_json` writes for
    /// it: the filter builds one per request, and the generic serializer cost several times more.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = Writer { out, first: true };
        w.str("request_id", Some(&self.request_id));
        w.str("timestamp", Some(&self.timestamp));
        w.str("org_id", self.org_id.as_deref());
        w.str("provider", Some(&self.provider));
        w.str("api", Some(&self.api));
        w.str("endpoint", Some(&self.endpoint));
        w.str("model_requested", self.model_requested.as_deref());
        w.str("model_actual", self.model_actual.as_deref());
        w.int("status", self.status.map(u64::from));
        w.raw("streaming", if self.streaming { "true" } else { "false" });
        w.float("latency_ms", Some(self.latency_ms));
        w.float("ttfb_ms", self.ttfb_ms);
        w.int("input_tokens", self.input_tokens);
        w.int("output_tokens", self.output_tokens);
        w.int("cached_input_tokens", self.cached_input_tokens);
        w.int("cache_write_tokens", self.cache_write_tokens);
        w.int("reasoning_tokens", self.reasoning_tokens);
        w.int("cache_write_1h_tokens", self.cache_write_1h_tokens);
        w.int("web_search_requests", self.web_search_requests);
        w.str("service_tier", self.service_tier.as_deref());
        w.str("token_source", self.token_source.map(TokenSource::name));
        w.int("measured_output_tokens", self.measured_output_tokens);
        w.float("cost_usd", self.cost_usd);
        w.str(
            "error_category",
            self.error_category.map(ErrorCategory::name),
        );
        w.str("error_source", self.error_source.map(ErrorSource::name));
        w.str("team", self.team.as_deref());
        w.str("app", self.app.as_deref());
        w.str("feature", self.feature.as_deref());
        w.str("task", self.task.as_deref());
        w.str("session_id", self.session_id.as_deref());
        w.str("user", self.user.as_deref());
        w.str("namespace", self.namespace.as_deref());
        w.str("workload", self.workload.as_deref());
        w.str("principal", self.principal.as_deref());
        w.str("rule", self.rule.as_deref());
        w.raw("routed", if self.routed { "true" } else { "false" });
        w.raw("shadow", if self.shadow { "true" } else { "false" });
        w.str("model_routed", self.model_routed.as_deref());
        w.str("trace_id", self.trace_id.as_deref());
        w.str("span_id", self.span_id.as_deref());
        w.out.push(b'}');
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Writer<'_> {
    fn key(&mut self, key: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.extend_from_slice(value.as_bytes());
    }

    fn str(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => escape(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn int(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            Some(v) => {
                let mut digits = [0u8; 20];
                let mut i = digits.len();
                let mut v = v;
                loop {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                self.out.extend_from_slice(&digits[i..]);
            }
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn float(&mut self, key: &str, value: Option<f64>) {
        self.key(key);
        // serde_json's own number formatting (shortest round-trip; non-finite as null).
        if serde_json::to_writer(&mut *self.out, &value).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }
}

/// A JSON string literal, escaped as serde_json escapes it.
fn escape(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every value (ids, names, paths) needs no escape: one branch-free pass decides.
    if !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event() -> Event {
        Event {
            request_id: "3f0c1a2b-0000-4000-8000-000000000001".into(),
            timestamp: "2026-11-24T08:00:00.123Z".into(),
            org_id: None,
            provider: "openai".into(),
            api: "chat_completions".into(),
            endpoint: "/v1/chat/completions".into(),
            model_requested: Some("gpt-4o-mini".into()),
            model_actual: Some("gpt-4o-mini-2024-07-18".into()),
            status: Some(200),
            streaming: false,
            latency_ms: 812.345,
            ttfb_ms: Some(0.001),
            input_tokens: Some(1117),
            output_tokens: Some(46),
            cached_input_tokens: Some(1024),
            cache_write_tokens: Some(0),
            reasoning_tokens: Some(0),
            cache_write_1h_tokens: None,
            web_search_requests: None,
            service_tier: None,
            token_source: Some(TokenSource::Exact),
            measured_output_tokens: None,
            cost_usd: Some(0.000_245_175),
            error_category: None,
            error_source: None,
            team: Some("payments".into()),
            app: None,
            feature: Some("search \"quoted\" \\ \u{1}\u{7f} é 漢 🎉\n\t\r\u{8}\u{c}".into()),
            task: None,
            session_id: None,
            user: None,
            namespace: Some("payments".into()),
            workload: None,
            principal: Some("spiffe://cluster.local/ns/payments/sa/checkout".into()),
            rule: None,
            routed: false,
            shadow: false,
            model_routed: None,
            trace_id: None,
            span_id: None,
        }
    }

    /// The hand-written line is exactly serde_json's, for every shape of every field.
    #[test]
    fn writes_what_serde_json_writes() {
        let mut variants = vec![event()];
        let mut e = event();
        e.status = None;
        e.ttfb_ms = None;
        e.input_tokens = None;
        e.output_tokens = Some(u64::MAX);
        e.cost_usd = None;
        e.token_source = Some(TokenSource::MeasuredCalibrated);
        e.measured_output_tokens = Some(0);
        e.error_category = Some(ErrorCategory::UpstreamUnreachable);
        e.error_source = Some(ErrorSource::Network);
        e.org_id = Some("org".into());
        e.streaming = true;
        e.routed = true;
        e.rule = Some("r".into());
        e.shadow = true;
        e.model_routed = Some("gpt-4o-mini".into());
        e.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        e.span_id = Some("00f067aa0ba902b7".into());
        e.latency_ms = 1e21;
        variants.push(e);
        for cost in [0.0, 1e-12, 123_456.789, f64::NAN, f64::INFINITY] {
            let mut e = event();
            e.cost_usd = Some(cost);
            e.latency_ms = cost;
            variants.push(e);
        }
        for c in [
            ErrorCategory::RateLimited,
            ErrorCategory::Auth,
            ErrorCategory::InvalidRequest,
            ErrorCategory::ContextLength,
            ErrorCategory::ContentFilter,
            ErrorCategory::NotFound,
            ErrorCategory::ProviderError,
            ErrorCategory::Overloaded,
            ErrorCategory::Timeout,
            ErrorCategory::ClientDisconnect,
            ErrorCategory::ProxyError,
            ErrorCategory::BudgetExceeded,
            ErrorCategory::Blocked,
        ] {
            for s in [
                ErrorSource::Provider,
                ErrorSource::Proxy,
                ErrorSource::Client,
            ] {
                let mut e = event();
                e.error_category = Some(c);
                e.error_source = Some(s);
                e.token_source = Some(TokenSource::Measured);
                variants.push(e);
            }
        }
        for e in variants {
            let mut ours = Vec::new();
            e.write_json(&mut ours);
            let serde = serde_json::to_string(&e).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), serde);
        }
    }
}

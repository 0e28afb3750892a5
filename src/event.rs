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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    Provider,
    Proxy,
    Client,
    Network,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub request_id: String,
    /// When the request arrived: RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    /// Set by the collector from the key that sent the event.
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
    pub rule: Option<String>,
    #[serde(default)]
    pub routed: bool,
}

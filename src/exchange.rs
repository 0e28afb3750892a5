//! One metered request from its headers to its event, with no host calls: the proxy-wasm layer
//! hands it header values, body chunks and times, and takes back an [`Event`].
//!
//! ```text
//! request headers ─► begin()            route, attribution, headers to strip
//! request body    ─► on_request_body()  `model`, `stream` (scanned as chunks pass)
//! response headers─► on_response_headers() status, TTFB, JSON or SSE
//! response body   ─► on_response_body() usage, actual model, provider error code
//! stream end      ─► finish()           the event (the collector prices it)
//! ```

use crate::config::{Config, Field};
use crate::decode::{is_identity, Decoder};
use crate::errors::classify;
use crate::event::{ErrorCategory, ErrorSource, Event};
use crate::hold::BodyEdit;
use crate::identity::Identity;
use crate::measure::{self, Counted, Encoding, StreamRecord, Tokenizers};
use crate::org_keys::{self, KeyHash};
use crate::provider::{self, Api, ResponseMeter, Route};
use crate::rules::{self, Facts, Model, Refusal, Step, Verdict};
use crate::scan::TopLevelScanner;
use crate::sse::{SseEvent, SseParser, SseSink};
use crate::stream_usage::{self, UsageChunkStripper};
use crate::time::format_rfc3339_ms;
use crate::usage::{TokenSource, Usage};
use std::sync::Arc;

/// The most bytes of an attribution header value kept; labels, not documents.
const MAX_LABEL: usize = 128;
/// The most bytes of a model name and of an endpoint kept (the collector's limits).
const MAX_MODEL: usize = 256;
/// Longest service tier name kept.
const MAX_TIER: usize = 64;
const MAX_ENDPOINT: usize = 1024;

/// Most bytes of stream event data kept for counting output.
const MAX_RECORD: usize = 8 << 20;

const REQUEST_KEYS: &[(&str, usize)] = &[
    ("model", 256),
    // What the client asked for (`flex`, `priority`); the response's own word wins.
    ("service_tier", 64),
    (
        stream_usage::REQUEST_KEYS[0].0,
        stream_usage::REQUEST_KEYS[0].1,
    ),
    (
        stream_usage::REQUEST_KEYS[1].0,
        stream_usage::REQUEST_KEYS[1].1,
    ),
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub team: Option<String>,
    pub app: Option<String>,
    pub feature: Option<String>,
    pub task: Option<String>,
    pub session_id: Option<String>,
    pub user: Option<String>,
}

impl Attribution {
    /// Where a field's value goes; None for the fields that are not attribution.
    fn slot(&mut self, field: Field) -> Option<&mut Option<String>> {
        Some(match field {
            Field::Team => &mut self.team,
            Field::App => &mut self.app,
            Field::Feature => &mut self.feature,
            Field::Task => &mut self.task,
            Field::Session => &mut self.session_id,
            Field::User => &mut self.user,
            Field::Provider | Field::Key => return None,
        })
    }
}

/// What to do with a request, decided from its headers alone.
pub struct Begin {
    /// `Some` when the request is a metered LLM call.
    pub exchange: Option<Exchange>,
    /// The SHA-256 of the request's org key (`X-Tally-Key`), hashed as it was read: the key
    /// itself is never kept.
    pub key: Option<KeyHash>,
    /// An unmetered request that goes to a known (or configured) provider host (asked only
    /// when org keys are required).
    pub provider_host: bool,
    /// The API whose error format a refusal of this request speaks.
    pub refusal_api: Api,
    /// Attribution headers to remove before the request goes upstream (lower case).
    pub strip: Vec<String>,
    /// Remove `content-length` too: the body may grow (see `stream_usage`).
    pub drop_content_length: bool,
    /// The org key's header is covered by the request's SigV4 signature: it can be neither
    /// removed (the signature would fail) nor sent on to the provider, so the request is refused.
    pub signed_key: bool,
    /// The names of the signed org key headers (lower case): removed only as a last resort
    /// when the refusal cannot be sent (see `org_keys::stop_signed_key`).
    pub signed_key_headers: Vec<String>,
}

enum Body {
    /// Response headers not seen yet.
    Pending,
    Json(TopLevelScanner),
    Sse {
        parser: SseParser,
        doc: TopLevelScanner,
        /// No byte but white space has come yet: the body may still turn out to be one JSON
        /// document (an error served as `text/event-stream`, without the framing).
        sniffing: bool,
    },
    /// AWS event-stream framing (Bedrock's streams), each message to the meter.
    EventStream(crate::eventstream::Decoder),
    /// One JSON array of documents (Gemini's stream without `alt=sse`), each element to the
    /// meter as it closes.
    JsonArray(crate::json_array::ArrayScanner),
    /// Nothing to read (a content type that carries no usage).
    Ignore,
}

pub struct Exchange {
    route: Route,
    endpoint: String,
    attribution: Attribution,
    /// Shared with the VM when it is the node's: only its three event fields are copied.
    identity: Option<Arc<Identity>>,
    /// The org the event belongs to, when the filter names it (org keys per request, or a
    /// mesh token); None: the org of the key the batch is sent with.
    org: Option<String>,
    started_unix_ms: f64,
    request: TopLevelScanner,
    status: Option<u16>,
    ttfb_ms: Option<f64>,
    sse: bool,
    /// The response body reached its end (not cut short).
    complete: bool,
    body: Body,
    /// A stream's event data, kept to count output if no usage arrives.
    record: Option<StreamRecord>,
    meter: Box<dyn ResponseMeter>,
    /// Set when the response is compressed.
    decoder: Option<Decoder>,
    /// This request may get `stream_options.include_usage` added.
    may_add_usage: bool,
    /// It did: the usage chunk must be removed from the response.
    added_usage: bool,
    stripper: Option<UsageChunkStripper>,
    max_sse_event: usize,
    max_decoded: usize,
    /// The request carries a SigV4 signature: its body is never changed.
    signed: bool,
    /// What rules and budgets did to the request.
    acted: Acted,
    /// The body, held while a decision waits for the model or while the model's value is to be
    /// rewritten (None: every chunk passes as it is, the usual case).
    plan: Option<Plan>,
    /// The request's `traceparent`: its trace id and the caller's span id (lower-case hex).
    trace: Option<(String, String)>,
}

/// What rules and budgets did, for the event.
#[derive(Debug, Default)]
pub struct Acted {
    pub label: Option<String>,
    pub shadow: bool,
    pub model_routed: Option<String>,
    /// Refused by the proxy: the status and why.
    pub refused: Option<(u16, ErrorCategory)>,
    /// Budgets (indexes in the list the decision saw) this request's cost counts against.
    pub charged: Vec<usize>,
    /// A rewrite was skipped: the request is signed (SigV4), or names its model in the path.
    pub rewrite_skipped: bool,
    /// A model rule was passed over: the model came later than the hold's cap.
    pub passed_over_cap: bool,
    /// A rule chose the upstream (`x-tally-route`).
    pub rerouted: bool,
}

struct Plan {
    body: BodyEdit,
    /// Some while the decision waits for the model: hold the whole body (true: a refusal may
    /// follow) or only the model's value (false).
    waiting: Option<bool>,
    /// The model to send instead of the one asked for.
    rewrite: Option<String>,
    /// The most bytes held while waiting.
    cap: usize,
    /// Model values seen so far (a key given twice is rewritten twice).
    values: u32,
}

/// What a request chunk becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyStep {
    Pass,
    Replace(Vec<u8>),
    /// Refused by a rule or budget: answer it with [`rules::refusal_response`].
    Refuse(Refusal),
}

/// What happens at the headers once rules and budgets are asked.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadersStep {
    Go {
        /// The value for `x-tally-route`.
        route: Option<String>,
        /// The body may change size: `content-length` must go.
        body_may_change: bool,
    },
    Refuse(Refusal),
}

/// A label from a header value: trimmed, bounded, printable.
fn label(value: &str) -> Option<String> {
    clean(value, MAX_LABEL)
}

/// Text that came from a client or a provider, made fit for an event (the collector refuses
/// empty, over-long or control-character values, and one refused event would cost its batch):
/// control characters dropped, trimmed, cut at `max` bytes on a character boundary; `None` if
/// nothing is left.
fn clean(value: &str, max: usize) -> Option<String> {
    // The usual case: printable ASCII, already trimmed and short enough.
    let b = value.as_bytes();
    if !b.is_empty()
        && b.len() <= max
        && b.iter().all(|c| (0x21..0x7f).contains(c) || *c == b' ')
        && b[0] != b' '
        && b[b.len() - 1] != b' '
    {
        return Some(value.to_string());
    }
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.trim().chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == out.len() {
        Some(out)
    } else {
        Some(trimmed.to_string())
    }
}

/// Read the request headers. `headers` are (name, value) as Envoy gives them, names lower case,
/// pseudo-headers included; borrowed, so that the proxy layer need not copy them. Credential
/// headers are never looked at beyond their names.
pub fn begin<N: AsRef<str>, V: AsRef<str>>(
    cfg: &Config,
    headers: &[(N, V)],
    now_unix_ms: f64,
) -> Begin {
    let mut strip: Vec<String> = Vec::new();
    let mut attribution = Attribution::default();
    let mut forced = None;
    let mut key = None;
    let (mut method, mut path, mut authority) = ("", "", "");
    // The `SignedHeaders` lists of the request's SigV4 signature (header or presigned query).
    let mut signed_headers: Option<String> = None;
    // Any sign of a SigV4 signature: its body hash is signed too, so the body never changes.
    let mut sigv4 = false;
    // The caller's W3C trace context: identifiers only, passed on unchanged.
    let mut trace = None;
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        match name {
            ":method" => method = value,
            ":path" => path = value,
            ":authority" => authority = value,
            "authorization" if is_sigv4_authorization(value) => {
                sigv4 = true;
                if let Some(list) = sigv4_signed_headers(value) {
                    add_signed(&mut signed_headers, list);
                }
            }
            "x-amz-content-sha256" => sigv4 = true,
            "traceparent" => trace = parse_traceparent(value),
            _ => {}
        }
        let field = cfg.field_for_header(name);
        if field.is_none() && !name.starts_with("x-tally-") {
            continue;
        }
        if !strip.iter().any(|s| s == name) {
            strip.push(name.to_string());
        }
        let Some(field) = field else {
            continue;
        };
        match field {
            Field::Provider => {
                let name = value.trim().to_ascii_lowercase();
                forced = provider::valid_provider_name(&name).then_some(name);
            }
            // The org key is hashed where it lies and never copied.
            Field::Key if key.is_none() => key = Some(org_keys::hash(value)),
            _ => {
                if let Some(slot) = attribution.slot(field).filter(|s| s.is_none()) {
                    *slot = label(value);
                }
            }
        }
    }
    let (presigned, query_signed) = presigned_query(path);
    sigv4 |= presigned;
    if let Some(list) = query_signed {
        add_signed(&mut signed_headers, &list);
    }
    // A SigV4 signature covers the headers it lists: those stay (PRODUCT.md, "Request headers").
    let mut signed_key_headers = Vec::new();
    if let Some(signed) = signed_headers {
        strip.retain(|name| {
            let is_signed = signed
                .split(';')
                .any(|s| s.trim().eq_ignore_ascii_case(name));
            if is_signed && cfg.field_for_header(name) == Some(Field::Key) {
                signed_key_headers.push(name.clone());
            }
            !is_signed
        });
    }
    let signed_key = !signed_key_headers.is_empty();
    let exchange = provider::detect(
        method,
        path,
        authority,
        forced.as_deref(),
        &cfg.provider_hosts,
    )
    .map(|route| {
        let meter = meter_for(&route, cfg);
        // Never on a SigV4-signed request (Bedrock's OpenAI-compatible chat): the signature
        // covers the body's hash, and an edited body would be refused by AWS (PRODUCT.md).
        let may_add_usage = cfg.stream_usage
            && !sigv4
            && matches!(route.api, Api::ChatCompletions | Api::Completions);
        Exchange {
            may_add_usage,
            added_usage: false,
            stripper: None,
            endpoint: path.split(['?', '#']).next().unwrap_or("").to_string(),
            route,
            attribution,
            identity: None,
            org: None,
            started_unix_ms: now_unix_ms,
            request: TopLevelScanner::new(REQUEST_KEYS),
            status: None,
            ttfb_ms: None,
            sse: false,
            complete: false,
            body: Body::Pending,
            record: None,
            meter,
            decoder: None,
            max_sse_event: cfg.max_sse_event_bytes,
            max_decoded: cfg.max_decompressed_bytes,
            signed: sigv4,
            acted: Acted::default(),
            plan: None,
            trace: trace.take(),
        }
    });
    let drop_content_length = exchange.as_ref().is_some_and(|e| e.may_add_usage);
    // Only a filter that requires org keys asks where an unmetered request goes.
    let provider_host = cfg.require_org_key
        && exchange.is_none()
        && (provider::provider_for_host(authority).is_some()
            || cfg.provider_hosts.iter().any(|(h, _)| {
                h.eq_ignore_ascii_case(authority)
                    || authority
                        .rsplit_once(':')
                        .is_some_and(|(host, _)| h.eq_ignore_ascii_case(host))
            }));
    let refusal_api = exchange
        .as_ref()
        .map_or_else(|| org_keys::api_for_refusal(path), |e| e.route.api);
    Begin {
        exchange,
        key,
        provider_host,
        refusal_api,
        strip,
        drop_content_length,
        signed_key,
        signed_key_headers,
    }
}

/// The trace id and parent span id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`);
/// None for any other value, or all-zero ids (invalid by the spec). A later version's header
/// is read by its first four fields, as the spec says.
fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if (version == "00" && parts.next().is_some()) || zero(trace) || zero(span) {
        return None;
    }
    Some((trace.to_string(), span.to_string()))
}

/// An AWS SigV4 `Authorization` value: `AWS4-HMAC-SHA256 ...` (or SigV4a's
/// `AWS4-ECDSA-P256-SHA256 ...`), the scheme's case ignored.
fn is_sigv4_authorization(authorization: &str) -> bool {
    authorization
        .trim_start()
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("AWS4-"))
}

/// The `SignedHeaders` list of an AWS SigV4 `Authorization` value (`a;b;c`), if it is one.
fn sigv4_signed_headers(authorization: &str) -> Option<&str> {
    if !is_sigv4_authorization(authorization) {
        return None;
    }
    let (_, rest) = authorization.trim_start().split_once(char::is_whitespace)?;
    rest.split(',')
        .find_map(|part| part.trim().strip_prefix("SignedHeaders="))
        .map(str::trim)
}

/// Whether a path's query is a presigned SigV4 one (`X-Amz-Signature`, `X-Amz-SignedHeaders`,
/// `X-Amz-Algorithm`, `X-Amz-Credential`), and its `X-Amz-SignedHeaders` list, decoded
/// (`host%3Bx-tally-team` is `host;x-tally-team`).
fn presigned_query(path: &str) -> (bool, Option<String>) {
    let Some((_, query)) = path.split('#').next().unwrap_or("").split_once('?') else {
        return (false, None);
    };
    let (mut presigned, mut list) = (false, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("X-Amz-SignedHeaders") {
            presigned = true;
            let decoded = percent_decode(value);
            add_signed(&mut list, &decoded);
        } else if is("X-Amz-Signature") || is("X-Amz-Algorithm") || is("X-Amz-Credential") {
            presigned = true;
        }
    }
    (presigned, list)
}

/// Append a `SignedHeaders` list to those found so far.
fn add_signed(all: &mut Option<String>, list: &str) {
    match all {
        Some(all) => {
            all.push(';');
            all.push_str(list);
        }
        None => *all = Some(list.to_string()),
    }
}

/// `%XX` escapes (and `+`, a space) decoded, lossily; an escape that is not one stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The route's meter. Bedrock's model is the path's, or the configuration's for an ARN that names
/// none.
fn meter_for(route: &Route, cfg: &Config) -> Box<dyn ResponseMeter> {
    match route.api {
        Api::BedrockInvoke | Api::BedrockConverse => {
            let model = route
                .path_model
                .as_deref()
                .and_then(|id| provider::bedrock::resolve_model(id, &cfg.bedrock_models));
            Box::new(provider::bedrock::BedrockMeter::new(model))
        }
        _ => provider::response_meter(route.api),
    }
}

/// What the proxy layer knows once the exchange is over.
pub struct Finish<'a> {
    pub now_unix_ms: f64,
    pub request_id: String,
    /// Envoy's `response.code_details`, when available.
    pub code_details: Option<&'a str>,
    /// Envoy's final `response.code`, which covers local replies the filter did not see.
    pub final_status: Option<u16>,
}

impl Exchange {
    /// The API the request speaks (refusals answer in its error format).
    pub fn api(&self) -> Api {
        self.route.api
    }

    /// The caller's mesh identity: it goes on the event, and fills the attribution fields the
    /// request's headers left empty, as `mapping` says (headers win).
    pub fn set_identity(
        &mut self,
        identity: Arc<Identity>,
        mapping: &[(Field, crate::identity::Source)],
    ) {
        for (field, source) in mapping {
            if let Some(slot) = self.attribution.slot(*field).filter(|s| s.is_none()) {
                *slot = identity.get(source).and_then(label);
            }
        }
        self.identity = Some(identity);
    }

    /// The org the event belongs to (see `org_keys`).
    pub fn set_org(&mut self, org: Option<String>) {
        self.org = org;
    }

    /// What rules and budgets match on, with what is known of the model.
    pub fn facts<'a>(&'a self, model: Model<'a>) -> Facts<'a> {
        let a = &self.attribution;
        let id = self.identity.as_deref();
        Facts {
            team: a.team.as_deref(),
            app: a.app.as_deref(),
            feature: a.feature.as_deref(),
            task: a.task.as_deref(),
            user: a.user.as_deref(),
            namespace: id.and_then(|i| i.namespace.as_deref()),
            workload: id.and_then(|i| i.workload.as_deref()),
            principal: id.and_then(|i| i.principal.as_deref()),
            provider: &self.route.provider,
            model,
        }
    }

    /// The model as the headers know it: named in the path (Gemini, Vertex, Bedrock), to come
    /// in the body, or none at all.
    pub fn model_at_headers(&self) -> Model<'_> {
        match &self.route.path_model {
            Some(m) => Model::Known(m),
            None if self.body_names_model() => Model::Later,
            None => Model::Never,
        }
    }

    /// Whether the request's body carries `model` (and so can be rewritten there).
    fn body_names_model(&self) -> bool {
        self.route.path_model.is_none()
            && !matches!(self.route.api, Api::BedrockInvoke | Api::BedrockConverse)
    }

    /// Take the decision rules and budgets gave at the headers.
    pub fn at_headers(&mut self, step: Step, hold_cap: usize) -> HeadersStep {
        match step {
            Step::Wait { hold_all, route } => {
                self.plan = Some(Plan {
                    body: BodyEdit::default(),
                    waiting: Some(hold_all),
                    rewrite: None,
                    cap: hold_cap,
                    values: 0,
                });
                HeadersStep::Go {
                    route,
                    body_may_change: !self.signed,
                }
            }
            Step::Decided(v) => {
                let route = v.route.clone();
                if let Some(why) = self.take(v) {
                    return HeadersStep::Refuse(why);
                }
                let body_may_change = self.plan.as_ref().is_some_and(|p| p.rewrite.is_some());
                HeadersStep::Go {
                    route,
                    body_may_change,
                }
            }
        }
    }

    /// Record a decision; the refusal, if it is one.
    fn take(&mut self, v: Verdict) -> Option<Refusal> {
        let Verdict {
            refuse,
            rewrite,
            route,
            label,
            shadow,
            charged,
            passed_over_cap,
        } = v;
        self.acted.passed_over_cap |= passed_over_cap;
        self.acted.charged = charged;
        if let Some(why) = refuse {
            let category = match why {
                Refusal::Budget { .. } => ErrorCategory::BudgetExceeded,
                Refusal::Rule(_) | Refusal::OverCap(_) => ErrorCategory::Blocked,
            };
            self.acted.refused = Some((rules::refusal_status(&why), category));
            self.acted.label = match &why {
                Refusal::Rule(l) | Refusal::OverCap(l) => Some(l.clone()),
                Refusal::Budget { label, .. } => Some(label.clone()),
            };
            if let Some(p) = self.plan.as_mut() {
                p.waiting = None;
            }
            return Some(why);
        }
        let rewrite = match rewrite {
            Some(_) if self.signed || !self.body_names_model() => {
                // A signed body cannot change (its hash is signed); a path's model is not
                // rewritten. The rule or budget did not act.
                self.acted.rewrite_skipped = true;
                None
            }
            other => other,
        };
        let acted = rewrite.is_some() || route.is_some() || shadow;
        if acted {
            self.acted.label = label;
            self.acted.shadow = shadow;
            self.acted.rerouted = route.is_some();
        }
        if let Some(m) = rewrite {
            let plan = self.plan.get_or_insert_with(|| Plan {
                body: BodyEdit::default(),
                waiting: None,
                rewrite: None,
                cap: 0,
                values: 0,
            });
            plan.rewrite = Some(m);
        }
        if let Some(p) = self.plan.as_mut() {
            p.waiting = None;
        }
        None
    }

    /// What rules and budgets did, so far.
    pub fn acted(&self) -> &Acted {
        &self.acted
    }

    /// Scan a request chunk with no rule or budget to ask: the bytes to send instead of it,
    /// when it must change.
    pub fn on_request_body(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        match self.on_request_chunk(chunk, false, &mut |_| Step::Decided(Verdict::default())) {
            BodyStep::Replace(b) => Some(b),
            BodyStep::Pass | BodyStep::Refuse(_) => None,
        }
    }

    /// Scan a request chunk. Returns the bytes to send instead of it, when it must change.
    /// `decide` asks rules and budgets again once the model is known (or known never to come).
    pub fn on_request_chunk(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        decide: &mut dyn FnMut(&Facts<'_>) -> Step,
    ) -> BodyStep {
        let close = self.request.feed(chunk);
        let insert =
            close.filter(|_| self.may_add_usage && stream_usage::should_insert(&self.request));
        if self.plan.is_none() {
            return match insert {
                Some(close) => {
                    self.added_usage = true;
                    BodyStep::Replace(stream_usage::insert_member(chunk, close))
                }
                None => BodyStep::Pass,
            };
        }
        let fed = self.request.fed();
        let chunk_start = fed - chunk.len() as u64;
        let mut passes_as_is = self.plan.as_ref().is_some_and(|p| p.body.is_clear());
        if let Some(p) = self.plan.as_mut() {
            p.body.push(chunk);
            if let Some(close) = insert {
                let at = chunk_start + close as u64;
                self.added_usage = p.body.edit(at, at, stream_usage::INSERTED_MEMBER.to_vec());
                passes_as_is = false;
            }
        }
        // A new model value: decide, if waiting, and rewrite it, if so decided.
        if let Some((start, end, n)) = self.request.span("model") {
            let seen = self.plan.as_ref().map_or(0, |p| p.values);
            if self.plan.is_some() && n > seen {
                let waiting = self.plan.as_ref().and_then(|p| p.waiting);
                let cap = self.plan.as_ref().map_or(0, |p| p.cap as u64);
                if let Some(p) = self.plan.as_mut() {
                    p.values = n;
                }
                // The first value, while waiting; or a later one (a key given twice, which
                // providers read as its last value): the decision follows the value that counts.
                if waiting.is_some() || seen > 0 {
                    let model = self.request.string("model");
                    // Past the cap by its place in the body, however the body was cut into
                    // chunks: the decision does not depend on how the bytes arrived.
                    let late = waiting == Some(true) && start > cap;
                    let step = {
                        let m = match model.as_deref() {
                            _ if late => Model::PastCap,
                            Some(m) => Model::Known(m),
                            None => Model::Never,
                        };
                        decide(&self.facts(m))
                    };
                    if seen > 0 {
                        // The earlier value's rewrite no longer counts.
                        if let Some(p) = self.plan.as_mut() {
                            p.rewrite = None;
                        }
                        self.acted.model_routed = None;
                    }
                    if let Some(why) = self.decided(step) {
                        return BodyStep::Refuse(why);
                    }
                }
                if let Some(p) = self.plan.as_mut() {
                    if let Some(new) = p.rewrite.clone() {
                        let quoted = serde_json::to_vec(&new).unwrap_or_default();
                        if !quoted.is_empty() && p.body.edit(start, end, quoted) {
                            self.acted.model_routed = Some(new);
                            passes_as_is = false;
                        }
                    }
                }
            }
        }
        // Still waiting: the model will never come, or not within the cap.
        if let Some(Some(_)) = self.plan.as_ref().map(|p| p.waiting) {
            // Only a whole-body hold keeps bytes: the cap bounds it. (Holding only the model's
            // value keeps at most that value, and waits as long as the body flows.) A model
            // value that began within the cap is waited for, whatever the chunking.
            let open = self.request.open_value("model");
            let over_cap = self.plan.as_ref().is_some_and(|p| {
                p.waiting == Some(true)
                    && p.body.held() > p.cap
                    && open.is_none_or(|at| at > p.cap as u64)
            });
            let never = end_of_stream || self.request.is_done() || self.request.is_invalid();
            if never || over_cap {
                let m = if never { Model::Never } else { Model::PastCap };
                let step = decide(&self.facts(m));
                if let Some(why) = self.decided(step) {
                    return BodyStep::Refuse(why);
                }
            }
        }
        let open_model = self.request.open_value("model");
        let Some(p) = self.plan.as_mut() else {
            return BodyStep::Pass;
        };
        let upto = match p.waiting {
            Some(true) => p.body.released_to(),
            // Only the model's value can change: hold it while it is incomplete.
            _ if !end_of_stream && (p.waiting.is_some() || p.rewrite.is_some()) => {
                open_model.unwrap_or(fed)
            }
            _ => fed,
        };
        if passes_as_is && upto == fed && p.body.released_to() == chunk_start {
            // Nothing held before, nothing to hold or change now: the chunk goes as it is.
            p.body.release(upto);
            return BodyStep::Pass;
        }
        BodyStep::Replace(p.body.release(upto))
    }

    /// A decision made in the body; the refusal, if it is one.
    fn decided(&mut self, step: Step) -> Option<Refusal> {
        match step {
            Step::Decided(v) => self.take(v),
            // With the model known (or never coming), nothing waits: keep holding at worst.
            Step::Wait { .. } => None,
        }
    }

    /// The most request bytes held at once (0 when nothing was).
    pub fn held_max(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.body.held_max)
    }

    /// The refusal could not be sent, so the request goes on after all (the filter never breaks
    /// traffic itself): it is no longer refused, and everything held goes now, as the bytes to
    /// send instead of the current chunk (None: nothing was held).
    pub fn refusal_failed(&mut self) -> Option<Vec<u8>> {
        self.acted.refused = None;
        self.acted.label = None;
        let p = self.plan.as_mut()?;
        p.waiting = None;
        Some(p.body.release(u64::MAX))
    }

    /// A refused request: what was held is dropped (the refusal was sent).
    pub fn refused_sent(&mut self) {
        if let Some(p) = self.plan.as_mut() {
            p.body.drop_all();
        }
    }

    /// Whether a decision still waits for the model.
    pub fn waiting(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.waiting.is_some())
    }

    /// The proxy could not replace the request chunk: the provider will send no usage chunk.
    pub fn request_edit_failed(&mut self) {
        self.added_usage = false;
    }

    /// Whether Envoy's own account of the response (final status, code details) can add anything:
    /// not when the filter saw a 2xx response through to its end, which is most requests. An
    /// error status may be Envoy's own reply (a route timeout's 504), which only the details tell
    /// apart from the provider's. Saves the host calls that read them.
    pub fn needs_proxy_details(&self) -> bool {
        !(self.complete && self.status.is_some_and(|s| (200..300).contains(&s)))
    }

    /// True when response chunks may be rewritten (so a `content-length` must go).
    pub fn rewrites_response(&self) -> bool {
        self.stripper.is_some()
    }

    pub fn on_response_headers(
        &mut self,
        status: Option<u16>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        now_unix_ms: f64,
    ) {
        self.status = status;
        self.ttfb_ms = Some(now_unix_ms - self.started_unix_ms);
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if !is_identity(content_encoding) {
            self.decoder =
                content_encoding.and_then(|e| Decoder::for_encoding(e, self.max_decoded));
            if self.decoder.is_none() {
                // An encoding Tally cannot decode: no usage rather than a wrong one.
                self.body = Body::Ignore;
                return;
            }
        }
        self.body = if ct.starts_with("text/event-stream") {
            self.sse = true;
            self.record = Some(StreamRecord::new(MAX_RECORD));
            // A compressed stream cannot be edited cheaply; its client keeps the usage chunk.
            if self.added_usage && self.decoder.is_none() {
                self.stripper = Some(UsageChunkStripper::default());
            }
            Body::Sse {
                parser: SseParser::new(self.max_sse_event),
                doc: TopLevelScanner::new(self.meter.keys()),
                sniffing: true,
            }
        } else if ct.starts_with("application/vnd.amazon.eventstream") {
            // A stream like SSE: cut short, it is interrupted; usage only from its end.
            self.sse = true;
            Body::EventStream(crate::eventstream::Decoder::new(
                crate::eventstream::MAX_MESSAGE,
            ))
        } else if ct.contains("json")
            && self.route.path_streaming
            // A Bedrock stream's JSON is an error answer: read below as the JSON body it is.
            && !matches!(self.route.api, Api::BedrockInvoke | Api::BedrockConverse)
        {
            // Gemini's `streamGenerateContent` without `alt=sse`: a stream like SSE, one array
            // element per chunk of the answer (or a lone error object).
            self.sse = true;
            self.record = Some(StreamRecord::json_array(MAX_RECORD));
            Body::JsonArray(crate::json_array::ArrayScanner::new(self.meter.keys()))
        } else if ct.contains("json") {
            Body::Json(TopLevelScanner::new(self.meter.keys()))
        } else {
            Body::Ignore
        };
    }

    /// What the response headers of a provider that reports in them say (Bedrock's usage
    /// counts and error type).
    pub fn on_provider_headers(&mut self, h: &provider::ProviderHeaders<'_>) {
        self.meter.on_headers(h);
    }

    /// Whether the response headers may say something ([`Exchange::on_provider_headers`]).
    pub fn reads_provider_headers(&self) -> bool {
        matches!(self.route.api, Api::BedrockInvoke | Api::BedrockConverse)
    }

    /// Read a response chunk. Returns the bytes to send instead of it, when it must change.
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        if end_of_stream {
            self.complete = true;
        }
        self.read(chunk, end_of_stream);
        self.stripper
            .as_mut()
            .and_then(|s| s.on_chunk(chunk, end_of_stream))
    }

    fn read(&mut self, chunk: &[u8], end_of_stream: bool) {
        let data = match &mut self.decoder {
            None => Some(chunk),
            // Corrupt or past the cap: stop reading this body.
            Some(d) => d.feed(chunk).ok(),
        };
        match data {
            Some(data) => read_body(
                &mut self.body,
                self.meter.as_mut(),
                &mut self.record,
                data,
                end_of_stream,
            ),
            None => {
                self.body = Body::Ignore;
                self.decoder = None;
            }
        }
    }

    /// Build the event. Call once, when Envoy is done with the stream. `tokenizers` counts
    /// output when the provider reported no (complete) usage; when the vocabulary for that is
    /// not here yet (the wasm filter fetches it), the event comes with what is left to count.
    pub fn finish(
        mut self,
        fin: Finish<'_>,
        tokenizers: &mut Tokenizers,
    ) -> (Event, Option<Uncounted>) {
        if !self.complete {
            // A body cut short still yields what it carried so far.
            self.read(&[], true);
        }
        let refused = self.acted.refused;
        let status = refused.map(|(s, _)| s).or(fin.final_status).or(self.status);
        let model_requested = if matches!(self.route.api, Api::BedrockInvoke | Api::BedrockConverse)
        {
            // Bedrock's path names the model; a body's `model` is the model's own business.
            self.route.path_model.clone()
        } else {
            self.request
                .string("model")
                .or_else(|| self.route.path_model.clone())
        };
        let facts = self.meter.facts().clone();
        let model_actual = facts.model;
        let model = model_actual.as_deref().or(model_requested.as_deref());
        let exact = facts
            .usage
            .filter(|_| facts.usage_final && (self.complete || !self.sse))
            .map(Usage::consistent);
        let input_known = exact.is_some() || facts.usage.is_some();
        let (measured, uncounted) =
            match self.measure(exact.is_some(), model.unwrap_or(""), tokenizers) {
                Measure::Counted(n) => (n, None),
                Measure::Later(enc, text) => (
                    None,
                    Some(Uncounted {
                        enc,
                        text,
                        reported: facts.usage,
                        input_known,
                    }),
                ),
            };
        let interrupted = self.sse && !self.complete;
        let (error_category, error_source) = match refused {
            Some((_, c)) => (Some(c), Some(ErrorSource::Proxy)),
            None => match classify(
                status,
                facts.error.as_deref(),
                fin.code_details,
                interrupted,
            ) {
                Some((c, s)) => (Some(c), Some(s)),
                None => (None, None),
            },
        };
        let streaming =
            self.sse || self.route.path_streaming || self.request.boolean("stream") == Some(true);
        let a = self.attribution;
        let identity = self.identity;
        let mut event = Event {
            request_id: fin.request_id,
            timestamp: format_rfc3339_ms(self.started_unix_ms as i64),
            org_id: self.org,
            provider: self.route.provider,
            api: self.route.api.name().to_string(),
            endpoint: clean(&self.endpoint, MAX_ENDPOINT).unwrap_or_else(|| "/".into()),
            model_requested: model_requested.and_then(|m| clean(&m, MAX_MODEL)),
            model_actual: model_actual.and_then(|m| clean(&m, MAX_MODEL)),
            status,
            streaming,
            latency_ms: round_ms(fin.now_unix_ms - self.started_unix_ms),
            ttfb_ms: self.ttfb_ms.map(round_ms),
            // Set below, by `set_tokens`.
            input_tokens: None,
            output_tokens: None,
            cached_input_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
            cache_write_1h_tokens: None,
            web_search_requests: None,
            service_tier: facts
                .service_tier
                .or_else(|| self.request.string("service_tier"))
                .and_then(|t| clean(&t, MAX_TIER)),
            token_source: None,
            measured_output_tokens: None,
            // Priced by the collector (PRODUCT.md, "Where prices are applied").
            cost_usd: None,
            error_category,
            error_source,
            team: a.team,
            app: a.app,
            feature: a.feature,
            task: a.task,
            session_id: a.session_id,
            user: a.user,
            namespace: identity.as_ref().and_then(|i| i.namespace.clone()),
            workload: identity.as_ref().and_then(|i| i.workload.clone()),
            principal: identity.as_ref().and_then(|i| i.principal.clone()),
            trace_id: self.trace.as_ref().map(|(t, _)| t.clone()),
            span_id: self.trace.map(|(_, s)| s),
            routed: self.acted.model_routed.is_some() || self.acted.rerouted,
            model_routed: self.acted.model_routed,
            rule: self.acted.label,
            shadow: self.acted.shadow,
        };
        set_tokens(&mut event, exact, measured, facts.usage, input_known);
        (event, uncounted)
    }

    /// Count a stream's output: always when exact usage is missing, and as a calibration sample
    /// now and then when it is present and the tokenizer is loaded anyway.
    fn measure(&self, have_exact: bool, model: &str, tokenizers: &mut Tokenizers) -> Measure {
        let Some(record) = self.record.as_ref().filter(|r| !r.truncated) else {
            return Measure::Counted(None);
        };
        let enc = measure::encoding_for(model);
        if have_exact && !(tokenizers.is_loaded(enc) && tokenizers.take_sample()) {
            return Measure::Counted(None);
        }
        let mut text = String::new();
        for doc in record.documents(self.max_sse_event) {
            self.meter.output_text(&doc, &mut text);
        }
        match tokenizers.count(enc, &text) {
            Counted::Tokens(n) => Measure::Counted(Some(n)),
            Counted::Unavailable => Measure::Counted(None),
            // A calibration sample is never waited for (the vocabulary is loaded for those).
            Counted::Wanting if have_exact => Measure::Counted(None),
            Counted::Wanting => Measure::Later(enc, text),
        }
    }
}

/// What counting a stream's output gave.
enum Measure {
    Counted(Option<u64>),
    /// The text to count once the encoding's vocabulary is here.
    Later(Encoding, String),
}

/// An event's output, still to be counted: the generated text (kept in memory only, as the
/// response was) and what the event's token fields need besides the count.
pub struct Uncounted {
    pub enc: Encoding,
    text: String,
    /// The usage the provider did report (the input side of a stream cut short).
    reported: Option<Usage>,
    input_known: bool,
}

impl Uncounted {
    /// Output to count later, for tests of what holds it.
    #[cfg(test)]
    pub(crate) fn new(enc: Encoding, text: &str, reported: Option<Usage>) -> Uncounted {
        Uncounted {
            enc,
            text: text.to_string(),
            reported,
            input_known: reported.is_some(),
        }
    }

    /// Bytes of text held.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Count the text with `tokenizers` (None: it cannot be, the event goes without an
    /// output count) and set `event`'s token fields as `finish` would have.
    pub fn settle(self, event: &mut Event, tokenizers: Option<&mut Tokenizers>) {
        let measured = match tokenizers.map(|t| t.count(self.enc, &self.text)) {
            Some(Counted::Tokens(n)) => Some(n),
            _ => None,
        };
        set_tokens(event, None, measured, self.reported, self.input_known);
    }
}

/// An event's token fields: exact usage when the provider reported it whole, else the output
/// counted (`measured`) beside the input side the provider did report.
fn set_tokens(
    e: &mut Event,
    exact: Option<Usage>,
    measured: Option<u64>,
    reported: Option<Usage>,
    input_known: bool,
) {
    let (usage, source) = match (exact, measured) {
        (Some(u), _) => (Some(u), Some(TokenSource::Exact)),
        (None, Some(m)) => {
            let u = Usage {
                output: m,
                reasoning: 0,
                ..reported.unwrap_or_default()
            }
            .consistent();
            (Some(u), Some(TokenSource::Measured))
        }
        (None, None) => (None, None),
    };
    let known = |f: fn(&Usage) -> u64| usage.filter(|_| input_known).map(|u| f(&u));
    e.input_tokens = known(|u| u.input);
    e.output_tokens = usage.map(|u| u.output);
    e.cached_input_tokens = known(|u| u.cached_input);
    e.cache_write_tokens = known(|u| u.cache_write);
    e.reasoning_tokens = exact.map(|u| u.reasoning);
    e.cache_write_1h_tokens = known(|u| u.cache_write_1h).filter(|n| *n > 0);
    e.web_search_requests = exact.map(|u| u.web_search).filter(|n| *n > 0);
    e.token_source = source;
    e.measured_output_tokens = measured;
}

/// Feed (decoded) response bytes to the JSON scanner or the SSE parser, and each finished
/// document to the provider's meter.
///
/// An event stream whose first byte after white space is `{` is a JSON document served under
/// that type (an error body, sent without SSE framing): no SSE line starts with `{` (it would
/// be a field of that name, which is ignored). It is read as the JSON body it is, and there are
/// no stream events to count output from.
fn read_body(
    body: &mut Body,
    meter: &mut dyn ResponseMeter,
    record: &mut Option<StreamRecord>,
    mut chunk: &[u8],
    end_of_stream: bool,
) {
    if let Body::Sse { sniffing, .. } = body {
        if *sniffing {
            match chunk
                .iter()
                .position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0xEF | 0xBB | 0xBF))
            {
                None => {}
                Some(at) if chunk[at] == b'{' => {
                    *body = Body::Json(TopLevelScanner::new(meter.keys()));
                    *record = None;
                    chunk = &chunk[at..];
                }
                Some(_) => *sniffing = false,
            }
        }
    }
    match body {
        Body::Json(scanner) => {
            scanner.feed(chunk);
            if end_of_stream || scanner.is_done() {
                meter.on_document(scanner);
                *body = Body::Ignore;
            }
        }
        Body::Sse { parser, doc, .. } => {
            if let Some(r) = record {
                r.push(chunk);
            }
            let mut sink = Documents { meter, doc };
            parser.feed(chunk, &mut sink);
            if end_of_stream {
                parser.finish(&mut sink);
                *body = Body::Ignore;
            }
        }
        Body::EventStream(decoder) => {
            decoder.push(chunk, &mut |m: crate::eventstream::Message<'_>| {
                meter.on_stream_message(&m)
            });
            if end_of_stream {
                decoder.finish();
                *body = Body::Ignore;
            }
        }
        Body::JsonArray(scanner) => {
            scanner.feed(chunk, &mut |doc, _| meter.on_document(doc));
            if scanner.is_lone_object() {
                // One JSON object (an error answered before any stream): a body, not a stream,
                // with no output to count.
                *record = None;
            } else if let Some(r) = record {
                r.push(chunk);
            }
            if end_of_stream {
                scanner.finish(&mut |doc| meter.on_document(doc));
                *body = Body::Ignore;
            }
        }
        Body::Pending | Body::Ignore => {}
    }
}

/// Stream events on their way to the meter, each scanned as a JSON document. Once the meter
/// needs only some keys, events that cannot hold one are not scanned, and whole runs of them are
/// not even parsed (the SSE parser passes over them).
struct Documents<'a> {
    meter: &'a mut dyn ResponseMeter,
    doc: &'a mut TopLevelScanner,
}

impl SseSink for Documents<'_> {
    fn event(&mut self, e: SseEvent<'_>) {
        if let Some(probe) = self.meter.needs_only() {
            if !probe.may_hold(e.data) {
                return;
            }
        }
        self.doc.reset();
        self.doc.feed(e.data);
        self.meter.on_document(self.doc);
    }

    /// A key in an event's data is in the raw bytes too, at the same place: a line's value is
    /// its bytes, and data lines are joined by LF, which no quoted key holds.
    fn wanted_from(&mut self, ahead: &[u8]) -> usize {
        match self.meter.needs_only() {
            Some(probe) => probe.first_place(ahead).unwrap_or(ahead.len()),
            None => 0,
        }
    }
}

/// Milliseconds to the microsecond, within 0 and a week (clocks can step).
fn round_ms(ms: f64) -> f64 {
    const WEEK_MS: f64 = 7.0 * 86_400_000.0;
    if !ms.is_finite() {
        return 0.0;
    }
    (ms.clamp(0.0, WEEK_MS) * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::{clean, parse_traceparent, presigned_query, sigv4_signed_headers};

    #[test]
    fn traceparents_by_the_w3c_spec() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let s = "00f067aa0ba902b7";
        assert_eq!(
            parse_traceparent(&format!("00-{t}-{s}-01")),
            Some((t.to_string(), s.to_string()))
        );
        // A later version may add fields; version 00 may not.
        assert!(parse_traceparent(&format!("01-{t}-{s}-01-extra")).is_some());
        for bad in [
            format!("00-{t}-{s}-01-extra"),
            format!("ff-{t}-{s}-01"),
            format!("00-{}-{s}-01", "0".repeat(32)),
            format!("00-{t}-{}-01", "0".repeat(16)),
            format!("00-{}-{s}-01", t.to_uppercase()),
            format!("00-{t}-{s}"),
            "garbage".to_string(),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn sigv4_signatures_in_headers_and_queries() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKID/20261201/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=01";
        assert_eq!(sigv4_signed_headers(auth), Some("host;x-amz-date"));
        let sigv4a = auth.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256");
        assert_eq!(sigv4_signed_headers(&sigv4a), Some("host;x-amz-date"));
        assert_eq!(sigv4_signed_headers("Bearer SignedHeaders=x"), None);
        assert_eq!(presigned_query("/model/m/invoke"), (false, None));
        assert_eq!(presigned_query("/v1/chat/completions?a=b"), (false, None));
        assert_eq!(
            presigned_query(
                "/p?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=host%3Bx-tally-key&X-Amz-Signature=ab#f"
            ),
            (true, Some("host;x-tally-key".into()))
        );
        assert_eq!(presigned_query("/p?x-amz-signature=ab"), (true, None));
    }

    #[test]
    fn cleaned_text_is_never_empty_or_over_long() {
        assert_eq!(clean("  gpt-4o  ", 256).as_deref(), Some("gpt-4o"));
        assert_eq!(clean("", 256), None);
        assert_eq!(clean(" \u{0}\t\n ", 256), None);
        assert_eq!(clean("a\u{7}b", 256).as_deref(), Some("ab"));
        assert_eq!(clean("ééé", 5).as_deref(), Some("éé"));
        assert_eq!(clean("ab \u{1}", 3).as_deref(), Some("ab"));
    }
}

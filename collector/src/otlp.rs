//! OpenTelemetry export (PRODUCT.md, "Observability exports"): with `--otlp-endpoint`, the
//! collector pushes OTLP/HTTP protobuf metrics named and attributed by the GenAI semantic
//! conventions (`gen_ai.client.token.usage` by `gen_ai.token.type`,
//! `gen_ai.client.operation.duration`), plus what the conventions do not define, under names of
//! Tally's own: the time to the response headers (not the convention's time to first chunk,
//! which Tally does not measure), cost, and the requests left out of cost (unpriced).
//!
//! Ingest only adds each new event to in-memory aggregates (a lock and a few additions); a
//! thread of its own sends them every `--otlp-interval-ms` as cumulative points, so a failed
//! export loses nothing (the next one carries the totals) and never slows ingest. Failures back
//! off (doubling, up to five minutes) and are counted. Attributes are low-cardinality by
//! default; team, feature, namespace... are opt-in (`--otlp-attribute`), each capped at
//! `--otlp-max-values` distinct values (the rest are `other`).
//!
//! The protobuf is written by hand (a few message types, field numbers from
//! opentelemetry-proto), tested against the official generated decoder.

use crate::alerts::send::Client;
use crate::store::Owners;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally::event::Event;

/// `gen_ai.client.token.usage` buckets, from the conventions.
const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// `gen_ai.client.operation.duration` buckets (seconds), from the conventions.
const SECONDS_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Attribute sets kept at most; past it, new sets are counted as dropped.
const MAX_SERIES: usize = 10_000;

#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "otlp")]
pub struct Args {
    /// Push OpenTelemetry metrics (OTLP/HTTP protobuf) to this endpoint, e.g.
    /// http://otel-collector:4318 (`/v1/metrics` is added when the URL has no path).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// A header for every export, e.g. `authorization=Bearer ...` (repeatable).
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    pub otlp_headers: Vec<String>,
    /// How often the aggregates are pushed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub otlp_interval_ms: u64,
    /// Timeout of one export.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub otlp_timeout_ms: u64,
    /// Opt-in attributes: team, app, feature, task, user, namespace, workload (repeatable).
    #[arg(long = "otlp-attribute", value_name = "FIELD")]
    pub otlp_attributes: Vec<String>,
    /// Distinct values kept per opt-in attribute; the rest are `other`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub otlp_max_values: u64,
    /// Also send a span per event (`/v1/traces`), a child of the caller's span when the request
    /// carried a W3C `traceparent`.
    #[arg(long)]
    pub otlp_spans: bool,
}

/// Spans waiting at most; past it the oldest are dropped (counted).
const MAX_SPANS: usize = 10_000;
/// Spans sent in one export at most.
const SPANS_PER_EXPORT: usize = 1_000;

/// An opt-in attribute: its OTLP key and how to read it from an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Team,
    App,
    Feature,
    Task,
    User,
    Namespace,
    Workload,
}

impl Extra {
    fn parse(s: &str) -> Option<Extra> {
        Some(match s {
            "team" => Extra::Team,
            "app" => Extra::App,
            "feature" => Extra::Feature,
            "task" => Extra::Task,
            "user" => Extra::User,
            "namespace" => Extra::Namespace,
            "workload" => Extra::Workload,
            _ => return None,
        })
    }

    fn key(self) -> &'static str {
        match self {
            Extra::Team => "tally.team",
            Extra::App => "tally.app",
            Extra::Feature => "tally.feature",
            Extra::Task => "tally.task",
            Extra::User => "tally.user",
            // Kubernetes' own resource conventions name these.
            Extra::Namespace => "k8s.namespace.name",
            Extra::Workload => "k8s.workload.name",
        }
    }

    fn of(self, e: &Event) -> Option<&str> {
        match self {
            Extra::Team => e.team.as_deref(),
            Extra::App => e.app.as_deref(),
            Extra::Feature => e.feature.as_deref(),
            Extra::Task => e.task.as_deref(),
            Extra::User => e.user.as_deref(),
            Extra::Namespace => e.namespace.as_deref(),
            Extra::Workload => e.workload.as_deref(),
        }
    }
}

/// The convention's `gen_ai.provider.name` for Tally's provider names (others as they are).
pub fn provider_name(provider: &str) -> &str {
    match provider {
        "gemini" => "gcp.gemini",
        "vertex" | "vertex_ai" => "gcp.vertex_ai",
        "bedrock" => "aws.bedrock",
        "azure" => "azure.ai.openai",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}

/// The convention's `gen_ai.operation.name` for Tally's API names.
pub fn operation_name(api: &str) -> &str {
    match api {
        "chat_completions" | "messages" | "responses" | "converse" | "invoke_model" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        "generate_content" => "generate_content",
        other => other,
    }
}

/// One attribute set: (key, value), in a fixed order.
type Attrs = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: usize) -> Hist {
        Hist {
            counts: vec![0; bounds + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, bounds: &[f64], v: f64) {
        // Bucket i holds values in (bounds[i-1], bounds[i]].
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// The histograms of a series a metric reads, each with its `gen_ai.token.type` if any.
type Pick = fn(&Series) -> Vec<(Option<&'static str>, &Hist)>;

#[derive(Default)]
struct Series {
    input: Option<Hist>,
    output: Option<Hist>,
    duration: Option<Hist>,
    headers: Option<Hist>,
    cost_usd: f64,
    priced: bool,
    unpriced: u64,
}

#[derive(Default)]
struct Aggregates {
    series: BTreeMap<Attrs, Series>,
    /// Per opt-in attribute, the values seen (capped).
    values: HashMap<&'static str, HashSet<String>>,
    dropped_series: u64,
    changed: bool,
}

pub struct Exporter {
    url: crate::outbound::Target,
    /// Where spans go (`/v1/traces` beside `/v1/metrics`), when they are sent.
    traces: Option<crate::outbound::Target>,
    spans: Mutex<std::collections::VecDeque<Vec<u8>>>,
    pub spans_dropped: std::sync::atomic::AtomicU64,
    headers: Vec<(String, String)>,
    interval: Duration,
    extras: Vec<Extra>,
    max_values: usize,
    client: Client,
    start_ns: u64,
    state: Mutex<Aggregates>,
    /// Exports that failed, and that succeeded.
    pub failed: std::sync::atomic::AtomicU64,
    pub sent: std::sync::atomic::AtomicU64,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Exporter {
    /// From the flags; None without `--otlp-endpoint`; an error names the bad flag.
    pub fn new(args: &Args) -> Result<Option<Arc<Exporter>>, String> {
        let Some(endpoint) = &args.otlp_endpoint else {
            return Ok(None);
        };
        let mut url = crate::outbound::parse(endpoint)
            .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e:?}"))?;
        // The endpoint is the base the signals' paths are added to (as OTLP exporters take
        // it); a URL already ending in `/v1/metrics` is taken as that signal's.
        let base = url
            .path
            .trim_end_matches('/')
            .trim_end_matches("/v1/metrics")
            .to_string();
        url.path = format!("{base}/v1/metrics");
        let traces = args.otlp_spans.then(|| crate::outbound::Target {
            path: format!("{base}/v1/traces"),
            ..url.clone()
        });
        let mut headers = Vec::new();
        for h in &args.otlp_headers {
            let (k, v) = h
                .split_once('=')
                .ok_or_else(|| format!("--otlp-header {h:?}: expected NAME=VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if k.is_empty() || !k.chars().all(token) || v.chars().any(|c| c.is_control()) {
                // Never echo the value: it is usually a credential.
                return Err(format!("--otlp-header {k:?}: not a header name and value"));
            }
            headers.push((k.to_string(), v.to_string()));
        }
        let mut extras = Vec::new();
        for a in &args.otlp_attributes {
            let e = Extra::parse(a).ok_or_else(|| {
                format!(
                    "--otlp-attribute {a:?}: expected team, app, feature, task, user, namespace or workload"
                )
            })?;
            if !extras.contains(&e) {
                extras.push(e);
            }
        }
        let timeout = Duration::from_millis(args.otlp_timeout_ms);
        Ok(Some(Arc::new(Exporter {
            url,
            traces,
            spans: Mutex::new(std::collections::VecDeque::new()),
            spans_dropped: Default::default(),
            headers,
            interval: Duration::from_millis(args.otlp_interval_ms),
            extras,
            max_values: args.otlp_max_values as usize,
            client: Client::new(timeout.min(Duration::from_secs(5)), timeout)?,
            start_ns: now_ns(),
            state: Mutex::new(Aggregates::default()),
            failed: Default::default(),
            sent: Default::default(),
        })))
    }

    /// Add the newly stored events of a batch (`new`: their indexes).
    pub fn observe(&self, owners: &Owners, batch: &[(Event, i64)], new: &[usize]) {
        if self.traces.is_some() {
            let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
            for &i in new {
                if let (Some((e, ts)), Some(org)) = (batch.get(i), owners.of(i)) {
                    if q.len() >= MAX_SPANS {
                        q.pop_front();
                        self.spans_dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    q.push_back(span(&org.name, e, *ts));
                }
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for &i in new {
            let (Some((e, _)), Some(org)) = (batch.get(i), owners.of(i)) else {
                continue;
            };
            let attrs = self.attrs(&mut st, &org.name, e);
            if !st.series.contains_key(&attrs) && st.series.len() >= MAX_SERIES {
                st.dropped_series += 1;
                continue;
            }
            let s = st.series.entry(attrs).or_default();
            // Input already includes cached and cache-written tokens (the conventions' meaning,
            // and Tally's): they are never added again.
            if let Some(n) = e.input_tokens {
                s.input
                    .get_or_insert_with(|| Hist::new(TOKEN_BOUNDS.len()))
                    .add(&TOKEN_BOUNDS, n as f64);
            }
            if let Some(n) = e.output_tokens {
                s.output
                    .get_or_insert_with(|| Hist::new(TOKEN_BOUNDS.len()))
                    .add(&TOKEN_BOUNDS, n as f64);
            }
            s.duration
                .get_or_insert_with(|| Hist::new(SECONDS_BOUNDS.len()))
                .add(&SECONDS_BOUNDS, e.latency_ms / 1000.0);
            if let Some(t) = e.ttfb_ms {
                s.headers
                    .get_or_insert_with(|| Hist::new(SECONDS_BOUNDS.len()))
                    .add(&SECONDS_BOUNDS, t / 1000.0);
            }
            match e.cost_usd {
                Some(c) if c.is_finite() => {
                    s.cost_usd += c;
                    s.priced = true;
                }
                _ => s.unpriced += 1,
            }
            st.changed = true;
        }
    }

    fn attrs(&self, st: &mut Aggregates, org: &str, e: &Event) -> Attrs {
        let mut a: Attrs = vec![
            ("gen_ai.operation.name", operation_name(&e.api).to_string()),
            (
                "gen_ai.provider.name",
                provider_name(&e.provider).to_string(),
            ),
        ];
        if let Some(m) = &e.model_requested {
            a.push(("gen_ai.request.model", m.clone()));
        }
        if let Some(m) = &e.model_actual {
            a.push(("gen_ai.response.model", m.clone()));
        }
        if let Some(c) = e.error_category {
            a.push(("error.type", c.name().to_string()));
        }
        a.push(("tally.org", org.to_string()));
        for x in &self.extras {
            let v = x.of(e).unwrap_or("(none)");
            let seen = st.values.entry(x.key()).or_default();
            let v = if seen.contains(v) {
                v.to_string()
            } else if seen.len() < self.max_values {
                seen.insert(v.to_string());
                v.to_string()
            } else {
                "other".to_string()
            };
            a.push((x.key(), v));
        }
        a
    }

    /// The `ExportMetricsServiceRequest` of the aggregates now (None when nothing was ever
    /// observed).
    pub fn request(&self) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.series.is_empty() {
            return None;
        }
        let (start, now) = (self.start_ns, now_ns());
        let mut metrics = Vec::new();
        let hist_points = |pick: Pick, bounds: &[f64]| {
            let mut points = Vec::new();
            for (attrs, s) in &st.series {
                for (token_type, h) in pick(s) {
                    let mut a: Vec<(&str, &str)> =
                        attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    if let Some(t) = token_type {
                        a.push(("gen_ai.token.type", t));
                    }
                    points.push(pb::histogram_point(&a, start, now, h, bounds));
                }
            }
            points
        };
        let tokens = hist_points(
            |s| {
                let mut v = Vec::new();
                if let Some(h) = &s.input {
                    v.push((Some("input"), h));
                }
                if let Some(h) = &s.output {
                    v.push((Some("output"), h));
                }
                v
            },
            &TOKEN_BOUNDS,
        );
        metrics.push(pb::histogram_metric(
            "gen_ai.client.token.usage",
            "Number of input and output tokens used.",
            "{token}",
            &tokens,
        ));
        let durations = hist_points(
            |s| s.duration.iter().map(|h| (None, h)).collect(),
            &SECONDS_BOUNDS,
        );
        metrics.push(pb::histogram_metric(
            "gen_ai.client.operation.duration",
            "GenAI operation duration.",
            "s",
            &durations,
        ));
        let headers = hist_points(
            |s| s.headers.iter().map(|h| (None, h)).collect(),
            &SECONDS_BOUNDS,
        );
        metrics.push(pb::histogram_metric(
            "tally.client.operation.time_to_response_headers",
            "Time from the request to the provider's response headers, seen by the proxy (not the time to the first chunk of a stream).",
            "s",
            &headers,
        ));
        let points = |value: &dyn Fn(&Series) -> Option<f64>| {
            st.series
                .iter()
                .filter_map(|(attrs, s)| {
                    let a: Vec<(&str, &str)> =
                        attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    value(s).map(|v| pb::number_point(&a, start, now, v))
                })
                .collect::<Vec<_>>()
        };
        metrics.push(pb::sum_metric(
            "tally.client.operation.cost",
            "Cost of the priced requests, as the collector prices them (requests of a model with no known price are left out, and counted in tally.client.operation.unpriced).",
            "{USD}",
            &points(&|s| s.priced.then_some(s.cost_usd)),
        ));
        metrics.push(pb::sum_metric(
            "tally.client.operation.unpriced",
            "Requests left out of tally.client.operation.cost: their model has no known price.",
            "{request}",
            &points(&|s| (s.unpriced > 0).then_some(s.unpriced as f64)),
        ));
        Some(pb::request(&metrics))
    }

    /// Push the aggregates and the waiting spans now; whether the endpoint took them (2xx).
    pub fn export(&self) -> Result<(), String> {
        if let Some(body) = self.request() {
            self.post(&self.url, &body)?;
        }
        let Some(traces) = &self.traces else {
            return Ok(());
        };
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(SPANS_PER_EXPORT);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.post(traces, &pb::traces(&batch)) {
                // Back in front, for the next try (the oldest go first if the queue is full).
                let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
                for s in batch.into_iter().rev() {
                    if q.len() >= MAX_SPANS {
                        self.spans_dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    q.push_front(s);
                }
                return Err(e);
            }
        }
    }

    fn post(&self, target: &crate::outbound::Target, body: &[u8]) -> Result<(), String> {
        let addrs: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&(target.host.as_str(), target.port))
                .map_err(|e| format!("{}: cannot resolve: {e}", target.host))?
                .collect();
        let mut headers: Vec<(&str, String)> =
            vec![("Content-Type", "application/x-protobuf".to_string())];
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
        match self.client.send(target, addrs, &headers, body) {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(format!("{} answered {code}", target.host)),
            Err(
                crate::alerts::send::Failure::Refused(m)
                | crate::alerts::send::Failure::Transient(m),
            ) => Err(m),
        }
    }

    /// Export every interval from a thread of its own, backing off after failures.
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("otlp".into())
            .spawn(move || {
                let mut wait = me.interval;
                let mut failures = 0u32;
                loop {
                    std::thread::sleep(wait);
                    let due = {
                        let mut st = me.state.lock().unwrap_or_else(|p| p.into_inner());
                        std::mem::take(&mut st.changed) || failures > 0
                    } || !me.spans.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                    if !due {
                        continue;
                    }
                    match me.export() {
                        Ok(()) => {
                            me.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            failures = 0;
                            wait = me.interval;
                        }
                        Err(e) => {
                            me.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            failures += 1;
                            if failures == 1 {
                                crate::log::warn(&format!(
                                    "otlp: export failed ({e}); retrying with backoff, the totals are kept"
                                ));
                            }
                            wait = (me.interval * 2u32.saturating_pow(failures.min(10)))
                                .min(Duration::from_secs(300));
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the OTLP thread: {e}"))
    }
}

/// Random bytes for span ids (a trace id too, for a request that came without one).
fn random<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// One event's span, encoded: the GenAI client span's name and attributes, no content; a child
/// of the caller's span when the request carried a `traceparent`.
fn span(org: &str, e: &Event, ts_ms: i64) -> Vec<u8> {
    let trace: [u8; 16] = e.trace_id.as_deref().and_then(unhex).unwrap_or_else(random);
    let parent: Option<[u8; 8]> = e.span_id.as_deref().and_then(unhex);
    let start = (ts_ms.max(0) as u64).saturating_mul(1_000_000);
    let end = start.saturating_add((e.latency_ms.max(0.0) * 1e6) as u64);
    let op = operation_name(&e.api);
    let name = match &e.model_requested {
        Some(m) => format!("{op} {m}"),
        None => op.to_string(),
    };
    let mut attrs: Vec<(&str, pb::Value)> = vec![
        ("gen_ai.operation.name", pb::Value::Str(op)),
        (
            "gen_ai.provider.name",
            pb::Value::Str(provider_name(&e.provider)),
        ),
    ];
    if let Some(m) = &e.model_requested {
        attrs.push(("gen_ai.request.model", pb::Value::Str(m)));
    }
    if let Some(m) = &e.model_actual {
        attrs.push(("gen_ai.response.model", pb::Value::Str(m)));
    }
    if let Some(n) = e.input_tokens {
        attrs.push(("gen_ai.usage.input_tokens", pb::Value::Int(n as i64)));
    }
    if let Some(n) = e.output_tokens {
        attrs.push(("gen_ai.usage.output_tokens", pb::Value::Int(n as i64)));
    }
    let error = e.error_category.map(|c| c.name());
    if let Some(c) = error {
        attrs.push(("error.type", pb::Value::Str(c)));
    }
    if let Some(c) = e.cost_usd.filter(|c| c.is_finite()) {
        attrs.push(("tally.cost_usd", pb::Value::Double(c)));
    }
    attrs.push(("tally.org", pb::Value::Str(org)));
    attrs.push(("tally.request_id", pb::Value::Str(&e.request_id)));
    pb::span(
        &trace,
        &random::<8>(),
        parent.as_ref(),
        &name,
        start,
        end,
        &attrs,
        error,
    )
}

/// Just enough protobuf for OTLP's metrics (field numbers from opentelemetry-proto's
/// `metrics/v1/metrics.proto`, `common/v1/common.proto`, `resource/v1/resource.proto` and
/// `collector/metrics/v1/metrics_service.proto`). Fields are written in field-number order, and
/// default values are left out, as protobuf's own encoders do.
pub mod pb {
    use super::Hist;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        if !s.is_empty() {
            bytes(out, field, s.as_bytes());
        }
    }

    fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        if v != 0 {
            key(out, field, 1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        if v != 0 {
            key(out, field, 0);
            varint(out, v);
        }
    }

    /// `KeyValue { key = 1; AnyValue value = 2 { string_value = 1 } }`.
    fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &str) {
        typed_attribute(out, field, k, &Value::Str(v));
    }

    /// An attribute's value: `AnyValue { string_value 1, int_value 3, double_value 4 }`.
    pub enum Value<'a> {
        Str(&'a str),
        Int(i64),
        Double(f64),
    }

    fn typed_attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value<'_>) {
        let mut any = Vec::new();
        match v {
            Value::Str(s) => bytes(&mut any, 1, s.as_bytes()),
            Value::Int(n) => {
                key(&mut any, 3, 0);
                varint(&mut any, *n as u64);
            }
            Value::Double(d) => double(&mut any, 4, *d),
        }
        let mut kv = Vec::new();
        string(&mut kv, 1, k);
        bytes(&mut kv, 2, &any);
        bytes(out, field, &kv);
    }

    /// `Span { trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6 = CLIENT,
    /// start_time_unix_nano 7, end_time_unix_nano 8, attributes 9, status 15 { message 2,
    /// code 3 = ERROR } }`.
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        trace: &[u8; 16],
        id: &[u8; 8],
        parent: Option<&[u8; 8]>,
        name: &str,
        start: u64,
        end: u64,
        attrs: &[(&str, Value<'_>)],
        error: Option<&str>,
    ) -> Vec<u8> {
        let mut s = Vec::new();
        bytes(&mut s, 1, trace);
        bytes(&mut s, 2, id);
        if let Some(p) = parent {
            bytes(&mut s, 4, p);
        }
        string(&mut s, 5, name);
        uint(&mut s, 6, 3);
        fixed64(&mut s, 7, start);
        fixed64(&mut s, 8, end);
        for (k, v) in attrs {
            typed_attribute(&mut s, 9, k, v);
        }
        if let Some(e) = error {
            let mut status = Vec::new();
            string(&mut status, 2, e);
            uint(&mut status, 3, 2);
            bytes(&mut s, 15, &status);
        }
        s
    }

    /// `ExportTraceServiceRequest { resource_spans 1 { resource 1, scope_spans 2 { scope 1,
    /// spans 2 } } }`.
    pub fn traces(spans: &[Vec<u8>]) -> Vec<u8> {
        let mut ss = Vec::new();
        bytes(&mut ss, 1, &scope());
        for s in spans {
            bytes(&mut ss, 2, s);
        }
        let mut rs = Vec::new();
        bytes(&mut rs, 1, &resource());
        bytes(&mut rs, 2, &ss);
        let mut out = Vec::new();
        bytes(&mut out, 1, &rs);
        out
    }

    fn resource() -> Vec<u8> {
        let mut r = Vec::new();
        attribute(&mut r, 1, "service.name", "tally-collector");
        r
    }

    fn scope() -> Vec<u8> {
        let mut s = Vec::new();
        string(&mut s, 1, "tally");
        string(&mut s, 2, env!("CARGO_PKG_VERSION"));
        s
    }

    /// `HistogramDataPoint`: start 2, time 3, count 4, sum 5, bucket_counts 6 (packed),
    /// explicit_bounds 7 (packed), attributes 9, min 11, max 12.
    pub fn histogram_point(
        attrs: &[(&str, &str)],
        start: u64,
        now: u64,
        h: &Hist,
        bounds: &[f64],
    ) -> Vec<u8> {
        let mut p = Vec::new();
        fixed64(&mut p, 2, start);
        fixed64(&mut p, 3, now);
        fixed64(&mut p, 4, h.count);
        double(&mut p, 5, h.sum);
        let mut counts = Vec::with_capacity(h.counts.len() * 8);
        for c in &h.counts {
            counts.extend_from_slice(&c.to_le_bytes());
        }
        bytes(&mut p, 6, &counts);
        let mut b = Vec::with_capacity(bounds.len() * 8);
        for x in bounds {
            b.extend_from_slice(&x.to_le_bytes());
        }
        bytes(&mut p, 7, &b);
        for (k, v) in attrs {
            attribute(&mut p, 9, k, v);
        }
        if h.count > 0 {
            double(&mut p, 11, h.min);
            double(&mut p, 12, h.max);
        }
        p
    }

    /// `NumberDataPoint`: start 2, time 3, as_double 4, attributes 7.
    pub fn number_point(attrs: &[(&str, &str)], start: u64, now: u64, v: f64) -> Vec<u8> {
        let mut p = Vec::new();
        fixed64(&mut p, 2, start);
        fixed64(&mut p, 3, now);
        double(&mut p, 4, v);
        for (k, val) in attrs {
            attribute(&mut p, 7, k, val);
        }
        p
    }

    /// `Metric { name 1, description 2, unit 3, histogram 9 { data_points 1,
    /// aggregation_temporality 2 = CUMULATIVE } }`.
    pub fn histogram_metric(
        name: &str,
        description: &str,
        unit: &str,
        points: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut h = Vec::new();
        for p in points {
            bytes(&mut h, 1, p);
        }
        uint(&mut h, 2, 2);
        let mut m = Vec::new();
        string(&mut m, 1, name);
        string(&mut m, 2, description);
        string(&mut m, 3, unit);
        bytes(&mut m, 9, &h);
        m
    }

    /// `Metric { ..., sum 7 { data_points 1, aggregation_temporality 2 = CUMULATIVE,
    /// is_monotonic 3 } }`.
    pub fn sum_metric(name: &str, description: &str, unit: &str, points: &[Vec<u8>]) -> Vec<u8> {
        let mut s = Vec::new();
        for p in points {
            bytes(&mut s, 1, p);
        }
        uint(&mut s, 2, 2);
        uint(&mut s, 3, 1);
        let mut m = Vec::new();
        string(&mut m, 1, name);
        string(&mut m, 2, description);
        string(&mut m, 3, unit);
        bytes(&mut m, 7, &s);
        m
    }

    /// `ExportMetricsServiceRequest { resource_metrics 1 { resource 1 { attributes 1 },
    /// scope_metrics 2 { scope 1 { name 1, version 2 }, metrics 2 } } }`.
    pub fn request(metrics: &[Vec<u8>]) -> Vec<u8> {
        let mut sm = Vec::new();
        bytes(&mut sm, 1, &scope());
        for m in metrics {
            bytes(&mut sm, 2, m);
        }
        let mut rm = Vec::new();
        bytes(&mut rm, 1, &resource());
        bytes(&mut rm, 2, &sm);
        let mut out = Vec::new();
        bytes(&mut out, 1, &rm);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_values_up_to_their_bound() {
        let mut h = Hist::new(TOKEN_BOUNDS.len());
        for v in [0.0, 1.0, 1.5, 4.0, 5.0, 1e9] {
            h.add(&TOKEN_BOUNDS, v);
        }
        assert_eq!(&h.counts[..4], &[2, 2, 1, 0]);
        assert_eq!(h.counts[14], 1);
        assert_eq!((h.count, h.min, h.max), (6, 0.0, 1e9));
    }

    #[test]
    fn names_follow_the_conventions() {
        assert_eq!(provider_name("gemini"), "gcp.gemini");
        assert_eq!(provider_name("vertex"), "gcp.vertex_ai");
        assert_eq!(provider_name("bedrock"), "aws.bedrock");
        assert_eq!(provider_name("azure"), "azure.ai.openai");
        assert_eq!(provider_name("openai"), "openai");
        assert_eq!(operation_name("chat_completions"), "chat");
        assert_eq!(operation_name("completions"), "text_completion");
        assert_eq!(operation_name("generate_content"), "generate_content");
    }
}

//! `/metrics` in the Prometheus text format: the collector's own health, and spend, tokens,
//! requests and errors by org, provider and model. Counters live in memory and start at zero
//! with the process, as Prometheus counters may. Label sets are bounded: no team, feature or
//! user labels, and past [`MAX_SERIES`] (org, provider, model) triples new models are counted
//! under `model="other"`.

use crate::error::ApiError;
use crate::ingest::Batch;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

pub const MAX_SERIES: usize = 2000;

#[derive(Default, Clone, Copy)]
struct Totals {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

#[derive(Default)]
struct Inner {
    batches: BTreeMap<&'static str, u64>,
    events_stored: u64,
    duplicates: u64,
    batch_seconds_sum: f64,
    batch_count: u64,
    series: BTreeMap<(String, String, String), Totals>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A label value, escaped as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One ingest call ended: its outcome (accepted and duplicate counts) and duration.
    pub fn batch(&self, result: Result<(usize, usize), &ApiError>, took: Duration) {
        let mut m = self.lock();
        let outcome = match result {
            Ok((accepted, duplicates)) => {
                m.events_stored += accepted as u64;
                m.duplicates += duplicates as u64;
                "accepted"
            }
            Err(ApiError::Unauthorized) => "unauthorized",
            Err(ApiError::BadRequest { .. }) => "rejected",
            Err(ApiError::PayloadTooLarge(_)) => "too_large",
            Err(_) => "error",
        };
        *m.batches.entry(outcome).or_insert(0) += 1;
        m.batch_seconds_sum += took.as_secs_f64();
        m.batch_count += 1;
    }

    /// Newly stored events (`new` indexes `batch`), by org, provider and model.
    pub fn events(&self, org: &str, batch: &Batch, new: &[usize]) {
        let mut m = self.lock();
        for &i in new {
            let Some((e, _)) = batch.get(i) else { continue };
            let model = e
                .model_actual
                .as_ref()
                .or(e.model_requested.as_ref())
                .cloned()
                .unwrap_or_default();
            let mut k = (org.to_string(), e.provider.clone(), model);
            if !m.series.contains_key(&k) && m.series.len() >= MAX_SERIES {
                k.2 = "other".into();
            }
            let t = m.series.entry(k).or_default();
            t.requests += 1;
            t.errors += u64::from(e.error_category.is_some());
            t.input_tokens += e.input_tokens.unwrap_or(0);
            t.output_tokens += e.output_tokens.unwrap_or(0);
            t.cost_usd += e.cost_usd.unwrap_or(0.0);
        }
    }

    pub fn render(&self, db_bytes: u64) -> String {
        let m = self.lock();
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let n = family(
            "tally_collector_ingest_batches_total",
            "counter",
            "Ingest calls by outcome.",
        );
        let mut lines = Vec::new();
        for outcome in ["accepted", "rejected", "unauthorized", "too_large", "error"] {
            let v = m.batches.get(outcome).copied().unwrap_or(0);
            lines.push(format!("{n}{{outcome=\"{outcome}\"}} {v}"));
        }
        let n2 = family(
            "tally_collector_ingest_events_total",
            "counter",
            "Events stored.",
        );
        lines.push(format!("{n2} {}", m.events_stored));
        let n3 = family(
            "tally_collector_ingest_duplicates_total",
            "counter",
            "Events received again and not stored twice.",
        );
        lines.push(format!("{n3} {}", m.duplicates));
        let n4 = family(
            "tally_collector_ingest_batch_seconds",
            "summary",
            "Time to answer an ingest call.",
        );
        lines.push(format!("{n4}_sum {}", m.batch_seconds_sum));
        lines.push(format!("{n4}_count {}", m.batch_count));
        let n5 = family(
            "tally_collector_db_bytes",
            "gauge",
            "Size of the database files.",
        );
        lines.push(format!("{n5} {db_bytes}"));
        type Pick = fn(&Totals) -> String;
        let per_model: [(&str, &str, Pick); 5] = [
            ("tally_requests_total", "LLM requests metered.", |t| {
                t.requests.to_string()
            }),
            ("tally_errors_total", "LLM requests that failed.", |t| {
                t.errors.to_string()
            }),
            ("tally_input_tokens_total", "Prompt tokens.", |t| {
                t.input_tokens.to_string()
            }),
            ("tally_output_tokens_total", "Output tokens.", |t| {
                t.output_tokens.to_string()
            }),
            ("tally_cost_usd_total", "Spend in USD.", |t| {
                format!("{}", t.cost_usd)
            }),
        ];
        let mut text = out;
        for l in lines {
            let _ = writeln!(text, "{l}");
        }
        for (name, help, pick) in per_model {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((org, provider, model), t) in &m.series {
                let _ = writeln!(
                    text,
                    "{name}{{org=\"{}\",provider=\"{}\",model=\"{}\"}} {}",
                    label(org),
                    label(provider),
                    label(model),
                    pick(t)
                );
            }
        }
        text
    }
}

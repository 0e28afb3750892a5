//! `/metrics` in the Prometheus text format: the collector's own health, and spend, tokens,
//! requests and errors by org, provider and model. Counters live in memory and start at zero
//! with the process, as Prometheus counters may. Label sets are bounded: no team, feature or
//! user labels, and past [`MAX_SERIES`] (org, provider, model) triples new models are counted
//! under `model="other"`.

use crate::error::ApiError;
use crate::ingest::{Batch, UnknownFields};
use crate::store::Owners;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

pub const MAX_SERIES: usize = 2000;

/// Upper bounds (seconds) of the buckets of `tally_collector_ingest_batch_seconds`, a
/// histogram, so that a dashboard can take its quantiles (`histogram_quantile`).
pub const BATCH_SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Distinct `field` labels of `tally_ingest_unknown_fields_total`; past them, `_other`.
pub const MAX_UNKNOWN_FIELDS: usize = 50;

#[derive(Default, Clone, Copy)]
struct Totals {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    unpriced: u64,
}

#[derive(Default)]
struct Inner {
    batches: BTreeMap<&'static str, u64>,
    events_stored: u64,
    duplicates: u64,
    batch_seconds_sum: f64,
    batch_count: u64,
    /// Ingest calls per bucket of [`BATCH_SECONDS_BUCKETS`] (not cumulative; the last, +Inf).
    batch_buckets: [u64; BATCH_SECONDS_BUCKETS.len() + 1],
    series: BTreeMap<(String, String, String), Totals>,
    /// Failed requests by (org, provider, error category): at most orgs x providers x the
    /// categories the event schema allows.
    errors: BTreeMap<(String, String, &'static str), u64>,
    /// Events carrying a field this collector does not know, by field name.
    unknown_fields: BTreeMap<String, u64>,
    /// Unknown field names already logged (at most [`MAX_UNKNOWN_FIELDS`]).
    logged_fields: BTreeSet<String>,
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

/// The OpenTelemetry export's counters, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpCounts {
    pub sent: u64,
    pub failed: u64,
    pub spans_dropped: u64,
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
        let secs = took.as_secs_f64();
        m.batch_seconds_sum += secs;
        m.batch_count += 1;
        let bucket = BATCH_SECONDS_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BATCH_SECONDS_BUCKETS.len());
        m.batch_buckets[bucket] += 1;
    }

    /// Events of an accepted batch carried fields this collector does not know: counted, and
    /// each name logged the first time this process sees it.
    pub fn unknown_fields(&self, unknown: &UnknownFields) {
        if unknown.is_empty() {
            return;
        }
        let mut m = self.lock();
        for (name, n) in &unknown.0 {
            // Only plain names become labels, and only so many: a client chooses them.
            let plain = name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            let named =
                m.unknown_fields.len() - usize::from(m.unknown_fields.contains_key("_other"));
            let room = named < MAX_UNKNOWN_FIELDS;
            let label = if plain && (room || m.unknown_fields.contains_key(name)) {
                name.as_str()
            } else {
                "_other"
            };
            *m.unknown_fields.entry(label.to_string()).or_insert(0) += n;
            if label != "_other" && !m.logged_fields.contains(name) {
                m.logged_fields.insert(name.clone());
                crate::log::warn(&format!(
                    "ingest: events carry field \"{name}\", which this collector does not know; \
                     it is not stored (upgrade the collector)"
                ));
            } else if label == "_other" && !m.logged_fields.contains("_other") {
                m.logged_fields.insert("_other".into());
                crate::log::warn(
                    "ingest: events carry more fields this collector does not know, counted as \
                     field=\"_other\"; they are not stored (upgrade the collector)",
                );
            }
        }
    }

    /// Newly stored events (`new` indexes `batch`), by org, provider and model.
    pub fn events(&self, owners: &Owners, batch: &Batch, new: &[usize]) {
        let mut m = self.lock();
        for &i in new {
            let (Some((e, _)), Some(org)) = (batch.get(i), owners.of(i)) else {
                continue;
            };
            let org = org.name.as_str();
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
            if let Some(category) = e.error_category {
                let key = (k.0.clone(), k.1.clone(), category.name());
                *m.errors.entry(key).or_insert(0) += 1;
            }
            let t = m.series.entry(k).or_default();
            t.requests += 1;
            t.errors += u64::from(e.error_category.is_some());
            t.input_tokens += e.input_tokens.unwrap_or(0);
            t.output_tokens += e.output_tokens.unwrap_or(0);
            match e.cost_usd {
                Some(c) => t.cost_usd += c,
                None => t.unpriced += 1,
            }
        }
    }

    /// The page in the Prometheus text format, or in OpenMetrics (`openmetrics`), which names
    /// a counter's family without its `_total` suffix and ends with `# EOF`.
    pub fn render(&self, db_bytes: u64, openmetrics: bool) -> String {
        self.render_with(db_bytes, openmetrics, None)
    }

    /// [`Metrics::render`] with the OpenTelemetry export's counters, when it runs.
    pub fn render_with(
        &self,
        db_bytes: u64,
        openmetrics: bool,
        otlp: Option<OtlpCounts>,
    ) -> String {
        let m = self.lock();
        let mut out = String::with_capacity(4096);
        // Each family's HELP and TYPE lines, then its samples.
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let family = match (openmetrics, kind) {
                (true, "counter") => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        };
        let n = "tally_collector_ingest_batches_total";
        head(&mut out, n, "counter", "Ingest calls by outcome.");
        for outcome in ["accepted", "rejected", "unauthorized", "too_large", "error"] {
            let v = m.batches.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(out, "{n}{{outcome=\"{outcome}\"}} {v}");
        }
        let n = "tally_collector_ingest_events_total";
        head(&mut out, n, "counter", "Events stored.");
        let _ = writeln!(out, "{n} {}", m.events_stored);
        let n = "tally_collector_ingest_duplicates_total";
        head(
            &mut out,
            n,
            "counter",
            "Events received again and not stored twice.",
        );
        let _ = writeln!(out, "{n} {}", m.duplicates);
        let n = "tally_ingest_unknown_fields_total";
        head(
            &mut out,
            n,
            "counter",
            "Events accepted with a field this collector does not know (not stored).",
        );
        for (field, v) in &m.unknown_fields {
            let _ = writeln!(out, "{n}{{field=\"{}\"}} {v}", label(field));
        }
        let n = "tally_collector_ingest_batch_seconds";
        head(&mut out, n, "histogram", "Time to answer an ingest call.");
        let mut cumulative = 0;
        for (i, le) in BATCH_SECONDS_BUCKETS.iter().enumerate() {
            cumulative += m.batch_buckets[i];
            let _ = writeln!(out, "{n}_bucket{{le=\"{le:?}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{n}_bucket{{le=\"+Inf\"}} {}", m.batch_count);
        let _ = writeln!(out, "{n}_sum {}", m.batch_seconds_sum);
        let _ = writeln!(out, "{n}_count {}", m.batch_count);
        if let Some(o) = otlp {
            let n = "tally_collector_otlp_exports_total";
            head(
                &mut out,
                n,
                "counter",
                "OTLP exports by outcome (--otlp-endpoint).",
            );
            let _ = writeln!(out, "{n}{{outcome=\"sent\"}} {}", o.sent);
            let _ = writeln!(out, "{n}{{outcome=\"failed\"}} {}", o.failed);
            let n = "tally_collector_otlp_spans_dropped_total";
            head(
                &mut out,
                n,
                "counter",
                "Spans dropped: the export queue was full (--otlp-spans).",
            );
            let _ = writeln!(out, "{n} {}", o.spans_dropped);
        }
        let n = "tally_collector_db_bytes";
        head(&mut out, n, "gauge", "Size of the database files.");
        let _ = writeln!(out, "{n} {db_bytes}");
        type Pick = fn(&Totals) -> String;
        let per_model: [(&str, &str, Pick); 6] = [
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
            (
                "tally_cost_usd_total",
                "Spend in USD, of the requests whose model has a known price.",
                |t| format!("{}", t.cost_usd),
            ),
            (
                "tally_unpriced_requests_total",
                "LLM requests whose model has no known price: their cost is unknown, and not in \
                 tally_cost_usd_total.",
                |t| t.unpriced.to_string(),
            ),
        ];
        for (name, help, pick) in per_model {
            head(&mut out, name, "counter", help);
            for ((org, provider, model), t) in &m.series {
                let _ = writeln!(
                    out,
                    "{name}{{org=\"{}\",provider=\"{}\",model=\"{}\"}} {}",
                    label(org),
                    label(provider),
                    label(model),
                    pick(t)
                );
            }
        }
        let n = "tally_errors_by_category_total";
        head(
            &mut out,
            n,
            "counter",
            "LLM requests that failed, by error category (as the event's error_category).",
        );
        for ((org, provider, category), v) in &m.errors {
            let _ = writeln!(
                out,
                "{n}{{org=\"{}\",provider=\"{}\",category=\"{category}\"}} {v}",
                label(org),
                label(provider),
            );
        }
        if openmetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(names: &[&str]) -> UnknownFields {
        UnknownFields(names.iter().map(|n| (n.to_string(), 2)).collect())
    }

    #[test]
    fn unknown_fields_are_capped_and_each_family_keeps_its_samples_together() {
        let m = Metrics::default();
        m.unknown_fields(&unknown(&["future_field", "bad name\""]));
        let names: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        m.unknown_fields(&unknown(&refs));
        m.unknown_fields(&unknown(&["future_field"]));
        let text = m.render(0, false);
        let n = "tally_ingest_unknown_fields_total";
        let samples: Vec<&str> = text.lines().filter(|l| l.starts_with(n)).collect();
        assert_eq!(samples.len(), MAX_UNKNOWN_FIELDS + 1, "{text}");
        assert!(samples.contains(&"tally_ingest_unknown_fields_total{field=\"future_field\"} 4"));
        // The odd name and the 11 names past the cap (49 fit beside future_field).
        assert!(samples.contains(&"tally_ingest_unknown_fields_total{field=\"_other\"} 24"));
        // Every sample line follows its own family's HELP and TYPE lines.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} after # TYPE {family}");
            }
        }
    }

    #[test]
    fn batch_time_is_a_histogram_with_cumulative_buckets() {
        let m = Metrics::default();
        for ms in [0, 3, 3, 40, 7000] {
            m.batch(Ok((1, 0)), Duration::from_millis(ms));
        }
        let text = m.render(0, false);
        let n = "tally_collector_ingest_batch_seconds";
        for line in [
            "# TYPE tally_collector_ingest_batch_seconds histogram",
            "tally_collector_ingest_batch_seconds_bucket{le=\"0.001\"} 1",
            "tally_collector_ingest_batch_seconds_bucket{le=\"0.0025\"} 1",
            "tally_collector_ingest_batch_seconds_bucket{le=\"0.005\"} 3",
            "tally_collector_ingest_batch_seconds_bucket{le=\"0.05\"} 4",
            "tally_collector_ingest_batch_seconds_bucket{le=\"5.0\"} 4",
            "tally_collector_ingest_batch_seconds_bucket{le=\"+Inf\"} 5",
            "tally_collector_ingest_batch_seconds_count 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{n}_bucket")))
            .count();
        assert_eq!(buckets, BATCH_SECONDS_BUCKETS.len() + 1);
    }
}

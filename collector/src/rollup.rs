//! Rollups: per-minute and per-hour aggregates of events, per dimension, kept up to date at
//! ingest (in the batch's transaction), and the queries that read them.
//!
//! A query over `[from, to)` (minute resolution) reads hour rows for the whole hours inside the
//! range and minute rows for the edges, so a summary over a month touches about 720 hour rows
//! and at most 118 minute rows per key, whatever the number of events.

use crate::sketch::Sketch;
use rusqlite::{params, OptionalExtension, Transaction};
use std::collections::HashMap;
use tally::event::Event;

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// Dimensions a summary or time series can be grouped by. `provider_model` keys are
/// `provider/model`; `error` keys are `category/source`, for failed requests only.
pub const DIMENSIONS: [&str; 9] = [
    "feature",
    "model",
    "provider",
    "team",
    "app",
    "task",
    "user",
    "provider_model",
    "error",
];

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The key an event has in a dimension ("" for none; a request with no feature is `untagged`);
/// `None` when the event has no row in that dimension (a success, for `error`).
fn key_of(e: &Event, dim: &str) -> Option<String> {
    let model = || {
        e.model_actual
            .as_ref()
            .or(e.model_requested.as_ref())
            .cloned()
            .unwrap_or_default()
    };
    let v = match dim {
        "feature" => return Some(e.feature.clone().unwrap_or_else(|| "untagged".into())),
        "model" => return Some(model()),
        "provider_model" => return Some(format!("{}/{}", e.provider, model())),
        "error" => {
            let c = e.error_category.as_ref()?;
            let s = e.error_source.as_ref().map(enum_name).unwrap_or_default();
            return Some(format!("{}/{s}", enum_name(c)));
        }
        "provider" => return Some(e.provider.clone()),
        "team" => e.team.as_ref(),
        "app" => e.app.as_ref(),
        "task" => e.task.as_ref(),
        "user" => e.user.as_ref(),
        _ => None,
    };
    Some(v.cloned().unwrap_or_default())
}

/// One rollup row's figures.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub latency_sum_ms: f64,
    pub latency: Sketch,
    pub ttfb: Sketch,
}

impl Agg {
    fn add(&mut self, e: &Event) {
        self.requests += 1;
        if e.error_category.is_some() {
            self.errors += 1;
        }
        self.input_tokens += e.input_tokens.unwrap_or(0);
        self.output_tokens += e.output_tokens.unwrap_or(0);
        self.cost_usd += e.cost_usd.unwrap_or(0.0);
        self.latency_sum_ms += e.latency_ms;
        self.latency.add(e.latency_ms);
        if let Some(t) = e.ttfb_ms {
            self.ttfb.add(t);
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
        self.ttfb.merge(&o.ttfb);
    }
}

/// Rollup rows touched by a batch: (granularity, bucket, dim, key) -> figures.
#[derive(Default)]
pub struct Pending {
    rows: HashMap<(i64, i64, &'static str, String), Agg>,
}

impl Pending {
    /// Count a newly stored event (ts in Unix ms) into every row it belongs to.
    pub fn add(&mut self, e: &Event, ts: i64) {
        for g in [MINUTE, HOUR] {
            let bucket = ts.div_euclid(g) * g;
            self.rows
                .entry((g, bucket, "all", String::new()))
                .or_default()
                .add(e);
            for dim in DIMENSIONS {
                if let Some(key) = key_of(e, dim) {
                    self.rows.entry((g, bucket, dim, key)).or_default().add(e);
                }
            }
        }
    }

    /// Merge the batch's figures into the stored rows.
    pub fn write(self, tx: &Transaction<'_>, org_id: i64) -> rusqlite::Result<()> {
        let mut read = tx.prepare_cached(
            "SELECT requests, errors, input_tokens, output_tokens, cost_usd, latency_sum_ms,
                latency, ttfb
             FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = ?3 AND key = ?4
               AND bucket_ms = ?5",
        )?;
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, requests,
                errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for ((g, bucket, dim, key), mut agg) in self.rows {
            let stored = read
                .query_row(params![org_id, g, dim, key, bucket], row_agg)
                .optional()?;
            if let Some(s) = stored {
                agg.merge(&s);
            }
            write.execute(params![
                org_id,
                g,
                bucket,
                dim,
                key,
                agg.requests as i64,
                agg.errors as i64,
                agg.input_tokens as i64,
                agg.output_tokens as i64,
                agg.cost_usd,
                agg.latency_sum_ms,
                agg.latency.to_bytes(),
                agg.ttfb.to_bytes(),
            ])?;
        }
        Ok(())
    }
}

/// A rollup row's figures from the columns
/// `requests, errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb`.
pub fn row_agg(r: &rusqlite::Row<'_>) -> rusqlite::Result<Agg> {
    row_agg_at(r, 0)
}

/// The same, with those columns starting at `at`.
pub fn row_agg_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Agg> {
    let sketch = |i: usize| -> rusqlite::Result<Sketch> {
        let b: Vec<u8> = r.get(at + i)?;
        Ok(Sketch::from_bytes(&b).unwrap_or_default())
    };
    Ok(Agg {
        requests: r.get::<_, i64>(at)? as u64,
        errors: r.get::<_, i64>(at + 1)? as u64,
        input_tokens: r.get::<_, i64>(at + 2)? as u64,
        output_tokens: r.get::<_, i64>(at + 3)? as u64,
        cost_usd: r.get(at + 4)?,
        latency_sum_ms: r.get(at + 5)?,
        latency: sketch(6)?,
        ttfb: sketch(7)?,
    })
}

/// The parts of `[from, to)` (both on minute boundaries) to read: whole hours from hour rows,
/// the rest from minute rows. Returns (granularity, start, end) triples.
pub fn plan(from: i64, to: i64) -> Vec<(i64, i64, i64)> {
    if from >= to {
        return Vec::new();
    }
    let h_start = from.div_euclid(HOUR) * HOUR + if from % HOUR == 0 { 0 } else { HOUR };
    let h_end = to.div_euclid(HOUR) * HOUR;
    if h_start >= h_end {
        return vec![(MINUTE, from, to)];
    }
    let mut parts = Vec::new();
    if from < h_start {
        parts.push((MINUTE, from, h_start));
    }
    parts.push((HOUR, h_start, h_end));
    if h_end < to {
        parts.push((MINUTE, h_end, to));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_range_exactly_once() {
        let m = MINUTE;
        assert_eq!(plan(0, 0), vec![]);
        assert_eq!(plan(5 * m, 30 * m), vec![(MINUTE, 5 * m, 30 * m)]);
        assert_eq!(
            plan(5 * m, 3 * HOUR + 7 * m),
            vec![
                (MINUTE, 5 * m, HOUR),
                (HOUR, HOUR, 3 * HOUR),
                (MINUTE, 3 * HOUR, 3 * HOUR + 7 * m)
            ]
        );
        assert_eq!(plan(HOUR, 2 * HOUR), vec![(HOUR, HOUR, 2 * HOUR)]);
    }
}

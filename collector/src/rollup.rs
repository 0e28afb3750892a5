//! Rollups: per-minute, per-hour and per-day aggregates of events, per dimension, kept up to
//! date at ingest (in the batch's transaction), and the queries that read them.
//!
//! A query over `[from, to)` reads day rows for the whole days inside the range, hour rows for
//! the whole hours left at its edges, and minute rows for the rest, so a summary over a month
//! touches at most about 30 + 46 + 118 rows per key, whatever the number of events. The total and
//! the low-cardinality dimensions (feature, model, provider, provider_model, error) are kept per
//! minute; the people-sized ones (team, app, task, user) and the mesh's (namespace, workload)
//! per hour and day only, and their ranges are answered at hour resolution (edges rounded down
//! to the hour).

use crate::sketch::{self, Sketch};
use foldhash::HashMap;
use rusqlite::{params, Transaction};
use std::borrow::Cow;
use tally::event::{ErrorSource, Event};

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// Dimensions kept per minute (the others, per hour and day).
pub const MINUTE_DIMENSIONS: [&str; 5] =
    ["feature", "model", "provider", "provider_model", "error"];

/// The finest granularity a dimension (`None`: the total) is kept at.
pub fn finest(dim: Option<&str>) -> i64 {
    match dim {
        None => MINUTE,
        Some(d) if MINUTE_DIMENSIONS.contains(&d) => MINUTE,
        Some(_) => HOUR,
    }
}

/// Dimensions a summary or time series can be grouped by. `provider_model` keys are
/// `provider/model`; `error` keys are `category/source`, for failed requests only.
pub const DIMENSIONS: [&str; 11] = [
    "feature",
    "model",
    "provider",
    "team",
    "app",
    "task",
    "user",
    "namespace",
    "workload",
    "provider_model",
    "error",
];

/// The key an event has in a dimension ("" for none; a request with no feature is `untagged`);
/// `None` when the event has no row in that dimension (a success, for `error`).
fn key_of<'e>(e: &'e Event, dim: &str) -> Option<Cow<'e, str>> {
    let model = || {
        e.model_actual
            .as_deref()
            .or(e.model_requested.as_deref())
            .unwrap_or_default()
    };
    let v = match dim {
        "feature" => e.feature.as_deref().or(Some("untagged")),
        "model" => Some(model()),
        "provider_model" => return Some(Cow::Owned(format!("{}/{}", e.provider, model()))),
        "error" => {
            let c = e.error_category?;
            let s = e.error_source.map(ErrorSource::name).unwrap_or_default();
            return Some(Cow::Owned(format!("{}/{s}", c.name())));
        }
        "provider" => Some(e.provider.as_str()),
        "team" => e.team.as_deref(),
        "app" => e.app.as_deref(),
        "task" => e.task.as_deref(),
        "user" => e.user.as_deref(),
        "namespace" => e.namespace.as_deref(),
        "workload" => e.workload.as_deref(),
        _ => None,
    };
    Some(Cow::Borrowed(v.unwrap_or_default()))
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
    /// Add another row's figures.
    fn merge(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
        self.ttfb.merge(&o.ttfb);
    }

    /// Count an event in; `latency` and `ttfb` are its sketch buckets, found once per event.
    fn add(&mut self, e: &Event, latency: i32, ttfb: Option<i32>) {
        self.requests += 1;
        if e.error_category.is_some() {
            self.errors += 1;
        }
        self.input_tokens += e.input_tokens.unwrap_or(0);
        self.output_tokens += e.output_tokens.unwrap_or(0);
        self.cost_usd += e.cost_usd.unwrap_or(0.0);
        self.latency_sum_ms += e.latency_ms;
        self.latency.add_bucket(latency);
        if let Some(t) = ttfb {
            self.ttfb.add_bucket(t);
        }
    }
}

/// Rollup rows touched by a batch. Each (dimension, key) pair gets a number once per batch, so
/// an event's rows are found by hashing integers, not strings, and its labels are not copied.
/// The maps hash with foldhash: SipHash was half the cost of counting an event in.
#[derive(Default)]
pub struct Pending {
    /// Per dimension ("all" first, then [`DIMENSIONS`]): key -> number.
    ids: [HashMap<String, u32>; 1 + DIMENSIONS.len()],
    /// Number -> (dimension, key).
    keys: Vec<(&'static str, String)>,
    /// (granularity, bucket, number) -> figures.
    rows: HashMap<(i64, i64, u32), Agg>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Add another `Pending`'s rows into these.
    pub fn merge(&mut self, other: &Pending) {
        for (&(g, bucket, id), agg) in &other.rows {
            let Some((dim, key)) = other.keys.get(id as usize) else {
                continue;
            };
            let d = DIMENSIONS
                .iter()
                .position(|x| x == dim)
                .map_or(0, |i| i + 1);
            let mine = self.id(d, dim, key);
            self.rows.entry((g, bucket, mine)).or_default().merge(agg);
        }
    }

    fn id(&mut self, d: usize, dim: &'static str, key: &str) -> u32 {
        if let Some(&id) = self.ids[d].get(key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push((dim, key.to_string()));
        self.ids[d].insert(key.to_string(), id);
        id
    }

    /// Count a newly stored event (ts in Unix ms) into every row it belongs to.
    pub fn add(&mut self, e: &Event, ts: i64) {
        let latency = sketch::bucket(e.latency_ms);
        let ttfb = e.ttfb_ms.map(sketch::bucket);
        // The event's key in each dimension, and whether the dimension is kept per minute.
        let mut mine = [(0u32, true); 1 + DIMENSIONS.len()];
        let mut n = 0;
        mine[n] = (self.id(0, "all", ""), true);
        n += 1;
        for (d, dim) in DIMENSIONS.iter().enumerate() {
            if let Some(key) = key_of(e, dim) {
                mine[n] = (self.id(d + 1, dim, &key), MINUTE_DIMENSIONS.contains(dim));
                n += 1;
            }
        }
        for g in [MINUTE, HOUR, DAY] {
            let bucket = ts.div_euclid(g) * g;
            for &(id, per_minute) in &mine[..n] {
                if g != MINUTE || per_minute {
                    self.rows
                        .entry((g, bucket, id))
                        .or_default()
                        .add(e, latency, ttfb);
                }
            }
        }
    }

    /// Merge the batch's figures into the stored rows: one upsert per row, sketches merged by
    /// the `sketch_merge` SQL function (see [`register`]).
    pub fn write(&self, tx: &Transaction<'_>, org_id: i64) -> rusqlite::Result<()> {
        let mut write = tx.prepare_cached(
            "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, requests, errors,
                input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (org_id, granularity_ms, dim, key, bucket_ms) DO UPDATE SET
                requests = requests + excluded.requests,
                errors = errors + excluded.errors,
                input_tokens = input_tokens + excluded.input_tokens,
                output_tokens = output_tokens + excluded.output_tokens,
                cost_usd = cost_usd + excluded.cost_usd,
                latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
                latency = sketch_merge(latency, excluded.latency),
                ttfb = sketch_merge(ttfb, excluded.ttfb)",
        )?;
        for (&(g, bucket, id), agg) in &self.rows {
            let Some((dim, key)) = self.keys.get(id as usize) else {
                continue;
            };
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

/// Register `sketch_merge(a, b)`: the merge of two sketch blobs (a blob that does not decode
/// counts as empty).
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "sketch_merge",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let (a, b): (Vec<u8>, Vec<u8>) = (ctx.get(0)?, ctx.get(1)?);
            let mut merged = Sketch::from_bytes(&a).unwrap_or_default();
            merged.merge_bytes(&b);
            Ok(merged.to_bytes())
        },
    )
}

/// Add a rollup row's figures into `a`: the columns `requests, errors, input_tokens,
/// output_tokens, cost_usd, latency_sum_ms, latency, ttfb`, starting at `at`. Sketches are added
/// straight from their blobs.
pub fn merge_row(a: &mut Agg, r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<()> {
    a.requests += r.get::<_, i64>(at)? as u64;
    a.errors += r.get::<_, i64>(at + 1)? as u64;
    a.input_tokens += r.get::<_, i64>(at + 2)? as u64;
    a.output_tokens += r.get::<_, i64>(at + 3)? as u64;
    a.cost_usd += r.get::<_, f64>(at + 4)?;
    a.latency_sum_ms += r.get::<_, f64>(at + 5)?;
    a.latency.merge_bytes(
        r.get_ref(at + 6)?
            .as_blob()
            .map_err(rusqlite::Error::from)?,
    );
    a.ttfb.merge_bytes(
        r.get_ref(at + 7)?
            .as_blob()
            .map_err(rusqlite::Error::from)?,
    );
    Ok(())
}

/// The parts of `[from, to)` to read, coarsest first: whole days from day rows, whole hours
/// from hour rows, the rest from rows of `finest` (minute or hour) granularity. `from` and `to`
/// must be on `finest` boundaries. Returns (granularity, start, end) triples.
pub fn plan(from: i64, to: i64, finest: i64) -> Vec<(i64, i64, i64)> {
    fn split(from: i64, to: i64, levels: &[i64], out: &mut Vec<(i64, i64, i64)>) {
        if from >= to {
            return;
        }
        let Some((&g, finer)) = levels.split_first() else {
            return;
        };
        if finer.is_empty() {
            out.push((g, from, to));
            return;
        }
        let start = from.div_euclid(g) * g + if from.rem_euclid(g) == 0 { 0 } else { g };
        let end = to.div_euclid(g) * g;
        if start >= end {
            split(from, to, finer, out);
            return;
        }
        out.push((g, start, end));
        split(from, start, finer, out);
        split(end, to, finer, out);
    }
    let levels: &[i64] = if finest == MINUTE {
        &[DAY, HOUR, MINUTE]
    } else {
        &[DAY, HOUR]
    };
    let mut out = Vec::new();
    split(from, to, levels, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pending's rows by (granularity, bucket, dimension, key), comparable whatever the ids.
    #[allow(clippy::type_complexity)]
    fn view(
        p: &Pending,
    ) -> std::collections::BTreeMap<(i64, i64, String, String), (u64, u64, u64, u64, u64)> {
        p.rows
            .iter()
            .map(|(&(g, b, id), a)| {
                let (dim, key) = &p.keys[id as usize];
                (
                    (g, b, dim.to_string(), key.clone()),
                    (
                        a.requests,
                        a.errors,
                        a.input_tokens,
                        a.output_tokens,
                        a.latency.count(),
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn merged_rows_are_the_rows_of_all_the_events() {
        let event = |i: u64| -> (Event, i64) {
            let e: Event = serde_json::from_value(serde_json::json!({
                "request_id": format!("r{i}"), "timestamp": "2026-01-01T00:00:00.000Z",
                "provider": if i.is_multiple_of(2) { "openai" } else { "anthropic" },
                "api": "chat_completions", "endpoint": "/v1/chat/completions",
                "model_requested": format!("m{}", i % 3), "streaming": false,
                "latency_ms": 10.0 * i as f64, "input_tokens": i, "output_tokens": 2 * i,
                "user": format!("u{}", i % 4), "routed": false,
                "error_category": if i.is_multiple_of(5) { Some("rate_limited") } else { None },
            }))
            .unwrap();
            (e, i as i64 * 50 * MINUTE)
        };
        let events: Vec<_> = (0..40).map(event).collect();
        let (mut all, mut a, mut b) = (Pending::default(), Pending::default(), Pending::default());
        for (i, (e, ts)) in events.iter().enumerate() {
            all.add(e, *ts);
            if i % 3 == 0 {
                a.add(e, *ts)
            } else {
                b.add(e, *ts)
            }
        }
        let mut merged = Pending::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(view(&merged), view(&all));
        assert!(view(&all).len() > 100);
    }

    #[test]
    fn plans_cover_the_range_exactly_once() {
        let m = MINUTE;
        assert_eq!(plan(0, 0, MINUTE), vec![]);
        assert_eq!(plan(5 * m, 30 * m, MINUTE), vec![(MINUTE, 5 * m, 30 * m)]);
        assert_eq!(
            plan(5 * m, 3 * HOUR + 7 * m, MINUTE),
            vec![
                (HOUR, HOUR, 3 * HOUR),
                (MINUTE, 5 * m, HOUR),
                (MINUTE, 3 * HOUR, 3 * HOUR + 7 * m)
            ]
        );
        assert_eq!(plan(HOUR, 2 * HOUR, MINUTE), vec![(HOUR, HOUR, 2 * HOUR)]);
        // Two days and a bit: one whole day in the middle, hours and minutes at both edges.
        let parts = plan(23 * HOUR + 30 * m, 2 * DAY + HOUR + 10 * m, MINUTE);
        assert_eq!(parts[0], (DAY, DAY, 2 * DAY));
        let covered: i64 = parts.iter().map(|(_, a, b)| b - a).sum();
        assert_eq!(covered, 2 * DAY + HOUR + 10 * m - (23 * HOUR + 30 * m));
        let mut sorted: Vec<_> = parts.iter().map(|(_, a, b)| (*a, *b)).collect();
        sorted.sort();
        assert!(
            sorted.windows(2).all(|w| w[0].1 == w[1].0),
            "contiguous: {sorted:?}"
        );
        // Hour-only dimensions never read minutes.
        assert!(plan(0, 3 * DAY + 5 * HOUR, HOUR)
            .iter()
            .all(|p| p.0 != MINUTE));
    }
}

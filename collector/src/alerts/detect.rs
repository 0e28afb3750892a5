//! Detectors, run every minute by `serve`: each raises alerts through [`super::record`], whose
//! dedupe keys make a repeated finding a no-op.
//! - `unpriced_model`: a provider/model with requests of unknown cost (rollups' `unpriced_requests`
//!   per `provider_model`), once per org, model and UTC day.
//! - `events_dropped`: events the filters reported dropped (`alert_dropped`), once per org and
//!   hour, with the count when first seen.
//! - `anomaly`: an hour's spend far above the org's own previous week (see [`Anomaly`]).

use super::record;
use crate::db::{self, Conn};
use crate::rollup::{DAY, HOUR};
use crate::values;
use serde_json::json;
use tally::time::format_rfc3339_ms;

/// The spend anomaly test. For the hour `h` (the current one, partial, and the one before),
/// with `x` the org's spend in each of the `window_hours` hours before `h` (hours without
/// events count as 0; only hours since the org's first rollup, at least `min_history_hours` of
/// them), `h` is anomalous when its spend is
/// - at least `floor_usd`, and
/// - above median(x) + `k` × 1.4826 × MAD(x) (a robust z-score: an earlier spike moves neither
///   the median nor the MAD much), and
/// - above `ratio` × the 95th percentile of x (where most hours cost nothing, nights and
///   weekends, the MAD is 0 and the first test alone would fire on an ordinary busy hour).
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub window_hours: usize,
    pub min_history_hours: usize,
    pub k: f64,
    pub ratio: f64,
    pub floor_usd: f64,
}

impl Default for Anomaly {
    fn default() -> Anomaly {
        Anomaly {
            window_hours: 7 * 24,
            min_history_hours: 72,
            k: 6.0,
            ratio: 3.0,
            floor_usd: 5.0,
        }
    }
}

/// What an hour was compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub median: f64,
    pub mad: f64,
    pub p95: f64,
    pub threshold: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Anomaly {
    /// The baseline of `history`, and whether `spend` is anomalous against it.
    pub fn test(&self, history: &[f64], spend: f64) -> (Baseline, bool) {
        let mut x = history.to_vec();
        x.sort_by(f64::total_cmp);
        let median = quantile(&x, 0.5);
        let mut dev: Vec<f64> = x.iter().map(|v| (v - median).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad = quantile(&dev, 0.5);
        let p95 = quantile(&x, 0.95);
        let threshold = (median + self.k * 1.4826 * mad)
            .max(self.ratio * p95)
            .max(self.floor_usd);
        let enough = history.len() >= self.min_history_hours;
        (
            Baseline {
                median,
                mad,
                p95,
                threshold,
            },
            enough && spend >= self.floor_usd && spend > threshold,
        )
    }
}

/// Orgs looked at per run, at most.
const MAX_ORGS: i64 = 10_000;
/// Unpriced models per org and run, at most (the rest the next day, or when fewer).
const MAX_UNPRICED: i64 = 100;
/// Dropped-event counts are kept this long.
const KEEP_DROPPED_MS: i64 = 30 * DAY;

/// Run every detector once at `now`; how many alerts were raised.
pub fn detect(conn: &mut Conn, anomaly: &Anomaly, now: i64) -> db::Result<usize> {
    let orgs: Vec<i64> = conn.query_map(
        "SELECT id FROM orgs ORDER BY id LIMIT ?1",
        values![MAX_ORGS],
        |r| r.get(0),
    )?;
    let mut raised = 0;
    for org in orgs {
        raised += unpriced(conn, org, now)?;
        raised += anomalies(conn, anomaly, org, now)?;
    }
    raised += dropped(conn, now)?;
    Ok(raised)
}

fn unpriced(conn: &mut Conn, org: i64, now: i64) -> db::Result<usize> {
    // Yesterday too: its last minute may have been counted after the last run of that day.
    let today = now.div_euclid(DAY) * DAY;
    let rows: Vec<(i64, String, i64)> = conn.query_map(
        "SELECT bucket_ms, key, unpriced_requests FROM rollups
         WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = 'provider_model'
           AND bucket_ms >= ?3 AND unpriced_requests > 0
         LIMIT ?4",
        values![org, DAY, today - DAY, MAX_UNPRICED],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut raised = 0;
    for (day_ms, key, n) in rows {
        let day = format_rfc3339_ms(day_ms)[..10].to_string();
        let (provider, model) = key.split_once('/').unwrap_or(("", key.as_str()));
        let payload = json!({
            "provider_model": key,
            "provider": provider,
            "model": model,
            "day": day,
            "unpriced_requests": n,
        });
        if record(
            conn,
            org,
            "unpriced_model",
            &format!("unpriced:{key}:{day}"),
            &payload,
            now,
        )? {
            raised += 1;
        }
    }
    Ok(raised)
}

fn dropped(conn: &mut Conn, now: i64) -> db::Result<usize> {
    conn.execute(
        "DELETE FROM alert_dropped WHERE hour_ms < ?1",
        values![now - KEEP_DROPPED_MS],
    )?;
    let hour = now.div_euclid(HOUR) * HOUR;
    let rows: Vec<(i64, i64, i64)> = conn.query_map(
        "SELECT org_id, hour_ms, dropped FROM alert_dropped
         WHERE hour_ms >= ?1 AND dropped > 0 LIMIT ?2",
        values![hour - HOUR, MAX_ORGS],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut raised = 0;
    for (org, hour_ms, n) in rows {
        let at = format_rfc3339_ms(hour_ms);
        let payload = json!({"hour_start": at, "dropped": n});
        if record(
            conn,
            org,
            "events_dropped",
            &format!("dropped:{at}"),
            &payload,
            now,
        )? {
            raised += 1;
        }
    }
    Ok(raised)
}

fn anomalies(conn: &mut Conn, a: &Anomaly, org: i64, now: i64) -> db::Result<usize> {
    const HOURLY: &str = "SELECT bucket_ms, cost_usd FROM rollups
        WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = 'all' AND key = ''
          AND bucket_ms >= ?3 AND bucket_ms <= ?4";
    let current = now.div_euclid(HOUR) * HOUR;
    let window = a.window_hours as i64;
    // The two hours tested first: most orgs spend under the floor, and need no history read.
    let mut recent: Vec<(i64, f64)> =
        conn.query_map(HOURLY, values![org, HOUR, current - HOUR, current], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    recent.retain(|r| r.1 >= a.floor_usd);
    if recent.is_empty() {
        return Ok(0);
    }
    let spend: std::collections::HashMap<i64, f64> = conn
        .query_map(
            HOURLY,
            values![org, HOUR, current - HOUR - window * HOUR, current],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect();
    // The org's first hour ever: hours before it are no history (a new org is not compared
    // with a week of zeros).
    let first: i64 = conn.value(
        "SELECT coalesce(min(bucket_ms), ?3) FROM rollups
         WHERE org_id = ?1 AND granularity_ms = ?2 AND dim = 'all'",
        values![org, HOUR, current],
    )?;
    let mut raised = 0;
    for (h, spend_h) in recent {
        let start = first.max(h - window * HOUR);
        let history: Vec<f64> = (0..window)
            .map(|i| h - (i + 1) * HOUR)
            .filter(|t| *t >= start)
            .map(|t| spend.get(&t).copied().unwrap_or(0.0))
            .collect();
        let (base, fire) = a.test(&history, spend_h);
        if !fire {
            continue;
        }
        let at = format_rfc3339_ms(h);
        let payload = json!({
            "hour_start": at,
            "spend_usd": spend_h,
            "median_usd": base.median,
            "threshold_usd": base.threshold,
            "history_hours": history.len(),
            "method": format!(
                "spend above the median + {} x 1.4826 x MAD and above {} x the 95th percentile \
                 of the previous {} hours, and at least ${}",
                a.k, a.ratio, a.window_hours, a.floor_usd
            ),
        });
        if record(
            conn,
            org,
            "anomaly",
            &format!("anomaly:{at}"),
            &payload,
            now,
        )? {
            raised += 1;
        }
    }
    Ok(raised)
}

//! `GET /api/v1/rules?from=&to=`: what each rule and budget did to an org's requests over a
//! range (default: the last 30 days): how many it matched, changed, refused and marked in
//! shadow mode, what they cost, and for downgrades (a changed model) what the same requests
//! would have cost at the model they asked for, priced now by the collector's prices.
//!
//! Only events that name a rule are read (the partial index `events_by_rule`), on a connection
//! of its own so that a long range never holds the read API's shared one.

use crate::api::{blocking, now_ms, reader, AppState};
use crate::db::{self, Conn, Row};
use crate::error::ApiError;
use crate::prices::Prices;
use crate::store::{Org, Store, StoreError};
use crate::values;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use tally::event::Event;
use tally::pricing::Pricer;

const DAY_MS: i64 = 24 * 3600 * 1000;
/// The range when none is given, and the longest one accepted (as `/api/v1/summary`).
const DEFAULT_DAYS: i64 = 30;
const MAX_DAYS: i64 = 400;

/// One rule's (or budget's) figures over the range.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleFigures {
    /// `rule:<name>` or `budget:<name>`, as events carry it.
    pub rule: String,
    pub requests: u64,
    /// Requests whose model or upstream it changed (`routed`).
    pub changed: u64,
    /// Requests it refused (`blocked`, `budget_exceeded`).
    pub refused: u64,
    /// Requests a budget in shadow mode would have acted on.
    pub shadow: u64,
    /// What its requests cost (the priced ones; a refused request reached no provider and
    /// costs 0). `None` when every request that did reach one has no known price.
    pub cost_usd: Option<f64>,
    /// Requests that reached a provider and have no known cost.
    pub unpriced_requests: u64,
    /// Changed requests sent to another model than the one asked for.
    pub downgrades: u64,
    /// Of the downgrades priced both ways: what they would have cost at the model asked for,
    /// what they cost, and the difference. `None` when no downgrade is priced both ways.
    pub cost_at_requested_usd: Option<f64>,
    pub downgraded_cost_usd: Option<f64>,
    pub saving_usd: Option<f64>,
    /// Downgrades with either price unknown: left out of the three figures above.
    pub unpriced: u64,
}

/// Dollars summed from f64 costs, rounded to the pico-dollar prices are kept in (as the other
/// read endpoints round).
fn usd(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

/// The counts and costs, per rule, summed by the database over the range. Conditions are
/// counted with CASE (PostgreSQL sums no booleans); a request with no error category was not
/// refused.
const TOTALS: &str = "
    SELECT rule,
           COUNT(*),
           SUM(CASE WHEN routed <> 0 THEN 1 ELSE 0 END),
           SUM(CASE WHEN error_category IN ('blocked', 'budget_exceeded') THEN 1 ELSE 0 END),
           SUM(CASE WHEN shadow <> 0 THEN 1 ELSE 0 END),
           COALESCE(SUM(cost_usd), 0.0),
           SUM(CASE WHEN cost_usd IS NULL AND (error_category IS NULL
               OR error_category NOT IN ('blocked', 'budget_exceeded')) THEN 1 ELSE 0 END),
           SUM(CASE WHEN cost_usd IS NULL
               AND error_category IN ('blocked', 'budget_exceeded') THEN 1 ELSE 0 END),
           SUM(CASE WHEN routed <> 0 AND model_routed IS NOT NULL AND (error_category IS NULL
               OR error_category NOT IN ('blocked', 'budget_exceeded')) THEN 1 ELSE 0 END)
    FROM events
    WHERE org_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND rule IS NOT NULL
    GROUP BY rule";

/// The downgrades of the range, with what pricing them needs.
const DOWNGRADES: &str = "
    SELECT rule, cost_usd, provider, model_requested, input_tokens, output_tokens,
           cached_input_tokens, cache_write_tokens, reasoning_tokens, cache_write_1h_tokens,
           web_search_requests, service_tier
    FROM events
    WHERE org_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND rule IS NOT NULL
      AND routed <> 0 AND model_routed IS NOT NULL
      AND (error_category IS NULL OR error_category NOT IN ('blocked', 'budget_exceeded'))";

/// A downgraded event as if it had been answered by the model it asked for: only what pricing
/// reads is filled in, and `model_actual` stays empty so that the price is the requested one's.
fn as_requested(r: &Row) -> db::Result<Event> {
    let tok = |i: usize| -> db::Result<Option<u64>> {
        Ok(r.get::<Option<i64>>(i)?.map(|n| n.max(0) as u64))
    };
    Ok(Event {
        request_id: String::new(),
        timestamp: String::new(),
        org_id: None,
        provider: r.get(2)?,
        api: String::new(),
        endpoint: String::new(),
        model_requested: r.get(3)?,
        model_actual: None,
        status: None,
        streaming: false,
        latency_ms: 0.0,
        ttfb_ms: None,
        input_tokens: tok(4)?,
        output_tokens: tok(5)?,
        cached_input_tokens: tok(6)?,
        cache_write_tokens: tok(7)?,
        reasoning_tokens: tok(8)?,
        cache_write_1h_tokens: tok(9)?,
        web_search_requests: tok(10)?,
        service_tier: r.get(11)?,
        token_source: None,
        measured_output_tokens: None,
        cost_usd: None,
        error_category: None,
        error_source: None,
        team: None,
        app: None,
        feature: None,
        task: None,
        session_id: None,
        user: None,
        namespace: None,
        workload: None,
        principal: None,
        rule: None,
        routed: false,
        shadow: false,
        model_routed: None,
        trace_id: None,
        span_id: None,
    })
}

/// Downgrade sums of one rule: (at the requested model, as charged) of those priced both
/// ways, and how many were not.
#[derive(Default)]
struct Saving {
    priced: u64,
    at_requested: f64,
    charged: f64,
    unpriced: u64,
}

/// Each rule's figures for `org` over `[from, to)`, the most requests first.
pub fn report(
    conn: &mut Conn,
    prices: &Prices,
    org: &Org,
    from: i64,
    to: i64,
) -> db::Result<Vec<RuleFigures>> {
    let mut rows: BTreeMap<String, RuleFigures> = BTreeMap::new();
    conn.query_each(TOTALS, values![org.id, from, to], |r| {
        let rule: String = r.get(0)?;
        let n = |i: usize| -> db::Result<u64> {
            Ok(r.get::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
        };
        let requests = n(1)?;
        let unpriced_requests = n(6)?;
        let refused_unpriced = n(7)?;
        let cost: f64 = r.get(5)?;
        // Unknown only when some request reached a provider and none of those has a price.
        let reached = requests - refused_unpriced;
        let cost_usd = (reached == 0 || unpriced_requests < reached).then_some(usd(cost));
        rows.insert(
            rule.clone(),
            RuleFigures {
                rule,
                requests,
                changed: n(2)?,
                refused: n(3)?,
                shadow: n(4)?,
                cost_usd,
                unpriced_requests,
                downgrades: n(8)?,
                ..RuleFigures::default()
            },
        );
        Ok(())
    })?;

    let mut savings: HashMap<String, Saving> = HashMap::new();
    let mut pricer = Pricer::default();
    conn.query_each(DOWNGRADES, values![org.id, from, to], |r| {
        let rule: String = r.get(0)?;
        let charged: Option<f64> = r.get(1)?;
        let asked = as_requested(&r)?;
        let at_requested = prices.cost_usd(&mut pricer, org.id, &asked);
        let s = savings.entry(rule).or_default();
        match (at_requested, charged) {
            (Some(a), Some(c)) => {
                s.priced += 1;
                s.at_requested += a;
                s.charged += c;
            }
            _ => s.unpriced += 1,
        }
        Ok(())
    })?;
    for (rule, s) in savings {
        if let Some(row) = rows.get_mut(&rule) {
            row.unpriced = s.unpriced;
            if s.priced > 0 {
                row.cost_at_requested_usd = Some(usd(s.at_requested));
                row.downgraded_cost_usd = Some(usd(s.charged));
                row.saving_usd = Some(usd(s.at_requested - s.charged));
            }
        }
    }
    let mut out: Vec<RuleFigures> = rows.into_values().collect();
    out.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.rule.cmp(&b.rule))
    });
    Ok(out)
}

/// `from`/`to`, defaulting to the last 30 days; `to` after `from`, 400 days at most.
fn range(q: &HashMap<String, String>, now: i64) -> Result<(i64, i64), ApiError> {
    if let Some(bad) = q.keys().find(|k| *k != "from" && *k != "to") {
        return Err(ApiError::field(
            bad.clone(),
            "unknown parameter; use from, to",
        ));
    }
    let to = crate::api::time_param(q, "to")?.unwrap_or(now);
    let from = crate::api::time_param(q, "from")?.unwrap_or(to - DEFAULT_DAYS * DAY_MS);
    if from >= to {
        return Err(ApiError::field("from", "from must be before to"));
    }
    if to - from > MAX_DAYS * DAY_MS {
        return Err(ApiError::field("from", "a range may span 400 days at most"));
    }
    Ok((from, to))
}

/// The report, read on a connection of its own.
fn read(store: &Store, org: &Org, from: i64, to: i64) -> Result<Vec<RuleFigures>, StoreError> {
    let mut conn = store.open_reader()?;
    Ok(report(&mut conn, &store.prices(), org, from, to)?)
}

/// `GET /api/v1/rules`: `{"from","to","rules":[...]}`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = reader(&state, &headers).await?;
    let (from, to) = range(&q, now_ms())?;
    let store = state.store.clone();
    let rules = blocking(move || read(&store, &org, from, to)).await?;
    Ok(Json(json!({
        "from": tally::time::format_rfc3339_ms(from),
        "to": tally::time::format_rfc3339_ms(to),
        "rules": rules,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T: i64 = 1_767_261_600_000; // 2026-01-01T10:00:00Z

    fn event(id: &str, ts: i64, extra: Value) -> (Event, i64) {
        let mut v = json!({
            "request_id": id, "timestamp": tally::time::format_rfc3339_ms(ts),
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
            "status": 200, "streaming": false, "latency_ms": 100.0,
            "input_tokens": 1000, "output_tokens": 200, "routed": false,
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        (serde_json::from_value(v).unwrap(), ts)
    }

    fn store_with(
        name: &str,
        events: Vec<(Event, i64)>,
    ) -> (crate::store::tests::TempDir, Store, Org) {
        let dir = crate::store::tests::temp_dir(name);
        let store = crate::store::tests::test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        store.insert_events(&org, Arc::new(events), T).unwrap();
        (dir, store, org)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn a_downgrade_is_priced_at_the_model_asked_for_and_refusals_and_shadows_are_counted() {
        // gpt-4o asked for, gpt-4o-mini sent: 1M input and 100k output tokens.
        // At gpt-4o ($2.50 / $10 per 1M): 2.50 + 1.00 = $3.50; at gpt-4o-mini ($0.15 / $0.60):
        // 0.15 + 0.06 = $0.21; the saving is $3.29.
        let down = json!({
            "rule": "rule:cheaper", "routed": true, "model_requested": "gpt-4o",
            "model_routed": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
            "input_tokens": 1_000_000, "output_tokens": 100_000,
        });
        let mut unknown = down.clone();
        unknown["model_requested"] = json!("acme-llm-1");
        let blocked = json!({
            "rule": "rule:no-gpt-4", "status": 403, "error_category": "blocked",
            "error_source": "proxy", "input_tokens": null, "output_tokens": null,
        });
        let shadow = json!({"rule": "budget:trial", "shadow": true});
        let events = vec![
            event("d1", T, down.clone()),
            event("d2", T + 1, down),
            event("d3", T + 2, unknown),
            event("b1", T + 3, blocked.clone()),
            event("b2", T + 4, blocked),
            event("s1", T + 5, shadow),
            // No rule: not in the report; out of range: not counted.
            event("n1", T, json!({})),
            event("old", T - 31 * DAY_MS, json!({"rule": "rule:cheaper"})),
        ];
        let (_dir, store, org) = store_with("rules-report", events);
        let rules = read(&store, &org, T - DAY_MS, T + DAY_MS).unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, ["rule:cheaper", "rule:no-gpt-4", "budget:trial"]);

        let c = &rules[0];
        assert_eq!(
            (
                c.requests,
                c.changed,
                c.refused,
                c.shadow,
                c.downgrades,
                c.unpriced
            ),
            (3, 3, 0, 0, 3, 1)
        );
        // Charged: the three requests at gpt-4o-mini, $0.21 each (the one asking for an
        // unknown model was answered by a priced one).
        assert!(close(c.cost_usd, 0.63), "{:?}", c.cost_usd);
        assert_eq!(c.unpriced_requests, 0);
        assert!(
            close(c.cost_at_requested_usd, 7.0),
            "{:?}",
            c.cost_at_requested_usd
        );
        assert!(
            close(c.downgraded_cost_usd, 0.42),
            "{:?}",
            c.downgraded_cost_usd
        );
        assert!(close(c.saving_usd, 6.58), "{:?}", c.saving_usd);

        let b = &rules[1];
        assert_eq!(
            (b.requests, b.changed, b.refused, b.shadow, b.downgrades),
            (2, 0, 2, 0, 0)
        );
        // Refused before reaching a provider: nothing charged, a known $0, not "unknown".
        assert_eq!((b.cost_usd, b.unpriced_requests), (Some(0.0), 0));
        assert_eq!((b.cost_at_requested_usd, b.saving_usd), (None, None));

        let s = &rules[2];
        assert_eq!((s.requests, s.changed, s.refused, s.shadow), (1, 0, 0, 1));
        assert!(close(s.cost_usd, 0.00027)); // 1000 × 0.15 + 200 × 0.60 per 1M

        // A range with none of them.
        assert!(read(&store, &org, T + DAY_MS, T + 2 * DAY_MS)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unknown_costs_stay_unknown_and_the_index_is_used() {
        let events = vec![event(
            "u1",
            T,
            json!({"rule": "rule:other", "routed": true, "model_requested": "acme-llm-1",
                   "model_actual": "acme-llm-2", "model_routed": "acme-llm-2"}),
        )];
        let (_dir, store, org) = store_with("rules-report-unknown", events);
        let rules = read(&store, &org, T - DAY_MS, T + DAY_MS).unwrap();
        let r = &rules[0];
        assert_eq!((r.cost_usd, r.unpriced_requests), (None, 1));
        assert_eq!((r.downgrades, r.unpriced), (1, 1));
        assert_eq!((r.cost_at_requested_usd, r.saving_usd), (None, None));

        let mut conn = store.open_reader().unwrap();
        for sql in [TOTALS, DOWNGRADES] {
            let plan = crate::db::plan(&mut conn, sql, values![org.id, 0, 1]).unwrap();
            match conn.backend() {
                crate::db::Backend::Sqlite => assert!(plan.contains("events_by_rule"), "{plan}"),
                // Each partition's copy of the index has a name of its own.
                crate::db::Backend::Postgres => {
                    assert!(
                        plan.contains("Index") && !plan.contains("Seq Scan"),
                        "{plan}"
                    )
                }
            }
        }
    }

    #[test]
    fn the_range_defaults_to_30_days_and_bad_parameters_are_named() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(range(&q(&[]), T).unwrap(), (T - 30 * DAY_MS, T));
        let field = |r: Result<(i64, i64), ApiError>| match r {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(range(&q(&[("group_by", "x")]), T)),
            Some("group_by".into())
        );
        assert_eq!(
            field(range(&q(&[("from", "yesterday")]), T)),
            Some("from".into())
        );
        assert_eq!(
            field(range(
                &q(&[("from", "2026-01-02"), ("to", "2026-01-01")]),
                T
            )),
            Some("from".into())
        );
    }
}

//! Budgets (PRODUCT.md, "Rules and budgets"): each org's, their spend per period counted at
//! ingest, and their state as filters enforce it.
//!
//! Spend is a counter per budget and period (`budget_spend`), added to in the transaction that
//! stores the events, so it is exact, costs a row update per budget and batch, and survives a
//! restart. A budget set mid-period starts from the period's events so far (and `budget
//! rebuild` counts again from events). Each filter's share of the counter is kept beside it
//! (`budget_filter_spend`, by the `X-Tally-Filter` id the batch came with), so that a filter can
//! tell its own spend the collector has counted from spend it has not (see `tally::budgets`).
//!
//! The lease: a filter may spend, beyond what the collector has counted of it, `share_usd`:
//! what remains of the limit divided among the filters that polled for the org in the last
//! [`ACTIVE_FOR`]. Together they cannot pass the limit by more than their reservations
//! under-estimate and what one poll interval's worth of stale remainders allows; ARCHITECTURE.md
//! ("Budgets") gives the bound, and `e2e/tests/budgets.rs` measures it.

use crate::db::{self, Conn};
use crate::store::StoreError;
use crate::values;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally::event::Event;
use tally::rules::{BudgetAction, Facts, Matchers, Model};

/// How recently a filter must have polled to count in the shares: three of its poll intervals
/// (`X-Tally-Refresh-Ms`), and at least this.
pub const ACTIVE_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period holding `ts_ms`: [start, end) in UTC (weeks start on Monday).
    pub fn bounds(self, ts_ms: i64) -> (i64, i64) {
        const DAY: i64 = 86_400_000;
        let day = ts_ms.div_euclid(DAY);
        match self {
            Period::Day => (day * DAY, (day + 1) * DAY),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is 3 days before it.
                let monday = (day + 3).div_euclid(7) * 7 - 3;
                (monday * DAY, (monday + 7) * DAY)
            }
            Period::Month => {
                let (y, m, _) = civil(day);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start * DAY, days_from_civil(ny, nm, 1) * DAY)
            }
        }
    }
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A budget as stored.
#[derive(Debug, Clone)]
pub struct Budget {
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub scope: BTreeMap<String, String>,
    pub matchers: Matchers,
    pub period: Period,
    pub limit_usd: f64,
    pub warn_at: f64,
    pub action: String,
    /// When its counting began (see migration 13): part of each filter's count's name.
    pub epoch: i64,
}

/// What `budget set` and `POST /api/v1/budgets` take.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub name: String,
    #[serde(default)]
    pub scope: BTreeMap<String, String>,
    pub period: String,
    pub limit_usd: f64,
    #[serde(default = "default_warn_at")]
    pub warn_at: f64,
    pub action: String,
}

fn default_warn_at() -> f64 {
    0.8
}

/// A bad budget: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

impl BudgetSpec {
    /// Checked: each problem names its field.
    pub fn check(&self) -> Result<(Period, Matchers), Invalid> {
        let name = self.name.as_str();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "name",
                "a budget's name is 1 to 64 of a-z A-Z 0-9 - _ .",
            ));
        }
        let period = Period::parse(&self.period).ok_or_else(|| {
            invalid(
                "period",
                format!("{:?} is not day, week or month", self.period),
            )
        })?;
        if !(self.limit_usd.is_finite() && self.limit_usd > 0.0 && self.limit_usd <= 1e12) {
            return Err(invalid("limit_usd", "must be a positive amount of USD"));
        }
        if !(self.warn_at.is_finite() && self.warn_at > 0.0 && self.warn_at <= 1.0) {
            return Err(invalid(
                "warn_at",
                "must be a fraction of the limit, above 0 and at most 1",
            ));
        }
        if BudgetAction::parse(&self.action).is_none() {
            return Err(invalid(
                "action",
                format!(
                    "{:?} is not alert, block, shadow or downgrade:MODEL",
                    self.action
                ),
            ));
        }
        let matchers = Matchers::parse(&self.scope, "scope").map_err(|m| invalid("scope", m))?;
        Ok((period, matchers))
    }
}

/// The facts a budget's scope matches an event on: the model it asked for (what the filter
/// knew when it enforced), else the one that answered.
fn facts(e: &Event) -> Facts<'_> {
    Facts {
        team: e.team.as_deref(),
        app: e.app.as_deref(),
        feature: e.feature.as_deref(),
        task: e.task.as_deref(),
        user: e.user.as_deref(),
        namespace: e.namespace.as_deref(),
        workload: e.workload.as_deref(),
        principal: e.principal.as_deref(),
        provider: &e.provider,
        model: e
            .model_requested
            .as_deref()
            .or(e.model_actual.as_deref())
            .map_or(Model::Never, Model::Known),
    }
}

pub fn matches(b: &Budget, e: &Event) -> bool {
    b.matchers.matches(&facts(e))
}

/// Every org's budgets, as of one generation of the table.
#[derive(Debug, Default)]
pub struct Defs {
    pub generation: i64,
    pub by_org: HashMap<i64, Vec<Budget>>,
}

impl Defs {
    pub fn load(conn: &mut Conn) -> db::Result<Defs> {
        let generation: i64 = conn.value("SELECT n FROM budget_generation", &[])?;
        let rows = conn.query_map(
            "SELECT id, org_id, name, scope, period, limit_usd, warn_at, action, epoch FROM budgets
             ORDER BY org_id, name",
            &[],
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<i64>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    r.get::<String>(4)?,
                    r.get::<f64>(5)?,
                    r.get::<f64>(6)?,
                    r.get::<String>(7)?,
                    r.get::<i64>(8)?,
                ))
            },
        )?;
        let mut by_org: HashMap<i64, Vec<Budget>> = HashMap::new();
        for row in rows {
            let (id, org_id, name, scope, period, limit_usd, warn_at, action, epoch) = row;
            // Rows were checked when written; one that no longer parses is skipped, not fatal.
            let Ok(scope) = serde_json::from_str::<BTreeMap<String, String>>(&scope) else {
                continue;
            };
            let (Some(period), Ok(matchers)) =
                (Period::parse(&period), Matchers::parse(&scope, "scope"))
            else {
                continue;
            };
            by_org.entry(org_id).or_default().push(Budget {
                id,
                org_id,
                name,
                scope,
                matchers,
                period,
                limit_usd,
                warn_at,
                action,
                epoch,
            });
        }
        Ok(Defs { generation, by_org })
    }
}

/// Spend added by one batch, before it is written: (budget id, period start) -> (USD, priced
/// requests), and per filter (USD, requests: every one of the scope but the proxy's refusals).
#[derive(Debug, Default)]
pub struct Added {
    pub spend: HashMap<(i64, i64), (f64, i64)>,
    pub by_filter: HashMap<(i64, i64), (f64, i64)>,
}

impl Added {
    /// Count one stored event against every budget of its org that its scope matches.
    pub fn add(&mut self, budgets: &[Budget], e: &Event, ts_ms: i64, filter: bool) {
        // A request the proxy refused never went upstream: the filter does not count it either.
        let refused = e.refused_by_proxy();
        let cost = e.cost_usd.filter(|c| *c > 0.0 && c.is_finite());
        if refused || (cost.is_none() && !filter) {
            return;
        }
        for b in budgets {
            if matches(b, e) {
                let (start, _) = b.period.bounds(ts_ms);
                if let Some(cost) = cost {
                    let s = self.spend.entry((b.id, start)).or_default();
                    s.0 += cost;
                    s.1 += 1;
                }
                if filter {
                    let f = self.by_filter.entry((b.id, start)).or_default();
                    f.0 += cost.unwrap_or(0.0);
                    f.1 += 1;
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spend.is_empty() && self.by_filter.is_empty()
    }

    /// Write the counters in the ingest transaction, and record the alerts of each crossing
    /// (once per budget, period and threshold: `alerts::record` keeps the first).
    pub fn write(
        &self,
        tx: &mut Conn,
        defs: &Defs,
        filter: Option<&str>,
        now_ms: i64,
    ) -> db::Result<()> {
        for (&(id, start), &(usd, n)) in &self.spend {
            // Additive: replicas adding to the same row at once each add theirs (the row is
            // locked for the statement), and each sees the total its own addition made.
            let after: f64 = tx.query_row(
                "INSERT INTO budget_spend (budget_id, period_start_ms, spend_usd, requests)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (budget_id, period_start_ms) DO UPDATE SET
                    spend_usd = budget_spend.spend_usd + excluded.spend_usd,
                    requests = budget_spend.requests + excluded.requests
                 RETURNING spend_usd",
                values![id, start, usd, n],
                |r| r.get(0),
            )?;
            let before = after - usd;
            let Some(b) = defs.by_org.values().flatten().find(|b| b.id == id) else {
                continue;
            };
            for (threshold, kind, mark) in [
                (b.warn_at * b.limit_usd, "budget_warning", "warning"),
                (b.limit_usd, "budget_limit", "limit"),
            ] {
                if before < threshold && after >= threshold {
                    let (_, end) = b.period.bounds(start);
                    let payload = serde_json::json!({
                        "budget": b.name,
                        "scope": b.scope,
                        "period": b.period.name(),
                        "period_start": tally::time::format_rfc3339_ms(start),
                        "period_end": tally::time::format_rfc3339_ms(end),
                        "limit_usd": b.limit_usd,
                        "warn_at": b.warn_at,
                        "spend_usd": after,
                        "action": b.action,
                    });
                    let dedupe = format!("budget:{id}:{start}:{mark}");
                    crate::alerts::record(tx, b.org_id, kind, &dedupe, &payload, now_ms)?;
                }
            }
        }
        if let Some(filter) = filter {
            for (&(id, start), &(usd, n)) in &self.by_filter {
                tx.execute(
                    "INSERT INTO budget_filter_spend
                        (budget_id, period_start_ms, filter_id, spend_usd, requests)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (budget_id, period_start_ms, filter_id) DO UPDATE SET
                        spend_usd = budget_filter_spend.spend_usd + excluded.spend_usd,
                        requests = budget_filter_spend.requests + excluded.requests",
                    values![id, start, filter, usd, n],
                )?;
            }
        }
        Ok(())
    }
}

/// A budget's state now, as the API and filters see it.
#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub name: String,
    pub scope: BTreeMap<String, String>,
    pub period: &'static str,
    pub limit_usd: f64,
    pub warn_at: f64,
    pub action: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub spend_usd: f64,
    pub requests: i64,
    /// `ok`, `warning` or `exceeded`.
    pub state: &'static str,
    /// Spend at the end of the period at this period's rate so far.
    pub forecast_usd: f64,
}

/// Each budget of `org` in its current period.
pub fn states(conn: &mut Conn, budgets: &[Budget], now_ms: i64) -> db::Result<Vec<State>> {
    let mut out = Vec::with_capacity(budgets.len());
    for b in budgets {
        let (start, end) = b.period.bounds(now_ms);
        let (spend, requests): (f64, i64) = conn
            .query_row_opt(
                "SELECT spend_usd, requests FROM budget_spend
                 WHERE budget_id = ?1 AND period_start_ms = ?2",
                values![b.id, start],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or((0.0, 0));
        let state = if spend >= b.limit_usd {
            "exceeded"
        } else if spend >= b.warn_at * b.limit_usd {
            "warning"
        } else {
            "ok"
        };
        let elapsed = (now_ms - start).max(60_000) as f64;
        out.push(State {
            name: b.name.clone(),
            scope: b.scope.clone(),
            period: b.period.name(),
            limit_usd: b.limit_usd,
            warn_at: b.warn_at,
            action: b.action.clone(),
            period_start_ms: start,
            period_end_ms: end,
            spend_usd: spend,
            requests,
            state,
            forecast_usd: spend * (end - start) as f64 / elapsed,
        });
    }
    Ok(out)
}

/// The filters polling for each org, for the shares.
#[derive(Default)]
pub struct Pollers {
    /// Org -> filter -> until when it counts as active.
    seen: Mutex<HashMap<i64, HashMap<String, Instant>>>,
}

impl Pollers {
    /// Note that `filter`, which polls every `refresh`, polled for `orgs`; how many filters are
    /// active for each of them.
    pub fn polled(&self, orgs: &[i64], filter: &str, refresh: Duration) -> HashMap<i64, usize> {
        let now = Instant::now();
        let until = now + ACTIVE_FOR.max(refresh.saturating_mul(3));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::with_capacity(orgs.len());
        for org in orgs {
            let filters = seen.entry(*org).or_default();
            if filters.len() < 100_000 {
                filters.insert(filter.to_string(), until);
            }
            filters.retain(|_, t| *t > now);
            out.insert(*org, filters.len().max(1));
        }
        out
    }
}

/// One budget as `/v1/controls` gives it to one filter.
#[derive(Debug, Serialize)]
pub struct ForFilter<'a> {
    pub org_id: &'a str,
    pub name: &'a str,
    /// When the budget's counting began: a filter's count is per epoch.
    pub epoch: i64,
    pub scope: &'a BTreeMap<String, String>,
    pub action: &'a str,
    pub state: &'static str,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub limit_usd: f64,
    pub spend_usd: f64,
    /// What this filter may spend beyond what the collector has counted of it.
    pub share_usd: f64,
    /// This filter's requests the collector has counted this period.
    pub confirmed_requests: i64,
    /// What a request in flight is reserved at: the period's mean cost per request.
    pub estimate_usd: f64,
}

/// This filter's counted requests per budget in the current periods.
pub fn confirmed(
    conn: &mut Conn,
    budgets: &[&Budget],
    filter: &str,
    now_ms: i64,
) -> db::Result<HashMap<i64, i64>> {
    let mut out = HashMap::new();
    for b in budgets {
        let (start, _) = b.period.bounds(now_ms);
        if let Some(v) = conn.query_row_opt(
            "SELECT requests FROM budget_filter_spend
             WHERE budget_id = ?1 AND period_start_ms = ?2 AND filter_id = ?3",
            values![b.id, start, filter],
            |r| r.get::<i64>(0),
        )? {
            out.insert(b.id, v);
        }
    }
    Ok(out)
}

/// The estimate a request in flight is reserved at, from the period so far: its mean cost per
/// request (a filter admits a request while what remains of its share covers it).
pub fn estimate(s: &State) -> f64 {
    if s.requests > 0 {
        s.spend_usd / s.requests as f64
    } else {
        // Nothing spent yet this period: a hundredth of the limit, so that a first burst of
        // requests cannot take the whole limit before the first costs are counted.
        s.limit_usd / 100.0
    }
}

/// Count a budget's spend in its current period again from the events (a budget just set, or
/// counters lost); the per-filter counts cannot be rebuilt and start again.
pub fn rebuild(conn: &mut Conn, b: &Budget, now_ms: i64) -> Result<f64, StoreError> {
    let (start, end) = b.period.bounds(now_ms);
    // Events as the read API reads them, matched as ingest matches them (`matches`), one at a
    // time: a month of them need not fit in memory.
    let (mut spend, mut n) = (0.0, 0i64);
    conn.query_each(
        &format!(
            "SELECT {} FROM events
             WHERE org_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND cost_usd > 0",
            crate::store::EVENT_COLUMNS
        ),
        values![b.org_id, start, end],
        |r| {
            let e = crate::store::event_from_row(&r, 0, "")?;
            if matches(b, &e) {
                spend += e.cost_usd.unwrap_or(0.0);
                n += 1;
            }
            Ok(())
        },
    )?;
    conn.execute(
        "INSERT INTO budget_spend (budget_id, period_start_ms, spend_usd, requests)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (budget_id, period_start_ms) DO UPDATE SET
            spend_usd = excluded.spend_usd, requests = excluded.requests",
        values![b.id, start, spend, n],
    )?;
    Ok(spend)
}

/// Count every budget of `org_id` again in its current period, in one IMMEDIATE transaction
/// (after a repricing, or counters lost): each budget's name, period and spend.
pub fn rebuild_org(
    store: &crate::store::Store,
    org_id: i64,
    now_ms: i64,
) -> Result<Vec<(String, Period, f64)>, StoreError> {
    let list = store.budgets_of(org_id)?;
    let mut conn = store.conn_for_cli();
    let mut tx = conn.begin()?;
    let mut out = Vec::with_capacity(list.len());
    for b in &list {
        out.push((b.name.clone(), b.period, rebuild(&mut tx, b, now_ms)?));
    }
    tx.commit()?;
    Ok(out)
}

/// Create or change a budget of `org_id` (one IMMEDIATE transaction: a serving collector's
/// ingest waits, so no event is counted twice or missed). A new budget counts the period's
/// events so far.
pub fn set(
    conn: &mut Conn,
    org_id: i64,
    spec: &BudgetSpec,
    now_ms: i64,
) -> Result<Result<State, Invalid>, StoreError> {
    let (period, matchers) = match spec.check() {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let scope = serde_json::to_string(&spec.scope).map_err(|e| StoreError::Io(e.to_string()))?;
    let mut tx = conn.begin()?;
    let existing: Option<(i64, String)> = tx.query_row_opt(
        "SELECT id, period FROM budgets WHERE org_id = ?1 AND name = ?2",
        values![org_id, &spec.name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (id, recount) = match existing {
        Some((id, old_period)) => {
            let old_scope: String =
                tx.value("SELECT scope FROM budgets WHERE id = ?1", values![id])?;
            let recount = old_scope != scope || old_period != period.name();
            // `?8 = 1`: a flag is an integer, not a boolean, on PostgreSQL.
            tx.execute(
                "UPDATE budgets SET scope = ?2, period = ?3, limit_usd = ?4, warn_at = ?5,
                    action = ?6, updated_ms = ?7, epoch = CASE WHEN ?8 = 1 THEN ?7 ELSE epoch END
                 WHERE id = ?1",
                values![
                    id,
                    &scope,
                    period.name(),
                    spec.limit_usd,
                    spec.warn_at,
                    &spec.action,
                    now_ms,
                    recount
                ],
            )?;
            // A new scope or period counts other events: count again, in a new epoch.
            (id, recount)
        }
        None => {
            let id: i64 = tx.value(
                "INSERT INTO budgets (org_id, name, scope, period, limit_usd, warn_at, action,
                    epoch, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8)
                 RETURNING id",
                values![
                    org_id,
                    &spec.name,
                    &scope,
                    period.name(),
                    spec.limit_usd,
                    spec.warn_at,
                    &spec.action,
                    now_ms
                ],
            )?;
            (id, true)
        }
    };
    let epoch: i64 = tx.value("SELECT epoch FROM budgets WHERE id = ?1", values![id])?;
    let b = Budget {
        epoch,
        id,
        org_id,
        name: spec.name.clone(),
        scope: spec.scope.clone(),
        matchers,
        period,
        limit_usd: spec.limit_usd,
        warn_at: spec.warn_at,
        action: spec.action.clone(),
    };
    if recount {
        tx.execute("DELETE FROM budget_spend WHERE budget_id = ?1", values![id])?;
        tx.execute(
            "DELETE FROM budget_filter_spend WHERE budget_id = ?1",
            values![id],
        )?;
        rebuild(&mut tx, &b, now_ms)?;
    }
    let state = states(&mut tx, std::slice::from_ref(&b), now_ms)?
        .pop()
        .ok_or_else(|| StoreError::Io("no state for the budget just set".into()))?;
    tx.commit()?;
    Ok(Ok(state))
}

/// Delete a budget; false when the org has none of that name.
pub fn delete(conn: &mut Conn, org_id: i64, name: &str) -> Result<bool, StoreError> {
    let id: Option<i64> = conn.query_row_opt(
        "SELECT id FROM budgets WHERE org_id = ?1 AND name = ?2",
        values![org_id, name],
        |r| r.get(0),
    )?;
    let Some(id) = id else {
        return Ok(false);
    };
    conn.execute(
        "DELETE FROM budget_filter_spend WHERE budget_id = ?1",
        values![id],
    )?;
    conn.execute("DELETE FROM budget_spend WHERE budget_id = ?1", values![id])?;
    conn.execute("DELETE FROM budgets WHERE id = ?1", values![id])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400_000 + h * 3_600_000
    }

    #[test]
    fn periods_are_utc_days_monday_weeks_and_calendar_months() {
        let t = ms(2026, 12, 1, 13); // a Tuesday
        assert_eq!(
            Period::Day.bounds(t),
            (ms(2026, 12, 1, 0), ms(2026, 12, 2, 0))
        );
        assert_eq!(
            Period::Week.bounds(t),
            (ms(2026, 11, 30, 0), ms(2026, 12, 7, 0))
        );
        assert_eq!(
            Period::Month.bounds(t),
            (ms(2026, 12, 1, 0), ms(2027, 1, 1, 0))
        );
        assert_eq!(
            Period::Month.bounds(ms(2028, 2, 29, 23)),
            (ms(2028, 2, 1, 0), ms(2028, 3, 1, 0))
        );
        // A Monday at midnight starts its own week; the Sunday before is the week before's.
        assert_eq!(
            Period::Week.bounds(ms(2026, 11, 30, 0)).0,
            ms(2026, 11, 30, 0)
        );
        assert_eq!(
            Period::Week.bounds(ms(2026, 11, 30, 0) - 1).0,
            ms(2026, 11, 23, 0)
        );
        for day in -1000..1000 {
            assert_eq!(days_from_civil_roundtrip(day), day);
        }
    }

    fn event(id: &str, team: &str, ts_ms: i64, cost: f64) -> (Event, i64) {
        let e: Event = serde_json::from_value(serde_json::json!({
            "request_id": id, "timestamp": tally::time::format_rfc3339_ms(ts_ms),
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-4o", "status": 200, "streaming": false, "latency_ms": 1.0,
            "input_tokens": 10, "output_tokens": 1, "cost_usd": cost, "team": team,
            "routed": false,
        }))
        .unwrap();
        (e, ts_ms)
    }

    #[test]
    fn spend_is_counted_at_ingest_per_budget_and_filter_and_each_crossing_alerts_once() {
        use crate::store::Owners;
        use std::sync::Arc;
        let dir = crate::store::tests::temp_dir("budgets");
        let store = crate::store::tests::test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let now = crate::api::now_ms();
        let (start, _) = Period::Day.bounds(now);
        // Spend before the budget exists: a new budget counts it.
        let before = vec![
            event("e0", "web", start + 1, 0.25),
            event("e1", "ml", start + 1, 5.0),
        ];
        store.insert_events(&org, Arc::new(before), now).unwrap();
        let spec = BudgetSpec {
            name: "web-day".into(),
            scope: [("team".to_string(), "w*".to_string())].into(),
            period: "day".into(),
            limit_usd: 1.0,
            warn_at: 0.5,
            action: "block".into(),
        };
        // Set from another connection, as the CLI does: the serving store sees it at its next
        // ingest transaction.
        let cli = crate::store::tests::test_store(&dir);
        let st = set(&mut cli.conn_for_cli(), org.id, &spec, now)
            .unwrap()
            .unwrap();
        assert_eq!((st.spend_usd, st.requests, st.state), (0.25, 1, "ok"));
        let batch = |ids: &[(&str, &str, f64)]| {
            Arc::new(
                ids.iter()
                    .map(|(id, team, c)| event(id, team, now, *c))
                    .collect::<Vec<_>>(),
            )
        };
        let from = |f: &str| Some(f.to_string());
        let owners = || Owners::one(org.clone());
        store
            .insert_from(
                owners(),
                batch(&[("a", "web", 0.3), ("b", "ml", 9.0)]),
                now,
                from("envoy-a"),
            )
            .unwrap();
        // A duplicate adds nothing; another filter's event counts for that filter.
        store
            .insert_from(
                owners(),
                batch(&[("a", "web", 0.3), ("c", "web", 0.5)]),
                now,
                from("envoy-b"),
            )
            .unwrap();
        let budgets = store.budgets_of(org.id).unwrap();
        let st = &states(&mut store.reader(), &budgets, now).unwrap()[0];
        assert!((st.spend_usd - 1.05).abs() < 1e-12, "{}", st.spend_usd);
        assert_eq!((st.requests, st.state), (3, "exceeded"));
        let refs: Vec<&Budget> = budgets.iter().collect();
        let mine = |f: &str| {
            confirmed(&mut store.reader(), &refs, f, now)
                .unwrap()
                .get(&budgets[0].id)
                .copied()
        };
        assert_eq!(mine("envoy-a"), Some(1), "one request of its scope");
        assert_eq!(mine("envoy-b"), Some(1));
        assert_eq!(mine("envoy-c"), None);
        // The warning (0.5) and the limit (1.0) were crossed once each.
        store
            .insert_from(owners(), batch(&[("d", "web", 0.5)]), now, None)
            .unwrap();
        let alerts: Vec<(String, String)> = store
            .reader()
            .query_map(
                "SELECT kind, dedupe_key FROM alert_events ORDER BY id",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let id = budgets[0].id;
        assert_eq!(
            alerts,
            vec![
                (
                    "budget_warning".to_string(),
                    format!("budget:{id}:{start}:warning")
                ),
                (
                    "budget_limit".to_string(),
                    format!("budget:{id}:{start}:limit")
                ),
            ]
        );
        // Rebuilt from the events, the counter is the same.
        let counted = states(&mut store.reader(), &budgets, now).unwrap()[0].spend_usd;
        let rebuilt = rebuild(&mut store.conn_for_cli(), &budgets[0], now).unwrap();
        assert!((counted - rebuilt).abs() < 1e-12, "{counted} {rebuilt}");
        // A new limit keeps the counts; a new scope counts again, in a new epoch, so that the
        // filters' own counts start again with the collector's.
        let epoch = budgets[0].epoch;
        let raised = BudgetSpec {
            limit_usd: 2.0,
            ..spec.clone()
        };
        set(&mut cli.conn_for_cli(), org.id, &raised, now + 1)
            .unwrap()
            .unwrap();
        assert_eq!(store.budgets_of(org.id).unwrap()[0].epoch, epoch);
        assert_eq!(mine("envoy-a"), Some(1));
        let wider = BudgetSpec {
            scope: BTreeMap::new(),
            ..raised
        };
        let st = set(&mut cli.conn_for_cli(), org.id, &wider, now + 2)
            .unwrap()
            .unwrap();
        assert_eq!(store.budgets_of(org.id).unwrap()[0].epoch, now + 2);
        assert_eq!(mine("envoy-a"), None);
        // Every priced event of the day, ml's included: 0.25 + 5 + 0.3 + 9 + 0.5 + 0.5.
        assert!((st.spend_usd - 15.55).abs() < 1e-9, "{}", st.spend_usd);
        // A restart keeps it.
        let counted = st.spend_usd;
        drop(store);
        let again = crate::store::tests::test_store(&dir);
        let b = again.budgets_of(org.id).unwrap();
        assert!(
            (states(&mut again.reader(), &b, now).unwrap()[0].spend_usd - counted).abs() < 1e-12
        );
        assert!(delete(&mut again.conn_for_cli(), org.id, "web-day").unwrap());
        assert!(!delete(&mut again.conn_for_cli(), org.id, "web-day").unwrap());
    }

    fn days_from_civil_roundtrip(day: i64) -> i64 {
        let (y, m, d) = civil(day);
        days_from_civil(y, m, d)
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let ok = BudgetSpec {
            name: "web".into(),
            scope: [("team".to_string(), "web".to_string())].into(),
            period: "month".into(),
            limit_usd: 100.0,
            warn_at: 0.8,
            action: "downgrade:gpt-4o-mini".into(),
        };
        assert!(ok.check().is_ok());
        for (change, field) in [
            (
                BudgetSpec {
                    name: "a b".into(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                BudgetSpec {
                    period: "year".into(),
                    ..ok.clone()
                },
                "period",
            ),
            (
                BudgetSpec {
                    limit_usd: 0.0,
                    ..ok.clone()
                },
                "limit_usd",
            ),
            (
                BudgetSpec {
                    limit_usd: f64::NAN,
                    ..ok.clone()
                },
                "limit_usd",
            ),
            (
                BudgetSpec {
                    warn_at: 1.5,
                    ..ok.clone()
                },
                "warn_at",
            ),
            (
                BudgetSpec {
                    action: "explode".into(),
                    ..ok.clone()
                },
                "action",
            ),
            (
                BudgetSpec {
                    action: "downgrade:".into(),
                    ..ok.clone()
                },
                "action",
            ),
            (
                BudgetSpec {
                    scope: [("colour".to_string(), "x".to_string())].into(),
                    ..ok.clone()
                },
                "scope",
            ),
        ] {
            assert_eq!(change.check().unwrap_err().field, field);
        }
    }
}

/// `/api/v1/budgets`: the caller's org's budgets (read with the org key or a session; changed
/// with the org key or an admin's session).
pub mod http {
    use super::{BudgetSpec, State as BudgetState};
    use crate::api::{admin, blocking, now_ms, reader, AppState};
    use crate::error::ApiError;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::Json;

    pub async fn list(
        State(state): State<AppState>,
        headers: HeaderMap,
    ) -> Result<impl IntoResponse, ApiError> {
        let org = reader(&state, &headers).await?;
        let store = state.store.clone();
        let states: Vec<BudgetState> = blocking(move || {
            let budgets = store.budgets_of(org.id)?;
            Ok(super::states(&mut store.reader(), &budgets, now_ms())?)
        })
        .await?;
        Ok(Json(serde_json::json!({ "budgets": states })))
    }

    pub async fn set(
        State(state): State<AppState>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<impl IntoResponse, ApiError> {
        let org = admin(&state, &headers).await?;
        let spec: BudgetSpec = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("a budget is a JSON object: {e}")))?;
        let store = state.store.clone();
        let outcome =
            blocking(move || super::set(&mut store.conn_for_cli(), org.id, &spec, now_ms()))
                .await?;
        match outcome {
            Ok(st) => Ok((StatusCode::OK, Json(serde_json::json!({ "budget": st })))),
            Err(e) => Err(ApiError::field(e.field, e.message)),
        }
    }

    pub async fn delete(
        State(state): State<AppState>,
        headers: HeaderMap,
        Path(name): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        let org = admin(&state, &headers).await?;
        let store = state.store.clone();
        let deleted =
            blocking(move || super::delete(&mut store.conn_for_cli(), org.id, &name)).await?;
        if deleted {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::field(
                "name",
                "the org has no budget of that name",
            ))
        }
    }
}

//! Budgets as a filter enforces them: the collector's state (`GET /v1/controls`) and this
//! Envoy's own count of what it spent since the collector last counted it.
//!
//! The collector counts each budget's spend from the events it stores, which arrive a flush
//! interval and a poll after the requests that made them. Left at that, every Envoy would keep
//! admitting requests for that long after the limit, and concurrent streams would all pass.
//! So the collector leases each filter a share of what remains (`share_usd`: the remainder over
//! the filters polling for the org), and a filter acts as if the limit were reached once its
//! own spend that the collector has not counted yet (`local spent - confirmed_usd`), plus what
//! its requests in flight are reserved at (`estimate_usd` each), would pass its share. Spend is
//! counted exactly as requests finish, from the rates `/v1/controls` carries; the collector's
//! own figure replaces it as the events arrive. ARCHITECTURE.md, "Budgets", gives the bound.

use crate::event::Event;
use crate::rules::{Budget, BudgetAction, Matchers};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// A model's rates as an org pays them (USD per 1M tokens; per search).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Rates {
    pub input: f64,
    pub cached_input: f64,
    pub cache_write: f64,
    #[serde(default)]
    pub cache_write_1h: f64,
    pub output: f64,
    #[serde(default)]
    pub web_search: f64,
}

/// What `/v1/controls` says about budgets: each org's, and the rates to count spend with.
#[derive(Debug, Default, Clone)]
pub struct BudgetSet {
    /// Org -> its budgets that act at the proxy, in the collector's order.
    pub by_org: BTreeMap<String, std::rc::Rc<Vec<Budget>>>,
    /// Org -> `provider/model` -> rates.
    pub rates: HashMap<String, HashMap<String, Rates>>,
}

#[derive(Deserialize)]
struct RawBudget {
    org_id: String,
    name: String,
    #[serde(default)]
    scope: BTreeMap<String, String>,
    action: String,
    state: String,
    period_start_ms: i64,
    period_end_ms: i64,
    share_usd: f64,
    confirmed_usd: f64,
    estimate_usd: f64,
}

#[derive(Deserialize)]
struct RawOrg {
    org_id: String,
    #[serde(default)]
    rates: HashMap<String, Rates>,
}

#[derive(Deserialize)]
struct RawControls {
    #[serde(default)]
    orgs: Vec<RawOrg>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
}

impl BudgetSet {
    /// From the body of `GET /v1/controls`; `now_ms` by the filter's clock, for `retry-after`.
    pub fn parse(json: &[u8], now_ms: u64) -> Result<BudgetSet, String> {
        let raw: RawControls =
            serde_json::from_slice(json).map_err(|e| format!("controls: {e}"))?;
        let mut by_org: BTreeMap<String, Vec<Budget>> = BTreeMap::new();
        for b in raw.budgets {
            let what = format!("controls: budget {:?}", b.name);
            let action = BudgetAction::parse(&b.action)
                .ok_or_else(|| format!("{what}: unknown action {:?}", b.action))?;
            if action == BudgetAction::Alert {
                continue;
            }
            let matchers = Matchers::parse(&b.scope, &what)?;
            let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
            let end = u64::try_from(b.period_end_ms).unwrap_or(0);
            by_org.entry(b.org_id.clone()).or_default().push(Budget {
                label: format!("budget:{}", b.name),
                org: b.org_id,
                matchers,
                action,
                exceeded: b.state == "exceeded",
                retry_after_s: end.saturating_sub(now_ms).div_ceil(1000),
                share_usd: finite(b.share_usd),
                confirmed_usd: finite(b.confirmed_usd),
                estimate_usd: finite(b.estimate_usd),
                ledger_key: format!("{}@{}", b.name, b.period_start_ms),
            });
        }
        Ok(BudgetSet {
            by_org: by_org
                .into_iter()
                .map(|(k, v)| (k, std::rc::Rc::new(v)))
                .collect(),
            rates: raw
                .orgs
                .into_iter()
                .filter(|o| !o.rates.is_empty())
                .map(|o| (o.org_id, o.rates))
                .collect(),
        })
    }

    /// The budgets of a request's org (None: the filter's own, the only org its credential
    /// serves).
    pub fn for_org(&self, org: Option<&str>) -> Option<std::rc::Rc<Vec<Budget>>> {
        match org {
            Some(o) => self.by_org.get(o).cloned(),
            None if self.by_org.len() == 1 => self.by_org.values().next().cloned(),
            None => None,
        }
    }

    /// What a finished request cost, by its org's rates; None when they do not know its model.
    pub fn cost_usd(&self, org: &str, e: &Event) -> Option<f64> {
        let model = e.model()?;
        let rates = self.rates.get(org)?;
        let mut key = String::with_capacity(e.provider.len() + 1 + model.len());
        key.push_str(&e.provider);
        key.push('/');
        key.push_str(model);
        let r = rates.get(&key)?;
        Some(cost(r, e))
    }
}

/// A request's cost at these rates (cached and cache-written input at their own rates).
pub fn cost(r: &Rates, e: &Event) -> f64 {
    let n = |v: Option<u64>| v.unwrap_or(0) as f64;
    let input = n(e.input_tokens);
    let cached = n(e.cached_input_tokens);
    let written = n(e.cache_write_tokens);
    let written_1h = n(e.cache_write_1h_tokens).min(written);
    let fresh = (input - cached - written).max(0.0);
    (fresh * r.input
        + cached * r.cached_input
        + (written - written_1h) * r.cache_write
        + written_1h * r.cache_write_1h
        + n(e.output_tokens) * r.output)
        / 1e6
        + n(e.web_search_requests) * r.web_search
}

/// Nano-dollars: this Envoy's counts are integers in shared data.
pub fn to_nano(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

/// One budget's local count: what this Envoy spent this period, and what its requests in
/// flight are reserved at (nano-dollars).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Local {
    pub spent: u64,
    pub reserved: u64,
}

impl Local {
    pub fn parse(v: &[u8]) -> Local {
        let text = std::str::from_utf8(v).unwrap_or("");
        let mut it = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        Local {
            spent: it.next().unwrap_or(0),
            reserved: it.next().unwrap_or(0),
        }
    }

    pub fn write(&self) -> Vec<u8> {
        format!("{} {}", self.spent, self.reserved).into_bytes()
    }

    /// Whether one more request, reserved at the budget's estimate, would pass this filter's
    /// share of what remains: spend the collector has not counted, plus reservations.
    pub fn over(&self, b: &Budget) -> bool {
        let unconfirmed = self.spent.saturating_sub(to_nano(b.confirmed_usd));
        unconfirmed + self.reserved + to_nano(b.estimate_usd) > to_nano(b.share_usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_budgets_and_rates_are_read_and_alert_budgets_left_out() {
        let body = br#"{"orgs":[{"org_id":"acme","key_sha256":[],"rates":{"openai/gpt-4o-mini":{"input":0.15,"cached_input":0.075,"cache_write":0.15,"cache_write_1h":0.15,"output":0.6,"web_search":0.0}}}],
          "budgets":[
            {"org_id":"acme","name":"web","scope":{"team":"web"},"action":"block","state":"exceeded","period_start_ms":0,"period_end_ms":7200000,"limit_usd":1,"spend_usd":1.2,"share_usd":0,"confirmed_usd":0.4,"estimate_usd":0.001},
            {"org_id":"acme","name":"all","scope":{},"action":"alert","state":"ok","period_start_ms":0,"period_end_ms":7200000,"limit_usd":1,"spend_usd":0,"share_usd":0.5,"confirmed_usd":0,"estimate_usd":0}
          ]}"#;
        let set = BudgetSet::parse(body, 3_600_000).unwrap();
        let acme = set.for_org(None).unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!(acme[0].label, "budget:web");
        assert!(acme[0].exceeded);
        assert_eq!(acme[0].retry_after_s, 3600);
        assert_eq!(acme[0].ledger_key, "web@0");
        let mut e = crate::event::tests::event();
        e.provider = "openai".into();
        e.model_actual = None;
        e.model_requested = Some("gpt-4o-mini".into());
        e.input_tokens = Some(1_000_000);
        e.cached_input_tokens = Some(500_000);
        e.cache_write_tokens = Some(0);
        e.output_tokens = Some(100_000);
        let c = set.cost_usd("acme", &e).unwrap();
        assert!((c - (0.075 + 0.0375 + 0.06)).abs() < 1e-12, "{c}");
        assert!(BudgetSet::parse(br#"{"budgets":[{"org_id":"a","name":"x","action":"explode","state":"ok","period_start_ms":0,"period_end_ms":1,"share_usd":0,"confirmed_usd":0,"estimate_usd":0}]}"#, 0).is_err());
    }

    #[test]
    fn a_filter_stops_at_its_share_counting_reservations_and_unconfirmed_spend() {
        let set = BudgetSet::parse(br#"{"budgets":[{"org_id":"a","name":"x","action":"block","state":"ok","period_start_ms":0,"period_end_ms":1,"share_usd":0.01,"confirmed_usd":0.002,"estimate_usd":0.001}]}"#, 0).unwrap();
        let b = &set.for_org(Some("a")).unwrap()[0];
        let l = |spent: f64, reserved: f64| Local {
            spent: to_nano(spent),
            reserved: to_nano(reserved),
        };
        // 0.002 spent, all confirmed: the share (0.01) is all room; the next request's 0.001
        // fits beside 0.009 reserved, not beside more.
        assert!(!l(0.002, 0.009).over(b));
        assert!(l(0.002, 0.0091).over(b));
        // Unconfirmed spend counts like a reservation.
        assert!(l(0.0111, 0.0).over(b));
        assert!(!l(0.011, 0.0).over(b));
        assert_eq!(Local::parse(&l(0.5, 0.25).write()), l(0.5, 0.25));
        assert_eq!(Local::parse(b"garbage"), Local::default());
    }
}

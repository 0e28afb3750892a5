//! Budgets as a filter enforces them: the collector's state (`GET /v1/controls`) and this
//! Envoy's own count of what it spent since the collector last counted it.
//!
//! The collector counts each budget's spend from the events it stores, which arrive a flush
//! interval and a poll after the requests that made them. Left at that, every Envoy would keep
//! admitting requests for that long after the limit, and concurrent streams would all pass.
//! So the collector leases each filter a share of what remains (`share_usd`: the remainder over
//! the filters polling for the org), and a filter acts as if the limit were reached once the
//! requests it finished that the collector has not counted yet (`settled - confirmed_requests`),
//! and those in flight, each at the budget's mean cost per request (`estimate_usd`), with one more
//! would pass its share. Counting requests rather than local prices links the two counts
//! exactly (the collector counts each filter's requests by its `X-Tally-Filter` id), whatever
//! the prices: a cost the filter could only estimate never lingers in its count; the collector's
//! exact figure replaces it within a flush and a poll. ARCHITECTURE.md, "Budgets", gives the
//! bound.

use crate::rules::{Budget, BudgetAction, Matchers};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What `/v1/controls` says about budgets: each org's.
#[derive(Debug, Default, Clone)]
pub struct BudgetSet {
    /// Org -> its budgets that act at the proxy, in the collector's order.
    pub by_org: BTreeMap<String, std::sync::Arc<Vec<Budget>>>,
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
    /// When the budget's counting began; a new epoch starts this filter's count afresh.
    #[serde(default)]
    epoch: i64,
    share_usd: f64,
    confirmed_requests: u64,
    estimate_usd: f64,
}

#[derive(Deserialize)]
struct RawControls {
    #[serde(default)]
    budgets: Vec<RawBudget>,
}

impl BudgetSet {
    /// From the body of `GET /v1/controls`.
    pub fn parse(json: &[u8]) -> Result<BudgetSet, String> {
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
                period_end_ms: end,
                share_usd: finite(b.share_usd),
                confirmed_requests: b.confirmed_requests,
                estimate_usd: finite(b.estimate_usd),
                ledger_key: format!("{}@{}@{}", b.name, b.epoch, b.period_start_ms),
            });
        }
        Ok(BudgetSet {
            by_org: by_org
                .into_iter()
                .map(|(k, v)| (k, std::sync::Arc::new(v)))
                .collect(),
        })
    }

    /// The budgets of a request's org (None: the filter's own, the only org its credential
    /// serves).
    pub fn for_org(&self, org: Option<&str>) -> Option<std::sync::Arc<Vec<Budget>>> {
        match org {
            Some(o) => self.by_org.get(o).cloned(),
            None if self.by_org.len() == 1 => self.by_org.values().next().cloned(),
            None => None,
        }
    }
}

/// Nano-dollars, for comparing amounts exactly.
pub fn to_nano(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

/// One budget's local count in this Envoy's shared data: requests finished this period,
/// requests in flight, and the Envoy's count of dropped events when this count began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Local {
    pub settled: u64,
    pub in_flight: u64,
    pub dropped_base: u64,
}

impl Local {
    pub fn parse(v: &[u8]) -> Local {
        let text = std::str::from_utf8(v).unwrap_or("");
        let mut it = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        Local {
            settled: it.next().unwrap_or(0),
            in_flight: it.next().unwrap_or(0),
            dropped_base: it.next().unwrap_or(0),
        }
    }

    pub fn write(&self) -> Vec<u8> {
        format!("{} {} {}", self.settled, self.in_flight, self.dropped_base).into_bytes()
    }

    /// Whether one more request would pass this filter's share of what remains: the requests
    /// the collector has not counted, those in flight and this one, each at the mean cost.
    /// `dropped` is the Envoy's count of events it dropped: a dropped event never reaches the
    /// collector, so it never counts as unconfirmed (taken off every budget's count, which errs
    /// towards letting through, by at most the events dropped).
    pub fn over(&self, b: &Budget, dropped: u64) -> bool {
        self.spoken_for(b, dropped) > u128::from(to_nano(b.share_usd))
    }

    /// Whether half the share is spoken for: the filter then polls sooner, so that shares
    /// computed from an older remainder do not linger near the limit (see `filter::root`).
    pub fn near(&self, b: &Budget, dropped: u64) -> bool {
        self.spoken_for(b, dropped) * 2 > u128::from(to_nano(b.share_usd))
    }

    /// What the uncounted and in-flight requests and one more take of the share (nano-dollars).
    fn spoken_for(&self, b: &Budget, dropped: u64) -> u128 {
        let lost = dropped.saturating_sub(self.dropped_base);
        let unconfirmed = self
            .settled
            .saturating_sub(b.confirmed_requests)
            .saturating_sub(lost);
        let requests = unconfirmed + self.in_flight + 1;
        u128::from(requests) * u128::from(to_nano(b.estimate_usd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_budgets_are_read_and_alert_budgets_left_out() {
        let body = br#"{"orgs":[{"org_id":"acme","key_sha256":[],"rates":{"openai/gpt-4o-mini":{"input":0.15,"cached_input":0.075,"cache_write":0.15,"cache_write_1h":0.15,"output":0.6,"web_search":0.0}}}],
          "budgets":[
            {"org_id":"acme","name":"web","scope":{"team":"web"},"action":"block","state":"exceeded","period_start_ms":0,"period_end_ms":7200000,"limit_usd":1,"spend_usd":1.2,"share_usd":0,"confirmed_requests":4,"estimate_usd":0.001},
            {"org_id":"acme","name":"all","scope":{},"action":"alert","state":"ok","period_start_ms":0,"period_end_ms":7200000,"limit_usd":1,"spend_usd":0,"share_usd":0.5,"confirmed_requests":0,"estimate_usd":0}
          ]}"#;
        let set = BudgetSet::parse(body).unwrap();
        let acme = set.for_org(None).unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!(acme[0].label, "budget:web");
        assert!(acme[0].exceeded);
        assert_eq!(acme[0].period_end_ms, 7_200_000);
        assert_eq!(acme[0].ledger_key, "web@0@0");
        assert!(BudgetSet::parse(br#"{"budgets":[{"org_id":"a","name":"x","action":"explode","state":"ok","period_start_ms":0,"period_end_ms":1,"share_usd":0,"confirmed_requests":0,"estimate_usd":0}]}"#).is_err());
    }

    #[test]
    fn a_filter_stops_at_its_share_counting_requests_in_flight_and_not_yet_counted() {
        let set = BudgetSet::parse(br#"{"budgets":[{"org_id":"a","name":"x","action":"block","state":"ok","period_start_ms":0,"period_end_ms":1,"share_usd":0.01,"confirmed_requests":2,"estimate_usd":0.001}]}"#).unwrap();
        let b = &set.for_org(Some("a")).unwrap()[0];
        let l = |settled, in_flight| Local {
            settled,
            in_flight,
            dropped_base: 0,
        };
        // Two finished and counted: the share (0.01) is all room, ten requests of 0.001.
        assert!(!l(2, 9).over(b, 0));
        assert!(l(2, 10).over(b, 0));
        // Finished but not counted yet: like requests in flight.
        assert!(!l(11, 0).over(b, 0));
        assert!(l(12, 0).over(b, 0));
        assert!(l(7, 5).over(b, 0));
        // Events dropped since the count began never reach the collector: not waited for.
        assert!(!l(12, 0).over(b, 1));
        let since = Local {
            dropped_base: 5,
            ..l(12, 0)
        };
        assert!(since.over(b, 5) && !since.over(b, 6));
        // Half the share spoken for: poll sooner.
        assert!(!l(2, 4).near(b, 0) && l(2, 5).near(b, 0));
        assert_eq!(Local::parse(&l(5, 3).write()), l(5, 3));
        assert_eq!(Local::parse(b"garbage"), Local::default());
    }
}

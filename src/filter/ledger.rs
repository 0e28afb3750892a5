//! This Envoy's budget counts in shared data (see `crate::budgets`): every VM of the Envoy
//! reserves and settles against the same count, so the share the collector leased is the
//! Envoy's, not each worker's.
//!
//! ```text
//! tally.budget.<scope>.<org>.<name>@<period start> = settled SP in-flight     (requests)
//! ```

use super::shared;
use crate::budgets::Local;
use crate::rules::{Budget, Ledger};

fn key(scope: &str, b: &Budget) -> String {
    format!("tally.budget.{scope}.{}.{}", b.org, b.ledger_key)
}

/// The decision's view: each budget's local count read once per decision.
pub struct Shares<'a> {
    pub scope: &'a str,
    pub now_ms: u64,
}

impl Ledger for Shares<'_> {
    fn acting(&mut self, _i: usize, b: &Budget) -> bool {
        if self.now_ms >= b.period_end_ms {
            // A period the last state was about is over (the collector has not been reached
            // since): a new one starts with nothing spent.
            return false;
        }
        if b.exceeded {
            return true;
        }
        let local = shared::get(&key(self.scope, b))
            .map(|v| Local::parse(&v))
            .unwrap_or_default();
        local.over(b)
    }
}

/// Count a request in flight against a budget; false if the count could not be written (the
/// request is then not counted when it finishes either).
pub fn reserve(scope: &str, b: &Budget) -> bool {
    let k = key(scope, b);
    shared::ensure(&k);
    shared::update(&k, |v| {
        let mut l = Local::parse(v);
        l.in_flight = l.in_flight.saturating_add(1);
        Some((l.write(), ()))
    })
    .is_some()
}

/// A request counted in flight finished: it is settled, as the collector will count its
/// event (every event of the budget's scope but the proxy's refusals, which are never counted
/// in flight).
pub fn settle(scope: &str, b: &Budget) -> bool {
    let k = key(scope, b);
    shared::ensure(&k);
    shared::update(&k, |v| {
        let mut l = Local::parse(v);
        l.in_flight = l.in_flight.saturating_sub(1);
        l.settled = l.settled.saturating_add(1);
        Some((l.write(), ()))
    })
    .is_some()
}

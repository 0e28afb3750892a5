//! This Envoy's budget counts in shared data (see `crate::budgets`): every VM of the Envoy
//! reserves and settles against the same count, so the share the collector leased is the
//! Envoy's, not each worker's.
//!
//! ```text
//! tally.budget.<scope>.<org>.<name>@<period start> = spent-nano SP reserved-nano
//! ```

use super::shared;
use crate::budgets::{to_nano, Local};
use crate::rules::{Budget, Ledger};

fn key(scope: &str, b: &Budget) -> String {
    format!("tally.budget.{scope}.{}.{}", b.org, b.ledger_key)
}

/// The decision's view: each budget's local count read once per decision.
pub struct Shares<'a> {
    pub scope: &'a str,
}

impl Ledger for Shares<'_> {
    fn acting(&mut self, _i: usize, b: &Budget) -> bool {
        if b.exceeded {
            return true;
        }
        let local = shared::get(&key(self.scope, b))
            .map(|v| Local::parse(&v))
            .unwrap_or_default();
        local.over(b)
    }
}

/// Reserve a request's estimate against a budget; the nano-dollars reserved (0 if the count
/// could not be written: the request is then only counted when it settles).
pub fn reserve(scope: &str, b: &Budget) -> u64 {
    let est = to_nano(b.estimate_usd);
    let k = key(scope, b);
    shared::ensure(&k);
    shared::update(&k, |v| {
        let mut l = Local::parse(v);
        l.reserved = l.reserved.saturating_add(est);
        Some((l.write(), est))
    })
    .unwrap_or(0)
}

/// A finished request: its reservation goes, its cost stays.
pub fn settle(scope: &str, b: &Budget, reserved: u64, cost_usd: f64) -> bool {
    let k = key(scope, b);
    shared::ensure(&k);
    shared::update(&k, |v| {
        let mut l = Local::parse(v);
        l.reserved = l.reserved.saturating_sub(reserved);
        l.spent = l.spent.saturating_add(to_nano(cost_usd));
        Some((l.write(), ()))
    })
    .is_some()
}

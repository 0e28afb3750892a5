//! This Envoy's budget counts in shared data (see `crate::budgets`): every VM of the Envoy
//! reserves and settles against the same count, so the share the collector leased is the
//! Envoy's, not each worker's.
//!
//! ```text
//! tally.budget.<scope>.<org>.<name>@<epoch>@<period start> = settled SP in-flight SP dropped-base
//! tally.budget.<scope>.dropped                             = events this Envoy dropped
//! ```

use super::{shared, Host};
use crate::budgets::Local;
use crate::rules::{Budget, Ledger};

fn key(scope: &str, b: &Budget) -> String {
    format!("tally.budget.{scope}.{}.{}", b.org, b.ledger_key)
}

fn dropped_key(scope: &str) -> String {
    format!("tally.budget.{scope}.dropped")
}

/// Events this Envoy dropped (every VM adds its own).
pub fn dropped<H: Host>(scope: &str) -> u64 {
    shared::get::<H>(&dropped_key(scope))
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Add a VM's newly dropped events to the Envoy's count.
pub fn add_dropped<H: Host>(scope: &str, n: u64) {
    if n == 0 {
        return;
    }
    let k = dropped_key(scope);
    shared::ensure::<H>(&k);
    shared::update::<H, _>(&k, |v| {
        let now: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some((now.saturating_add(n).to_string().into_bytes(), ()))
    });
}

/// The decision's view of the budgets. The clock and the Envoy's count of dropped events are
/// read on the first budget that needs them, once per decision: a request no budget matches
/// costs no host call (the body callbacks build one for every chunk).
pub struct Shares<'a, H> {
    scope: &'a str,
    now_ms: Option<u64>,
    dropped: Option<u64>,
    host: std::marker::PhantomData<H>,
}

impl<'a, H: Host> Shares<'a, H> {
    pub fn new(scope: &'a str) -> Self {
        Shares {
            scope,
            now_ms: None,
            dropped: None,
            host: std::marker::PhantomData,
        }
    }
}

impl<H: Host> Ledger for Shares<'_, H> {
    fn acting(&mut self, _i: usize, b: &Budget) -> bool {
        let now = *self.now_ms.get_or_insert_with(|| H::now_ms() as u64);
        if now >= b.period_end_ms {
            // A period the last state was about is over (the collector has not been reached
            // since): a new one starts with nothing spent.
            return false;
        }
        if b.exceeded {
            return true;
        }
        let local = shared::get::<H>(&key(self.scope, b))
            .map(|v| Local::parse(&v))
            .unwrap_or_default();
        let scope = self.scope;
        local.over(b, *self.dropped.get_or_insert_with(|| dropped::<H>(scope)))
    }
}

/// Whether any enforcing budget of `set` has half its share spoken for in this Envoy.
pub fn near_any<H: Host>(scope: &str, set: &crate::budgets::BudgetSet) -> bool {
    let dropped = dropped::<H>(scope);
    set.by_org.values().flat_map(|b| b.iter()).any(|b| {
        !b.exceeded
            && shared::get::<H>(&key(scope, b))
                .map(|v| Local::parse(&v))
                .unwrap_or_default()
                .near(b, dropped)
    })
}

/// Count a request in flight against a budget; false if the count could not be written (the
/// request is then not counted when it finishes either).
pub fn reserve<H: Host>(scope: &str, b: &Budget) -> bool {
    let k = key(scope, b);
    shared::ensure::<H>(&k);
    let base = dropped::<H>(scope);
    shared::update::<H, _>(&k, |v| {
        let mut l = Local::parse(v);
        if v.is_empty() {
            // A new count: drops before it are not its concern.
            l.dropped_base = base;
        }
        l.in_flight = l.in_flight.saturating_add(1);
        Some((l.write(), ()))
    })
    .is_some()
}

/// A request counted in flight finished: it is settled, as the collector will count its
/// event (every event of the budget's scope but the proxy's refusals, which are never counted
/// in flight).
pub fn settle<H: Host>(scope: &str, b: &Budget) -> bool {
    let k = key(scope, b);
    shared::ensure::<H>(&k);
    shared::update::<H, _>(&k, |v| {
        let mut l = Local::parse(v);
        l.in_flight = l.in_flight.saturating_sub(1);
        l.settled = l.settled.saturating_add(1);
        Some((l.write(), ()))
    })
    .is_some()
}

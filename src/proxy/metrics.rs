//! The filter's Envoy counters and gauges (Envoy shows them with its prefix for the host:
//! `wasmcustom.` for proxy-wasm, `dynamicmodulescustom.` for a native module).

use super::Host;

#[derive(Default, Clone, Copy)]
pub struct Metrics {
    pub requests_metered: Option<u32>,
    pub events_queued: Option<u32>,
    pub events_sent: Option<u32>,
    pub events_retried: Option<u32>,
    pub events_dropped: Option<u32>,
    pub batches_failed: Option<u32>,
    pub filter_errors: Option<u32>,
    /// Events a stopping VM handed over, and events a running VM took over (`handoff`).
    pub events_handed_over: Option<u32>,
    pub events_adopted: Option<u32>,
    /// Events sent without an output count because their vocabulary could not be fetched in
    /// time (`vocabs`).
    pub events_uncounted: Option<u32>,
    /// Requests refused for their org key (401), requests passed unmetered for want of an org,
    /// and failed polls of the collector's key set.
    pub requests_refused_key: Option<u32>,
    pub requests_unattributed: Option<u32>,
    pub controls_failed: Option<u32>,
    /// Rules and budgets: requests refused by a rule (403) or a budget (429), requests whose
    /// model was rewritten, rewrites skipped (a SigV4-signed body, or a model in the path), and
    /// model rules passed over because the model came after the hold's cap.
    pub requests_refused_rule: Option<u32>,
    pub requests_refused_budget: Option<u32>,
    pub requests_rewritten: Option<u32>,
    pub rewrites_skipped: Option<u32>,
    pub rules_over_cap: Option<u32>,
    /// Gauges summed over the VMs of the plugin (each VM adds its own share): how many VMs run,
    /// their linear memory (so that memory per VM is read from Envoy's stats), and the events
    /// not yet accepted by the collector.
    pub vms: Option<u32>,
    pub vm_memory_bytes: Option<u32>,
    pub events_waiting: Option<u32>,
}

impl Metrics {
    pub fn define<H: Host>() -> Metrics {
        let c = |name: &str| H::define_counter(name);
        let g = |name: &str| H::define_gauge(name);
        Metrics {
            requests_metered: c("tally.requests_metered"),
            events_queued: c("tally.events_queued"),
            events_sent: c("tally.events_sent"),
            events_retried: c("tally.events_retried"),
            events_dropped: c("tally.events_dropped"),
            batches_failed: c("tally.batches_failed"),
            filter_errors: c("tally.filter_errors"),
            events_handed_over: c("tally.events_handed_over"),
            events_adopted: c("tally.events_adopted"),
            events_uncounted: c("tally.events_uncounted"),
            requests_refused_key: c("tally.requests_refused_key"),
            requests_unattributed: c("tally.requests_unattributed"),
            controls_failed: c("tally.controls_failed"),
            requests_refused_rule: c("tally.requests_refused_rule"),
            requests_refused_budget: c("tally.requests_refused_budget"),
            requests_rewritten: c("tally.requests_rewritten"),
            rewrites_skipped: c("tally.rewrites_skipped"),
            rules_over_cap: c("tally.rules_over_cap"),
            vms: g("tally.vms"),
            vm_memory_bytes: g("tally.vm_memory_bytes"),
            events_waiting: g("tally.events_waiting"),
        }
    }
}

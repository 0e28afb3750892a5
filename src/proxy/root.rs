//! One per VM: configuration, the outbox and the batch calls to the collector. (Prices are
//! the collector's: the filter reports what the bill depends on, and carries no price table.)

use super::controls::{Controls, Update};
use super::handover;
use super::http::Req;
use super::vocabs::{into_outbox, Fetch, Held, FETCH_TIMEOUT_MS};
use super::{Buf, Cell, Host, Level, Map, Metrics, Ref};
use crate::budgets::BudgetSet;
use crate::config::{Config, Env};
use crate::identity::Identity;
use crate::measure::{Encoding, Tokenizers};
use crate::org_keys::{self, KeyHash, KeySet};
use crate::outbox::{Counters, Outbox, Outcome};
use crate::request_id::IdGen;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// State shared by the root context and every request of this VM (of this filter
/// configuration, natively).
pub struct Shared {
    pub cfg: Config,
    /// Built on the first stream that needs counting, then kept for the VM's life.
    pub tokenizers: Tokenizers,
    /// Events whose output waits for a vocabulary being fetched.
    pub held: Held,
    pub outbox: Outbox,
    pub metrics: Metrics,
    /// Requests metered since the last report to Envoy's counter.
    pub metered: AtomicU64,
    /// The keys requests may carry, from the collector (None until the first answer).
    pub keys: Option<KeySet>,
    /// The SHA-256 of the filter's own org key.
    pub own_key: Option<KeyHash>,
    /// This proxy's own workload (a sidecar), from Istio's node metadata.
    pub node_identity: Option<Arc<Identity>>,
    /// Budgets and rates from the collector (empty until the first answer).
    pub budgets: BudgetSet,
    /// The scope of this filter's shared data (see `crate::handoff::scope`).
    pub scope: String,
    ids: IdGen,
}

impl Shared {
    pub fn next_request_id(&mut self, unix_ms: f64) -> String {
        // `as` saturates: a clock before 1970 gives time 0, not a panic.
        self.ids.next_uuid(unix_ms as u64)
    }
}

/// One per VM under proxy-wasm (on its worker), one per filter configuration natively (on the
/// main thread): the configuration, the outbox's batches, the controls' polls.
pub struct Root<H> {
    shared: Option<Ref<Cell<Shared>>>,
    metrics: Metrics,
    /// Counters already reported to Envoy, to add only the difference.
    reported: Counters,
    in_flight: Option<u32>,
    stopping: bool,
    /// This VM's share of the gauges, taken back when it stops.
    counted_vm: bool,
    reported_memory: i64,
    reported_waiting: i64,
    /// This root context's id in hand-over records, and the scope of its records (see
    /// `crate::handoff`).
    writer: u64,
    scope: String,
    /// The outbox generation of the last hand-over record written (None: no record).
    handed_gen: Option<u64>,
    handover_warned: bool,
    /// When to look next for events that a stopped VM left behind.
    next_adoption_ms: u64,
    controls: Controls,
    /// Dropped events the collector was told of (its last accepted batch), and the count the
    /// batch in flight tells.
    dropped_told: u64,
    dropped_sending: u64,
    /// The fetch of a vocabulary held events wait for, and the count of events that went
    /// uncounted already reported.
    vocab: Fetch,
    reported_uncounted: u64,
    host: PhantomData<H>,
}

/// How often a running VM looks for events left by a VM that stopped.
const ADOPT_EVERY_MS: u64 = 500;

impl<H: Host> Default for Root<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Host> Root<H> {
    pub fn new() -> Self {
        Root {
            shared: None,
            metrics: Metrics::default(),
            reported: Counters::default(),
            in_flight: None,
            stopping: false,
            counted_vm: false,
            reported_memory: 0,
            reported_waiting: 0,
            writer: 0,
            scope: String::new(),
            handed_gen: None,
            handover_warned: false,
            next_adoption_ms: 0,
            controls: Controls::default(),
            dropped_told: 0,
            dropped_sending: 0,
            vocab: Fetch::default(),
            reported_uncounted: 0,
            host: PhantomData,
        }
    }

    /// Stopping: keep this root context's hand-over record equal to what it still has to
    /// send, since Envoy may tear the VM down before its calls are answered (a new module by
    /// ECDS does).
    fn hand_over(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        self.release_held();
        let Some(s) = shared.read() else {
            return;
        };
        let (waiting, generation) = (s.outbox.len(), s.outbox.generation());
        if self.handed_gen == Some(generation) || (waiting == 0 && self.handed_gen.is_none()) {
            return;
        }
        let lines = s.outbox.export();
        drop(s);
        let now = H::now_ms() as u64;
        if handover::publish::<H>(&self.scope, self.writer, &lines, waiting as u64, now) {
            if self.handed_gen.is_none() {
                // What the VM still held when it stopped.
                H::count(self.metrics.events_handed_over, waiting as u64);
            }
            self.handed_gen = (waiting > 0).then_some(generation);
        } else if !self.handover_warned {
            self.handover_warned = true;
            H::count(self.metrics.filter_errors, 1);
            H::log(
                Level::Warn,
                &format!("stopping with {waiting} events waiting; they could not be handed over to the other VMs (shared data refused them)"),
            );
        }
    }

    /// Running: take over the events of VMs that stopped and were torn down before sending
    /// them (their records outlived the grace period), as many as the queue has room for.
    fn adopt_abandoned(&mut self, now: u64) {
        if now < self.next_adoption_ms {
            return;
        }
        self.next_adoption_ms = now + ADOPT_EVERY_MS;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        let grace = s.cfg.call_timeout_ms.saturating_mul(2).max(1000);
        let records =
            handover::take_abandoned::<H>(&self.scope, now, grace, s.outbox.room() as u64);
        if records.is_empty() {
            return;
        }
        let taken: usize = records
            .iter()
            .map(|(lines, written)| s.outbox.adopt(lines, *written))
            .sum();
        drop(s);
        H::count(self.metrics.events_adopted, taken as u64);
        H::log(
            Level::Info,
            &format!(
                "took over {taken} events from {} records of VMs that stopped before sending them",
                records.len()
            ),
        );
    }

    /// Use a newer key set if the Envoy has one, and poll the collector when due, if this VM
    /// holds the poller's lease.
    fn sync_controls(&mut self, now: u64) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        // Every filter polls: budgets apply to all of them, and key sets to most.
        match self.controls.newer::<H>(&self.scope) {
            Some(Ok(Update::Keys(keys, budgets))) => {
                s.budgets = budgets;
                if s.keys.is_none() {
                    H::log(
                        Level::Info,
                        &format!("org keys: {} accepted, from the collector", keys.len()),
                    );
                }
                s.keys = Some(keys);
            }
            Some(Ok(Update::Refused)) if s.keys.take().is_some() => {
                s.budgets = BudgetSet::default();
                H::log(
                    Level::Warn,
                    "org keys: the collector refused this filter's credential; no key set \
                     until it accepts it again (key_set_missing decides meanwhile)",
                );
            }
            Some(Ok(Update::Refused)) => {}
            Some(Err(e)) => {
                H::count(self.metrics.filter_errors, 1);
                H::log(
                    Level::Warn,
                    &format!("org keys: {e}; the last key set stays"),
                );
            }
            None => {}
        }
        if self.controls.in_flight.is_some() {
            return;
        }
        let (refresh, timeout) = (s.cfg.controls_refresh_ms, s.cfg.call_timeout_ms);
        // Near a budget's share, poll sooner (every eighth of the interval, at least 100 ms
        // apart): a share computed from an older remainder is what lets spend pass a limit.
        let soon = self.controls.last_poll_ms + (refresh / 8).max(100);
        let due = now >= self.controls.next_poll_ms
            || (now >= soon
                && !s.budgets.by_org.is_empty()
                && super::ledger::near_any::<H>(&self.scope, &s.budgets));
        if !due {
            return;
        }
        self.controls.next_poll_ms = now + refresh;
        self.controls.last_poll_ms = now;
        // Long enough to poll again before it runs out, short enough that another VM takes
        // over quickly if this one stops.
        let lease = now + refresh + timeout.min(1000);
        if !self
            .controls
            .lead::<H>(&self.scope, self.writer, now, lease)
        {
            return;
        }
        let auth = format!("Bearer {}", s.cfg.bearer());
        let etag = Controls::etag::<H>(&self.scope);
        let filter = Controls::filter_id::<H>(&self.scope, self.writer);
        let refresh_ms = refresh.to_string();
        let mut headers = vec![
            (":method", "GET"),
            (":path", "/v1/controls"),
            (":authority", s.cfg.collector_authority.as_str()),
            ("authorization", auth.as_str()),
            ("x-tally-filter", filter.as_str()),
            ("x-tally-refresh-ms", refresh_ms.as_str()),
        ];
        // Only with a key set in hand: a VM that has none needs the whole body.
        if !etag.is_empty() && s.keys.is_some() {
            headers.push(("if-none-match", etag.as_str()));
        }
        match H::dispatch(
            &s.cfg.collector_cluster,
            &headers,
            None,
            Duration::from_millis(timeout),
        ) {
            Ok(token) => self.controls.in_flight = Some(token),
            Err(why) => self.controls_failed(&format!("the call could not be made: {why}")),
        }
    }

    /// Queue every event held for a vocabulary, counted where it can be (a VM that stops
    /// cannot wait for the fetch).
    fn release_held(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        let s = &mut *s;
        if s.held.is_empty() {
            return;
        }
        let now = H::now_ms() as u64;
        s.held
            .release_all(&mut s.tokenizers, into_outbox(&mut s.outbox, now));
        // Reported now: no tick may come after a stop.
        self.report_uncounted(s.held.uncounted);
    }

    /// Add the events that went without an output count since the last report to Envoy's counter.
    fn report_uncounted(&mut self, uncounted: u64) {
        H::count(
            self.metrics.events_uncounted,
            uncounted - self.reported_uncounted,
        );
        self.reported_uncounted = uncounted;
    }

    /// Fetch the vocabulary that held events wait for, and queue those that may go.
    fn fetch_vocab(&mut self, now: u64) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        let s = &mut *s;
        if s.held.is_empty() {
            return;
        }
        s.held.release(
            now,
            &mut s.tokenizers,
            None,
            into_outbox(&mut s.outbox, now),
        );
        let Some(enc) = s.held.wanted() else {
            return;
        };
        if !self.vocab.due(now) {
            return;
        }
        let path = format!("/v1/vocab/{}", enc.name());
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", s.cfg.collector_authority.as_str()),
        ];
        let timeout = s.cfg.call_timeout_ms.max(FETCH_TIMEOUT_MS);
        let waiting = s.held.len();
        match H::dispatch(
            &s.cfg.collector_cluster,
            &headers,
            None,
            Duration::from_millis(timeout),
        ) {
            Ok(token) => self.vocab.in_flight = Some((token, enc)),
            Err(why) => {
                self.vocab.failed(now);
                self.vocab_failed(enc, &format!("the call could not be made: {why}"), waiting);
            }
        }
    }

    fn vocab_answered(&mut self, enc: Encoding, body_size: usize) {
        let now = H::now_ms() as u64;
        let status = H::header(Map::CallResponseHeaders, ":status");
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        let s = &mut *s;
        let got = match status.as_deref() {
            Some("200") => H::with_body(Buf::CallResponseBody, body_size, |b| {
                s.tokenizers.provide(enc, b)
            })
            .unwrap_or_else(|| Err("the answer had no body".into())),
            other => Err(format!(
                "the collector answered {}",
                other.unwrap_or("nothing")
            )),
        };
        // A collector that does not serve it (one older than this filter): nothing to wait for.
        let give_up = (got.is_err() && status.as_deref() == Some("404")).then_some(enc);
        match got {
            Ok(()) => self.vocab.succeeded(),
            Err(_) => self.vocab.failed(now),
        }
        s.held.release(
            now,
            &mut s.tokenizers,
            give_up,
            into_outbox(&mut s.outbox, now),
        );
        let waiting = s.held.len();
        if let Err(why) = got {
            self.vocab_failed(enc, &why, waiting);
        }
        self.flush();
    }

    fn vocab_failed(&mut self, enc: Encoding, why: &str, waiting: usize) {
        H::log(
            Level::Warn,
            &format!(
                "vocabulary {}: cannot fetch it from the collector ({why}); {waiting} events wait for it, and go without an output count after {} s",
                enc.name(),
                super::vocabs::MAX_HOLD_MS / 1000
            ),
        );
    }

    fn controls_answered(&mut self, body_size: usize) {
        let status = H::header(Map::CallResponseHeaders, ":status");
        match status.as_deref() {
            Some("200") => {
                let body = H::with_body(Buf::CallResponseBody, body_size, <[u8]>::to_vec)
                    .unwrap_or_default();
                let etag = H::header(Map::CallResponseHeaders, "etag").unwrap_or_default();
                // Checked before it is shared: a bad answer never replaces a good key set.
                if let Err(e) = KeySet::parse(&body).and_then(|_| BudgetSet::parse(&body)) {
                    return self.controls_failed(&e);
                }
                if !Controls::store::<H>(&self.scope, &body, &etag) {
                    return self.controls_failed("shared data refused the key set");
                }
                self.controls.failures = 0;
                self.sync_controls(H::now_ms() as u64);
            }
            Some("304") => self.controls.failures = 0,
            Some("401" | "403") => {
                // Refused for good, not an outage: the keys it gave may be stale by now.
                H::count(self.metrics.controls_failed, 1);
                H::log(
                    Level::Warn,
                    "org keys: the collector refused the filter's credential for /v1/controls (a revoked mesh token, or a rotated or disabled org key)",
                );
                if Controls::store::<H>(&self.scope, b"", "") {
                    self.sync_controls(H::now_ms() as u64);
                }
            }
            other => self.controls_failed(&format!(
                "the collector answered {}",
                other.unwrap_or("nothing")
            )),
        }
    }

    fn controls_failed(&mut self, why: &str) {
        H::count(self.metrics.controls_failed, 1);
        self.controls.failures += 1;
        if self.controls.failures == 1 {
            H::log(
                Level::Warn,
                &format!("controls: polling /v1/controls failed ({why}); the last key set and budget state stay"),
            );
        }
    }

    /// Bring this VM's share of the gauges up to date (a host call only for one that moved).
    fn report_gauges(&mut self, waiting: usize) {
        let memory = H::memory_bytes();
        H::shift(self.metrics.vm_memory_bytes, memory - self.reported_memory);
        self.reported_memory = memory;
        let waiting = i64::try_from(waiting).unwrap_or(i64::MAX);
        H::shift(self.metrics.events_waiting, waiting - self.reported_waiting);
        self.reported_waiting = waiting;
    }

    /// Take a configuration (the filter's JSON): the tick period the host is to call
    /// [`Root::on_tick`] at, or why the configuration is refused.
    pub fn configure(&mut self, json: &[u8]) -> Result<Duration, String> {
        let env = Env {
            org_key: std::env::var("TALLY_ORG_KEY").ok(),
            collector_token: std::env::var("TALLY_COLLECTOR_TOKEN").ok(),
        };
        let cfg = Config::parse_env(json, env)?;
        let node_identity = if cfg.identity.node {
            // `xds.node` since Envoy moved its xDS attributes there; `node` before.
            Identity::from_node(
                |k| {
                    H::property_text(&["xds", "node", "metadata", k])
                        .or_else(|| H::property_text(&["node", "metadata", k]))
                },
                |l| {
                    H::property_text(&["xds", "node", "metadata", "LABELS", l])
                        .or_else(|| H::property_text(&["node", "metadata", "LABELS", l]))
                },
                &cfg.identity.trust_domain,
                &cfg.identity.labels(),
            )
        } else {
            None
        };
        if let Some(id) = &node_identity {
            H::log(
                Level::Info,
                &format!(
                    "mesh identity from node metadata: namespace {}, workload {}, principal {}",
                    id.namespace.as_deref().unwrap_or("-"),
                    id.workload.as_deref().unwrap_or("-"),
                    id.principal.as_deref().unwrap_or("-")
                ),
            );
        }
        let tick = (cfg.flush_interval_ms / 2).clamp(20, 50);
        self.metrics = Metrics::define::<H>();
        // A new configuration of this root context starts its controls afresh: its key set and
        // writer id are new (the old writer's lease, if any, is given up first).
        if self.writer != 0 {
            Controls::release::<H>(&self.scope, self.writer);
        }
        self.controls = Controls::default();
        self.writer = seeded_ids::<H>().next_u64() | 1;
        self.scope = crate::handoff::scope(cfg.bearer(), &cfg.collector_cluster);
        handover::init::<H>(&self.scope);
        Controls::init::<H>(&self.scope);
        if !self.counted_vm {
            H::shift(self.metrics.vms, 1);
            self.counted_vm = true;
        }
        let own_key = cfg.org_key.as_ref().map(|k| org_keys::hash(k.expose()));
        self.shared = Some(Ref::new(Cell::new(Shared {
            outbox: Outbox::new(
                cfg.batch_max_events,
                cfg.queue_max_events,
                cfg.flush_interval_ms,
            )
            .with_max_age(cfg.max_event_age_ms),
            cfg,
            tokenizers: Tokenizers::default(),
            held: Held::default(),
            metrics: self.metrics,
            metered: AtomicU64::new(0),
            keys: None,
            own_key,
            node_identity: node_identity.map(Arc::new),
            budgets: BudgetSet::default(),
            scope: self.scope.clone(),
            ids: seeded_ids::<H>(),
        })));
        self.report_gauges(0);
        Ok(Duration::from_millis(tick))
    }

    /// Send the next batch if one is due and none is in flight.
    fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            return;
        };
        let now = H::now_ms() as u64;
        if self.stopping {
            s.outbox.flush_now();
        }
        let Some((body, _n)) = s.outbox.take_batch(now) else {
            return;
        };
        let auth = format!("Bearer {}", s.cfg.bearer());
        let filter = Controls::filter_id::<H>(&self.scope, self.writer);
        let c = s.outbox.counters;
        let dropped = c.dropped_full + c.dropped_rejected + c.dropped_expired;
        // Events dropped since the collector last accepted a batch, for its alert.
        let untold = dropped.saturating_sub(self.dropped_told).to_string();
        self.dropped_sending = dropped;
        let mut headers = vec![
            (":method", "POST"),
            (":path", "/v1/events"),
            (":authority", s.cfg.collector_authority.as_str()),
            ("content-type", "application/x-ndjson"),
            ("authorization", auth.as_str()),
            ("x-tally-filter", filter.as_str()),
        ];
        if untold != "0" {
            headers.push(("x-tally-dropped", untold.as_str()));
        }
        match H::dispatch(
            &s.cfg.collector_cluster,
            &headers,
            Some(&body),
            Duration::from_millis(s.cfg.call_timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(why) => {
                s.outbox.abandon(now);
                H::count(self.metrics.batches_failed, 1);
                H::log(
                    Level::Warn,
                    &format!(
                        "cannot call cluster {:?} ({why}); events kept for retry",
                        s.cfg.collector_cluster
                    ),
                );
            }
        }
        let c = s.outbox.counters;
        drop(s);
        self.report(c);
    }

    fn report(&mut self, c: Counters) {
        let r = self.reported;
        let m = self.metrics;
        H::count(m.events_queued, c.queued - r.queued);
        H::count(m.events_sent, c.sent - r.sent);
        H::count(m.events_retried, c.retried - r.retried);
        let dropped = (c.dropped_full + c.dropped_rejected + c.dropped_expired)
            - (r.dropped_full + r.dropped_rejected + r.dropped_expired);
        H::count(m.events_dropped, dropped);
        // Budgets do not wait for the collector to count what will never reach it.
        super::ledger::add_dropped::<H>(&self.scope, dropped);
        self.reported = c;
    }
}

impl<H: Host> Root<H> {
    /// The host is stopping this root context: true when it may go at once, false when it is
    /// to wait for the last batch's answer ([`Root::on_call_response`] says when).
    pub fn on_done(&mut self) -> bool {
        self.stopping = true;
        if self.writer != 0 {
            // Another VM of the Envoy polls the key set at once.
            Controls::release::<H>(&self.scope, self.writer);
        }
        if self.counted_vm {
            H::shift(self.metrics.vms, -1);
            H::shift(self.metrics.vm_memory_bytes, -self.reported_memory);
            H::shift(self.metrics.events_waiting, -self.reported_waiting);
            self.counted_vm = false;
            (self.reported_memory, self.reported_waiting) = (0, 0);
        }
        // Held events join the outbox first, or a VM with only those would stop without them.
        self.release_held();
        let pending = self
            .shared
            .as_ref()
            .and_then(|s| s.read().map(|s| !s.outbox.is_empty()))
            .unwrap_or(false);
        if !pending {
            return true;
        }
        self.hand_over();
        self.flush();
        // Done once the last batch is answered (see on_http_call_response).
        self.in_flight.is_none()
    }

    /// A call's answer (its headers and body are [`Map::CallResponseHeaders`] and
    /// [`Buf::CallResponseBody`] for the host). True when a stopping root context is done.
    pub fn on_call_response(&mut self, token: u32, body_size: usize) -> bool {
        if let Some((t, enc)) = self.vocab.in_flight {
            if t == token {
                self.vocab.in_flight = None;
                self.vocab_answered(enc, body_size);
                return false;
            }
        }
        if self.controls.in_flight == Some(token) {
            self.controls.in_flight = None;
            self.controls_answered(body_size);
            return false;
        }
        if self.in_flight != Some(token) {
            return false;
        }
        self.in_flight = None;
        // No `:status` means the call failed (timeout, connection refused).
        let status =
            H::header(Map::CallResponseHeaders, ":status").and_then(|s| s.parse::<u16>().ok());
        let outcome = Outcome::from_status(status);
        if outcome == Outcome::Accepted {
            self.dropped_told = self.dropped_sending;
        } else {
            H::count(self.metrics.batches_failed, 1);
            H::log(
                Level::Warn,
                &format!(
                    "collector answered {} to a batch; {}",
                    status.map_or_else(|| "nothing".to_string(), |s| s.to_string()),
                    if outcome == Outcome::Rejected {
                        "batch dropped"
                    } else {
                        "will retry"
                    }
                ),
            );
        }
        if let Some(shared) = self.shared.clone() {
            if let Some(mut s) = shared.write() {
                s.outbox.complete(outcome, H::now_ms() as u64);
                let c = s.outbox.counters;
                let empty = s.outbox.is_empty();
                drop(s);
                self.report(c);
                if self.stopping {
                    // The record follows what is left: what was sent is not sent again.
                    self.hand_over();
                    if empty || outcome != Outcome::Accepted {
                        // What could not be sent now stays in the record, for a VM that goes
                        // on; this one cannot wait.
                        return true;
                    }
                }
            }
        }
        // More may be due already (a full queue behind this batch).
        self.flush();
        false
    }
}

impl<H: Host> Root<H> {
    pub fn on_tick(&mut self) {
        if self.stopping {
            // Requests that were still running add their events.
            self.hand_over();
        } else {
            let now = H::now_ms() as u64;
            self.adopt_abandoned(now);
            self.sync_controls(now);
            self.fetch_vocab(now);
        }
        self.flush();
        let (mut waiting, mut uncounted) = (0, self.reported_uncounted);
        if let Some(s) = self.shared.as_ref().and_then(|s| s.read()) {
            H::count(
                self.metrics.requests_metered,
                s.metered.swap(0, std::sync::atomic::Ordering::Relaxed),
            );
            waiting = s.outbox.len();
            uncounted = s.held.uncounted;
        }
        self.report_uncounted(uncounted);
        if self.counted_vm {
            self.report_gauges(waiting);
        }
    }

    /// A request's context, sharing this root context's state.
    pub fn new_request(&self) -> Req<H> {
        Req::new(self.shared.clone())
    }

    /// The state its requests share (None until configured), for a host whose requests are
    /// made on other threads than the root context's.
    pub fn shared(&self) -> Option<Ref<Cell<Shared>>> {
        self.shared.clone()
    }
}

/// A generator seeded by the host's entropy (time, when there is none).
fn seeded_ids<H: Host>() -> IdGen {
    // Without entropy, time still separates VMs well enough for ids.
    IdGen::new(H::random_u64().unwrap_or_else(|| H::now_ms() as u64))
}

//! One per VM: configuration, prices, the outbox and the batch calls to the collector.

use super::handover;
use super::host::{self, Metrics};
use super::http::Req;
use crate::config::Config;
use crate::measure::Tokenizers;
use crate::outbox::{Counters, Outbox, Outcome};
use crate::pricing::PriceTable;
use crate::request_id::IdGen;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// State shared by the root context and every request of this VM.
pub struct Shared {
    pub cfg: Config,
    pub prices: PriceTable,
    /// Built on the first stream that needs counting, then kept for the VM's life.
    pub tokenizers: Tokenizers,
    pub outbox: Outbox,
    pub metrics: Metrics,
    /// Requests metered since the last report to Envoy's counter.
    pub metered: std::cell::Cell<u64>,
    ids: IdGen,
}

impl Shared {
    pub fn next_request_id(&mut self, unix_ms: f64) -> String {
        // `as` saturates: a clock before 1970 gives time 0, not a panic.
        self.ids.next_uuid(unix_ms as u64)
    }
}

pub struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    metrics: Metrics,
    /// Counters already reported to Envoy, to add only the difference.
    reported: Counters,
    in_flight: Option<u32>,
    stopping: bool,
    /// This VM's share of the gauges, taken back when it stops.
    counted_vm: bool,
    reported_memory: i64,
    reported_waiting: i64,
    /// Events in this VM's hand-over record, once stopping (see `crate::handoff`).
    handed_over: Option<usize>,
    /// When to look next for events that a stopped VM left behind.
    next_adoption_ms: u64,
}

/// How often a running VM looks for events left by a VM that stopped.
const ADOPT_EVERY_MS: u64 = 500;

impl Root {
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
            handed_over: None,
            next_adoption_ms: 0,
        }
    }

    /// Stopping: keep this VM's hand-over record equal to what it still has to send, since
    /// Envoy may tear the VM down before its calls are answered (a new module by ECDS does).
    fn hand_over(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(s) = shared.try_borrow() else {
            return;
        };
        let waiting = s.outbox.len();
        if self.handed_over == Some(waiting) || (waiting == 0 && self.handed_over.is_none()) {
            return;
        }
        let lines = s.outbox.export();
        drop(s);
        if handover::publish(&lines, host::now_ms() as u64) {
            let before = self.handed_over.unwrap_or(0);
            Metrics::add(
                self.metrics.events_handed_over,
                waiting.saturating_sub(before) as u64,
            );
            self.handed_over = (waiting > 0).then_some(waiting);
        } else {
            Metrics::add(self.metrics.filter_errors, 1);
            host::log(
                LogLevel::Warn,
                &format!("stopping with {waiting} events waiting; they could not be handed over to the other VMs (shared data full or refused)"),
            );
        }
    }

    /// Running: take over the events of VMs that stopped and were torn down before sending
    /// them (their records outlived the grace period).
    fn adopt_abandoned(&mut self, now: u64) {
        if now < self.next_adoption_ms {
            return;
        }
        self.next_adoption_ms = now + ADOPT_EVERY_MS;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let grace = s.cfg.call_timeout_ms.saturating_mul(2).max(1000);
        let Some((lines, malformed)) = handover::take_abandoned(now, grace) else {
            return;
        };
        let before = s.outbox.counters.dropped_full;
        let taken = s.outbox.adopt(&lines, now);
        let dropped = s.outbox.counters.dropped_full - before;
        drop(s);
        Metrics::add(self.metrics.events_adopted, taken as u64);
        if malformed > 0 {
            Metrics::add(self.metrics.filter_errors, 1);
        }
        host::log(
            LogLevel::Info,
            &format!(
                "took over {taken} events left by a VM that stopped before sending them{}{}",
                if dropped > 0 {
                    format!("; {dropped} did not fit in the queue")
                } else {
                    String::new()
                },
                if malformed > 0 {
                    format!("; {malformed} malformed bytes dropped")
                } else {
                    String::new()
                },
            ),
        );
    }

    /// Bring this VM's share of the gauges up to date (a host call only for one that moved).
    fn report_gauges(&mut self, waiting: usize) {
        let memory = host::memory_bytes();
        Metrics::shift(self.metrics.vm_memory_bytes, memory - self.reported_memory);
        self.reported_memory = memory;
        let waiting = i64::try_from(waiting).unwrap_or(i64::MAX);
        Metrics::shift(self.metrics.events_waiting, waiting - self.reported_waiting);
        self.reported_waiting = waiting;
    }

    fn configure(&mut self, size: usize) -> Result<(), String> {
        let json = host::body(BufferType::PluginConfiguration, size).unwrap_or_default();
        let env_key = std::env::var("TALLY_ORG_KEY").ok();
        let cfg = Config::parse(&json, env_key)?;
        let prices = PriceTable::builtin()?;
        let tick = (cfg.flush_interval_ms / 2).clamp(20, 50);
        hostcalls::set_tick_period(Duration::from_millis(tick))
            .map_err(|s| format!("cannot set the flush timer: {s:?}"))?;
        self.metrics = Metrics::define();
        if !self.counted_vm {
            Metrics::shift(self.metrics.vms, 1);
            self.counted_vm = true;
        }
        self.shared = Some(Rc::new(RefCell::new(Shared {
            outbox: Outbox::new(
                cfg.batch_max_events,
                cfg.queue_max_events,
                cfg.flush_interval_ms,
            )
            .with_max_age(cfg.max_event_age_ms),
            cfg,
            prices,
            tokenizers: Tokenizers::default(),
            metrics: self.metrics,
            metered: std::cell::Cell::new(0),
            ids: seeded_ids(),
        })));
        Ok(())
    }

    /// Send the next batch if one is due and none is in flight.
    fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let now = host::now_ms() as u64;
        if self.stopping {
            s.outbox.flush_now();
        }
        let Some((body, _n)) = s.outbox.take_batch(now) else {
            return;
        };
        let auth = format!("Bearer {}", s.cfg.org_key);
        let headers = vec![
            (":method", "POST"),
            (":path", "/v1/events"),
            (":authority", s.cfg.collector_authority.as_str()),
            ("content-type", "application/x-ndjson"),
            ("authorization", auth.as_str()),
        ];
        match hostcalls::dispatch_http_call(
            &s.cfg.collector_cluster,
            headers,
            Some(&body),
            vec![],
            Duration::from_millis(s.cfg.call_timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                s.outbox.abandon(now);
                Metrics::add(self.metrics.batches_failed, 1);
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "cannot call cluster {:?} ({status:?}); events kept for retry",
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
        Metrics::add(m.events_queued, c.queued - r.queued);
        Metrics::add(m.events_sent, c.sent - r.sent);
        Metrics::add(m.events_retried, c.retried - r.retried);
        Metrics::add(
            m.events_dropped,
            (c.dropped_full + c.dropped_rejected + c.dropped_expired)
                - (r.dropped_full + r.dropped_rejected + r.dropped_expired),
        );
        self.reported = c;
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.stopping = true;
        if self.counted_vm {
            Metrics::shift(self.metrics.vms, -1);
            Metrics::shift(self.metrics.vm_memory_bytes, -self.reported_memory);
            Metrics::shift(self.metrics.events_waiting, -self.reported_waiting);
            self.counted_vm = false;
            (self.reported_memory, self.reported_waiting) = (0, 0);
        }
        let pending = self
            .shared
            .as_ref()
            .and_then(|s| s.try_borrow().ok().map(|s| !s.outbox.is_empty()))
            .unwrap_or(false);
        if !pending {
            return true;
        }
        self.hand_over();
        self.flush();
        // Done once the last batch is answered (see on_http_call_response).
        self.in_flight.is_none()
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        // No `:status` means the call failed (timeout, connection refused).
        let status = host::header(MapType::HttpCallResponseHeaders, ":status")
            .and_then(|s| s.parse::<u16>().ok());
        let outcome = Outcome::from_status(status);
        if outcome != Outcome::Accepted {
            Metrics::add(self.metrics.batches_failed, 1);
            host::log(
                LogLevel::Warn,
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
            if let Ok(mut s) = shared.try_borrow_mut() {
                s.outbox.complete(outcome, host::now_ms() as u64);
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
                        let _ = hostcalls::done();
                        return;
                    }
                }
            }
        }
        // More may be due already (a full queue behind this batch).
        self.flush();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        match self.configure(size) {
            Ok(()) => {
                self.report_gauges(0);
                true
            }
            Err(e) => {
                host::log(LogLevel::Critical, &format!("configuration rejected: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if self.stopping {
            // Requests that were still running add their events.
            self.hand_over();
        } else {
            self.adopt_abandoned(host::now_ms() as u64);
        }
        self.flush();
        let mut waiting = 0;
        if let Some(s) = self.shared.as_ref().and_then(|s| s.try_borrow().ok()) {
            Metrics::add(self.metrics.requests_metered, s.metered.take());
            waiting = s.outbox.len();
        }
        if self.counted_vm {
            self.report_gauges(waiting);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Req::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A generator seeded by the host's entropy (time, when there is none).
fn seeded_ids() -> IdGen {
    let mut seed = [0u8; 8];
    if getrandom::getrandom(&mut seed).is_err() {
        // Without entropy, time still separates VMs well enough for ids.
        seed = (host::now_ms() as u64).to_le_bytes();
    }
    IdGen::new(u64::from_le_bytes(seed))
}

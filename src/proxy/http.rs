//! One per request: hands headers, body chunks and times to its [`Exchange`], then queues the
//! event. Bytes are looked at as they pass; a body is held (in the filter, chunk by chunk
//! replaced by what may go) only while a rule or budget waits for its model, and a request is
//! stopped only to answer a configured refusal.

use super::ledger::{self, Shares};
use super::root::Shared;
use super::{Action, Buf, Cell, Host, Map, Ref};
use crate::config::KeySetMissing;
use crate::exchange::{begin, BodyStep, Exchange, Finish, HeadersStep};
use crate::identity::Identity;
use crate::org_keys::{
    stop_signed_key, unauthorized_body, Decision, Policy, Refusal as KeyRefusal, SignedKeyStop,
};
use crate::rules::{self, Budget, Refusal, Step};
use std::marker::PhantomData;
use std::sync::Arc;

pub struct Req<H> {
    shared: Option<Ref<Cell<Shared>>>,
    exchange: Option<Exchange>,
    /// The budgets of the request's org as its decision saw them (None: none apply).
    budgets: Option<Arc<Vec<Budget>>>,
    /// The budgets (indexes) this request is counted in flight against, once decided.
    reserved: Option<Vec<usize>>,
    host: PhantomData<H>,
}

impl<H: Host> Req<H> {
    pub fn new(shared: Option<Ref<Cell<Shared>>>) -> Self {
        Req {
            shared,
            exchange: None,
            budgets: None,
            reserved: None,
            host: PhantomData,
        }
    }

    /// Answer a refusal by a rule or budget in the provider's format; false if the host could
    /// not (counted as a filter error: the request goes on).
    fn refuse_by(s: &Shared, api: crate::provider::Api, why: &Refusal) -> bool {
        let (status, headers, body) = rules::refusal_response(api, why, H::now_ms() as u64);
        let (counter, details) = match why {
            Refusal::Budget { .. } => (s.metrics.requests_refused_budget, "tally_budget_exceeded"),
            Refusal::Rule(_) | Refusal::OverCap(_) => {
                (s.metrics.requests_refused_rule, "tally_blocked_by_rule")
            }
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if H::send_local_response(u32::from(status), &headers, body.as_bytes(), details) {
            H::count(counter, 1);
            true
        } else {
            H::count(s.metrics.filter_errors, 1);
            false
        }
    }

    /// Once rules and budgets have decided, count the request in flight against each budget
    /// that counts it (once).
    fn reserve(&mut self, s: &Shared) {
        let (Some(ex), Some(budgets)) = (self.exchange.as_ref(), self.budgets.as_ref()) else {
            return;
        };
        if self.reserved.is_some() || ex.waiting() || ex.acted().refused.is_some() {
            return;
        }
        let charged = &ex.acted().charged;
        let mut reserved = Vec::with_capacity(charged.len());
        for &i in charged {
            if budgets
                .get(i)
                .is_some_and(|b| ledger::reserve::<H>(&s.scope, b))
            {
                reserved.push(i);
            }
        }
        self.reserved = Some(reserved);
    }

    /// Answer 401 in the provider's format and stop the request; if the host cannot answer, the
    /// request goes on (counted as a filter error): the filter never breaks traffic itself.
    fn refuse(&self, api: crate::provider::Api, why: KeyRefusal) -> Action {
        let (content_type, body) = unauthorized_body(api, why);
        if H::send_local_response(
            401,
            &[("content-type", content_type)],
            body.as_bytes(),
            "tally_org_key_refused",
        ) {
            Action::Pause
        } else {
            self.error();
            Action::Continue
        }
    }

    fn error(&self) {
        if let Some(s) = &self.shared {
            if let Some(s) = s.read() {
                H::count(s.metrics.filter_errors, 1);
            }
        }
    }
}

impl<H: Host> Req<H> {
    /// Count what rules and budgets did, once the decision is made.
    fn count_acted(&self, s: &Shared, ex: &Exchange) {
        let a = ex.acted();
        if a.model_routed.is_some() {
            H::count(s.metrics.requests_rewritten, 1);
        }
        if a.rewrite_skipped {
            H::count(s.metrics.rewrites_skipped, 1);
        }
        if a.passed_over_cap {
            H::count(s.metrics.rules_over_cap, 1);
        }
    }
}

impl<H: Host> Req<H> {
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(s) = shared.read() else {
            self.error();
            return Action::Continue;
        };
        let begun = H::with_headers(Map::RequestHeaders, |headers| {
            #[cfg(feature = "fault-injection")]
            super::fault::check(headers);
            begin(&s.cfg, headers, H::now_ms())
        });
        let Some(b) = begun else {
            drop(s);
            self.error();
            return Action::Continue;
        };
        if b.signed_key {
            // Neither removable nor fit to send on: refused before it reaches the provider.
            H::count(s.metrics.requests_refused_key, 1);
            let body = br#"{"message":"X-Tally-Key is covered by this request's SigV4 signature: send it unsigned (it is removed before the request goes upstream)"}"#;
            let headers = [
                ("content-type", "application/json"),
                ("x-amzn-errortype", "ValidationException"),
            ];
            drop(s);
            // Filter errors fail open, but the key is a credential and cannot be removed without
            // voiding the signature: if the refusal cannot be sent, the stream is reset (Envoy's
            // fail-closed path); failing that the key is removed anyway (AWS then refuses the
            // request, 403, and never sees the key); failing that too the request is held until
            // Envoy's timeouts end it. Never `Continue` with the key on.
            let stop = stop_signed_key(
                || H::send_local_response(400, &headers, body, "tally_org_key_refused"),
                H::reset_request,
                || {
                    b.signed_key_headers
                        .iter()
                        .all(|name| H::remove_header(Map::RequestHeaders, name))
                },
            );
            if stop != SignedKeyStop::Refused {
                self.error();
            }
            return if stop.forwards() {
                Action::Continue
            } else {
                Action::Pause
            };
        }
        for name in &b.strip {
            if !H::remove_header(Map::RequestHeaders, name) {
                H::count(s.metrics.filter_errors, 1);
            }
        }
        if b.drop_content_length && !H::remove_header(Map::RequestHeaders, "content-length") {
            H::count(s.metrics.filter_errors, 1);
        }
        let policy = Policy {
            org_from_request: s.cfg.org_from_request,
            require_org_key: s.cfg.require_org_key,
            refuse_without_key_set: s.cfg.key_set_missing == KeySetMissing::Refuse,
            token: s.cfg.collector_token.is_some(),
            own_key: s.own_key.as_ref(),
            keys: s.keys.as_ref(),
        };
        let decision = policy.decide(b.key.as_ref());
        let Some(mut ex) = b.exchange else {
            // Not a call Tally meters (`GET /v1/models`, batches, files...): where org keys are
            // required, a provider's other routes need one too, or the key would be a formality.
            let checked = b.provider_host || s.cfg.org_key_every_request;
            if s.cfg.require_org_key && checked {
                if let Decision::Refuse(why) = decision {
                    H::count(s.metrics.requests_refused_key, 1);
                    drop(s);
                    return self.refuse(b.refusal_api, why);
                }
            }
            return Action::Continue;
        };
        // At a gateway the caller is the peer of the mTLS connection; on a sidecar, the node.
        let identity = if s.cfg.identity.peer_certificate {
            H::property_text(&["connection", "uri_san_peer_certificate"])
                .and_then(|uri| Identity::from_spiffe(&uri, &s.cfg.identity.trust_domain))
                .map(Arc::new)
        } else {
            s.node_identity.clone()
        };
        if let Some(id) = identity {
            ex.set_identity(id, &s.cfg.identity.attribution);
        }
        match decision {
            Decision::Meter(org) => {
                let budgets = s.budgets.for_org(org.as_deref()).filter(|b| !b.is_empty());
                ex.set_org(org);
                // Counted here, reported to Envoy on the timer: one host call fewer per request.
                s.metered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !s.cfg.rules.is_empty() || budgets.is_some() {
                    let list: &[Budget] = budgets.as_deref().map_or(&[], Vec::as_slice);
                    let mut shares = Shares::<H>::new(&s.scope);
                    let mut step = rules::decide(
                        &s.cfg.rules,
                        list,
                        &mut shares,
                        &ex.facts(ex.model_at_headers()),
                    );
                    if end_of_stream && matches!(step, Step::Wait { .. }) {
                        // No body: the model will never come.
                        step = rules::decide(
                            &s.cfg.rules,
                            list,
                            &mut shares,
                            &ex.facts(rules::Model::Never),
                        );
                    }
                    let api = ex.api();
                    let outcome = ex.at_headers(step, s.cfg.model_hold_bytes);
                    self.budgets = budgets;
                    self.exchange = Some(ex);
                    match outcome {
                        HeadersStep::Refuse(why) => {
                            if Self::refuse_by(&s, api, &why) {
                                return Action::Pause;
                            }
                            // Not answered: the request goes on, unrefused.
                            if let Some(ex) = self.exchange.as_mut() {
                                ex.refusal_failed();
                            }
                        }
                        HeadersStep::Go {
                            route,
                            body_may_change,
                        } => {
                            if let Some(route) = route {
                                if !H::set_header(Map::RequestHeaders, "x-tally-route", &route) {
                                    H::count(s.metrics.filter_errors, 1);
                                }
                            }
                            if body_may_change
                                && !b.drop_content_length
                                && !H::remove_header(Map::RequestHeaders, "content-length")
                            {
                                H::count(s.metrics.filter_errors, 1);
                            }
                        }
                    }
                    self.reserve(&s);
                } else {
                    self.exchange = Some(ex);
                }
            }
            Decision::Unattributed => H::count(s.metrics.requests_unattributed, 1),
            Decision::Refuse(why) => {
                // A configured decision: the provider never sees the request, and no event is
                // made (it has no org).
                H::count(s.metrics.requests_refused_key, 1);
                drop(s);
                return self.refuse(b.refusal_api, why);
            }
        }
        Action::Continue
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(s) = shared.read() else {
            self.error();
            return Action::Continue;
        };
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let was_waiting = ex.waiting();
        // Borrowed, not an empty list made for each chunk: most requests have no budget.
        let list: &[Budget] = self.budgets.as_deref().map_or(&[], Vec::as_slice);
        let rules = &s.cfg.rules;
        let mut shares = Shares::<H>::new(&s.scope);
        let stepped = H::with_body(Buf::RequestBody, body_size, |chunk| {
            let step = ex.on_request_chunk(chunk, end_of_stream, &mut |facts| {
                rules::decide(rules, list, &mut shares, facts)
            });
            // A refusal that cannot be sent lets the chunk go on whole.
            let kept = matches!(step, BodyStep::Refuse(_)).then(|| chunk.to_vec());
            (step, kept)
        });
        let Some((step, kept)) = stepped else {
            H::count(s.metrics.filter_errors, 1);
            return Action::Continue;
        };
        let action = match step {
            BodyStep::Pass => Action::Continue,
            BodyStep::Replace(edited) => {
                if !H::replace_body(Buf::RequestBody, body_size, &edited) {
                    ex.request_edit_failed();
                    H::count(s.metrics.filter_errors, 1);
                }
                Action::Continue
            }
            BodyStep::Refuse(why) => {
                if Self::refuse_by(&s, ex.api(), &why) {
                    ex.refused_sent();
                    Action::Pause
                } else {
                    // Not answered: the request goes on, with everything held.
                    let all = ex.refusal_failed().or(kept).unwrap_or_default();
                    if !H::replace_body(Buf::RequestBody, body_size, &all) {
                        H::count(s.metrics.filter_errors, 1);
                    }
                    Action::Continue
                }
            }
        };
        if was_waiting {
            self.reserve(&s);
        }
        action
    }

    pub fn on_response_headers(&mut self) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let now = H::now_ms();
        // The whole map in one host call rather than one call per header wanted.
        let read = |ex: &mut Exchange, pairs: &[(&str, std::borrow::Cow<'_, str>)]| {
            let h = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_ref())
            };
            let status = h(":status").and_then(|s| s.parse::<u16>().ok());
            ex.on_response_headers(status, h("content-type"), h("content-encoding"), now);
            if ex.reads_provider_headers() {
                ex.on_provider_headers(&crate::provider::ProviderHeaders {
                    input_tokens: h("x-amzn-bedrock-input-token-count"),
                    output_tokens: h("x-amzn-bedrock-output-token-count"),
                    error_type: h("x-amzn-errortype"),
                });
            }
        };
        if H::with_headers(Map::ResponseHeaders, |pairs| read(ex, pairs)).is_none() {
            read(ex, &[]);
        }
        if ex.rewrites_response() && !H::remove_header(Map::ResponseHeaders, "content-length") {
            self.error();
        }
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let edited = H::with_body(Buf::ResponseBody, body_size, |chunk| {
            ex.on_response_body(chunk, end_of_stream)
        });
        match edited {
            None => self.error(),
            Some(Some(edited)) => {
                if !H::replace_body(Buf::ResponseBody, body_size, &edited) {
                    self.error();
                }
            }
            Some(None) => {}
        }
        Action::Continue
    }

    /// The request is over (Envoy's access-log time): its event goes to the outbox.
    pub fn on_log(&mut self) {
        let Some(ex) = self.exchange.take() else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut s) = shared.write() else {
            self.error();
            return;
        };
        // Envoy's account matters only when the filter did not see the response through.
        let (details, final_status) = if ex.needs_proxy_details() {
            let details = H::property_text(&["response", "code_details"]);
            // `response.code` is an int64 in little-endian; 0 when no response was sent.
            let final_status = H::property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(i64::from_le_bytes)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|&c| c != 0);
            (details, final_status)
        } else {
            (None, None)
        };
        let now = H::now_ms();
        let fin = Finish {
            now_unix_ms: now,
            request_id: s.next_request_id(now),
            code_details: details.as_deref(),
            final_status,
        };
        let s = &mut *s;
        self.count_acted(s, &ex);
        let (event, uncounted) = ex.finish(fin, &mut s.tokenizers);
        if let (Some(reserved), Some(budgets)) = (self.reserved.take(), self.budgets.as_ref()) {
            for i in reserved {
                if let Some(b) = budgets.get(i) {
                    ledger::settle::<H>(&s.scope, b);
                }
            }
        }
        match uncounted {
            None => {
                s.outbox.push_with(now as u64, |buf| event.write_json(buf));
            }
            // Its vocabulary is fetched by the root context (`vocabs`).
            Some(rest) => {
                let now = now as u64;
                s.held.hold(
                    now,
                    event,
                    rest,
                    super::vocabs::into_outbox(&mut s.outbox, now),
                );
            }
        }
    }
}

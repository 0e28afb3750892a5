//! The collector's key set (`GET /v1/controls`), polled once per Envoy rather than once per VM:
//! the VMs that share a scope (same credential, same collector cluster; see
//! `crate::handoff::scope`) elect a poller with a lease in shared data, and the poller stores
//! the answer there for all of them. Each VM picks up a new key set on its next tick, so a
//! rotated or disabled key is refused within `controls_refresh_ms` plus a tick and a call.
//!
//! Shared data, per scope:
//!
//! ```text
//! tally.controls.<scope>.lease = writer SP until-ms            ; who polls, until when
//! tally.controls.<scope>       = generation SP etag LF body      ; one value: body and ETag agree
//! tally.controls.<scope>.v     = generation                      ; what VMs read every tick
//! ```
//!
//! An empty body means the collector refused the credential (401 or 403): every VM drops its
//! key set, and `key_set_missing` decides. If the collector cannot be reached, every VM keeps
//! the last key set it had (counted in `controls_failed`).

use super::{shared, Host};
use crate::budgets::BudgetSet;
use crate::org_keys::KeySet;

fn key(scope: &str, suffix: &str) -> String {
    format!("tally.controls.{scope}{suffix}")
}

/// What a VM learns from shared data.
pub enum Update {
    Keys(KeySet, BudgetSet),
    /// The collector refused the filter's credential.
    Refused,
}

/// This VM's view.
#[derive(Default)]
pub struct Controls {
    /// The generation of the key set in use.
    generation: u64,
    pub next_poll_ms: u64,
    /// When this VM last polled (a poll sooner than the refresh interval waits this long).
    pub last_poll_ms: u64,
    pub in_flight: Option<u32>,
    /// Polls that failed in a row (logged on the first).
    pub failures: u32,
}

/// The stored value: (generation, etag, body).
fn parse_stored(value: &[u8]) -> Option<(u64, &str, &[u8])> {
    let end = value.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&value[..end]).ok()?;
    let (generation, etag) = head.split_once(' ')?;
    Some((generation.parse().ok()?, etag, &value[end + 1..]))
}

impl Controls {
    /// Make sure the lease and the stored value exist before any VM claims or writes them
    /// (see [`shared::ensure`]).
    pub fn init<H: Host>(scope: &str) {
        shared::ensure::<H>(&key(scope, ".lease"));
        shared::ensure::<H>(&key(scope, ""));
    }

    /// A key set newer than the one in use, if another VM (or this one) stored it.
    pub fn newer<H: Host>(&mut self, scope: &str) -> Option<Result<Update, String>> {
        let generation: u64 = shared::get::<H>(&key(scope, ".v"))
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if generation == self.generation {
            return None;
        }
        let value = shared::get::<H>(&key(scope, ""))?;
        let (stored_generation, _, body) = parse_stored(&value)?;
        if body.is_empty() {
            self.generation = stored_generation;
            return Some(Ok(Update::Refused));
        }
        // The generation moves on only with a key set in hand: a bad one is tried again.
        let parsed =
            KeySet::parse(body).and_then(|keys| Ok(Update::Keys(keys, BudgetSet::parse(body)?)));
        if parsed.is_ok() {
            self.generation = stored_generation;
        }
        Some(parsed)
    }

    /// Take (or keep) the poller's lease until `until_ms`; true when this VM is to poll now.
    pub fn lead<H: Host>(&self, scope: &str, writer: u64, now_ms: u64, until_ms: u64) -> bool {
        let ours = format!("{writer:016x}");
        shared::update::<H, _>(&key(scope, ".lease"), |value| {
            let text = String::from_utf8_lossy(value);
            let (holder, held_until) = text.split_once(' ').unwrap_or(("", "0"));
            let free = holder == ours || held_until.parse::<u64>().unwrap_or(0) <= now_ms;
            free.then(|| (format!("{ours} {until_ms}").into_bytes(), ()))
        })
        .is_some()
    }

    /// This Envoy's id for the collector (`X-Tally-Filter` on polls and batches): the first VM
    /// of the scope to ask names it after itself, and the others read it, so that the
    /// collector leases budget shares per Envoy, not per worker.
    pub fn filter_id<H: Host>(scope: &str, writer: u64) -> String {
        let k = key(scope, ".filter");
        shared::ensure::<H>(&k);
        shared::update::<H, _>(&k, |v| {
            if v.is_empty() {
                let id = format!("{writer:016x}");
                Some((id.clone().into_bytes(), id))
            } else {
                None
            }
        })
        .or_else(|| shared::get::<H>(&k).and_then(|v| String::from_utf8(v).ok()))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{writer:016x}"))
    }

    /// Give the lease up (a stopping root context), so that another VM polls at once.
    pub fn release<H: Host>(scope: &str, writer: u64) {
        let ours = format!("{writer:016x} ");
        shared::update::<H, _>(&key(scope, ".lease"), |value| {
            value.starts_with(ours.as_bytes()).then(|| (Vec::new(), ()))
        });
    }

    /// The ETag of the stored body, for `If-None-Match`.
    pub fn etag<H: Host>(scope: &str) -> String {
        shared::get::<H>(&key(scope, ""))
            .as_deref()
            .and_then(parse_stored)
            .map(|(_, etag, _)| etag.to_string())
            .unwrap_or_default()
    }

    /// Store a new body (empty: the credential was refused) for every VM of the scope: body and
    /// ETag in one value, written with compare-and-swap, then the generation VMs poll.
    pub fn store<H: Host>(scope: &str, body: &[u8], etag: &str) -> bool {
        let stored = shared::update::<H, _>(&key(scope, ""), |value| {
            let generation = parse_stored(value).map_or(0, |(g, _, _)| g) + 1;
            let mut new = format!("{generation} {etag}\n").into_bytes();
            new.extend_from_slice(body);
            Some((new, generation))
        });
        let Some(generation) = stored else {
            return false;
        };
        shared::set::<H>(&key(scope, ".v"), generation.to_string().as_bytes());
        true
    }
}

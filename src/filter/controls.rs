//! The collector's key set (`GET /v1/controls`), polled once per Envoy rather than once per VM:
//! the VMs that share a scope (same credential, same collector cluster; see
//! `crate::handoff::scope`) elect a poller with a lease in shared data, and the poller stores
//! the answer there for all of them. Each VM picks up a new key set on its next tick, so a
//! rotated or disabled key is refused within `controls_refresh_ms` plus a tick and a call.
//!
//! Shared data, per scope:
//!
//! ```text
//! tally.controls.<scope>.lease = writer SP until-ms          ; who polls, until when
//! tally.controls.<scope>.v     = generation SP etag           ; changes with each new body
//! tally.controls.<scope>       = body of the last 200
//! ```
//!
//! If the collector cannot be reached, every VM keeps the last key set it had (counted in
//! `controls_failed`).

use crate::org_keys::KeySet;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

fn key(scope: &str, suffix: &str) -> String {
    format!("tally.controls.{scope}{suffix}")
}

/// This VM's view.
#[derive(Default)]
pub struct Controls {
    /// The generation of the key set in use.
    generation: u64,
    pub next_poll_ms: u64,
    pub in_flight: Option<u32>,
    /// Polls that failed in a row (logged on the first).
    pub failures: u32,
}

fn read_version(scope: &str) -> (u64, String) {
    let value = hostcalls::get_shared_data(&key(scope, ".v"))
        .ok()
        .and_then(|(v, _)| v)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&value);
    let (generation, etag) = text.split_once(' ').unwrap_or((&text, ""));
    (generation.parse().unwrap_or(0), etag.to_string())
}

impl Controls {
    /// A key set newer than the one in use, if another VM (or this one) stored it.
    pub fn newer(&mut self, scope: &str) -> Option<Result<KeySet, String>> {
        let (generation, _) = read_version(scope);
        if generation == self.generation {
            return None;
        }
        let body = hostcalls::get_shared_data(&key(scope, ""))
            .ok()
            .and_then(|(v, _)| v)?;
        self.generation = generation;
        Some(KeySet::parse(&body))
    }

    /// Take (or keep) the poller's lease until `until_ms`; true when this VM is to poll now.
    pub fn lead(&self, scope: &str, writer: u64, now_ms: u64, until_ms: u64) -> bool {
        let lease = key(scope, ".lease");
        let Ok((value, cas)) = hostcalls::get_shared_data(&lease) else {
            return false;
        };
        let text = value
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let (holder, held_until) = text.split_once(' ').unwrap_or(("", "0"));
        let ours = holder == format!("{writer:016x}");
        if !ours && held_until.parse::<u64>().unwrap_or(0) > now_ms {
            return false;
        }
        let new = format!("{writer:016x} {until_ms}");
        hostcalls::set_shared_data(&lease, Some(new.as_bytes()), cas).is_ok()
    }

    /// The ETag of the stored body, for `If-None-Match`.
    pub fn etag(scope: &str) -> String {
        read_version(scope).1
    }

    /// Store a new body for every VM of the scope.
    pub fn store(scope: &str, body: &[u8], etag: &str) -> bool {
        if hostcalls::set_shared_data(&key(scope, ""), Some(body), None).is_err() {
            return false;
        }
        let version = key(scope, ".v");
        for _ in 0..16 {
            let Ok((value, cas)) = hostcalls::get_shared_data(&version) else {
                return false;
            };
            let text = value
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            let generation: u64 = text
                .split(' ')
                .next()
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            let new = format!("{} {etag}", generation + 1);
            match hostcalls::set_shared_data(&version, Some(new.as_bytes()), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

//! The host side of [`crate::handoff`]: the shared value in Envoy's shared data, changed with
//! compare-and-swap since every VM of the Envoy may write it at once.

use crate::handoff;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::cell::Cell;

thread_local! {
    // A VM is one instance of the module, single-threaded: this is per VM.
    static VM_ID: Cell<u64> = const { Cell::new(0) };
}

/// This VM's id in hand-over records, drawn once.
pub fn vm_id() -> u64 {
    VM_ID.with(|id| {
        if id.get() == 0 {
            let mut seed = [0u8; 8];
            if getrandom::getrandom(&mut seed).is_err() {
                seed = (super::host::now_ms() as u64).to_le_bytes();
            }
            id.set(u64::from_le_bytes(seed) | 1);
        }
        id.get()
    })
}

/// Apply `change` to the shared value (None: nothing to write), retrying when another VM wrote
/// in between; what `change` returned once its value is stored.
fn update<T>(mut change: impl FnMut(&[u8]) -> Option<(Vec<u8>, T)>) -> Option<T> {
    for _ in 0..16 {
        let (value, cas) = hostcalls::get_shared_data(handoff::KEY).ok()?;
        let (new, out) = change(value.as_deref().unwrap_or_default())?;
        match hostcalls::set_shared_data(handoff::KEY, Some(&new), cas) {
            Ok(()) => return Some(out),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Store this VM's record with `lines` (empty: take it back). False when it could not be
/// stored, or did not fit.
pub fn publish(lines: &[u8], now_ms: u64) -> bool {
    let id = vm_id();
    update(|value| {
        let (new, fits) = handoff::replace_own(value, id, now_ms, lines);
        (new != value).then_some((new, fits))
    })
    .unwrap_or(lines.is_empty())
}

/// Take the records left longer than `grace_ms`: their NDJSON lines, and the bytes of malformed
/// data dropped with them.
pub fn take_abandoned(now_ms: u64, grace_ms: u64) -> Option<(Vec<u8>, usize)> {
    update(|value| {
        if value.is_empty() {
            return None;
        }
        let a = handoff::adopt(value, now_ms, grace_ms);
        (!a.taken.is_empty() || a.malformed > 0).then_some((a.left, (a.taken, a.malformed)))
    })
}

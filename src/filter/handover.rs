//! The host side of [`crate::handoff`]: the index and the records in Envoy's shared data. The
//! index is changed with compare-and-swap, since every VM of the Envoy may write it at once;
//! a record has one writer.

use crate::handoff::{self, Entry};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Make sure the scope's index exists, so that every later change has a CAS token to check
/// (a first write without one would overwrite whatever another VM wrote at the same moment).
pub fn init(scope: &str) {
    let key = handoff::index_key(scope);
    if let Ok((None, _)) = hostcalls::get_shared_data(&key) {
        let _ = hostcalls::set_shared_data(&key, Some(b""), None);
    }
}

/// Apply `change` to the index (None: nothing to write), retrying when another VM wrote in
/// between; what `change` returned once its value is stored.
fn update<T>(scope: &str, mut change: impl FnMut(&[u8]) -> Option<(Vec<u8>, T)>) -> Option<T> {
    let key = handoff::index_key(scope);
    for _ in 0..16 {
        let (value, cas) = hostcalls::get_shared_data(&key).ok()?;
        let (new, out) = change(value.as_deref().unwrap_or_default())?;
        match hostcalls::set_shared_data(&key, Some(&new), cas) {
            Ok(()) => return Some(out),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Store `writer`'s record (`events` NDJSON lines), or take it back when `events` is 0.
pub fn publish(scope: &str, writer: u64, lines: &[u8], events: u64, now_ms: u64) -> bool {
    let record = handoff::record_key(scope, writer);
    if events > 0 && hostcalls::set_shared_data(&record, Some(lines), None).is_err() {
        return false;
    }
    let entry = (events > 0).then_some(Entry {
        writer,
        written_ms: now_ms,
        events,
    });
    let stored = update(scope, |index| {
        let new = handoff::with_entry(index, writer, entry);
        (new != index).then_some((new, ()))
    });
    if events == 0 {
        let _ = hostcalls::set_shared_data(&record, Some(b""), None);
    }
    stored.is_some() || events == 0
}

/// Take the records left longer than `grace_ms` whose events fit in `room`: each record's
/// NDJSON with the time it was written.
pub fn take_abandoned(scope: &str, now_ms: u64, grace_ms: u64, room: u64) -> Vec<(Vec<u8>, u64)> {
    let chosen = update(scope, |index| {
        handoff::choose(index, now_ms, grace_ms, room).map(|(taken, left)| (left, taken))
    });
    let Some(taken) = chosen else {
        return Vec::new();
    };
    taken
        .into_iter()
        .filter_map(|e| {
            let key = handoff::record_key(scope, e.writer);
            let (lines, _) = hostcalls::get_shared_data(&key).ok()?;
            let _ = hostcalls::set_shared_data(&key, Some(b""), None);
            lines.map(|l| (l, e.written_ms))
        })
        .collect()
}

//! The host side of [`crate::handoff`]: the index and the records in Envoy's shared data. The
//! index is changed with compare-and-swap, since every VM of the Envoy may write it at once;
//! a record has one writer.

use super::{shared, Host};
use crate::handoff::{self, Entry};

/// Make sure the scope's index exists before any record is written (see [`shared::ensure`]).
pub fn init<H: Host>(scope: &str) {
    shared::ensure::<H>(&handoff::index_key(scope));
}

/// Store `writer`'s record (`events` NDJSON lines), or take it back when `events` is 0.
pub fn publish<H: Host>(scope: &str, writer: u64, lines: &[u8], events: u64, now_ms: u64) -> bool {
    let record = handoff::record_key(scope, writer);
    if events > 0 && !shared::set::<H>(&record, lines) {
        return false;
    }
    let entry = (events > 0).then_some(Entry {
        writer,
        written_ms: now_ms,
        events,
    });
    let stored = shared::update::<H, _>(&handoff::index_key(scope), |index| {
        let new = handoff::with_entry(index, writer, entry);
        (new != index).then_some((new, ()))
    });
    if events == 0 {
        shared::set::<H>(&record, b"");
    }
    stored.is_some() || events == 0
}

/// Take the records left longer than `grace_ms` whose events fit in `room`: each record's
/// NDJSON with the time it was written.
pub fn take_abandoned<H: Host>(
    scope: &str,
    now_ms: u64,
    grace_ms: u64,
    room: u64,
) -> Vec<(Vec<u8>, u64)> {
    let chosen = shared::update::<H, _>(&handoff::index_key(scope), |index| {
        handoff::choose(index, now_ms, grace_ms, room).map(|(taken, left)| (left, taken))
    });
    let Some(taken) = chosen else {
        return Vec::new();
    };
    taken
        .into_iter()
        .filter_map(|e| {
            let key = handoff::record_key(scope, e.writer);
            let lines = shared::get::<H>(&key)?;
            shared::set::<H>(&key, b"");
            Some((lines, e.written_ms))
        })
        .collect()
}

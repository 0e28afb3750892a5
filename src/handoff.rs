//! Events handed from a VM that stops to the VMs that go on, through Envoy's shared data.
//!
//! When a control plane delivers a new module (Istio by ECDS), Envoy starts new VMs and tears
//! the old ones down as soon as their last request ends: a stopping VM's batch calls are cut off
//! with it (measured: an ECDS update under load lost the events still queued). So a stopping
//! root context writes what it still holds into shared data, which every VM of the same `vm_id`
//! in that Envoy reads (Istio leaves `vm_id` empty: every plugin of the proxy shares it), and
//! keeps sending it itself, rewriting its record as its queue changes and taking it back once
//! everything is sent. A record still there after a grace period belongs to a VM that did not
//! live to send it, and a running VM with room in its queue adopts it. At worst both send the
//! same events; the collector is idempotent on `request_id`, so nothing is counted twice.
//!
//! Keys are scoped by a hash of the collector credential and cluster (`scope`): only a filter
//! that sends to the same collector with the same credential finds them (another plugin of the
//! proxy, or a Tally of another org, never adopts these events). Each writer has a record key
//! of its own holding its NDJSON, and the scope's index lists the records, so running VMs poll
//! a few bytes, not the events:
//!
//! ```text
//! index  = *entry
//! entry  = "T" writer SP written-at-ms SP events LF   ; writer = 16HEXDIG
//! record = ndjson                                      ; at index-key "." writer
//! ```

/// The scope of a filter's records: a hash of the credential its batches carry and of its
/// collector cluster (the credential itself never appears in a key).
pub fn scope(bearer: &str, collector_cluster: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(bearer.as_bytes())
        .chain_update(b"\n")
        .chain_update(collector_cluster.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The index key of a scope.
pub fn index_key(scope: &str) -> String {
    format!("tally.handoff.{scope}")
}

/// The record key of one writer.
pub fn record_key(scope: &str, writer: u64) -> String {
    format!("tally.handoff.{scope}.{writer:016x}")
}

/// One record in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub writer: u64,
    pub written_ms: u64,
    pub events: u64,
}

/// The entries of an index, and the bytes of a malformed tail (ignored; rewritten away).
pub fn parse_index(value: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some(end) = rest.iter().take(64).position(|&b| b == b'\n') else {
            return (entries, rest.len());
        };
        let Some(e) = parse_entry(&rest[..end]) else {
            return (entries, rest.len());
        };
        entries.push(e);
        rest = &rest[end + 1..];
    }
    (entries, 0)
}

fn parse_entry(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?;
    let mut f = text.strip_prefix('T')?.split(' ');
    let writer = f.next().filter(|w| w.len() == 16)?;
    let e = Entry {
        writer: u64::from_str_radix(writer, 16).ok()?,
        written_ms: f.next()?.parse().ok()?,
        events: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(e)
}

fn write(entries: impl IntoIterator<Item = Entry>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(
            format!("T{:016x} {} {}\n", e.writer, e.written_ms, e.events).as_bytes(),
        );
    }
    out
}

/// The index with `writer`'s entry replaced by `entry` (removed when `None`).
pub fn with_entry(index: &[u8], writer: u64, entry: Option<Entry>) -> Vec<u8> {
    let (entries, _) = parse_index(index);
    write(
        entries
            .into_iter()
            .filter(|e| e.writer != writer)
            .chain(entry),
    )
}

/// The records an adopter takes: those older than `grace_ms`, oldest first, as long as their
/// events fit in `room`; and the index without them. `None` when there is nothing to take.
pub fn choose(
    index: &[u8],
    now_ms: u64,
    grace_ms: u64,
    room: u64,
) -> Option<(Vec<Entry>, Vec<u8>)> {
    let (mut entries, malformed) = parse_index(index);
    entries.sort_by_key(|e| e.written_ms);
    let mut taken = Vec::new();
    let mut left = Vec::new();
    let mut room = room;
    for e in entries {
        if now_ms.saturating_sub(e.written_ms) >= grace_ms && e.events <= room {
            room -= e.events;
            taken.push(e);
        } else {
            left.push(e);
        }
    }
    (!taken.is_empty() || malformed > 0).then(|| (taken, write(left)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(writer: u64, written_ms: u64, events: u64) -> Entry {
        Entry {
            writer,
            written_ms,
            events,
        }
    }

    #[test]
    fn each_writer_keeps_one_entry() {
        let i = with_entry(b"", 7, Some(entry(7, 1000, 2)));
        let i = with_entry(&i, 9, Some(entry(9, 1500, 1)));
        let i = with_entry(&i, 7, Some(entry(7, 2000, 1)));
        assert_eq!(
            parse_index(&i),
            (vec![entry(9, 1500, 1), entry(7, 2000, 1)], 0)
        );
        // Taking one's record back once everything is sent.
        let i = with_entry(&i, 7, None);
        assert_eq!(parse_index(&i).0, vec![entry(9, 1500, 1)]);
        assert_eq!(record_key("ab", 7), "tally.handoff.ab.0000000000000007");
        let s = scope("tly_secret", "tally_collector");
        assert_eq!(s.len(), 16);
        assert!(!s.contains("secret"));
        assert_ne!(s, scope("tly_secret", "other"));
    }

    #[test]
    fn adopters_take_expired_records_that_fit() {
        let i = with_entry(b"", 1, Some(entry(1, 1000, 5)));
        let i = with_entry(&i, 2, Some(entry(2, 1100, 50)));
        let i = with_entry(&i, 3, Some(entry(3, 5000, 1)));
        // Record 2 does not fit in a queue with room for 10; record 3 is within its grace.
        let (taken, left) = choose(&i, 6000, 2000, 10).unwrap();
        assert_eq!(taken, vec![entry(1, 1000, 5)]);
        assert_eq!(
            parse_index(&left).0,
            vec![entry(2, 1100, 50), entry(3, 5000, 1)]
        );
        assert_eq!(choose(&left, 6000, 2000, 10), None);
        let (taken, left) = choose(&left, 8000, 2000, 100).unwrap();
        assert_eq!(taken.len(), 2);
        assert!(left.is_empty());
    }

    #[test]
    fn malformed_indexes_never_panic_and_are_rewritten() {
        let good = with_entry(b"", 3, Some(entry(3, 10, 1)));
        for bad in [
            &b"garbage"[..],
            b"Tzz 1 1\n",
            b"T0000000000000003 10 1 extra\n",
            b"T3 10 1\n",
            b"\n",
        ] {
            let mut v = good.clone();
            v.extend_from_slice(bad);
            let (entries, malformed) = parse_index(&v);
            assert_eq!(entries, vec![entry(3, 10, 1)]);
            assert_eq!(malformed, bad.len(), "{:?}", String::from_utf8_lossy(bad));
            // Nothing expired to take, but the index is rewritten without the garbage.
            let (taken, left) = choose(&v, 11, 1000, 10).unwrap();
            assert!(taken.is_empty());
            assert_eq!(left, good);
        }
        for cut in 0..good.len() {
            let _ = parse_index(&good[..cut]);
        }
    }
}

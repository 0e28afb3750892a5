//! Events handed from a VM that stops to the VMs that go on, through Envoy's shared data.
//!
//! When a control plane delivers a new module (Istio by ECDS), Envoy starts new VMs and tears
//! the old ones down as soon as their last request ends: a stopping VM's batch calls are cut off
//! with it (measured: an ECDS update under load lost the events still queued). So a stopping VM
//! writes what it still holds into shared data, which every VM of the same `vm_id` in that Envoy
//! reads, and keeps sending it itself. Once it has sent everything it takes its record back. A
//! record still there after a grace period belongs to a VM that did not live to send it, and any
//! running VM adopts it. At worst both send the same events; the collector is idempotent on
//! `request_id`, so nothing is counted twice, and nothing is lost.
//!
//! The shared value is a sequence of records, each a header line and the NDJSON it carries:
//!
//! ```text
//! record = "T" writer SP written-at-ms SP length LF ndjson   ; length = bytes of ndjson
//! writer = 16HEXDIG                                          ; the writing VM's id
//! ```

/// Key of the shared-data value (one per `vm_id` in an Envoy).
pub const KEY: &str = "tally.handoff";
/// The shared value stays below this; events that would pass it are dropped and counted.
pub const MAX_BYTES: usize = 64 << 20;

/// One record: who wrote it, when, and its events' NDJSON lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub writer: u64,
    pub written_ms: u64,
    pub lines: &'a [u8],
}

/// The records of a shared value; parsing stops at the first malformed byte (the rest is
/// returned as its length, to be counted and dropped).
pub fn parse(value: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut records = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some(record) = parse_one(rest) else {
            return (records, rest.len());
        };
        let used = record.1;
        records.push(record.0);
        rest = &rest[used..];
    }
    (records, 0)
}

fn parse_one(buf: &[u8]) -> Option<(Record<'_>, usize)> {
    let header_end = buf.iter().take(64).position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(buf.get(..header_end)?).ok()?;
    let mut fields = header.strip_prefix('T')?.split(' ');
    let writer = u64::from_str_radix(fields.next()?, 16).ok()?;
    let written_ms = fields.next()?.parse().ok()?;
    let len: usize = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    let start = header_end + 1;
    let lines = buf.get(start..start.checked_add(len)?)?;
    Some((
        Record {
            writer,
            written_ms,
            lines,
        },
        start + len,
    ))
}

/// Append a record to `out`.
pub fn write(out: &mut Vec<u8>, writer: u64, written_ms: u64, lines: &[u8]) {
    out.extend_from_slice(format!("T{writer:016x} {written_ms} {}\n", lines.len()).as_bytes());
    out.extend_from_slice(lines);
}

/// `value` with the records of `writer` removed and one new record of `lines` added (none when
/// `lines` is empty); false when it would pass [`MAX_BYTES`] (then `value` is returned without
/// the new record).
pub fn replace_own(value: &[u8], writer: u64, now_ms: u64, lines: &[u8]) -> (Vec<u8>, bool) {
    let (records, _) = parse(value);
    let mut out = Vec::with_capacity(value.len() + lines.len() + 48);
    for r in records.iter().filter(|r| r.writer != writer) {
        write(&mut out, r.writer, r.written_ms, r.lines);
    }
    if lines.is_empty() {
        return (out, true);
    }
    if out.len() + lines.len() + 48 > MAX_BYTES {
        return (out, false);
    }
    write(&mut out, writer, now_ms, lines);
    (out, true)
}

/// What an adopter takes from `value`: the records older than `grace_ms` (their lines,
/// concatenated), the value to leave behind, and the bytes of any malformed tail (dropped).
pub struct Adoption {
    pub taken: Vec<u8>,
    pub left: Vec<u8>,
    pub malformed: usize,
}

pub fn adopt(value: &[u8], now_ms: u64, grace_ms: u64) -> Adoption {
    let (records, malformed) = parse(value);
    let mut taken = Vec::new();
    let mut left = Vec::new();
    for r in records {
        if now_ms.saturating_sub(r.written_ms) >= grace_ms {
            taken.extend_from_slice(r.lines);
        } else {
            write(&mut left, r.writer, r.written_ms, r.lines);
        }
    }
    Adoption {
        taken,
        left,
        malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_each_writer_keeps_one() {
        let (v, ok) = replace_own(b"", 7, 1000, b"{\"a\":1}\n{\"a\":2}\n");
        assert!(ok);
        let (v, _) = replace_own(&v, 9, 1500, b"{\"b\":1}\n");
        let (v, _) = replace_own(&v, 7, 2000, b"{\"a\":2}\n");
        let (records, bad) = parse(&v);
        assert_eq!(bad, 0);
        assert_eq!(
            records,
            vec![
                Record {
                    writer: 9,
                    written_ms: 1500,
                    lines: b"{\"b\":1}\n"
                },
                Record {
                    writer: 7,
                    written_ms: 2000,
                    lines: b"{\"a\":2}\n"
                },
            ]
        );
        // Taking one's record back once everything is sent.
        let (v, _) = replace_own(&v, 7, 3000, b"");
        assert_eq!(parse(&v).0.len(), 1);
    }

    #[test]
    fn only_records_past_the_grace_period_are_adopted() {
        let (v, _) = replace_own(b"", 1, 1000, b"old\n");
        let (v, _) = replace_own(&v, 2, 5000, b"new\n");
        let a = adopt(&v, 6000, 2000);
        assert_eq!(a.taken, b"old\n");
        assert_eq!(a.malformed, 0);
        let (left, _) = parse(&a.left);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].writer, 2);
        let a = adopt(&a.left, 7000, 2000);
        assert_eq!(a.taken, b"new\n");
        assert!(a.left.is_empty());
    }

    #[test]
    fn malformed_values_are_measured_and_never_panic() {
        let (good, _) = replace_own(b"", 3, 10, b"x\n");
        for bad in [
            &b"garbage"[..],
            b"T0000000000000003 10 99\nshort",
            b"Tzz 1 1\nx",
            b"T0000000000000003 10 1 extra\nx",
            b"\n",
        ] {
            let mut v = good.clone();
            v.extend_from_slice(bad);
            let a = adopt(&v, 10_000, 0);
            assert_eq!(a.taken, b"x\n");
            assert_eq!(a.malformed, bad.len(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Every prefix of a valid value parses without panicking.
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
    }

    #[test]
    fn the_value_stays_bounded() {
        let big = vec![b'x'; MAX_BYTES - 10];
        let (v, ok) = replace_own(b"", 1, 0, &big);
        assert!(!ok);
        assert!(v.is_empty());
    }
}

//! The body scanner: no panic, and the same answer however the input is chunked; the key probe:
//! the same first place as a plain search (where a key whose value is null does not count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::scan::{KeyProbe, TopLevelScanner};

const KEYS: &[(&str, usize)] = &[("model", 256), ("stream", 16), ("usage", 4096)];
const QUOTED: &[&str] = &["\"usage\"", "\"error\"", "\"response\"", "\"x_groq\""];
static PROBE: KeyProbe = KeyProbe::new(QUOTED);

fuzz_target!(|data: &[u8]| {
    let Some((&cut, doc)) = data.split_first() else {
        return;
    };
    let mut whole = TopLevelScanner::new(KEYS);
    let close_whole = whole.feed(doc);
    let at = usize::from(cut).min(doc.len());
    let mut split = TopLevelScanner::new(KEYS);
    let first = split.feed(&doc[..at]);
    let second = split.feed(&doc[at..]).map(|i| i + at);
    assert_eq!(close_whole, first.or(second));
    for (k, _) in KEYS {
        assert_eq!(whole.raw(k), split.raw(k), "{k}");
    }
    assert_eq!(whole.is_done(), split.is_done());
    // A key followed by `: null` and a delimiter does not count.
    let ws = |b: &[u8]| -> usize { b.iter().take_while(|c| b" \t\n\r".contains(c)).count() };
    let null_after = |after: &[u8]| {
        let after = &after[ws(after)..];
        after.first() == Some(&b':') && {
            let v = &after[1..];
            let v = &v[ws(v)..];
            v.len() > 4 && v.starts_with(b"null") && b" \t\n\r,}]".contains(&v[4])
        }
    };
    let plain = (0..doc.len()).find(|&at| {
        let rest = &doc[at..];
        rest.starts_with(b"\\u")
            || QUOTED
                .iter()
                .any(|q| rest.starts_with(q.as_bytes()) && !null_after(&rest[q.len()..]))
    });
    assert_eq!(PROBE.first_place(doc), plain);
    assert_eq!(PROBE.may_hold(doc), plain.is_some());
});

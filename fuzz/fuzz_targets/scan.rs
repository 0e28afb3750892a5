//! The body scanner: no panic, and the same answer however the input is chunked; the key probe:
//! the same first place as a plain search.
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
    let plain = (0..doc.len()).find(|&at| {
        let rest = &doc[at..];
        rest.starts_with(b"\\u") || QUOTED.iter().any(|q| rest.starts_with(q.as_bytes()))
    });
    assert_eq!(PROBE.first_place(doc), plain);
    assert_eq!(PROBE.may_hold(doc), plain.is_some());
});

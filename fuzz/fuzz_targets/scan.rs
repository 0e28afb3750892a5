//! The body scanner: no panic, and the same answer however the input is chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::scan::TopLevelScanner;

const KEYS: &[(&str, usize)] = &[("model", 256), ("stream", 16), ("usage", 4096)];

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
});

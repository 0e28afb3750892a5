//! The collector's batch parser on arbitrary bodies: no panic; an accepted batch is non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = tally_collector::ingest::parse(data) {
        assert!(!batch.is_empty());
    }
});

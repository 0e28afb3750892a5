//! Decompression of arbitrary bodies: no panic, and never more output than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::decode::{DecodeError, Decoder};

fuzz_target!(|data: &[u8]| {
    for enc in ["gzip", "deflate", "br"] {
        let Some(mut d) = Decoder::for_encoding(enc, 1 << 16) else {
            continue;
        };
        let mut total = 0usize;
        for chunk in data.chunks(97) {
            match d.feed(chunk) {
                Ok(out) => total += out.len(),
                Err(DecodeError::TooLarge) | Err(DecodeError::Corrupt) => break,
            }
        }
        assert!(total <= 1 << 16);
    }
});

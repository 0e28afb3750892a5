//! The hand-written tokenizer against tiktoken-rs: the same token count for any text, in both
//! encodings (the pre-tokenizer's pieces and the merges, as tiktoken's regex and BPE make them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tally::measure::{Counted, Encoding, Tokenizers};

struct Both {
    ours: std::sync::Mutex<Tokenizers>,
    o200k: tiktoken_rs::CoreBPE,
    cl100k: tiktoken_rs::CoreBPE,
}

static BOTH: OnceLock<Both> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let both = BOTH.get_or_init(|| Both {
        ours: std::sync::Mutex::new(Tokenizers::default()),
        o200k: tiktoken_rs::o200k_base().unwrap(),
        cl100k: tiktoken_rs::cl100k_base().unwrap(),
    });
    let text = String::from_utf8_lossy(data);
    let mut ours = both.ours.lock().unwrap();
    for (enc, theirs) in [(Encoding::O200k, &both.o200k), (Encoding::Cl100k, &both.cl100k)] {
        let want = theirs.encode_ordinary(&text).len() as u64;
        assert_eq!(ours.count(enc, &text), Counted::Tokens(want), "{enc:?} {text:?}");
    }
});

//! Packs the two tiktoken vocabularies the filter counts with into compact, compressed blobs.
//!
//! tiktoken-rs embeds them as base64 text (5.3 MB), and whatever a wasm module embeds is copied
//! into the linear memory of every VM at start, whether a tokenizer is ever built or not. Packed
//! (each token's bytes behind a one-byte length, in rank order) and deflated they take 1.5 MB,
//! and the filter inflates one only when a stream first needs it (`measure.rs`).

use std::io::Write;

fn pack(name: &str, bpe: &tiktoken_rs::CoreBPE, ranks: u32) {
    let mut packed = Vec::with_capacity(ranks as usize * 8);
    for rank in 0..ranks {
        let token = bpe
            .decode_bytes(&[rank])
            .unwrap_or_else(|_| panic!("{name}: rank {rank} has no token"));
        let len = u8::try_from(token.len())
            .unwrap_or_else(|_| panic!("{name}: token {rank} is over 255 bytes"));
        packed.push(len);
        packed.extend_from_slice(&token);
    }
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&packed).expect("deflate");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join(name);
    std::fs::write(out, z.finish().expect("deflate")).expect("write vocabulary");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Rank counts of the regular tokens (special tokens come after them).
    pack(
        "o200k_base.vocab",
        &tiktoken_rs::o200k_base().expect("o200k_base"),
        199_998,
    );
    pack(
        "cl100k_base.vocab",
        &tiktoken_rs::cl100k_base().expect("cl100k_base"),
        100_256,
    );
}

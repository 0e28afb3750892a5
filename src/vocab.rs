//! The tiktoken vocabularies, packed at build time (see `build.rs`), and tokenizers built from
//! them on demand.
//!
//! Each blob is deflate-compressed; inflated it is, for rank 0, 1, 2, ... in order, one byte of
//! length and the token's bytes. Kept compressed in the module, a vocabulary costs 0.5 to 1 MB
//! of each VM's memory until a stream needs counting, instead of the 3.6 MB text tiktoken-rs
//! embeds (for each encoding, built or not).

use crate::measure::Encoding;
use rustc_hash::FxHashMap;
use std::io::Read;
use tiktoken_rs::{CoreBPE, Rank};

const O200K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.vocab"));
const CL100K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.vocab"));

/// cl100k_base's pre-tokenizer pattern, as OpenAI's tiktoken defines it (tiktoken-rs keeps it
/// inside its constructor, not as a constant).
const CL100K_PAT: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// Unpacked sizes, to reserve once.
const O200K_TOKENS: usize = 199_998;
const CL100K_TOKENS: usize = 100_256;

/// Build the tokenizer for `enc`; an error names what failed (a corrupt blob cannot happen
/// short of a broken build, but a tokenizer is never worth a panic).
pub fn tokenizer(enc: Encoding) -> Result<CoreBPE, String> {
    let (blob, tokens, pattern, special): (_, _, _, &[(&str, Rank)]) = match enc {
        Encoding::O200k => (
            O200K,
            O200K_TOKENS,
            tiktoken_rs::O200K_BASE_PAT_STR,
            &[
                (tiktoken_rs::ENDOFTEXT, 199_999),
                (tiktoken_rs::ENDOFPROMPT, 200_018),
            ],
        ),
        Encoding::Cl100k => (
            CL100K,
            CL100K_TOKENS,
            CL100K_PAT,
            &[
                (tiktoken_rs::ENDOFTEXT, 100_257),
                (tiktoken_rs::FIM_PREFIX, 100_258),
                (tiktoken_rs::FIM_MIDDLE, 100_259),
                (tiktoken_rs::FIM_SUFFIX, 100_260),
                (tiktoken_rs::ENDOFPROMPT, 100_276),
            ],
        ),
    };
    let encoder = unpack(blob, tokens)?;
    let special = special.iter().map(|&(s, r)| (s.to_string(), r)).collect();
    CoreBPE::new(encoder, special, pattern).map_err(|e| format!("tokenizer: {e}"))
}

fn unpack(blob: &[u8], tokens: usize) -> Result<FxHashMap<Vec<u8>, Rank>, String> {
    let mut packed = Vec::new();
    flate2::read::DeflateDecoder::new(blob)
        .read_to_end(&mut packed)
        .map_err(|e| format!("vocabulary: {e}"))?;
    let mut encoder = FxHashMap::with_capacity_and_hasher(tokens, Default::default());
    let mut rest = packed.as_slice();
    let mut rank: Rank = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        let token = tail
            .get(..len)
            .ok_or_else(|| format!("vocabulary: token {rank} cut short"))?;
        encoder.insert(token.to_vec(), rank);
        rest = &tail[len..];
        rank += 1;
    }
    if encoder.len() != tokens {
        return Err(format!(
            "vocabulary: {} distinct tokens, {tokens} expected",
            encoder.len()
        ));
    }
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed vocabularies are tiktoken-rs's own, token for token, and count alike.
    #[test]
    fn same_tokenizers_as_tiktoken() {
        let text =
            "Hello, world! Ünïcödé, 漢字, emoji 🎉, code `fn main() {}` and   spaces\n\n\tend.";
        for (enc, reference) in [
            (Encoding::O200k, tiktoken_rs::o200k_base().unwrap()),
            (Encoding::Cl100k, tiktoken_rs::cl100k_base().unwrap()),
        ] {
            let ours = tokenizer(enc).unwrap();
            let tokens = match enc {
                Encoding::O200k => O200K_TOKENS,
                Encoding::Cl100k => CL100K_TOKENS,
            };
            for rank in 0..tokens as Rank {
                assert_eq!(
                    ours.decode_bytes(&[rank]).unwrap(),
                    reference.decode_bytes(&[rank]).unwrap(),
                    "{enc:?} rank {rank}"
                );
            }
            assert_eq!(ours.encode_ordinary(text), reference.encode_ordinary(text));
        }
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        assert!(unpack(b"not deflate", 10).is_err());
        assert!(unpack(&O200K[..O200K.len() / 2], O200K_TOKENS).is_err());
    }
}

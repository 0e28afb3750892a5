//! The tiktoken vocabularies, packed at build time (see `build.rs`), and the byte-pair counting
//! done with them.
//!
//! The native builds (the collector, the native module) embed the packed vocabularies. The
//! wasm filter does not: whatever a module embeds is copied into every VM's memory at start,
//! counting or not, so a VM fetches a vocabulary from the collector (`GET /v1/vocab/NAME`) the
//! first time a stream needs counting, and checks it against the SHA-256 it was built with.
//!
//! Each blob is deflate-compressed; inflated it is, for rank 0, 1, 2, ... in order, one byte of
//! length and the token's bytes. Kept compressed in the module, a vocabulary costs 0.5 to 1 MB
//! of each VM's memory until a stream needs counting. Unpacked it is one buffer of the tokens'
//! bytes and an open-addressing table of ranks (about 4 MB for `o200k_base`), where tiktoken-rs
//! keeps a hash map of owned vectors, its inverse and a sorted copy (28 MB), and a regex engine
//! whose code every VM compiles whether it counts or not.

use crate::measure::Encoding;
use std::collections::BinaryHeap;
use std::hash::Hasher;
use std::io::Read;

/// A token's rank in its encoding.
pub type Rank = u32;

// Embedded in native builds, and in the unit tests of every build (the wasm build's tests too).
#[cfg(any(not(target_arch = "wasm32"), test))]
const O200K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.vocab"));
#[cfg(any(not(target_arch = "wasm32"), test))]
const CL100K: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.vocab"));

// The SHA-256 of each packed vocabulary (`build.rs`): what a fetched one must be.
include!(concat!(env!("OUT_DIR"), "/vocab_sha256.rs"));

/// The packed vocabulary of `enc`, where this build embeds it (not in the wasm filter).
pub fn packed(enc: Encoding) -> Option<&'static [u8]> {
    #[cfg(any(not(target_arch = "wasm32"), test))]
    return Some(match enc {
        Encoding::O200k => O200K,
        Encoding::Cl100k => CL100K,
    });
    #[cfg(all(target_arch = "wasm32", not(test)))]
    {
        let _ = enc;
        None
    }
}

/// Unpacked sizes, to reserve once and to check the blob against.
const O200K_TOKENS: usize = 199_998;
const CL100K_TOKENS: usize = 100_256;

/// Pieces shorter than this are merged by scanning their pairs; longer ones through a heap,
/// so that a long run without a break costs n log n, not n².
const SCAN_MERGE_MAX: usize = 100;

/// One encoding's regular tokens: rank → bytes, and bytes → rank.
pub struct Vocab {
    enc: Encoding,
    /// Every token's bytes, in rank order.
    bytes: Vec<u8>,
    /// Where each token ends in `bytes` (it starts where the one before ends).
    ends: Vec<u32>,
    /// Open addressing, linear probing: rank + 1, or 0 for an empty slot.
    slots: Vec<u32>,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(bytes);
    h.finish()
}

impl Vocab {
    /// Unpack the vocabulary of `enc` from `blob` (embedded or fetched), which must be the one
    /// this build was made with; an error names what failed (counting is never worth a panic).
    pub fn load(enc: Encoding, blob: &[u8]) -> Result<Vocab, String> {
        use sha2::Digest;
        let (sha, tokens) = match enc {
            Encoding::O200k => (O200K_SHA256, O200K_TOKENS),
            Encoding::Cl100k => (CL100K_SHA256, CL100K_TOKENS),
        };
        if sha2::Sha256::digest(blob).as_slice() != sha {
            return Err(format!(
                "vocabulary {}: not the one this filter was built with",
                enc.name()
            ));
        }
        Vocab::unpack(enc, blob, tokens)
    }

    fn unpack(enc: Encoding, blob: &[u8], tokens: usize) -> Result<Vocab, String> {
        let mut packed = Vec::new();
        flate2::read::DeflateDecoder::new(blob)
            .read_to_end(&mut packed)
            .map_err(|e| format!("vocabulary: {e}"))?;
        let mut bytes = Vec::with_capacity(packed.len().saturating_sub(tokens));
        let mut ends = Vec::with_capacity(tokens);
        let mut rest = packed.as_slice();
        while let Some((&len, tail)) = rest.split_first() {
            let token = tail
                .get(..usize::from(len))
                .ok_or_else(|| format!("vocabulary: token {} cut short", ends.len()))?;
            bytes.extend_from_slice(token);
            ends.push(u32::try_from(bytes.len()).map_err(|_| "vocabulary: too large")?);
            rest = &tail[token.len()..];
        }
        if ends.len() != tokens {
            return Err(format!(
                "vocabulary: {} tokens, {tokens} expected",
                ends.len()
            ));
        }
        // At most a load of 0.4, so that a miss (most pairs tried while merging) probes little.
        let size = (tokens * 5 / 2).next_power_of_two();
        let mut v = Vocab {
            enc,
            bytes,
            ends,
            slots: vec![0; size],
        };
        for rank in 0..tokens as Rank {
            let token = v.token(rank);
            let mut i = hash(token) as usize & (size - 1);
            loop {
                match v.slots[i] {
                    0 => break,
                    r if v.token(r - 1) == token => {
                        return Err(format!("vocabulary: token {rank} repeats token {}", r - 1))
                    }
                    _ => i = (i + 1) & (size - 1),
                }
            }
            v.slots[i] = rank + 1;
        }
        Ok(v)
    }

    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    fn token(&self, rank: Rank) -> &[u8] {
        let r = rank as usize;
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.bytes[start..self.ends[r] as usize]
    }

    /// The rank of a token, if `bytes` is one.
    pub fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        let mask = self.slots.len() - 1;
        let mut i = hash(bytes) as usize & mask;
        loop {
            match self.slots[i] {
                0 => return None,
                r if self.token(r - 1) == bytes => return Some(r - 1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Tokens in `text`: its pre-tokenizer pieces, each one token or byte-pair merged.
    pub fn count(&self, text: &str) -> u64 {
        let mut n = 0u64;
        crate::pretokenize::pieces(self.enc, text, |piece| {
            n += self.piece_tokens(piece.as_bytes(), &mut |_, _| {}) as u64;
        });
        n
    }

    /// The tokens of one piece, as (start, end) in it, to `each`; how many.
    fn piece_tokens(&self, piece: &[u8], each: &mut impl FnMut(usize, usize)) -> usize {
        if piece.len() < 2 || self.rank(piece).is_some() {
            each(0, piece.len());
            return usize::from(!piece.is_empty());
        }
        if piece.len() < SCAN_MERGE_MAX {
            self.merge_scan(piece, each)
        } else {
            self.merge_heap(piece, each)
        }
    }

    /// The rank of the pair of parts from `a` to `b`, or `Rank::MAX` if it is no token.
    fn pair(&self, piece: &[u8], a: usize, b: usize) -> Rank {
        self.rank(&piece[a..b]).unwrap_or(Rank::MAX)
    }

    /// Byte-pair merging: start from single bytes, and merge the adjacent pair whose joined
    /// bytes have the lowest rank (the leftmost of equals) until no pair is a token. For short
    /// pieces, by scanning all pairs each round.
    fn merge_scan(&self, piece: &[u8], each: &mut impl FnMut(usize, usize)) -> usize {
        // starts[..parts] are the parts' starts; starts[parts] is the piece's end.
        let mut starts = [0usize; SCAN_MERGE_MAX + 1];
        // pairs[i] is the rank of parts i and i + 1 joined.
        let mut pairs = [Rank::MAX; SCAN_MERGE_MAX];
        let mut parts = piece.len();
        for (i, s) in starts.iter_mut().enumerate().take(parts + 1) {
            *s = i;
        }
        for (i, p) in pairs.iter_mut().enumerate().take(parts - 1) {
            *p = self.pair(piece, i, i + 2);
        }
        loop {
            let (mut best, mut at) = (Rank::MAX, 0);
            for (i, &r) in pairs[..parts - 1].iter().enumerate() {
                if r < best {
                    (best, at) = (r, i);
                }
            }
            if best == Rank::MAX {
                break;
            }
            // Part at+1 joins part at: shift the later parts down by one.
            starts.copy_within(at + 2..=parts, at + 1);
            if at + 2 < parts {
                pairs.copy_within(at + 2..parts - 1, at + 1);
            }
            parts -= 1;
            if at + 1 < parts {
                pairs[at] = self.pair(piece, starts[at], starts[at + 2]);
            } else {
                pairs[at] = Rank::MAX;
            }
            if at > 0 {
                pairs[at - 1] = self.pair(piece, starts[at - 1], starts[at + 1]);
            }
        }
        for i in 0..parts {
            each(starts[i], starts[i + 1]);
        }
        parts
    }

    /// The same merging for long pieces: the parts as a linked list over byte positions and
    /// candidate merges in a heap, each checked against its part's current pair when taken.
    fn merge_heap(&self, piece: &[u8], each: &mut impl FnMut(usize, usize)) -> usize {
        let n = piece.len();
        // For a part starting at i: where it ends, where the part before it starts, and the
        // rank of it joined with the next part. Positions inside a part are unused.
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut pair: Vec<Rank> = vec![Rank::MAX; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for (i, p) in pair.iter_mut().enumerate().take(n - 1) {
            *p = self.pair(piece, i, i + 2);
            if *p != Rank::MAX {
                heap.push(std::cmp::Reverse((*p, i)));
            }
        }
        let mut parts = n;
        while let Some(std::cmp::Reverse((rank, at))) = heap.pop() {
            // A stale candidate: its part was merged into another, or its pair changed.
            if pair[at] != rank {
                continue;
            }
            let right = end[at];
            end[at] = end[right];
            pair[right] = Rank::MAX;
            parts -= 1;
            if end[at] < n {
                prev[end[at]] = at;
                pair[at] = self.pair(piece, at, end[end[at]]);
                if pair[at] != Rank::MAX {
                    heap.push(std::cmp::Reverse((pair[at], at)));
                }
            } else {
                pair[at] = Rank::MAX;
            }
            if at > 0 {
                let p = prev[at];
                pair[p] = self.pair(piece, p, end[at]);
                if pair[p] != Rank::MAX {
                    heap.push(std::cmp::Reverse((pair[p], p)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            each(i, end[i]);
            i = end[i];
        }
        parts
    }

    /// The ranks of `text`'s tokens, in order (what the tests compare with tiktoken-rs).
    #[cfg(test)]
    pub fn encode(&self, text: &str) -> Vec<Rank> {
        let mut out = Vec::new();
        crate::pretokenize::pieces(self.enc, text, |piece| {
            let p = piece.as_bytes();
            self.piece_tokens(p, &mut |a, b| {
                out.push(self.rank(&p[a..b]).unwrap_or(Rank::MAX));
            });
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(enc: Encoding) -> tiktoken_rs::CoreBPE {
        match enc {
            Encoding::O200k => tiktoken_rs::o200k_base().unwrap(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base().unwrap(),
        }
    }

    /// The packed vocabularies are tiktoken-rs's own, rank for rank.
    #[test]
    fn same_vocabularies_as_tiktoken() {
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            let ours = Vocab::load(enc, packed(enc).unwrap()).unwrap();
            let theirs = reference(enc);
            for rank in 0..ours.ends.len() as Rank {
                let token = theirs.decode_bytes(&[rank]).unwrap();
                assert_eq!(ours.token(rank), token.as_slice(), "{enc:?} rank {rank}");
                assert_eq!(ours.rank(&token), Some(rank), "{enc:?} rank {rank}");
            }
            assert_eq!(ours.rank(b"\xff\xfe\xfd not a token at all"), None);
        }
    }

    /// Both merge strategies give tiktoken's tokens, on pieces either side of the switch.
    #[test]
    fn merges_match_tiktoken_on_short_and_long_pieces() {
        let words = [
            "antidisestablishmentarianism",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "Pneumonoultramicroscopicsilicovolcanoconiosis",
        ];
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            let ours = Vocab::load(enc, packed(enc).unwrap()).unwrap();
            let theirs = reference(enc);
            for w in words {
                for n in [1, 2, 3, 5, 8, 13] {
                    let text: String = w.repeat(n);
                    assert_eq!(
                        ours.encode(&text),
                        theirs.encode_ordinary(&text),
                        "{enc:?} {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        assert!(Vocab::unpack(Encoding::O200k, b"not deflate", 10).is_err());
        assert!(Vocab::unpack(Encoding::O200k, &O200K[..O200K.len() / 2], O200K_TOKENS).is_err());
        // A blob whose count is wrong.
        assert!(Vocab::unpack(Encoding::Cl100k, CL100K, CL100K_TOKENS + 1).is_err());
        // One encoding's vocabulary offered as the other's, or altered by one byte.
        let err = Vocab::load(Encoding::O200k, CL100K).err().unwrap();
        assert_eq!(
            err,
            "vocabulary o200k_base: not the one this filter was built with"
        );
        let mut altered = O200K.to_vec();
        altered[1000] ^= 1;
        assert!(Vocab::load(Encoding::O200k, &altered).is_err());
    }
}

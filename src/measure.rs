//! Counting output tokens when the provider reports none (a stream cut short, a provider that
//! ignores `include_usage`, the usage request switched off).
//!
//! While a stream passes, the JSON data of its events is kept in memory (bounded); only when the
//! exchange ends without exact usage is the output text pulled out of it and counted with the
//! model family's tiktoken encoding. A vocabulary is unpacked once per VM, on the first stream
//! that needs it, never per request and never while exact usage keeps arriving. Until then only
//! the compressed vocabularies ([`crate::vocab`]) sit in the VM's memory.
//!
//! Claude and Gemini use their own tokenizers, which are not public: for them `o200k_base` is an
//! approximation, which the collector's calibration (exact/measured per model) corrects.

use crate::sse::{SseEvent, SseParser};
use crate::vocab::Vocab;

/// The BPE encodings Tally can count with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, the o-series; the approximation for everything else.
    O200k,
    /// GPT-4, GPT-3.5 and the embedding models before them.
    Cl100k,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::O200k, Encoding::Cl100k];

    /// tiktoken's name for it (and the collector's path for its vocabulary).
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }

    pub fn from_name(name: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// What counting gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Tokens(u64),
    /// The vocabulary is not in this build and not fetched yet ([`Tokenizers::provide`]).
    Wanting,
    /// The vocabulary cannot be had (a broken build).
    Unavailable,
}

impl Counted {
    pub fn tokens(self) -> Option<u64> {
        match self {
            Counted::Tokens(n) => Some(n),
            _ => None,
        }
    }
}

/// The encoding for a model name (dated snapshots included).
pub fn encoding_for(model: &str) -> Encoding {
    let m = model.strip_prefix("models/").unwrap_or(model);
    let cl100k = (m.starts_with("gpt-4") && !m.starts_with("gpt-4o") && !m.starts_with("gpt-4.1"))
        || m.starts_with("gpt-3.5")
        || m.starts_with("text-embedding-3")
        || m.starts_with("text-embedding-ada");
    if cl100k {
        Encoding::Cl100k
    } else {
        Encoding::O200k
    }
}

/// Vocabularies, unpacked on first need and kept for the VM's life.
#[derive(Default)]
pub struct Tokenizers {
    o200k: Slot,
    cl100k: Slot,
    streams: u32,
}

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Loaded(Vocab),
    /// The embedded vocabulary did not unpack.
    Failed,
}

/// One exact-usage stream in this many is also counted, for calibration.
const SAMPLE_EVERY: u32 = 8;

impl Tokenizers {
    /// True for one call in [`SAMPLE_EVERY`].
    pub fn take_sample(&mut self) -> bool {
        self.streams = self.streams.wrapping_add(1);
        self.streams % SAMPLE_EVERY == 1
    }

    fn slot(&mut self, enc: Encoding) -> &mut Slot {
        match enc {
            Encoding::O200k => &mut self.o200k,
            Encoding::Cl100k => &mut self.cl100k,
        }
    }

    /// Whether counting with `enc` would cost nothing more than the counting.
    pub fn is_loaded(&self, enc: Encoding) -> bool {
        let slot = match enc {
            Encoding::O200k => &self.o200k,
            Encoding::Cl100k => &self.cl100k,
        };
        matches!(slot, Slot::Loaded(_))
    }

    /// Tokens in `text` by `enc`, unpacking the embedded vocabulary on first use.
    pub fn count(&mut self, enc: Encoding, text: &str) -> Counted {
        let slot = self.slot(enc);
        if let Slot::Empty = slot {
            match crate::vocab::packed(enc) {
                None => return Counted::Wanting,
                Some(blob) => {
                    *slot = Vocab::load(enc, blob).map_or(Slot::Failed, Slot::Loaded);
                }
            }
        }
        match slot {
            Slot::Loaded(v) => Counted::Tokens(v.count(text)),
            Slot::Failed => Counted::Unavailable,
            Slot::Empty => Counted::Wanting,
        }
    }

    /// Install a vocabulary fetched from the collector; an error (a blob that is not the one
    /// this build expects) leaves it wanting.
    pub fn provide(&mut self, enc: Encoding, blob: &[u8]) -> Result<(), String> {
        let v = Vocab::load(enc, blob)?;
        *self.slot(enc) = Slot::Loaded(v);
        Ok(())
    }
}

/// A stream's (decoded) bytes, kept until the exchange ends, so that output can be counted if
/// no usage arrives. Whole chunks are kept, one copy each, rather than each event's data: the
/// events are parsed again only in the rare exchange that needs counting. Bounded: past the cap
/// nothing more is kept and the count is known to be short.
#[derive(Debug)]
pub struct StreamRecord {
    blocks: Vec<Vec<u8>>,
    /// Bytes kept.
    len: usize,
    cap: usize,
    pub truncated: bool,
    /// The stream is one JSON array of documents (Gemini without `alt=sse`), not SSE.
    json_array: bool,
}

/// The record's unit of growth: a stream is kept in blocks of this many bytes, so that keeping it
/// does not copy what was kept before (growing one buffer did, at each doubling: about a fifth
/// of the native module's cost per event of a long stream). The first block grows as a vector
/// does, so that a short stream takes little.
const BLOCK: usize = 16 << 10;

impl StreamRecord {
    pub fn new(cap: usize) -> Self {
        StreamRecord {
            blocks: Vec::new(),
            len: 0,
            cap,
            truncated: false,
            json_array: false,
        }
    }

    /// A record of a stream that is one JSON array of documents ([`crate::json_array`]).
    pub fn json_array(cap: usize) -> Self {
        StreamRecord {
            json_array: true,
            ..StreamRecord::new(cap)
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        if self.truncated {
            return;
        }
        if self.len + chunk.len() > self.cap {
            self.truncated = true;
            self.blocks = Vec::new();
            return;
        }
        self.len += chunk.len();
        while !chunk.is_empty() {
            let block = match self.blocks.last_mut() {
                Some(b) if b.len() < BLOCK => b,
                _ => {
                    let first = self.blocks.is_empty();
                    self.blocks
                        .push(Vec::with_capacity(if first { chunk.len() } else { BLOCK }));
                    let Some(b) = self.blocks.last_mut() else {
                        return;
                    };
                    b
                }
            };
            let n = (BLOCK - block.len()).min(chunk.len());
            block.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
        }
    }

    /// Each event's JSON value, in order, as a parser with the same event cap saw them
    /// (events that are not JSON are skipped); each element of a JSON array stream.
    pub fn documents(&self, max_event: usize) -> Vec<serde_json::Value> {
        if self.json_array {
            return crate::json_array::documents(&self.blocks.concat());
        }
        let mut docs = Vec::new();
        let mut on_event = |e: SseEvent<'_>| {
            if let Ok(v) = serde_json::from_slice(e.data) {
                docs.push(v);
            }
        };
        let mut parser = SseParser::new(max_event);
        for block in &self.blocks {
            parser.feed(block, &mut on_event);
        }
        parser.finish(&mut on_event);
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_model() {
        assert_eq!(encoding_for("gpt-4o-mini-2024-07-18"), Encoding::O200k);
        assert_eq!(encoding_for("gpt-4.1-nano"), Encoding::O200k);
        assert_eq!(encoding_for("o3-mini"), Encoding::O200k);
        assert_eq!(encoding_for("gpt-5"), Encoding::O200k);
        assert_eq!(encoding_for("gpt-4-turbo"), Encoding::Cl100k);
        assert_eq!(encoding_for("gpt-3.5-turbo-0125"), Encoding::Cl100k);
        assert_eq!(encoding_for("claude-sonnet-4-5"), Encoding::O200k);
    }

    #[test]
    fn counts_known_texts() {
        let mut t = Tokenizers::default();
        assert!(!t.is_loaded(Encoding::O200k));
        // Reference counts from OpenAI's tokenizer for these encodings.
        assert_eq!(
            t.count(Encoding::O200k, "Hello, world!"),
            Counted::Tokens(4)
        );
        assert_eq!(
            t.count(Encoding::Cl100k, "Hello, world!"),
            Counted::Tokens(4)
        );
        assert_eq!(t.count(Encoding::O200k, ""), Counted::Tokens(0));
        assert!(t.is_loaded(Encoding::O200k));
    }

    /// Long runs of whitespace and long texts are counted whole, as tiktoken counts them
    /// (there is no backtracking limit to keep clear of).
    #[test]
    fn hostile_whitespace_and_long_text_are_counted_exactly() {
        let mut t = Tokenizers::default();
        let reference = tiktoken_rs::o200k_base().unwrap();
        for text in [
            format!("a{}b{}", " ".repeat(200_000), "word ".repeat(50_000)),
            format!("x{}y", "\n \t".repeat(30_000)),
            "z".repeat(300_000),
        ] {
            let n = t.count(Encoding::O200k, &text);
            assert_eq!(
                n,
                Counted::Tokens(reference.encode_ordinary(&text).len() as u64)
            );
        }
    }

    /// Events that straddle the record's blocks come back whole, in order, as do the elements
    /// of a JSON array stream.
    #[test]
    fn record_spans_blocks() {
        let mut r = StreamRecord::new(1 << 20);
        let mut a = StreamRecord::json_array(1 << 20);
        let n = 3 * BLOCK / 20;
        a.push(b"[");
        for i in 0..n {
            // Odd chunk sizes, so that the cuts fall anywhere.
            let doc = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 7));
            r.push(format!("data: {doc}\n\n").as_bytes());
            a.push(format!("{}{doc}", if i == 0 { "" } else { "," }).as_bytes());
        }
        a.push(b"]");
        assert!(r.blocks.len() >= 3, "{} blocks", r.blocks.len());
        assert!(r.blocks.iter().skip(1).all(|b| b.capacity() == BLOCK));
        assert!(r.blocks.iter().all(|b| b.len() <= BLOCK));
        for docs in [r.documents(1024), a.documents(1024)] {
            assert_eq!(docs.len(), n);
            for (i, d) in docs.iter().enumerate() {
                assert_eq!(d["i"], i);
            }
        }
    }

    #[test]
    fn record_is_bounded_and_gives_the_events_back() {
        let mut r = StreamRecord::new(128);
        r.push(b"data: {\"a\":");
        r.push(b"1}\n\ndata: not json\n\n: comment\ndata: {\"b\":\ndata: 2}\n\ndata: {}");
        let docs = r.documents(1024);
        // Split across chunks, spread over two data lines, unterminated at the end: all kept.
        assert_eq!(
            docs,
            vec![
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": 2}),
                serde_json::json!({})
            ]
        );
        // The event cap applies as it did live.
        assert_eq!(r.documents(8).len(), 1);
        r.push(&[b'x'; 60]);
        assert!(r.truncated);
        assert!(r.documents(1024).is_empty());
    }
}

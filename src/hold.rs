//! A request body on its way upstream, held only as long as a decision needs it and edited in
//! place (ARCHITECTURE.md, "The hold").
//!
//! The proxy layer replaces each chunk with what [`BodyEdit::release`] gives back: the bytes
//! that may go now, with the edits that fall in them applied. Bytes are kept in the filter's
//! memory rather than in Envoy's buffer, so a large body never meets Envoy's buffer limit (no
//! 413); the caller bounds how much is held.

/// The body between what went upstream and what arrived.
#[derive(Debug, Default)]
pub struct BodyEdit {
    /// Input bytes not yet released.
    pending: Vec<u8>,
    /// The input offset of `pending[0]`.
    from: u64,
    /// Input spans to replace (`start..end`, an empty span inserts), in order, none released.
    edits: Vec<(u64, u64, Vec<u8>)>,
    /// The most bytes held from one chunk to the next.
    pub held_max: usize,
}

impl BodyEdit {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// Bytes held (arrived, not released).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// The input offset of the first byte not yet released.
    pub fn released_to(&self) -> u64 {
        self.from
    }

    /// Replace input `start..end` with `with` when it is released. False when part of the span
    /// has gone upstream already, or it overlaps another edit: then nothing changes.
    pub fn edit(&mut self, start: u64, end: u64, with: Vec<u8>) -> bool {
        let arrived = self.from + self.pending.len() as u64;
        if start < self.from || end < start || end > arrived {
            return false;
        }
        let at = self.edits.partition_point(|(s, _, _)| *s < start);
        let clear_before = at == 0 || self.edits[at - 1].1 <= start;
        let clear_after = self.edits.get(at).is_none_or(|(s, _, _)| *s >= end);
        if !(clear_before && clear_after) {
            return false;
        }
        self.edits.insert(at, (start, end, with));
        true
    }

    /// Whether nothing is held and nothing is to be edited: a chunk may pass as it is.
    pub fn is_clear(&self) -> bool {
        self.pending.is_empty() && self.edits.is_empty()
    }

    /// Forget everything held without sending it (a refused request).
    pub fn drop_all(&mut self) {
        self.from += self.pending.len() as u64;
        self.pending.clear();
        self.edits.clear();
    }

    /// The bytes to send for input up to `upto` (never inside an edit's span), edits applied.
    pub fn release(&mut self, upto: u64) -> Vec<u8> {
        let arrived = self.from + self.pending.len() as u64;
        let mut upto = upto.clamp(self.from, arrived);
        if let Some((s, _, _)) = self.edits.iter().find(|(s, e, _)| *s < upto && upto < *e) {
            upto = *s;
        }
        let n = (upto - self.from) as usize;
        let mut out = Vec::with_capacity(n + 64);
        let mut at = self.from;
        let mut kept = Vec::new();
        for (s, e, with) in self.edits.drain(..) {
            if e > upto {
                kept.push((s, e, with));
                continue;
            }
            out.extend_from_slice(
                &self.pending[(at - self.from) as usize..(s - self.from) as usize],
            );
            out.extend_from_slice(&with);
            at = e;
        }
        out.extend_from_slice(&self.pending[(at - self.from) as usize..n]);
        self.edits = kept;
        self.pending.drain(..n);
        self.from = upto;
        self.held_max = self.held_max.max(self.pending.len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_where_they_fall_and_nothing_is_lost_at_any_cut() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#;
        let start = body.windows(8).position(|w| w == b"\"gpt-4o\"").unwrap() as u64;
        let close = (body.len() - 1) as u64;
        let want = br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#;
        // Every way to cut the body in three chunks, and release points anywhere.
        for a in 0..body.len() {
            for b in a..body.len() {
                let mut h = BodyEdit::default();
                let mut out = Vec::new();
                let mut edited = (false, false);
                for (i, chunk) in [&body[..a], &body[a..b], &body[b..]].iter().enumerate() {
                    h.push(chunk);
                    let arrived = h.released_to() + h.held() as u64;
                    if !edited.0 && arrived >= start + 8 {
                        edited.0 = h.edit(start, start + 8, b"\"gpt-4o-mini\"".to_vec());
                        assert!(edited.0);
                    }
                    if !edited.1 && arrived > close {
                        edited.1 = h.edit(
                            close,
                            close,
                            br#","stream_options":{"include_usage":true}"#.to_vec(),
                        );
                        assert!(edited.1);
                    }
                    // Hold from the model's start while it is incomplete, else release all.
                    let upto = if !edited.0 && arrived > start {
                        start
                    } else {
                        arrived
                    };
                    out.extend(h.release(if i == 2 { u64::MAX } else { upto }));
                }
                assert_eq!(out, want, "{a} {b}");
                assert!(h.is_clear());
            }
        }
    }

    #[test]
    fn released_bytes_cannot_be_edited() {
        let mut h = BodyEdit::default();
        h.push(b"abcdef");
        assert_eq!(h.release(3), b"abc");
        assert!(!h.edit(2, 4, b"x".to_vec()));
        assert!(h.edit(3, 4, b"X".to_vec()));
        assert!(!h.edit(3, 5, b"Y".to_vec()), "overlaps");
        assert_eq!(h.release(u64::MAX), b"Xef");
        h.push(b"gh");
        h.drop_all();
        assert!(h.is_clear());
        assert_eq!(h.released_to(), 8);
    }
}

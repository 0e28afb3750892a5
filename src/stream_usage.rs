//! Exact usage for OpenAI-style streams whose client did not ask for it.
//!
//! A streamed chat completion reports usage only when the request says
//! `"stream_options": {"include_usage": true}`; the provider then sends one extra chunk with empty
//! `choices` and the usage, just before `data: [DONE]`. When a client streams without
//! `stream_options`, Tally adds it and removes that extra chunk from what the client receives, so
//! the client sees the stream it asked for and the event gets exact usage.
//!
//! The smallest hold that works:
//! * Request: nothing is held. The body scanner reports the offset of the top-level object's
//!   closing `}`; by then every top-level key has been seen, so the one chunk that holds that
//!   brace is rewritten with the member inserted before it. The request's `content-length` is
//!   removed at the headers, since the body grows.
//! * Response: complete SSE events pass at once; only an event cut by a chunk boundary is held
//!   until its end arrives (providers send whole events per chunk, so in practice nothing waits),
//!   and the usage-only event is dropped.

use crate::scan::TopLevelScanner;

/// What is inserted before the request's closing brace.
pub const INSERTED_MEMBER: &[u8] = br#","stream_options":{"include_usage":true}"#;

/// The request keys the decision needs (scanned with the rest of the request's keys).
pub const REQUEST_KEYS: &[(&str, usize)] = &[("stream", 16), ("stream_options", 4096)];

/// Whether to add `stream_options.include_usage`: the request streams and says nothing about
/// stream options. A client that set `stream_options` (with or without usage) is left as it is.
pub fn should_insert(request: &TopLevelScanner) -> bool {
    request.is_done()
        && request.boolean("stream") == Some(true)
        && request.raw("stream_options").is_none()
        && !request.saw_key("stream_options")
}

/// `chunk` with the member inserted before the closing brace at `close`.
pub fn insert_member(chunk: &[u8], close: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + INSERTED_MEMBER.len());
    out.extend_from_slice(&chunk[..close]);
    out.extend_from_slice(INSERTED_MEMBER);
    out.extend_from_slice(&chunk[close..]);
    out
}

/// Removes the usage-only chunk from an SSE stream, passing everything else byte for byte.
#[derive(Debug)]
pub struct UsageChunkStripper {
    /// Bytes of an event not yet complete.
    pending: Vec<u8>,
    doc: TopLevelScanner,
    /// How many events were removed (one, normally).
    pub removed: u32,
}

impl Default for UsageChunkStripper {
    fn default() -> Self {
        UsageChunkStripper {
            pending: Vec::new(),
            doc: TopLevelScanner::new(&[("choices", 64), ("usage", 4096)]),
            removed: 0,
        }
    }
}

/// End offsets (exclusive) of the complete events in `buf`: an event ends after a blank line.
/// A CR at the very end might be the first half of a CRLF, so it ends nothing yet.
fn event_ends(buf: &[u8], out: &mut Vec<usize>) {
    let mut line_empty = true;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\r' => {
                if i + 1 == buf.len() {
                    return;
                }
                let end = if buf[i + 1] == b'\n' { i + 2 } else { i + 1 };
                if line_empty {
                    out.push(end);
                }
                line_empty = true;
                i = end;
                continue;
            }
            b'\n' => {
                if line_empty {
                    out.push(i + 1);
                }
                line_empty = true;
            }
            _ => line_empty = false,
        }
        i += 1;
    }
}

impl UsageChunkStripper {
    /// The bytes to send instead of `chunk`, or `None` to send `chunk` unchanged.
    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        if self.pending.is_empty() && chunk.is_empty() {
            return None;
        }
        let mut buf = std::mem::take(&mut self.pending);
        let unchanged_if_clean = buf.is_empty();
        buf.extend_from_slice(chunk);
        let mut ends = Vec::new();
        event_ends(&buf, &mut ends);
        let complete = ends.last().copied().unwrap_or(0);
        let mut out = Vec::with_capacity(buf.len());
        let mut start = 0;
        let mut dropped = false;
        for &end in &ends {
            if self.is_usage_only(&buf[start..end]) {
                self.removed += 1;
                dropped = true;
            } else {
                out.extend_from_slice(&buf[start..end]);
            }
            start = end;
        }
        if end_of_stream {
            // Whatever is left goes out as it is.
            out.extend_from_slice(&buf[complete..]);
        } else {
            self.pending = buf[complete..].to_vec();
        }
        if unchanged_if_clean && !dropped && self.pending.is_empty() {
            return None;
        }
        Some(out)
    }

    /// An event whose data is a chunk with a non-null `usage` and no choices: `[]`, `null`
    /// (some compatible providers) or no `choices` at all.
    fn is_usage_only(&mut self, event: &[u8]) -> bool {
        self.doc.reset();
        let mut any = false;
        for line in event.split(|&b| b == b'\n' || b == b'\r') {
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if any {
                    self.doc.feed(b"\n");
                }
                self.doc.feed(data);
                any = true;
            }
        }
        if !any || !self.doc.is_done() {
            return false;
        }
        // `[]`, `null` (some compatible providers), or no `choices` key at all.
        let empty_choices = match self.doc.raw("choices") {
            Some(c) => {
                let c: Vec<u8> = c
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                c == b"[]" || c == b"null"
            }
            None => !self.doc.saw_key("choices"),
        };
        let usage = self.doc.raw("usage").is_some_and(|u| u != b"null");
        empty_choices && usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_all(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, u32) {
        let mut s = UsageChunkStripper::default();
        let mut out = Vec::new();
        let mut prev = 0;
        for (n, &cut) in cuts
            .iter()
            .chain(std::iter::once(&stream.len()))
            .enumerate()
        {
            let chunk = &stream[prev..cut];
            let end = n == cuts.len();
            match s.on_chunk(chunk, end) {
                Some(b) => out.extend_from_slice(&b),
                None => out.extend_from_slice(chunk),
            }
            prev = cut;
        }
        (out, s.removed)
    }

    const WITH_USAGE: &str =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";

    fn without_usage(s: &str) -> String {
        s.replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
            "",
        )
    }

    #[test]
    fn removes_only_the_usage_chunk_at_every_split() {
        for stream in [WITH_USAGE.to_string(), WITH_USAGE.replace('\n', "\r\n")] {
            let want = without_usage(&stream.replace("\r\n", "\n"));
            let want = if stream.contains('\r') {
                want.replace('\n', "\r\n")
            } else {
                want
            };
            let b = stream.as_bytes();
            for at in 0..=b.len() {
                let (out, removed) = strip_all(b, &[at]);
                assert_eq!(String::from_utf8(out).unwrap(), want, "split at {at}");
                assert_eq!(removed, 1);
            }
            let cuts: Vec<usize> = (1..b.len()).collect();
            assert_eq!(strip_all(b, &cuts).0, want.as_bytes(), "byte by byte");
        }
    }

    #[test]
    fn whole_events_pass_untouched_without_copies() {
        let mut s = UsageChunkStripper::default();
        let ev = b"data: {\"choices\":[{\"delta\":{}}]}\n\n";
        assert_eq!(s.on_chunk(ev, false), None);
        assert_eq!(s.on_chunk(b"", true), None);
    }

    #[test]
    fn a_chunk_with_usage_and_choices_is_kept() {
        // Some compatible providers put usage on the last content chunk: that is content.
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (out, removed) = strip_all(stream, &[10]);
        assert_eq!(out, stream);
        assert_eq!(removed, 0);
    }

    #[test]
    fn null_choices_count_as_empty() {
        let stream = b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\":null,\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (out, removed) = strip_all(stream, &[3]);
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(removed, 1);
    }

    #[test]
    fn unterminated_tail_is_flushed_at_the_end() {
        let stream = b"data: {\"choices\":[]}\n\ndata: partial";
        let (out, _) = strip_all(stream, &[5, 30]);
        assert_eq!(out, stream);
    }

    #[test]
    fn insertion_before_the_closing_brace() {
        let mut s = TopLevelScanner::new(&[("stream", 16), ("stream_options", 4096)]);
        let body = br#"{"model":"m","stream":true} "#;
        let close = s.feed(body).unwrap();
        assert!(should_insert(&s));
        assert_eq!(
            insert_member(body, close),
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}} "#
        );
        for (doc, want) in [
            (&br#"{"stream":false}"#[..], false),
            (
                br#"{"stream":true,"stream_options":{"include_usage":false}}"#,
                false,
            ),
            (br#"{"stream":true,"stream_options":null}"#, false),
            (br#"{"model":"m"}"#, false),
        ] {
            let mut s = TopLevelScanner::new(&[("stream", 16), ("stream_options", 4096)]);
            s.feed(doc);
            assert_eq!(should_insert(&s), want, "{}", String::from_utf8_lossy(doc));
        }
    }
}

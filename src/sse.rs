//! Incremental parser for `text/event-stream` (HTML Living Standard, "Server-sent events").
//!
//! ```text
//! stream        = [ bom ] *event
//! event         = *( comment / field ) end-of-line
//! comment       = colon *any-char end-of-line
//! field         = 1*name-char [ colon [ space ] *any-char ] end-of-line
//! end-of-line   = ( cr lf / cr / lf )
//! ```
//!
//! Bytes arrive in chunks split anywhere, including between the CR and LF of one line ending. Only
//! the `event` and `data` fields matter for metering; `id`, `retry` and comments are skipped. An
//! event larger than the cap is dropped whole and counted rather than buffered without bound.

/// One dispatched event: its type (`message` when none was given) and its data lines joined by LF.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    event: String,
    has_data: bool,
    /// The previous chunk ended in CR: an LF at the start of the next one ends nothing.
    after_cr: bool,
    first_line: bool,
    max_event: usize,
    oversized: bool,
    /// Events dropped because they exceeded the cap.
    pub dropped: u32,
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        SseParser {
            line: Vec::with_capacity(256),
            data: Vec::with_capacity(256),
            event: String::new(),
            has_data: false,
            after_cr: false,
            first_line: true,
            max_event,
            oversized: false,
            dropped: 0,
        }
    }

    /// Parse a chunk, calling `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.push_line_bytes(rest);
                    return;
                }
                Some(p) => {
                    let line = &rest[..p];
                    let cr = rest[p] == b'\r';
                    rest = &rest[p + 1..];
                    if cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            None => self.after_cr = true,
                            Some(_) => {}
                        }
                    }
                    if self.line.is_empty() && !self.oversized {
                        // The usual case, a whole line inside the chunk: read it where it is. A
                        // line past the cap ends its event, dropped, as a buffered one would.
                        let line = if self.overflows(line.len()) {
                            &[][..]
                        } else {
                            line
                        };
                        self.take_line(line, on_event);
                    } else {
                        self.push_line_bytes(line);
                        self.end_line(on_event);
                    }
                }
            }
        }
    }

    /// The stream ended: an event left without its blank line is still dispatched, since a
    /// provider that omits the last blank line still meant it.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() {
            self.end_line(on_event);
        }
        self.dispatch(on_event);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.oversized || self.overflows(bytes.len()) {
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Whether `more` line bytes would take the event past the cap; if so the event is marked
    /// oversized and what it held is let go.
    fn overflows(&mut self, more: usize) -> bool {
        if self.line.len() + self.data.len() + more <= self.max_event {
            return false;
        }
        self.oversized = true;
        self.line.clear();
        self.data.clear();
        true
    }

    /// The buffered line is complete.
    fn end_line(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let buffered = std::mem::take(&mut self.line);
        self.take_line(&buffered, on_event);
        self.line = buffered;
        self.line.clear();
    }

    fn take_line(&mut self, mut line: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.first_line {
            self.first_line = false;
            if let [0xEF, 0xBB, 0xBF, tail @ ..] = line {
                line = tail;
            }
        }
        if line.is_empty() {
            if self.oversized {
                // The blank line ends the oversized event too.
                self.oversized = false;
                self.dropped = self.dropped.saturating_add(1);
                self.reset_event();
                return;
            }
            self.dispatch(on_event);
            return;
        }
        if self.oversized {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return,
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.has_data {
            let event = if self.event.is_empty() {
                "message"
            } else {
                self.event.as_str()
            };
            on_event(SseEvent {
                event,
                data: &self.data,
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |e: SseEvent<'_>| {
            out.push((
                e.event.to_string(),
                String::from_utf8_lossy(e.data).into_owned(),
            ))
        };
        for c in chunks {
            parser.feed(c, &mut push);
        }
        parser.finish(&mut push);
        out
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata: {}\n\ndata: line1\ndata:line2\nid: 7\nretry: 10\n\r: comment\rdata: x\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<(String, String)> {
        [
            ("message_start", "{\"a\":1}"),
            ("ping", "{}"),
            ("message", "line1\nline2"),
            ("message", "x"),
            ("message", "[DONE]"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn every_split_point() {
        for at in 0..=STREAM.len() {
            let mut p = SseParser::new(1 << 20);
            assert_eq!(
                collect(&mut p, &[&STREAM[..at], &STREAM[at..]]),
                expected(),
                "split at {at}"
            );
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        for a in 0..=STREAM.len() {
            for b in a..=STREAM.len() {
                let mut p = SseParser::new(1 << 20);
                assert_eq!(
                    collect(&mut p, &[&STREAM[..a], &STREAM[a..b], &STREAM[b..]]),
                    expected(),
                    "splits at {a},{b}"
                );
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut p = SseParser::new(1 << 20);
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&mut p, &chunks), expected());
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        let mut p = SseParser::new(1 << 20);
        assert_eq!(
            collect(&mut p, &[b"data: {\"usage\":1}"]),
            vec![("message".to_string(), "{\"usage\":1}".to_string())]
        );
    }

    #[test]
    fn oversized_event_is_dropped_and_counted() {
        let mut p = SseParser::new(16);
        let big = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        let got = collect(&mut p, &[big.as_bytes()]);
        assert_eq!(got, vec![("message".to_string(), "ok".to_string())]);
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn the_cap_drops_the_same_events_wherever_chunks_split() {
        // With a cap of 24: the first event fits (10 + 12 bytes of lines), the third's one line
        // does not, and the fourth's second line takes it over (10 + 15).
        let s: &[u8] = b"data: 0123456789\ndata: abcdef\n\ndata: ok\n\nevent: e\ndata: 0123456789012345678901\n\ndata: 0123456789\ndata: abcdefghi\n\ndata: z\n\n";
        let msg = |d: &str| ("message".to_string(), d.to_string());
        let mut p = SseParser::new(24);
        let whole = collect(&mut p, &[s]);
        assert_eq!(whole, vec![msg("0123456789\nabcdef"), msg("ok"), msg("z")]);
        assert_eq!(p.dropped, 2);
        for a in 0..=s.len() {
            for b in a..=s.len() {
                let mut p = SseParser::new(24);
                let got = collect(&mut p, &[&s[..a], &s[a..b], &s[b..]]);
                assert_eq!((got, p.dropped), (whole.clone(), 2), "splits at {a},{b}");
            }
        }
    }

    #[test]
    fn event_type_does_not_leak_into_next_event() {
        let mut p = SseParser::new(1024);
        let got = collect(&mut p, &[b"event: a\ndata: 1\n\ndata: 2\n\n"]);
        assert_eq!(got[1].0, "message");
    }
}

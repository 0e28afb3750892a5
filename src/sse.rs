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
//!
//! A sink that wants only some events (those holding a key) says where in the bytes ahead the
//! first one may begin; the whole events before that place are passed over without being split
//! into lines, which is most of a stream once usage is the only thing left to find.

/// One dispatched event: its type (`message` when none was given) and its data lines joined by LF.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a str,
    pub data: &'a [u8],
}

/// Where parsed events go.
pub trait SseSink {
    fn event(&mut self, e: SseEvent<'_>);

    /// Called where the parser stands between events, with the bytes ahead in this chunk: an
    /// offset before which nothing can matter to the sink (no event it wants starts or has any
    /// byte there). The whole events that end before it are passed over unparsed. 0, the
    /// default, has every event parsed.
    fn wanted_from(&mut self, _ahead: &[u8]) -> usize {
        0
    }
}

impl<F: FnMut(SseEvent<'_>)> SseSink for F {
    fn event(&mut self, e: SseEvent<'_>) {
        self(e)
    }
}

/// The length of the longest prefix of `bytes` (which begin at the start of a line) made of
/// whole events: it ends with the line end of a blank line. Only blank lines ending in LF are
/// looked for; a stream with CR-only line ends is parsed in full, as before.
fn whole_events_len(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while let Some(lf) = memchr::memrchr(b'\n', &bytes[..end]) {
        // The line end holding this LF starts at `eol` (CR LF or a lone LF); the line it ends is
        // blank when another line end comes right before it.
        let eol = if lf > 0 && bytes[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        if eol > 0 && matches!(bytes[eol - 1], b'\n' | b'\r') {
            return lf + 1;
        }
        end = lf;
    }
    0
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
    /// Events dropped because they exceeded the cap (of those parsed: events a sink had passed
    /// over are not counted).
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

    /// Parse a chunk, handing `sink` every event it completes (and asking it, between events,
    /// how much of the chunk it can do without).
    pub fn feed(&mut self, chunk: &[u8], sink: &mut dyn SseSink) {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        // Bytes of `rest` left to go before the sink is asked again: it already said nothing
        // before them can be passed over. Asking once per place keeps a chunk's cost linear.
        let mut ask_after = 0;
        while !rest.is_empty() {
            if ask_after == 0 && self.between_events() {
                let wanted = sink.wanted_from(rest).min(rest.len());
                let skip = whole_events_len(&rest[..wanted]);
                if skip > 0 {
                    // The first line (and its byte order mark) is behind too.
                    self.first_line = false;
                    rest = &rest[skip..];
                    if rest.is_empty() {
                        return;
                    }
                }
                ask_after = wanted - skip;
            }
            let before = rest.len();
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
                        self.take_line(line, sink);
                    } else {
                        self.push_line_bytes(line);
                        self.end_line(sink);
                    }
                }
            }
            ask_after = ask_after.saturating_sub(before - rest.len());
        }
    }

    /// Nothing of an event is held: the next line starts a new one.
    fn between_events(&self) -> bool {
        self.line.is_empty() && !self.has_data && self.event.is_empty() && !self.oversized
    }

    /// The stream ended: an event left without its blank line is still dispatched, since a
    /// provider that omits the last blank line still meant it.
    pub fn finish(&mut self, sink: &mut dyn SseSink) {
        if !self.line.is_empty() {
            self.end_line(sink);
        }
        self.dispatch(sink);
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
    fn end_line(&mut self, sink: &mut dyn SseSink) {
        let buffered = std::mem::take(&mut self.line);
        self.take_line(&buffered, sink);
        self.line = buffered;
        self.line.clear();
    }

    fn take_line(&mut self, mut line: &[u8], sink: &mut dyn SseSink) {
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
            self.dispatch(sink);
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

    fn dispatch(&mut self, sink: &mut dyn SseSink) {
        if self.has_data {
            let event = if self.event.is_empty() {
                "message"
            } else {
                self.event.as_str()
            };
            sink.event(SseEvent {
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

    /// Wants the events whose data holds `want`, and says where the first may begin.
    struct Wants {
        want: &'static [u8],
        got: Vec<(String, String)>,
    }

    impl SseSink for Wants {
        fn event(&mut self, e: SseEvent<'_>) {
            if memchr::memmem::find(e.data, self.want).is_some() {
                self.got
                    .push((e.event.to_string(), String::from_utf8_lossy(e.data).into()));
            }
        }

        fn wanted_from(&mut self, ahead: &[u8]) -> usize {
            memchr::memmem::find(ahead, self.want).unwrap_or(ahead.len())
        }
    }

    fn wanted(max: usize, want: &'static [u8], chunks: &[&[u8]]) -> (Vec<(String, String)>, u32) {
        let mut p = SseParser::new(max);
        let mut sink = Wants { want, got: vec![] };
        for c in chunks {
            p.feed(c, &mut sink);
        }
        p.finish(&mut sink);
        (sink.got, p.dropped)
    }

    #[test]
    fn events_passed_over_are_only_those_the_sink_does_not_want() {
        // Every kind of line end, comments, ids, an event name, multi-line data, a byte order
        // mark, an event over the cap (40) and one without its blank line; `K` marks the wanted.
        let s: &[u8] = b"\xEF\xBB\xBFdata: K0\n\n: c\r\nid: 1\r\ndata: a\r\n\r\nevent: e\ndata: b\ndata: K1\n\ndata: c\r\rdata: 0123456789012345678901234567890123456789\n\n: K in a comment\n\ndata: d\n\r\ndata: e\r\r\nevent: f\ndata: K2\r\n\r\ndata: g\n\ndata: K3";
        let mut p = SseParser::new(40);
        let all = collect(&mut p, &[s]);
        assert_eq!(p.dropped, 1);
        let expect: Vec<_> = all.into_iter().filter(|(_, d)| d.contains('K')).collect();
        assert_eq!(
            expect
                .iter()
                .map(|(e, d)| format!("{e}:{d}"))
                .collect::<Vec<_>>(),
            ["message:K0", "e:b\nK1", "f:K2", "message:K3"]
        );
        // The event over the cap holds no K: passed over, so never counted as dropped.
        assert_eq!(wanted(40, b"K", &[s]), (expect.clone(), 0));
        for a in 0..=s.len() {
            for b in a..=s.len() {
                let (got, _) = wanted(40, b"K", &[&s[..a], &s[a..b], &s[b..]]);
                assert_eq!(got, expect, "splits at {a},{b}");
            }
        }
        // Nothing wanted: nothing handed over, however the stream is cut.
        for a in 0..=s.len() {
            assert_eq!(wanted(40, b"Z", &[&s[..a], &s[a..]]).0, vec![]);
        }
    }

    #[test]
    fn whole_events_end_at_a_blank_line() {
        assert_eq!(whole_events_len(b"data: a\n\ndata: b\n"), 9);
        assert_eq!(whole_events_len(b"data: a\r\n\r\ndata: b"), 11);
        assert_eq!(whole_events_len(b"data: a\n\r\n"), 10);
        assert_eq!(whole_events_len(b"data: a\r\r\n"), 10);
        assert_eq!(whole_events_len(b"data: a\r\n\n"), 10);
        // A lone CR may still be followed by its LF in the next chunk: not taken.
        assert_eq!(whole_events_len(b"data: a\n\r"), 0);
        assert_eq!(whole_events_len(b"data: a\r\n"), 0);
        assert_eq!(whole_events_len(b"\ndata: a"), 0);
        assert_eq!(whole_events_len(b""), 0);
    }

    #[test]
    fn event_type_does_not_leak_into_next_event() {
        let mut p = SseParser::new(1024);
        let got = collect(&mut p, &[b"event: a\ndata: 1\n\ndata: 2\n\n"]);
        assert_eq!(got[1].0, "message");
    }
}

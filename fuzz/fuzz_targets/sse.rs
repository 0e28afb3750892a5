//! The SSE parser: no panic, and the same events however the stream is chunked; a sink that
//! wants only some events (and lets the parser pass over the rest) gets exactly those.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::sse::{SseEvent, SseParser, SseSink};

fn events(chunks: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    let mut p = SseParser::new(4096);
    let mut out = Vec::new();
    let mut push = |e: SseEvent<'_>| out.push((e.event.to_string(), e.data.to_vec()));
    for c in chunks {
        p.feed(c, &mut push);
    }
    p.finish(&mut push);
    out
}

/// The events whose data holds `mark`; the first place it appears is where one may begin.
struct Marked {
    mark: u8,
    got: Vec<(String, Vec<u8>)>,
}

impl SseSink for Marked {
    fn event(&mut self, e: SseEvent<'_>) {
        if e.data.contains(&self.mark) {
            self.got.push((e.event.to_string(), e.data.to_vec()));
        }
    }

    fn wanted_from(&mut self, ahead: &[u8]) -> usize {
        ahead
            .iter()
            .position(|b| *b == self.mark)
            .unwrap_or(ahead.len())
    }
}

fn marked(mark: u8, chunks: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    let mut p = SseParser::new(4096);
    let mut sink = Marked { mark, got: vec![] };
    for c in chunks {
        p.feed(c, &mut sink);
    }
    p.finish(&mut sink);
    sink.got
}

fuzz_target!(|data: &[u8]| {
    let [cut, mark, stream @ ..] = data else {
        return;
    };
    let at = usize::from(*cut).min(stream.len());
    let whole = events(&[stream]);
    assert_eq!(whole, events(&[&stream[..at], &stream[at..]]));
    // Data lines are joined by LF, which is not in the raw bytes where CR ends the lines.
    if *mark != b'\n' {
        let want: Vec<_> = whole.into_iter().filter(|(_, d)| d.contains(mark)).collect();
        assert_eq!(marked(*mark, &[&stream[..at], &stream[at..]]), want);
    }
});

//! The SSE parser: no panic, and the same events however the stream is chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::sse::SseParser;

fn events(chunks: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    let mut p = SseParser::new(4096);
    let mut out = Vec::new();
    let mut push = |e: tally::sse::SseEvent<'_>| out.push((e.event.to_string(), e.data.to_vec()));
    for c in chunks {
        p.feed(c, &mut push);
    }
    p.finish(&mut push);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(stream.len());
    assert_eq!(events(&[stream]), events(&[&stream[..at], &stream[at..]]));
});

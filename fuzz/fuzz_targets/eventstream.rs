//! The event-stream decoder: no panic, and the same messages and the same fault however the
//! stream is chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::eventstream::{Decoder, Error, Message};

type Owned = (Vec<Option<String>>, Vec<u8>);

fn decode(chunks: &[&[u8]]) -> (Vec<Owned>, Option<Error>) {
    // A small cap, so that lengths over it are reached.
    let mut d = Decoder::new(4096);
    let mut out = Vec::new();
    let mut push = |m: Message<'_>| {
        let headers = [
            m.message_type,
            m.event_type,
            m.content_type,
            m.exception_type,
            m.error_code,
            m.error_message,
        ];
        out.push((
            headers.iter().map(|h| h.map(str::to_string)).collect(),
            m.payload.to_vec(),
        ))
    };
    for c in chunks {
        d.push(c, &mut push);
    }
    let err = d.finish();
    assert_eq!(d.messages() as usize, out.len());
    (out, err)
}

fuzz_target!(|data: &[u8]| {
    let [cut, stream @ ..] = data else {
        return;
    };
    let at = usize::from(*cut).min(stream.len());
    let whole = decode(&[stream]);
    assert_eq!(whole, decode(&[&stream[..at], &stream[at..]]));
    let singles: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, decode(&singles));
});

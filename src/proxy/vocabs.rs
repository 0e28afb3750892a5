//! Events whose output waits to be counted, and the fetch of the vocabulary they wait for.
//!
//! The wasm filter embeds no vocabulary (`crate::vocab`): the first stream that needs counting
//! holds its event here while the root context fetches the vocabulary from the collector
//! (`GET /v1/vocab/NAME` on the collector cluster). Once it is here the held events are counted
//! and queued as if they had never waited. Held events are bounded in number, bytes and time:
//! past any bound, or when the collector cannot serve the vocabulary, an event goes without an
//! output count (as one whose tokenizer failed always did) rather than wait or be lost.

use crate::event::Event;
use crate::exchange::Uncounted;
use crate::measure::{Encoding, Tokenizers};
use crate::outbox::Outbox;
use std::collections::VecDeque;

/// Events held at most, and bytes of their text.
const MAX_HELD_EVENTS: usize = 256;
const MAX_HELD_BYTES: usize = 8 << 20;

/// How long an event waits for its vocabulary before it goes uncounted.
pub const MAX_HOLD_MS: u64 = 30_000;

/// Waits between failed fetches: doubling from the first to the last.
const RETRY_FIRST_MS: u64 = 1_000;
const RETRY_LAST_MS: u64 = 60_000;

/// A fetch takes at least this long to time out: the vocabulary is about a megabyte.
pub const FETCH_TIMEOUT_MS: u64 = 10_000;

#[derive(Default)]
pub struct Held {
    items: VecDeque<(u64, Event, Uncounted)>,
    bytes: usize,
    /// Events that went without an output count, since the VM started.
    pub uncounted: u64,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Hold an event until its vocabulary is here; `release` gets the events that must go
    /// now, uncounted, to keep within the bounds (the oldest).
    pub fn hold(
        &mut self,
        now_ms: u64,
        event: Event,
        rest: Uncounted,
        mut release: impl FnMut(Event),
    ) {
        self.bytes += rest.len();
        self.items.push_back((now_ms, event, rest));
        while self.items.len() > MAX_HELD_EVENTS || self.bytes > MAX_HELD_BYTES {
            let Some((_, e, rest)) = self.items.pop_front() else {
                break;
            };
            release(self.settle(e, rest, None));
        }
    }

    fn settle(&mut self, mut e: Event, rest: Uncounted, t: Option<&mut Tokenizers>) -> Event {
        self.bytes -= rest.len();
        rest.settle(&mut e, t);
        if e.measured_output_tokens.is_none() {
            self.uncounted += 1;
        }
        e
    }

    /// The encoding the oldest held event waits for.
    pub fn wanted(&self) -> Option<Encoding> {
        self.items.front().map(|(_, _, rest)| rest.enc)
    }

    /// Release the events that can be counted now, those that waited too long (uncounted), and
    /// with `give_up` those waiting for that encoding (uncounted), oldest first.
    pub fn release(
        &mut self,
        now_ms: u64,
        t: &mut Tokenizers,
        give_up: Option<Encoding>,
        mut release: impl FnMut(Event),
    ) {
        let mut keep = VecDeque::with_capacity(self.items.len());
        while let Some((since, e, rest)) = self.items.pop_front() {
            if t.is_loaded(rest.enc) {
                release(self.settle(e, rest, Some(&mut *t)));
            } else if give_up == Some(rest.enc) || now_ms.saturating_sub(since) >= MAX_HOLD_MS {
                release(self.settle(e, rest, None));
            } else {
                keep.push_back((since, e, rest));
            }
        }
        self.items = keep;
    }

    /// Release every held event, counted where the vocabulary is here (a VM that stops): as if
    /// every wait had run out.
    pub fn release_all(&mut self, t: &mut Tokenizers, release: impl FnMut(Event)) {
        self.release(u64::MAX, t, None, release);
    }
}

/// Where released events go: into the outbox, queued at `now`.
pub fn into_outbox(outbox: &mut Outbox, now: u64) -> impl FnMut(Event) + '_ {
    move |e| {
        outbox.push_with(now, |buf| e.write_json(buf));
    }
}

/// The state of the vocabulary fetch.
#[derive(Default)]
pub struct Fetch {
    /// The call in flight, and what for.
    pub in_flight: Option<(u32, Encoding)>,
    next_ms: u64,
    wait_ms: u64,
}

impl Fetch {
    /// Whether a fetch may start now.
    pub fn due(&self, now_ms: u64) -> bool {
        self.in_flight.is_none() && now_ms >= self.next_ms
    }

    pub fn succeeded(&mut self) {
        self.wait_ms = 0;
    }

    /// A failed fetch: the next waits longer, up to [`RETRY_LAST_MS`].
    pub fn failed(&mut self, now_ms: u64) {
        self.wait_ms = (self.wait_ms * 2).clamp(RETRY_FIRST_MS, RETRY_LAST_MS);
        self.next_ms = now_ms + self.wait_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::event;
    use crate::usage::{TokenSource, Usage};

    fn held(enc: Encoding, text: &str) -> (Event, Uncounted) {
        let mut e = event();
        e.output_tokens = None;
        e.measured_output_tokens = None;
        e.token_source = None;
        let reported = Usage {
            input: 40,
            ..Default::default()
        };
        (e, Uncounted::new(enc, text, Some(reported)))
    }

    /// A tokenizer that has fetched nothing, and one given the vocabulary as the collector
    /// serves it.
    fn tokenizers(with: Option<Encoding>) -> Tokenizers {
        let mut t = Tokenizers::default();
        if let Some(enc) = with {
            t.provide(enc, crate::vocab::packed(enc).unwrap()).unwrap();
        }
        t
    }

    #[test]
    fn held_events_are_counted_once_their_vocabulary_is_here() {
        let mut h = Held::default();
        let mut out = Vec::new();
        let (e, rest) = held(Encoding::O200k, "Hello, world!");
        h.hold(0, e, rest, |e| out.push(e));
        let (e, rest) = held(Encoding::Cl100k, "Hello, world!");
        h.hold(10, e, rest, |e| out.push(e));
        assert!(out.is_empty());
        assert_eq!(h.wanted(), Some(Encoding::O200k));
        // Nothing here yet, nothing too old: both wait.
        h.release(1_000, &mut tokenizers(None), None, |e| out.push(e));
        assert_eq!(h.len(), 2);
        // o200k arrives: its event goes, counted, with the input the provider reported.
        h.release(1_000, &mut tokenizers(Some(Encoding::O200k)), None, |e| {
            out.push(e)
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].output_tokens, Some(4));
        assert_eq!(out[0].measured_output_tokens, Some(4));
        assert_eq!(out[0].input_tokens, Some(40));
        assert_eq!(out[0].token_source, Some(TokenSource::Measured));
        assert_eq!(h.wanted(), Some(Encoding::Cl100k));
        assert_eq!((h.len(), h.uncounted), (1, 0));
    }

    #[test]
    fn held_events_go_uncounted_when_too_old_refused_or_too_many() {
        let mut h = Held::default();
        let mut out = Vec::new();
        let (e, rest) = held(Encoding::O200k, "a");
        h.hold(0, e, rest, |e| out.push(e));
        let (e, rest) = held(Encoding::Cl100k, "b");
        h.hold(5_000, e, rest, |e| out.push(e));
        // The first waited its time out; the second not yet.
        h.release(MAX_HOLD_MS, &mut tokenizers(None), None, |e| out.push(e));
        assert_eq!((out.len(), h.len(), h.uncounted), (1, 1, 1));
        let gone = &out[0];
        assert_eq!(gone.output_tokens, None);
        assert_eq!(gone.token_source, None);
        assert_eq!(
            gone.input_tokens, None,
            "no usage at all, as a failed count gives"
        );
        // A collector without the vocabulary: its events go at once.
        h.release(
            MAX_HOLD_MS,
            &mut tokenizers(None),
            Some(Encoding::Cl100k),
            |e| out.push(e),
        );
        assert_eq!((out.len(), h.len(), h.uncounted), (2, 0, 2));
        // Past the bound in number, the oldest go.
        out.clear();
        for i in 0..MAX_HELD_EVENTS + 3 {
            let (e, rest) = held(Encoding::O200k, "x");
            h.hold(i as u64, e, rest, |e| out.push(e));
        }
        assert_eq!((out.len(), h.len()), (3, MAX_HELD_EVENTS));
        // In bytes too.
        let mut h = Held::default();
        let big = "y".repeat(MAX_HELD_BYTES / 2 + 1);
        for _ in 0..2 {
            let (e, rest) = held(Encoding::O200k, &big);
            h.hold(0, e, rest, |e| out.push(e));
        }
        assert_eq!(h.len(), 1);
        // A VM that stops takes everything with it, counted where it can be.
        let mut t = tokenizers(Some(Encoding::O200k));
        out.clear();
        h.release_all(&mut t, |e| out.push(e));
        assert_eq!(out.len(), 1);
        assert!(out[0].measured_output_tokens.is_some());
        assert!(h.is_empty());
    }

    #[test]
    fn failed_fetches_wait_longer_each_time_up_to_a_minute() {
        let mut f = Fetch::default();
        assert!(f.due(0));
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..9 {
            f.failed(now);
            let next = (now..now + 120_000).find(|&t| f.due(t)).unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(
            waits,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        f.in_flight = Some((7, Encoding::O200k));
        assert!(!f.due(now + 1_000_000));
        f.in_flight = None;
        f.succeeded();
        f.failed(now);
        assert!(f.due(now + 1_000));
    }
}

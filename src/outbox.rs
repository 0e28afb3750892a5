//! The bounded queue of events waiting for the collector, and when to send them.
//!
//! Events are kept as NDJSON lines. A batch goes out when `batch_max` events wait or the oldest
//! has waited `flush_interval`; one batch is in flight at a time, and its events stay at the head
//! of the queue until the collector accepts them, so a failed call loses nothing and is retried
//! with exponential backoff. When the queue is full, new events are dropped and counted: memory
//! stays bounded whatever the collector does. Nothing is retried for ever: an event still
//! undelivered after `max_age` is dropped and counted. A batch the collector rejects as malformed (400,
//! 413) is dropped and counted too, since sending it again would fail again.

use std::collections::VecDeque;

const BACKOFF_START_MS: u64 = 500;
const BACKOFF_MAX_MS: u64 = 30_000;
/// Bytes per block of the queue: about a hundred events.
const BLOCK: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub queued: u64,
    pub sent: u64,
    pub retried: u64,
    pub dropped_full: u64,
    pub dropped_rejected: u64,
    pub dropped_expired: u64,
    /// Events taken over from a VM that stopped (see `handoff`); counted there as queued.
    pub adopted: u64,
}

/// How a batch call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// The collector refused this batch for good (400, 413): retrying cannot help.
    Rejected,
    /// Network failure, timeout, 401, 429, 5xx: try again later.
    Retry,
}

impl Outcome {
    pub fn from_status(status: Option<u16>) -> Outcome {
        match status {
            Some(200..=299) => Outcome::Accepted,
            Some(400 | 413 | 422) => Outcome::Rejected,
            _ => Outcome::Retry,
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    /// The waiting events' NDJSON lines, each with its newline, back to back in blocks of
    /// [`BLOCK`] bytes (a line never spans two): an event costs its bytes, not an allocation of
    /// its own, and memory follows the queue without the spare capacity and the copies of one
    /// buffer that doubles as it grows.
    blocks: VecDeque<Vec<u8>>,
    /// Where the oldest line starts in the first block.
    head: usize,
    /// Where an event is written before it is queued; kept from one event to the next.
    scratch: Vec<u8>,
    /// (queued at, length of the line), oldest first.
    lines: VecDeque<(u64, usize)>,
    max_age_ms: u64,
    batch_max: usize,
    queue_max: usize,
    flush_interval_ms: u64,
    /// Events of the batch in flight (the head of the queue).
    in_flight: usize,
    /// When the oldest waiting event was queued.
    oldest_ms: Option<u64>,
    not_before_ms: u64,
    backoff_ms: u64,
    pub counters: Counters,
}

impl Outbox {
    pub fn new(batch_max: usize, queue_max: usize, flush_interval_ms: u64) -> Self {
        Outbox {
            blocks: VecDeque::new(),
            head: 0,
            scratch: Vec::new(),
            lines: VecDeque::new(),
            max_age_ms: u64::MAX,
            batch_max: batch_max.max(1),
            queue_max: queue_max.max(1),
            flush_interval_ms,
            in_flight: 0,
            oldest_ms: None,
            not_before_ms: 0,
            backoff_ms: BACKOFF_START_MS,
            counters: Counters::default(),
        }
    }

    /// Drop events that have waited longer than this (default: never).
    pub fn with_max_age(mut self, max_age_ms: u64) -> Self {
        self.max_age_ms = max_age_ms;
        self
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Queue one serialized event; false (and counted) when the queue is full.
    #[cfg(test)]
    fn push(&mut self, line: &str, now_ms: u64) -> bool {
        self.push_with(now_ms, |buf| buf.extend_from_slice(line.as_bytes()))
    }

    /// Queue one event, written by `write` as one JSON line (UTF-8, no newline), as
    /// [`crate::event::Event::write_json`] writes it. False (and counted, and `write` not
    /// called) when the queue is full.
    pub fn push_with(&mut self, now_ms: u64, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.lines.len() >= self.queue_max {
            self.counters.dropped_full += 1;
            return false;
        }
        if self.lines.len() == self.in_flight {
            self.oldest_ms = Some(now_ms);
        }
        self.scratch.clear();
        write(&mut self.scratch);
        self.scratch.push(b'\n');
        let len = self.scratch.len();
        let fits = self
            .blocks
            .back()
            .is_some_and(|b| b.capacity() - b.len() >= len);
        if !fits {
            self.blocks.push_back(Vec::with_capacity(BLOCK.max(len)));
        }
        if let Some(block) = self.blocks.back_mut() {
            block.extend_from_slice(&self.scratch);
        }
        self.lines.push_back((now_ms, len));
        self.counters.queued += 1;
        true
    }

    /// Forget the `n` oldest events, and each block once all of its lines are gone (the last
    /// one is kept, emptied, for the next events).
    fn pop_front(&mut self, n: usize) {
        for (_, len) in self.lines.drain(..n.min(self.lines.len())) {
            self.head += len;
            if self.blocks.front().is_some_and(|b| self.head >= b.len()) {
                self.head = 0;
                if self.blocks.len() > 1 {
                    self.blocks.pop_front();
                } else if let Some(b) = self.blocks.front_mut() {
                    b.clear();
                }
            }
        }
    }

    /// The NDJSON body of the next batch, if one is due now. The caller must report its outcome
    /// with [`Outbox::complete`] (or [`Outbox::abandon`] if it could not be sent at all).
    pub fn take_batch(&mut self, now_ms: u64) -> Option<(Vec<u8>, usize)> {
        if self.in_flight > 0 {
            return None;
        }
        // Events older than the limit go, counted: nothing is retried for ever.
        let expired = self
            .lines
            .iter()
            .take_while(|(t, _)| now_ms.saturating_sub(*t) > self.max_age_ms)
            .count();
        if expired > 0 {
            self.pop_front(expired);
            self.counters.dropped_expired += expired as u64;
        }
        if self.lines.is_empty() || now_ms < self.not_before_ms {
            return None;
        }
        let full = self.lines.len() >= self.batch_max;
        let waited = self
            .oldest_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.flush_interval_ms);
        if !full && !waited {
            return None;
        }
        let n = self.lines.len().min(self.batch_max);
        let body = self.copy_lines(n);
        self.in_flight = n;
        Some((body, n))
    }

    /// The `n` oldest lines, back to back.
    fn copy_lines(&self, n: usize) -> Vec<u8> {
        let size: usize = self.lines.iter().take(n).map(|&(_, len)| len).sum();
        let mut body = Vec::with_capacity(size);
        let (mut block, mut at) = (0, self.head);
        for &(_, len) in self.lines.iter().take(n) {
            if self.blocks.get(block).is_some_and(|b| at >= b.len()) {
                block += 1;
                at = 0;
            }
            let line = self.blocks.get(block).and_then(|b| b.get(at..at + len));
            body.extend_from_slice(line.unwrap_or_default());
            at += len;
        }
        body
    }

    /// Every waiting event, the batch in flight included, as NDJSON: what a stopping VM hands
    /// over (see `handoff`).
    pub fn export(&self) -> Vec<u8> {
        self.copy_lines(self.lines.len())
    }

    /// Queue the NDJSON lines another VM handed over, queued since `queued_ms` (so that
    /// `max_age` still counts from then), and due at once (a backoff in progress still holds).
    /// Returns how many were taken; the rest did not fit and are counted as dropped.
    pub fn adopt(&mut self, ndjson: &[u8], queued_ms: u64) -> usize {
        let mut taken = 0;
        for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if self.push_with(queued_ms, |buf| buf.extend_from_slice(line)) {
                self.counters.queued -= 1;
                self.counters.adopted += 1;
                taken += 1;
            }
        }
        if taken > 0 {
            self.oldest_ms = Some(0);
        }
        taken
    }

    /// Room left in the queue, in events.
    pub fn room(&self) -> usize {
        self.queue_max.saturating_sub(self.lines.len())
    }

    /// A number that changes whenever the queue's content does (for the hand-over record).
    pub fn generation(&self) -> u64 {
        let c = &self.counters;
        c.queued + c.adopted + c.sent + c.dropped_full + c.dropped_rejected + c.dropped_expired
    }

    /// The batch in flight ended.
    pub fn complete(&mut self, outcome: Outcome, now_ms: u64) {
        let n = self.in_flight;
        self.in_flight = 0;
        match outcome {
            Outcome::Accepted | Outcome::Rejected => {
                self.pop_front(n);
                if outcome == Outcome::Accepted {
                    self.counters.sent += n as u64;
                } else {
                    self.counters.dropped_rejected += n as u64;
                }
                self.backoff_ms = BACKOFF_START_MS;
                self.not_before_ms = 0;
                self.oldest_ms = if self.lines.is_empty() {
                    None
                } else {
                    // The rest waited at least as long as this call took; send it soon.
                    Some(now_ms.saturating_sub(self.flush_interval_ms))
                };
            }
            Outcome::Retry => {
                self.counters.retried += n as u64;
                self.not_before_ms = now_ms + self.backoff_ms;
                self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
                // Due as soon as the backoff ends.
                self.oldest_ms = Some(0);
            }
        }
    }

    /// Make whatever waits due at once (shutdown).
    pub fn flush_now(&mut self) {
        if self.lines.len() > self.in_flight {
            self.oldest_ms = Some(0);
            self.not_before_ms = 0;
        }
    }

    /// The call could not even be dispatched (e.g. the cluster is missing): back off.
    pub fn abandon(&mut self, now_ms: u64) {
        self.complete(Outcome::Retry, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &[u8]) -> Vec<String> {
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn flushes_by_size_and_by_time() {
        let mut o = Outbox::new(3, 10, 1000);
        o.push("a", 0);
        o.push("b", 10);
        assert!(o.take_batch(500).is_none(), "not full, not old enough");
        let (body, n) = o.take_batch(1000).unwrap();
        assert_eq!((lines(&body), n), (vec!["a".into(), "b".into()], 2));
        o.complete(Outcome::Accepted, 1001);
        for x in ["c", "d", "e", "f"] {
            o.push(x, 1100);
        }
        let (body, n) = o.take_batch(1100).unwrap();
        assert_eq!((lines(&body).len(), n), (3, 3), "full batch goes at once");
        assert!(o.take_batch(1100).is_none(), "one batch in flight");
        o.complete(Outcome::Accepted, 1101);
        assert_eq!(o.counters.sent, 5);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn failures_keep_events_and_back_off() {
        let mut o = Outbox::new(10, 10, 100);
        o.push("a", 0);
        let (_, n) = o.take_batch(100).unwrap();
        assert_eq!(n, 1);
        o.complete(Outcome::Retry, 100);
        assert!(o.take_batch(599).is_none(), "backing off 500 ms");
        o.push("b", 300);
        let (body, _) = o.take_batch(600).unwrap();
        assert_eq!(lines(&body), vec!["a", "b"], "order kept, nothing lost");
        o.complete(Outcome::Retry, 600);
        assert!(o.take_batch(1599).is_none(), "backoff doubled to 1 s");
        assert!(o.take_batch(1600).is_some());
        o.complete(Outcome::Accepted, 1600);
        assert_eq!(o.counters.sent, 2);
        assert_eq!(o.counters.retried, 3);
        assert!(o.is_empty());
    }

    #[test]
    fn batches_are_the_waiting_lines_in_order_across_blocks() {
        // Against a plain list of lines: pushes, batches that succeed, fail or are refused.
        // Lines of up to 40 KB fill blocks in one to a few lines, and every 50th is longer than
        // a block, so lines meet block ends in every way.
        let mut o = Outbox::new(3, 8, 0);
        let mut model: VecDeque<String> = VecDeque::new();
        let (mut next, mut most_blocks) = (0, 0);
        for step in 0..400u64 {
            for _ in 0..(step % 7) {
                let pad = if next % 50 == 49 {
                    BLOCK + 10
                } else {
                    next * 7919 % 40_000
                };
                let line = format!("{{\"n\":{next},\"pad\":\"{}\"}}", "x".repeat(pad));
                next += 1;
                let kept = o.push_with(step, |buf| buf.extend_from_slice(line.as_bytes()));
                assert_eq!(kept, model.len() < 8);
                if kept {
                    model.push_back(line);
                }
            }
            most_blocks = most_blocks.max(o.blocks.len());
            // No block ever grew past its first size.
            assert!(o.blocks.iter().all(|b| b.capacity() <= BLOCK + 64));
            let Some((body, n)) = o.take_batch(step) else {
                assert!(model.is_empty());
                continue;
            };
            let want: Vec<String> = model.iter().take(3).cloned().collect();
            assert_eq!((lines(&body), n), (want, model.len().min(3)));
            let outcome = [Outcome::Accepted, Outcome::Retry, Outcome::Rejected][step as usize % 3];
            o.complete(outcome, step);
            // No backoff in this test: a retry may go again at once.
            o.not_before_ms = 0;
            if outcome != Outcome::Retry {
                model.drain(..n);
            }
            assert_eq!(o.len(), model.len());
        }
        assert!(o.counters.dropped_full > 0 && o.counters.sent > 100);
        assert!(most_blocks >= 4, "{most_blocks}");
        // Once empty, one block is left for the next events.
        while let Some((_, n)) = o.take_batch(1_000) {
            o.complete(Outcome::Accepted, 1_000);
            assert!(n > 0);
        }
        assert!(o.is_empty() && o.blocks.len() == 1 && o.blocks[0].is_empty());
    }

    #[test]
    fn full_queue_drops_new_events_and_counts_them() {
        let mut o = Outbox::new(2, 3, 100);
        for i in 0..5 {
            o.push(&i.to_string(), 0);
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.counters.dropped_full, 2);
    }

    #[test]
    fn events_are_not_retried_for_ever() {
        let mut o = Outbox::new(10, 10, 100).with_max_age(60_000);
        o.push("old", 0);
        o.take_batch(100).unwrap();
        o.complete(Outcome::Retry, 100);
        o.push("new", 30_000);
        let (body, _) = o.take_batch(61_000).unwrap();
        assert_eq!(lines(&body), vec!["new"]);
        assert_eq!(o.counters.dropped_expired, 1);
    }

    #[test]
    fn rejected_batches_are_dropped_and_counted() {
        let mut o = Outbox::new(2, 10, 100);
        o.push("bad", 0);
        o.take_batch(100).unwrap();
        o.complete(Outcome::from_status(Some(400)), 100);
        assert!(o.is_empty());
        assert_eq!(o.counters.dropped_rejected, 1);
        assert_eq!(Outcome::from_status(None), Outcome::Retry);
        assert_eq!(Outcome::from_status(Some(503)), Outcome::Retry);
        assert_eq!(Outcome::from_status(Some(202)), Outcome::Accepted);
    }

    #[test]
    fn export_and_adopt_move_every_waiting_event_once() {
        let mut a = Outbox::new(2, 100, 1000);
        for i in 0..5 {
            assert!(a.push(&format!("{{\"n\":{i}}}"), 0));
        }
        // A batch in flight is handed over too: the VM may die before its answer.
        let (batch, n) = a.take_batch(5000).unwrap();
        assert_eq!(n, 2);
        let all = a.export();
        assert!(all.starts_with(&batch));
        assert_eq!(lines(&all).len(), 5);

        let mut b = Outbox::new(200, 4, 60_000);
        assert!(b.push("{\"own\":1}", 0));
        assert_eq!(b.room(), 3);
        let before = b.generation();
        assert_eq!(b.adopt(&all, 100_000), 3);
        assert_ne!(b.generation(), before);
        assert_eq!(b.room(), 0);
        assert_eq!(b.counters.queued, 1);
        assert_eq!(b.counters.adopted, 3);
        assert_eq!(b.counters.dropped_full, 2);
        // Adopted events are due at once, not after another flush interval.
        let (body, n) = b.take_batch(100_001).unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            lines(&body),
            ["{\"own\":1}", "{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]
        );
    }
}

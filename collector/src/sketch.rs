//! A DDSketch (Masson, Rim, Lee: "DDSketch: a fast and fully-mergeable quantile sketch with
//! relative-error guarantees", VLDB 2019) for latencies in milliseconds.
//!
//! A value `v > 0` lands in bucket `ceil(log_γ(v))` with `γ = (1 + α) / (1 − α)`; a quantile is
//! answered with `2 γ^i / (γ + 1)` for the bucket holding its rank, which is within a relative
//! error `α` of the true value. Here `α = 1 %`. Sketches merge by adding bucket counts, so
//! per-minute sketches roll up into hours, days and any range exactly as if built at once.
//! Values at or below 1 µs share one bucket (reported as 0.001 ms).
//!
//! Stored as a blob: a version byte, then `(bucket delta, count)` pairs as LEB128 varints,
//! buckets ascending (zig-zag for the first, since buckets of values below 1 ms are negative).

/// Relative accuracy of every quantile.
pub const ALPHA: f64 = 0.01;
const MIN_VALUE: f64 = 0.001;
const VERSION: u8 = 1;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

/// Up to [`FEW`] buckets are kept inline, ascending: most rollup rows a batch touches hold a
/// handful of events, and a heap array per row and per sketch was a fifth of counting an event
/// into its rows (allocations, and a cache miss each). Past that, counts per bucket, dense from
/// `offset` (merging thousands of rollup rows is then additions into one array, with no map to
/// rebalance).
#[derive(Debug, Clone, Default)]
pub struct Sketch {
    /// (bucket, count), ascending; used while `counts` is empty.
    few: [(i32, u32); FEW],
    nfew: u8,
    offset: i32,
    counts: Vec<u64>,
    count: u64,
}

const FEW: usize = 4;

/// Equal when they count the same values, whichever form holds them.
impl PartialEq for Sketch {
    fn eq(&self, other: &Sketch) -> bool {
        self.count == other.count && self.buckets().eq(other.buckets())
    }
}
impl Eq for Sketch {}

/// The bucket a value lands in.
pub fn bucket(v: f64) -> i32 {
    let v = if v.is_finite() {
        v.max(MIN_VALUE)
    } else {
        MIN_VALUE
    };
    (v.ln() / gamma().ln()).ceil() as i32
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

impl Sketch {
    /// The counter of bucket `k` in the dense form, growing the array to reach it (with room
    /// to spare, so that a row's buckets arriving one by one do not copy it each time).
    fn slot(&mut self, k: i32) -> &mut u64 {
        if self.counts.is_empty() {
            self.offset = k;
        }
        if k < self.offset {
            let grow = ((self.offset - k) as usize).max(self.counts.len() / 2);
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset -= grow as i32;
        }
        let i = (k - self.offset) as usize;
        if i >= self.counts.len() {
            let len = (i + 1).max(self.counts.len() + self.counts.len() / 2);
            self.counts.resize(len, 0);
        }
        &mut self.counts[i]
    }

    /// Add `c` to bucket `k` (the sketch's total aside).
    fn bump(&mut self, k: i32, c: u64) {
        if self.counts.is_empty() {
            let n = self.nfew as usize;
            let at = self.few[..n].partition_point(|e| e.0 < k);
            if at < n && self.few[at].0 == k {
                if let Some(sum) = u32::try_from(c)
                    .ok()
                    .and_then(|c| self.few[at].1.checked_add(c))
                {
                    self.few[at].1 = sum;
                    return;
                }
            } else if n < FEW {
                if let Ok(c) = u32::try_from(c) {
                    self.few.copy_within(at..n, at + 1);
                    self.few[at] = (k, c);
                    self.nfew += 1;
                    return;
                }
            }
            self.spill(k);
        }
        *self.slot(k) += c;
    }

    /// Take `c` back out of bucket `k`, which holds at least that much.
    fn unbump(&mut self, k: i32, c: u64) {
        if self.counts.is_empty() {
            let n = self.nfew as usize;
            if let Some(e) = self.few[..n].iter_mut().find(|e| e.0 == k) {
                e.1 = e.1.saturating_sub(u32::try_from(c).unwrap_or(u32::MAX));
            }
        } else {
            *self.slot(k) -= c;
        }
    }

    /// Move the inline buckets to the dense form, sized at once to hold them and `k`.
    fn spill(&mut self, k: i32) {
        let n = std::mem::take(&mut self.nfew) as usize;
        let few = &self.few[..n];
        let lo = few.first().map_or(k, |e| e.0.min(k));
        let hi = few.last().map_or(k, |e| e.0.max(k));
        let mut counts = vec![0; (hi - lo + 1) as usize];
        for &(b, c) in few {
            counts[(b - lo) as usize] += u64::from(c);
        }
        self.offset = lo;
        self.counts = counts;
    }

    fn buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        // One of the two forms is empty.
        let few = self.few[..self.nfew as usize]
            .iter()
            .map(|&(k, c)| (k, u64::from(c)));
        let dense = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (self.offset + i as i32, *c));
        few.chain(dense).filter(|(_, c)| *c > 0)
    }

    pub fn add(&mut self, v: f64) {
        self.add_bucket(bucket(v));
    }

    /// Count one value whose [`bucket`] is known.
    pub fn add_bucket(&mut self, k: i32) {
        self.bump(k, 1);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (k, c) in other.buckets() {
            self.bump(k, c);
        }
        self.count += other.count;
    }

    /// Merge a stored blob straight in, without building a sketch for it; false (and nothing
    /// merged) for a blob this version did not write.
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> bool {
        // Add in place as the blob is read (one pass: summaries merge thousands of blobs). A bad
        // blob is taken back out: the same walk stops at the same place, so it undoes exactly
        // what it added, and nothing stays merged.
        let mut total = 0u64;
        if Sketch::parse(bytes, |k, c| {
            self.bump(k, c);
            total += c;
        })
        .is_none()
        {
            let _ = Sketch::parse(bytes, |k, c| self.unbump(k, c));
            return false;
        }
        self.count += total;
        true
    }

    /// Walk a blob's (bucket, count) pairs; `None` if it is not a blob this version wrote.
    fn parse(bytes: &[u8], mut each: impl FnMut(i32, u64)) -> Option<()> {
        if bytes.first() != Some(&VERSION) {
            return None;
        }
        let mut pos = 1;
        let mut prev: Option<i32> = None;
        let mut total = 0u64;
        while pos < bytes.len() {
            let raw = get_varint(bytes, &mut pos)?;
            let k = match prev {
                None => {
                    let z = u32::try_from(raw).ok()?;
                    ((z >> 1) as i32) ^ -((z & 1) as i32)
                }
                Some(p) => p.checked_add(i32::try_from(raw).ok()?)?,
            };
            let c = get_varint(bytes, &mut pos)?;
            // Keys ascend, within the range a latency can have.
            if prev.is_some_and(|p| k <= p) || !(-2000..=4000).contains(&k) {
                return None;
            }
            total = total.checked_add(c)?;
            each(k, c);
            prev = Some(k);
        }
        Some(())
    }

    /// The `q`-quantile (0..=1), within [`ALPHA`] relative error; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        // The rank, counted from 0, of the value answering q (lower quantile).
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0;
        for (k, c) in self.buckets() {
            seen += c;
            if seen > rank {
                let g = gamma();
                let v = 2.0 * g.powi(k) / (g + 1.0);
                return Some(if v <= MIN_VALUE * g { MIN_VALUE } else { v });
            }
        }
        None
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + (self.counts.len() + FEW) * 3);
        out.push(VERSION);
        let mut prev: Option<i32> = None;
        for (k, c) in self.buckets() {
            match prev {
                // Zig-zag: the first key may be negative.
                None => put_varint(&mut out, ((k << 1) ^ (k >> 31)) as u32 as u64),
                Some(p) => put_varint(&mut out, (k - p) as u64),
            }
            put_varint(&mut out, c);
            prev = Some(k);
        }
        out
    }

    /// A sketch from its blob; `None` for bytes this version did not write.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sketch> {
        let mut s = Sketch::default();
        s.merge_bytes(bytes).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_within_the_relative_error() {
        // A long-tailed mix: 0.2 ms to 60 s.
        let mut values: Vec<f64> = (1..=10_000)
            .map(|i| 0.2 * (1.0009f64).powi(i) + (i % 17) as f64)
            .collect();
        let mut s = Sketch::default();
        for v in &values {
            s.add(*v);
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let want = exact_quantile(&values, q);
            let got = s.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= ALPHA * want + 1e-9,
                "q{q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn merging_equals_building_at_once() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..1000 {
            let v = f64::from(i) * 0.37 + 0.01;
            if i % 3 == 0 { &mut a } else { &mut b }.add(v);
            all.add(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn blobs_round_trip_and_bad_blobs_are_refused() {
        let mut s = Sketch::default();
        for v in [0.0, 0.0005, 0.3, 1.0, 2.5, 900.0, 1e6, f64::NAN] {
            s.add(v);
        }
        let bytes = s.to_bytes();
        assert_eq!(Sketch::from_bytes(&bytes), Some(s.clone()));
        assert_eq!(Sketch::from_bytes(&[]), None);
        assert_eq!(Sketch::from_bytes(&[9, 1, 1]), None);
        assert_eq!(Sketch::from_bytes(&[VERSION, 0x80]), None);
        assert_eq!(s.quantile(0.0), Some(MIN_VALUE));
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn a_blob_bad_halfway_merges_nothing() {
        let mut other = Sketch::default();
        for v in [0.001, 5.0, 70.0, 3000.0] {
            other.add(v);
        }
        let mut bad = other.to_bytes();
        // A key that does not ascend, after four good pairs.
        bad.extend_from_slice(&[0, 1]);
        let mut s = Sketch::default();
        for v in [1.0, 2.0, 50_000.0] {
            s.add(v);
        }
        let before: Vec<_> = s.buckets().collect();
        assert!(!s.merge_bytes(&bad));
        assert_eq!(s.buckets().collect::<Vec<_>>(), before);
        assert_eq!(s.count(), 3);
        assert!(s.merge_bytes(&other.to_bytes()));
        assert_eq!(s.count(), 7);
    }

    #[test]
    fn inline_and_dense_buckets_count_the_same() {
        // A model of the buckets, against additions and merges that stay inline, spill, and
        // arrive below and above what is held.
        let mut model = std::collections::BTreeMap::<i32, u64>::new();
        let mut s = Sketch::default();
        let mut x = 7u64;
        for round in 0..400 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = ((x >> 33) % 40) as i32 - 10 + if round < 200 { 0 } else { 300 };
            if round % 5 == 0 {
                let mut other = Sketch::default();
                other.add_bucket(k);
                other.add_bucket(k + 3);
                s.merge(&other);
                *model.entry(k + 3).or_default() += 1;
            } else {
                s.add_bucket(k);
            }
            *model.entry(k).or_default() += 1;
            assert_eq!(
                s.buckets().collect::<Vec<_>>(),
                model.clone().into_iter().collect::<Vec<_>>()
            );
        }
        assert_eq!(s.count(), model.values().sum::<u64>());
        assert_eq!(Sketch::from_bytes(&s.to_bytes()), Some(s));

        // Four buckets stay inline; a fifth, or a count past u32, moves them to the array.
        let mut few = Sketch::default();
        for k in [9, 3, 6, 3, 1] {
            few.add_bucket(k);
        }
        assert!(few.counts.is_empty());
        assert_eq!(
            few.buckets().collect::<Vec<_>>(),
            [(1, 1), (3, 2), (6, 1), (9, 1)]
        );
        let mut big = few.clone();
        big.bump(3, u64::from(u32::MAX));
        assert!(!big.counts.is_empty());
        assert_eq!(big.buckets().nth(1), Some((3, 2 + u64::from(u32::MAX))));
        few.add_bucket(-4);
        assert!(!few.counts.is_empty());
        assert_eq!(
            few.buckets().collect::<Vec<_>>(),
            [(-4, 1), (1, 1), (3, 2), (6, 1), (9, 1)]
        );

        // A bad blob merged into an inline sketch leaves it as it was.
        let mut one = Sketch::default();
        one.add(20.0);
        let mut other = Sketch::default();
        other.add(3.0);
        let mut bad = other.to_bytes();
        bad.extend_from_slice(&[0, 1]);
        assert!(!one.merge_bytes(&bad));
        assert_eq!(one.buckets().collect::<Vec<_>>(), [(bucket(20.0), 1)]);
    }
}

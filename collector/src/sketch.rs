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

/// Counts per bucket, dense from `offset` (merging thousands of rollup rows is then additions
/// into one array, with no map to rebalance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    offset: i32,
    counts: Vec<u64>,
    count: u64,
}

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
    /// The counter of bucket `k`, growing the array to reach it.
    fn slot(&mut self, k: i32) -> &mut u64 {
        if self.counts.is_empty() {
            self.offset = k;
        }
        if k < self.offset {
            let grow = (self.offset - k) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = k;
        }
        let i = (k - self.offset) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        &mut self.counts[i]
    }

    fn buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (self.offset + i as i32, *c))
    }

    pub fn add(&mut self, v: f64) {
        self.add_bucket(bucket(v));
    }

    /// Count one value whose [`bucket`] is known.
    pub fn add_bucket(&mut self, k: i32) {
        *self.slot(k) += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (k, c) in other.buckets() {
            *self.slot(k) += c;
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
            *self.slot(k) += c;
            total += c;
        })
        .is_none()
        {
            let _ = Sketch::parse(bytes, |k, c| *self.slot(k) -= c);
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
        let mut out = Vec::with_capacity(1 + self.counts.len() * 3);
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
}

//! Header maps as the proxy-wasm ABI serializes them, read in place.
//!
//! ```text
//! map   = count:u32le  count * ( name_len:u32le value_len:u32le )  count * ( name 0x00 value 0x00 )
//! ```
//!
//! The SDK's reader copies every name and value into its own allocation (and panics on a map it
//! cannot read); the filter reads the one buffer the host wrote instead, and a malformed map
//! simply ends early.

/// The (name, value) pairs of a serialized map, in the host's order.
pub fn pairs(raw: &[u8]) -> Pairs<'_> {
    let count = read_u32(raw, 0).unwrap_or(0);
    // Each pair takes at least 10 bytes (two lengths, two NULs): a count beyond that is a lie.
    let count = count.min(raw.len() / 10);
    Pairs {
        raw,
        count,
        index: 0,
        data: 4 + count * 8,
    }
}

pub struct Pairs<'a> {
    raw: &'a [u8],
    count: usize,
    index: usize,
    /// Where the next name starts.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let lengths = 4 + self.index * 8;
        let name_len = read_u32(self.raw, lengths)?;
        let value_len = read_u32(self.raw, lengths + 4)?;
        let name_end = self.data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let name = self.raw.get(self.data..name_end)?;
        let value = self.raw.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.index += 1;
        Some((name, value))
    }
}

fn read_u32(raw: &[u8], at: usize) -> Option<usize> {
    let b = raw.get(at..at.checked_add(4)?)?;
    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    usize::try_from(v).ok()
}

/// Serialize pairs the way the host does (the map of a local response; tests and fixtures).
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_host_writes() {
        let raw = serialize(&[
            (":path", b"/v1/chat/completions"),
            ("x-tally-team", b"pay\xffments"),
            ("empty", b""),
        ]);
        let got: Vec<_> = pairs(&raw).collect();
        assert_eq!(
            got,
            vec![
                (&b":path"[..], &b"/v1/chat/completions"[..]),
                (&b"x-tally-team"[..], &b"pay\xffments"[..]),
                (&b"empty"[..], &b""[..]),
            ]
        );
        assert_eq!(pairs(&[]).count(), 0);
    }

    #[test]
    fn malformed_maps_end_early_without_panicking() {
        let raw = serialize(&[("a", b"1"), ("b", b"2")]);
        // Every truncation, and lengths that point past the end.
        for cut in 0..raw.len() {
            let n = pairs(&raw[..cut]).count();
            assert!(n <= 2, "{cut}: {n}");
        }
        let mut lying = raw.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&lying).count(), 0);
        let mut many = raw.clone();
        many[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pairs(&many).count() <= 2);
    }
}

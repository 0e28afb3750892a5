//! Request ids: UUIDv7 strings (RFC 9562), the time in milliseconds followed by 74 bits from a
//! per-VM generator seeded by the host's entropy. Ids made at about the same time sort together,
//! so the collector's unique index on them takes new ids near its end instead of all over it.
//! Envoy's `x-request-id` is not used, as a client can set it and make ids collide.

pub struct IdGen {
    state: u64,
}

impl IdGen {
    pub fn new(seed: u64) -> IdGen {
        IdGen { state: seed }
    }

    /// SplitMix64: fast, and good enough for identifiers (not for secrets).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next id for a request at `unix_ms`: `tttttttt-tttt-7xxx-yxxx-xxxxxxxxxxxx` (version
    /// 7, RFC 9562 variant), the 48-bit time first.
    pub fn next_uuid(&mut self, unix_ms: u64) -> String {
        let hi = ((unix_ms & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | (self.next_u64() & 0x0FFF);
        let lo = (self.next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        let bits = (u128::from(hi) << 64) | u128::from(lo);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Written by hand: one per request, and `format!` with widths cost ten times more.
        let mut out = String::with_capacity(36);
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                out.push('-');
            }
            let nibble = (bits >> (124 - 4 * i)) & 0xF;
            out.push(char::from(HEX[nibble as usize]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_7_uuids_as_format_writes_them_in_time_order() {
        let mut a = IdGen::new(42);
        let mut b = IdGen::new(42);
        let mut seen = std::collections::HashSet::new();
        let mut last = String::new();
        // 2026-11-24T08:00:00Z, a millisecond later every ten ids.
        let start = 1_795_507_200_000u64;
        for i in 0..1000u64 {
            let ms = start + i / 10;
            let id = a.next_uuid(ms);
            let (hi, lo) = (b.next_u64(), b.next_u64());
            let hi = (ms << 16) | 0x7000 | (hi & 0x0FFF);
            let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
            let expected = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                hi >> 32,
                (hi >> 16) & 0xFFFF,
                hi & 0xFFFF,
                lo >> 48,
                lo & 0xFFFF_FFFF_FFFF
            );
            assert_eq!(id, expected);
            assert_eq!(&id[14..15], "7");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
            assert_eq!(u64::from_str_radix(&id[..8], 16).unwrap(), ms >> 16);
            assert_eq!(u64::from_str_radix(&id[9..13], 16).unwrap(), ms & 0xFFFF);
            // Ids of a later millisecond sort after every earlier one.
            if i % 10 == 0 {
                assert!(id > last, "{id} after {last}");
            }
            last = last.max(id.clone());
            assert!(seen.insert(id));
        }
    }
}

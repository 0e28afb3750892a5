//! Org keys: `tly_` + 40 base62 characters (about 238 bits) from the OS generator, stored only
//! as their SHA-256. Lookups go by hash, so the secret itself is never compared or kept.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub fn generate() -> String {
    let mut key = String::with_capacity(44);
    key.push_str("tly_");
    for _ in 0..40 {
        key.push(ALPHABET[OsRng.gen_range(0..ALPHABET.len())] as char);
    }
    key
}

/// A random URL-safe token (40 base62 characters), for sessions and CSRF.
pub fn random_token() -> String {
    (0..40)
        .map(|_| ALPHABET[OsRng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key from `Authorization: Bearer <key>`, if it has the shape of one.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = key.trim();
    tally::config::is_org_key(key).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = generate();
        let b = generate();
        assert!(tally::config::is_org_key(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bearer_parsing() {
        let k = generate();
        assert_eq!(from_authorization(&format!("Bearer {k}")), Some(k.as_str()));
        assert_eq!(
            from_authorization(&format!("bearer  {k} ")),
            Some(k.as_str())
        );
        assert_eq!(from_authorization(&format!("Basic {k}")), None);
        assert_eq!(from_authorization("Bearer tly_short"), None);
    }
}

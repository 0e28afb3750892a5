//! Org keys (`tly_`) and mesh tokens (`tlm_`): the prefix and 40 base62 characters (about 238
//! bits) from the OS generator, stored only as their SHA-256. Lookups go by hash, so the secret
//! itself is never compared or kept.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What an org key starts with.
pub const ORG_KEY_PREFIX: &str = "tly_";
/// What a mesh token starts with.
pub const TOKEN_PREFIX: &str = "tlm_";

/// A new org key.
pub fn generate() -> String {
    secret(ORG_KEY_PREFIX)
}

/// A new mesh token.
pub fn generate_token() -> String {
    secret(TOKEN_PREFIX)
}

fn secret(prefix: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + 40);
    key.push_str(prefix);
    key.push_str(&random_token());
    key
}

/// A random URL-safe token (40 base62 characters), for sessions and CSRF.
pub fn random_token() -> String {
    (0..40)
        .map(|_| ALPHABET[OsRng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// SHA-256 of a secret, in lowercase hex: what is stored and compared.
pub fn hash(key: &str) -> String {
    hex_sha256(key.as_bytes())
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
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

/// The bearer credential of an `Authorization` value, whatever its shape.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// The org key from `Authorization: Bearer <key>`, if it has the shape of one.
pub fn from_authorization(value: &str) -> Option<&str> {
    bearer(value).filter(|k| tally::config::is_org_key(k))
}

/// What a filter authenticates with: an org key, or a mesh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    OrgKey(&'a str),
    Token(&'a str),
}

impl<'a> Credential<'a> {
    pub fn secret(&self) -> &'a str {
        match *self {
            Credential::OrgKey(s) | Credential::Token(s) => s,
        }
    }
}

/// The org key or mesh token from `Authorization: Bearer ...`, if it has the shape of one.
pub fn credential(value: &str) -> Option<Credential<'_>> {
    classify(bearer(value)?)
}

/// An org key or a mesh token, by its shape.
pub fn classify(k: &str) -> Option<Credential<'_>> {
    if tally::config::is_org_key(k) {
        Some(Credential::OrgKey(k))
    } else if tally::config::is_mesh_token(k) {
        Some(Credential::Token(k))
    } else {
        None
    }
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
        let t = generate_token();
        assert!(
            tally::config::is_mesh_token(&t) && !tally::config::is_org_key(&t),
            "{t}"
        );
        assert_eq!(from_authorization(&format!("Bearer {t}")), None);
        assert_eq!(
            credential(&format!("Bearer {t}")),
            Some(Credential::Token(t.as_str()))
        );
        assert_eq!(
            credential(&format!("Bearer {k}")),
            Some(Credential::OrgKey(k.as_str()))
        );
        assert_eq!(credential("Bearer tlm_short"), None);
        assert_eq!(credential(&format!("Basic {t}")), None);
    }
}

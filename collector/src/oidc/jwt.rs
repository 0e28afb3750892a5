//! ID tokens: a compact JWS (RFC 7515) whose signature is checked against the provider's JWKS
//! (RFC 7517) with ring, then its claims against what this sign-in expects (OpenID Connect Core
//! 1.0, section 3.1.3.7).
//!
//! ```text
//! token   = b64url(header) "." b64url(payload) "." b64url(signature)
//! header  = {"alg": RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384, "kid"?: ...}
//! ```
//!
//! `none` and the HMAC algorithms are refused: a token is believed only when a key the provider
//! publishes signed it.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Clocks disagree a little: `exp`, `nbf` and `iat` are given this much slack.
pub const LEEWAY_S: i64 = 60;
/// An ID token comes straight from the token endpoint: one issued longer ago than this is not
/// the answer to this sign-in.
pub const MAX_AGE_S: i64 = 600;
/// Larger tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Base64url, padded or not: JWS segments are unpadded, and some JWKS pad their key values.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// Why a token was refused. The texts name the check, never a value from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    /// An algorithm this collector does not accept (`none`, HMAC, unknown).
    Algorithm(String),
    /// No key of the provider's JWKS has the token's `kid` (or fits its algorithm).
    UnknownKey,
    Signature,
    Issuer,
    Audience,
    AuthorizedParty,
    Expired,
    NotYetValid,
    IssuedAt,
    Nonce,
    Subject,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed => write!(f, "the ID token is not a signed JWT"),
            TokenError::Algorithm(alg) => {
                // The name is shown only when it is a plain short word: it comes from the token.
                let alg = if alg.len() <= 10 && alg.chars().all(|c| c.is_ascii_alphanumeric()) {
                    alg.as_str()
                } else {
                    "?"
                };
                write!(f, "the ID token's algorithm ({alg}) is not accepted")
            }
            TokenError::UnknownKey => write!(f, "the ID token was signed by an unknown key"),
            TokenError::Signature => write!(f, "the ID token's signature is wrong"),
            TokenError::Issuer => write!(f, "the ID token comes from another issuer"),
            TokenError::Audience => write!(f, "the ID token is meant for another client (aud)"),
            TokenError::AuthorizedParty => {
                write!(f, "the ID token was issued to another client (azp)")
            }
            TokenError::Expired => write!(f, "the ID token has expired"),
            TokenError::NotYetValid => write!(f, "the ID token is not valid yet"),
            TokenError::IssuedAt => write!(f, "the ID token's issue time is not plausible"),
            TokenError::Nonce => write!(f, "the ID token does not answer this sign-in (nonce)"),
            TokenError::Subject => write!(f, "the ID token names no subject"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
        }
    }
}

#[derive(Debug, Clone)]
enum PublicKey {
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 || x || y) on P-256 or P-384.
    P256(Vec<u8>),
    P384(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key signs only with that.
    alg: Option<String>,
    key: PublicKey,
}

impl Jwk {
    fn fits(&self, alg: Alg) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (
                PublicKey::Rsa { .. },
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (PublicKey::P256(_), Alg::Es256)
                | (PublicKey::P384(_), Alg::Es384)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    Alg::Es256 | Alg::Es384 => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            PublicKey::P256(point) => {
                alg == Alg::Es256
                    && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, sig)
                        .is_ok()
            }
            PublicKey::P384(point) => {
                alg == Alg::Es384
                    && UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(message, sig)
                        .is_ok()
            }
        }
    }
}

/// The signing keys a provider publishes at its `jwks_uri`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead.min(v.len().saturating_sub(1)));
    v
}

impl KeySet {
    /// Reads a JWKS document. Keys this collector cannot use (encryption keys, other curves,
    /// symmetric keys) are skipped; a document with none it can use is an error.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc =
            serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid: {e}"))?;
        let mut keys = Vec::new();
        for raw in doc.keys {
            // One odd key does not spoil the others.
            let Ok(raw) = serde_json::from_value::<RawJwk>(raw) else {
                continue;
            };
            if raw.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
                ("RSA", _) => {
                    let (Some(n), Some(e)) = (
                        raw.n.as_deref().and_then(b64url_decode),
                        raw.e.as_deref().and_then(b64url_decode),
                    ) else {
                        continue;
                    };
                    PublicKey::Rsa {
                        n: strip_zeros(n),
                        e: strip_zeros(e),
                    }
                }
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let size = if crv == "P-256" { 32 } else { 48 };
                    let (Some(x), Some(y)) = (
                        raw.x.as_deref().and_then(b64url_decode),
                        raw.y.as_deref().and_then(b64url_decode),
                    ) else {
                        continue;
                    };
                    if x.len() != size || y.len() != size {
                        continue;
                    }
                    let mut point = Vec::with_capacity(1 + 2 * size);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    if size == 32 {
                        PublicKey::P256(point)
                    } else {
                        PublicKey::P384(point)
                    }
                }
                _ => continue,
            };
            keys.push(Jwk {
                kid: raw.kid,
                alg: raw.alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(
                "the JWKS holds no signing key this collector can use (RSA, P-256, P-384)".into(),
            );
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the token must say for this sign-in.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now_s: i64,
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: String,
    /// Every claim, for the org and role mappings (and the userinfo merge).
    pub all: Map<String, Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// A NumericDate (seconds, possibly fractional).
fn numeric_date(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Checks the signature, then the claims. Only a token that passes both gives claims.
pub fn verify(token: &str, keys: &KeySet, expect: &Expect) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // An encrypted token (five parts) is not accepted either: none is asked for.
        return Err(TokenError::Malformed);
    };
    let header: Header = b64url_decode(h64)
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    let alg = Alg::parse(&header.alg).ok_or_else(|| TokenError::Algorithm(header.alg.clone()))?;
    if header.crit.is_some() {
        // Extensions that must be understood: none are.
        return Err(TokenError::Malformed);
    }
    let sig = b64url_decode(s64).ok_or(TokenError::Malformed)?;
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| k.fits(alg))
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    // The signed input is the header and payload exactly as sent.
    let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    if !candidates.iter().any(|k| k.verify(alg, signed, &sig)) {
        return Err(TokenError::Signature);
    }
    let all: Map<String, Value> = b64url_decode(p64)
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)?;
    check_claims(all, expect)
}

fn check_claims(all: Map<String, Value>, expect: &Expect) -> Result<Claims, TokenError> {
    if all.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(TokenError::Issuer);
    }
    let audiences: Vec<&str> = match all.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expect.client_id) {
        return Err(TokenError::Audience);
    }
    // With several audiences, the party it was issued to must be this client.
    match all.get("azp").map(Value::as_str) {
        Some(Some(azp)) if azp != expect.client_id => return Err(TokenError::AuthorizedParty),
        Some(None) => return Err(TokenError::AuthorizedParty),
        None if audiences.len() > 1 => return Err(TokenError::AuthorizedParty),
        _ => {}
    }
    let now = expect.now_s;
    let exp = numeric_date(all.get("exp")).ok_or(TokenError::Expired)?;
    if now > exp + LEEWAY_S {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = all.get("nbf") {
        if numeric_date(Some(nbf)).is_none_or(|nbf| nbf > now + LEEWAY_S) {
            return Err(TokenError::NotYetValid);
        }
    }
    let iat = numeric_date(all.get("iat")).ok_or(TokenError::IssuedAt)?;
    if iat > now + LEEWAY_S || iat < now - MAX_AGE_S - LEEWAY_S || iat > exp {
        return Err(TokenError::IssuedAt);
    }
    let nonce = all.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !crate::keys::constant_time_eq(nonce.as_bytes(), expect.nonce.as_bytes())
        || expect.nonce.is_empty()
    {
        return Err(TokenError::Nonce);
    }
    let sub = match all.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 255 => s.to_string(),
        _ => return Err(TokenError::Subject),
    };
    Ok(Claims { sub, all })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    /// A 2048-bit RSA test key (PKCS#8 DER, base64), made for these tests only.
    pub(crate) const RSA_PKCS8: &str = include_str!("testdata/rsa2048.pk8.b64");
    /// Another one: a token it signs has a wrong signature for the first key's kid.
    pub(crate) const OTHER_RSA_PKCS8: &str = include_str!("testdata/rsa2048-other.pk8.b64");

    pub(crate) fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn der(text: &str) -> Vec<u8> {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean)
            .expect("test key")
    }

    pub(crate) fn rsa(text: &str) -> RsaKeyPair {
        RsaKeyPair::from_pkcs8(&der(text)).expect("test key")
    }

    /// The JWKS publishing `key` under `kid`.
    pub(crate) fn rsa_jwks(key: &RsaKeyPair, kid: &str) -> String {
        let c: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                         "n": b64(&c.n), "e": b64(&c.e)}]})
        .to_string()
    }

    pub(crate) fn sign_rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .expect("sign");
        format!("{input}.{}", b64(&sig))
    }

    const ISS: &str = "https://id.example.test";
    const NOW: i64 = 1_750_000_000;

    fn claims() -> Value {
        json!({"iss": ISS, "aud": "tally", "sub": "user-1", "exp": NOW + 300, "iat": NOW - 5,
               "nonce": "n-123", "email": "ann@acme.test", "email_verified": true})
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            client_id: "tally",
            nonce: "n-123",
            now_s: NOW,
        }
    }

    fn setup() -> (RsaKeyPair, KeySet) {
        let key = rsa(RSA_PKCS8);
        let jwks = KeySet::parse(rsa_jwks(&key, "k1").as_bytes()).expect("jwks");
        (key, jwks)
    }

    fn header() -> Value {
        json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut c = claims();
        if let Value::Object(m) = &mut c {
            change(m);
        }
        c
    }

    #[test]
    fn oidc_good_token() {
        let (key, jwks) = setup();
        let token = sign_rs256(&key, &header(), &claims());
        let c = verify(&token, &jwks, &expect()).expect("valid");
        assert_eq!(c.sub, "user-1");
        assert_eq!(c.all["email"], "ann@acme.test");
        // Within the leeway after exp, still accepted; beyond it, not.
        let late = Expect {
            now_s: NOW + 300 + LEEWAY_S,
            ..expect()
        };
        assert!(verify(&token, &jwks, &late).is_ok());
    }

    #[test]
    fn oidc_wrong_signature() {
        let (_, jwks) = setup();
        let other = rsa(OTHER_RSA_PKCS8);
        let token = sign_rs256(&other, &header(), &claims());
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Signature
        );
        // A payload changed after signing.
        let (key, _) = setup();
        let good = sign_rs256(&key, &header(), &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = with(|m| {
            m.insert("sub".into(), json!("admin"));
        });
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            verify(&tampered, &jwks, &expect()).unwrap_err(),
            TokenError::Signature
        );
    }

    #[test]
    fn oidc_wrong_audience() {
        let (key, jwks) = setup();
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("aud".into(), json!("someone-else"));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Audience
        );
        // Several audiences: ours among them, but azp must then name us.
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("aud".into(), json!(["tally", "other"]));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::AuthorizedParty
        );
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("aud".into(), json!(["tally", "other"]));
                m.insert("azp".into(), json!("tally"));
            }),
        );
        assert!(verify(&token, &jwks, &expect()).is_ok());
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("azp".into(), json!("other"));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::AuthorizedParty
        );
    }

    #[test]
    fn oidc_expired() {
        let (key, jwks) = setup();
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("exp".into(), json!(NOW - LEEWAY_S - 1));
                m.insert("iat".into(), json!(NOW - 120));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Expired
        );
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.remove("exp");
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn oidc_iat_sanity() {
        let (key, jwks) = setup();
        for iat in [
            json!(NOW + LEEWAY_S + 5),
            json!(NOW - MAX_AGE_S - LEEWAY_S - 1),
            json!(null),
        ] {
            let token = sign_rs256(
                &key,
                &header(),
                &with(|m| {
                    m.insert("iat".into(), iat.clone());
                }),
            );
            assert_eq!(
                verify(&token, &jwks, &expect()).unwrap_err(),
                TokenError::IssuedAt,
                "iat {iat}"
            );
        }
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("nbf".into(), json!(NOW + 3600));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[test]
    fn oidc_wrong_issuer() {
        let (key, jwks) = setup();
        for iss in [
            json!("https://evil.example.test"),
            json!(ISS.to_string() + "/"),
            json!(null),
        ] {
            let token = sign_rs256(
                &key,
                &header(),
                &with(|m| {
                    m.insert("iss".into(), iss.clone());
                }),
            );
            assert_eq!(
                verify(&token, &jwks, &expect()).unwrap_err(),
                TokenError::Issuer
            );
        }
    }

    #[test]
    fn oidc_wrong_nonce() {
        let (key, jwks) = setup();
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.insert("nonce".into(), json!("n-999"));
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Nonce
        );
        let token = sign_rs256(
            &key,
            &header(),
            &with(|m| {
                m.remove("nonce");
            }),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Nonce
        );
    }

    #[test]
    fn oidc_alg_none_refused() {
        let (_, jwks) = setup();
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": "none"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(
            verify(&unsigned, &jwks, &expect()).unwrap_err(),
            TokenError::Algorithm("none".into())
        );
        // HS256 keyed with something public (the RSA modulus, say) is refused by name.
        let hs = format!(
            "{}.{}.AAAA",
            b64(json!({"alg": "HS256", "kid": "k1"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(
            verify(&hs, &jwks, &expect()).unwrap_err(),
            TokenError::Algorithm("HS256".into())
        );
    }

    #[test]
    fn oidc_unknown_kid() {
        let (key, jwks) = setup();
        let token = sign_rs256(&key, &json!({"alg": "RS256", "kid": "k2"}), &claims());
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::UnknownKey
        );
        // No kid: every key that fits the algorithm is tried.
        let token = sign_rs256(&key, &json!({"alg": "RS256"}), &claims());
        assert!(verify(&token, &jwks, &expect()).is_ok());
        // An RSA key for an ES256 token: no key fits.
        let token = format!(
            "{}.{}.AAAA",
            b64(json!({"alg": "ES256", "kid": "k1"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::UnknownKey
        );
    }

    #[test]
    fn oidc_malformed() {
        let (_, jwks) = setup();
        for t in ["", "a.b", "a.b.c.d", "a.b.c.d.e", "!!.??.**"] {
            assert_eq!(
                verify(t, &jwks, &expect()).unwrap_err(),
                TokenError::Malformed,
                "{t}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify(&huge, &jwks, &expect()).unwrap_err(),
            TokenError::Malformed
        );
        // A critical header extension is not understood, so not accepted.
        let (key, _) = setup();
        let token = sign_rs256(
            &key,
            &json!({"alg": "RS256", "kid": "k1", "crit": ["b64"], "b64": false}),
            &claims(),
        );
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn oidc_es256() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate");
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("key");
        let point = key.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "EC", "use": "enc", "crv": "P-256", "kid": "e0",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "EC", "crv": "P-256", "kid": "e1",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
        ]});
        let jwks = KeySet::parse(jwks.to_string().as_bytes()).expect("jwks");
        assert_eq!(jwks.len(), 1, "the encryption key is skipped");
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "ES256", "kid": "e1"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let sig = key.sign(&rng, input.as_bytes()).expect("sign");
        let token = format!("{input}.{}", b64(sig.as_ref()));
        assert!(verify(&token, &jwks, &expect()).is_ok());
        let mut bad = sig.as_ref().to_vec();
        bad[10] ^= 1;
        let token = format!("{input}.{}", b64(&bad));
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::Signature
        );
    }

    #[test]
    fn oidc_jwks_parse() {
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(br#"{"keys": []}"#).is_err());
        assert!(KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        // A key whose own alg differs from the token's is not used for it.
        let (key, _) = setup();
        let jwks = rsa_jwks(&key, "k1").replace("RS256", "PS256");
        let jwks = KeySet::parse(jwks.as_bytes()).expect("jwks");
        let token = sign_rs256(&key, &header(), &claims());
        assert_eq!(
            verify(&token, &jwks, &expect()).unwrap_err(),
            TokenError::UnknownKey
        );
    }
}

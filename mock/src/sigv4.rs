//! AWS Signature Version 4, as Bedrock Runtime checks it: the mock verifies requests with it, and
//! the e2e tests sign with it (they include this file), so that a byte of the host, the path, a
//! signed header or the body changed on the way fails the request.
//!
//! ```text
//! canonical request = METHOD \n canonical-uri \n canonical-query \n canonical-headers \n
//!                     signed-headers \n hex(sha256(body))
//! canonical-uri     = each path segment as sent, URI-encoded once more (all but S3 do this)
//! canonical-headers = lower-case-name ":" trimmed-value \n, sorted by name
//! string to sign    = "AWS4-HMAC-SHA256" \n x-amz-date \n date/region/service/aws4_request \n
//!                     hex(sha256(canonical request))
//! signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" secret, date), region), service), "aws4_request")
//! ```

use sha2::{Digest, Sha256};

/// The test credentials: the mock knows the secret, as AWS does.
pub const ACCESS_KEY: &str = "AKIATALLYMOCKEXAMPLE";
pub const SECRET_KEY: &str = "tally/mock/bedrock/secret/key/EXAMPLEKEY";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |x: u8| block.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A path segment URI-encoded (unreserved characters kept).
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn canonical_uri(path: &str) -> String {
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// When and where a request is signed: `amz_date` is `YYYYMMDDTHHMMSSZ`.
pub struct Scope<'a> {
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The signature of a request. `headers` are the signed ones (any case, any order); `path` is
/// as sent on the wire, without a query.
pub fn signature(
    secret: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    scope: &Scope<'_>,
) -> String {
    let Scope {
        amz_date,
        region,
        service,
    } = *scope;
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    h.sort();
    let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    let canonical = format!(
        "{method}\n{}\n\n{canonical_headers}\n{}\n{}",
        canonical_uri(path),
        signed.join(";"),
        sha256_hex(body)
    );
    let date = amz_date.get(..8).unwrap_or("");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hex(&hmac(&key, to_sign.as_bytes()))
}

/// The `Authorization` header of a request signed over `headers` (the e2e tests sign with it).
#[allow(dead_code)]
pub fn authorization(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    amz_date: &str,
    region: &str,
) -> String {
    let scope = Scope {
        amz_date,
        region,
        service: "bedrock",
    };
    let sig = signature(SECRET_KEY, method, path, headers, body, &scope);
    let mut names: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    names.sort();
    format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{}/{region}/bedrock/aws4_request, SignedHeaders={}, Signature={sig}",
        amz_date.get(..8).unwrap_or(""),
        names.join(";")
    )
}

/// Check a request's signature: `get` reads a request header by lower-case name. `Err` says why
/// it fails.
pub fn verify(
    method: &str,
    path: &str,
    get: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<(), String> {
    let auth = get("authorization").ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed Authorization")?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => {}
        }
    }
    let (credential, signed, sig) = (
        credential.ok_or("no Credential")?,
        signed.ok_or("no SignedHeaders")?,
        sig.ok_or("no Signature")?,
    );
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, _date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err("malformed Credential".into());
    };
    if *key != ACCESS_KEY {
        return Err("unknown access key".into());
    }
    let amz_date = get("x-amz-date").ok_or("no x-amz-date")?;
    let values: Vec<(String, String)> = signed
        .split(';')
        .map(|n| (n.to_string(), get(n).unwrap_or_default()))
        .collect();
    let headers: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let scope = Scope {
        amz_date: &amz_date,
        region,
        service,
    };
    let want = signature(SECRET_KEY, method, path, &headers, body, &scope);
    if want == sig {
        Ok(())
    } else {
        Err("The request signature we calculated does not match the signature you provided".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case_2() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_changed_byte_fails() {
        let path = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke";
        let body = br#"{"messages":[]}"#;
        let date = "20261201T120000Z";
        let hash = sha256_hex(body);
        let signed = [
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("x-amz-date", date),
            ("x-amz-content-sha256", hash.as_str()),
        ];
        let auth = authorization("POST", path, &signed, body, date, "us-east-1");
        let get = |n: &str| -> Option<String> {
            match n {
                "authorization" => Some(auth.clone()),
                _ => signed
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string()),
            }
        };
        assert_eq!(verify("POST", path, get, body), Ok(()));
        assert!(verify("POST", path, get, br#"{"messages":[ ]}"#).is_err());
        assert!(verify("POST", &path.replace("%3A", ":"), get, body).is_err());
    }
}

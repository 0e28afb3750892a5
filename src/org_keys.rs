//! Org keys at the proxy: which org a request belongs to, from its `X-Tally-Key`, and whether to
//! refuse it.
//!
//! The filter never holds org keys at rest: the collector's `GET /v1/controls` gives the SHA-256
//! of every key the filter may accept, with its org, and a request's key is hashed as it is read
//! and looked up by that hash. Looking up a digest reveals nothing about the key through timing
//! (an attacker would need a preimage), so no constant-time comparison is needed beyond it.

use crate::provider::Api;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub type KeyHash = [u8; 32];

/// The SHA-256 of a key as a request sent it (surrounding whitespace ignored).
pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// The keys a filter accepts: hash -> org.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeySet {
    orgs: HashMap<KeyHash, String>,
}

fn unhex(text: &str) -> Option<KeyHash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl KeySet {
    /// The body of `GET /v1/controls`: `{"orgs":[{"org_id":"acme","key_sha256":["<hex>"]}]}`
    /// (other members are for other uses and ignored here).
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Controls {
            orgs: Vec<Org>,
        }
        #[derive(serde::Deserialize)]
        struct Org {
            org_id: String,
            key_sha256: Vec<String>,
        }
        let c: Controls = serde_json::from_slice(json).map_err(|e| format!("controls: {e}"))?;
        let mut orgs = HashMap::new();
        for org in c.orgs {
            if org.org_id.is_empty() || org.org_id.len() > 256 {
                return Err("controls: an org_id is empty or too long".into());
            }
            for h in org.key_sha256 {
                let digest =
                    unhex(&h).ok_or_else(|| format!("controls: {h:?} is not a SHA-256 in hex"))?;
                orgs.insert(digest, org.org_id.clone());
            }
        }
        Ok(KeySet { orgs })
    }

    pub fn org(&self, key: &KeyHash) -> Option<&str> {
        self.orgs.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `X-Tally-Key`.
    Missing,
    /// A key the collector does not know (wrong, rotated, or of a disabled org).
    Unknown,
    /// No key set from the collector yet, and `key_set_missing` is `refuse`.
    NoKeySet,
}

/// What happens to a request, by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Metered, its event in this org (None: the org of the credential the batch is sent with).
    Meter(Option<String>),
    /// Passed unmetered: no org to put its event in.
    Unattributed,
    Refuse(Refusal),
}

/// What the filter knows when a request arrives.
pub struct Policy<'a> {
    pub org_from_request: bool,
    pub require_org_key: bool,
    /// `key_set_missing` is `refuse`.
    pub refuse_without_key_set: bool,
    /// Events are sent with a mesh token, so each must name its org.
    pub token: bool,
    /// The hash of the filter's own org key, if it has one.
    pub own_key: Option<&'a KeyHash>,
    pub keys: Option<&'a KeySet>,
}

impl Policy<'_> {
    pub fn decide(&self, request_key: Option<&KeyHash>) -> Decision {
        // The filter's own org, where it can be named.
        let own = || match (self.token, self.own_key, self.keys) {
            (false, _, _) => Decision::Meter(None),
            (true, Some(k), Some(keys)) => keys.org(k).map_or(Decision::Unattributed, |o| {
                Decision::Meter(Some(o.to_string()))
            }),
            _ => Decision::Unattributed,
        };
        if !self.org_from_request {
            return own();
        }
        let Some(keys) = self.keys else {
            return if self.require_org_key && self.refuse_without_key_set {
                Decision::Refuse(Refusal::NoKeySet)
            } else {
                // Nothing to check keys against: let it through, unattributed unless the
                // filter's own org applies.
                match request_key {
                    Some(_) => Decision::Unattributed,
                    None => own(),
                }
            };
        };
        match request_key.map(|k| keys.org(k)) {
            Some(Some(org)) => Decision::Meter(Some(org.to_string())),
            Some(None) if self.require_org_key => Decision::Refuse(Refusal::Unknown),
            None if self.require_org_key => Decision::Refuse(Refusal::Missing),
            // Not required: a request without a (known) key is the filter's own org's.
            _ => own(),
        }
    }
}

/// The API whose error format answers a request the filter does not meter (another route of a
/// provider): by the path's shape, OpenAI's by default.
pub fn api_for_refusal(path: &str) -> Api {
    if path.starts_with("/v1/messages")
        || path.starts_with("/v1/complete")
        || path.contains("/publishers/anthropic/")
    {
        Api::Messages
    } else if path.starts_with("/v1beta/") || path.contains("/publishers/google/") {
        Api::GenerateContent
    } else {
        Api::ChatCompletions
    }
}

/// A 401 in the provider's own error format, so that SDKs raise their usual authentication
/// error: (content type, body).
pub fn unauthorized_body(api: Api, refusal: Refusal) -> (&'static str, String) {
    let message = match refusal {
        Refusal::Missing => "This request needs an org key in the X-Tally-Key header; the proxy refused it before it reached the provider.",
        Refusal::Unknown => "The org key in X-Tally-Key is not valid (unknown, rotated or disabled); the proxy refused the request before it reached the provider.",
        Refusal::NoKeySet => "The proxy cannot check org keys yet (it has not reached the Tally collector); the request was refused before it reached the provider.",
    };
    let body = match api {
        Api::Messages => serde_json::json!({
            "type": "error",
            "error": {"type": "authentication_error", "message": message}
        }),
        Api::GenerateContent => serde_json::json!({
            "error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}
        }),
        // Bedrock's error body; its SDKs read the type from `x-amzn-errortype` when present.
        Api::BedrockInvoke | Api::BedrockConverse => serde_json::json!({ "message": message }),
        Api::ChatCompletions | Api::Responses | Api::Completions | Api::Embeddings => {
            serde_json::json!({
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": null,
                "code": "invalid_api_key"
            }
            })
        }
    };
    ("application/json", body.to_string())
}

/// How a request whose `X-Tally-Key` is covered by its SigV4 signature was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedKeyStop {
    /// Answered with the 400 refusal (the usual case).
    Refused,
    /// The refusal could not be sent: the stream was reset, as Envoy fails a request closed.
    Reset,
    /// Neither could be done: the key header was removed, which voids the signature, so the
    /// provider refuses the request (403) and the key never reaches it.
    KeyRemoved,
    /// Nothing worked: the request is held (paused) until Envoy's own timeouts end it.
    Held,
}

impl SignedKeyStop {
    /// Whether the request may go on upstream (only without its key).
    pub fn forwards(self) -> bool {
        self == SignedKeyStop::KeyRemoved
    }
}

/// Stop a request whose org key its SigV4 signature covers. Filter errors fail open, but an org
/// key is a credential and must never reach the provider: when the refusal cannot be sent, the
/// request is stopped another way, each tried only if the one before failed, and is never let
/// through with the key (PRODUCT.md, "Request headers"). Each step is a host call that says
/// whether it worked.
pub fn stop_signed_key(
    send_refusal: impl FnOnce() -> bool,
    reset_stream: impl FnOnce() -> bool,
    remove_key: impl FnOnce() -> bool,
) -> SignedKeyStop {
    if send_refusal() {
        SignedKeyStop::Refused
    } else if reset_stream() {
        SignedKeyStop::Reset
    } else if remove_key() {
        SignedKeyStop::KeyRemoved
    } else {
        SignedKeyStop::Held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_key_is_never_sent_on_whatever_fails() {
        use std::cell::Cell;
        use SignedKeyStop as S;
        for bits in 0..8u8 {
            let (send, reset, remove) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
            let removed = Cell::new(false);
            let stop = stop_signed_key(
                || send,
                || reset,
                || {
                    removed.set(remove);
                    remove
                },
            );
            let expected = if send {
                S::Refused
            } else if reset {
                S::Reset
            } else if remove {
                S::KeyRemoved
            } else {
                S::Held
            };
            assert_eq!(stop, expected, "{bits}");
            // Forwarded only once the key is gone.
            assert!(!stop.forwards() || removed.get(), "{bits}");
        }
    }

    fn hex(h: &KeyHash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn keys() -> KeySet {
        let body = format!(
            r#"{{"orgs":[{{"org_id":"acme","key_sha256":["{}"]}},{{"org_id":"globex","key_sha256":["{}","{}"]}}],"budgets":[]}}"#,
            hex(&hash("tly_acme")),
            hex(&hash("tly_globex_old")),
            hex(&hash("tly_globex")),
        );
        KeySet::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn keys_are_found_by_their_hash() {
        let k = keys();
        assert_eq!(k.len(), 3);
        assert_eq!(k.org(&hash(" tly_acme ")), Some("acme"));
        assert_eq!(k.org(&hash("tly_globex")), Some("globex"));
        assert_eq!(k.org(&hash("tly_nobody")), None);
        for bad in [
            &br#"{"orgs":[{"org_id":"a","key_sha256":["zz"]}]}"#[..],
            br#"{"orgs":[{"org_id":"","key_sha256":[]}]}"#,
            br#"{"org":[]}"#,
            b"not json",
        ] {
            assert!(KeySet::parse(bad).is_err());
        }
    }

    #[test]
    fn decisions() {
        let k = keys();
        let (acme, forged) = (hash("tly_acme"), hash("tly_forged"));
        let own = hash("tly_globex");
        let required = Policy {
            org_from_request: true,
            require_org_key: true,
            refuse_without_key_set: false,
            token: true,
            own_key: None,
            keys: Some(&k),
        };
        assert_eq!(
            required.decide(Some(&acme)),
            Decision::Meter(Some("acme".into()))
        );
        assert_eq!(
            required.decide(Some(&forged)),
            Decision::Refuse(Refusal::Unknown)
        );
        assert_eq!(required.decide(None), Decision::Refuse(Refusal::Missing));
        // Before the first key set: pass by default, refuse when configured so.
        let early = Policy {
            keys: None,
            ..required
        };
        assert_eq!(early.decide(Some(&acme)), Decision::Unattributed);
        let strict = Policy {
            refuse_without_key_set: true,
            keys: None,
            ..required
        };
        assert_eq!(
            strict.decide(Some(&acme)),
            Decision::Refuse(Refusal::NoKeySet)
        );
        // Not required: no key, or an unknown one, is the filter's own org's, if it has one.
        let optional = Policy {
            require_org_key: false,
            own_key: Some(&own),
            ..required
        };
        assert_eq!(
            optional.decide(None),
            Decision::Meter(Some("globex".into()))
        );
        assert_eq!(
            optional.decide(Some(&forged)),
            Decision::Meter(Some("globex".into()))
        );
        assert_eq!(
            optional.decide(Some(&acme)),
            Decision::Meter(Some("acme".into()))
        );
        let keyless = Policy {
            own_key: None,
            ..optional
        };
        assert_eq!(keyless.decide(None), Decision::Unattributed);
        // Today's single-org filter: every request is its org's, named by the collector.
        let single = Policy {
            org_from_request: false,
            require_org_key: false,
            refuse_without_key_set: false,
            token: false,
            own_key: Some(&own),
            keys: None,
        };
        assert_eq!(single.decide(Some(&forged)), Decision::Meter(None));
    }

    #[test]
    fn unmetered_routes_are_refused_in_their_providers_format() {
        assert_eq!(api_for_refusal("/v1/messages/batches"), Api::Messages);
        assert_eq!(
            api_for_refusal("/v1beta/models/gemini-2.5-flash:countTokens"),
            Api::GenerateContent
        );
        assert_eq!(api_for_refusal("/v1/models"), Api::ChatCompletions);
    }

    #[test]
    fn refusals_speak_each_providers_format() {
        let (_, body) = unauthorized_body(Api::ChatCompletions, Refusal::Missing);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let (_, body) = unauthorized_body(Api::Messages, Refusal::Unknown);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let (_, body) = unauthorized_body(Api::GenerateContent, Refusal::NoKeySet);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    }
}

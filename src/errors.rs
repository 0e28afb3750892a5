//! What went wrong with an exchange, in the categories of the event contract.
//!
//! The provider's own error code is the most specific signal, then the HTTP status; Envoy's
//! response code details tell apart what the proxy or the network did (no response from
//! upstream, a timeout, the client leaving) from what the provider answered.

use crate::event::{ErrorCategory as C, ErrorSource as S};

/// The code of a provider error that did not name its type (a Bedrock stream's `exception`
/// message without its `:exception-type`): `provider_error`, whatever the status.
pub const UNKNOWN_PROVIDER_ERROR: &str = "unknown_provider_error";

/// A provider error code or type (`rate_limit_exceeded`, `overloaded_error`, `RESOURCE_EXHAUSTED`).
fn from_provider_code(code: &str) -> Option<C> {
    let c = code.to_ascii_lowercase();
    Some(match c.as_str() {
        "rate_limit_exceeded"
        | "rate_limit_error"
        | "resource_exhausted"
        | "insufficient_quota"
        | "tokens"
        | "requests"
        | "throttlingexception"
        | "servicequotaexceededexception" => C::RateLimited,
        "context_length_exceeded" | "string_above_max_length" => C::ContextLength,
        "content_filter" | "content_policy_violation" | "safety" => C::ContentFilter,
        "overloaded_error"
        | "unavailable"
        | "server_is_overloaded"
        | "serviceunavailableexception"
        | "modelnotreadyexception" => C::Overloaded,
        "invalid_api_key"
        | "authentication_error"
        | "permission_error"
        | "unauthenticated"
        | "permission_denied"
        | "invalid_authentication"
        | "accessdeniedexception"
        | "unrecognizedclientexception" => C::Auth,
        "not_found_error" | "model_not_found" | "not_found" | "resourcenotfoundexception" => {
            C::NotFound
        }
        "invalid_request_error"
        | "invalid_argument"
        | "failed_precondition"
        | "validationexception" => C::InvalidRequest,
        "api_error"
        | "server_error"
        | "internal"
        | "internal_error"
        | "internalserverexception"
        | "modelstreamerrorexception"
        | "modelerrorexception"
        | UNKNOWN_PROVIDER_ERROR => C::ProviderError,
        "deadline_exceeded" | "timeout_error" | "request_timeout" | "modeltimeoutexception" => {
            C::Timeout
        }
        _ => return None,
    })
}

/// Whether the mapping knows a provider's error code or type.
pub fn is_known_code(code: &str) -> bool {
    from_provider_code(code).is_some()
}

/// An error code that is an HTTP status (OpenRouter's and vLLM's numeric `code`).
fn from_numeric_code(code: &str) -> Option<C> {
    code.parse::<u16>()
        .ok()
        .filter(|s| (400..=599).contains(s))
        .and_then(from_status)
}

fn from_status(status: u16) -> Option<C> {
    Some(match status {
        200..=399 => return None,
        401 | 403 => C::Auth,
        404 => C::NotFound,
        408 | 504 => C::Timeout,
        429 => C::RateLimited,
        503 | 529 => C::Overloaded,
        400..=499 => C::InvalidRequest,
        _ => C::ProviderError,
    })
}

/// Envoy's `response.code_details` for a response it made itself, not the upstream's.
fn from_envoy_details(details: &str) -> Option<(C, S)> {
    if details == "via_upstream" || details.is_empty() {
        return None;
    }
    let d = details;
    Some(
        if d.starts_with("downstream_") || d.contains("downstream_remote_disconnect") {
            (C::ClientDisconnect, S::Client)
        } else if d.starts_with("upstream_reset_after_response_started") {
            // The provider's answer had begun, then its connection broke.
            (C::ProviderError, S::Network)
        } else if d.starts_with("response_timeout")
            || d.starts_with("stream_idle_timeout")
            || d.contains("timeout")
        {
            (C::Timeout, S::Network)
        } else if d.starts_with("upstream_reset")
            || d.starts_with("no_healthy_upstream")
            || d.contains("connection_failure")
            || d.starts_with("upstream_")
        {
            (C::UpstreamUnreachable, S::Network)
        } else {
            (C::ProxyError, S::Proxy)
        },
    )
}

/// Classify an exchange. `status` is what the client got (None: it got nothing), `code` the
/// provider's error code from the body, `details` Envoy's response code details when known,
/// `interrupted` whether a stream ended before its end.
pub fn classify(
    status: Option<u16>,
    code: Option<&str>,
    details: Option<&str>,
    interrupted: bool,
) -> Option<(C, S)> {
    if let Some(found) = details.and_then(from_envoy_details) {
        return Some(found);
    }
    if let Some(c) = code.and_then(|c| from_provider_code(c).or_else(|| from_numeric_code(c))) {
        return Some((c, S::Provider));
    }
    if interrupted {
        // Envoy saw the upstream's response through (`via_upstream`) yet the stream never
        // ended: the client went away.
        return Some((C::ClientDisconnect, S::Client));
    }
    let Some(status) = status else {
        // No status and no explanation from Envoy: the client went away first.
        return Some((C::ClientDisconnect, S::Client));
    };
    match from_status(status) {
        Some(c) => Some((c, S::Provider)),
        // An error the provider sent in a successful response (an `error` event ending a 200
        // stream), with a code the mapping does not know: still an error.
        None if code.is_some() => Some((C::ProviderError, S::Provider)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_streams() {
        assert_eq!(
            classify(Some(200), None, Some("via_upstream"), true),
            Some((C::ClientDisconnect, S::Client))
        );
        assert_eq!(
            classify(
                Some(200),
                None,
                Some("upstream_reset_after_response_started{remote_reset}"),
                true
            ),
            Some((C::ProviderError, S::Network))
        );
        assert_eq!(
            classify(Some(200), Some("overloaded_error"), None, true),
            Some((C::Overloaded, S::Provider))
        );
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(Some(200), None, Some("via_upstream"), false), None);
        assert_eq!(
            classify(
                Some(429),
                Some("rate_limit_exceeded"),
                Some("via_upstream"),
                false
            ),
            Some((C::RateLimited, S::Provider))
        );
        assert_eq!(
            classify(Some(400), Some("context_length_exceeded"), None, false),
            Some((C::ContextLength, S::Provider))
        );
        assert_eq!(
            classify(Some(529), Some("overloaded_error"), None, false),
            Some((C::Overloaded, S::Provider))
        );
        // An error event inside a 200 stream still counts.
        assert_eq!(
            classify(Some(200), Some("overloaded_error"), None, false),
            Some((C::Overloaded, S::Provider))
        );
        assert_eq!(
            classify(Some(418), None, None, false),
            Some((C::InvalidRequest, S::Provider))
        );
        assert_eq!(
            classify(Some(503), None, Some("no_healthy_upstream"), false),
            Some((C::UpstreamUnreachable, S::Network))
        );
        assert_eq!(
            classify(Some(504), None, Some("response_timeout"), false),
            Some((C::Timeout, S::Network))
        );
        assert_eq!(
            classify(None, None, None, false),
            Some((C::ClientDisconnect, S::Client))
        );
    }

    #[test]
    fn errors_inside_a_successful_response() {
        // A numeric code is an HTTP status (OpenRouter, vLLM), even under a 200.
        assert_eq!(
            classify(Some(200), Some("429"), None, false),
            Some((C::RateLimited, S::Provider))
        );
        assert_eq!(
            classify(Some(200), Some("502"), None, false),
            Some((C::ProviderError, S::Provider))
        );
        assert_eq!(
            classify(Some(200), Some("400"), None, false),
            Some((C::InvalidRequest, S::Provider))
        );
        // A code no mapping knows: under a 200 it is still an error; otherwise the status says.
        assert_eq!(
            classify(Some(200), Some("BadRequestError"), None, false),
            Some((C::ProviderError, S::Provider))
        );
        assert_eq!(
            classify(Some(200), Some("200"), None, false),
            Some((C::ProviderError, S::Provider))
        );
        assert_eq!(
            classify(Some(429), Some("something_new"), None, false),
            Some((C::RateLimited, S::Provider))
        );
        assert_eq!(classify(Some(200), None, None, false), None);
    }
}

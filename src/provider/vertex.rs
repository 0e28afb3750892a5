//! Google Vertex AI: Gemini and Claude served under one resource path.
//!
//! ```text
//! /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}
//! /{v1|v1beta1}/publishers/{publisher}/models/{model}:{method}          (express mode, API key)
//! ```
//!
//! | publisher | method | wire format |
//! |---|---|---|
//! | `google` | `generateContent`, `streamGenerateContent` (SSE with `alt=sse`, else a JSON array) | Gemini's ([`super::gemini`]) |
//! | `anthropic` | `rawPredict`, `streamRawPredict` (SSE) | Anthropic Messages ([`super::anthropic`]) |
//!
//! The model is named in the path only (Claude's request body has no `model`; it carries
//! `anthropic_version` instead), with Vertex's `@` snapshot suffix (`claude-sonnet-4-5@20250929`),
//! which is kept as the requested model's id. The response says which model served: Gemini's
//! `modelVersion`, Claude's `model` (Anthropic's own spelling, `claude-sonnet-4-5-20250929`).
//!
//! Hosts: regional (`us-central1-aiplatform.googleapis.com`) and global
//! (`aiplatform.googleapis.com`, location `global`). The path alone is enough to know a Vertex
//! call, so a proxy in front of Vertex under any host is metered the same.

use super::Api;

/// The provider's name in events (LiteLLM's name for the channel, under which its prices are
/// listed).
pub const PROVIDER: &str = "vertex_ai";

/// Whether a host (lower case, without port) is a Vertex AI endpoint.
pub fn is_vertex_host(host: &str) -> bool {
    host == "aiplatform.googleapis.com"
        || host
            .strip_suffix("-aiplatform.googleapis.com")
            .is_some_and(|region| !region.is_empty() && !region.contains('.'))
}

/// `(api, model, streaming)` of a Vertex AI model call, from the path without its query.
pub fn route_for_path(path: &str) -> Option<(Api, String, bool)> {
    let (before, rest) = path.rsplit_once("/publishers/")?;
    // The resource is the project's location, or (express mode) the API version itself.
    let under_location = before
        .rsplit_once("/locations/")
        .is_some_and(|(project, location)| {
            !location.is_empty() && !location.contains('/') && project.contains("/projects/")
        });
    let under_version = before.ends_with("/v1") || before.ends_with("/v1beta1");
    if !(under_location || under_version) {
        return None;
    }
    let (publisher, rest) = rest.split_once('/')?;
    let (model, method) = rest.strip_prefix("models/")?.split_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    let (api, streaming) = match (publisher, method) {
        ("google", "generateContent") => (Api::GenerateContent, false),
        ("google", "streamGenerateContent") => (Api::GenerateContent, true),
        ("anthropic", "rawPredict") => (Api::Messages, false),
        ("anthropic", "streamRawPredict") => (Api::Messages, true),
        _ => return None,
    };
    Some((api, model.to_string(), streaming))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_both_publishers_and_both_versions() {
        let r = |p: &str| route_for_path(p);
        let gemini = "/v1/projects/acme-prod/locations/us-central1/publishers/google/models/gemini-2.5-flash";
        assert_eq!(
            r(&format!("{gemini}:generateContent")),
            Some((Api::GenerateContent, "gemini-2.5-flash".into(), false))
        );
        assert_eq!(
            r(&format!("{gemini}:streamGenerateContent")),
            Some((Api::GenerateContent, "gemini-2.5-flash".into(), true))
        );
        assert_eq!(
            r("/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro:generateContent"),
            Some((Api::GenerateContent, "gemini-2.5-pro".into(), false))
        );
        let claude = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929";
        assert_eq!(
            r(&format!("{claude}:rawPredict")),
            Some((Api::Messages, "claude-sonnet-4-5@20250929".into(), false))
        );
        assert_eq!(
            r(&format!("{claude}:streamRawPredict")),
            Some((Api::Messages, "claude-sonnet-4-5@20250929".into(), true))
        );
        // Express mode, and a gateway's prefix in front.
        assert_eq!(
            r("/v1/publishers/google/models/gemini-2.5-flash:generateContent"),
            Some((Api::GenerateContent, "gemini-2.5-flash".into(), false))
        );
        assert_eq!(
            r("/vertex/v1/projects/p/locations/europe-west1/publishers/anthropic/models/claude-haiku-4-5@20251001:rawPredict"),
            Some((Api::Messages, "claude-haiku-4-5@20251001".into(), false))
        );
        // Not model calls Tally meters.
        for p in [
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:countTokens",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4-5@20250929:countTokens",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:generateContent",
            "/v1/projects/p/locations/l/publishers/google/models/:generateContent",
            "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict",
            "/v1/projects/p/locations/l/endpoints/123:rawPredict",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/other/publishers/google/models/gemini-2.5-flash:generateContent",
        ] {
            assert_eq!(r(p), None, "{p}");
        }
    }

    #[test]
    fn hosts() {
        assert!(is_vertex_host("us-central1-aiplatform.googleapis.com"));
        assert!(is_vertex_host("europe-west4-aiplatform.googleapis.com"));
        assert!(is_vertex_host("aiplatform.googleapis.com"));
        assert!(!is_vertex_host("-aiplatform.googleapis.com"));
        assert!(!is_vertex_host("evil.com-aiplatform.googleapis.com"));
        assert!(!is_vertex_host("generativelanguage.googleapis.com"));
    }
}

#[cfg(test)]
mod detection {
    use crate::provider::{detect, provider_for_host, Api};

    #[test]
    fn vertex_calls_are_vertex_by_host_and_by_path() {
        let none: &[(String, String)] = &[];
        let path = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        for host in [
            "us-central1-aiplatform.googleapis.com",
            "aiplatform.googleapis.com:443",
            "127.0.0.1:10000",
        ] {
            let r = detect("POST", path, host, None, none).unwrap();
            assert_eq!(r.provider, "vertex_ai", "{host}");
            assert_eq!(r.api, Api::GenerateContent);
            assert_eq!(r.path_model.as_deref(), Some("gemini-2.5-flash"));
            assert!(r.path_streaming);
        }
        let r = detect(
            "POST",
            "/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            "aiplatform.googleapis.com",
            None,
            none,
        )
        .unwrap();
        assert_eq!(
            (
                r.provider.as_str(),
                r.api,
                r.path_model.as_deref(),
                r.path_streaming
            ),
            (
                "vertex_ai",
                Api::Messages,
                Some("claude-sonnet-4-5@20250929"),
                false
            )
        );
        // The Gemini API stays Gemini; an unmetered Vertex call still goes to a provider host.
        let r = detect(
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "generativelanguage.googleapis.com",
            None,
            none,
        )
        .unwrap();
        assert_eq!(r.provider, "gemini");
        assert_eq!(
            provider_for_host("europe-west4-aiplatform.googleapis.com"),
            Some("vertex_ai")
        );
        assert_eq!(
            crate::org_keys::api_for_refusal(
                "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:countTokens"
            ),
            Api::Messages
        );
    }
}

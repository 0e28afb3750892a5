//! What the collector's own HTTP calls share (SSO's calls to the identity provider, alert
//! deliveries to webhooks): a URL read into where to connect, and the TLS client setup.

use std::sync::Arc;

/// Where a URL says to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Lowercase, without brackets or a trailing dot.
    pub host: String,
    pub port: u16,
    /// `Host:` as the URL wrote it.
    pub authority: String,
    /// Path and query (`/` when none).
    pub path: String,
}

/// Why a URL is not one the collector calls; each caller words it (some must not repeat the
/// URL, whose path may be a credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUrl {
    NotAUrl,
    Scheme,
    NoHost,
    Credentials,
}

/// An `http://` or `https://` URL with a host and no credentials.
pub fn parse(url: &str) -> Result<Target, BadUrl> {
    let uri: axum::http::Uri = url.parse().map_err(|_| BadUrl::NotAUrl)?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(BadUrl::Scheme),
    };
    let authority = uri.authority().ok_or(BadUrl::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(BadUrl::Credentials);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(BadUrl::NoHost);
    }
    Ok(Target {
        https,
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: authority.as_str().to_string(),
        host,
        path: uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
    })
}

/// A TLS client configuration over `roots`: ring, the safe default protocol versions.
pub fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

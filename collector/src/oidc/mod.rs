//! Sign-in by SSO: OpenID Connect's authorization code flow with PKCE (S256).
//!
//! `GET /auth/login` (`Sso::start`) makes a state, a nonce and a PKCE verifier, keeps them in
//! memory for ten minutes under the state, binds them to the browser with a random cookie, and
//! sends the browser to the provider. `GET /auth/callback` (`Sso::finish`) takes the record back
//! (once), checks the cookie, trades the code for tokens at the token endpoint, verifies the ID
//! token (`jwt`), and maps the verified identity to an org and a role. The session itself is
//! opened by `users` and `web`.
//!
//! Tokens, codes and the client secret live only in memory for the length of one sign-in: they
//! are never logged or stored. Logs name the issuer and a hash of the subject.

pub mod http;
pub mod jwt;

use crate::keys;
use crate::log;
use crate::users::{Role, SsoUser};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a started sign-in may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress at once (about 300 bytes each); beyond that the oldest is dropped, so
/// that a flood of `/auth/login` costs bounded memory and never shuts sign-in off.
pub const MAX_PENDING: usize = 10_000;
/// The JWKS is fetched again for an unknown `kid` at most this often.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Discovery and keys are read again after this long anyway.
pub const METADATA_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Where the provider sends the browser back, under the collector's external URL.
pub const CALLBACK_PATH: &str = "/auth/callback";
/// The environment variable the client secret may come from.
pub const SECRET_ENV: &str = "TALLY_OIDC_CLIENT_SECRET";

/// The `serve` flags for sign-in (flattened into the CLI).
#[derive(clap::Args, Debug, Default)]
#[group(id = "sign_in")]
pub struct Args {
    /// SSO: the OpenID Provider's issuer URL (https; http only on loopback). Its discovery
    /// document is read from ISSUER/.well-known/openid-configuration.
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// SSO: this collector's client id at the provider.
    #[arg(long, value_name = "ID")]
    pub oidc_client_id: Option<String>,
    /// SSO: a file holding the client secret (or set TALLY_OIDC_CLIENT_SECRET); without one the
    /// client is public and relies on PKCE alone.
    #[arg(long, value_name = "PATH")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// SSO: the scopes asked for, space-separated; must include openid.
    #[arg(long, value_name = "SCOPES", default_value = "openid email profile")]
    pub oidc_scopes: String,
    /// SSO: the external URL of /auth/callback, as registered at the provider (default:
    /// derived from the listen address).
    #[arg(long, value_name = "URL")]
    pub oidc_redirect_url: Option<String>,
    /// SSO: users whose verified email is in DOMAIN belong to ORG (repeatable).
    #[arg(long = "oidc-org-domain", value_name = "DOMAIN=ORG")]
    pub oidc_org_domains: Vec<String>,
    /// SSO: a claim whose value picks the user's org through --oidc-org-claim-value (needs a
    /// verified email too); tried before the domains. A value no mapping names is refused.
    #[arg(long, value_name = "CLAIM")]
    pub oidc_org_claim: Option<String>,
    /// SSO: with --oidc-org-claim, users whose claim is VALUE (or, as a list, holds it) belong
    /// to ORG (repeatable). A claim's value is never taken as an org's name by itself.
    #[arg(long = "oidc-org-claim-value", value_name = "VALUE=ORG")]
    pub oidc_org_claim_values: Vec<String>,
    /// SSO: emails that sign in as admins (comma-separated); everyone else is a viewer.
    #[arg(long, value_name = "EMAILS", value_delimiter = ',')]
    pub oidc_admin_emails: Vec<String>,
    /// SSO: a claim that makes a user an admin when it equals VALUE or, as a list, holds it
    /// (e.g. groups=tally-admins).
    #[arg(long, value_name = "CLAIM=VALUE")]
    pub oidc_admin_claim: Option<String>,
    /// SSO: PEM certificates to trust for the provider besides the public roots.
    #[arg(long, value_name = "PATH")]
    pub oidc_ca_file: Option<PathBuf>,
    /// Turn sign-in by password off (SSO only).
    #[arg(long)]
    pub no_local_login: bool,
}

/// The client secret. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The org claim's name, and each of its values mapped to an org's name.
pub type OrgClaim = (String, Vec<(String, String)>);

/// Checked sign-in configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: String,
    pub redirect_url: Option<String>,
    /// Email domain (lowercase) to org name.
    pub org_domains: Vec<(String, String)>,
    pub org_claim: Option<OrgClaim>,
    pub admin_emails: Vec<String>,
    pub admin_claim: Option<(String, String)>,
    pub ca_file: Option<PathBuf>,
}

fn split_pair(flag: &str, v: &str) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
            Ok((a.trim().to_string(), b.trim().to_string()))
        }
        _ => Err(format!("{flag} {v:?}: expected NAME=VALUE")),
    }
}

impl Config {
    /// The configuration from the flags and the environment's secret, or what is wrong with
    /// it. `None`: SSO is not configured.
    pub fn from_args(args: &Args, env_secret: Option<String>) -> Result<Option<Config>, String> {
        let Some(issuer) = args.oidc_issuer.clone() else {
            let stray = args.oidc_client_id.is_some()
                || args.oidc_client_secret_file.is_some()
                || args.oidc_redirect_url.is_some()
                || !args.oidc_org_domains.is_empty()
                || args.oidc_org_claim.is_some()
                || !args.oidc_org_claim_values.is_empty()
                || !args.oidc_admin_emails.is_empty()
                || args.oidc_admin_claim.is_some()
                || args.oidc_ca_file.is_some();
            if stray {
                return Err("the --oidc-* flags need --oidc-issuer".into());
            }
            if args.no_local_login {
                return Err(
                    "--no-local-login without --oidc-issuer would leave no way to sign in".into(),
                );
            }
            return Ok(None);
        };
        http::Target::parse(&issuer).map_err(|e| format!("--oidc-issuer: {e}"))?;
        if issuer.contains(['?', '#']) {
            return Err("--oidc-issuer: an issuer has no query or fragment".into());
        }
        let client_id = args
            .oidc_client_id
            .clone()
            .filter(|c| !c.trim().is_empty())
            .ok_or("--oidc-issuer needs --oidc-client-id")?;
        let client_secret = match (&args.oidc_client_secret_file, env_secret) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "the client secret is given twice: --oidc-client-secret-file and {SECRET_ENV}; \
                     keep one"
                ))
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--oidc-client-secret-file {}: {e}", path.display()))?;
                let secret = text.trim_end_matches(['\r', '\n']).to_string();
                if secret.is_empty() {
                    return Err(format!(
                        "--oidc-client-secret-file {}: the file is empty",
                        path.display()
                    ));
                }
                Some(Secret(secret))
            }
            (None, Some(env)) => Some(Secret(env)),
            (None, None) => None,
        };
        let scopes: Vec<&str> = args.oidc_scopes.split_whitespace().collect();
        if !scopes.contains(&"openid") {
            return Err(format!(
                "--oidc-scopes {:?} must include openid",
                args.oidc_scopes
            ));
        }
        if let Some(url) = &args.oidc_redirect_url {
            check_redirect_url(url)?;
        }
        let mut org_domains: Vec<(String, String)> = Vec::new();
        for pair in &args.oidc_org_domains {
            let (domain, org) = split_pair("--oidc-org-domain", pair)?;
            let domain = domain.trim_start_matches('@').to_ascii_lowercase();
            if domain.contains('@') || !domain.contains('.') {
                return Err(format!(
                    "--oidc-org-domain {pair:?}: {domain:?} is not a domain"
                ));
            }
            if org_domains.iter().any(|(d, _)| *d == domain) {
                return Err(format!("--oidc-org-domain: {domain} is mapped twice"));
            }
            org_domains.push((domain, org));
        }
        let org_claim = org_claim(args)?;
        if org_domains.is_empty() && org_claim.is_none() {
            return Err(
                "SSO needs a way to map users to orgs: --oidc-org-domain DOMAIN=ORG and/or \
                 --oidc-org-claim CLAIM with --oidc-org-claim-value VALUE=ORG"
                    .into(),
            );
        }
        let mut admin_emails = Vec::new();
        for e in &args.oidc_admin_emails {
            let e = e.trim().to_ascii_lowercase();
            if e.is_empty() {
                continue;
            }
            if !e.contains('@') {
                return Err(format!(
                    "--oidc-admin-emails: {e:?} is not an email address"
                ));
            }
            admin_emails.push(e);
        }
        let admin_claim = args
            .oidc_admin_claim
            .as_deref()
            .map(|v| split_pair("--oidc-admin-claim", v))
            .transpose()?;
        if let Some(path) = &args.oidc_ca_file {
            // Read now, so that a wrong path fails at start rather than at the first sign-in.
            http::Client::new(Some(path))?;
        }
        Ok(Some(Config {
            issuer,
            client_id,
            client_secret,
            scopes: scopes.join(" "),
            redirect_url: args.oidc_redirect_url.clone(),
            org_domains,
            org_claim,
            admin_emails,
            admin_claim,
            ca_file: args.oidc_ca_file.clone(),
        }))
    }
}

/// `--oidc-org-claim` with its `--oidc-org-claim-value` mappings: one needs the other. Values are
/// mapped explicitly because users may be able to change some claims at their provider (a
/// profile field, a self-service attribute): a value taken as an org's name would let them pick
/// any org here.
fn org_claim(args: &Args) -> Result<Option<OrgClaim>, String> {
    let name = args
        .oidc_org_claim
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let Some(name) = name else {
        if !args.oidc_org_claim_values.is_empty() {
            return Err("--oidc-org-claim-value needs --oidc-org-claim CLAIM".into());
        }
        return Ok(None);
    };
    let mut values: Vec<(String, String)> = Vec::new();
    for pair in &args.oidc_org_claim_values {
        // The org is after the last '=' (org names have none); a value may hold some.
        let (value, org) = match pair.rsplit_once('=') {
            Some((v, o)) if !v.trim().is_empty() && !o.trim().is_empty() => {
                (v.trim().to_string(), o.trim().to_string())
            }
            _ => {
                return Err(format!(
                    "--oidc-org-claim-value {pair:?}: expected VALUE=ORG"
                ))
            }
        };
        if values.iter().any(|(v, _)| *v == value) {
            return Err(format!("--oidc-org-claim-value: {value:?} is mapped twice"));
        }
        values.push((value, org));
    }
    if values.is_empty() {
        return Err(format!(
            "--oidc-org-claim {name} needs --oidc-org-claim-value VALUE=ORG for each value that \
             names an org: a claim's value is never taken as an org's name by itself (users may \
             be able to change some claims at their provider)"
        ));
    }
    Ok(Some((name.to_string(), values)))
}

/// The redirect URL the provider sends codes to: https (or http on loopback), ending in
/// `/auth/callback`, which is the route that takes them.
fn check_redirect_url(url: &str) -> Result<(), String> {
    http::Target::parse(url).map_err(|e| format!("--oidc-redirect-url: {e}"))?;
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    if !path.ends_with(CALLBACK_PATH) || path.contains(['?', '#']) {
        return Err(format!(
            "--oidc-redirect-url {url:?} must end with {CALLBACK_PATH} (the collector's callback \
             route, under its external URL)"
        ));
    }
    Ok(())
}

/// What the provider's discovery document says (the parts used).
#[derive(Debug, Clone)]
struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    /// Client authentication at the token endpoint: HTTP Basic, else form fields.
    basic_auth: bool,
    read_at: Instant,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Default)]
struct Keys {
    set: jwt::KeySet,
    read_at: Option<Instant>,
}

struct Pending {
    binding_hash: String,
    nonce: String,
    verifier: String,
    expires: Instant,
}

/// Why a sign-in failed. `Display` is what the user reads; `log_reason` what the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoError {
    /// No record for this state (expired, used, or never started here), or another browser's.
    UnknownState,
    /// The provider sent an error instead of a code (`access_denied` when consent is refused).
    Denied(String),
    /// The provider could not be reached or answered nonsense (detail for the log).
    Unavailable(String),
    /// The token endpoint refused the code (its error code, for the log).
    Exchange(String),
    Token(jwt::TokenError),
    NoEmail,
    EmailUnverified,
    /// The org claim is absent and the email's domain maps to no org.
    NoOrg,
    /// The org claim has a value (for the log: the claim, and the value shortened) that no
    /// `--oidc-org-claim-value` maps.
    UnmappedClaim(String, String),
    /// The org claim is a list whose mapped members name different orgs.
    SeveralOrgs(String),
}

impl std::fmt::Display for SsoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SsoError::UnknownState => write!(
                f,
                "This sign-in has expired or was started in another browser. Please sign in again."
            ),
            SsoError::Denied(code) => write!(
                f,
                "The identity provider did not sign you in ({code}). No session was opened."
            ),
            SsoError::Unavailable(_) => write!(
                f,
                "The identity provider could not be reached. Please try again later."
            ),
            SsoError::Exchange(_) => write!(
                f,
                "The identity provider refused to complete this sign-in. Please sign in again."
            ),
            SsoError::Token(e) => write!(f, "Sign-in refused: {e}."),
            SsoError::NoEmail => write!(
                f,
                "Sign-in refused: the identity provider shared no email address (the email scope \
                 is needed)."
            ),
            SsoError::EmailUnverified => write!(
                f,
                "Sign-in refused: your email address is not verified by the identity provider."
            ),
            SsoError::NoOrg => write!(
                f,
                "Sign-in refused: unmapped identity: no org here is mapped to your identity \
                 (email domain or claim)."
            ),
            SsoError::UnmappedClaim(claim, _) => write!(
                f,
                "Sign-in refused: unmapped identity: no org here is mapped to the value of your \
                 {claim:?} claim."
            ),
            SsoError::SeveralOrgs(claim) => write!(
                f,
                "Sign-in refused: your {claim:?} claim maps to several orgs here; ask an admin."
            ),
        }
    }
}

impl SsoError {
    pub fn log_reason(&self) -> String {
        match self {
            SsoError::UnknownState => "unknown, expired or foreign state".into(),
            SsoError::Denied(code) => format!("provider error {code}"),
            SsoError::Unavailable(detail) => format!("provider unavailable: {detail}"),
            SsoError::Exchange(detail) => format!("token endpoint refused the code: {detail}"),
            SsoError::Token(e) => format!("ID token refused: {e}"),
            SsoError::NoEmail => "no email claim".into(),
            SsoError::EmailUnverified => "email not verified".into(),
            SsoError::NoOrg => {
                "unmapped identity: no org claim, and no org for the email's domain".into()
            }
            SsoError::UnmappedClaim(claim, value) => format!(
                "unmapped identity: claim {claim} is {value}, which no --oidc-org-claim-value maps"
            ),
            SsoError::SeveralOrgs(claim) => {
                format!("claim {claim} maps to several orgs")
            }
        }
    }

    /// The HTTP status of the error page.
    pub fn status(&self) -> u16 {
        match self {
            SsoError::UnknownState | SsoError::Denied(_) | SsoError::Exchange(_) => 400,
            SsoError::Unavailable(_) => 502,
            _ => 403,
        }
    }
}

/// A started sign-in: where to send the browser, and the cookie value binding it.
pub struct Started {
    pub location: String,
    pub binding: String,
}

/// What the provider's callback carried.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// The running SSO client.
pub struct Sso {
    config: Config,
    client: http::Client,
    redirect_url: OnceLock<String>,
    provider: tokio::sync::Mutex<Option<Provider>>,
    keys: tokio::sync::Mutex<Keys>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Only short plain words from the provider reach a page or the log.
fn safe_code(code: &str) -> String {
    if !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        code.to_string()
    } else {
        "unknown error".to_string()
    }
}

fn percent_query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

impl Sso {
    pub fn new(config: Config) -> Result<Sso, String> {
        let client = http::Client::new(config.ca_file.as_deref())?;
        let redirect_url = OnceLock::new();
        if let Some(url) = &config.redirect_url {
            let _ = redirect_url.set(url.clone());
        }
        Ok(Sso {
            config,
            client,
            redirect_url,
            provider: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(Keys::default()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the redirect URL from the address the collector is reachable at, unless one was
    /// given. Called once the listener is bound (`--listen 127.0.0.1:0` learns its port then).
    pub fn default_redirect(
        &self,
        scheme: &str,
        bound: std::net::SocketAddr,
    ) -> Result<(), String> {
        if self.redirect_url.get().is_some() {
            return Ok(());
        }
        if bound.ip().is_unspecified() {
            return Err(format!(
                "SSO: listening on {bound}, the collector cannot tell its own external URL; give \
                 --oidc-redirect-url https://HOST{CALLBACK_PATH}"
            ));
        }
        let url = format!("{scheme}://{bound}{CALLBACK_PATH}");
        check_redirect_url(&url)?;
        let _ = self.redirect_url.set(url);
        Ok(())
    }

    pub fn redirect_url(&self) -> &str {
        self.redirect_url.get().map_or("", String::as_str)
    }

    /// True when the callback is served over https, so its cookies may be `Secure`.
    pub fn secure_callback(&self) -> bool {
        self.redirect_url().starts_with("https://")
    }

    /// Reads discovery and keys now, so that a wrong issuer shows in the log at start. A
    /// provider that is down is not fatal: sign-in tries again.
    pub async fn warm_up(&self) {
        match self.provider().await {
            Ok(p) => {
                if let Err(e) = self.refresh_keys(&p, true).await {
                    log::warn(&format!("sso: {}", e.log_reason()));
                } else {
                    log::info(&format!(
                        "sso: issuer {} ready; redirect URL {}",
                        self.config.issuer,
                        self.redirect_url()
                    ));
                }
            }
            Err(e) => log::warn(&format!("sso: {} (sign-in will try again)", e.log_reason())),
        }
    }

    async fn provider(&self) -> Result<Provider, SsoError> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref() {
            if p.read_at.elapsed() < METADATA_MAX_AGE {
                return Ok(p.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let answer = self
            .client
            .get(&url, None)
            .await
            .map_err(|e| SsoError::Unavailable(format!("discovery: {e}")))?;
        if !answer.status.is_success() {
            return Err(SsoError::Unavailable(format!(
                "discovery answered {}",
                answer.status.as_u16()
            )));
        }
        let doc: Discovery = serde_json::from_slice(&answer.body)
            .map_err(|e| SsoError::Unavailable(format!("discovery document: {e}")))?;
        if doc.issuer != self.config.issuer {
            return Err(SsoError::Unavailable(format!(
                "the provider calls itself {:?}, not {:?}: give --oidc-issuer exactly as it \
                 does",
                doc.issuer, self.config.issuer
            )));
        }
        for url in [
            &doc.authorization_endpoint,
            &doc.token_endpoint,
            &doc.jwks_uri,
        ]
        .into_iter()
        .chain(doc.userinfo_endpoint.as_ref())
        {
            http::Target::parse(url)
                .map_err(|e| SsoError::Unavailable(format!("discovery: {e}")))?;
        }
        if let Some(methods) = &doc.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err(SsoError::Unavailable(
                    "the provider does not support PKCE with S256".into(),
                ));
            }
        }
        let methods = &doc.token_endpoint_auth_methods_supported;
        // client_secret_basic is the default when the provider lists nothing.
        let basic_auth = methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic");
        let p = Provider {
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
            jwks_uri: doc.jwks_uri,
            userinfo_endpoint: doc.userinfo_endpoint,
            basic_auth,
            read_at: Instant::now(),
        };
        *cached = Some(p.clone());
        Ok(p)
    }

    /// Fetches the JWKS when there is none, it is old, or (`force`, for an unknown `kid`) when
    /// the last fetch is older than `JWKS_MIN_REFRESH`. Returns the key set to use.
    async fn refresh_keys(&self, p: &Provider, force: bool) -> Result<jwt::KeySet, SsoError> {
        let mut keys = self.keys.lock().await;
        let due = match keys.read_at {
            None => true,
            Some(at) => {
                at.elapsed() > METADATA_MAX_AGE || (force && at.elapsed() >= JWKS_MIN_REFRESH)
            }
        };
        if due {
            let answer = self
                .client
                .get(&p.jwks_uri, None)
                .await
                .map_err(|e| SsoError::Unavailable(format!("JWKS: {e}")))?;
            if !answer.status.is_success() {
                return Err(SsoError::Unavailable(format!(
                    "JWKS answered {}",
                    answer.status.as_u16()
                )));
            }
            keys.set = jwt::KeySet::parse(&answer.body).map_err(SsoError::Unavailable)?;
            keys.read_at = Some(Instant::now());
        }
        Ok(keys.set.clone())
    }

    /// Starts a sign-in: the provider's authorization URL, and the binding cookie's value.
    pub async fn start(&self) -> Result<Started, SsoError> {
        let p = self.provider().await?;
        let state = keys::random_token();
        let nonce = keys::random_token();
        // 80 characters of [0-9A-Za-z]: within RFC 7636's 43 to 128 unreserved characters.
        let verifier = format!("{}{}", keys::random_token(), keys::random_token());
        let challenge = b64url(&sha2_digest(verifier.as_bytes()));
        let binding = keys::random_token();
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| SsoError::Unavailable("pending sign-ins lock poisoned".into()))?;
            let now = Instant::now();
            pending.retain(|_, v| v.expires > now);
            if pending.len() >= MAX_PENDING {
                let oldest = pending
                    .iter()
                    .min_by_key(|(_, v)| v.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    pending.remove(&k);
                }
            }
            pending.insert(
                state.clone(),
                Pending {
                    binding_hash: keys::hash(&binding),
                    nonce: nonce.clone(),
                    verifier,
                    expires: now + PENDING_TTL,
                },
            );
        }
        let query = percent_query(&[
            ("response_type", "code"),
            ("client_id", &self.config.client_id),
            ("redirect_uri", self.redirect_url()),
            ("scope", &self.config.scopes),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let sep = if p.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(Started {
            location: format!("{}{sep}{query}", p.authorization_endpoint),
            binding,
        })
    }

    /// Finishes a sign-in from the provider's callback and the browser's binding cookie: the
    /// verified, mapped identity, or why not.
    pub async fn finish(
        &self,
        cb: &Callback,
        binding: Option<&str>,
    ) -> Result<SsoUser, (SsoError, Option<String>)> {
        let state = cb
            .state
            .as_deref()
            .filter(|s| s.len() <= 128)
            .ok_or((SsoError::UnknownState, None))?;
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(state))
            .filter(|p| p.expires > Instant::now())
            .ok_or((SsoError::UnknownState, None))?;
        let bound = binding.is_some_and(|b| {
            keys::constant_time_eq(keys::hash(b).as_bytes(), pending.binding_hash.as_bytes())
        });
        if !bound {
            return Err((SsoError::UnknownState, None));
        }
        if let Some(error) = &cb.error {
            return Err((SsoError::Denied(safe_code(error)), None));
        }
        let code = cb
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or((SsoError::Exchange("no code in the callback".into()), None))?;
        let p = self.provider().await.map_err(|e| (e, None))?;
        let (id_token, access_token) = self
            .exchange(&p, code, &pending.verifier)
            .await
            .map_err(|e| (e, None))?;
        let now_s = crate::api::now_ms() / 1000;
        let expect = jwt::Expect {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            nonce: &pending.nonce,
            now_s,
        };
        let keyset = self.refresh_keys(&p, false).await.map_err(|e| (e, None))?;
        let claims = match jwt::verify(&id_token, &keyset, &expect) {
            Err(jwt::TokenError::UnknownKey) => {
                // The provider may have rotated its keys since they were read.
                let keyset = self.refresh_keys(&p, true).await.map_err(|e| (e, None))?;
                jwt::verify(&id_token, &keyset, &expect)
            }
            other => other,
        }
        .map_err(|e| (SsoError::Token(e), None))?;
        let subject_hash =
            keys::hex_sha256(format!("{}\n{}", self.config.issuer, claims.sub).as_bytes());
        let mut all = claims.all;
        if self.missing_claims(&all) {
            if let (Some(url), Some(token)) = (&p.userinfo_endpoint, &access_token) {
                self.merge_userinfo(url, token, &claims.sub, &mut all)
                    .await
                    .map_err(|e| (e, Some(subject_hash.clone())))?;
            }
        }
        drop(access_token);
        let (email, org, role) =
            map_identity(&self.config, &all).map_err(|e| (e, Some(subject_hash.clone())))?;
        Ok(SsoUser {
            subject_hash,
            email,
            org,
            role,
        })
    }

    /// Trades the code for tokens: the ID token, and the access token (for userinfo only).
    async fn exchange(
        &self,
        p: &Provider,
        code: &str,
        verifier: &str,
    ) -> Result<(String, Option<String>), SsoError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_url()),
            ("code_verifier", verifier),
        ];
        let mut basic = None;
        match &self.config.client_secret {
            Some(Secret(secret)) if p.basic_auth => {
                // RFC 6749 2.3.1: each part form-encoded, then joined and base64'd.
                let id = percent_query(&[("", self.config.client_id.as_str())]);
                let pw = percent_query(&[("", secret.as_str())]);
                let raw = format!(
                    "{}:{}",
                    id.trim_start_matches('='),
                    pw.trim_start_matches('=')
                );
                basic = Some(base64::engine::general_purpose::STANDARD.encode(raw));
            }
            Some(Secret(secret)) => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", secret));
            }
            None => form.push(("client_id", &self.config.client_id)),
        }
        let answer = self
            .client
            .post_form(&p.token_endpoint, percent_query(&form), basic)
            .await
            .map_err(|e| SsoError::Unavailable(format!("token endpoint: {e}")))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            access_token: Option<String>,
            error: Option<String>,
        }
        let parsed: Option<TokenAnswer> = serde_json::from_slice(&answer.body).ok();
        if !answer.status.is_success() {
            let code = parsed
                .and_then(|t| t.error)
                .map_or("no error code".to_string(), |c| safe_code(&c));
            return Err(SsoError::Exchange(format!(
                "{} ({code})",
                answer.status.as_u16()
            )));
        }
        let parsed = parsed
            .ok_or_else(|| SsoError::Exchange("the token endpoint's answer is not JSON".into()))?;
        let id_token = parsed
            .id_token
            .ok_or_else(|| SsoError::Exchange("no id_token in the answer".into()))?;
        Ok((id_token, parsed.access_token))
    }

    /// True when a claim the mappings read is absent from the ID token (some providers put
    /// them only in userinfo).
    fn missing_claims(&self, all: &Map<String, Value>) -> bool {
        let mut needed = vec!["email", "email_verified"];
        if let Some((c, _)) = &self.config.org_claim {
            needed.push(c);
        }
        if let Some((c, _)) = &self.config.admin_claim {
            needed.push(c);
        }
        needed.iter().any(|c| claim(all, c).is_none())
    }

    /// Fills the claims the ID token lacks from userinfo (never overriding it), whose `sub`
    /// must be the token's.
    async fn merge_userinfo(
        &self,
        url: &str,
        access_token: &str,
        sub: &str,
        all: &mut Map<String, Value>,
    ) -> Result<(), SsoError> {
        let answer = self
            .client
            .get(url, Some(access_token))
            .await
            .map_err(|e| SsoError::Unavailable(format!("userinfo: {e}")))?;
        if !answer.status.is_success() {
            return Err(SsoError::Unavailable(format!(
                "userinfo answered {}",
                answer.status.as_u16()
            )));
        }
        let info: Map<String, Value> = serde_json::from_slice(&answer.body)
            .map_err(|_| SsoError::Unavailable("userinfo is not a JSON object".into()))?;
        if info.get("sub").and_then(Value::as_str) != Some(sub) {
            return Err(SsoError::Unavailable(
                "userinfo describes another subject".into(),
            ));
        }
        for (k, v) in info {
            all.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// The number of sign-ins waiting for their callback.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`) when no
/// claim has the whole name.
fn claim<'a>(all: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = all.get(name) {
        return Some(v).filter(|v| !v.is_null());
    }
    let mut parts = name.split('.');
    let mut v = all.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v).filter(|v| !v.is_null())
}

/// The org the org claim maps to: `None` when the claim is absent or empty (the domains are
/// tried next), an error when it has a value that no mapping names. A list maps through its
/// mapped members, which must name one org (others, such as unrelated groups, are passed
/// over; a list with none is unmapped).
fn org_from_claim(
    name: &str,
    values: &[(String, String)],
    value: Option<&Value>,
) -> Result<Option<String>, SsoError> {
    let lookup = |v: &str| {
        values
            .iter()
            .find(|(want, _)| want == v.trim())
            .map(|(_, org)| org.clone())
    };
    let unmapped = |shown: String| {
        let mut shown = shown;
        if shown.len() > 64 {
            let mut end = 61;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        SsoError::UnmappedClaim(name.to_string(), shown)
    };
    match value {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::Array(list)) if list.is_empty() => Ok(None),
        Some(Value::String(s)) => lookup(s)
            .map(Some)
            .ok_or_else(|| unmapped(format!("{:?}", s.trim()))),
        Some(Value::Array(list)) => {
            let mut orgs: Vec<String> = list
                .iter()
                .filter_map(Value::as_str)
                .filter_map(lookup)
                .collect();
            orgs.sort();
            orgs.dedup();
            match orgs.len() {
                0 => Err(unmapped(format!(
                    "a list of {} with no mapped value",
                    list.len()
                ))),
                1 => Ok(orgs.pop()),
                _ => Err(SsoError::SeveralOrgs(name.to_string())),
            }
        }
        Some(other) => Err(unmapped(format!("{other}"))),
    }
}

/// The user's email, org and role from verified claims. The email must be verified by the
/// provider, whatever names the org: an unverified address could be anyone's.
pub fn map_identity(
    config: &Config,
    all: &Map<String, Value>,
) -> Result<(String, String, Role), SsoError> {
    let email = claim(all, "email")
        .and_then(Value::as_str)
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| crate::users::valid_email(e))
        .ok_or(SsoError::NoEmail)?;
    // Some providers send the boolean as a string.
    let verified = matches!(claim(all, "email_verified"), Some(Value::Bool(true)))
        || claim(all, "email_verified").and_then(Value::as_str) == Some("true");
    if !verified {
        return Err(SsoError::EmailUnverified);
    }
    let org = match &config.org_claim {
        Some((name, values)) => org_from_claim(name, values, claim(all, name))?,
        None => None,
    };
    let org = match org {
        Some(org) => org,
        None => {
            let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
            config
                .org_domains
                .iter()
                .find(|(d, _)| d == domain)
                .map(|(_, o)| o.clone())
                .ok_or(SsoError::NoOrg)?
        }
    };
    let by_email = config.admin_emails.contains(&email);
    let by_claim = config
        .admin_claim
        .as_ref()
        .is_some_and(|(c, want)| match claim(all, c) {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(want)),
            _ => false,
        });
    let role = if by_email || by_claim {
        Role::Admin
    } else {
        Role::Viewer
    };
    Ok((email, org, role))
}

#[cfg(test)]
mod tests;

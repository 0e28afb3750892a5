//! The filter's configuration: JSON from the Envoy wasm filter's `configuration`.
//!
//! Everything is checked here, once, at load: an unknown field, a bad value or a missing org key
//! fails the plugin's configuration with a message that says which, instead of surfacing later
//! as lost events.

use crate::identity::{self, Source};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Attribution fields read from request headers, with their default header names.
pub const FIELDS: [(Field, &str); 8] = [
    (Field::Team, "x-tally-team"),
    (Field::App, "x-tally-app"),
    (Field::Feature, "x-tally-feature"),
    (Field::Task, "x-tally-task"),
    (Field::Session, "x-tally-session"),
    (Field::User, "x-tally-user"),
    (Field::Provider, "x-tally-provider"),
    (Field::Key, "x-tally-key"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Team,
    App,
    Feature,
    Task,
    Session,
    User,
    Provider,
    Key,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "team" => Field::Team,
            "app" => Field::App,
            "feature" => Field::Feature,
            "task" => Field::Task,
            "session" => Field::Session,
            "user" => Field::User,
            "provider" => Field::Provider,
            "key" => Field::Key,
            _ => return None,
        })
    }
}

/// Headers that carry provider credentials: never an alias, never read.
const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    org_key: Option<String>,
    collector_cluster: Option<String>,
    collector_authority: Option<String>,
    batch_max_events: Option<usize>,
    flush_interval_ms: Option<u64>,
    queue_max_events: Option<usize>,
    call_timeout_ms: Option<u64>,
    max_event_age_ms: Option<u64>,
    max_sse_event_bytes: Option<usize>,
    max_decompressed_bytes: Option<usize>,
    stream_usage: Option<bool>,
    #[serde(default)]
    header_aliases: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    providers: BTreeMap<String, String>,
    #[serde(default)]
    bedrock_models: BTreeMap<String, String>,
    collector_token: Option<String>,
    org_from_request: Option<bool>,
    require_org_key: Option<bool>,
    controls_refresh_ms: Option<u64>,
    key_set_missing: Option<String>,
    org_key_scope: Option<String>,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    rules: Vec<crate::rules::RawRule>,
    model_hold_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    node: Option<bool>,
    peer_certificate: Option<bool>,
    trust_domain: Option<String>,
    #[serde(default)]
    attribution: BTreeMap<String, String>,
}

/// What a filter that requires org keys does before it has ever had the collector's key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySetMissing {
    /// Let requests through unmetered (the default: the filter never breaks traffic on its own).
    Pass,
    /// Refuse them with 401 until the key set arrives.
    Refuse,
}

/// Where events get mesh identity from, and which attribution it fills.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Istio's node metadata, read once per VM (a sidecar's own workload).
    pub node: bool,
    /// The downstream peer's SPIFFE ID from its mTLS certificate, per request (a gateway).
    pub peer_certificate: bool,
    pub trust_domain: String,
    /// Attribution fields filled from identity when a request has no header for them.
    pub attribution: Vec<(Field, Source)>,
}

impl IdentityConfig {
    /// Node labels the mapping reads (`label:<name>`).
    pub fn labels(&self) -> Vec<String> {
        self.attribution
            .iter()
            .filter_map(|(_, s)| match s {
                Source::Label(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The filter's own org key: its batches' credential without a mesh token, and the org of
    /// requests that carry no key.
    pub org_key: Option<Secret>,
    /// A mesh token (`tlm_...`): batches of several orgs' events.
    pub collector_token: Option<Secret>,
    /// Each request's event belongs to the org of its `X-Tally-Key`.
    pub org_from_request: bool,
    /// A request without a valid `X-Tally-Key` is refused (401).
    pub require_org_key: bool,
    /// `require_org_key` checks every request through the filter, not only those to LLM
    /// providers (`org_key_scope: "all"`).
    pub org_key_every_request: bool,
    pub controls_refresh_ms: u64,
    pub key_set_missing: KeySetMissing,
    pub identity: IdentityConfig,
    pub collector_cluster: String,
    pub collector_authority: String,
    pub batch_max_events: usize,
    pub flush_interval_ms: u64,
    pub queue_max_events: usize,
    pub call_timeout_ms: u64,
    /// An event not delivered after this long is dropped (counted).
    pub max_event_age_ms: u64,
    pub max_sse_event_bytes: usize,
    /// Cap on a compressed response's decoded size (bombs stop here).
    pub max_decompressed_bytes: usize,
    /// Add `stream_options.include_usage` to OpenAI-style streams that lack it, and hide the
    /// usage chunk from the client.
    pub stream_usage: bool,
    /// Lower-case header name -> the field it fills (defaults and aliases).
    pub headers: Vec<(String, Field)>,
    /// Authority (`host` or `host:port`, lower case) -> provider name, for self-hosted or
    /// unlisted OpenAI-compatible providers.
    pub provider_hosts: Vec<(String, String)>,
    /// Bedrock ARN (an application inference profile's, which names no model) -> the Bedrock
    /// model id it serves, for `model_actual` and the price.
    pub bedrock_models: Vec<(String, String)>,
    /// Rules, in order: the first that matches acts (PRODUCT.md, "Rules and budgets").
    pub rules: Vec<crate::rules::Rule>,
    /// The most body bytes held while a rule or budget waits for the model.
    pub model_hold_bytes: usize,
}

/// `tly_` followed by 40 base62 characters.
pub fn is_org_key(key: &str) -> bool {
    is_secret(key, "tly_")
}

/// `tlm_` followed by 40 base62 characters.
pub fn is_mesh_token(key: &str) -> bool {
    is_secret(key, "tlm_")
}

fn is_secret(key: &str, prefix: &str) -> bool {
    key.len() == 44
        && key.starts_with(prefix)
        && key.as_bytes()[4..].iter().all(u8::is_ascii_alphanumeric)
}

/// A credential: `Debug` never prints it, so no log line or panic message can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Values from Envoy's environment (`vm_config.environment_variables.host_env_keys`).
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// `TALLY_ORG_KEY`
    pub org_key: Option<String>,
    /// `TALLY_COLLECTOR_TOKEN`
    pub collector_token: Option<String>,
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn within(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{name} must be between {min} and {max}, got {value}"
        ));
    }
    Ok(())
}

impl Config {
    /// Parse the plugin configuration. `env_org_key` is `TALLY_ORG_KEY` from the VM environment,
    /// used when the JSON sets no `org_key`. An empty configuration means all defaults.
    pub fn parse(json: &[u8], env_org_key: Option<String>) -> Result<Config, String> {
        Config::parse_env(
            json,
            Env {
                org_key: env_org_key,
                collector_token: None,
            },
        )
    }

    /// [`Config::parse`] with every value Envoy's environment may give.
    pub fn parse_env(json: &[u8], env: Env) -> Result<Config, String> {
        let trimmed = json.iter().all(u8::is_ascii_whitespace);
        let raw: Raw = if trimmed {
            serde_json::from_str("{}")
        } else {
            serde_json::from_slice(json)
        }
        .map_err(|e| format!("invalid configuration: {e}"))?;

        let nonempty =
            |v: Option<String>| v.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
        let org_key = nonempty(raw.org_key).or_else(|| nonempty(env.org_key));
        let collector_token =
            nonempty(raw.collector_token).or_else(|| nonempty(env.collector_token));
        if org_key.is_none() && collector_token.is_none() {
            return Err(
                "no org key: set TALLY_ORG_KEY in Envoy's environment (and, for the wasm filter, \
                 list it in vm_config.environment_variables.host_env_keys) or org_key in the \
                 configuration \
                 (or, for a filter serving several orgs, a mesh token: TALLY_COLLECTOR_TOKEN or \
                 collector_token)"
                    .into(),
            );
        }
        // Never echo the values: they may be real secrets with a typo.
        if org_key.as_deref().is_some_and(|k| !is_org_key(k)) {
            return Err(
                "org key is malformed: expected tly_ followed by 40 letters or digits".into(),
            );
        }
        if collector_token
            .as_deref()
            .is_some_and(|k| !is_mesh_token(k))
        {
            return Err(
                "collector token is malformed: expected tlm_ followed by 40 letters or digits"
                    .into(),
            );
        }
        let require_org_key = raw.require_org_key.unwrap_or(false);
        let org_from_request = raw.org_from_request.unwrap_or(false) || require_org_key;
        if org_from_request && collector_token.is_none() {
            return Err(format!(
                "{} needs a mesh token (collector_token, or TALLY_COLLECTOR_TOKEN): the filter \
                 sends events of several orgs, which one org's key cannot",
                if require_org_key {
                    "require_org_key"
                } else {
                    "org_from_request"
                }
            ));
        }
        let key_set_missing = match raw.key_set_missing.as_deref() {
            None | Some("pass") => KeySetMissing::Pass,
            Some("refuse") => KeySetMissing::Refuse,
            Some(other) => {
                return Err(format!(
                    "key_set_missing must be \"pass\" or \"refuse\", got {other:?}"
                ))
            }
        };
        let identity = parse_identity(raw.identity)?;
        let org_key_every_request = match raw.org_key_scope.as_deref() {
            None | Some("providers") => false,
            Some("all") => true,
            Some(other) => {
                return Err(format!(
                    "org_key_scope must be \"providers\" or \"all\", got {other:?}"
                ))
            }
        };

        let mut headers: Vec<(String, Field)> =
            FIELDS.iter().map(|(f, h)| (h.to_string(), *f)).collect();
        for (field_name, aliases) in raw.header_aliases {
            let field = Field::from_name(&field_name).ok_or_else(|| {
                format!(
                    "header_aliases: unknown field {field_name:?} (expected team, app, feature, \
                     task, session, user, provider or key)"
                )
            })?;
            for alias in aliases {
                let name = alias.trim().to_ascii_lowercase();
                if !is_header_name(&name) {
                    return Err(format!(
                        "header_aliases.{field_name}: {alias:?} is not a header name"
                    ));
                }
                if CREDENTIAL_HEADERS.contains(&name.as_str()) || name.starts_with(':') {
                    return Err(format!(
                        "header_aliases.{field_name}: {alias:?} carries credentials or routing and \
                         cannot be an attribution header"
                    ));
                }
                if headers.iter().any(|(h, _)| *h == name) {
                    return Err(format!("header_aliases: {alias:?} is named twice"));
                }
                headers.push((name, field));
            }
        }

        let mut provider_hosts = Vec::new();
        for (host, name) in raw.providers {
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return Err(format!("providers: {host:?} is not a host or host:port"));
            }
            if !crate::provider::valid_provider_name(&name) {
                return Err(format!(
                    "providers.{host}: {name:?} is not a provider name (1 to 32 of a-z 0-9 . _ -)"
                ));
            }
            provider_hosts.push((host.to_ascii_lowercase(), name));
        }

        let mut bedrock_models = Vec::new();
        for (arn, model) in raw.bedrock_models {
            if !crate::provider::bedrock::is_mappable_arn(&arn) {
                return Err(format!(
                    "bedrock_models: {arn:?} is not a Bedrock ARN \
                     (arn:aws:bedrock:REGION:ACCOUNT:TYPE/ID)"
                ));
            }
            if model.is_empty()
                || model.len() > 256
                || model.contains(|c: char| c.is_whitespace() || c.is_control())
            {
                return Err(format!("bedrock_models.{arn}: {model:?} is not a model id"));
            }
            bedrock_models.push((arn, model));
        }

        let rules = crate::rules::parse_rules(raw.rules)?;
        let model_hold_bytes = raw
            .model_hold_bytes
            .unwrap_or(crate::rules::DEFAULT_HOLD_BYTES);
        within(
            "model_hold_bytes",
            model_hold_bytes as u64,
            1024,
            crate::rules::MAX_HOLD_BYTES as u64,
        )?;
        let cfg = Config {
            rules,
            model_hold_bytes,
            provider_hosts,
            bedrock_models,
            org_key: org_key.map(Secret),
            collector_token: collector_token.map(Secret),
            org_from_request,
            require_org_key,
            org_key_every_request,
            controls_refresh_ms: raw.controls_refresh_ms.unwrap_or(2000),
            key_set_missing,
            identity,
            collector_cluster: raw
                .collector_cluster
                .unwrap_or_else(|| "tally_collector".into()),
            collector_authority: raw
                .collector_authority
                .unwrap_or_else(|| "tally-collector".into()),
            batch_max_events: raw.batch_max_events.unwrap_or(200),
            flush_interval_ms: raw.flush_interval_ms.unwrap_or(1000),
            queue_max_events: raw.queue_max_events.unwrap_or(10_000),
            call_timeout_ms: raw.call_timeout_ms.unwrap_or(5000),
            max_event_age_ms: raw.max_event_age_ms.unwrap_or(6 * 3_600_000),
            max_sse_event_bytes: raw.max_sse_event_bytes.unwrap_or(1 << 20),
            max_decompressed_bytes: raw.max_decompressed_bytes.unwrap_or(64 << 20),
            stream_usage: raw.stream_usage.unwrap_or(true),
            headers,
        };
        if cfg.collector_cluster.is_empty() {
            return Err("collector_cluster must not be empty".into());
        }
        within("batch_max_events", cfg.batch_max_events as u64, 1, 10_000)?;
        within("flush_interval_ms", cfg.flush_interval_ms, 10, 600_000)?;
        within(
            "queue_max_events",
            cfg.queue_max_events as u64,
            1,
            1_000_000,
        )?;
        within("call_timeout_ms", cfg.call_timeout_ms, 100, 600_000)?;
        within(
            "controls_refresh_ms",
            cfg.controls_refresh_ms,
            100,
            3_600_000,
        )?;
        within(
            "max_event_age_ms",
            cfg.max_event_age_ms,
            1000,
            7 * 86_400_000,
        )?;
        within(
            "max_sse_event_bytes",
            cfg.max_sse_event_bytes as u64,
            1024,
            64 << 20,
        )?;
        if cfg.queue_max_events < cfg.batch_max_events {
            return Err("queue_max_events must be at least batch_max_events".into());
        }
        Ok(cfg)
    }

    /// The credential of the filter's calls to the collector: the mesh token, else the org key.
    pub fn bearer(&self) -> &str {
        self.collector_token
            .as_ref()
            .or(self.org_key.as_ref())
            .map_or("", Secret::expose)
    }

    /// Whether the filter needs the collector's key set (`GET /v1/controls`): to check request
    /// keys, or to name its own org in events sent with a mesh token.
    pub fn needs_key_set(&self) -> bool {
        self.org_from_request || self.collector_token.is_some()
    }

    /// The attribution field a request header fills, if any.
    pub fn field_for_header(&self, lower_name: &str) -> Option<Field> {
        self.headers
            .iter()
            .find(|(h, _)| h == lower_name)
            .map(|(_, f)| *f)
    }
}

fn parse_identity(raw: RawIdentity) -> Result<IdentityConfig, String> {
    let trust_domain = raw
        .trust_domain
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|| "cluster.local".into());
    let domain_ok = !trust_domain.is_empty()
        && trust_domain.len() <= 255
        && trust_domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !domain_ok {
        return Err(format!(
            "identity.trust_domain: {trust_domain:?} is not a trust domain (letters, digits, - . _)"
        ));
    }
    let mut attribution = Vec::new();
    for (field_name, source) in raw.attribution {
        let field = Field::from_name(&field_name)
            .filter(|f| identity::mappable(*f))
            .ok_or_else(|| {
                format!(
                    "identity.attribution: {field_name:?} is not an attribution field (team, app, \
                     feature, task, session or user)"
                )
            })?;
        let source = Source::parse(&source).ok_or_else(|| {
            format!(
                "identity.attribution.{field_name}: {source:?} is not an identity source \
                 (namespace, workload, service_account, principal, cluster, mesh or label:NAME)"
            )
        })?;
        attribution.push((field, source));
    }
    Ok(IdentityConfig {
        node: raw.node.unwrap_or(true),
        peer_certificate: raw.peer_certificate.unwrap_or(false),
        trust_domain,
        attribution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "tly_0123456789abcdefghijABCDEFGHIJ0123456789";

    #[test]
    fn defaults_with_env_key() {
        let c = Config::parse(b"", Some(KEY.into())).unwrap();
        assert_eq!(c.org_key.as_ref().map(Secret::expose), Some(KEY));
        assert!(!format!("{c:?}").contains(KEY), "Debug never shows a key");
        assert_eq!(c.bearer(), KEY);
        assert!(!c.needs_key_set());
        assert!(c.identity.node && !c.identity.peer_certificate);
        assert_eq!(c.identity.trust_domain, "cluster.local");
        assert_eq!(c.collector_cluster, "tally_collector");
        assert_eq!(c.field_for_header("x-tally-feature"), Some(Field::Feature));
    }

    #[test]
    fn aliases_are_added() {
        let c = Config::parse(
            br#"{"header_aliases":{"team":["X-ModelTrack-Team"],"feature":["Helicone-Property-Feature"]}}"#,
            Some(KEY.into()),
        )
        .unwrap();
        assert_eq!(c.field_for_header("x-modeltrack-team"), Some(Field::Team));
        assert_eq!(
            c.field_for_header("helicone-property-feature"),
            Some(Field::Feature)
        );
    }

    #[test]
    fn bad_configurations_say_why() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"{}", None, "no org key"),
            (
                br#"{"org_from_request":true}"#,
                Some(KEY),
                "needs a mesh token",
            ),
            (
                br#"{"require_org_key":true}"#,
                Some(KEY),
                "require_org_key needs",
            ),
            (
                br#"{"collector_token":"tlm_x"}"#,
                None,
                "collector token is malformed",
            ),
            (
                br#"{"key_set_missing":"maybe"}"#,
                Some(KEY),
                "key_set_missing must be",
            ),
            (
                br#"{"identity":{"attribution":{"team":"pod"}}}"#,
                Some(KEY),
                "not an identity source",
            ),
            (
                br#"{"identity":{"attribution":{"key":"namespace"}}}"#,
                Some(KEY),
                "not an attribution field",
            ),
            (
                br#"{"identity":{"trust_domain":"a/b"}}"#,
                Some(KEY),
                "not a trust domain",
            ),
            (
                br#"{"identity":{"nodes":true}}"#,
                Some(KEY),
                "unknown field",
            ),
            (br#"{"org_key":"tly_short"}"#, None, "malformed"),
            (br#"{"colector_cluster":"x"}"#, Some(KEY), "unknown field"),
            (br#"{"batch_max_events":0}"#, Some(KEY), "batch_max_events"),
            (
                br#"{"header_aliases":{"tem":["x"]}}"#,
                Some(KEY),
                "unknown field \"tem\"",
            ),
            (
                br#"{"header_aliases":{"team":["Authorization"]}}"#,
                Some(KEY),
                "credentials",
            ),
            (
                br#"{"header_aliases":{"team":["bad header"]}}"#,
                Some(KEY),
                "not a header name",
            ),
            (b"{not json", Some(KEY), "invalid configuration"),
            (
                br#"{"providers":{"vllm.local":"VLLM!"}}"#,
                Some(KEY),
                "not a provider name",
            ),
            (
                br#"{"providers":{"http://x/":"vllm"}}"#,
                Some(KEY),
                "not a host",
            ),
            (
                br#"{"bedrock_models":{"my-profile":"anthropic.claude-3-5-haiku-20241022-v1:0"}}"#,
                Some(KEY),
                "not a Bedrock ARN",
            ),
            (
                br#"{"bedrock_models":{"arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2":" "}}"#,
                Some(KEY),
                "not a model id",
            ),
        ];
        for (json, env, want) in cases {
            let err = Config::parse(json, env.map(String::from)).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn a_fleet_for_many_orgs() {
        const TOKEN: &str = "tlm_0123456789abcdefghijABCDEFGHIJ0123456789";
        let c = Config::parse_env(
            br#"{"require_org_key":true,"key_set_missing":"refuse","identity":{"peer_certificate":true,"trust_domain":"corp.example","attribution":{"team":"namespace","app":"label:app"}}}"#,
            Env {
                org_key: None,
                collector_token: Some(TOKEN.into()),
            },
        )
        .unwrap();
        assert!(c.org_from_request && c.require_org_key && c.needs_key_set());
        assert_eq!(c.bearer(), TOKEN);
        assert_eq!(c.org_key, None);
        assert_eq!(c.key_set_missing, KeySetMissing::Refuse);
        assert_eq!(
            c.identity.attribution,
            vec![
                (Field::App, Source::Label("app".into())),
                (Field::Team, Source::Namespace)
            ]
        );
        assert_eq!(c.identity.labels(), vec!["app".to_string()]);
    }

    #[test]
    fn malformed_key_is_not_echoed() {
        let err = Config::parse(br#"{"org_key":"tly_SECRET"}"#, None).unwrap_err();
        assert!(!err.contains("SECRET"));
    }
}

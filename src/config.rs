//! The filter's configuration: JSON from the Envoy wasm filter's `configuration`.
//!
//! Everything is checked here, once, at load: an unknown field, a bad value or a missing org key
//! fails the plugin's configuration with a message that says which, instead of surfacing later
//! as lost events.

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
}

#[derive(Debug, Clone)]
pub struct Config {
    pub org_key: String,
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
}

/// `tly_` followed by 40 base62 characters.
pub fn is_org_key(key: &str) -> bool {
    key.len() == 44
        && key.starts_with("tly_")
        && key.as_bytes()[4..].iter().all(u8::is_ascii_alphanumeric)
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
        let trimmed = json.iter().all(u8::is_ascii_whitespace);
        let raw: Raw = if trimmed {
            serde_json::from_str("{}")
        } else {
            serde_json::from_slice(json)
        }
        .map_err(|e| format!("invalid configuration: {e}"))?;

        let org_key = match (raw.org_key, env_org_key) {
            (Some(k), _) => k,
            (None, Some(k)) if !k.is_empty() => k,
            _ => {
                return Err(
                    "no org key: set TALLY_ORG_KEY in Envoy's environment (and list it in \
                     vm_config.environment_variables.host_env_keys) or org_key in the configuration"
                        .into(),
                )
            }
        };
        if !is_org_key(org_key.trim()) {
            // Never echo the value: it may be a real secret with a typo.
            return Err(
                "org key is malformed: expected tly_ followed by 40 letters or digits".into(),
            );
        }

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

        let cfg = Config {
            provider_hosts,
            org_key: org_key.trim().to_string(),
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

    /// The attribution field a request header fills, if any.
    pub fn field_for_header(&self, lower_name: &str) -> Option<Field> {
        self.headers
            .iter()
            .find(|(h, _)| h == lower_name)
            .map(|(_, f)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "tly_0123456789abcdefghijABCDEFGHIJ0123456789";

    #[test]
    fn defaults_with_env_key() {
        let c = Config::parse(b"", Some(KEY.into())).unwrap();
        assert_eq!(c.org_key, KEY);
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
        ];
        for (json, env, want) in cases {
            let err = Config::parse(json, env.map(String::from)).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn malformed_key_is_not_echoed() {
        let err = Config::parse(br#"{"org_key":"tly_SECRET"}"#, None).unwrap_err();
        assert!(!err.contains("SECRET"));
    }
}

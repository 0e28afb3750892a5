//! Alerts (PRODUCT.md, "Rules and budgets"): each org's webhooks (`alert_hooks`), the alerts
//! raised (`alert_events`, one per dedupe key: a crossing is raised, hence sent, once) and every
//! delivery attempt (`alert_deliveries`).
//!
//! Alerts are raised by [`record`] (budgets call it inside the ingest transaction) and by the
//! detectors (`detect`: unpriced models, events dropped by filters, spend anomalies). A worker
//! thread of `serve` ([`start`]) gives each new alert one delivery per hook of its org that takes
//! its kind, and sends them: Slack-compatible JSON, signed with HMAC-SHA256 (`send`), retried
//! with exponential backoff, each attempt recorded. Destinations are checked when a hook is
//! added and again before every attempt (`dest`), since DNS can change.

mod dest;
mod detect;
pub mod http;
pub mod send;
#[cfg(test)]
mod tests;

pub use dest::{parse_allow_host, Policy};
pub use detect::{detect, Anomaly};
pub use send::{sign, Client};

use crate::db::{self, Conn};
use crate::store::Store;
use crate::values;
use serde_json::{json, Value};
use std::sync::RwLock;
use std::time::Duration;

/// The kinds of alert, as stored, sent and chosen by hooks.
pub const KINDS: [&str; 5] = [
    "budget_warning",
    "budget_limit",
    "anomaly",
    "unpriced_model",
    "events_dropped",
];

/// What the secret of a hook starts with (then 40 base62 characters).
pub const SECRET_PREFIX: &str = "whsec_";

/// Raise an alert, once: `false` when one with this dedupe key was already raised for the org.
/// Cheap (one insert on a unique index), so it may run inside the ingest transaction; the
/// delivery worker sends it within a second of the commit. Strings shaped like an org key, a
/// mesh token, a hook secret or a provider key are replaced by `[redacted]` first: payloads
/// never carry credentials.
pub fn record(
    conn: &mut Conn,
    org_id: i64,
    kind: &str,
    dedupe_key: &str,
    payload: &Value,
    now_ms: i64,
) -> db::Result<bool> {
    let text = redact(&payload.to_string());
    let n = conn.execute(
        "INSERT INTO alert_events (org_id, kind, dedupe_key, payload, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        values![org_id, kind, dedupe_key, text, now_ms],
    )?;
    Ok(n == 1)
}

/// `text` with every secret-shaped run replaced by `[redacted]`: our prefixes followed by 40
/// base62 characters, and `sk-` (provider keys) followed by 20 or more key characters.
pub(crate) fn redact(text: &str) -> String {
    let b = text.as_bytes();
    let key_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let rest = &b[i..];
        let hit = ["tly_", "tlm_", SECRET_PREFIX, "sk-"].iter().find_map(|p| {
            if !rest.starts_with(p.as_bytes()) {
                return None;
            }
            let run = rest[p.len()..].iter().take_while(|c| key_char(**c)).count();
            let min = if *p == "sk-" { 20 } else { 40 };
            (run >= min).then_some(p.len() + run)
        });
        match hit {
            Some(len) => {
                out.push_str(&text[copied..i]);
                out.push_str("[redacted]");
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return text.to_string();
    }
    out.push_str(&text[copied..]);
    out
}

/// Why a hook could not be added.
#[derive(Debug)]
pub enum AlertError {
    /// A bad value, and the field it came in.
    Field(&'static str, String),
    /// The org already has a hook of this name.
    Duplicate(String),
    Db(db::DbError),
}

impl std::fmt::Display for AlertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlertError::Field(field, m) => write!(f, "{field}: {m}"),
            AlertError::Duplicate(name) => write!(f, "the org already has an alert hook {name}"),
            AlertError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl From<db::DbError> for AlertError {
    fn from(e: db::DbError) -> Self {
        AlertError::Db(e)
    }
}

/// A webhook, as listed (never its secret).
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    /// The URL with its path and query hidden: a Slack webhook's path is itself a credential.
    pub url: String,
    /// `None`: every kind.
    pub kinds: Option<Vec<String>>,
    pub allow_private: bool,
    pub created_ms: i64,
}

/// `kinds` as stored: `*` for every kind, else the list, each checked.
fn kinds_column(kinds: Option<&[String]>) -> Result<String, AlertError> {
    let Some(kinds) = kinds else {
        return Ok("*".into());
    };
    if kinds.is_empty() {
        return Err(AlertError::Field(
            "kinds",
            format!("name at least one of {}", KINDS.join(", ")),
        ));
    }
    for k in kinds {
        if !KINDS.contains(&k.as_str()) {
            return Err(AlertError::Field(
                "kinds",
                format!("{k:?} is not a kind of alert ({})", KINDS.join(", ")),
            ));
        }
    }
    let mut kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds.join(","))
}

fn takes(kinds: &str, kind: &str) -> bool {
    kinds == "*" || kinds.split(',').any(|k| k == kind)
}

/// Add a hook to an org and return its secret: the only time it leaves the database. The URL
/// must pass `policy` (with `allow_private`, the operator lets this hook reach private and
/// loopback addresses), now and before each delivery.
#[allow(clippy::too_many_arguments)]
pub fn add_hook(
    conn: &mut Conn,
    org_id: i64,
    name: &str,
    url: &str,
    kinds: Option<&[String]>,
    allow_private: bool,
    policy: &Policy,
    now_ms: i64,
) -> Result<String, AlertError> {
    if !crate::store::valid_name(name) {
        return Err(AlertError::Field(
            "name",
            "1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    let kinds = kinds_column(kinds)?;
    let policy = policy.with_private(allow_private);
    let target = dest::parse(url).map_err(|e| AlertError::Field("url", e))?;
    policy
        .resolve(&target, dest::RESOLVE_TIMEOUT)
        .map_err(|e| AlertError::Field("url", e.to_string()))?;
    let secret = format!("{SECRET_PREFIX}{}", crate::keys::random_token());
    // A name taken is a row not inserted (the error of a unique violation differs by backend,
    // and on PostgreSQL would abort the caller's transaction).
    let n = conn.execute(
        "INSERT INTO alert_hooks (org_id, name, url, secret, kinds, allow_private, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (org_id, name) DO NOTHING",
        values![org_id, name, url, &secret, kinds, allow_private, now_ms],
    )?;
    if n == 0 {
        return Err(AlertError::Duplicate(name.to_string()));
    }
    Ok(secret)
}

/// An org's hooks, by name.
pub fn list_hooks(conn: &mut Conn, org_id: i64) -> db::Result<Vec<Hook>> {
    conn.query_map(
        "SELECT name, url, kinds, allow_private, created_ms FROM alert_hooks
         WHERE org_id = ?1 ORDER BY name",
        values![org_id],
        |r| {
            let url: String = r.get(1)?;
            let kinds: String = r.get(2)?;
            Ok(Hook {
                name: r.get(0)?,
                url: dest::shown(&url),
                kinds: (kinds != "*").then(|| kinds.split(',').map(String::from).collect()),
                allow_private: r.get(3)?,
                created_ms: r.get(4)?,
            })
        },
    )
}

/// Delete an org's hook; `false` when it has none of that name. Its pending deliveries end
/// (`hook_deleted`); its past ones stay in the history under its name.
pub fn delete_hook(conn: &mut Conn, org_id: i64, name: &str) -> db::Result<bool> {
    let mut tx = conn.begin()?;
    tx.execute(
        "UPDATE alert_deliveries SET outcome = 'hook_deleted', next_attempt_ms = NULL
         WHERE next_attempt_ms IS NOT NULL AND hook_id IN
            (SELECT id FROM alert_hooks WHERE org_id = ?1 AND name = ?2)",
        values![org_id, name],
    )?;
    let n = tx.execute(
        "DELETE FROM alert_hooks WHERE org_id = ?1 AND name = ?2",
        values![org_id, name],
    )?;
    tx.commit()?;
    Ok(n == 1)
}

/// An org's alerts, newest first (at most `limit`), each with its deliveries in order: what the
/// API and the CLI show.
pub fn history(conn: &mut Conn, org_id: i64, org: &str, limit: usize) -> db::Result<Vec<Value>> {
    let events: Vec<(i64, String, String, String, i64)> = conn.query_map(
        "SELECT id, kind, dedupe_key, payload, created_ms FROM alert_events
         WHERE org_id = ?1 ORDER BY id DESC LIMIT ?2",
        values![org_id, limit],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let mut out = Vec::with_capacity(events.len());
    for (id, kind, dedupe_key, payload, at) in events {
        let payload: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
        let tries: Vec<Value> = conn.query_map(
            "SELECT hook_name, attempt, status_code, outcome, error, at_ms, next_attempt_ms
             FROM alert_deliveries WHERE event_id = ?1 ORDER BY id",
            values![id],
            |r| {
                let at: i64 = r.get(5)?;
                let next: Option<i64> = r.get(6)?;
                Ok(json!({
                    "hook": r.get::<String>(0)?,
                    "attempt": r.get::<i64>(1)?,
                    "status": r.get::<Option<i64>>(2)?,
                    "outcome": r.get::<String>(3)?,
                    "error": r.get::<Option<String>>(4)?,
                    "at": tally::time::format_rfc3339_ms(at),
                    "next_attempt": next.map(tally::time::format_rfc3339_ms),
                }))
            },
        )?;
        out.push(json!({
            "id": id,
            "kind": kind,
            "dedupe_key": dedupe_key,
            "at": tally::time::format_rfc3339_ms(at),
            "text": text(&kind, org, &payload),
            "payload": payload,
            "deliveries": tries,
        }));
    }
    Ok(out)
}

/// The alert's one human line (Slack's `text`).
pub fn text(kind: &str, org: &str, p: &Value) -> String {
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let usd = |k: &str| {
        p.get(k)
            .and_then(Value::as_f64)
            .map_or("?".to_string(), |v| format!("${v:.2}"))
    };
    let n = |k: &str| p.get(k).and_then(Value::as_i64).unwrap_or(0);
    match kind {
        "budget_warning" => {
            let pct = p
                .get("warn_at")
                .and_then(Value::as_f64)
                .map_or("its warning threshold".to_string(), |w| {
                    format!("{:.0}%", w * 100.0)
                });
            format!(
                "Tally: org {org}'s budget {} reached {pct} of its {} {} limit ({} spent this period)",
                s("budget"),
                usd("limit_usd"),
                s("period"),
                usd("spend_usd")
            )
        }
        "budget_limit" => format!(
            "Tally: org {org}'s budget {} reached its {} {} limit ({} spent); action: {}",
            s("budget"),
            usd("limit_usd"),
            s("period"),
            usd("spend_usd"),
            s("action")
        ),
        "anomaly" => format!(
            "Tally: org {org} spent {} in the hour from {}, far above its usual {} an hour \
             (alert threshold {})",
            usd("spend_usd"),
            s("hour_start"),
            usd("median_usd"),
            usd("threshold_usd")
        ),
        "unpriced_model" => format!(
            "Tally: org {org} used {}, which has no known price: its {} requests on {} have an \
             unknown cost (not $0) until a price is set",
            s("provider_model"),
            n("unpriced_requests"),
            s("day")
        ),
        "events_dropped" => format!(
            "Tally: filters dropped {} events of org {org} in the hour from {}; spend figures \
             miss what they carried",
            n("dropped"),
            s("hour_start")
        ),
        _ => format!("Tally: {kind} alert for org {org}"),
    }
}

/// Count events that filters say they dropped (`X-Tally-Dropped`), for the `events_dropped`
/// detector: `n` for each org of the batch, in the current hour.
pub fn add_dropped(conn: &mut Conn, org_ids: &[i64], n: u64, now_ms: i64) -> db::Result<()> {
    let hour = now_ms.div_euclid(crate::rollup::HOUR) * crate::rollup::HOUR;
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    for id in org_ids {
        // Saturating at the largest bigint, tested before adding: PostgreSQL fails an addition
        // that overflows (both counts are never negative, so the subtraction cannot).
        conn.execute(
            "INSERT INTO alert_dropped (org_id, hour_ms, dropped) VALUES (?1, ?2, ?3)
             ON CONFLICT (org_id, hour_ms) DO UPDATE SET dropped = CASE
                WHEN alert_dropped.dropped > 9223372036854775807 - excluded.dropped
                THEN 9223372036854775807
                ELSE alert_dropped.dropped + excluded.dropped END",
            values![*id, hour, n],
        )?;
    }
    Ok(())
}

/// The most a single batch may report dropped; larger values are taken as this.
const MAX_DROPPED_PER_BATCH: u64 = 1 << 40;

/// `X-Tally-Dropped` of a batch (`header`), once stored: added for each org the batch held (with
/// a mesh token, every org of its events, since which org's events were lost is unknown). Not
/// counted when the batch stored nothing new (`accepted` 0: a retry of a batch already stored
/// carries the same count). A missing or bad value counts nothing; errors go to the log, never
/// to the batch's answer.
pub fn batch_dropped(
    store: &Store,
    header: Option<&axum::http::HeaderValue>,
    owners: &crate::store::Owners,
    accepted: usize,
) {
    let Some(n) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0 && accepted > 0)
    else {
        return;
    };
    let orgs: Vec<i64> = owners.orgs().iter().map(|o| o.id).collect();
    let n = n.min(MAX_DROPPED_PER_BATCH);
    if let Err(e) = add_dropped(&mut store.conn(), &orgs, n, crate::api::now_ms()) {
        crate::log::error(&format!("alerts: counting dropped events: {e}"));
    }
}

/// How the worker and the detectors run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Who hooks may reach besides public addresses (`--alert-allow-private`,
    /// `--alert-allow-host`).
    pub policy: Policy,
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    /// The wait before the first retry; each next one is 3 times longer.
    pub retry_base_ms: i64,
    /// How often the worker looks for alerts to send and retries due.
    pub tick: Duration,
    /// How often the detectors run.
    pub detect_every: Duration,
    pub anomaly: Anomaly,
    /// Connect, and whole-call, time limits of one attempt.
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::default(),
            attempts: 6,
            retry_base_ms: 5_000,
            tick: Duration::from_secs(1),
            detect_every: Duration::from_secs(60),
            anomaly: Anomaly::default(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The wait after failed attempt `attempt` (1-based) before the next: base × 3^(attempt-1).
    /// With the defaults 5 s, 15 s, 45 s, 2 min 15 s, 6 min 45 s: six attempts over about 10
    /// minutes.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let factor = 3i64.saturating_pow(attempt.saturating_sub(1));
        self.retry_base_ms.saturating_mul(factor)
    }
}

/// The serving collector's destination policy, which the API checks new hooks against.
static POLICY: RwLock<Option<Policy>> = RwLock::new(None);

/// Set the destination policy the API applies (`serve` does, once).
pub fn set_policy(p: Policy) {
    *POLICY.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
}

pub(crate) fn policy() -> Policy {
    POLICY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Start the delivery worker and the detectors (threads that end with the process); sets the
/// API's destination policy.
pub fn start(store: &std::sync::Arc<Store>, config: Config) -> Result<(), String> {
    set_policy(config.policy.clone());
    let client = Client::new(config.connect_timeout, config.call_timeout)?;
    // Writable connections of the threads' own, so that sending never holds ingest's.
    let mut conn = store.open_writer().map_err(|e| e.to_string())?;
    let worker = config.clone();
    std::thread::Builder::new()
        .name("alerts-delivery".into())
        .spawn(move || loop {
            if let Err(e) = deliver_due(&mut conn, &client, &worker) {
                crate::log::error(&format!("alerts: delivery: {e}"));
            }
            std::thread::sleep(worker.tick);
        })
        .map_err(|e| format!("alerts: {e}"))?;
    let mut conn = store.open_writer().map_err(|e| e.to_string())?;
    let store = store.clone();
    std::thread::Builder::new()
        .name("alerts-detect".into())
        .spawn(move || {
            // The connection generation under which this thread took the lock.
            let mut leading: Option<u64> = None;
            loop {
                // One replica runs the detectors: the one holding the lock (its session's, so
                // another takes over when it stops, or when its connection breaks). Alerts are
                // unique by key anyway; this keeps the work from being done once per replica.
                let leads = conn.ensure_connected().and_then(|()| {
                    if leading != Some(conn.generation()) && conn.try_lock(DETECT_LOCK)? {
                        leading = Some(conn.generation());
                    }
                    Ok(leading == Some(conn.generation()))
                });
                match leads {
                    Ok(true) => {}
                    Ok(false) => {
                        std::thread::sleep(config.detect_every);
                        continue;
                    }
                    Err(e) => {
                        crate::log::error(&format!("alerts: detectors: {e}"));
                        std::thread::sleep(config.detect_every);
                        continue;
                    }
                }
                // Rollup rows wait in memory until the next ingest or read: written first, as
                // every read of the rollups does, so that the detectors see the last second too.
                if let Err(e) = store.write_rollups() {
                    crate::log::error(&format!("alerts: writing rollups: {e}"));
                }
                match detect(&mut conn, &config.anomaly, crate::api::now_ms()) {
                    Ok(n) if n > 0 => crate::log::info(&format!("alerts: {n} raised")),
                    Ok(_) => {}
                    Err(e) => crate::log::error(&format!("alerts: detectors: {e}")),
                }
                std::thread::sleep(config.detect_every);
            }
        })
        .map_err(|e| format!("alerts: {e}"))?;
    Ok(())
}

/// The advisory lock under which one replica runs the detectors ("tally" and 4).
const DETECT_LOCK: i64 = 0x7461_6c6c_7900_0004;

/// How long a worker holds a delivery it is sending: another worker (or this one after a crash)
/// takes it again after this.
const LEASE_MS: i64 = 120_000;

/// Alerts taken per pass, and deliveries sent per pass: bounded work, the rest next pass.
const FAN_OUT_PER_PASS: i64 = 200;
const SEND_PER_PASS: i64 = 50;

/// One pass of the worker: give new alerts their deliveries, then send those due. How many
/// attempts were made.
pub fn deliver_due(conn: &mut Conn, client: &Client, config: &Config) -> db::Result<usize> {
    fan_out(conn, crate::api::now_ms())?;
    let now = crate::api::now_ms();
    let due: Vec<(i64, i64)> = conn.query_map(
        "SELECT id, next_attempt_ms FROM alert_deliveries
         WHERE next_attempt_ms IS NOT NULL AND next_attempt_ms <= ?1
         ORDER BY next_attempt_ms LIMIT ?2",
        values![now, SEND_PER_PASS],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut sent = 0;
    for (id, next) in due {
        // Taken only if no one else took it meanwhile.
        let now = crate::api::now_ms();
        let taken = conn.execute(
            "UPDATE alert_deliveries SET outcome = 'sending', next_attempt_ms = ?1
             WHERE id = ?2 AND next_attempt_ms = ?3",
            values![now + LEASE_MS, id, next],
        )?;
        if taken == 1 {
            attempt(conn, client, config, id)?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Each alert not yet fanned out gets one pending delivery per hook of its org that takes its
/// kind, in one transaction with its mark: never twice.
fn fan_out(conn: &mut Conn, now: i64) -> db::Result<()> {
    // Looked for before the transaction, which on SQLite takes the write lock: an idle pass
    // (nearly every one) does not wait behind ingest.
    let events: Vec<(i64, i64, String)> = conn.query_map(
        "SELECT id, org_id, kind FROM alert_events WHERE fanned_out = 0 ORDER BY id LIMIT ?1",
        values![FAN_OUT_PER_PASS],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin()?;
    for (id, org_id, kind) in events {
        // Marked first, and only if still unmarked: an alert another worker (a replica on the
        // same PostgreSQL database) fanned out meanwhile is left to it.
        let mine = tx.execute(
            "UPDATE alert_events SET fanned_out = 1 WHERE id = ?1 AND fanned_out = 0",
            values![id],
        )?;
        if mine == 0 {
            continue;
        }
        let hooks: Vec<(i64, String, String)> = tx.query_map(
            "SELECT id, name, kinds FROM alert_hooks WHERE org_id = ?1",
            values![org_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        for (hook_id, name, kinds) in hooks {
            if takes(&kinds, &kind) {
                tx.execute(
                    "INSERT INTO alert_deliveries
                        (event_id, hook_id, hook_name, attempt, outcome, at_ms, next_attempt_ms)
                     VALUES (?1, ?2, ?3, 1, 'pending', ?4, ?4)",
                    values![id, hook_id, name, now],
                )?;
            }
        }
    }
    tx.commit()
}

/// One attempt of delivery `id` (taken by this worker), recorded; on a failure worth retrying,
/// the next attempt is queued.
fn attempt(conn: &mut Conn, client: &Client, config: &Config, id: i64) -> db::Result<()> {
    let row = conn.query_row_opt(
        "SELECT d.event_id, d.attempt, h.id, h.name, h.url, h.secret, h.allow_private,
                e.kind, e.dedupe_key, e.payload, e.created_ms, o.name
         FROM alert_deliveries d
         JOIN alert_events e ON e.id = d.event_id
         JOIN orgs o ON o.id = e.org_id
         LEFT JOIN alert_hooks h ON h.id = d.hook_id
         WHERE d.id = ?1",
        values![id],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<u32>(1)?,
                r.get::<Option<i64>>(2)?,
                r.get::<Option<String>>(3)?,
                r.get::<Option<String>>(4)?,
                r.get::<Option<String>>(5)?,
                r.get::<Option<bool>>(6)?,
                r.get::<String>(7)?,
                r.get::<String>(8)?,
                r.get::<String>(9)?,
                r.get::<i64>(10)?,
                r.get::<String>(11)?,
            ))
        },
    )?;
    let Some((
        event_id,
        n,
        hook_id,
        hook_name,
        url,
        secret,
        allow_private,
        kind,
        key,
        payload,
        at,
        org,
    )) = row
    else {
        return Ok(());
    };
    // The connection is passed in, not captured: `retry` uses it too.
    let finish = |conn: &mut Conn, outcome: &str, status: Option<u16>, error: Option<String>| {
        conn.execute(
            "UPDATE alert_deliveries SET outcome = ?1, status_code = ?2, error = ?3, at_ms = ?4,
                next_attempt_ms = NULL WHERE id = ?5",
            values![outcome, status, error, crate::api::now_ms(), id],
        )
        .map(|_| ())
    };
    let (Some(hook_id), Some(name), Some(url), Some(secret)) = (hook_id, hook_name, url, secret)
    else {
        finish(conn, "hook_deleted", None, None)?;
        return Ok(());
    };
    let payload: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
    let body = body(event_id, &kind, &org, &key, at, &payload);
    let policy = config.policy.with_private(allow_private.unwrap_or(false));
    let result = client.post(&url, &policy, &secret, body.as_bytes());
    let retry = |conn: &mut Conn, error: String, status: Option<u16>| -> db::Result<()> {
        if n >= config.attempts {
            return finish(
                conn,
                "failed",
                status,
                Some(format!("{error}; gave up after {n} attempts")),
            );
        }
        let mut tx = conn.begin()?;
        let now = crate::api::now_ms();
        tx.execute(
            "UPDATE alert_deliveries SET outcome = 'retrying', status_code = ?1, error = ?2,
                at_ms = ?3, next_attempt_ms = NULL WHERE id = ?4",
            values![status, error, now, id],
        )?;
        tx.execute(
            "INSERT INTO alert_deliveries
                (event_id, hook_id, hook_name, attempt, outcome, at_ms, next_attempt_ms)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)",
            values![
                event_id,
                hook_id,
                &name,
                n + 1,
                now,
                now + config.backoff_ms(n)
            ],
        )?;
        tx.commit()
    };
    match result {
        Ok(status) if (200..300).contains(&status) => finish(conn, "delivered", Some(status), None),
        Ok(status) if status == 408 || status == 429 || status >= 500 => {
            retry(conn, format!("HTTP {status}"), Some(status))
        }
        Ok(status) => finish(
            conn,
            "failed",
            Some(status),
            Some(format!(
                "HTTP {status}: the receiver refused it (redirects are not followed); not retried"
            )),
        ),
        Err(send::Failure::Refused(e)) => finish(conn, "refused_destination", None, Some(e)),
        Err(send::Failure::Transient(e)) => retry(conn, e, None),
    }
}

/// The JSON a hook receives: Slack's `text`, then the alert's fields and its payload's.
pub fn body(
    id: i64,
    kind: &str,
    org: &str,
    dedupe_key: &str,
    at_ms: i64,
    payload: &Value,
) -> String {
    let mut m = serde_json::Map::new();
    if let Value::Object(p) = payload {
        for (k, v) in p {
            m.insert(k.clone(), v.clone());
        }
    }
    // Set last: a payload field of the same name cannot stand in for them.
    m.insert("text".into(), Value::String(text(kind, org, payload)));
    m.insert("kind".into(), json!(kind));
    m.insert("org".into(), json!(org));
    m.insert("at".into(), json!(tally::time::format_rfc3339_ms(at_ms)));
    m.insert("dedupe_key".into(), json!(dedupe_key));
    m.insert("alert_id".into(), json!(id));
    Value::Object(m).to_string()
}

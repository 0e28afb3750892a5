//! `GET /v1/controls`: what filters poll (hundreds of Envoys, every couple of seconds) to learn
//! which org keys they may accept, as SHA-256 hashes. Answers are built once per change, not per
//! request: every answer (one per enabled org key, one per mesh token) is kept in memory with
//! its ETag, and a request costs one hash of its credential and a map lookup.
//!
//! Orgs, keys and tokens change from the CLI, another process on the same database. Triggers
//! bump `auth_generation` on every such change; a thread reads that one row every
//! [`CHECK_EVERY`] on a connection of its own (so no long read query delays it) and rebuilds
//! the answers when it moved, so a rotated key shows within that interval. A credential the
//! answers do not know checks at once (a key made a moment ago is not refused for 250 ms).

use crate::db::{self, Conn};
use crate::keys;
use crate::prices::{PaidRates, Prices};
use crate::store::{Store, StoreError};
use crate::values;
use axum::body::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// How often the generation row is read.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// One caller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub body: Bytes,
    /// `"<hex of the body's SHA-256>"`, quotes included.
    pub etag: String,
    /// The orgs the answer is for (id, name): their budgets are added per filter (see
    /// [`with_budgets`]).
    pub orgs: Vec<(i64, String)>,
}

#[derive(Serialize)]
struct OrgKeys<'a> {
    org_id: &'a str,
    key_sha256: [&'a str; 1],
    /// The rates this org pays for each `provider/model` its events named in the last
    /// [`RATES_DAYS`] days: what a filter needs to estimate a request's cost before it leaves.
    rates: &'a BTreeMap<String, PaidRates>,
}

/// How far back the models whose rates an answer carries were seen.
pub const RATES_DAYS: i64 = 30;

/// How often the answers are rebuilt even when nothing else changed (models newly seen).
pub const RATES_EVERY: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct Body<'a> {
    orgs: Vec<OrgKeys<'a>>,
}

/// The answers as of one generation of keys and one of prices.
struct Snapshot {
    generation: i64,
    pricing: i64,
    built: std::time::Instant,
    /// Credential hash -> index in `answers`.
    callers: HashMap<String, usize>,
    answers: Vec<Arc<Answer>>,
}

impl Snapshot {
    /// Read everything in one transaction, so that the generation and the rows agree.
    fn load(conn: &mut Conn) -> db::Result<Snapshot> {
        let mut tx = conn.begin_read()?;
        let generation: i64 = tx.value("SELECT n FROM auth_generation", &[])?;
        // A price table that does not parse fails the load like a failed read: logged, and the
        // answers kept as they were.
        let prices = Prices::load(&mut tx).map_err(db::DbError::Sql)?;
        let since = crate::api::now_ms() - RATES_DAYS * crate::rollup::DAY;
        // Enabled orgs by name (the answers' order): id -> (name, key hash).
        let orgs: BTreeMap<String, (i64, String)> = tx
            .query_map(
                "SELECT name, id, key_hash FROM orgs WHERE disabled = 0",
                &[],
                |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))),
            )?
            .into_iter()
            .collect();
        let tokens: Vec<(i64, String, bool)> = tx.query_map(
            "SELECT id, token_hash, all_orgs FROM tokens WHERE revoked_ms IS NULL",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let grants: Vec<(i64, i64)> =
            tx.query_map("SELECT token_id, org_id FROM token_orgs", &[], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let mut snap = Snapshot {
            generation,
            pricing: prices.generation,
            built: std::time::Instant::now(),
            callers: HashMap::new(),
            answers: Vec::new(),
        };
        // Per org id: the rates of the models it used.
        let mut rates: HashMap<i64, BTreeMap<String, PaidRates>> = HashMap::new();
        for (id, _) in orgs.values() {
            let keys: Vec<String> = tx.query_map(
                "SELECT DISTINCT key FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2
                   AND dim = 'provider_model' AND bucket_ms >= ?3",
                values![*id, crate::rollup::DAY, since],
                |r| r.get(0),
            )?;
            let mine = rates.entry(*id).or_default();
            for key in keys {
                let Some((provider, model)) = key.split_once('/') else {
                    continue;
                };
                if let Some(r) = prices.paid_rates(*id, provider, model) {
                    mine.insert(key.clone(), r);
                }
            }
        }
        let none = BTreeMap::new();
        for (name, (id, hash)) in &orgs {
            let r = rates.get(id).unwrap_or(&none);
            snap.add(hash, [(*id, name, hash, r)].into_iter());
        }
        for (id, hash, all) in &tokens {
            let granted = |org: &i64| *all || grants.contains(&(*id, *org));
            let mine = orgs
                .iter()
                .filter(|(_, (org, _))| granted(org))
                .map(|(name, (org, key))| (*org, name, key, rates.get(org).unwrap_or(&none)));
            snap.add(hash, mine);
        }
        Ok(snap)
    }

    /// The answer for the credential hashed `hash`: these orgs (in name order) and their keys.
    fn add<'a>(
        &mut self,
        hash: &str,
        orgs: impl Iterator<Item = (i64, &'a String, &'a String, &'a BTreeMap<String, PaidRates>)>,
    ) {
        let mut ids = Vec::new();
        let body = Body {
            orgs: orgs
                .map(|(id, name, key, rates)| {
                    ids.push((id, name.clone()));
                    OrgKeys {
                        org_id: name,
                        key_sha256: [key],
                        rates,
                    }
                })
                .collect(),
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let etag = format!("\"{}\"", keys::hex_sha256(&body));
        self.callers.insert(hash.to_string(), self.answers.len());
        self.answers.push(Arc::new(Answer {
            body: Bytes::from(body),
            etag,
            orgs: ids,
        }));
    }
}

pub struct Controls {
    current: RwLock<Arc<Snapshot>>,
    /// The connection the answers are read from.
    conn: Mutex<Conn>,
}

impl Controls {
    /// Load the answers now, and keep them current from a thread of their own, which ends with
    /// the last reference to the returned value.
    pub fn start(store: &Store) -> Result<Arc<Controls>, StoreError> {
        let mut conn = store.open_reader()?;
        let controls = Arc::new(Controls {
            current: RwLock::new(Arc::new(Snapshot::load(&mut conn)?)),
            conn: Mutex::new(conn),
        });
        let weak: Weak<Controls> = Arc::downgrade(&controls);
        std::thread::Builder::new()
            .name("controls".into())
            .spawn(move || loop {
                std::thread::sleep(CHECK_EVERY);
                let Some(controls) = weak.upgrade() else {
                    return;
                };
                controls.refresh();
            })
            .map_err(|e| StoreError::Io(format!("cannot start the controls thread: {e}")))?;
        Ok(controls)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuild the answers if orgs, keys or tokens changed since they were built.
    pub fn refresh(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = &mut *conn;
        let known = self.snapshot();
        let now = conn.query_row(
            "SELECT (SELECT n FROM auth_generation),
                (SELECT generation FROM pricing_generation WHERE id = 1)",
            &[],
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
        );
        let loaded = match now {
            Ok((n, p))
                if n == known.generation
                    && p == known.pricing
                    && known.built.elapsed() < RATES_EVERY =>
            {
                return
            }
            Ok(_) => Snapshot::load(conn),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(s) => *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s),
            // The answers stay as they were; the next check tries again.
            Err(e) => crate::log::error(&format!("controls: cannot read the keys: {e}")),
        }
    }

    /// [`Controls::answer`], after a [`Controls::refresh`] if the answers do not know the
    /// secret (a blocking call: a database read).
    pub fn answer_fresh(&self, secret: &str) -> Option<Arc<Answer>> {
        self.answer(secret).or_else(|| {
            self.refresh();
            self.answer(secret)
        })
    }

    /// The answer for an org key or mesh token; `None` for any other secret (and for the key of
    /// a disabled org, or a revoked token).
    pub fn answer(&self, secret: &str) -> Option<Arc<Answer>> {
        let hash = keys::hash(secret);
        let snap = self.snapshot();
        let (stored, &i) = snap.callers.get_key_value(&hash)?;
        keys::constant_time_eq(stored.as_bytes(), hash.as_bytes())
            .then(|| snap.answers.get(i).cloned())
            .flatten()
    }
}

/// `answer` with the state of its orgs' budgets for one filter (`filter`: its `X-Tally-Filter`
/// id), as `tally::budgets` reads it; the answer itself when none of its orgs has a budget.
pub fn with_budgets(
    store: &Store,
    pollers: &crate::budgets::Pollers,
    answer: Arc<Answer>,
    filter: &str,
    refresh: std::time::Duration,
    now_ms: i64,
) -> Result<Arc<Answer>, StoreError> {
    // One read of the budgets' generation per poll, whatever the number of orgs.
    let defs = store.budgets()?;
    let mut all = Vec::new();
    for (id, name) in &answer.orgs {
        if let Some(budgets) = defs.by_org.get(id).filter(|b| !b.is_empty()) {
            all.push((*id, name.as_str(), budgets));
        }
    }
    if all.is_empty() {
        return Ok(answer);
    }
    let ids: Vec<i64> = all.iter().map(|(id, _, _)| *id).collect();
    let active = pollers.polled(&ids, filter, refresh);
    let mut conn = store.reader();
    // One snapshot: spend, states and this filter's counts as of the same commit.
    let mut tx = conn.begin_read()?;
    let mut out = Vec::new();
    for (id, org, budgets) in &all {
        let refs: Vec<&crate::budgets::Budget> = budgets.iter().collect();
        let states = crate::budgets::states(&mut tx, budgets, now_ms)?;
        let confirmed = crate::budgets::confirmed(&mut tx, &refs, filter, now_ms)?;
        let n = active.get(id).copied().unwrap_or(1) as f64;
        for (b, st) in budgets.iter().zip(&states) {
            out.push(crate::budgets::ForFilter {
                org_id: org,
                name: &b.name,
                epoch: b.epoch,
                scope: &b.scope,
                action: &b.action,
                state: st.state,
                period_start_ms: st.period_start_ms,
                period_end_ms: st.period_end_ms,
                limit_usd: b.limit_usd,
                spend_usd: st.spend_usd,
                share_usd: (b.limit_usd - st.spend_usd).max(0.0) / n,
                confirmed_requests: confirmed.get(&b.id).copied().unwrap_or(0),
                estimate_usd: crate::budgets::estimate(st),
            });
        }
    }
    drop(tx);
    drop(conn);
    let budgets = serde_json::to_vec(&out).map_err(|e| StoreError::Io(e.to_string()))?;
    // The cached body is one JSON object: its members, then the budgets.
    let head = answer.body.strip_suffix(b"}").unwrap_or(&answer.body);
    let mut body = Vec::with_capacity(head.len() + budgets.len() + 16);
    body.extend_from_slice(head);
    body.extend_from_slice(b",\"budgets\":");
    body.extend_from_slice(&budgets);
    body.push(b'}');
    let etag = format!("\"{}\"", keys::hex_sha256(&body));
    Ok(Arc::new(Answer {
        body: Bytes::from(body),
        etag,
        orgs: answer.orgs.clone(),
    }))
}

/// Whether an `If-None-Match` value matches `etag` (a list, weak tags and `*` included).
pub fn not_modified(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_keys_tokens_and_grants_from_another_connection() {
        let dir = crate::store::tests::temp_dir("controls");
        let store = crate::store::tests::test_store(&dir);
        let acme = store.create_org("acme", 0).unwrap();
        let globex = store.create_org("globex", 0).unwrap();
        let token = store
            .create_token("mesh", &["globex".into(), "acme".into()], false, 0)
            .unwrap();
        let controls = Controls::start(&store).unwrap();
        let body = |secret: &str| {
            let a = controls.answer(secret)?;
            assert_eq!(a.etag, format!("\"{}\"", keys::hex_sha256(&a.body)));
            Some(serde_json::from_slice::<serde_json::Value>(&a.body).unwrap())
        };
        let entry = |name: &str, key: &str| serde_json::json!({"org_id": name, "key_sha256": [keys::hash(key)], "rates": {}});
        assert_eq!(
            body(&acme).unwrap(),
            serde_json::json!({"orgs": [entry("acme", &acme)]})
        );
        assert_eq!(
            body(&token).unwrap(),
            serde_json::json!({"orgs": [entry("acme", &acme), entry("globex", &globex)]})
        );
        assert_eq!(body("tly_0000000000000000000000000000000000000000"), None);
        // A change made through another connection (the CLI is another process).
        let before = controls.answer(&token).unwrap();
        let other = crate::store::tests::test_store(&dir);
        let rotated = other.rotate_key("globex").unwrap();
        other.set_disabled("acme", true).unwrap();
        let start = std::time::Instant::now();
        while controls.answer(&token) == Some(before.clone()) {
            assert!(start.elapsed() < Duration::from_secs(2), "no refresh");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            body(&token).unwrap(),
            serde_json::json!({"orgs": [entry("globex", &rotated)]})
        );
        assert_eq!(body(&acme), None, "a disabled org's key is refused");
        assert_eq!(body(&globex), None, "a rotated key is refused");
        other.revoke_token("mesh", 1).unwrap();
        let start = std::time::Instant::now();
        while controls.answer(&token).is_some() {
            assert!(start.elapsed() < Duration::from_secs(2), "no refresh");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn if_none_match_forms() {
        let tag = "\"abc\"";
        assert!(not_modified("\"abc\"", tag));
        assert!(not_modified("\"x\", W/\"abc\"", tag));
        assert!(not_modified("*", tag));
        assert!(!not_modified("\"abd\"", tag));
        assert!(!not_modified("abc", tag));
    }

    #[test]
    fn answers_carry_the_rates_each_org_pays_for_the_models_it_used() {
        let dir = crate::store::tests::temp_dir("controls-rates");
        let store = crate::store::tests::test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap();
        let e: tally::event::Event = serde_json::from_value(serde_json::json!({
            "request_id": "r1", "timestamp": tally::time::format_rfc3339_ms(crate::api::now_ms()),
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": "gpt-4o-mini", "model_actual": "gpt-4o-mini-2024-07-18",
            "status": 200, "streaming": false, "latency_ms": 1.0, "input_tokens": 10,
            "output_tokens": 1, "routed": false,
        }))
        .unwrap();
        let now = crate::api::now_ms();
        store
            .insert_events(&org, Arc::new(vec![(e, now)]), now)
            .unwrap();
        store.write_rollups().unwrap();
        let controls = Controls::start(&store).unwrap();
        let rates = |controls: &Controls| {
            let a = controls.answer(&key).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            v["orgs"][0]["rates"]["openai/gpt-4o-mini-2024-07-18"].clone()
        };
        // gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per 1M.
        let r = rates(&controls);
        assert_eq!(
            (
                r["input"].as_f64(),
                r["cached_input"].as_f64(),
                r["output"].as_f64()
            ),
            (Some(0.15), Some(0.075), Some(0.6))
        );
        // An org's discount shows at the next refresh.
        let rate = crate::prices::OrgRate {
            model: "*".into(),
            input: None,
            cached_input: None,
            cache_write: None,
            output: None,
            discount_pct: Some(20.0),
        };
        crate::prices::set_rate(&mut store.conn_for_cli(), org.id, &rate).unwrap();
        controls.refresh();
        let r = rates(&controls);
        assert!((r["input"].as_f64().unwrap() - 0.12).abs() < 1e-12, "{r}");
        assert!((r["output"].as_f64().unwrap() - 0.48).abs() < 1e-12, "{r}");
    }
}

//! The prices in force: the latest table loaded with `tally-collector prices load` (else the
//! one this build ships, `src/prices.json` from `make prices`), and each org's own rates (per
//! model, or a discount on every model). Kept in the database, so that every collector on it
//! prices alike, and reloaded within a second of a change while everything runs.

use crate::db::{self, Conn, Row};
use crate::values;
use std::collections::HashMap;
use tally::event::Event;
use tally::pricing::{event_cost_usd, flat_price, resolve_name_in, Price, PriceTable, Pricer};

/// The model name an org rate of every model is stored under (its discount).
pub const ALL_MODELS: &str = "*";

pub struct Prices {
    pub table: PriceTable,
    /// Where the table came from: `builtin`, or what `prices load` was given.
    pub source: String,
    /// Per org: its own price of each model it has one for, and its discount (a fraction).
    orgs: HashMap<i64, OrgRates>,
    /// The `pricing_generation` these were read at.
    pub generation: i64,
}

/// An org's own rate of a model, USD per 1M tokens.
#[derive(Clone, Copy)]
struct OwnRate {
    input: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    output: f64,
}

#[derive(Default)]
struct OrgRates {
    models: HashMap<String, OwnRate>,
    discount: f64,
}

/// One row of `org_rates`, as `prices rates` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgRate {
    pub model: String,
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub output: Option<f64>,
    pub discount_pct: Option<f64>,
}

impl OrgRate {
    /// The columns `model, input, cached_input, cache_write, output, discount_pct` from `at`.
    fn from_row(r: &Row, at: usize) -> db::Result<OrgRate> {
        Ok(OrgRate {
            model: r.get(at)?,
            input: r.get(at + 1)?,
            cached_input: r.get(at + 2)?,
            cache_write: r.get(at + 3)?,
            output: r.get(at + 4)?,
            discount_pct: r.get(at + 5)?,
        })
    }
}

impl Prices {
    /// What the database says now.
    pub fn load(conn: &mut Conn) -> Result<Prices, String> {
        let db = |e: db::DbError| format!("prices: {e}");
        let generation: i64 = conn
            .value(
                "SELECT generation FROM pricing_generation WHERE id = 1",
                &[],
            )
            .map_err(db)?;
        let loaded: Option<(String, String)> = conn
            .query_row_opt(
                "SELECT source, json FROM price_tables ORDER BY id DESC LIMIT 1",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        let (table, source) = match loaded {
            Some((source, json)) => (PriceTable::from_json(&json)?, source),
            None => (PriceTable::builtin()?, "builtin".to_string()),
        };
        let mut orgs: HashMap<i64, OrgRates> = HashMap::new();
        let rows = conn
            .query_map(
                "SELECT org_id, model, input, cached_input, cache_write, output, discount_pct
                 FROM org_rates",
                &[],
                |r| Ok((r.get::<i64>(0)?, OrgRate::from_row(r, 1)?)),
            )
            .map_err(db)?;
        for (org, rate) in rows {
            let o = orgs.entry(org).or_default();
            if let Some(pct) = rate.discount_pct {
                o.discount = pct / 100.0;
            }
            if let (Some(input), Some(output)) = (rate.input, rate.output) {
                flat_price(None, input, rate.cached_input, rate.cache_write, output)?;
                o.models.insert(
                    rate.model,
                    OwnRate {
                        input,
                        cached_input: rate.cached_input,
                        cache_write: rate.cache_write,
                        output,
                    },
                );
            }
        }
        Ok(Prices {
            table,
            source,
            orgs,
            generation,
        })
    }

    /// `org`'s own price of a provider's model, where it has a rate for it: the rate is found
    /// by the table's rule (exact name, else the longest listed prefix ending at `-`, `@` or
    /// `:`, and the same for the name after `models/` or its last `/`), and is the table's
    /// price with only the rates the org set replaced.
    fn own_price(
        &self,
        pricer: &mut Pricer,
        org: &OrgRates,
        provider: &str,
        model: &str,
    ) -> Option<Price> {
        let name = resolve_name_in(org.models.keys().map(String::as_str), model)?;
        let r = org.models[name];
        let listed = pricer.price_of(&self.table, provider, model);
        flat_price(
            listed.as_ref(),
            r.input,
            r.cached_input,
            r.cache_write,
            r.output,
        )
        .ok()
    }

    /// The price `org` pays for a provider's model before its discount, and the discount: its
    /// own rate where it has one (the discount then does not apply: an own rate is already
    /// negotiated), else the table's.
    fn org_price(
        &self,
        pricer: &mut Pricer,
        org: i64,
        provider: &str,
        models: &[&str],
    ) -> Option<(Price, f64)> {
        let own = self.orgs.get(&org);
        if let Some(o) = own {
            if let Some(p) = models
                .iter()
                .find_map(|m| self.own_price(pricer, o, provider, m))
            {
                return Some((p, 0.0));
            }
        }
        let model = models.first()?;
        let price = pricer.price_of(&self.table, provider, model)?;
        Some((price, own.map_or(0.0, |o| o.discount)))
    }

    /// What an event of `org` costs: its own rate for the model (the one that answered, else
    /// the one asked for) where it has one, else the table's less its discount.
    pub fn cost_usd(&self, pricer: &mut Pricer, org: i64, e: &Event) -> Option<f64> {
        // A request the proxy refused never reached a provider: its cost is known, 0 (not
        // unknown, which would read as an unpriced model), whoever prices it.
        if e.refused_by_proxy() {
            return Some(0.0);
        }
        let models: Vec<&str> = [e.model_actual.as_deref(), e.model_requested.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let (price, discount) = self.org_price(pricer, org, &e.provider, &models)?;
        Some(event_cost_usd(&price, e)? * (1.0 - discount))
    }
}

/// A model's rates as an org pays them, USD per 1M tokens (and per search), for filters that
/// estimate a request's cost before it leaves (budgets).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PaidRates {
    pub input: f64,
    pub cached_input: f64,
    pub cache_write: f64,
    pub cache_write_1h: f64,
    pub output: f64,
    pub web_search: f64,
}

impl Prices {
    /// The rates `org` pays for a provider's model (its own, else the table's, less its
    /// discount); `None` when the model has no known price.
    /// Found as billing finds them ([`Prices::cost_usd`]); an unknown search fee is 0 here (an
    /// estimate; the bill itself has no cost for such a request).
    pub fn paid_rates(&self, org: i64, provider: &str, model: &str) -> Option<PaidRates> {
        let (price, discount) = self.org_price(&mut Pricer::default(), org, provider, &[model])?;
        let keep = 1.0 - discount;
        // Pico-dollars per token are micro-dollars per 1M tokens.
        let per_m = |pico: u64| pico as f64 / 1e6 * keep;
        let r = price.base;
        Some(PaidRates {
            input: per_m(r.input),
            cached_input: per_m(r.cached_input),
            cache_write: per_m(r.cache_write),
            cache_write_1h: per_m(r.cache_write_1h),
            output: per_m(r.output),
            web_search: price.web_search.unwrap_or(0) as f64 / 1e12 * keep,
        })
    }
}

/// Record a change of prices: every collector reloads them.
pub fn bump(tx: &mut Conn) -> db::Result<()> {
    tx.execute(
        "UPDATE pricing_generation SET generation = generation + 1 WHERE id = 1",
        &[],
    )?;
    Ok(())
}

/// Load a price table (the JSON `make prices` writes), checked first: it is in force from now on.
pub fn load_table(conn: &mut Conn, json: &str, source: &str, now_ms: i64) -> Result<usize, String> {
    let table = PriceTable::from_json(json)?;
    if table.is_empty() {
        return Err("the price table lists no model".into());
    }
    let mut tx = conn.begin().map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO price_tables (loaded_ms, source, json) VALUES (?1, ?2, ?3)",
        values![now_ms, source, json],
    )
    .map_err(|e| e.to_string())?;
    bump(&mut tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(table.len())
}

/// Set an org's rate for a model (or, with `ALL_MODELS` and only `discount_pct`, its
/// discount), checked first.
pub fn set_rate(conn: &mut Conn, org: i64, rate: &OrgRate) -> Result<(), String> {
    if rate.model.is_empty() || rate.model.len() > 256 {
        return Err("a model name has 1 to 256 characters".into());
    }
    match (
        rate.model == ALL_MODELS,
        rate.input,
        rate.output,
        rate.discount_pct,
    ) {
        (true, None, None, Some(pct)) if (0.0..=100.0).contains(&pct) => {}
        (true, _, _, _) => {
            return Err(format!(
                "for every model ({ALL_MODELS}) give only --discount-percent, 0 to 100"
            ))
        }
        (false, Some(input), Some(output), None) => {
            flat_price(None, input, rate.cached_input, rate.cache_write, output)?;
        }
        (false, _, _, _) => {
            return Err("a model's rate needs --input and --output (USD per 1M tokens)".into())
        }
    }
    let mut tx = conn.begin().map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO org_rates (org_id, model, input, cached_input, cache_write, output,
            discount_pct)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (org_id, model) DO UPDATE SET input = excluded.input,
            cached_input = excluded.cached_input, cache_write = excluded.cache_write,
            output = excluded.output, discount_pct = excluded.discount_pct",
        values![
            org,
            &rate.model,
            rate.input,
            rate.cached_input,
            rate.cache_write,
            rate.output,
            rate.discount_pct
        ],
    )
    .map_err(|e| e.to_string())?;
    bump(&mut tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Remove an org's rate for a model (or its discount); whether there was one.
pub fn delete_rate(conn: &mut Conn, org: i64, model: &str) -> Result<bool, String> {
    let mut tx = conn.begin().map_err(|e| e.to_string())?;
    let n = tx
        .execute(
            "DELETE FROM org_rates WHERE org_id = ?1 AND model = ?2",
            values![org, model],
        )
        .map_err(|e| e.to_string())?;
    bump(&mut tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(n > 0)
}

/// An org's own rates.
pub fn rates(conn: &mut Conn, org: i64) -> Result<Vec<OrgRate>, String> {
    conn.query_map(
        "SELECT model, input, cached_input, cache_write, output, discount_pct FROM org_rates
         WHERE org_id = ?1 ORDER BY model",
        values![org],
        |r| OrgRate::from_row(r, 0),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(model: &str, input: u64, searches: Option<u64>) -> Event {
        serde_json::from_value(serde_json::json!({
            "request_id": "r1", "timestamp": "2026-12-01T00:00:00.000Z",
            "provider": "openai", "api": "chat_completions", "endpoint": "/v1/chat/completions",
            "model_requested": model, "model_actual": model,
            "status": 200, "streaming": false, "latency_ms": 1.0, "input_tokens": input,
            "cached_input_tokens": 1_000, "output_tokens": 1_000, "routed": false,
            "web_search_requests": searches,
        }))
        .unwrap()
    }

    #[test]
    fn an_orgs_rate_applies_to_snapshots_keeps_the_tables_other_parts_and_is_not_discounted() {
        let dir = crate::store::tests::temp_dir("prices-org-rates");
        let store = crate::store::tests::test_store(&dir);
        let key = store.create_org("acme", 0).unwrap();
        let org = store.org_for_key(&key).unwrap().unwrap().id;
        let mut conn = store.conn_for_cli();
        let rate = |model: &str, io: Option<(f64, f64)>, pct: Option<f64>| OrgRate {
            model: model.into(),
            input: io.map(|r| r.0),
            cached_input: None,
            cache_write: None,
            output: io.map(|r| r.1),
            discount_pct: pct,
        };
        set_rate(&mut conn, org, &rate("gpt-4o-mini", Some((0.1, 0.4)), None)).unwrap();
        set_rate(&mut conn, org, &rate(ALL_MODELS, None, Some(20.0))).unwrap();
        let prices = Prices::load(&mut conn).unwrap();
        let mut pricer = Pricer::default();
        // The snapshot is billed at the org's `gpt-4o-mini` rate, the cache reads at the
        // table's $0.075 (not the org's input rate), with no discount on an own rate.
        let e = event("gpt-4o-mini-2024-07-18", 2_000, None);
        let pico = 1_000u64 * 100_000 + 1_000 * 75_000 + 1_000 * 400_000;
        let cost = prices.cost_usd(&mut pricer, org, &e).unwrap();
        assert!((cost - pico as f64 / 1e12).abs() < 1e-15, "{cost}");
        // The controls' rates are the same.
        let r = prices
            .paid_rates(org, "openai", "gpt-4o-mini-2024-07-18")
            .unwrap();
        assert_eq!((r.input, r.cached_input, r.output), (0.1, 0.075, 0.4));
        // The table's search fee ($0.025) carries over to the org's rate.
        assert!((r.web_search - 0.025).abs() < 1e-12, "{r:?}");
        let searched = event("gpt-4o-mini-2024-07-18", 2_000, Some(2));
        let cost = prices.cost_usd(&mut pricer, org, &searched).unwrap();
        assert!((cost - (pico as f64 / 1e12 + 0.05)).abs() < 1e-12, "{cost}");
        // A model without an own rate: the table's, less the discount.
        let e = event("gpt-4o-2024-08-06", 2_000, None);
        let list = (1_000u64 * 2_500_000 + 1_000 * 1_250_000 + 1_000 * 10_000_000) as f64 / 1e12;
        let cost = prices.cost_usd(&mut pricer, org, &e).unwrap();
        assert!((cost - list * 0.8).abs() < 1e-12, "{cost}");
        let r = prices
            .paid_rates(org, "openai", "gpt-4o-2024-08-06")
            .unwrap();
        assert!((r.input - 2.0).abs() < 1e-12, "{r:?}");
        // gpt-4o lists no search fee: a request that searched has no known cost.
        let searched = event("gpt-4o-2024-08-06", 2_000, Some(1));
        assert_eq!(prices.cost_usd(&mut pricer, org, &searched), None);
    }
}

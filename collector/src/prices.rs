//! The prices in force: the latest table loaded with `tally-collector prices load` (else the
//! one this build ships, `src/prices.json` from `make prices`), and each org's own rates (per
//! model, or a discount on every model). Kept in the database, so that every collector on it
//! prices alike, and reloaded within a second of a change while everything runs.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use tally::event::Event;
use tally::pricing::{event_cost_usd, flat_price, Price, PriceTable, Pricer};

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

#[derive(Default)]
struct OrgRates {
    models: HashMap<String, Price>,
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

impl Prices {
    /// What the database says now.
    pub fn load(conn: &Connection) -> Result<Prices, String> {
        let db = |e: rusqlite::Error| format!("prices: {e}");
        let generation: i64 = conn
            .query_row(
                "SELECT generation FROM pricing_generation WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        let loaded: Option<(String, String)> = conn
            .query_row(
                "SELECT source, json FROM price_tables ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        let (table, source) = match loaded {
            Some((source, json)) => (PriceTable::from_json(&json)?, source),
            None => (PriceTable::builtin()?, "builtin".to_string()),
        };
        let mut orgs: HashMap<i64, OrgRates> = HashMap::new();
        let mut st = conn
            .prepare(
                "SELECT org_id, model, input, cached_input, cache_write, output, discount_pct
                 FROM org_rates",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    OrgRate {
                        model: r.get(1)?,
                        input: r.get(2)?,
                        cached_input: r.get(3)?,
                        cache_write: r.get(4)?,
                        output: r.get(5)?,
                        discount_pct: r.get(6)?,
                    },
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (org, rate) = row.map_err(db)?;
            let o = orgs.entry(org).or_default();
            if let Some(pct) = rate.discount_pct {
                o.discount = pct / 100.0;
            }
            if let (Some(input), Some(output)) = (rate.input, rate.output) {
                let price = flat_price(input, rate.cached_input, rate.cache_write, output)?;
                o.models.insert(rate.model, price);
            }
        }
        Ok(Prices {
            table,
            source,
            orgs,
            generation,
        })
    }

    /// What an event of `org` costs: its own rate for the model (the one that answered, else
    /// the one asked for) where it has one, else the table's; less its discount.
    pub fn cost_usd(&self, pricer: &mut Pricer, org: i64, e: &Event) -> Option<f64> {
        let own = self.orgs.get(&org);
        let rate = own.and_then(|o| {
            [e.model_actual.as_deref(), e.model_requested.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|m| o.models.get(m))
        });
        let cost = match rate {
            Some(price) => event_cost_usd(price, e),
            None => pricer.cost_usd(&self.table, e),
        }?;
        let discount = own.map_or(0.0, |o| o.discount);
        Some(cost * (1.0 - discount))
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
    pub fn paid_rates(&self, org: i64, provider: &str, model: &str) -> Option<PaidRates> {
        let own = self.orgs.get(&org);
        let price = match own.and_then(|o| o.models.get(model)) {
            Some(p) => *p,
            None => *self.table.resolve(provider, model)?.1,
        };
        let keep = 1.0 - own.map_or(0.0, |o| o.discount);
        // Pico-dollars per token are micro-dollars per 1M tokens.
        let per_m = |pico: u64| pico as f64 / 1e6 * keep;
        let r = price.base;
        Some(PaidRates {
            input: per_m(r.input),
            cached_input: per_m(r.cached_input),
            cache_write: per_m(r.cache_write),
            cache_write_1h: per_m(r.cache_write_1h),
            output: per_m(r.output),
            web_search: price.web_search as f64 / 1e12 * keep,
        })
    }
}

/// Record a change of prices: every collector reloads them.
pub fn bump(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE pricing_generation SET generation = generation + 1 WHERE id = 1",
        [],
    )?;
    Ok(())
}

/// Load a price table (the JSON `make prices` writes), checked first: it is in force from now on.
pub fn load_table(
    conn: &mut Connection,
    json: &str,
    source: &str,
    now_ms: i64,
) -> Result<usize, String> {
    let table = PriceTable::from_json(json)?;
    if table.is_empty() {
        return Err("the price table lists no model".into());
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO price_tables (loaded_ms, source, json) VALUES (?1, ?2, ?3)",
        params![now_ms, source, json],
    )
    .map_err(|e| e.to_string())?;
    bump(&tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(table.len())
}

/// Set an org's rate for a model (or, with `ALL_MODELS` and only `discount_pct`, its
/// discount), checked first.
pub fn set_rate(conn: &mut Connection, org: i64, rate: &OrgRate) -> Result<(), String> {
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
            flat_price(input, rate.cached_input, rate.cache_write, output)?;
        }
        (false, _, _, _) => {
            return Err("a model's rate needs --input and --output (USD per 1M tokens)".into())
        }
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO org_rates (org_id, model, input, cached_input, cache_write, output,
            discount_pct)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (org_id, model) DO UPDATE SET input = excluded.input,
            cached_input = excluded.cached_input, cache_write = excluded.cache_write,
            output = excluded.output, discount_pct = excluded.discount_pct",
        params![
            org,
            rate.model,
            rate.input,
            rate.cached_input,
            rate.cache_write,
            rate.output,
            rate.discount_pct
        ],
    )
    .map_err(|e| e.to_string())?;
    bump(&tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Remove an org's rate for a model (or its discount); whether there was one.
pub fn delete_rate(conn: &mut Connection, org: i64, model: &str) -> Result<bool, String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let n = tx
        .execute(
            "DELETE FROM org_rates WHERE org_id = ?1 AND model = ?2",
            params![org, model],
        )
        .map_err(|e| e.to_string())?;
    bump(&tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(n > 0)
}

/// An org's own rates.
pub fn rates(conn: &Connection, org: i64) -> Result<Vec<OrgRate>, String> {
    let mut st = conn
        .prepare(
            "SELECT model, input, cached_input, cache_write, output, discount_pct FROM org_rates
             WHERE org_id = ?1 ORDER BY model",
        )
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map(params![org], |r| {
            Ok(OrgRate {
                model: r.get(0)?,
                input: r.get(1)?,
                cached_input: r.get(2)?,
                cache_write: r.get(3)?,
                output: r.get(4)?,
                discount_pct: r.get(5)?,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

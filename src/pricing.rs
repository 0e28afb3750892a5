//! Prices per model, and the cost of one request.
//!
//! Prices are data (`prices.json`, USD per 1M tokens, each provider's public page as source) and
//! are held as integer micro-dollars per 1M tokens, which is also pico-dollars per token: costs
//! are exact integer sums, turned into dollars once at the end.
//!
//! A model name is resolved by a deterministic rule: an exact match, else the longest listed
//! model that is a prefix of the name and is followed by `-`, `@` or `:` (so the snapshot
//! `gpt-4o-mini-2024-07-18` is `gpt-4o-mini`, not `gpt-4o`). A `models/` prefix (Gemini) is
//! ignored. An unknown model has no price, and its cost is `None`, never zero.

use crate::usage::Usage;
use serde::Deserialize;

/// Pico-dollars per token for each part of the usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
}

#[derive(Debug)]
pub struct PriceTable {
    /// Sorted by model name, for binary search on exact matches.
    models: Vec<(String, Price)>,
}

#[derive(Deserialize)]
struct File {
    models: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[allow(dead_code)]
    provider: String,
    model: String,
    input: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    output: f64,
}

fn per_million_to_pico(usd: f64, model: &str, field: &str) -> Result<u64, String> {
    if !usd.is_finite() || !(0.0..=1_000_000.0).contains(&usd) {
        return Err(format!("price of {model}: {field} = {usd} is not a price"));
    }
    // USD per 1M tokens -> micro-USD per 1M tokens == pico-USD per token.
    Ok((usd * 1_000_000.0).round() as u64)
}

impl PriceTable {
    /// The table shipped with this build.
    pub fn builtin() -> Result<Self, String> {
        Self::from_json(include_str!("prices.json"))
    }

    pub fn from_json(json: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(json).map_err(|e| format!("price table: {e}"))?;
        let mut models = Vec::with_capacity(file.models.len());
        for e in file.models {
            let input = per_million_to_pico(e.input, &e.model, "input")?;
            let price = Price {
                input,
                cached_input: match e.cached_input {
                    Some(p) => per_million_to_pico(p, &e.model, "cached_input")?,
                    None => input,
                },
                cache_write: match e.cache_write {
                    Some(p) => per_million_to_pico(p, &e.model, "cache_write")?,
                    None => input,
                },
                output: per_million_to_pico(e.output, &e.model, "output")?,
            };
            models.push((e.model, price));
        }
        models.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = models.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("price table lists {} twice", w[0].0));
        }
        Ok(PriceTable { models })
    }

    /// The listed model a name resolves to, with its price.
    pub fn resolve(&self, model: &str) -> Option<(&str, &Price)> {
        let name = model.strip_prefix("models/").unwrap_or(model);
        if let Ok(i) = self.models.binary_search_by(|(m, _)| m.as_str().cmp(name)) {
            let (m, p) = &self.models[i];
            return Some((m.as_str(), p));
        }
        self.models
            .iter()
            .filter(|(m, _)| {
                name.len() > m.len()
                    && name.starts_with(m.as_str())
                    && matches!(name.as_bytes()[m.len()], b'-' | b'@' | b':')
            })
            .max_by_key(|(m, _)| m.len())
            .map(|(m, p)| (m.as_str(), p))
    }

    /// Cost in USD of a request's usage at a model's prices; `None` when the model is unknown.
    pub fn cost_usd(&self, model: &str, usage: &Usage) -> Option<f64> {
        let (_, price) = self.resolve(model)?;
        Some(pico_to_usd(cost_pico(price, usage)))
    }
}

/// Each part of the input at its own price: uncached, cache reads, cache writes; then output.
pub fn cost_pico(price: &Price, u: &Usage) -> u128 {
    let uncached = u
        .input
        .saturating_sub(u.cached_input)
        .saturating_sub(u.cache_write);
    u128::from(uncached) * u128::from(price.input)
        + u128::from(u.cached_input) * u128::from(price.cached_input)
        + u128::from(u.cache_write) * u128::from(price.cache_write)
        + u128::from(u.output) * u128::from(price.output)
}

pub fn pico_to_usd(pico: u128) -> f64 {
    pico as f64 / 1e12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_loads() {
        let t = PriceTable::builtin().unwrap();
        assert!(t.models.len() >= 30);
    }

    #[test]
    fn snapshots_resolve_by_longest_prefix() {
        let t = PriceTable::builtin().unwrap();
        let r = |m| t.resolve(m).map(|(name, _)| name);
        assert_eq!(r("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(r("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(r("gpt-4o"), Some("gpt-4o"));
        assert_eq!(r("claude-sonnet-4-5-20250929"), Some("claude-sonnet-4-5"));
        assert_eq!(r("claude-sonnet-4-20250514"), Some("claude-sonnet-4"));
        assert_eq!(r("claude-3-5-haiku@20241022"), Some("claude-3-5-haiku"));
        assert_eq!(r("models/gemini-2.5-flash"), Some("gemini-2.5-flash"));
        assert_eq!(
            r("gemini-2.5-flash-lite-preview-06-17"),
            Some("gemini-2.5-flash-lite")
        );
        assert_eq!(r("o3-mini-2025-01-31"), Some("o3-mini"));
        // A prefix must end at a separator: `gpt-4o` is not a price for `gpt-4oz`.
        assert_eq!(r("gpt-4oz"), None);
        assert_eq!(r("my-finetune"), None);
    }

    #[test]
    fn cost_prices_each_part() {
        let t = PriceTable::builtin().unwrap();
        // claude-sonnet-4-5: 3 / 0.30 read / 3.75 write / 15 output per 1M.
        let u = Usage {
            input: 1_000 + 200 + 300,
            output: 50,
            cached_input: 200,
            cache_write: 300,
            reasoning: 0,
        };
        let pico: u64 = 1_000 * 3_000_000 + 200 * 300_000 + 300 * 3_750_000 + 50 * 15_000_000;
        assert_eq!(
            t.cost_usd("claude-sonnet-4-5-20250929", &u),
            Some(pico as f64 / 1e12)
        );
        assert_eq!(t.cost_usd("unknown-model", &u), None);
        assert_eq!(
            t.cost_usd("gpt-4o-mini", &Usage::default()),
            Some(0.0),
            "zero tokens of a known model cost zero"
        );
    }

    #[test]
    fn bad_tables_are_refused() {
        let dup = r#"{"models":[{"provider":"a","model":"m","input":1,"cached_input":null,"cache_write":null,"output":1},{"provider":"a","model":"m","input":1,"cached_input":null,"cache_write":null,"output":1}]}"#;
        assert!(PriceTable::from_json(dup).unwrap_err().contains("twice"));
        let neg = r#"{"models":[{"provider":"a","model":"m","input":-1,"cached_input":null,"cache_write":null,"output":1}]}"#;
        assert!(PriceTable::from_json(neg).is_err());
    }
}

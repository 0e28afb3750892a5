//! Token usage in one shape for every provider.
//!
//! `input` counts every prompt token, cached and cache-written ones included; `cached_input` and
//! `cache_write` are the parts read from and written to the provider's prompt cache, and
//! `cache_write_1h` the part of `cache_write` kept for an hour (billed at its own rate); `output`
//! includes `reasoning`. `web_search` counts server-side searches, billed per use, not in tokens.
//! Each provider module converts its own wire fields into this.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
    pub cache_write_1h: u64,
    pub web_search: u64,
}

/// More tokens than any request has; also the collector's bound.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;

impl Usage {
    /// The same usage with its parts made consistent, whatever a provider sent: every count
    /// within [`MAX_TOKENS`], cache reads and writes within the input, reasoning within the
    /// output. (An event the collector refuses would cost its whole batch.)
    pub fn consistent(self) -> Usage {
        let input = self.input.min(MAX_TOKENS);
        let output = self.output.min(MAX_TOKENS);
        let cached_input = self.cached_input.min(input);
        let cache_write = self.cache_write.min(input - cached_input);
        Usage {
            input,
            output,
            cached_input,
            cache_write,
            reasoning: self.reasoning.min(output),
            cache_write_1h: self.cache_write_1h.min(cache_write),
            web_search: self.web_search.min(MAX_TOKENS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inconsistent_reports_are_bounded() {
        let u = Usage {
            input: 10,
            output: 5,
            cached_input: 8,
            cache_write: 8,
            reasoning: 9,
            cache_write_1h: 7,
            web_search: 3,
        }
        .consistent();
        assert_eq!((u.cached_input, u.cache_write, u.reasoning), (8, 2, 5));
        assert_eq!((u.cache_write_1h, u.web_search), (2, 3));
        let big = Usage {
            input: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(big.consistent().input, MAX_TOKENS);
    }
}

/// How the token figures of an event were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Reported by the provider.
    Exact,
    /// Counted by Tally from the bytes that passed.
    Measured,
    /// Counted by Tally, then corrected by the collector's learned ratio.
    MeasuredCalibrated,
}

impl TokenSource {
    pub fn name(self) -> &'static str {
        match self {
            TokenSource::Exact => "exact",
            TokenSource::Measured => "measured",
            TokenSource::MeasuredCalibrated => "measured_calibrated",
        }
    }
}

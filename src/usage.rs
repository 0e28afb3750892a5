//! Token usage in one shape for every provider.
//!
//! `input` counts every prompt token, cached and cache-written ones included; `cached_input` and
//! `cache_write` are the parts read from and written to the provider's prompt cache; `output`
//! includes `reasoning`. Each provider module converts its own wire fields into this.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
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

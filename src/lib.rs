//! Tally: LLM cost and usage metering inside Envoy.
//!
//! The metering logic is plain Rust with no host calls, unit-tested natively and shared with the
//! collector: [`scan`] and [`sse`] read bodies as they pass, [`provider`] knows each API's wire
//! format, [`exchange`] turns one request into an [`event::Event`], [`pricing`] prices it and
//! [`outbox`] batches events for the collector. The proxy-wasm layer in `filter/` (built only for
//! wasm32) moves bytes and times between Envoy and that logic, and nothing else.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod budgets;
pub mod config;
pub mod decode;
pub mod errors;
pub mod event;
pub mod eventstream;
pub mod exchange;
pub mod handoff;
pub mod header_map;
pub mod hold;
pub mod identity;
pub mod json_array;
pub mod measure;
pub mod org_keys;
pub mod outbox;
pub mod pretokenize;
pub mod pricing;
pub mod provider;
pub mod proxy;
pub mod request_id;
pub mod rules;
pub mod scan;
pub mod sse;
pub mod stream_usage;
pub mod time;
pub mod usage;
pub mod vocab;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;

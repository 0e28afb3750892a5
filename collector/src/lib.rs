//! The collector's parts, as a library so that tests and fuzz targets reach them: `api` (HTTP
//! routes), `ingest` (batch parsing and validation), `sender` (who sent a batch, and whose
//! events it holds), `store` (SQLite), `db` (one SQL interface over SQLite and PostgreSQL), `keys`, `tokens` (mesh ingest tokens), `controls`
//! (`GET /v1/controls`), `error`, `log`, `users` and `web` (dashboard sign-in and pages),
//! `oidc` (sign-in by SSO).
//! The binary (`main.rs`) is the CLI.

pub mod alerts;
pub mod api;
pub mod budgets;
pub mod controls;
pub mod csv;
pub mod db;
pub mod error;
pub mod export;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod oidc;
pub mod otlp;
pub mod outbound;
pub mod prices;
#[cfg(test)]
mod replica_tests;
pub mod rollup;
pub mod rules_report;
pub mod sender;
pub mod sketch;
pub mod store;
pub mod tokens;
pub mod users;
pub mod web;

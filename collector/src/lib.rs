//! The collector's parts, as a library so that tests and fuzz targets reach them: `api` (HTTP
//! routes), `ingest` (batch parsing and validation), `store` (SQLite), `keys`, `error`, `log`.
//! The binary (`main.rs`) is the CLI.

pub mod api;
pub mod csv;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod rollup;
pub mod sketch;
pub mod store;
pub mod users;
pub mod web;

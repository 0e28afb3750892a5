//! The proxy-wasm layer: Envoy callbacks in, metering logic calls out.
//!
//! `RootContext` (one per VM, that is per Envoy worker) owns the configuration, the price table
//! and the outbox, and sends batches on its timer. Each request's `HttpContext` shares them
//! through `Rc<RefCell<..>>` (a VM is single-threaded) and feeds its [`Exchange`].
//!
//! Fail open: no callback returns anything but `Continue`, every host error is counted and
//! ignored, and a request whose state cannot be read is simply not metered.

mod controls;
#[cfg(feature = "fault-injection")]
mod fault;
mod handover;
mod host;
mod http;
mod ledger;
mod root;
mod shared;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Also installs a panic hook that logs at critical before the VM goes down.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::new()) });
}}

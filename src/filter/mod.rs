//! The proxy-wasm build: Envoy's callbacks in, [`crate::proxy`] over the [`Wasm`] host out.
//!
//! A `RootContext` (one per VM, that is per Envoy worker) owns the configuration and the outbox
//! and sends batches on its timer. Each request's `HttpContext` shares them (a VM is
//! single-threaded) and feeds its `Exchange`.

mod host;

use crate::proxy::http::Req;
use crate::proxy::root::Root;
use crate::proxy::{Action, Host, Level};
use host::Wasm;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self, BufferType, ContextType, LogLevel};

proxy_wasm::main! {{
    // Also installs a panic hook that logs at critical before the VM goes down.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WasmRoot(Root::new())) });
}}

struct WasmRoot(Root<Wasm>);
struct WasmReq(Req<Wasm>);

fn action(a: Action) -> types::Action {
    match a {
        Action::Continue => types::Action::Continue,
        Action::Pause => types::Action::Pause,
    }
}

impl Context for WasmRoot {
    fn on_done(&mut self) -> bool {
        self.0.on_done()
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if self.0.on_call_response(token, body_size) {
            let _ = hostcalls::done();
        }
    }
}

impl RootContext for WasmRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let json = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let configured = self.0.configure(&json).and_then(|tick| {
            hostcalls::set_tick_period(tick)
                .map_err(|s| format!("cannot set the flush timer: {s:?}"))
        });
        match configured {
            Ok(()) => true,
            Err(e) => {
                Wasm::log(Level::Critical, &format!("configuration rejected: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(WasmReq(self.0.new_request())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for WasmReq {}

impl HttpContext for WasmReq {
    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> types::Action {
        action(self.0.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        action(self.0.on_request_body(body_size, end_of_stream))
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> types::Action {
        action(self.0.on_response_headers())
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        action(self.0.on_response_body(body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.0.on_log();
    }
}

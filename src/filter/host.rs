//! Host calls wrapped so that a failure is a value, never a panic, plus the filter's counters.

use crate::header_map;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::borrow::Cow;
use std::time::UNIX_EPOCH;

/// The ABI call itself: the SDK's wrapper copies each header into its own `String`.
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_close_stream(stream_type: u32) -> u32;
    }
}

/// Reset the request's stream (Envoy's `resetStream()`, as when a filter fails closed). The
/// SDK's `reset_http_request` panics when the host refuses: this returns false instead.
pub fn reset_request() -> bool {
    // SAFETY: no pointers; the host only reads the stream type.
    let status =
        unsafe { abi::proxy_close_stream(proxy_wasm::types::StreamType::HttpRequest as u32) };
    status == 0
}

/// Answer the request from the proxy. The SDK's `send_http_response` panics when the host
/// refuses (it unwraps): this returns false instead, and the request goes on.
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    send_local_response_as(status, headers, body, "tally_org_key_refused")
}

/// [`send_local_response`] with Envoy's response code details (`%RESPONSE_CODE_DETAILS%`) set
/// to `details`.
pub fn send_local_response_as(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
    details: &str,
) -> bool {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let map = header_map::serialize(&pairs);
    let details = details.as_bytes();
    // SAFETY: every pointer is valid for its length for the duration of the call; the host
    // copies what it needs.
    let status = unsafe {
        abi::proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    status == 0
}

/// Milliseconds since the Unix epoch by the host's clock; 0.0 if the host cannot say.
pub fn now_ms() -> f64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A header map in the one buffer the host serialized it into: one host call for the whole map,
/// no copy per header.
pub struct Headers {
    raw: Vec<u8>,
}

impl Headers {
    pub fn read(map: MapType) -> Option<Headers> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer it got from `proxy_on_memory_allocate` (a boxed
        // slice of exactly `size` bytes, alignment 1), whose ownership passes to us.
        let raw = unsafe {
            if abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 {
                return None;
            }
            if data.is_null() {
                Vec::new()
            } else {
                Vec::from_raw_parts(data, size, size)
            }
        };
        Some(Headers { raw })
    }

    /// (name, value) pairs, values decoded lossily (they may hold any byte; names are tokens
    /// and a name that is not text is skipped). Valid UTF-8, the usual case, is borrowed.
    pub fn pairs(&self) -> Vec<(&str, Cow<'_, str>)> {
        header_map::pairs(&self.raw)
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, String::from_utf8_lossy(v))))
            .collect()
    }

    /// The first value of `name` (lower case).
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        header_map::pairs(&self.raw)
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v))
    }
}

/// A header of a map by name, in one host call; for maps read once.
pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Set a header (replacing any value it had).
pub fn set_header(map: MapType, name: &str, value: &str) -> bool {
    hostcalls::set_map_value(map, name, Some(value)).is_ok()
}

pub fn remove_header(map: MapType, name: &str) -> bool {
    hostcalls::remove_map_value(map, name).is_ok()
}

pub fn body(buffer: BufferType, size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(buffer, 0, size).ok().flatten()
}

/// Replace the current chunk of a body with `bytes`.
pub fn replace_body(buffer: BufferType, size: usize, bytes: &[u8]) -> bool {
    hostcalls::set_buffer(buffer, 0, size, bytes).is_ok()
}

pub fn property_bytes(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

pub fn property(path: &[&str]) -> Option<String> {
    property_bytes(path).and_then(|b| String::from_utf8(b).ok())
}

/// The VM's linear memory in bytes: it only grows, so it is the most the VM has held.
pub fn memory_bytes() -> i64 {
    let pages = core::arch::wasm32::memory_size(0);
    i64::try_from(pages.saturating_mul(65_536)).unwrap_or(i64::MAX)
}

pub fn log(level: proxy_wasm::types::LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// The filter's Envoy counters (shown by Envoy with the `wasmcustom.` prefix).
#[derive(Default, Clone, Copy)]
pub struct Metrics {
    pub requests_metered: Option<u32>,
    pub events_queued: Option<u32>,
    pub events_sent: Option<u32>,
    pub events_retried: Option<u32>,
    pub events_dropped: Option<u32>,
    pub batches_failed: Option<u32>,
    pub filter_errors: Option<u32>,
    /// Events a stopping VM handed over, and events a running VM took over (`handoff`).
    pub events_handed_over: Option<u32>,
    pub events_adopted: Option<u32>,
    /// Requests refused for their org key (401), requests passed unmetered for want of an org,
    /// and failed polls of the collector's key set.
    pub requests_refused_key: Option<u32>,
    pub requests_unattributed: Option<u32>,
    pub controls_failed: Option<u32>,
    /// Rules and budgets: requests refused by a rule (403) or a budget (429), requests whose
    /// model was rewritten, rewrites skipped (a SigV4-signed body, or a model in the path), and
    /// model rules passed over because the model came after the hold's cap.
    pub requests_refused_rule: Option<u32>,
    pub requests_refused_budget: Option<u32>,
    pub requests_rewritten: Option<u32>,
    pub rewrites_skipped: Option<u32>,
    pub rules_over_cap: Option<u32>,
    /// Gauges summed over the VMs of the plugin (each VM adds its own share): how many VMs run,
    /// their linear memory (so that memory per VM is read from Envoy's stats), and the events
    /// not yet accepted by the collector.
    pub vms: Option<u32>,
    pub vm_memory_bytes: Option<u32>,
    pub events_waiting: Option<u32>,
}

impl Metrics {
    pub fn define() -> Metrics {
        let c = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let g = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).ok();
        Metrics {
            requests_metered: c("tally.requests_metered"),
            events_queued: c("tally.events_queued"),
            events_sent: c("tally.events_sent"),
            events_retried: c("tally.events_retried"),
            events_dropped: c("tally.events_dropped"),
            batches_failed: c("tally.batches_failed"),
            filter_errors: c("tally.filter_errors"),
            events_handed_over: c("tally.events_handed_over"),
            events_adopted: c("tally.events_adopted"),
            requests_refused_key: c("tally.requests_refused_key"),
            requests_unattributed: c("tally.requests_unattributed"),
            controls_failed: c("tally.controls_failed"),
            requests_refused_rule: c("tally.requests_refused_rule"),
            requests_refused_budget: c("tally.requests_refused_budget"),
            requests_rewritten: c("tally.requests_rewritten"),
            rewrites_skipped: c("tally.rewrites_skipped"),
            rules_over_cap: c("tally.rules_over_cap"),
            vms: g("tally.vms"),
            vm_memory_bytes: g("tally.vm_memory_bytes"),
            events_waiting: g("tally.events_waiting"),
        }
    }

    /// Move a gauge by `delta`, up or down.
    pub fn shift(id: Option<u32>, delta: i64) {
        if let Some(id) = id {
            if delta != 0 {
                let _ = hostcalls::increment_metric(id, delta);
            }
        }
    }

    pub fn add(id: Option<u32>, n: u64) {
        if let Some(id) = id {
            if n > 0 {
                let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

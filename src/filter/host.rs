//! Host calls wrapped so that a failure is a value, never a panic, plus the filter's counters.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::UNIX_EPOCH;

/// Milliseconds since the Unix epoch by the host's clock; 0.0 if the host cannot say.
pub fn now_ms() -> f64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// All headers of a map, values lossily decoded. Header names are tokens (ASCII); values may hold
/// any byte, which the SDK's `get_map` would panic on.
pub fn headers(map: MapType) -> Option<Vec<(String, String)>> {
    let pairs = hostcalls::get_map_bytes(map).ok()?;
    Some(
        pairs
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
    )
}

pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
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
}

impl Metrics {
    pub fn define() -> Metrics {
        let c = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            requests_metered: c("tally.requests_metered"),
            events_queued: c("tally.events_queued"),
            events_sent: c("tally.events_sent"),
            events_retried: c("tally.events_retried"),
            events_dropped: c("tally.events_dropped"),
            batches_failed: c("tally.batches_failed"),
            filter_errors: c("tally.filter_errors"),
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

//! The proxy-wasm host: [`Wasm`] makes [`Host`]'s calls with the ABI, a failure as a value,
//! never a panic.

use crate::header_map;
use crate::proxy::{Buf, Host, Level, Map, Written};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

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

pub struct Wasm;

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

fn buffer_type(buf: Buf) -> BufferType {
    match buf {
        Buf::RequestBody => BufferType::HttpRequestBody,
        Buf::ResponseBody => BufferType::HttpResponseBody,
        Buf::CallResponseBody => BufferType::HttpCallResponseBody,
    }
}

/// A header map in the one buffer the host serialized it into: one host call for the whole map,
/// no copy per header.
fn read_map(map: Map) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it got from `proxy_on_memory_allocate` (a boxed
    // slice of exactly `size` bytes, alignment 1), whose ownership passes to us.
    unsafe {
        if abi::proxy_get_header_map_pairs(map_type(map) as u32, &mut data, &mut size) != 0 {
            return None;
        }
        Some(if data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        })
    }
}

impl Host for Wasm {
    fn now_ms() -> f64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn log(level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Critical => LogLevel::Critical,
        };
        let _ = hostcalls::log(level, message);
    }

    fn with_headers<R>(map: Map, f: impl FnOnce(&[(&str, Cow<'_, str>)]) -> R) -> Option<R> {
        let raw = read_map(map)?;
        let pairs: Vec<(&str, Cow<'_, str>)> = header_map::pairs(&raw)
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, String::from_utf8_lossy(v))))
            .collect();
        Some(f(&pairs))
    }

    fn header(map: Map, name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(map_type(map), name)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn set_header(map: Map, name: &str, value: &str) -> bool {
        hostcalls::set_map_value(map_type(map), name, Some(value)).is_ok()
    }

    fn remove_header(map: Map, name: &str) -> bool {
        hostcalls::remove_map_value(map_type(map), name).is_ok()
    }

    fn with_body<R>(buf: Buf, size: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if size == 0 {
            return Some(f(&[]));
        }
        let bytes = hostcalls::get_buffer(buffer_type(buf), 0, size).ok()??;
        Some(f(&bytes))
    }

    fn replace_body(buf: Buf, size: usize, bytes: &[u8]) -> bool {
        hostcalls::set_buffer(buffer_type(buf), 0, size, bytes).is_ok()
    }

    /// The SDK's `send_http_response` panics when the host refuses (it unwraps): this returns
    /// false instead, and the request goes on.
    fn send_local_response(
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

    /// The SDK's `reset_http_request` panics when the host refuses: this returns false instead.
    fn reset_request() -> bool {
        // SAFETY: no pointers; the host only reads the stream type.
        let status =
            unsafe { abi::proxy_close_stream(proxy_wasm::types::StreamType::HttpRequest as u32) };
        status == 0
    }

    fn property(path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn shared_get(key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key).ok()
    }

    fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Written {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Written::Ok,
            Err(Status::CasMismatch) => Written::CasMismatch,
            Err(_) => Written::Failed,
        }
    }

    fn define_counter(name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn define_gauge(name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Gauge, name).ok()
    }

    fn metric_add(id: u32, delta: i64) {
        let _ = hostcalls::increment_metric(id, delta);
    }

    fn dispatch(
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(|s| format!("{s:?}"))
    }

    /// The VM's linear memory in bytes: it only grows, so it is the most the VM has held.
    fn memory_bytes() -> i64 {
        let pages = core::arch::wasm32::memory_size(0);
        i64::try_from(pages.saturating_mul(65_536)).unwrap_or(i64::MAX)
    }

    fn random_u64() -> Option<u64> {
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).ok()?;
        Some(u64::from_le_bytes(seed))
    }
}

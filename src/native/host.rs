//! The dynamic-module host: [`Native`] makes [`Host`]'s calls through Envoy's callbacks. As
//! under proxy-wasm the request (or the callout answer) is implied: each hook sets the thread's
//! current filter before it calls the proxy layer.

use crate::abi::{self, EnvoyBuffer, Header, ModuleBuffer};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally::proxy::{Buf, Host, Level, Map, Written};

pub struct Native;

/// What the current hook works on: its configuration (for metrics and callouts), its request,
/// and a callout's answer.
#[derive(Clone, Copy)]
pub struct Current {
    pub config: abi::ConfigEnvoy,
    pub filter: abi::FilterEnvoy,
    pub call_headers: (*const Header, usize),
    pub call_body: (*const EnvoyBuffer, usize),
    /// The configuration is being destroyed: no callout may start.
    pub stopping: bool,
}

impl Current {
    pub const NONE: Current = Current {
        config: std::ptr::null_mut(),
        filter: std::ptr::null_mut(),
        call_headers: (std::ptr::null(), 0),
        call_body: (std::ptr::null(), 0),
        stopping: false,
    };
}

thread_local! {
    static CURRENT: Cell<Current> = const { Cell::new(Current::NONE) };
    /// Where Envoy writes a map's headers and a body's slices, kept from call to call on each
    /// worker: no allocation per request for them.
    static HEADERS: RefCell<Vec<Header>> = const { RefCell::new(Vec::new()) };
    static SLICES: RefCell<Vec<EnvoyBuffer>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `current` as the thread's current hook, restoring the previous one after (a
/// hook may run inside another's call into Envoy, as a local reply does).
pub fn with_current<R>(current: Current, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(current));
    let out = f();
    CURRENT.with(|c| c.set(before));
    out
}

fn current() -> Current {
    CURRENT.with(Cell::get)
}

/// Envoy's shared data has no counterpart here: every worker is a thread of this process, so
/// one map with versions serves the proxy layer's compare-and-swap.
static SHARED: Mutex<Option<HashMap<String, Versioned>>> = Mutex::new(None);

/// A value and its version, the CAS token.
type Versioned = (Vec<u8>, u32);

/// # Safety
/// `ptr` must be valid for `len` bytes (or null with `len` 0) for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

fn header_type(map: Map) -> Option<abi::HeaderType> {
    match map {
        Map::RequestHeaders => Some(abi::REQUEST_HEADER),
        Map::ResponseHeaders => Some(abi::RESPONSE_HEADER),
        Map::CallResponseHeaders => None,
    }
}

fn body_type(buf: Buf) -> Option<abi::BodyType> {
    match buf {
        Buf::RequestBody => Some(abi::RECEIVED_REQUEST_BODY),
        Buf::ResponseBody => Some(abi::RECEIVED_RESPONSE_BODY),
        Buf::CallResponseBody => None,
    }
}

/// Fill `out` with a list Envoy holds: the current callout's answer (`callout`), or `n` items
/// of the current request, `size` telling `n` and `get` writing them. False if Envoy cannot say.
fn envoy_list<T: Copy>(
    out: &mut Vec<T>,
    callout: Option<(*const T, usize)>,
    empty: T,
    size: impl FnOnce(abi::FilterEnvoy) -> usize,
    get: impl FnOnce(abi::FilterEnvoy, *mut T) -> bool,
) -> bool {
    out.clear();
    if let Some((ptr, len)) = callout {
        if !ptr.is_null() {
            // SAFETY: Envoy gave `len` items at `ptr` for the duration of the callout hook.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
        return true;
    }
    let filter = current().filter;
    if filter.is_null() {
        return false;
    }
    let n = size(filter);
    out.resize(n, empty);
    n == 0 || get(filter, out.as_mut_ptr())
}

/// Fill `out` with the headers of `map`, in Envoy's memory (valid until the hook returns or the
/// map changes).
fn envoy_headers(map: Map, out: &mut Vec<Header>) -> bool {
    let empty = Header {
        key_ptr: std::ptr::null(),
        key_len: 0,
        value_ptr: std::ptr::null(),
        value_len: 0,
    };
    match header_type(map) {
        None => envoy_list(out, Some(current().call_headers), empty, |_| 0, |_, _| true),
        // SAFETY: the filter pointer is the current hook's; the vector holds `n` headers.
        Some(t) => envoy_list(
            out,
            None,
            empty,
            |f| unsafe { abi::envoy_dynamic_module_callback_http_get_headers_size(f, t) },
            |f, p| unsafe { abi::envoy_dynamic_module_callback_http_get_headers(f, t, p) },
        ),
    }
}

/// Fill `out` with the slices of the current chunk of `buf`, in Envoy's memory.
fn chunks(buf: Buf, out: &mut Vec<EnvoyBuffer>) -> bool {
    let empty = EnvoyBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };
    match body_type(buf) {
        None => envoy_list(out, Some(current().call_body), empty, |_| 0, |_, _| true),
        // SAFETY: the filter pointer is the current hook's; the vector holds `n` slices.
        Some(t) => envoy_list(
            out,
            None,
            empty,
            |f| unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks_size(f, t) },
            |f, p| unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks(f, t, p) },
        ),
    }
}

/// Run `f` with this thread's reusable vector `key` (a new one if it is already in use, which
/// only a hook inside a hook could do).
fn with_reused<T, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Call `f` with the bytes of `slices`: in place for one slice (the usual case), else copied
/// together.
///
/// # Safety
/// Every slice must be valid for the call.
unsafe fn read_slices<R>(slices: &[EnvoyBuffer], f: impl FnOnce(&[u8]) -> R) -> R {
    match slices {
        [] => f(&[]),
        [one] => f(bytes(one.ptr, one.len)),
        many => {
            let mut all = Vec::with_capacity(many.iter().map(|s| s.len).sum());
            for s in many {
                all.extend_from_slice(bytes(s.ptr, s.len));
            }
            f(&all)
        }
    }
}

/// Whether a change to this header must make Envoy pick the route again. Proxy-wasm re-routes
/// after any change to the request's headers; here only Tally's own count (`x-tally-route`, set
/// by a rule, or a client's own, removed), since a re-route costs more than the rest of the
/// filter's work on a request, and the `content-length` removed from every request whose body
/// may change is never routed on.
fn routes_on(map: Map, name: &str) -> bool {
    map == Map::RequestHeaders && name.starts_with("x-tally-")
}

fn module_headers(headers: &[(&str, &str)]) -> Vec<Header> {
    headers
        .iter()
        .map(|(k, v)| Header {
            key_ptr: k.as_ptr(),
            key_len: k.len(),
            value_ptr: v.as_ptr(),
            value_len: v.len(),
        })
        .collect()
}

impl Host for Native {
    fn now_ms() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn log(level: Level, message: &str) {
        let level = match level {
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Critical => abi::LOG_CRITICAL,
        };
        let message = format!("tally: {message}");
        // SAFETY: the buffers are valid for the call; Envoy copies the message.
        unsafe {
            abi::envoy_dynamic_module_callback_log_v2(
                level,
                ModuleBuffer::of(message.as_bytes()),
                ModuleBuffer::of(b""),
                0,
            );
        }
    }

    fn with_headers<R>(map: Map, f: impl FnOnce(&[(&str, Cow<'_, str>)]) -> R) -> Option<R> {
        with_reused(&HEADERS, |raw| {
            if !envoy_headers(map, raw) {
                return None;
            }
            let pairs: Vec<(&str, Cow<'_, str>)> = raw
                .iter()
                .filter_map(|h| {
                    // SAFETY: Envoy's header memory outlives this call (the hook still runs).
                    let (k, v) =
                        unsafe { (bytes(h.key_ptr, h.key_len), bytes(h.value_ptr, h.value_len)) };
                    Some((std::str::from_utf8(k).ok()?, String::from_utf8_lossy(v)))
                })
                .collect();
            Some(f(&pairs))
        })
    }

    fn header(map: Map, name: &str) -> Option<String> {
        let cur = current();
        let Some(t) = header_type(map) else {
            return Self::with_headers(map, |pairs| {
                pairs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_string())
            })
            .flatten();
        };
        if cur.filter.is_null() {
            return None;
        }
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            len: 0,
        };
        // SAFETY: the filter pointer is the current hook's; `out` is written by Envoy.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                cur.filter,
                t,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        if !found || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's value, valid during the hook.
        Some(String::from_utf8_lossy(unsafe { bytes(out.ptr, out.len) }).into_owned())
    }

    /// Envoy picks the route again after one of Tally's request headers changes (a `route`
    /// rule's `x-tally-route` is routed on); see [`routes_on`].
    fn set_header(map: Map, name: &str, value: &str) -> bool {
        let cur = current();
        match header_type(map) {
            // SAFETY: the filter pointer is the current hook's; Envoy copies the buffers.
            Some(t) if !cur.filter.is_null() => unsafe {
                let set = abi::envoy_dynamic_module_callback_http_set_header(
                    cur.filter,
                    t,
                    ModuleBuffer::of(name.as_bytes()),
                    ModuleBuffer::of(value.as_bytes()),
                );
                if set && routes_on(map, name) {
                    abi::envoy_dynamic_module_callback_http_clear_route_cache(cur.filter);
                }
                set
            },
            _ => false,
        }
    }

    /// As [`Native::set_header`]: a client's own `x-tally-route` is removed, and must not
    /// have picked the route.
    fn remove_header(map: Map, name: &str) -> bool {
        let cur = current();
        match header_type(map) {
            // SAFETY: as above; a null value removes the header.
            Some(t) if !cur.filter.is_null() => unsafe {
                let removed = abi::envoy_dynamic_module_callback_http_set_header(
                    cur.filter,
                    t,
                    ModuleBuffer::of(name.as_bytes()),
                    ModuleBuffer::null(),
                );
                if removed && routes_on(map, name) {
                    abi::envoy_dynamic_module_callback_http_clear_route_cache(cur.filter);
                }
                removed
            },
            _ => false,
        }
    }

    fn with_body<R>(buf: Buf, _size: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        with_reused(&SLICES, |slices| {
            if !chunks(buf, slices) {
                return None;
            }
            // SAFETY: Envoy's slices, valid during the hook and untouched until `f` returns.
            Some(unsafe { read_slices(slices, f) })
        })
    }

    fn replace_body(buf: Buf, _size: usize, new: &[u8]) -> bool {
        let cur = current();
        let Some(t) = body_type(buf) else {
            return false;
        };
        if cur.filter.is_null() {
            return false;
        }
        // SAFETY: the filter pointer is the current hook's; Envoy copies the appended bytes.
        unsafe {
            let size = abi::envoy_dynamic_module_callback_http_get_body_size(cur.filter, t);
            (size == 0 || abi::envoy_dynamic_module_callback_http_drain_body(cur.filter, t, size))
                && (new.is_empty()
                    || abi::envoy_dynamic_module_callback_http_append_body(
                        cur.filter,
                        t,
                        ModuleBuffer::of(new),
                    ))
        }
    }

    fn send_local_response(
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        details: &str,
    ) -> bool {
        let cur = current();
        if cur.filter.is_null() {
            return false;
        }
        let headers = module_headers(headers);
        // SAFETY: every buffer is valid for the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                cur.filter,
                status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
        true
    }

    fn reset_request() -> bool {
        let cur = current();
        if cur.filter.is_null() {
            return false;
        }
        // SAFETY: the filter pointer is the current hook's.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_reset_stream(
                cur.filter,
                abi::STREAM_RESET_LOCAL,
                ModuleBuffer::of(b"tally_org_key_refused"),
            );
        }
        true
    }

    /// The attributes the proxy layer reads. Node metadata (`xds node metadata`, Istio's) is
    /// not among a dynamic module's attributes: mesh identity from the node is the wasm build's.
    fn property(path: &[&str]) -> Option<Vec<u8>> {
        let cur = current();
        if cur.filter.is_null() {
            return None;
        }
        let string = |id| {
            let mut out = EnvoyBuffer {
                ptr: std::ptr::null(),
                len: 0,
            };
            // SAFETY: the filter pointer is the current hook's; `out` is Envoy's, copied here.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                    cur.filter, id, &mut out,
                )
                .then(|| bytes(out.ptr, out.len).to_vec())
            }
        };
        match path {
            ["connection", "uri_san_peer_certificate"] => {
                string(abi::ATTR_CONNECTION_URI_SAN_PEER_CERTIFICATE)
            }
            ["response", "code_details"] => string(abi::ATTR_RESPONSE_CODE_DETAILS),
            ["response", "code"] => {
                let mut code = 0u64;
                // SAFETY: as above.
                let found = unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                        cur.filter,
                        abi::ATTR_RESPONSE_CODE,
                        &mut code,
                    )
                };
                // As proxy-wasm gives it: an int64, little-endian.
                found.then(|| (code as i64).to_le_bytes().to_vec())
            }
            _ => None,
        }
    }

    fn shared_get(key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
        let map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        Some(match map.as_ref().and_then(|m| m.get(key)) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Written {
        let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let map = map.get_or_insert_with(HashMap::new);
        match map.get_mut(key) {
            Some((v, version)) => {
                if cas.is_some_and(|c| c != *version) {
                    return Written::CasMismatch;
                }
                v.clear();
                v.extend_from_slice(value);
                *version = version.wrapping_add(1).max(1);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), 1));
            }
        }
        Written::Ok
    }

    fn define_counter(name: &str) -> Option<u32> {
        define(name, false)
    }

    fn define_gauge(name: &str) -> Option<u32> {
        define(name, true)
    }

    fn metric_add(id: u32, delta: i64) {
        let cur = current();
        if cur.config.is_null() {
            return;
        }
        let (gauge, id) = (id & GAUGE != 0, (id & !GAUGE) as usize);
        // SAFETY: the configuration pointer is valid while any of its hooks runs; the counter
        // and gauge calls are Envoy's stats, safe from any worker.
        unsafe {
            if !gauge {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    cur.config,
                    id,
                    std::ptr::null(),
                    0,
                    delta.unsigned_abs(),
                );
            } else if delta >= 0 {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                    cur.config,
                    id,
                    std::ptr::null(),
                    0,
                    delta.unsigned_abs(),
                );
            } else {
                abi::envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                    cur.config,
                    id,
                    std::ptr::null(),
                    0,
                    delta.unsigned_abs(),
                );
            }
        }
    }

    fn dispatch(
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let cur = current();
        if cur.config.is_null() || cur.stopping {
            return Err("the filter configuration is stopping".to_string());
        }
        // Envoy requires `host`; the proxy layer names it `:authority`, as proxy-wasm does.
        let host = headers
            .iter()
            .find(|(k, _)| *k == ":authority")
            .map_or("", |(_, v)| *v);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("host", host));
        let headers = module_headers(&all);
        let mut id = 0u64;
        // SAFETY: called on the main thread from a configuration hook; Envoy copies every buffer.
        let init = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                cur.config,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body.unwrap_or_default()),
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            )
        };
        if init != abi::CALLOUT_SUCCESS {
            return Err(match init {
                1 => "missing required headers".to_string(),
                2 => format!("cluster {cluster:?} not found"),
                3 => "duplicate callout id".to_string(),
                _ => "the request could not be created".to_string(),
            });
        }
        // Callout ids count up from 1 per configuration: the low 32 bits tell them apart.
        Ok(id as u32)
    }

    fn memory_bytes() -> i64 {
        0
    }

    fn random_u64() -> Option<u64> {
        // The standard library seeds each `RandomState` from the OS's entropy.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7a11);
        Some(h.finish())
    }
}

/// Gauges and counters have separate id spaces in Envoy: a gauge's id carries this bit.
const GAUGE: u32 = 1 << 31;

fn define(name: &str, gauge: bool) -> Option<u32> {
    let cur = current();
    if cur.config.is_null() {
        return None;
    }
    let mut id = 0usize;
    // SAFETY: called from the configuration hook (metrics are defined there only).
    let result = unsafe {
        if gauge {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                cur.config,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut id,
            )
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                cur.config,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut id,
            )
        }
    };
    let id = u32::try_from(id).ok().filter(|id| id & GAUGE == 0)?;
    (result == abi::METRICS_SUCCESS).then_some(if gauge { id | GAUGE } else { id })
}

//! The filter as it runs in a proxy, over any host: the proxy-wasm ABI (`filter/`, the wasm
//! build) or Envoy's dynamic-module ABI (`native/`, a shared library). Each host implements
//! [`Host`]: a few calls that move bytes, times and counters, with the current request or
//! callout implied, as proxy-wasm has it. Everything above them, here and below in the metering
//! core, is the same code in both builds.
//!
//! Fail open: no callback returns anything but [`Action::Continue`] unless a configured refusal
//! was sent, every host error is counted and ignored, and a request whose state cannot be read
//! is simply not metered.

pub mod controls;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod handover;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod root;
pub mod shared;
pub mod vocabs;

use std::borrow::Cow;
use std::time::Duration;

pub use metrics::Metrics;

/// A header map of the current request, or of the answer to the current callout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    CallResponseHeaders,
}

/// A body: the current chunk of the request's or the response's, or a callout's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Buf {
    RequestBody,
    ResponseBody,
    CallResponseBody,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    Info,
    Warn,
    Critical,
}

/// What a request callback tells the host.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Continue,
    /// A local response was sent (or the stream is being reset): nothing goes on.
    Pause,
}

/// A compare-and-swap write to shared data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Written {
    Ok,
    CasMismatch,
    Failed,
}

/// The host's calls. None of them may panic: a failure is a value.
pub trait Host: 'static {
    /// Milliseconds since the Unix epoch by the host's clock; 0.0 if it cannot say.
    fn now_ms() -> f64;
    fn log(level: Level, message: &str);

    /// Call `f` with every (name, value) pair of `map`, values decoded lossily (names are
    /// tokens: a name that is not text is skipped). None if the host cannot read the map.
    fn with_headers<R>(map: Map, f: impl FnOnce(&[(&str, Cow<'_, str>)]) -> R) -> Option<R>;
    /// The first value of one header, for maps read once.
    fn header(map: Map, name: &str) -> Option<String>;
    /// Set a header, replacing any value it had.
    fn set_header(map: Map, name: &str, value: &str) -> bool;
    fn remove_header(map: Map, name: &str) -> bool;
    /// Call `f` with the current chunk of `buf` (`size` bytes, as the callback said).
    fn with_body<R>(buf: Buf, size: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R>;
    /// Replace the current chunk of `buf` with `bytes`.
    fn replace_body(buf: Buf, size: usize, bytes: &[u8]) -> bool;
    /// Answer the current request from the proxy, with Envoy's response code details set to
    /// `details`.
    fn send_local_response(
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        details: &str,
    ) -> bool;
    /// Reset the current request's stream (Envoy's fail-closed path).
    fn reset_request() -> bool;
    /// An attribute of the current request or of the proxy (`connection
    /// uri_san_peer_certificate`, `response code_details`, `response code` as a little-endian
    /// int64, `xds node metadata K`...). None where the host does not have it.
    fn property(path: &[&str]) -> Option<Vec<u8>>;
    /// [`Host::property`] as text (None if it is not UTF-8).
    fn property_text(path: &[&str]) -> Option<String> {
        Self::property(path).and_then(|b| String::from_utf8(b).ok())
    }

    /// Shared data, one store for every worker of the Envoy: a value and its CAS token.
    fn shared_get(key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)>;
    fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Written;

    fn define_counter(name: &str) -> Option<u32>;
    fn define_gauge(name: &str) -> Option<u32>;
    /// Add `delta` to a counter (never negative) or a gauge.
    fn metric_add(id: u32, delta: i64);

    /// Call the collector's cluster; a token that [`root::Root::on_call_response`] gets back.
    fn dispatch(
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;

    /// The memory the filter holds, for the `vm_memory_bytes` gauge (0 where it is the
    /// proxy's own).
    fn memory_bytes() -> i64;
    /// Entropy for request ids; None when the host has none.
    fn random_u64() -> Option<u64>;

    /// A counter by `n` (nothing for an undefined one).
    fn count(id: Option<u32>, n: u64) {
        if let Some(id) = id {
            if n > 0 {
                Self::metric_add(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// A gauge by `delta`, up or down.
    fn shift(id: Option<u32>, delta: i64) {
        if let Some(id) = id {
            if delta != 0 {
                Self::metric_add(id, delta);
            }
        }
    }
}

/// The state a filter's requests share: one per VM under proxy-wasm (single-threaded), one per
/// filter configuration in a native module (read by every worker at once).
pub struct Cell<T>(
    #[cfg(target_arch = "wasm32")] std::cell::RefCell<T>,
    #[cfg(not(target_arch = "wasm32"))] std::sync::RwLock<T>,
);

impl<T> Cell<T> {
    pub fn new(value: T) -> Self {
        #[cfg(target_arch = "wasm32")]
        return Cell(std::cell::RefCell::new(value));
        #[cfg(not(target_arch = "wasm32"))]
        return Cell(std::sync::RwLock::new(value));
    }
}

#[cfg(target_arch = "wasm32")]
impl<T> Cell<T> {
    /// None when a callback is already writing it (re-entry): the caller passes.
    pub fn read(&self) -> Option<std::cell::Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    pub fn write(&self) -> Option<std::cell::RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<T> Cell<T> {
    /// Workers wait their turn; a panic caught while the lock was held leaves it usable (the
    /// state is counters and queues, each left whole between calls).
    pub fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, T>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn write(&self) -> Option<std::sync::RwLockWriteGuard<'_, T>> {
        Some(self.0.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What holds the shared state: `Rc` in a VM, `Arc` for a native module's workers.
#[cfg(target_arch = "wasm32")]
pub type Ref<T> = std::rc::Rc<T>;
#[cfg(not(target_arch = "wasm32"))]
pub type Ref<T> = std::sync::Arc<T>;

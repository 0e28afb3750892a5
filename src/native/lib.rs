//! Tally as an Envoy dynamic module (`libtally_envoy.so`): Envoy's hooks in, the same proxy layer
//! as the wasm build ([`tally::proxy`]) over the [`host::Native`] host out.
//!
//! - A filter configuration (main thread) owns a [`Root`]: configuration, outbox batches and
//!   controls polls, sent as callouts to the collector's cluster from the main thread. A thread
//!   of the module's own wakes it every tick through Envoy's configuration scheduler.
//! - Each request (on its worker) owns a [`Req`] sharing the configuration's state.
//! - A panic never reaches Envoy: every hook catches it, counts it (`tally.panics`) and lets the
//!   request pass; the request is not looked at again.

// The hooks are `unsafe extern "C"`: Envoy alone calls them, with the pointers its ABI
// documents (the safety contract is Envoy's `abi.h`, not a caller's in Rust).
#![allow(clippy::missing_safety_doc)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abi;
mod host;

use abi::{ConfigEnvoy, EnvoyBuffer, FilterEnvoy, Header};
use host::{with_current, Current, Native};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;
use tally::proxy::http::Req;
use tally::proxy::root::Root;
use tally::proxy::{Action, Host, Level};

/// A filter configuration's state.
struct Config {
    envoy: ConfigEnvoy,
    root: Mutex<Root<Native>>,
    /// The state requests share (from the root context, fixed once configured).
    shared: Option<tally::proxy::Ref<tally::proxy::Cell<tally::proxy::root::Shared>>>,
    panics: Option<u32>,
    scheduler: abi::Scheduler,
    ticker: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

// SAFETY: Envoy's configuration pointer is valid until `config_destroy` and its stats and
// scheduler calls are safe from any thread; the root context is used under its mutex, from the
// main thread.
unsafe impl Send for Config {}
unsafe impl Sync for Config {}

/// A request's state: None once a panic was caught (the request then passes untouched).
struct Filter {
    config: *const Config,
    req: Option<Req<Native>>,
}

/// The scheduler pointer, handed to the ticker thread.
struct SendPtr(abi::Scheduler);
// SAFETY: Envoy's configuration scheduler may be committed from any thread.
unsafe impl Send for SendPtr {}

impl Config {
    fn current(&self, filter: FilterEnvoy) -> Current {
        Current {
            config: self.envoy,
            filter,
            ..Current::NONE
        }
    }

    /// Run a configuration hook's work with its panics caught.
    fn guarded<R>(&self, current: Current, fallback: R, f: impl FnOnce() -> R) -> R {
        with_current(current, || match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(_) => {
                Native::count(self.panics, 1);
                fallback
            }
        })
    }
}

/// Never let a panic's message out: it may quote the bytes being read (a prompt). Where it
/// happened is enough.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            Native::log(
                Level::Critical,
                &format!("panic caught at {at}; the request passes unmetered"),
            );
        }));
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    quiet_panics();
    abi::ABI_VERSION.as_ptr()
}

/// # Safety
/// Envoy's buffers are valid for the call.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(b.ptr, b.len)
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoy,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let json = envoy_bytes(config).to_vec();
    let current = Current {
        config: config_envoy,
        ..Current::NONE
    };
    let made = with_current(current, || {
        catch_unwind(AssertUnwindSafe(|| {
            let panics = Native::define_counter("tally.panics");
            let mut root = Root::<Native>::new();
            let tick = root.configure(&json)?;
            Ok::<_, String>((root, tick, panics))
        }))
    });
    let (root, tick, panics) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => {
            with_current(current, || {
                Native::log(Level::Critical, &format!("configuration rejected: {e}"))
            });
            return std::ptr::null();
        }
        Err(_) => return std::ptr::null(),
    };
    let scheduler =
        abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config_envoy);
    if scheduler.is_null() {
        // Without its timer the filter would meter and never send: refused, loudly.
        with_current(current, || {
            Native::log(
                Level::Critical,
                "configuration rejected: Envoy gave the module no scheduler for its timer",
            )
        });
        return std::ptr::null();
    }
    let shared = root.shared();
    let mut cfg = Box::new(Config {
        envoy: config_envoy,
        root: Mutex::new(root),
        shared,
        panics,
        scheduler,
        ticker: None,
    });
    cfg.ticker = Some(start_ticker(SendPtr(scheduler), tick));
    Box::into_raw(cfg) as *const c_void
}

/// The root context's timer: a thread that asks Envoy to run the tick on the main thread.
fn start_ticker(scheduler: SendPtr, tick: Duration) -> (JoinHandle<()>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let handle = std::thread::spawn(move || {
        let scheduler = scheduler;
        while !stopping.load(Ordering::Acquire) {
            std::thread::sleep(tick);
            if stopping.load(Ordering::Acquire) {
                break;
            }
            // SAFETY: the scheduler lives until the configuration is destroyed, which joins this
            // thread first.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                    scheduler.0,
                    0,
                );
            }
        }
    });
    (handle, stop)
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: *const c_void) {
    if ptr.is_null() {
        return;
    }
    let mut cfg = Box::from_raw(ptr as *mut Config);
    if let Some((handle, stop)) = cfg.ticker.take() {
        stop.store(true, Ordering::Release);
        let _ = handle.join();
    }
    // What is still queued is handed over (shared data outlives the configuration): a new
    // configuration of the same scope, as an update brings, takes it over and sends it.
    let current = Current {
        stopping: true,
        ..cfg.current(std::ptr::null_mut())
    };
    cfg.guarded(current, (), || {
        if let Ok(mut root) = cfg.root.lock() {
            root.on_done();
        }
    });
    if !cfg.scheduler.is_null() {
        abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(cfg.scheduler);
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoy,
    ptr: *const c_void,
    _event_id: u64,
) {
    let Some(cfg) = (ptr as *const Config).as_ref() else {
        return;
    };
    cfg.guarded(cfg.current(std::ptr::null_mut()), (), || {
        if let Ok(mut root) = cfg.root.lock() {
            root.on_tick();
        }
    });
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoy,
    ptr: *const c_void,
    callout_id: u64,
    _result: abi::CalloutResult,
    headers: *const Header,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    let Some(cfg) = (ptr as *const Config).as_ref() else {
        return;
    };
    let body_size = if body.is_null() {
        0
    } else {
        std::slice::from_raw_parts(body, body_len)
            .iter()
            .map(|b| b.len)
            .sum()
    };
    let current = Current {
        call_headers: (headers, headers_len),
        call_body: (body, body_len),
        ..cfg.current(std::ptr::null_mut())
    };
    cfg.guarded(current, (), || {
        if let Ok(mut root) = cfg.root.lock() {
            // A stopping root context is done when told so; a native one never waits.
            root.on_call_response(callout_id as u32, body_size);
        }
    });
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    ptr: *const c_void,
    _filter_envoy: FilterEnvoy,
) -> *const c_void {
    let cfg = ptr as *const Config;
    let req = Some(Req::new((*cfg).shared.clone()));
    Box::into_raw(Box::new(Filter { config: cfg, req })) as *const c_void
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: *const c_void) {
    if !ptr.is_null() {
        drop(Box::from_raw(ptr as *mut Filter));
    }
}

/// Run a request hook: the request's own work, its panics caught (the request then passes and
/// is dropped from metering).
unsafe fn on_request<R: Copy>(
    filter_envoy: FilterEnvoy,
    ptr: *const c_void,
    pass: R,
    f: impl FnOnce(&mut Req<Native>) -> R,
) -> R {
    let Some(filter) = (ptr as *mut Filter).as_mut() else {
        return pass;
    };
    let Some(cfg) = filter.config.as_ref() else {
        return pass;
    };
    let Some(req) = filter.req.as_mut() else {
        return pass;
    };
    let out = with_current(cfg.current(filter_envoy), || {
        catch_unwind(AssertUnwindSafe(|| f(req)))
    });
    match out {
        Ok(r) => r,
        Err(_) => {
            with_current(cfg.current(filter_envoy), || Native::count(cfg.panics, 1));
            filter.req = None;
            pass
        }
    }
}

fn headers_status(a: Action) -> abi::HeadersStatus {
    match a {
        Action::Continue => abi::HEADERS_CONTINUE,
        Action::Pause => abi::HEADERS_STOP_ITERATION,
    }
}

fn body_status(a: Action) -> abi::BodyStatus {
    match a {
        Action::Continue => abi::BODY_CONTINUE,
        Action::Pause => abi::BODY_STOP_ITERATION_NO_BUFFER,
    }
}

/// A request hook with `end_of_stream`: the request's `Req` answers, through `status`.
macro_rules! stream_hook {
    ($name:ident -> $status:ty, $pass:expr, |$req:ident, $eos:ident| $call:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            filter_envoy: FilterEnvoy,
            ptr: *const c_void,
            $eos: bool,
        ) -> $status {
            on_request(filter_envoy, ptr, $pass, |$req| $call)
        }
    };
}

stream_hook!(envoy_dynamic_module_on_http_filter_request_headers -> abi::HeadersStatus,
    abi::HEADERS_CONTINUE, |r, eos| headers_status(r.on_request_headers(eos)));
stream_hook!(envoy_dynamic_module_on_http_filter_request_body -> abi::BodyStatus,
    abi::BODY_CONTINUE, |r, eos| body_status(r.on_request_body(0, eos)));
stream_hook!(envoy_dynamic_module_on_http_filter_response_headers -> abi::HeadersStatus,
    abi::HEADERS_CONTINUE, |r, _eos| headers_status(r.on_response_headers()));
stream_hook!(envoy_dynamic_module_on_http_filter_response_body -> abi::BodyStatus,
    abi::BODY_CONTINUE, |r, eos| body_status(r.on_response_body(0, eos)));

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoy,
    ptr: *const c_void,
) {
    on_request(filter_envoy, ptr, (), |r| r.on_log());
}

// Hooks Tally has no use for, which Envoy requires a module to have.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
) -> abi::TrailersStatus {
    abi::TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
) -> abi::TrailersStatus {
    abi::TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> abi::LocalReplyStatus {
    abi::LOCAL_REPLY_CONTINUE
}

/// Per-route configuration is not used: the filter's own configuration holds its rules.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _callout_id: u64,
    _result: abi::CalloutResult,
    _headers: *const Header,
    _headers_len: usize,
    _body: *const EnvoyBuffer,
    _body_len: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _headers: *const Header,
    _headers_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const Header,
    _trailers_len: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoy,
    _ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _headers: *const Header,
    _headers_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const Header,
    _trailers_len: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoy,
    _ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

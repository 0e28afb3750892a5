//! An Envoy dynamic module (ABI v0.2.0, Envoy 1.40) whose HTTP filter does nothing: every hook
//! returns at once, so `make bench` can tell what Envoy's dynamic-module filter costs by itself
//! from what Tally's native module adds.

use std::ffi::c_void;

#[repr(C)]
pub struct Buffer {
    ptr: *const u8,
    len: usize,
}

static FILTER: u8 = 0;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    b"v0.2.0\0".as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config: *mut c_void,
    _name: Buffer,
    _json: Buffer,
) -> *const c_void {
    &FILTER as *const u8 as *const c_void
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: *const c_void,
    _filter: *mut c_void,
) -> *const c_void {
    &FILTER as *const u8 as *const c_void
}

macro_rules! returns {
    ($value:expr, $($name:ident),*) => {$(
        #[no_mangle]
        pub extern "C" fn $name(_a: *mut c_void, _b: *const c_void, _eos: bool) -> u32 {
            $value
        }
    )*};
}

returns!(
    0,
    envoy_dynamic_module_on_http_filter_request_headers,
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
    envoy_dynamic_module_on_http_filter_local_reply
);

macro_rules! nothing {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub extern "C" fn $name() {}
    )*};
}

// Hooks Envoy requires; none is called for a filter that starts nothing.
nothing!(
    envoy_dynamic_module_on_http_filter_config_destroy,
    envoy_dynamic_module_on_http_filter_destroy,
    envoy_dynamic_module_on_http_filter_stream_complete,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset
);

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: Buffer,
    _json: Buffer,
) -> *const c_void {
    std::ptr::null()
}

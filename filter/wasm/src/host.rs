//! Envoy's host calls, made on the proxy-wasm ABI directly so that every status the host can answer
//! is handled and none panics.
//!
//! The SDK's wrappers (`proxy_wasm::hostcalls`) `panic!` on a status they do not expect, and its
//! trait helpers (`set_http_request_header`, `get_plugin_configuration`, …) `unwrap` their results;
//! a panic aborts the VM, and every request on that worker fails until Envoy reloads it. Here a
//! status is a plain `u32` (an unknown value read into the SDK's `Status` enum would be undefined
//! behaviour), anything but success reads as "nothing", and the caller lets the request through.
//!
//! Buffers the host returns were allocated through the SDK's `proxy_on_memory_allocate(size)`,
//! which leaks a boxed `[u8]` of exactly `size` bytes: a `Vec` with length = capacity = size takes
//! that allocation over, once.
//!
//! The request's header map comes in one call as raw bytes for [`HeaderPairs`] to read in place:
//! the SDK's `get_map_bytes` turns it into owned pairs (two allocations per header), and the
//! decision needs a handful of lookups.
//!
//! [`HeaderPairs`]: meshcanary_core::header_map::HeaderPairs

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

/// `WasmResult::Ok` in the ABI.
const OK: u32 = 0;

// The ABI functions the SDK also imports, with the same wasm signatures; statuses are read as u32.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> u32;
}

/// Takes over a buffer the host returned with `status`: `None` unless the call succeeded; an
/// empty buffer may come as a null pointer.
///
/// # Safety
/// `data` and `size` must be what the host wrote for a call answering `status`.
unsafe fn take_returned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    match status {
        OK if data.is_null() => Some(Vec::new()),
        // SAFETY: see the module doc: the host allocated `size` bytes through the SDK's allocator.
        OK => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

/// All request headers in the proxy-wasm wire format, or `None` if the host has none to give
/// (then the decision sees a request without headers and the request passes through).
pub fn request_header_pairs() -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: the host writes a pointer and a size into the two locals, read as the module says.
    unsafe {
        let status = proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size);
        take_returned(status, data, size)
    }
}

/// One header's value from `map`; `None` if it is absent or the map cannot be read now.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: as in `request_header_pairs`; `name` is only read during the call.
    unsafe {
        let status =
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size);
        take_returned(status, data, size)
    }
}

/// Sets header `name` in `map` to `value`, replacing every value it had, or removes it for `None`.
/// Envoy refuses only when the map is not available in the current callback; then nothing changes.
pub fn set_header(map: MapType, name: &str, value: Option<&[u8]>) {
    // SAFETY: the host only reads the given byte ranges during the call.
    unsafe {
        match value {
            Some(value) => proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            ),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        };
    }
}

/// Adds a value of header `name` to `map`, keeping the values it has (`set-cookie` may repeat).
/// Envoy refuses only when the map is not available in the current callback; then nothing changes.
pub fn add_header(map: MapType, name: &str, value: &[u8]) {
    // SAFETY: the host only reads the given byte ranges during the call.
    unsafe {
        proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

/// The plugin configuration (Istio's `pluginConfig` as JSON; the ECDS file's `configuration`),
/// or `None` if the host gives none.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: as in `request_header_pairs`.
    unsafe {
        let status = proxy_get_buffer_bytes(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
            &mut data,
            &mut size,
        );
        take_returned(status, data, size)
    }
}

/// Defines a stat (or finds the one defined before under `name`); `None` if the host refuses.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the host reads `name` during the call and writes the id into the local.
    match unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) } {
        OK => Some(id),
        _ => None,
    }
}

/// Adds one to counter `id`; a failed update is dropped (it must not affect the request).
pub fn increment_metric(id: u32) {
    // SAFETY: no pointers are passed.
    unsafe { proxy_increment_metric(id, 1) };
}

/// Sets gauge `id` or records a histogram sample; a failed update is dropped.
pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers are passed.
    unsafe { proxy_record_metric(id, value) };
}

/// The host's wall clock in nanoseconds since the Unix epoch.
pub fn now_ns() -> Option<u64> {
    let mut now = 0;
    // SAFETY: the host writes the time into the local.
    match unsafe { proxy_get_current_time_nanoseconds(&mut now) } {
        OK => Some(now),
        _ => None,
    }
}

/// Writes `message` to Envoy's log; a failed log call is ignored.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the host reads `message` during the call.
    unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

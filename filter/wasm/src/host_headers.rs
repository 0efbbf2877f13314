//! The request's header map in one host call, as raw bytes for [`HeaderPairs`] to read in place.
//!
//! The SDK's `get_map_bytes` turns the map into a `Vec` of owned pairs (two allocations per header);
//! the decision needs a handful of lookups, so the filter takes the host's buffer as it is.
//!
//! [`HeaderPairs`]: meshcanary_core::header_map::HeaderPairs

use proxy_wasm::types::{MapType, Status};

// The ABI function the SDK also imports (same signature); the SDK does not expose its raw result.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// All request headers in the proxy-wasm wire format, or `None` if the host has none to give
/// (then the decision sees a request without headers and the request passes through).
pub fn request_header_pairs() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two locals. A non-null pointer came from
    // the SDK's `proxy_on_memory_allocate(size)`, which leaks a boxed `[u8]` of exactly `size` bytes
    // that the host has filled; a Vec with length = capacity = size owns that allocation, and it is
    // taken once, as the SDK's own `get_map_bytes` does.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
            _ => None,
        }
    }
}

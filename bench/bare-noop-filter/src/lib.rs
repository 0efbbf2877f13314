//! A proxy-wasm module that does nothing, written against the ABI directly (no SDK) and exporting
//! exactly the entry points the meshcanary filter exports (`filter/wasm/exports.txt`). `make bench`
//! runs it as configuration (h): the least Envoy can pay per request for a wasm filter that has
//! meshcanary's per-request callbacks (context create, request headers, response headers, log,
//! delete), with no dispatch and no work in any of them. (e), the no-op filter built with the SDK,
//! exports every callback of the ABI, so Envoy calls more of them per request (the response body's
//! among them); (c) against (h) is what meshcanary's own work costs.
//!
//! Build: `cargo build -p meshcanary-bare-noop-filter --target wasm32-wasip1 --profile wasm-release`.
//! On the host the crate is empty, so `cargo test --workspace` and clippy still build it.

#[cfg(target_arch = "wasm32")]
mod filter {
    extern "C" {
        fn __wasm_call_ctors();
    }

    /// The WASI reactor's initializer, run once per VM. Calling the constructors here is what
    /// tells the linker this is a reactor: otherwise it wraps every export in a call of the
    /// constructors and destructors, which no real filter pays (the SDK's `_initialize` does the
    /// same).
    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's own initializer, called once, before any other export, as WASI
        // reactors must.
        unsafe { __wasm_call_ctors() }
    }

    /// The ABI version Envoy checks for.
    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    /// Envoy requires an allocator export even though nothing here asks the host for data.
    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
        buffer.as_mut_ptr()
    }

    /// Any VM configuration is accepted.
    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _size: usize) -> u32 {
        1
    }

    /// Any plugin configuration is accepted.
    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_context_id: u32, _size: usize) -> u32 {
        1
    }

    /// Root and HTTP contexts alike: nothing to create.
    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

    /// Continue (0).
    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(
        _context_id: u32,
        _headers: usize,
        _eos: u32,
    ) -> u32 {
        0
    }

    /// Continue (0).
    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(
        _context_id: u32,
        _headers: usize,
        _eos: u32,
    ) -> u32 {
        0
    }

    /// Nothing to record.
    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context_id: u32) {}

    /// Nothing to free.
    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context_id: u32) {}
}

//! A proxy-wasm HTTP filter that does nothing, built with the same SDK (proxy-wasm 0.2.5) and the same
//! `wasm-release` profile as meshcanary's filter. `make bench` runs it as configuration (e): what any
//! wasm filter costs per request (VM entry, context creation, the ABI's callbacks) before it does any
//! work, so the meshcanary filter's own cost is what it adds above this floor.
//!
//! Build: `cargo build -p meshcanary-noop-filter --target wasm32-wasip1 --profile wasm-release`.
//! On the host the crate is empty, so `cargo test --workspace` and clippy still build it.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::LogLevel;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        // No root context of our own: the SDK's default one creates an HTTP context per request.
        proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
            Box::new(Noop)
        });
    }}

    /// One per request; every callback keeps the SDK's default (continue, change nothing).
    struct Noop;

    impl Context for Noop {}

    impl HttpContext for Noop {}
}

//! A proxy-wasm HTTP filter that only writes the variant header: `x-meshcanary-variant: v1` on every
//! request (replacing any value the client sent), nothing else. Built with the same SDK (proxy-wasm
//! 0.2.5) and the same `wasm-release` profile as meshcanary's filter. `make bench` runs it as
//! configuration (g), on the routes of (c) that match that header: the calibration filter
//! ("a wasm filter that sets one request header"). Next to the no-op filter (e) it shows what
//! writing the header costs (the host call, and Envoy clearing the route cache and matching the
//! route again), so it is the floor of ANY wasm filter that routes by writing the header; the
//! meshcanary filter's own decision is what it adds above this.
//!
//! Build: `cargo build -p meshcanary-header-filter --target wasm32-wasip1 --profile wasm-release`.
//! On the host the crate is empty, so `cargo test --workspace` and clippy still build it.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::{Action, LogLevel};

    /// The header the routes of configuration (c) match on.
    const VARIANT_HEADER: &str = "x-meshcanary-variant";
    /// The value every request gets: the stable variant, what (c)'s routes also send anything else to.
    const VARIANT: &str = "v1";

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        // No root context of our own: the SDK's default one creates an HTTP context per request
        // (and accepts any plugin configuration, which this filter does not read).
        proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
            Box::new(SetVariant)
        });
    }}

    /// One per request; writes the header, every other callback keeps the SDK's default.
    struct SetVariant;

    impl Context for SetVariant {}

    impl HttpContext for SetVariant {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            // proxy_replace_header_map_value: replaces a value the client sent, adds it otherwise.
            self.set_http_request_header(VARIANT_HEADER, Some(VARIANT));
            Action::Continue
        }
    }
}

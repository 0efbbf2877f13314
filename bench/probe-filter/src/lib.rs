//! A proxy-wasm HTTP filter that performs exactly ONE kind of host call per request, named by its
//! plugin configuration, and nothing else. Built with the same SDK (proxy-wasm 0.2.5) and the same
//! `wasm-release` profile as meshcanary's filter. `make bench` runs it on the routes of
//! configuration (c) once per [`Operation`] under callgrind: the "host-call cost ladder", what each
//! kind of call the meshcanary filter makes costs Envoy per request, next to the probe doing
//! nothing ([`Operation::None`]).
//!
//! The plugin configuration is a plain string, one of [`Operation::ALL`]'s [`Operation::name`]s;
//! anything else makes `on_configure` return false (Envoy then refuses the configuration). The probe
//! never panics: a failed host call is ignored (the call was made, which is what is measured).
//!
//! Build: `cargo build -p meshcanary-probe-filter --target wasm32-wasip1 --profile wasm-release`.
//! On the host only [`Operation`] is compiled, so `cargo test --workspace` and clippy still build it.

/// The one thing the probe does on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Nothing: the ladder's baseline (the cost of a wasm filter with a root context).
    None,
    /// `proxy_get_header_map_value` of `:authority` in `on_http_request_headers`.
    ReadHeader,
    /// `proxy_get_header_map_pairs` of the request headers (the SDK's owned pairs) in
    /// `on_http_request_headers`.
    ReadAllHeaders,
    /// `proxy_get_header_map_value` of the response's `:status` in `on_http_response_headers`.
    ReadStatus,
    /// `proxy_get_property` of `response.code` in `on_log`.
    ReadProperty,
    /// `proxy_replace_header_map_value`: `x-meshcanary-variant: v1` in `on_http_request_headers`.
    WriteHeader,
    /// `proxy_increment_metric` on a counter defined in `on_configure`, in `on_log`.
    Counter,
    /// `proxy_record_metric` on a histogram defined in `on_configure`, in `on_log`.
    Histogram,
    /// `proxy_get_current_time_nanoseconds` in `on_log`.
    Clock,
}

impl Operation {
    /// Every operation, the baseline first.
    pub const ALL: [Operation; 9] = [
        Operation::None,
        Operation::ReadHeader,
        Operation::ReadAllHeaders,
        Operation::ReadStatus,
        Operation::ReadProperty,
        Operation::WriteHeader,
        Operation::Counter,
        Operation::Histogram,
        Operation::Clock,
    ];

    /// The plugin configuration that selects it.
    pub fn name(self) -> &'static str {
        match self {
            Operation::None => "none",
            Operation::ReadHeader => "read-header",
            Operation::ReadAllHeaders => "read-all-headers",
            Operation::ReadStatus => "read-status",
            Operation::ReadProperty => "read-property",
            Operation::WriteHeader => "write-header",
            Operation::Counter => "counter",
            Operation::Histogram => "histogram",
            Operation::Clock => "clock",
        }
    }

    /// What it is, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Operation::None => "nothing (the baseline)",
            Operation::ReadHeader => "read one request header (`:authority`)",
            Operation::ReadAllHeaders => "read all request headers (owned pairs)",
            Operation::ReadStatus => "read the response's `:status` header",
            Operation::ReadProperty => "read the `response.code` property in `on_log`",
            Operation::WriteHeader => "write one request header (`x-meshcanary-variant: v1`)",
            Operation::Counter => "increment a counter in `on_log`",
            Operation::Histogram => "record a histogram value in `on_log`",
            Operation::Clock => "read the clock in `on_log`",
        }
    }

    /// The operation a plugin configuration names (surrounding whitespace ignored); `None` for
    /// anything else.
    pub fn parse(config: &[u8]) -> Option<Operation> {
        let text = std::str::from_utf8(config).ok()?.trim();
        Operation::ALL
            .into_iter()
            .find(|operation| operation.name() == text)
    }
}

#[cfg(target_arch = "wasm32")]
mod filter {
    use super::Operation;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
    use std::hint::black_box;

    /// The header [`Operation::WriteHeader`] writes (what the routes of (c) match on).
    const VARIANT_HEADER: &str = "x-meshcanary-variant";
    /// Its value: the stable variant.
    const VARIANT: &str = "v1";
    /// The counter of [`Operation::Counter`] (Envoy names it `wasmcustom.meshcanary_probe_requests`).
    const COUNTER: &str = "meshcanary_probe_requests";
    /// The histogram of [`Operation::Histogram`].
    const HISTOGRAM: &str = "meshcanary_probe_values";

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
            Box::new(Probe { operation: None, metric: 0 })
        });
    }}

    /// The plugin: which operation, and the metric it uses (if any).
    struct Probe {
        /// Set by `on_configure`; `None` until then.
        operation: Option<Operation>,
        /// The id of the counter or histogram defined in `on_configure`.
        metric: u32,
    }

    impl Context for Probe {}

    impl RootContext for Probe {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            let config = hostcalls::get_buffer(
                proxy_wasm::types::BufferType::PluginConfiguration,
                0,
                usize::MAX,
            )
            .ok()
            .flatten()
            .unwrap_or_default();
            let Some(operation) = Operation::parse(&config) else {
                return false;
            };
            let metric = match operation {
                Operation::Counter => hostcalls::define_metric(MetricType::Counter, COUNTER),
                Operation::Histogram => hostcalls::define_metric(MetricType::Histogram, HISTOGRAM),
                _ => Ok(0),
            };
            match metric {
                Ok(id) => {
                    self.operation = Some(operation);
                    self.metric = id;
                    true
                }
                Err(_) => false,
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Request {
                operation: self.operation.unwrap_or(Operation::None),
                metric: self.metric,
                sink: 0,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    /// One per request: performs the operation in its callback.
    struct Request {
        operation: Operation,
        metric: u32,
        /// The lengths of what was read, so that nothing read is thrown away unseen.
        sink: usize,
    }

    impl Context for Request {}

    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            match self.operation {
                Operation::ReadHeader => {
                    if let Ok(Some(value)) =
                        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority")
                    {
                        self.sink += value.len();
                    }
                }
                Operation::ReadAllHeaders => {
                    if let Ok(pairs) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
                        self.sink += pairs.len();
                    }
                }
                Operation::WriteHeader => {
                    // proxy_replace_header_map_value, as set_http_request_header (without its unwrap).
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        VARIANT_HEADER,
                        Some(VARIANT),
                    );
                }
                _ => {}
            }
            Action::Continue
        }

        fn on_http_response_headers(
            &mut self,
            _num_headers: usize,
            _end_of_stream: bool,
        ) -> Action {
            if self.operation == Operation::ReadStatus {
                if let Ok(Some(value)) =
                    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                {
                    self.sink += value.len();
                }
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            match self.operation {
                Operation::ReadProperty => {
                    if let Ok(Some(value)) = hostcalls::get_property(vec!["response", "code"]) {
                        self.sink += value.len();
                    }
                }
                Operation::Counter => {
                    let _ = hostcalls::increment_metric(self.metric, 1);
                }
                Operation::Histogram => {
                    let _ = hostcalls::record_metric(self.metric, 1);
                }
                Operation::Clock => {
                    if let Ok(time) = hostcalls::get_current_time() {
                        black_box(time);
                    }
                }
                _ => {}
            }
            black_box(self.sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_name_one_operation() {
        let cases: [(&[u8], Option<Operation>); 13] = [
            (b"none", Some(Operation::None)),
            (b"read-header", Some(Operation::ReadHeader)),
            (b"read-all-headers", Some(Operation::ReadAllHeaders)),
            (b"read-status", Some(Operation::ReadStatus)),
            (b"read-property", Some(Operation::ReadProperty)),
            (b"write-header", Some(Operation::WriteHeader)),
            (b"counter", Some(Operation::Counter)),
            (b"histogram", Some(Operation::Histogram)),
            (b" clock\n", Some(Operation::Clock)),
            (b"", None),
            (b"Clock", None),
            (b"read-header,clock", None),
            (b"\xff", None),
        ];
        for (config, expected) in cases {
            assert_eq!(Operation::parse(config), expected, "{config:?}");
        }
    }

    #[test]
    fn every_name_parses_back() {
        for operation in Operation::ALL {
            assert_eq!(
                Operation::parse(operation.name().as_bytes()),
                Some(operation)
            );
        }
    }
}

//! meshcanary's proxy-wasm HTTP filter, built for `wasm32-wasip1` and loaded by Envoy (a standalone
//! Envoy through ECDS, or an Istio sidecar through a WasmPlugin).
//!
//! For every request it asks `meshcanary-core` which route and variant the request belongs to,
//! writes the variant into the request header that the route config matches on, and records the
//! per-variant stats when the stream ends (`on_log`, which also runs for resets and local replies).
//! All decisions live in the core crate; this crate only moves bytes between Envoy and it. Nothing
//! here may fail a request: when anything goes wrong the request passes through to the stable route.
//! Host calls go through [`host`], which handles every status the host answers; the SDK is used
//! for its entry points and context dispatch only. The built module exports only the entry points
//! listed in `exports.txt` (Envoy skips a callback a module does not export, and an exported no-op
//! still costs a call into the VM per request): a callback implemented here must be listed there.

mod host;
mod random;

use meshcanary_core::choose::{choose, mirror, Decision, Inputs, MIRROR_HEADER};
use meshcanary_core::config::{CheckedConfig, DEFAULT_VARIANT_HEADER};
use meshcanary_core::header_map::HeaderPairs;
use meshcanary_core::request::RequestView;
use meshcanary_core::stats::{
    is_grpc, status_code, FilterMetrics, GrpcOutcome, GrpcStatus, MetricKind, MetricSink, Outcome,
    RouteMetrics,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::rc::Rc;

/// The module's entry point (`_initialize`), in its own module so it needs no public docs.
mod entry {
    use super::{FilterRoot, LogLevel, RootContext};

    proxy_wasm::main! {{
        // Also installs a panic hook that logs at critical before the VM aborts.
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FilterRoot::default()) });
    }}
}

/// Envoy's metric host calls.
struct HostMetrics;

impl MetricSink for HostMetrics {
    type Id = u32;

    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        host::define_metric(kind, name)
    }

    fn increment(&mut self, id: u32) {
        host::increment_metric(id);
    }

    fn record(&mut self, id: u32, value: u64) {
        host::record_metric(id, value);
    }
}

/// A config in force, with the handles of its stats. Shared by the HTTP contexts created while it
/// is current; a request keeps the config it started with even if a new one arrives meanwhile.
struct Active {
    config: CheckedConfig,
    metrics: RouteMetrics<u32>,
    unmatched: u32,
}

/// One per plugin configuration: Envoy creates a new root context for every config it receives.
#[derive(Default)]
struct FilterRoot {
    filter_metrics: Option<FilterMetrics<u32>>,
    active: Option<Rc<Active>>,
}

impl FilterRoot {
    fn apply(&mut self, bytes: &[u8]) -> Result<u64, String> {
        let config = CheckedConfig::from_json(bytes).map_err(|error| error.to_string())?;
        let filter_metrics = self
            .filter_metrics
            .clone()
            .ok_or("the proxy refused to define the filter's stats")?;
        let metrics = RouteMetrics::define(&mut HostMetrics, &config)
            .ok_or("the proxy refused to define the routes' stats")?;
        let generation = config.generation;
        HostMetrics.record(filter_metrics.generation, generation);
        self.active = Some(Rc::new(Active {
            config,
            metrics,
            unmatched: filter_metrics.unmatched,
        }));
        Ok(generation)
    }
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        if self.filter_metrics.is_none() {
            self.filter_metrics = FilterMetrics::define(&mut HostMetrics);
        }
        let bytes = host::plugin_configuration().unwrap_or_default();
        match self.apply(&bytes) {
            Ok(generation) => {
                log(
                    LogLevel::Info,
                    &format!("applied config generation {generation}"),
                );
                true
            }
            Err(reason) => {
                // Returning false makes Envoy reject the update and keep serving the previous config.
                log(LogLevel::Warn, &format!("rejected config: {reason}"));
                if let Some(metrics) = &self.filter_metrics {
                    HostMetrics.increment(metrics.rejected);
                }
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FilterStream {
            active: self.active.clone(),
            decision: None,
            started_ns: None,
            status: None,
            grpc: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request.
struct FilterStream {
    active: Option<Rc<Active>>,
    decision: Option<Decision>,
    started_ns: Option<u64>,
    /// The status of the response headers sent downstream; none if the stream ended before them.
    status: Option<u64>,
    /// For a decided gRPC call, its `grpc-status` once seen (response headers or trailers).
    grpc: Option<GrpcOutcome>,
}

/// Reads `grpc-status` from `map` for a gRPC call that has none yet: a host call made only for
/// gRPC calls, so plain HTTP requests pay nothing for it.
fn read_grpc_status(grpc: &mut Option<GrpcOutcome>, map: MapType) {
    if let Some(grpc) = grpc.as_mut().filter(|grpc| grpc.status.is_none()) {
        grpc.status = host::header(map, "grpc-status").map(|value| GrpcStatus::parse(&value));
    }
}

/// The decision's randomness (a per-worker generator seeded from WASI) and the host's clock.
struct HostInputs {
    now_ns: Option<u64>,
}

impl Inputs for HostInputs {
    fn random_bucket(&mut self) -> Option<u32> {
        random::bucket()
    }

    fn visitor_bits(&mut self) -> Option<u128> {
        random::visitor_bits()
    }

    fn now_unix(&self) -> Option<u64> {
        self.now_ns.map(|ns| ns / 1_000_000_000)
    }
}

/// Writes to Envoy's log (`wasm log <root_id>: meshcanary: …`).
fn log(level: LogLevel, message: &str) {
    host::log(level, &format!("meshcanary: {message}"));
}

/// Sets (or, for `None`, removes) a request header; a refused write leaves the request as it is.
fn set_request_header(name: &str, value: Option<&str>) {
    host::set_header(MapType::HttpRequestHeaders, name, value.map(str::as_bytes));
}

impl Context for FilterStream {}

impl HttpContext for FilterStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            // No config was ever accepted: still never let a client choose its variant, nor
            // have its request copied.
            set_request_header(DEFAULT_VARIANT_HEADER, None);
            set_request_header(MIRROR_HEADER, None);
            return Action::Continue;
        };
        let config = &active.config;
        // All headers in one host call: each call that returns data costs a round trip into the VM.
        let headers = host::request_header_pairs().unwrap_or_default();
        let request = HeaderPairs::new(&headers);
        // The clock is read once, before the decision: it starts the request's duration and
        // tells the decision the time (signed QA tokens expire).
        self.started_ns = host::now_ns();
        let mut inputs = HostInputs {
            now_ns: self.started_ns,
        };
        let decision = choose(config, &request, &mut inputs);
        if decision.is_some() && request.header("content-type").is_some_and(is_grpc) {
            self.grpc = Some(GrpcOutcome::default());
        }
        let variant = decision.and_then(|d| {
            let route = config.routes.get(d.route)?;
            Some((route, route.variants.get(d.variant)?))
        });
        let mut copy_to = None;
        match (variant, decision) {
            (Some((route, variant)), Some(decision)) if !route.dry_run => {
                // Replaces any value the client sent, and (ABI 0.2.1) clears the route cache so
                // routes matching this header see the new value.
                set_request_header(&config.variant_header, Some(variant));
                copy_to = mirror(route, &decision, &mut inputs).and_then(|to| {
                    active
                        .metrics
                        .record_mirror(&mut HostMetrics, decision.route, to);
                    route.variants.get(to)
                });
            }
            _ => set_request_header(&config.variant_header, None),
        }
        // Written only on the requests picked for a copy, and removed from every other one: a
        // client's own value never reaches the proxy's mirror policy.
        set_request_header(MIRROR_HEADER, copy_to.map(String::as_str));
        if decision.is_none() {
            HostMetrics.increment(active.unmatched);
        }
        self.decision = decision;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(active), Some(decision)) = (&self.active, &self.decision) {
            // Read here rather than as the `response.code` property in `on_log`: a header read is
            // the cheaper host call (BENCHMARKS.md), and a stream reset before its response headers
            // never gets here, so it keeps no status and counts as `reset`.
            self.status = host::header(MapType::HttpResponseHeaders, ":status")
                .and_then(|value| status_code(&value));
            // A trailers-only gRPC response (an error, or Envoy's own reply) has its status here.
            read_grpc_status(&mut self.grpc, MapType::HttpResponseHeaders);
            // A new visitor gets the cookie that keeps it on its variant. Added, not replaced:
            // the upstream may set cookies of its own.
            let assign = active
                .config
                .routes
                .get(decision.route)
                .and_then(|route| route.sticky.as_ref()?.assign.as_ref());
            if let (Some(visitor), Some(assign)) = (&decision.visitor, assign) {
                let set_cookie = assign.set_cookie(visitor.as_str());
                host::add_header(
                    MapType::HttpResponseHeaders,
                    "set-cookie",
                    set_cookie.as_bytes(),
                );
            }
            if let Some(header) = &active.config.response_header {
                let variant = active
                    .config
                    .routes
                    .get(decision.route)
                    .and_then(|route| route.variants.get(decision.variant));
                if let Some(variant) = variant {
                    let value = format!("{variant}; reason={}", decision.reason.as_str());
                    host::set_header(MapType::HttpResponseHeaders, header, Some(value.as_bytes()));
                }
            }
        }
        Action::Continue
    }

    /// Called only for responses that have trailers (Envoy skips the callback otherwise): a gRPC
    /// call's status comes here, once, at the end of the stream, however many messages it carried.
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        read_grpc_status(&mut self.grpc, MapType::HttpResponseTrailers);
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(active), Some(decision)) = (&self.active, &self.decision) else {
            return;
        };
        let duration_ms = match (self.started_ns, host::now_ns()) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start) / 1_000_000),
            _ => None,
        };
        active.metrics.record(
            &mut HostMetrics,
            decision,
            &Outcome {
                status: self.status,
                grpc: self.grpc,
                duration_ms,
            },
        );
    }
}

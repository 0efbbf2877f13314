//! The filter's Envoy stats: their names, labels, and what one request records.
//!
//! Labels travel inside the stat name in Istio's tag convention, `<tag>=.=<value>;.;`, so a counter
//! defined as `route=.=reviews;.;variant=.=v2;.;meshcanary_requests_total` is exported by
//! `/stats/prometheus` as `meshcanary_requests_total{route="reviews",variant="v2"}` once tag
//! extraction knows the tags (Istio: `extraStatTags`; standalone Envoy: `stats_tags`, see
//! `envoy-config/`). Route and variant names are validated to be safe inside such names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `meshcanary_requests_total` | counter | route, variant |
//! | `meshcanary_responses_total` | counter | route, variant, class (`1xx`…`5xx`, `reset`, `grpc_ok`, `grpc_client_error`, `grpc_server_error`) |
//! | `meshcanary_decisions_total` | counter | route, variant, reason (`rule`, `sticky`, `request_id`, `random`, `fallback`, `assigned`) |
//! | `meshcanary_request_duration_ms` | histogram | route, variant |
//! | `meshcanary_config_generation` | gauge | — |
//! | `meshcanary_config_rejected_total` | counter | — |
//! | `meshcanary_unmatched_total` | counter | — |
//! | `meshcanary_qa_tokens_rejected_total` | counter | route, reason (`malformed`, `unknown_key`, `bad_signature`, `expired`, `unknown_variant`) |
//! | `meshcanary_mirrored_total` | counter | route, variant (the one receiving the copies) |

use crate::choose::{Decision, Reason};
use crate::config::{CheckedConfig, ValueMatch};
use crate::token::Rejection;

/// Every tag the filter puts into stat names, for the proxy's tag extraction config.
pub const TAGS: [&str; 4] = ["route", "variant", "class", "reason"];

/// Requests decided, per route and variant.
pub const REQUESTS: &str = "meshcanary_requests_total";
/// Completed requests by response class, per route and variant.
pub const RESPONSES: &str = "meshcanary_responses_total";
/// Decisions by reason, per route and variant.
pub const DECISIONS: &str = "meshcanary_decisions_total";
/// Request duration in milliseconds (first request byte to stream end), per route and variant.
pub const DURATION_MS: &str = "meshcanary_request_duration_ms";
/// The `generation` of the config in force.
pub const GENERATION: &str = "meshcanary_config_generation";
/// Configs the filter refused (Envoy then keeps the previous one).
pub const REJECTED: &str = "meshcanary_config_rejected_total";
/// Requests that matched no route and passed through.
pub const UNMATCHED: &str = "meshcanary_unmatched_total";
/// Signed QA tokens refused, per route and reason ([`Rejection`]); defined for routes with a
/// signed rule.
pub const TOKENS_REJECTED: &str = "meshcanary_qa_tokens_rejected_total";

/// Requests the filter asked the proxy to copy to a mirror variant, per route and that variant;
/// defined for routes with `mirror`. The copies' responses are the proxy's to count (the
/// standalone bootstrap's `<route>-<variant>-mirror` clusters).
pub const MIRRORED: &str = "meshcanary_mirrored_total";

/// How a request ended, the `class` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// 1xx as the final status (protocol upgrades).
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirect,
    /// 4xx.
    ClientError,
    /// 5xx, including Envoy's own 503 when the upstream resets or cannot be reached.
    ServerError,
    /// No response was sent: the stream was reset first. For gRPC, also a call that ended
    /// without a `grpc-status` (reset mid-stream, or cut off before its trailers).
    Reset,
    /// A gRPC call that ended with `grpc-status: 0` (OK).
    GrpcOk,
    /// A gRPC call that failed for a reason the caller owns (see [`grpc_server_failure`]), like a
    /// 4xx: `CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
    /// `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `UNAUTHENTICATED`.
    GrpcClientError,
    /// A gRPC call that the server failed, like a 5xx: `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, and codes gRPC does not define.
    GrpcServerError,
}

/// Whether a `grpc-status` code means the server failed the call (so the call counts against the
/// variant's success rate, like a 5xx), rather than the caller.
///
/// Server failures: `UNKNOWN` (2: an exception the server did not map), `DEADLINE_EXCEEDED` (4: too
/// slow, which a canary that got slower causes), `UNIMPLEMENTED` (12: a method the canary dropped),
/// `INTERNAL` (13), `UNAVAILABLE` (14: also what Envoy answers when no upstream is reachable),
/// `DATA_LOSS` (15), and any code above 16 (clients read them as `UNKNOWN`). The others say
/// something about the request or the caller — `CANCELLED` (1) by the caller, bad arguments,
/// missing or existing entities, permissions, quota (`RESOURCE_EXHAUSTED`, 8, like HTTP 429),
/// preconditions, `ABORTED` (10) concurrency conflicts, ranges, authentication — and count as
/// successes, as 4xx do.
pub fn grpc_server_failure(code: u64) -> bool {
    matches!(code, 2 | 4 | 12..=15) || code > 16
}

/// Whether a request is a gRPC call: its `content-type` is `application/grpc`, alone or followed
/// by `+format` or parameters (gRPC over HTTP/2; `application/grpc-web` is a different protocol,
/// whose status travels in the body, and is classified by its HTTP status).
pub fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(rest) = content_type
        .get(..GRPC.len())
        .filter(|head| head.eq_ignore_ascii_case(GRPC))
        .and_then(|_| content_type.get(GRPC.len()..))
    else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';'))
}

/// The code in a `grpc-status` value: decimal digits; anything else (empty, signs, spaces, too
/// long) is `None`, which a gRPC client reads as an unknown status.
pub fn grpc_status_code(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0, |code, digit| code * 10 + u64::from(digit - b'0')),
    )
}

impl ResponseClass {
    /// Every class, in stat order.
    pub const ALL: [ResponseClass; 9] = [
        ResponseClass::Informational,
        ResponseClass::Success,
        ResponseClass::Redirect,
        ResponseClass::ClientError,
        ResponseClass::ServerError,
        ResponseClass::Reset,
        ResponseClass::GrpcOk,
        ResponseClass::GrpcClientError,
        ResponseClass::GrpcServerError,
    ];

    /// The class of a final status code; `None` or 0 means no response was sent.
    pub fn of(status: Option<u64>) -> Self {
        match status.unwrap_or(0) {
            0..=99 => ResponseClass::Reset,
            100..=199 => ResponseClass::Informational,
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirect,
            400..=499 => ResponseClass::ClientError,
            _ => ResponseClass::ServerError,
        }
    }

    /// The class of a completed request: by [`ResponseClass::of`], unless it was a gRPC call that
    /// got a response. A gRPC call answers HTTP 200 and fails in `grpc-status`, so it is classed by
    /// that code (from the trailers, or from the headers of a trailers-only response); a call
    /// answered 200 that ended without one was cut off, and counts as [`ResponseClass::Reset`].
    /// A gRPC request answered with another HTTP status and no `grpc-status` (a proxy that does
    /// not speak gRPC) is classed by the HTTP status. Envoy's own replies to gRPC requests (no
    /// upstream, timeouts) are gRPC responses with a `grpc-status`.
    pub fn of_outcome(outcome: &Outcome) -> Self {
        let Some(grpc) = outcome.grpc else {
            return Self::of(outcome.status);
        };
        let answered = outcome.status.is_some_and(|status| status >= 100);
        match grpc.status {
            _ if !answered => ResponseClass::Reset,
            Some(GrpcStatus::Code(0)) => ResponseClass::GrpcOk,
            Some(GrpcStatus::Code(code)) if !grpc_server_failure(code) => {
                ResponseClass::GrpcClientError
            }
            Some(_) => ResponseClass::GrpcServerError,
            None if outcome.status == Some(200) => ResponseClass::Reset,
            None => Self::of(outcome.status),
        }
    }

    /// Whether requests of this class failed, for a variant's success rate: 5xx, resets and gRPC
    /// server failures. 4xx and gRPC client errors are the caller's business.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ResponseClass::ServerError | ResponseClass::Reset | ResponseClass::GrpcServerError
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Informational => "1xx",
            ResponseClass::Success => "2xx",
            ResponseClass::Redirect => "3xx",
            ResponseClass::ClientError => "4xx",
            ResponseClass::ServerError => "5xx",
            ResponseClass::Reset => "reset",
            ResponseClass::GrpcOk => "grpc_ok",
            ResponseClass::GrpcClientError => "grpc_client_error",
            ResponseClass::GrpcServerError => "grpc_server_error",
        }
    }

    /// Position in [`ResponseClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The stat name carrying `labels` in Istio's tag convention.
pub fn tagged_name(labels: &[(&str, &str)], metric: &str) -> String {
    let mut name = String::with_capacity(metric.len() + 32 * labels.len());
    for (tag, value) in labels {
        name.push_str(tag);
        name.push_str("=.=");
        name.push_str(value);
        name.push_str(";.;");
    }
    name.push_str(metric);
    name
}

/// The kind of a stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set to a value.
    Gauge,
    /// Records a distribution.
    Histogram,
}

/// Where stats go: Envoy's metric host calls in the filter, a recording fake in tests.
pub trait MetricSink {
    /// Handle of a defined metric.
    type Id: Copy;
    /// Defines (or finds) the metric called `name`; `None` if the host refuses.
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<Self::Id>;
    /// Adds one to a counter.
    fn increment(&mut self, id: Self::Id);
    /// Sets a gauge or records a histogram value.
    fn record(&mut self, id: Self::Id, value: u64);
}

/// The handles of one route variant's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantMetrics<Id> {
    /// `meshcanary_requests_total`.
    pub requests: Id,
    /// `meshcanary_responses_total`, indexed by [`ResponseClass::index`].
    pub responses: [Id; 9],
    /// `meshcanary_decisions_total`, indexed by [`Reason::index`].
    pub decisions: [Id; 6],
    /// `meshcanary_request_duration_ms`.
    pub duration_ms: Id,
    /// `meshcanary_mirrored_total`, for the route's mirror variant only.
    pub mirrored: Option<Id>,
}

/// Stats that do not depend on the config: defined once per root context, before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterMetrics<Id> {
    /// `meshcanary_config_generation`.
    pub generation: Id,
    /// `meshcanary_config_rejected_total`.
    pub rejected: Id,
    /// `meshcanary_unmatched_total`.
    pub unmatched: Id,
}

impl<Id: Copy> FilterMetrics<Id> {
    /// Defines the filter-wide stats.
    pub fn define(sink: &mut impl MetricSink<Id = Id>) -> Option<Self> {
        Some(Self {
            generation: sink.define(MetricKind::Gauge, GENERATION)?,
            rejected: sink.define(MetricKind::Counter, REJECTED)?,
            unmatched: sink.define(MetricKind::Counter, UNMATCHED)?,
        })
    }
}

/// Handles for every route and variant of a config: `[route][variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMetrics<Id> {
    variants: Vec<Vec<VariantMetrics<Id>>>,
    /// Per route with a signed rule: `meshcanary_qa_tokens_rejected_total` by
    /// [`Rejection::index`].
    token_rejections: Vec<Option<[Id; 5]>>,
}

/// The status code in a `:status` header value: three ASCII digits, else `None` (no status the
/// proxy would send downstream, so no response to classify).
pub fn status_code(value: &[u8]) -> Option<u64> {
    match value {
        [a, b, c] if value.iter().all(u8::is_ascii_digit) => {
            Some(u64::from(a - b'0') * 100 + u64::from(b - b'0') * 10 + u64::from(c - b'0'))
        }
        _ => None,
    }
}

/// What is known about a request once it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The final status code sent downstream, if any.
    pub status: Option<u64>,
    /// For a gRPC call ([`is_grpc`]), what it ended with; `None` for any other request.
    pub grpc: Option<GrpcOutcome>,
    /// Milliseconds from the request headers to the end of the stream, if the clock was readable.
    pub duration_ms: Option<u64>,
}

/// How a gRPC call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcOutcome {
    /// The `grpc-status` seen in the response headers or trailers; `None` if the stream ended
    /// without one.
    pub status: Option<GrpcStatus>,
}

/// A `grpc-status` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatus {
    /// A decimal code.
    Code(u64),
    /// A value that is not one ([`grpc_status_code`]); clients read it as `UNKNOWN`.
    Malformed,
}

impl GrpcStatus {
    /// The status a `grpc-status` header value carries.
    pub fn parse(value: &[u8]) -> GrpcStatus {
        grpc_status_code(value).map_or(GrpcStatus::Malformed, GrpcStatus::Code)
    }
}

impl<Id: Copy> RouteMetrics<Id> {
    /// Defines every stat for every route and variant of `config`, so all series exist (at zero)
    /// from the moment the config is applied.
    pub fn define(sink: &mut impl MetricSink<Id = Id>, config: &CheckedConfig) -> Option<Self> {
        let mut variants = Vec::with_capacity(config.routes.len());
        let mut token_rejections = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let signed = route
                .rules
                .iter()
                .any(|rule| matches!(rule.matcher, ValueMatch::Token(_)));
            token_rejections.push(if signed {
                let mut ids = Vec::with_capacity(Rejection::ALL.len());
                for rejection in Rejection::ALL {
                    let labels = [
                        ("route", route.name.as_str()),
                        ("reason", rejection.as_str()),
                    ];
                    ids.push(
                        sink.define(MetricKind::Counter, &tagged_name(&labels, TOKENS_REJECTED))?,
                    );
                }
                ids.try_into().ok()
            } else {
                None
            });
            let mut per_route = Vec::with_capacity(route.variants.len());
            for (index, variant) in route.variants.iter().enumerate() {
                let labels = [
                    ("route", route.name.as_str()),
                    ("variant", variant.as_str()),
                ];
                let mut define = |kind, extra: Option<(&str, &str)>, metric| {
                    let mut all = labels.to_vec();
                    all.extend(extra);
                    sink.define(kind, &tagged_name(&all, metric))
                };
                let requests = define(MetricKind::Counter, None, REQUESTS)?;
                let duration_ms = define(MetricKind::Histogram, None, DURATION_MS)?;
                let mut responses = [requests; ResponseClass::ALL.len()];
                for (slot, class) in responses.iter_mut().zip(ResponseClass::ALL) {
                    *slot = define(
                        MetricKind::Counter,
                        Some(("class", class.as_str())),
                        RESPONSES,
                    )?;
                }
                let mut decisions = [requests; Reason::ALL.len()];
                for (slot, reason) in decisions.iter_mut().zip(Reason::ALL) {
                    *slot = define(
                        MetricKind::Counter,
                        Some(("reason", reason.as_str())),
                        DECISIONS,
                    )?;
                }
                let mirrored = match route.mirror {
                    Some(mirror) if mirror.to == index => {
                        Some(define(MetricKind::Counter, None, MIRRORED)?)
                    }
                    _ => None,
                };
                per_route.push(VariantMetrics {
                    requests,
                    responses,
                    decisions,
                    duration_ms,
                    mirrored,
                });
            }
            variants.push(per_route);
        }
        Some(Self {
            variants,
            token_rejections,
        })
    }

    /// Records that a request on route `route` was copied to its variant `to` (the route's
    /// mirror variant; any other records nothing).
    pub fn record_mirror(&self, sink: &mut impl MetricSink<Id = Id>, route: usize, to: usize) {
        let metrics = self.variants.get(route).and_then(|route| route.get(to));
        if let Some(id) = metrics.and_then(|metrics| metrics.mirrored) {
            sink.increment(id);
        }
    }

    /// Records one completed request. Unknown indices (which a decision from the same config never
    /// has) record nothing.
    pub fn record(
        &self,
        sink: &mut impl MetricSink<Id = Id>,
        decision: &Decision,
        outcome: &Outcome,
    ) {
        let Some(metrics) = self
            .variants
            .get(decision.route)
            .and_then(|route| route.get(decision.variant))
        else {
            return;
        };
        sink.increment(metrics.requests);
        let rejections = self
            .token_rejections
            .get(decision.route)
            .and_then(Option::as_ref);
        if let (Some(ids), Some(rejection)) = (rejections, decision.token_rejection) {
            if let Some(id) = ids.get(rejection.index()) {
                sink.increment(*id);
            }
        }
        if let Some(id) = metrics.decisions.get(decision.reason.index()) {
            sink.increment(*id);
        }
        if let Some(id) = metrics
            .responses
            .get(ResponseClass::of_outcome(outcome).index())
        {
            sink.increment(*id);
        }
        if let Some(ms) = outcome.duration_ms {
            sink.record(metrics.duration_ms, ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Keeps every metric by name with its value (histograms: the recorded values).
    #[derive(Default)]
    struct RecordingSink {
        names: Vec<(MetricKind, String)>,
        counters: HashMap<usize, u64>,
        recorded: HashMap<usize, Vec<u64>>,
    }

    impl RecordingSink {
        fn id(&self, name: &str) -> usize {
            self.names.iter().position(|(_, n)| n == name).unwrap()
        }
        fn counter(&self, name: &str) -> u64 {
            self.counters.get(&self.id(name)).copied().unwrap_or(0)
        }
    }

    impl MetricSink for RecordingSink {
        type Id = usize;
        fn define(&mut self, kind: MetricKind, name: &str) -> Option<usize> {
            if let Some(id) = self.names.iter().position(|(_, n)| n == name) {
                return Some(id);
            }
            self.names.push((kind, name.to_string()));
            Some(self.names.len() - 1)
        }
        fn increment(&mut self, id: usize) {
            *self.counters.entry(id).or_default() += 1;
        }
        fn record(&mut self, id: usize, value: u64) {
            self.recorded.entry(id).or_default().push(value);
        }
    }

    fn config() -> CheckedConfig {
        CheckedConfig::from_json(
            br#"{"routes": [{"name": "reviews", "hosts": ["*"], "variants": [{"name": "v1", "weight": 5000}, {"name": "v2", "weight": 5000}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn names_follow_the_istio_tag_convention() {
        assert_eq!(
            tagged_name(&[("route", "reviews"), ("variant", "v2")], REQUESTS),
            "route=.=reviews;.;variant=.=v2;.;meshcanary_requests_total"
        );
        assert_eq!(tagged_name(&[], GENERATION), "meshcanary_config_generation");
    }

    #[test]
    fn classes_of_status_codes() {
        let cases = [
            (None, "reset"),
            (Some(0), "reset"),
            (Some(101), "1xx"),
            (Some(200), "2xx"),
            (Some(204), "2xx"),
            (Some(302), "3xx"),
            (Some(404), "4xx"),
            (Some(500), "5xx"),
            (Some(503), "5xx"),
            (Some(999), "5xx"),
        ];
        for (status, class) in cases {
            assert_eq!(ResponseClass::of(status).as_str(), class, "{status:?}");
        }
    }

    #[test]
    fn grpc_calls_are_classed_by_grpc_status() {
        let grpc = |status: Option<u64>, grpc_status: Option<&str>| Outcome {
            status,
            grpc: Some(GrpcOutcome {
                status: grpc_status.map(|value| GrpcStatus::parse(value.as_bytes())),
            }),
            duration_ms: None,
        };
        let cases: &[(&str, Outcome, &str, bool)] = &[
            ("OK", grpc(Some(200), Some("0")), "grpc_ok", false),
            (
                "CANCELLED",
                grpc(Some(200), Some("1")),
                "grpc_client_error",
                false,
            ),
            (
                "UNKNOWN",
                grpc(Some(200), Some("2")),
                "grpc_server_error",
                true,
            ),
            (
                "INVALID_ARGUMENT",
                grpc(Some(200), Some("3")),
                "grpc_client_error",
                false,
            ),
            (
                "DEADLINE_EXCEEDED",
                grpc(Some(200), Some("4")),
                "grpc_server_error",
                true,
            ),
            (
                "NOT_FOUND",
                grpc(Some(200), Some("5")),
                "grpc_client_error",
                false,
            ),
            (
                "ALREADY_EXISTS",
                grpc(Some(200), Some("6")),
                "grpc_client_error",
                false,
            ),
            (
                "PERMISSION_DENIED",
                grpc(Some(200), Some("7")),
                "grpc_client_error",
                false,
            ),
            (
                "RESOURCE_EXHAUSTED",
                grpc(Some(200), Some("8")),
                "grpc_client_error",
                false,
            ),
            (
                "FAILED_PRECONDITION",
                grpc(Some(200), Some("9")),
                "grpc_client_error",
                false,
            ),
            (
                "ABORTED",
                grpc(Some(200), Some("10")),
                "grpc_client_error",
                false,
            ),
            (
                "OUT_OF_RANGE",
                grpc(Some(200), Some("11")),
                "grpc_client_error",
                false,
            ),
            (
                "UNIMPLEMENTED",
                grpc(Some(200), Some("12")),
                "grpc_server_error",
                true,
            ),
            (
                "INTERNAL",
                grpc(Some(200), Some("13")),
                "grpc_server_error",
                true,
            ),
            (
                "UNAVAILABLE",
                grpc(Some(200), Some("14")),
                "grpc_server_error",
                true,
            ),
            (
                "DATA_LOSS",
                grpc(Some(200), Some("15")),
                "grpc_server_error",
                true,
            ),
            (
                "UNAUTHENTICATED",
                grpc(Some(200), Some("16")),
                "grpc_client_error",
                false,
            ),
            (
                "undefined code",
                grpc(Some(200), Some("17")),
                "grpc_server_error",
                true,
            ),
            (
                "malformed status",
                grpc(Some(200), Some("OK")),
                "grpc_server_error",
                true,
            ),
            (
                "empty status",
                grpc(Some(200), Some("")),
                "grpc_server_error",
                true,
            ),
            (
                "no status at stream end",
                grpc(Some(200), None),
                "reset",
                true,
            ),
            ("reset before headers", grpc(None, None), "reset", true),
            (
                "status on a non-200 answer",
                grpc(Some(503), Some("0")),
                "grpc_ok",
                false,
            ),
            ("non-gRPC 503", grpc(Some(503), None), "5xx", true),
            ("non-gRPC 404", grpc(Some(404), None), "4xx", false),
            (
                "plain HTTP 200 stays 2xx",
                Outcome {
                    status: Some(200),
                    ..Outcome::default()
                },
                "2xx",
                false,
            ),
        ];
        for (name, outcome, class, failure) in cases {
            let got = ResponseClass::of_outcome(outcome);
            assert_eq!(got.as_str(), *class, "{name}");
            assert_eq!(got.is_failure(), *failure, "{name}");
        }
    }

    #[test]
    fn failures_are_5xx_resets_and_grpc_server_errors() {
        let failing: Vec<&str> = ResponseClass::ALL
            .iter()
            .filter(|class| class.is_failure())
            .map(|class| class.as_str())
            .collect();
        assert_eq!(failing, ["5xx", "reset", "grpc_server_error"]);
        for (i, class) in ResponseClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i);
        }
    }

    #[test]
    fn grpc_requests_by_content_type() {
        let cases: &[(&str, bool)] = &[
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("", false),
        ];
        for (content_type, grpc) in cases {
            assert_eq!(is_grpc(content_type.as_bytes()), *grpc, "{content_type}");
        }
        let codes: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("14", Some(14)),
            ("007", Some(7)),
            ("999999999", Some(999_999_999)),
            ("1234567890", None),
            ("-1", None),
            (" 1", None),
            ("", None),
        ];
        for (value, code) in codes {
            assert_eq!(grpc_status_code(value.as_bytes()), *code, "{value:?}");
        }
    }

    #[test]
    fn status_codes_of_status_headers() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"200", Some(200)),
            (b"101", Some(101)),
            (b"304", Some(304)),
            (b"503", Some(503)),
            (b"099", Some(99)),
            (b"20", None),
            (b"2000", None),
            (b"2x0", None),
            (b" 200", None),
            (b"", None),
        ];
        for (value, code) in cases {
            assert_eq!(
                status_code(value),
                *code,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn defines_every_series_up_front() {
        let mut sink = RecordingSink::default();
        RouteMetrics::define(&mut sink, &config()).unwrap();
        // 2 variants × (requests + histogram + 9 classes + 6 reasons).
        assert_eq!(sink.names.len(), 34);
        assert!(sink.names.contains(&(
            MetricKind::Counter,
            "route=.=reviews;.;variant=.=v2;.;class=.=reset;.;meshcanary_responses_total".into()
        )));
        assert!(sink.names.contains(&(
            MetricKind::Histogram,
            "route=.=reviews;.;variant=.=v1;.;meshcanary_request_duration_ms".into()
        )));
    }

    #[test]
    fn counts_mirrored_requests_under_the_mirror_variant() {
        let config = CheckedConfig::from_json(
            br#"{"routes": [
                {"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
                 "mirrors": [{"name": "v2", "weight": 2000}]},
                {"name": "ratings", "hosts": ["ratings"], "variants": [{"name": "v1", "weight": 10000}]}
            ]}"#,
        )
        .unwrap();
        let mut sink = RecordingSink::default();
        let metrics = RouteMetrics::define(&mut sink, &config).unwrap();
        let mirrored = tagged_name(&[("route", "reviews"), ("variant", "v2")], MIRRORED);
        let defined: Vec<&str> = sink
            .names
            .iter()
            .filter(|(_, name)| name.ends_with(MIRRORED))
            .map(|(_, name)| name.as_str())
            .collect();
        assert_eq!(
            defined,
            [mirrored.as_str()],
            "only the mirroring route has one"
        );
        assert_eq!(sink.counter(&mirrored), 0, "defined at zero");
        metrics.record_mirror(&mut sink, 0, 1);
        metrics.record_mirror(&mut sink, 0, 1);
        // Not the mirror variant, a route without mirror, or out of range: nothing.
        metrics.record_mirror(&mut sink, 0, 0);
        metrics.record_mirror(&mut sink, 1, 0);
        metrics.record_mirror(&mut sink, 7, 1);
        assert_eq!(sink.counter(&mirrored), 2);
        assert_eq!(sink.counters.values().sum::<u64>(), 2);
    }

    #[test]
    fn records_one_request_under_its_labels() {
        let mut sink = RecordingSink::default();
        let metrics = RouteMetrics::define(&mut sink, &config()).unwrap();
        let decision = Decision {
            route: 0,
            variant: 1,
            reason: Reason::Rule,
            visitor: None,
            token_rejection: None,
        };
        metrics.record(
            &mut sink,
            &decision,
            &Outcome {
                status: Some(503),
                duration_ms: Some(12),
                ..Outcome::default()
            },
        );
        metrics.record(&mut sink, &decision, &Outcome::default());
        let name = |labels: &[(&str, &str)], metric| tagged_name(labels, metric);
        let v2 = [("route", "reviews"), ("variant", "v2")];
        assert_eq!(sink.counter(&name(&v2, REQUESTS)), 2);
        assert_eq!(
            sink.counter(&name(&[v2[0], v2[1], ("class", "5xx")], RESPONSES)),
            1
        );
        assert_eq!(
            sink.counter(&name(&[v2[0], v2[1], ("class", "reset")], RESPONSES)),
            1
        );
        assert_eq!(
            sink.counter(&name(&[v2[0], v2[1], ("reason", "rule")], DECISIONS)),
            2
        );
        assert_eq!(
            sink.counter(&name(&[("route", "reviews"), ("variant", "v1")], REQUESTS)),
            0
        );
        assert_eq!(sink.recorded[&sink.id(&name(&v2, DURATION_MS))], vec![12]);
        // A decision from another config records nothing rather than panicking.
        metrics.record(
            &mut sink,
            &Decision {
                route: 5,
                variant: 0,
                reason: Reason::Rule,
                visitor: None,
                token_rejection: None,
            },
            &Outcome {
                status: Some(200),
                duration_ms: Some(1),
                ..Outcome::default()
            },
        );
        assert_eq!(sink.counters.values().sum::<u64>(), 6);
    }
}

//! What the filter counted for one route, read from a proxy's `/stats/prometheus`
//! ([`parse_envoy_stats`]), and the arithmetic that turns cumulative scrapes into one analysis
//! window: [`delta`] between two scrapes of a proxy, [`merge`] over proxies.
//!
//! # Why this parser is our own
//!
//! The Prometheus text format is simple, but a parser that silently drops or misreads a line
//! would make a canary look healthier than it is, and a rollout acts on that. The Rust crates were
//! tried against a real `/stats/prometheus` of Envoy 1.40 with the filter loaded
//! (`testdata/envoy-1.40-stats.prom` is an excerpt):
//!
//! - `prometheus-parse` 0.2.5 (the most used): its sample regex needs at least one character
//!   between braces, so every line with an empty label set — Envoy writes all unlabelled stats
//!   that way, e.g. `meshcanary_config_generation{} 3` — is dropped without an error (121 of
//!   the 1224 samples). It also skips lines whose value does not parse, returns `Ok` for a body
//!   cut off mid-line, and splits labels at every `,` and `=` without regard to quoting, so a
//!   label value containing `,`, `=` or `}` loses the series.
//! - `prom_text_format_parser` 0.1.0: rejects the text at the first `{}`.
//! - `prometheus-exposition-format-rs` 0.1.2: reads the sample correctly, but has been
//!   unmaintained since 2020 and pulls `nom` 5 and `lexical-core` 0.7, which has a RustSec
//!   soundness advisory (RUSTSEC-2023-0086).
//! - `openmetrics-parser` 0.5.1: reads the sample correctly, but is LGPL-3.0, which does not sit
//!   well in a statically linked Apache-2.0 binary.
//!
//! So this module parses the format itself, strictly where it matters: every line must be a
//! comment, blank, or start with a metric name, and each line of the filter's own families
//! (`meshcanary_requests_total`, `meshcanary_responses_total`, `meshcanary_request_duration_ms`)
//! is parsed completely — quoted label values with `\\`, `\"` and `\n` escapes, a trailing comma,
//! `+Inf`/`NaN`, decimal and exponent values of any length, an optional timestamp — and any
//! error names the line. Other families are skipped after their name, so a quirk in some Envoy
//! stat cannot block an analysis. A body that does not end in a newline was cut short and is an
//! error (the format requires the final newline), as is a series that appears twice. Counts are
//! read as exact `u64`, not through `f64`.

use super::AnalysisError;
use meshcanary_core::stats::{ResponseClass, DURATION_MS, MIRRORED, REQUESTS, RESPONSES};
use std::collections::{BTreeMap, HashSet};

/// What one variant of a route counted: cumulative since the proxy started in a scrape, or over a
/// window after [`delta`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VariantCounters {
    /// `meshcanary_requests_total`: requests the filter decided for this variant.
    pub requests: u64,
    /// `meshcanary_responses_total` by `class`: `1xx` … `5xx`, `reset`, `grpc_ok`,
    /// `grpc_client_error`, `grpc_server_error`.
    pub responses: BTreeMap<String, u64>,
    /// `meshcanary_request_duration_ms_bucket`: `(le, cumulative count)` sorted by `le`, the last
    /// one `(f64::INFINITY, …)`. Empty when the proxy exported no histogram for the variant.
    pub duration_buckets: Vec<(f64, u64)>,
    /// `meshcanary_request_duration_ms_count`: observations in the histogram.
    pub duration_count: u64,
    /// `meshcanary_request_duration_ms_sum`: their sum, in milliseconds (approximate in Envoy).
    pub duration_sum: f64,
}

impl VariantCounters {
    /// Responses of every class, resets included.
    pub fn total_responses(&self) -> u64 {
        self.responses
            .values()
            .fold(0, |total, count| total.saturating_add(*count))
    }

    /// Failed requests: 5xx responses, resets (no response sent) and gRPC calls the server
    /// failed (`grpc_server_error`), as [`ResponseClass::is_failure`] defines them.
    pub fn failures(&self) -> u64 {
        ResponseClass::ALL
            .iter()
            .filter(|class| class.is_failure())
            .map(|class| self.responses.get(class.as_str()).copied().unwrap_or(0))
            .fold(0, u64::saturating_add)
    }

    /// Responses that are not failures (1xx, 2xx, 3xx and 4xx).
    pub fn successes(&self) -> u64 {
        self.total_responses().saturating_sub(self.failures())
    }

    /// Whether any counter is below its value in `earlier`: the proxy restarted in between.
    /// A series missing now counts as 0.
    fn went_down_since(&self, earlier: &VariantCounters) -> bool {
        let class_down = earlier
            .responses
            .iter()
            .any(|(class, before)| self.responses.get(class).copied().unwrap_or(0) < *before);
        let bucket_down = earlier
            .duration_buckets
            .iter()
            .any(|(le, before)| bucket_at(&self.duration_buckets, *le).unwrap_or(0) < *before);
        self.requests < earlier.requests
            || self.duration_count < earlier.duration_count
            || class_down
            || bucket_down
    }

    /// `self − earlier`, for counters that did not go down. Keeps every series of `self`, so a
    /// quiet window has the same shape as a busy one, with zeros.
    fn minus(&self, earlier: &VariantCounters) -> VariantCounters {
        VariantCounters {
            requests: self.requests - earlier.requests,
            responses: self
                .responses
                .iter()
                .map(|(class, now)| {
                    let before = earlier.responses.get(class).copied().unwrap_or(0);
                    (class.clone(), now - before)
                })
                .collect(),
            duration_buckets: self
                .duration_buckets
                .iter()
                .map(|(le, now)| {
                    let before = bucket_at(&earlier.duration_buckets, *le).unwrap_or(0);
                    (*le, now - before)
                })
                .collect(),
            duration_count: self.duration_count - earlier.duration_count,
            // Envoy recomputes the sum from its approximate bins; it cannot go below the earlier
            // value once the counts did not, but clamp rather than trust float arithmetic.
            duration_sum: (self.duration_sum - earlier.duration_sum).max(0.0),
        }
    }
}

/// The count of the bucket whose bound is exactly `le`.
fn bucket_at(buckets: &[(f64, u64)], le: f64) -> Option<u64> {
    buckets
        .iter()
        .find(|(bound, _)| *bound == le)
        .map(|(_, count)| *count)
}

/// Observations at or below `le` in cumulative `buckets` whose own bounds may differ: the count of
/// the highest own bound not above `le` (a lower bound, exact when `le` is one of the bounds).
fn count_up_to(buckets: &[(f64, u64)], le: f64) -> u64 {
    buckets
        .iter()
        .filter(|(bound, _)| *bound <= le)
        .map(|(_, count)| *count)
        .max()
        .unwrap_or(0)
}

/// What a proxy counted of the copies mirrored to one variant of a route: the filter's marks
/// (`meshcanary_mirrored_total`) and, from the proxy's own stats of the cluster the copies go
/// to, how they fared. Cumulative since the proxy started; summed over proxies with [`Add`].
///
/// [`Add`]: std::ops::Add
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCounters {
    /// Requests the filter marked for a copy.
    pub marked: u64,
    /// Copies the proxy sent to the mirror cluster (`upstream_rq_total`).
    pub sent: u64,
    /// Copies answered (`upstream_rq_completed`); their responses were discarded.
    pub answered: u64,
    /// Of those, answered 5xx (`upstream_rq_xx` with class 5).
    pub server_errors: u64,
}

impl std::ops::Add for MirrorCounters {
    type Output = MirrorCounters;

    fn add(self, other: MirrorCounters) -> MirrorCounters {
        MirrorCounters {
            marked: self.marked.saturating_add(other.marked),
            sent: self.sent.saturating_add(other.sent),
            answered: self.answered.saturating_add(other.answered),
            server_errors: self.server_errors.saturating_add(other.server_errors),
        }
    }
}

impl MirrorCounters {
    /// The counts since `earlier`, from the same proxies; if any went down, the proxies
    /// restarted in between, and the counts since the restart are all there is.
    pub fn since(&self, earlier: &MirrorCounters) -> MirrorCounters {
        let went_down = self.marked < earlier.marked
            || self.sent < earlier.sent
            || self.answered < earlier.answered
            || self.server_errors < earlier.server_errors;
        if went_down {
            return *self;
        }
        MirrorCounters {
            marked: self.marked - earlier.marked,
            sent: self.sent - earlier.sent,
            answered: self.answered - earlier.answered,
            server_errors: self.server_errors - earlier.server_errors,
        }
    }

    /// For people: `mirrored 480 requests: 478 answered, 0.42% 5xx`.
    pub fn summary(&self) -> String {
        let rate = if self.answered == 0 {
            "no answers yet".to_string()
        } else {
            format!(
                "{:.2}% 5xx",
                100.0 * self.server_errors as f64 / self.answered as f64
            )
        };
        format!(
            "mirrored {} requests: {} answered, {rate}",
            self.sent, self.answered
        )
    }
}

/// The Envoy cluster the standalone bootstrap sends `route`'s copies for `variant` to:
/// `<route>-<variant>-mirror` (`reviews-v2-mirror`).
pub fn mirror_cluster(route: &str, variant: &str) -> String {
    format!("{route}-{variant}-mirror")
}

/// The mirror counters of `route`'s `variant` in an Envoy `/stats/prometheus` text: the
/// filter's `meshcanary_mirrored_total` and the `envoy_cluster_upstream_rq_*` series of
/// [`mirror_cluster`]. Series that are absent count 0 (a proxy without that cluster); a series
/// of these families that cannot be read is an error naming its line.
pub fn parse_mirror_stats(
    text: &str,
    route: &str,
    variant: &str,
) -> Result<MirrorCounters, AnalysisError> {
    let cluster = mirror_cluster(route, variant);
    let mut counters = MirrorCounters::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_start_matches(BLANKS);
        let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
        let name = &line[..name_end];
        let slot = match name {
            MIRRORED => &mut counters.marked,
            "envoy_cluster_upstream_rq_total" => &mut counters.sent,
            "envoy_cluster_upstream_rq_completed" => &mut counters.answered,
            "envoy_cluster_upstream_rq_xx" => &mut counters.server_errors,
            _ => continue,
        };
        let parse_error = |reason: String| AnalysisError::Parse {
            line: index + 1,
            reason,
        };
        let sample = parse_sample(&line[name_end..]).map_err(parse_error)?;
        let ours = if name == MIRRORED {
            sample.label("route") == Some(route) && sample.label("variant") == Some(variant)
        } else {
            sample.label("envoy_cluster_name") == Some(cluster.as_str())
                && (name != "envoy_cluster_upstream_rq_xx"
                    || sample.label("envoy_response_code_class") == Some("5"))
        };
        if ours {
            *slot = slot.saturating_add(parse_count(sample.value).map_err(parse_error)?);
        }
    }
    Ok(counters)
}

/// The filter's counters for every variant of one route, from one proxy or summed over several.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// By variant name.
    pub variants: BTreeMap<String, VariantCounters>,
}

/// The traffic between two scrapes of one proxy: `current − previous`, variant by variant.
///
/// A variant with any counter below its previous value (the proxy restarted and its counters
/// started again from zero) contributes its current values whole: that is what it counted since
/// the restart. A variant absent from `previous` counts from zero. Variants absent from `current`
/// are left out. The histogram sum is clamped at zero.
pub fn delta(previous: &Snapshot, current: &Snapshot) -> Snapshot {
    let variants = current
        .variants
        .iter()
        .map(|(name, now)| {
            let window = match previous.variants.get(name) {
                Some(before) if !now.went_down_since(before) => now.minus(before),
                _ => now.clone(),
            };
            (name.clone(), window)
        })
        .collect();
    Snapshot { variants }
}

/// The sum of several proxies' snapshots, variant by variant.
///
/// Take the [`delta`] of each proxy first and merge the deltas, not the other way round: each
/// proxy restarts (and resets its counters) on its own, and proxies come and go as pods scale. In
/// a sum of cumulative totals one proxy's reset is hidden by the others' growth — the fleet's
/// total still rises, by too little — and a proxy that disappeared looks like traffic that went
/// negative. Per proxy, a reset is visible and handled exactly.
///
/// Histograms are added bucket by bucket. Proxies normally share one bucket layout; if they do
/// not, each `le` of any proxy gets, from every proxy, its count at the highest own bound not
/// above that `le` — exact at shared bounds and never more than the truth elsewhere.
pub fn merge(snapshots: &[Snapshot]) -> Snapshot {
    let mut names: Vec<&String> = snapshots.iter().flat_map(|s| s.variants.keys()).collect();
    names.sort();
    names.dedup();
    let variants = names
        .into_iter()
        .map(|name| {
            let parts: Vec<&VariantCounters> = snapshots
                .iter()
                .filter_map(|s| s.variants.get(name))
                .collect();
            (name.clone(), merge_variant(&parts))
        })
        .collect();
    Snapshot { variants }
}

fn merge_variant(parts: &[&VariantCounters]) -> VariantCounters {
    let mut merged = VariantCounters::default();
    for part in parts {
        merged.requests = merged.requests.saturating_add(part.requests);
        for (class, count) in &part.responses {
            let slot = merged.responses.entry(class.clone()).or_default();
            *slot = slot.saturating_add(*count);
        }
        merged.duration_count = merged.duration_count.saturating_add(part.duration_count);
        merged.duration_sum += part.duration_sum;
    }
    let mut bounds: Vec<f64> = parts
        .iter()
        .flat_map(|part| part.duration_buckets.iter().map(|(le, _)| *le))
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    merged.duration_buckets = bounds
        .into_iter()
        .map(|le| {
            let count = parts
                .iter()
                .map(|part| count_up_to(&part.duration_buckets, le))
                .fold(0, u64::saturating_add);
            (le, count)
        })
        .collect();
    merged
}

/// Reads the filter's counters for `route` out of Envoy's `/stats/prometheus` text.
///
/// Series of other routes and all other families are ignored. Series that differ only in labels
/// other than `route`, `variant`, `class` and `le` are added up. Errors name the line: see the
/// module documentation for what is checked.
pub fn parse_envoy_stats(text: &str, route: &str) -> Result<Snapshot, AnalysisError> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(AnalysisError::Truncated { bytes: text.len() });
    }
    let mut seen = HashSet::new();
    let mut found: BTreeMap<String, Partial> = BTreeMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line_number = index + 1;
        let line = raw
            .strip_suffix('\r')
            .unwrap_or(raw)
            .trim_start_matches(BLANKS);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parse_error = |reason: String| AnalysisError::Parse {
            line: line_number,
            reason,
        };
        let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(parse_error(format!(
                "expected a metric name, found {:?}",
                preview(line)
            )));
        }
        let Some(family) = Family::of(name) else {
            continue;
        };
        let sample = parse_sample(&line[name_end..]).map_err(parse_error)?;
        let mut key = sample.labels.clone();
        key.sort();
        if !seen.insert((name.to_string(), key)) {
            return Err(AnalysisError::DuplicateSeries {
                line: line_number,
                series: format!("{name}{{{}}}", render_labels(&sample.labels)),
            });
        }
        let Some(series_route) = sample.label("route") else {
            return Err(parse_error(format!("{name} has no route label")));
        };
        if series_route != route {
            continue;
        }
        let Some(variant) = sample.label("variant") else {
            return Err(parse_error(format!("{name} has no variant label")));
        };
        let entry = found.entry(variant.to_string()).or_default();
        let counters = &mut entry.counters;
        match family {
            Family::Requests => {
                let count = parse_count(sample.value).map_err(parse_error)?;
                counters.requests = counters.requests.saturating_add(count);
            }
            Family::Responses => {
                let Some(class) = sample.label("class") else {
                    return Err(parse_error(format!("{name} has no class label")));
                };
                let count = parse_count(sample.value).map_err(parse_error)?;
                let slot = counters.responses.entry(class.to_string()).or_default();
                *slot = slot.saturating_add(count);
            }
            Family::Bucket => {
                let Some(le) = sample.label("le") else {
                    return Err(parse_error(format!("{name} has no le label")));
                };
                let le = parse_float(le)
                    .ok()
                    .filter(|le| !le.is_nan())
                    .ok_or_else(|| parse_error(format!("le={le:?} is not a bucket bound")))?;
                let count = parse_count(sample.value).map_err(parse_error)?;
                counters.duration_buckets.push((le, count));
                entry.has_histogram = true;
            }
            Family::Sum => {
                let sum = parse_float(sample.value)
                    .ok()
                    .filter(|sum| sum.is_finite())
                    .ok_or_else(|| {
                        parse_error(format!("{:?} is not a finite number", sample.value))
                    })?;
                counters.duration_sum += sum;
            }
            Family::Count => {
                let count = parse_count(sample.value).map_err(parse_error)?;
                counters.duration_count = counters.duration_count.saturating_add(count);
                entry.has_histogram = true;
            }
        }
    }
    if found.is_empty() {
        return Err(AnalysisError::RouteNotFound {
            route: route.to_string(),
        });
    }
    let mut variants = BTreeMap::new();
    for (variant, mut partial) in found {
        let buckets = &mut partial.counters.duration_buckets;
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Series split by extra labels share bounds: add them up.
        buckets.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(later.1);
            }
            same
        });
        let has_inf = buckets.last().is_some_and(|(le, _)| *le == f64::INFINITY);
        if partial.has_histogram && !has_inf {
            return Err(AnalysisError::IncompleteHistogram {
                metric: DURATION_MS.to_string(),
                route: route.to_string(),
                variant,
            });
        }
        variants.insert(variant, partial.counters);
    }
    Ok(Snapshot { variants })
}

/// A variant's counters while the text is read.
#[derive(Default)]
struct Partial {
    counters: VariantCounters,
    has_histogram: bool,
}

/// The filter's families this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Requests,
    Responses,
    Bucket,
    Sum,
    Count,
}

impl Family {
    fn of(name: &str) -> Option<Family> {
        if name == REQUESTS {
            return Some(Family::Requests);
        }
        if name == RESPONSES {
            return Some(Family::Responses);
        }
        match name.strip_prefix(DURATION_MS)? {
            "_bucket" => Some(Family::Bucket),
            "_sum" => Some(Family::Sum),
            "_count" => Some(Family::Count),
            _ => None,
        }
    }
}

const BLANKS: [char; 2] = [' ', '\t'];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The start of a line, for error messages.
fn preview(line: &str) -> String {
    line.chars().take(40).collect()
}

/// One sample line after its metric name.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    labels: Vec<(String, String)>,
    value: &'a str,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

fn render_labels(labels: &[(String, String)]) -> String {
    labels
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `[{labels}] value [timestamp]`, the rest of a sample line after the metric name.
fn parse_sample(rest: &str) -> Result<Sample<'_>, String> {
    let mut cursor = Cursor { rest };
    let after_name = cursor.rest.len();
    cursor.skip_blanks();
    let mut labels = Vec::new();
    if cursor.eat('{') {
        parse_labels(&mut cursor, &mut labels)?;
    } else if cursor.rest.len() == after_name {
        return Err(format!(
            "expected '{{' or a blank after the metric name, found {:?}",
            preview(cursor.rest)
        ));
    }
    cursor.skip_blanks();
    let value = cursor.take_while(|c| !BLANKS.contains(&c));
    if value.is_empty() {
        return Err("missing value".to_string());
    }
    cursor.skip_blanks();
    let timestamp = cursor.take_while(|c| !BLANKS.contains(&c));
    if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
        return Err(format!(
            "{timestamp:?} after the value is not a timestamp in milliseconds"
        ));
    }
    cursor.skip_blanks();
    if !cursor.rest.is_empty() {
        return Err(format!(
            "unexpected {:?} after the timestamp",
            preview(cursor.rest)
        ));
    }
    Ok(Sample { labels, value })
}

/// Parses the label pairs after `{`, through the closing `}`.
fn parse_labels(cursor: &mut Cursor<'_>, labels: &mut Vec<(String, String)>) -> Result<(), String> {
    loop {
        cursor.skip_blanks();
        if cursor.eat('}') {
            return Ok(());
        }
        let name = cursor.take_while(is_label_name_char);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "expected a label name or '}}', found {:?}",
                preview(cursor.rest)
            ));
        }
        cursor.skip_blanks();
        if !cursor.eat('=') {
            return Err(format!("expected '=' after label {name}"));
        }
        cursor.skip_blanks();
        if !cursor.eat('"') {
            return Err(format!("expected '\"' to open the value of label {name}"));
        }
        let mut value = String::new();
        loop {
            match cursor.next() {
                None => return Err(format!("the value of label {name} is not closed")),
                Some('"') => break,
                Some('\\') => match cursor.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => {
                        return Err(format!(
                            "invalid escape \\{} in the value of label {name}",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                },
                Some(c) => value.push(c),
            }
        }
        if labels.iter().any(|(existing, _)| existing == name) {
            return Err(format!("label {name} appears twice"));
        }
        labels.push((name.to_string(), value));
        cursor.skip_blanks();
        if cursor.eat(',') {
            continue;
        }
        if cursor.eat('}') {
            return Ok(());
        }
        return Err(format!(
            "expected ',' or '}}' after the value of label {name}, found {:?}",
            preview(cursor.rest)
        ));
    }
}

/// A position in a line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches(BLANKS);
    }

    fn eat(&mut self, wanted: char) -> bool {
        match self.rest.strip_prefix(wanted) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn next(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next()?;
        self.rest = chars.as_str();
        Some(c)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let end = self.rest.find(|c| !keep(c)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }
}

/// A sample value as the text format writes floats: Go's `strconv` syntax plus `+Inf`, `-Inf`,
/// `NaN`.
fn parse_float(token: &str) -> Result<f64, String> {
    match token {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ if token.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c)) => token
            .parse::<f64>()
            .map_err(|_| format!("{token:?} is not a number")),
        _ => Err(format!("{token:?} is not a number")),
    }
}

/// A counter's value: a whole number ≥ 0. Exact for every `u64`; `1e3` and `5.0` are accepted.
fn parse_count(token: &str) -> Result<u64, String> {
    if let Ok(count) = token.parse::<u64>() {
        return Ok(count);
    }
    let value = parse_float(token)?;
    // 2^64: the first float a u64 cannot hold.
    if (0.0..18_446_744_073_709_551_616.0).contains(&value) && value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(format!("{token:?} is not a count (a whole number ≥ 0)"))
    }
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    #[test]
    fn reads_the_mirror_counters_of_one_route_variant() {
        let text = "\
# TYPE meshcanary_mirrored_total counter
meshcanary_mirrored_total{route=\"reviews\",variant=\"v2\"} 500
meshcanary_mirrored_total{route=\"ratings\",variant=\"v2\"} 7
envoy_cluster_upstream_rq_total{envoy_cluster_name=\"reviews-v2-mirror\"} 498
envoy_cluster_upstream_rq_total{envoy_cluster_name=\"reviews-v2\"} 9000
envoy_cluster_upstream_rq_completed{envoy_cluster_name=\"reviews-v2-mirror\"} 490
envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"reviews-v2-mirror\"} 480
envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"reviews-v2-mirror\"} 10
envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"reviews-v1\"} 3
envoy_cluster_upstream_rq_timeout{envoy_cluster_name=\"reviews-v2-mirror\"} 1
";
        let counters = parse_mirror_stats(text, "reviews", "v2").unwrap();
        assert_eq!(
            counters,
            MirrorCounters {
                marked: 500,
                sent: 498,
                answered: 490,
                server_errors: 10
            }
        );
        assert_eq!(
            counters.summary(),
            "mirrored 498 requests: 490 answered, 2.04% 5xx"
        );
        assert_eq!((counters + counters).sent, 996, "proxies add up");
        let later = MirrorCounters {
            marked: 600,
            sent: 598,
            answered: 590,
            server_errors: 12,
        };
        assert_eq!(
            later.since(&counters),
            MirrorCounters {
                marked: 100,
                sent: 100,
                answered: 100,
                server_errors: 2
            }
        );
        assert_eq!(counters.since(&later), counters, "a restart in between");
        // Nothing mirrored on this proxy: zeros, and a summary that says so.
        let none = parse_mirror_stats("other_total 3\n", "reviews", "v2").unwrap();
        assert_eq!(none, MirrorCounters::default());
        assert!(none.summary().contains("no answers yet"));
        // A series of ours that cannot be read is an error naming its line.
        let error = parse_mirror_stats(
            "x 1\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"reviews-v2-mirror\"} many\n",
            "reviews",
            "v2",
        )
        .unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("testdata/envoy-1.40-stats.prom");

    fn counters(
        requests: u64,
        responses: &[(&str, u64)],
        buckets: &[(f64, u64)],
        sum: f64,
    ) -> VariantCounters {
        VariantCounters {
            requests,
            responses: responses
                .iter()
                .map(|(class, count)| (class.to_string(), *count))
                .collect(),
            duration_buckets: buckets.to_vec(),
            duration_count: buckets.last().map_or(0, |(_, count)| *count),
            duration_sum: sum,
        }
    }

    fn snapshot(variants: &[(&str, VariantCounters)]) -> Snapshot {
        Snapshot {
            variants: variants
                .iter()
                .map(|(name, counters)| (name.to_string(), counters.clone()))
                .collect(),
        }
    }

    const ENVOY_BOUNDS: [f64; 20] = [
        0.5,
        1.0,
        5.0,
        10.0,
        25.0,
        50.0,
        100.0,
        250.0,
        500.0,
        1000.0,
        2500.0,
        5000.0,
        10000.0,
        30000.0,
        60000.0,
        300000.0,
        600000.0,
        1800000.0,
        3600000.0,
        f64::INFINITY,
    ];

    #[test]
    fn reads_the_filter_series_of_a_real_envoy() {
        let snapshot = parse_envoy_stats(SAMPLE, "reviews").unwrap();
        assert_eq!(
            snapshot.variants.keys().collect::<Vec<_>>(),
            ["v1", "v2"],
            "{snapshot:?}"
        );
        let v1 = &snapshot.variants["v1"];
        assert_eq!(v1.requests, 107);
        assert_eq!(v1.responses["2xx"], 106);
        assert_eq!(v1.responses["4xx"], 1);
        assert_eq!(v1.responses.len(), 6);
        assert_eq!(v1.total_responses(), 107);
        assert_eq!(v1.failures(), 0);
        assert_eq!(v1.successes(), 107);
        assert_eq!(v1.duration_count, 107);
        assert_eq!(v1.duration_sum, 118.05190965723116);
        let bounds: Vec<f64> = v1.duration_buckets.iter().map(|(le, _)| *le).collect();
        assert_eq!(bounds, ENVOY_BOUNDS);
        assert_eq!(
            &v1.duration_buckets[..4],
            [(0.5, 1), (1.0, 104), (5.0, 106), (10.0, 107)]
        );
        assert_eq!(v1.duration_buckets.last(), Some(&(f64::INFINITY, 107)));
        let v2 = &snapshot.variants["v2"];
        assert_eq!((v2.requests, v2.duration_count), (94, 94));
        // Envoy wrote 106.38762448414759376191796036437: 32 digits, read to the nearest double.
        assert_eq!(v2.duration_sum, 106.3876244841476);
    }

    #[test]
    fn a_route_without_series_is_an_error() {
        assert_eq!(
            parse_envoy_stats(SAMPLE, "ratings"),
            Err(AnalysisError::RouteNotFound {
                route: "ratings".into()
            })
        );
        assert!(matches!(
            parse_envoy_stats("", "reviews"),
            Err(AnalysisError::RouteNotFound { .. })
        ));
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        let cut = &SAMPLE[..SAMPLE.len() - 10];
        assert_eq!(
            parse_envoy_stats(cut, "reviews"),
            Err(AnalysisError::Truncated { bytes: cut.len() })
        );
    }

    #[test]
    fn parses_every_syntax_the_format_allows() {
        let cases: &[(&str, VariantCounters)] = &[
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 5\n",
                counters(5, &[], &[], 0.0),
            ),
            // Blanks and tabs around tokens, a trailing comma, a timestamp, CRLF.
            (
                "meshcanary_requests_total { route = \"r\" ,\tvariant=\"a\", } \t 5 1700000000000\r\n",
                counters(5, &[], &[], 0.0),
            ),
            // Floats that are whole numbers, exponents, and values past 2^53 read exactly.
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1e3\n",
                counters(1000, &[], &[], 0.0),
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 9007199254740993\n",
                counters(9_007_199_254_740_993, &[], &[], 0.0),
            ),
            // Escapes in label values, and a value with , = } in it.
            (
                "meshcanary_responses_total{route=\"r\",variant=\"a\",class=\"5xx\",x=\"q\\\"\\\\\\n,=}\"} 2\n",
                counters(0, &[("5xx", 2)], &[], 0.0),
            ),
            // Label order does not matter; other routes are ignored.
            (
                "meshcanary_responses_total{class=\"2xx\",variant=\"a\",route=\"r\"} 3\nmeshcanary_responses_total{class=\"2xx\",variant=\"a\",route=\"other\"} 9\n",
                counters(0, &[("2xx", 3)], &[], 0.0),
            ),
            // Series split by an extra label are added up.
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\",pod=\"p1\"} 3\nmeshcanary_requests_total{route=\"r\",variant=\"a\",pod=\"p2\"} 4\n",
                counters(7, &[], &[], 0.0),
            ),
            // A histogram, bounds out of order, long sum.
            (
                "meshcanary_request_duration_ms_bucket{route=\"r\",variant=\"a\",le=\"+Inf\"} 4\nmeshcanary_request_duration_ms_bucket{route=\"r\",variant=\"a\",le=\"0.5\"} 1\nmeshcanary_request_duration_ms_sum{route=\"r\",variant=\"a\"} 3.14159265358979323846264338327950288\nmeshcanary_request_duration_ms_count{route=\"r\",variant=\"a\"} 4\n",
                VariantCounters {
                    duration_buckets: vec![(0.5, 1), (f64::INFINITY, 4)],
                    duration_count: 4,
                    duration_sum: std::f64::consts::PI,
                    ..VariantCounters::default()
                },
            ),
            // Comments, blank lines, foreign families with odd syntax after their names.
            (
                "# HELP x y\n\n  # TYPE z counter\nenvoy_anything{} 3\nenvoy_weird{a=\"b\"} NaN\nenvoy_bare 7\nmeshcanary_requests_total{route=\"r\",variant=\"a\"} 1\n",
                counters(1, &[], &[], 0.0),
            ),
        ];
        for (text, want) in cases {
            let snapshot = parse_envoy_stats(text, "r").unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(snapshot.variants.len(), 1, "{text:?}");
            assert_eq!(&snapshot.variants["a"], want, "{text:?}");
        }
    }

    #[test]
    fn rejects_malformed_lines_of_the_filter_with_their_line_number() {
        let ok = "meshcanary_requests_total{route=\"r\",variant=\"b\"} 1\n";
        let cases = [
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1.5\n",
                "not a count",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} -1\n",
                "not a count",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} NaN\n",
                "not a count",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1e\n",
                "not a number",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"}\n",
                "missing value",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1 soon\n",
                "not a timestamp",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1 2 3\n",
                "unexpected",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"a} 1\n",
                "not closed",
            ),
            (
                "meshcanary_requests_total{route=r,variant=\"a\"} 1\n",
                "expected '\"'",
            ),
            (
                "meshcanary_requests_total{route=\"r\" variant=\"a\"} 1\n",
                "expected ',' or '}'",
            ),
            (
                "meshcanary_requests_total{route=\"r\",route=\"r\"} 1\n",
                "appears twice",
            ),
            (
                "meshcanary_requests_total{route=\"r\",variant=\"\\t\"} 1\n",
                "invalid escape",
            ),
            (
                "meshcanary_requests_total{route=\"r\",1a=\"b\"} 1\n",
                "expected a label name",
            ),
            (
                "meshcanary_requests_total{variant=\"a\"} 1\n",
                "no route label",
            ),
            (
                "meshcanary_requests_total{route=\"r\"} 1\n",
                "no variant label",
            ),
            (
                "meshcanary_responses_total{route=\"r\",variant=\"a\"} 1\n",
                "no class label",
            ),
            (
                "meshcanary_request_duration_ms_bucket{route=\"r\",variant=\"a\"} 1\n",
                "no le label",
            ),
            (
                "meshcanary_request_duration_ms_bucket{route=\"r\",variant=\"a\",le=\"x\"} 1\n",
                "not a bucket bound",
            ),
            (
                "meshcanary_request_duration_ms_sum{route=\"r\",variant=\"a\"} +Inf\n",
                "not a finite number",
            ),
            ("meshcanary_requests_total\n", "expected '{' or a blank"),
            ("meshcanary_requests_total{ 1\n", "expected a label name"),
            ("<html>\n", "expected a metric name"),
            ("{route=\"r\"} 1\n", "expected a metric name"),
        ];
        for (bad, reason) in cases {
            let text = format!("{ok}{bad}");
            match parse_envoy_stats(&text, "r") {
                Err(AnalysisError::Parse {
                    line: 2,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{bad:?}: {got}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_series_twice_is_an_error() {
        let text = "meshcanary_requests_total{route=\"r\",variant=\"a\"} 1\nmeshcanary_requests_total{variant=\"a\",route=\"r\"} 2\n";
        assert_eq!(
            parse_envoy_stats(text, "r"),
            Err(AnalysisError::DuplicateSeries {
                line: 2,
                series: "meshcanary_requests_total{variant=\"a\",route=\"r\"}".into()
            })
        );
    }

    #[test]
    fn a_histogram_without_its_inf_bucket_is_an_error() {
        for text in [
            "meshcanary_request_duration_ms_bucket{route=\"r\",variant=\"a\",le=\"1\"} 1\n",
            "meshcanary_request_duration_ms_count{route=\"r\",variant=\"a\"} 1\n",
        ] {
            assert_eq!(
                parse_envoy_stats(text, "r"),
                Err(AnalysisError::IncompleteHistogram {
                    metric: DURATION_MS.into(),
                    route: "r".into(),
                    variant: "a".into()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_read_well() {
        let error =
            parse_envoy_stats("x 1\nmeshcanary_requests_total{route=\"r\"} 1\n", "r").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Envoy stats line 2: meshcanary_requests_total has no variant label"
        );
    }

    #[test]
    fn helpers_count_failures_as_5xx_resets_and_grpc_server_errors() {
        let c = counters(
            10,
            &[
                ("1xx", 1),
                ("2xx", 4),
                ("3xx", 1),
                ("4xx", 1),
                ("5xx", 2),
                ("reset", 1),
            ],
            &[],
            0.0,
        );
        assert_eq!(
            (c.total_responses(), c.failures(), c.successes()),
            (10, 3, 7)
        );
        // A gRPC service answers 200 throughout: what failed is in grpc_server_error; a gRPC
        // call the caller got wrong (grpc_client_error) is no failure, as a 4xx is none.
        let grpc = counters(
            20,
            &[
                ("grpc_ok", 12),
                ("grpc_client_error", 3),
                ("grpc_server_error", 4),
                ("reset", 1),
            ],
            &[],
            0.0,
        );
        assert_eq!(
            (grpc.total_responses(), grpc.failures(), grpc.successes()),
            (20, 5, 15)
        );
        let empty = VariantCounters::default();
        assert_eq!(
            (empty.total_responses(), empty.failures(), empty.successes()),
            (0, 0, 0)
        );
    }

    #[test]
    fn delta_subtracts_and_handles_restarts() {
        let before = counters(
            100,
            &[("2xx", 98), ("5xx", 2)],
            &[(10.0, 90), (f64::INFINITY, 100)],
            500.0,
        );
        let after = counters(
            150,
            &[("2xx", 145), ("5xx", 3), ("reset", 2)],
            &[(10.0, 130), (f64::INFINITY, 150)],
            800.0,
        );
        let restarted = counters(20, &[("2xx", 20)], &[(10.0, 20), (f64::INFINITY, 20)], 60.0);
        let cases = [
            (
                "counts up: the difference",
                snapshot(&[("v1", before.clone())]),
                snapshot(&[("v1", after.clone())]),
                snapshot(&[(
                    "v1",
                    counters(
                        50,
                        &[("2xx", 47), ("5xx", 1), ("reset", 2)],
                        &[(10.0, 40), (f64::INFINITY, 50)],
                        300.0,
                    ),
                )]),
            ),
            (
                "restarted: the current values",
                snapshot(&[("v1", before.clone())]),
                snapshot(&[("v1", restarted.clone())]),
                snapshot(&[("v1", restarted.clone())]),
            ),
            (
                "new variant: from zero; gone variant: left out",
                snapshot(&[("v1", before.clone())]),
                snapshot(&[("v2", after.clone())]),
                snapshot(&[("v2", after.clone())]),
            ),
            (
                "a class that disappeared means a restart",
                snapshot(&[("v1", counters(10, &[("5xx", 3), ("2xx", 7)], &[], 0.0))]),
                snapshot(&[("v1", counters(12, &[("2xx", 12)], &[], 0.0))]),
                snapshot(&[("v1", counters(12, &[("2xx", 12)], &[], 0.0))]),
            ),
            (
                "histogram first seen: from zero",
                snapshot(&[("v1", counters(10, &[("2xx", 10)], &[], 0.0))]),
                snapshot(&[("v1", after.clone())]),
                snapshot(&[(
                    "v1",
                    counters(
                        140,
                        &[("2xx", 135), ("5xx", 3), ("reset", 2)],
                        &[(10.0, 130), (f64::INFINITY, 150)],
                        800.0,
                    ),
                )]),
            ),
        ];
        for (name, previous, current, want) in cases {
            assert_eq!(delta(&previous, &current), want, "{name}");
        }
    }

    #[test]
    fn merge_adds_proxies_up() {
        let a = counters(
            10,
            &[("2xx", 9), ("5xx", 1)],
            &[(1.0, 4), (10.0, 9), (f64::INFINITY, 10)],
            20.0,
        );
        let b = counters(
            5,
            &[("2xx", 4), ("reset", 1)],
            &[(1.0, 1), (10.0, 5), (f64::INFINITY, 5)],
            7.5,
        );
        let merged = merge(&[
            snapshot(&[("v1", a.clone())]),
            snapshot(&[("v1", b.clone()), ("v2", a.clone())]),
        ]);
        assert_eq!(
            merged,
            snapshot(&[
                (
                    "v1",
                    counters(
                        15,
                        &[("2xx", 13), ("5xx", 1), ("reset", 1)],
                        &[(1.0, 5), (10.0, 14), (f64::INFINITY, 15)],
                        27.5
                    )
                ),
                ("v2", a.clone()),
            ])
        );
        assert_eq!(merge(&[]), Snapshot::default());
        assert_eq!(
            merge(&[snapshot(&[("v1", a.clone())])]),
            snapshot(&[("v1", a)])
        );
    }

    #[test]
    fn merge_of_different_bucket_layouts_never_overstates() {
        let a = counters(0, &[], &[(1.0, 4), (10.0, 9), (f64::INFINITY, 10)], 0.0);
        let b = counters(0, &[], &[(5.0, 3), (f64::INFINITY, 5)], 0.0);
        let merged = merge(&[snapshot(&[("v", a)]), snapshot(&[("v", b)])]);
        assert_eq!(
            merged.variants["v"].duration_buckets,
            [(1.0, 4), (5.0, 7), (10.0, 12), (f64::INFINITY, 15)]
        );
    }

    #[test]
    fn delta_per_proxy_then_merge_sees_a_restart_that_a_fleet_sum_hides() {
        // Proxy 1 restarts and its canary fails all 10 requests since; proxy 2 carries on.
        let p1_before = snapshot(&[("v", counters(1050, &[("2xx", 1000), ("5xx", 50)], &[], 0.0))]);
        let p1_after = snapshot(&[("v", counters(10, &[("5xx", 10)], &[], 0.0))]);
        let p2_before = snapshot(&[("v", counters(100_000, &[("2xx", 100_000)], &[], 0.0))]);
        let p2_after = snapshot(&[("v", counters(100_100, &[("2xx", 100_100)], &[], 0.0))]);
        let window = merge(&[delta(&p1_before, &p1_after), delta(&p2_before, &p2_after)]);
        assert_eq!(window.variants["v"].total_responses(), 110);
        assert_eq!(window.variants["v"].failures(), 10);
        // Summed first, the fleet's 5xx went down, so all of history counts as the window and
        // the 10 failures drown in 100 110 responses.
        let fleet = delta(
            &merge(&[p1_before, p2_before]),
            &merge(&[p1_after, p2_after]),
        );
        assert_eq!(fleet.variants["v"].total_responses(), 100_110);
    }

    fn arb_counters() -> impl Strategy<Value = VariantCounters> {
        (
            0u64..1_000_000,
            proptest::collection::btree_map(
                proptest::sample::select(vec!["1xx", "2xx", "3xx", "4xx", "5xx", "reset"]),
                0u64..1_000_000,
                0..6,
            ),
            proptest::collection::vec(0u64..1000, 0..6),
            0.0f64..1e9,
        )
            .prop_map(|(requests, responses, increments, sum)| {
                let mut total = 0;
                let mut buckets: Vec<(f64, u64)> = increments
                    .iter()
                    .enumerate()
                    .map(|(i, inc)| {
                        total += inc;
                        (10f64.powi(i as i32), total)
                    })
                    .collect();
                if !buckets.is_empty() {
                    buckets.push((f64::INFINITY, total));
                }
                VariantCounters {
                    requests,
                    responses: responses
                        .into_iter()
                        .map(|(class, count)| (class.to_string(), count))
                        .collect(),
                    duration_count: total,
                    duration_buckets: buckets,
                    duration_sum: sum,
                }
            })
    }

    proptest! {
        #[test]
        fn delta_of_a_snapshot_with_itself_is_all_zeros(
            variants in proptest::collection::btree_map("[a-z]{1,3}", arb_counters(), 0..4)
        ) {
            let snapshot = Snapshot { variants };
            let zero = delta(&snapshot, &snapshot);
            prop_assert_eq!(zero.variants.len(), snapshot.variants.len());
            for (name, window) in &zero.variants {
                prop_assert_eq!(window.requests, 0);
                prop_assert!(window.responses.values().all(|c| *c == 0));
                prop_assert!(window.duration_buckets.iter().all(|(_, c)| *c == 0));
                prop_assert_eq!(window.duration_count, 0);
                prop_assert_eq!(window.duration_sum, 0.0);
                prop_assert_eq!(
                    window.responses.keys().collect::<Vec<_>>(),
                    snapshot.variants[name].responses.keys().collect::<Vec<_>>()
                );
            }
        }

        #[test]
        fn delta_then_adding_back_gives_the_current_scrape(
            before in arb_counters(), grow in arb_counters()
        ) {
            // `after` = `before` + `grow` on `before`'s series: never a restart.
            let mut after = before.clone();
            after.requests += grow.requests;
            for (class, count) in after.responses.iter_mut() {
                *count += grow.responses.get(class).copied().unwrap_or(0);
            }
            after.duration_sum += grow.duration_sum;
            let window = delta(&snapshot(&[("v", before.clone())]), &snapshot(&[("v", after.clone())]));
            let back = merge(&[snapshot(&[("v", before)]), window]);
            prop_assert_eq!(back.variants["v"].requests, after.requests);
            prop_assert_eq!(&back.variants["v"].responses, &after.responses);
        }

        #[test]
        fn merge_totals_are_sums(parts in proptest::collection::vec(arb_counters(), 0..5)) {
            let snapshots: Vec<Snapshot> = parts.iter().map(|p| snapshot(&[("v", p.clone())])).collect();
            let merged = merge(&snapshots);
            let want_responses: u64 = parts.iter().map(VariantCounters::total_responses).sum();
            let want_failures: u64 = parts.iter().map(VariantCounters::failures).sum();
            let want_observations: u64 = parts.iter().map(|p| p.duration_count).sum();
            let got = merged.variants.get("v").cloned().unwrap_or_default();
            prop_assert_eq!(got.total_responses(), want_responses);
            prop_assert_eq!(got.failures(), want_failures);
            prop_assert_eq!(got.duration_buckets.last().map_or(0, |(_, c)| *c), want_observations);
        }
    }
}

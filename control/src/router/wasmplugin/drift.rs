//! Drift: the live `WasmPlugin`'s `spec.pluginConfig` no longer says what the service pushed.
//!
//! It happens when a person edits the `WasmPlugin` by hand, or a GitOps tool (Argo CD, Flux)
//! that also renders it syncs it back to the config in Git — undoing a rollout step without the
//! rollout knowing. [`diff`] is the pure comparison; [`watch_drift`] watches the object and turns
//! changes into [`DriftEvent`]s.
//!
//! What to do about drift is the service's decision, not this module's. Two reasonable answers:
//! - **Re-apply** (the service's config wins): push the saved config again and log the drift. Right
//!   when the service is the only source of truth for `pluginConfig`; with a GitOps tool that
//!   keeps reverting, the two fight until one of them is told to ignore the field (Argo CD
//!   `ignoreDifferences` on `/spec/pluginConfig`).
//! - **Pause** the running rollouts with the drift as the reason and wait for a person: right when
//!   a hand edit may be deliberate (an emergency rollback). Resuming then re-applies.
//!
//! Comparison is semantic: the live value is parsed as a [`FilterConfig`], so key order, absent
//! versus default fields (`dryRun: false`, `rules: []`), an explicit default `variantHeader` and
//! integral numbers written as `1.0` all count as equal.

use super::wasmplugin_resource;
use futures::stream::{BoxStream, Stream, StreamExt};
use kube::api::DynamicObject;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use meshcanary_core::config::{FilterConfig, RouteConfig, DEFAULT_VARIANT_HEADER};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How the live `pluginConfig` differs from the pushed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The live `WasmPlugin`'s `metadata.generation`, if the API server set it (it does for
    /// custom resources; it increases on every spec change).
    pub generation: Option<i64>,
    /// The live object's `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// The `generation` field of the live `pluginConfig`, if it has one: a re-apply must go above
    /// it, or proxies running the edit would count as running the re-applied config.
    pub config_generation: Option<u64>,
    /// What differs; never empty.
    pub differences: Vec<Difference>,
}

/// One difference between the pushed config and the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The `WasmPlugin` has no `spec.pluginConfig`.
    Missing,
    /// The live `pluginConfig` is not a filter config at all (an unknown field, a wrong type).
    Unreadable {
        /// What the parser said, with the field path.
        reason: String,
    },
    /// A top-level field differs: `generation`, `variantHeader` or `responseHeader`.
    Field {
        /// The field's name in `pluginConfig`.
        field: String,
        /// What the service pushed (`null` if unset).
        expected: Value,
        /// What is live (`null` if unset).
        live: Value,
    },
    /// A route the service pushed is not in the live config.
    RouteMissing {
        /// The route's name.
        route: String,
    },
    /// The live config has a route the service did not push.
    RouteAdded {
        /// The route's name.
        route: String,
    },
    /// A route is in both but differs.
    RouteChanged {
        /// The route's name.
        route: String,
        /// The route fields that differ (`variants`, `rules`, `hosts`…).
        fields: Vec<String>,
    },
    /// The routes common to both are in a different order (the first match wins, so order
    /// matters).
    RouteOrder {
        /// Their names in the pushed order.
        expected: Vec<String>,
        /// Their names in the live order.
        live: Vec<String>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing => write!(f, "spec.pluginConfig is missing"),
            Difference::Unreadable { reason } => {
                write!(f, "spec.pluginConfig is not a filter config: {reason}")
            }
            Difference::Field {
                field,
                expected,
                live,
            } => write!(f, "{field} is {live}, pushed {expected}"),
            Difference::RouteMissing { route } => write!(f, "route {route} was removed"),
            Difference::RouteAdded { route } => write!(f, "route {route} was added"),
            Difference::RouteChanged { route, fields } => {
                write!(f, "route {route} changed: {}", fields.join(", "))
            }
            Difference::RouteOrder { expected, live } => write!(
                f,
                "routes reordered: [{}], pushed [{}]",
                live.join(", "),
                expected.join(", ")
            ),
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pluginConfig drifted")?;
        if let Some(generation) = self.generation {
            write!(f, " (WasmPlugin generation {generation})")?;
        }
        let parts: Vec<String> = self.differences.iter().map(ToString::to_string).collect();
        write!(f, ": {}", parts.join("; "))
    }
}

/// Compares a live `pluginConfig` (`None` if absent) with the config the service last pushed.
/// Empty means in sync.
pub fn diff(live: Option<&Value>, expected: &FilterConfig) -> Vec<Difference> {
    let Some(live) = live else {
        return vec![Difference::Missing];
    };
    let live: FilterConfig = match serde_json::from_value(integral_numbers(live)) {
        Ok(config) => config,
        Err(error) => {
            return vec![Difference::Unreadable {
                reason: error.to_string(),
            }]
        }
    };
    let expected = with_defaults(expected);
    let live = with_defaults(&live);
    let mut differences = Vec::new();
    let field = |name: &str, expected: Value, live: Value| Difference::Field {
        field: name.to_string(),
        expected,
        live,
    };
    if expected.generation != live.generation {
        differences.push(field(
            "generation",
            expected.generation.into(),
            live.generation.into(),
        ));
    }
    if expected.variant_header != live.variant_header {
        differences.push(field(
            "variantHeader",
            expected.variant_header.clone().into(),
            live.variant_header.clone().into(),
        ));
    }
    if expected.response_header != live.response_header {
        differences.push(field(
            "responseHeader",
            expected.response_header.clone().into(),
            live.response_header.clone().into(),
        ));
    }
    differences.extend(route_differences(&expected.routes, &live.routes));
    differences
}

/// The drift of a live `WasmPlugin` object, or `None` if its `pluginConfig` matches `expected`.
pub fn drift_of(object: &DynamicObject, expected: &FilterConfig) -> Option<Drift> {
    let differences = diff(object.data.pointer("/spec/pluginConfig"), expected);
    (!differences.is_empty()).then(|| Drift {
        generation: object.metadata.generation,
        resource_version: object.metadata.resource_version.clone(),
        config_generation: object
            .data
            .pointer("/spec/pluginConfig/generation")
            .map(integral_numbers)
            .and_then(|generation| generation.as_u64()),
        differences,
    })
}

fn route_differences(expected: &[RouteConfig], live: &[RouteConfig]) -> Vec<Difference> {
    let by_name = |routes: &[RouteConfig]| -> BTreeMap<String, Value> {
        let mut map = BTreeMap::new();
        for route in routes.iter().rev() {
            // The first of duplicate names wins, as it does in the filter.
            map.insert(
                route.name.clone(),
                serde_json::to_value(route).unwrap_or(Value::Null),
            );
        }
        map
    };
    let (want, have) = (by_name(expected), by_name(live));
    let mut differences = Vec::new();
    for route in expected {
        match (want.get(&route.name), have.get(&route.name)) {
            (_, None) => differences.push(Difference::RouteMissing {
                route: route.name.clone(),
            }),
            (Some(Value::Object(want)), Some(Value::Object(have))) if want != have => {
                let mut fields: Vec<String> = want
                    .keys()
                    .chain(have.keys())
                    .filter(|key| want.get(*key) != have.get(*key))
                    .cloned()
                    .collect();
                fields.sort();
                fields.dedup();
                differences.push(Difference::RouteChanged {
                    route: route.name.clone(),
                    fields,
                });
            }
            _ => {}
        }
    }
    for route in live {
        if !want.contains_key(&route.name) {
            differences.push(Difference::RouteAdded {
                route: route.name.clone(),
            });
        }
    }
    let order = |routes: &[RouteConfig], other: &BTreeMap<String, Value>| -> Vec<String> {
        let mut names: Vec<String> = routes
            .iter()
            .filter(|r| other.contains_key(&r.name))
            .map(|r| r.name.clone())
            .collect();
        names.dedup();
        names
    };
    let (expected_order, live_order) = (order(expected, &have), order(live, &want));
    if expected_order != live_order {
        differences.push(Difference::RouteOrder {
            expected: expected_order,
            live: live_order,
        });
    }
    differences
}

/// The config with the filter's defaults written out, so that leaving a field out and writing
/// its default compare equal.
fn with_defaults(config: &FilterConfig) -> FilterConfig {
    let mut config = config.clone();
    if config.variant_header.is_none() {
        config.variant_header = Some(DEFAULT_VARIANT_HEADER.to_string());
    }
    config
}

/// Integral floats (`1.0`, `1e3`) as integers: JSON tools and YAML round trips produce them, and
/// they mean the same number to the filter.
fn integral_numbers(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            // Within u64 and integral: the cast is exact.
            Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                Value::from(f as u64)
            }
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(integral_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), integral_numbers(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// What [`watch_drift`] reports. Each is sent when the situation changes, not on every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftEvent {
    /// The live `pluginConfig` matches the expected config: sent once the watch has seen the
    /// object, and again when a drift ends.
    InSync {
        /// The live `WasmPlugin`'s `metadata.generation`.
        generation: Option<i64>,
    },
    /// The live `pluginConfig` differs from the expected config, and has for the settle time.
    Drifted(Drift),
    /// The `WasmPlugin` does not exist: it was deleted, or was not there when the watch started.
    Deleted,
    /// The watch failed; it retries by itself, within [`WATCH_RETRY_MAX`].
    WatchError(String),
}

/// The longest pause between attempts to re-establish the watch. kube's default backoff grows to
/// 30 s, kind to a struggling API server but blind to drift for that long after an outage; one
/// watch of one object can afford to look again every two seconds.
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// After this long without an error, a new error starts the backoff from 100 ms again.
pub const WATCH_BACKOFF_RESET: Duration = Duration::from_secs(10);

/// Exponential backoff for re-establishing the watch: 100 ms doubling up to [`WATCH_RETRY_MAX`],
/// back to 100 ms once the watch has been quiet for [`WATCH_BACKOFF_RESET`].
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(100);
}

impl Default for WatchBackoff {
    fn default() -> WatchBackoff {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(WATCH_RETRY_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Settings for [`watch_drift_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftWatchConfig {
    /// How long a difference must last before it is reported. The service's own push shows up as
    /// a difference for a moment — between updating the expected config and the patch reaching
    /// the API server, whichever comes first — so a difference that goes away within this time
    /// is not drift.
    pub settle: Duration,
}

impl Default for DriftWatchConfig {
    fn default() -> DriftWatchConfig {
        DriftWatchConfig {
            settle: Duration::from_secs(2),
        }
    }
}

/// Watches the `WasmPlugin` `namespace/name` and reports drift of its `pluginConfig` from
/// `expected`, with the default [`DriftWatchConfig`].
///
/// Send every config to `expected` when you push it (just before the push is best). The stream
/// starts watching when first polled and stops when dropped; it never ends by itself.
pub fn watch_drift(
    client: kube::Client,
    namespace: &str,
    name: &str,
    expected: watch::Receiver<FilterConfig>,
) -> impl Stream<Item = DriftEvent> + Send + 'static {
    watch_drift_with(
        client,
        namespace,
        name,
        expected,
        DriftWatchConfig::default(),
    )
}

/// [`watch_drift`] with explicit settings.
pub fn watch_drift_with(
    client: kube::Client,
    namespace: &str,
    name: &str,
    expected: watch::Receiver<FilterConfig>,
    config: DriftWatchConfig,
) -> impl Stream<Item = DriftEvent> + Send + 'static {
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &wasmplugin_resource());
    // A field selector on the name: list and watch this one object, not the namespace's plugins.
    let events = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    // kube's watcher says "Init" (a success) before each list, which would reset a plain
    // backoff on every attempt: only a quiet spell resets it.
    .backoff(ResetTimerBackoff::new(
        WatchBackoff::default(),
        WATCH_BACKOFF_RESET,
    ))
    .boxed();
    let state = DriftWatch {
        events,
        name: name.to_string(),
        expected,
        expected_open: true,
        settle: config.settle,
        live: Live::Unknown,
        listing: None,
        reported: None,
        drifting_since: None,
        settling_until: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        state.next_event().await.map(|event| (event, state))
    })
}

/// What the watch knows about the object.
enum Live {
    /// Not listed yet.
    Unknown,
    Absent,
    Present(Box<DynamicObject>),
}

/// The status last reported, to send events only on change.
#[derive(PartialEq)]
enum Reported {
    InSync,
    Drifted(Vec<Difference>),
    Deleted,
}

struct DriftWatch {
    events: BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>>,
    name: String,
    expected: watch::Receiver<FilterConfig>,
    expected_open: bool,
    settle: Duration,
    live: Live,
    /// During a (re)list: the object seen so far.
    listing: Option<Option<DynamicObject>>,
    reported: Option<Reported>,
    drifting_since: Option<Instant>,
    /// When a difference now settling will have lasted the settle time.
    settling_until: Option<Instant>,
}

impl DriftWatch {
    /// Waits for the next thing worth reporting; `None` if the watch ended.
    async fn next_event(&mut self) -> Option<DriftEvent> {
        loop {
            if let Some(event) = self.evaluate(Instant::now()) {
                return Some(event);
            }
            // Only a difference still settling has a deadline: once reported (or gone), there is
            // nothing to wake up for until the object or the expected config changes.
            let deadline = self.settling_until;
            tokio::select! {
                event = self.events.next() => match event? {
                    Ok(event) => self.observe(event),
                    Err(error) => return Some(DriftEvent::WatchError(error.to_string())),
                },
                changed = self.expected.changed(), if self.expected_open => {
                    // The sender is gone: keep comparing against the last config it sent.
                    self.expected_open = changed.is_ok();
                    // A push: `changed` marked it seen, so `evaluate` cannot tell; restart the
                    // settle time here (see there).
                    self.drifting_since = None;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }

    fn observe(&mut self, event: Event<DynamicObject>) {
        let ours = |object: &DynamicObject| object.metadata.name.as_deref() == Some(&self.name);
        match event {
            Event::Init => self.listing = Some(None),
            Event::InitApply(object) if ours(&object) => self.listing = Some(Some(object)),
            Event::InitApply(_) => {}
            Event::InitDone => {
                self.live = match self.listing.take().flatten() {
                    Some(object) => Live::Present(Box::new(object)),
                    None => Live::Absent,
                }
            }
            Event::Apply(object) if ours(&object) => self.live = Live::Present(Box::new(object)),
            Event::Delete(object) if ours(&object) => self.live = Live::Absent,
            Event::Apply(_) | Event::Delete(_) => {}
        }
    }

    /// The event to send now, if the status changed; starts or clears the settle timer.
    fn evaluate(&mut self, now: Instant) -> Option<DriftEvent> {
        self.settling_until = None;
        // One look at the expected config, which also says whether it is new: comparing against
        // a config read separately from that check would race with a push landing in between.
        let expected = self.expected.borrow_and_update();
        if expected.has_changed() {
            // A new push starts the settle time afresh: a difference seen before it (the drift
            // the push re-applies, a follower's stale expectation) must not make the push itself
            // look like a drift that has lasted.
            self.drifting_since = None;
        }
        let (status, event) = match &self.live {
            Live::Unknown => return None,
            Live::Absent => (Reported::Deleted, DriftEvent::Deleted),
            Live::Present(object) => match drift_of(object, &expected) {
                None => (
                    Reported::InSync,
                    DriftEvent::InSync {
                        generation: object.metadata.generation,
                    },
                ),
                Some(drift) => (
                    Reported::Drifted(drift.differences.clone()),
                    DriftEvent::Drifted(drift),
                ),
            },
        };
        drop(expected);
        if !matches!(status, Reported::Drifted(_)) {
            self.drifting_since = None;
        }
        if self.reported.as_ref() == Some(&status) {
            return None;
        }
        if matches!(status, Reported::Drifted(_)) {
            let since = *self.drifting_since.get_or_insert(now);
            if now < since + self.settle {
                self.settling_until = Some(since + self.settle);
                return None;
            }
        }
        self.reported = Some(status);
        Some(event)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected() -> FilterConfig {
        serde_json::from_value(json!({
            "generation": 4,
            "routes": [
                {"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}]},
                {"name": "ratings", "hosts": ["ratings"], "variants": [{"name": "a", "weight": 10000}, {"name": "b", "weight": 0}]}
            ]
        }))
        .unwrap()
    }

    fn field(name: &str, expected: Value, live: Value) -> Difference {
        Difference::Field {
            field: name.into(),
            expected,
            live,
        }
    }

    #[test]
    fn semantic_comparison() {
        let pushed = serde_json::to_value(expected()).unwrap();
        let reviews = pushed["routes"][0].clone();
        let ratings = pushed["routes"][1].clone();
        let with = |patch: Value| {
            let mut value = pushed.clone();
            crate::router::wasmplugin::apply_merge_patch(&mut value, &patch);
            value
        };
        let cases: Vec<(&str, Option<Value>, Vec<Difference>)> = vec![
            ("identical", Some(pushed.clone()), vec![]),
            (
                "defaults written out, floats, key order",
                Some(json!({
                    "routes": [
                        {"variants": [{"weight": 9000.0, "name": "v1"}, {"name": "v2", "weight": 1e3}], "hosts": ["reviews"], "name": "reviews", "rules": [], "dryRun": false},
                        ratings.clone()
                    ],
                    "variantHeader": DEFAULT_VARIANT_HEADER,
                    "generation": 4.0
                })),
                vec![],
            ),
            ("absent", None, vec![Difference::Missing]),
            (
                "generation and a header",
                Some(with(json!({"generation": 3, "responseHeader": "x-mc"}))),
                vec![
                    field("generation", json!(4), json!(3)),
                    field("responseHeader", Value::Null, json!("x-mc")),
                ],
            ),
            (
                "weights changed by hand",
                Some(with(json!({"routes": [
                    {"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]},
                    ratings.clone()
                ]}))),
                vec![Difference::RouteChanged {
                    route: "reviews".into(),
                    fields: vec!["variants".into()],
                }],
            ),
            (
                "route removed and another added",
                Some(with(json!({"routes": [
                    reviews.clone(),
                    {"name": "details", "hosts": ["details"], "variants": [{"name": "a", "weight": 10000}, {"name": "b", "weight": 0}], "dryRun": true}
                ]}))),
                vec![
                    Difference::RouteMissing {
                        route: "ratings".into(),
                    },
                    Difference::RouteAdded {
                        route: "details".into(),
                    },
                ],
            ),
            (
                "reordered",
                Some(with(json!({"routes": [ratings.clone(), reviews.clone()]}))),
                vec![Difference::RouteOrder {
                    expected: vec!["reviews".into(), "ratings".into()],
                    live: vec!["ratings".into(), "reviews".into()],
                }],
            ),
            (
                "not a filter config",
                Some(json!({"routes": "all of them"})),
                vec![Difference::Unreadable {
                    reason: "invalid type: string \"all of them\", expected a sequence".into(),
                }],
            ),
        ];
        for (name, live, want) in cases {
            assert_eq!(diff(live.as_ref(), &expected()), want, "{name}");
        }
        let unknown = diff(Some(&json!({"routs": []})), &expected());
        assert!(
            matches!(&unknown[..], [Difference::Unreadable { reason }] if reason.contains("unknown field `routs`")),
            "{unknown:?}"
        );
    }

    #[test]
    fn the_watch_retries_soon_after_an_outage() {
        use kube::runtime::utils::Backoff;
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn drift_names_the_generation_and_reads_well() {
        let mut object = DynamicObject::new("plugin", &wasmplugin_resource())
            .data(json!({"spec": {"url": "oci://x", "pluginConfig": {"generation": 1}}}));
        object.metadata.generation = Some(7);
        let drift = drift_of(&object, &expected()).unwrap();
        assert_eq!(drift.generation, Some(7));
        assert_eq!(drift.config_generation, Some(1));
        assert_eq!(
            drift.to_string(),
            "pluginConfig drifted (WasmPlugin generation 7): generation is 1, pushed 4; \
             route reviews was removed; route ratings was removed"
        );
        object.data["spec"]["pluginConfig"] = serde_json::to_value(expected()).unwrap();
        assert_eq!(drift_of(&object, &expected()), None);
    }

    fn present(plugin_config: Value) -> Live {
        Live::Present(Box::new(
            DynamicObject::new("plugin", &wasmplugin_resource())
                .data(json!({"spec": {"url": "oci://x", "pluginConfig": plugin_config}})),
        ))
    }

    #[tokio::test]
    async fn reports_changes_once_and_drift_only_after_it_settles() {
        let (tx, rx) = watch::channel(expected());
        let mut watch = DriftWatch {
            events: futures::stream::pending().boxed(),
            name: "plugin".into(),
            expected: rx,
            expected_open: true,
            settle: Duration::from_secs(2),
            live: Live::Unknown,
            listing: None,
            reported: None,
            drifting_since: None,
            settling_until: None,
        };
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let in_sync = serde_json::to_value(expected()).unwrap();
        let mut next = expected();
        next.generation = 5;
        let in_sync_next = serde_json::to_value(&next).unwrap();
        let drifted = json!({"generation": 1});
        // When, what the object becomes, a config the service pushes, the event expected.
        type Step<'a> = (Instant, Option<Live>, Option<FilterConfig>, Option<&'a str>);
        let steps: Vec<Step> = vec![
            (secs(0), None, None, None),
            (
                secs(0),
                Some(present(in_sync.clone())),
                None,
                Some("in sync"),
            ),
            (secs(1), None, None, None),
            (secs(2), Some(present(drifted.clone())), None, None),
            (secs(3), None, None, None),
            (secs(4), None, None, Some("drifted")),
            (secs(5), None, None, None),
            (
                secs(6),
                Some(present(in_sync.clone())),
                None,
                Some("in sync"),
            ),
            // A blip shorter than the settle time is not drift.
            (secs(7), Some(present(drifted.clone())), None, None),
            (secs(8), Some(present(in_sync.clone())), None, None),
            // A drift that lasts, then the service re-applies (pushes a new config) while the
            // object still shows the edit: the push starts the settle time afresh, so the
            // moment between the push and the object catching up is not a new drift.
            (secs(10), Some(present(drifted.clone())), None, None),
            (secs(12), None, None, Some("drifted")),
            (secs(13), None, Some(next.clone()), None),
            (secs(14), None, None, None),
            (
                secs(15),
                Some(present(in_sync_next.clone())),
                None,
                Some("in sync"),
            ),
            (secs(20), None, None, None),
            (secs(21), Some(Live::Absent), None, Some("deleted")),
            (secs(22), None, None, None),
        ];
        for (at, live, push, want) in steps {
            if let Some(live) = live {
                watch.live = live;
            }
            if let Some(push) = push {
                tx.send(push).unwrap();
            }
            let event = watch.evaluate(at).map(|event| match event {
                DriftEvent::InSync { .. } => "in sync",
                DriftEvent::Drifted(_) => "drifted",
                DriftEvent::Deleted => "deleted",
                DriftEvent::WatchError(_) => "error",
            });
            assert_eq!(event, want, "at {:?}", at - t0);
            // The watch wakes up by itself only for a difference still settling: a reported
            // drift that lasts must not keep it spinning.
            let settling = [secs(2), secs(3), secs(7), secs(10), secs(13), secs(14)];
            if settling.contains(&at) {
                assert!(watch.settling_until.is_some(), "at {:?}", at - t0)
            } else {
                assert_eq!(watch.settling_until, None, "at {:?}", at - t0)
            }
        }
        assert_eq!(watch.settling_until, None);
    }
}

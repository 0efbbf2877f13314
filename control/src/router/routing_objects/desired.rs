//! What a route's Istio `DestinationRule` and `VirtualService` specs must hold for the filter's
//! variants: a pure function of the specs as read, the route's live variants and the variant
//! header. No IO; [`super::RoutingObjectsRouter`] reads, calls it and writes.
//!
//! What the service owns in these objects, and so the only things this changes:
//! - in the `DestinationRule`, one subset per live variant, named after it, with the labels
//!   `{version: <variant>}` (Istio's bookinfo convention) — added when missing, never rewritten;
//! - in the `VirtualService`, the header routes named `variant-<variant>` (matching the variant
//!   header exactly, sent to that subset) and the subset of the default route's destinations;
//! - while the filter route mirrors (a rollout's `mirror` step), the default route's `mirror`
//!   (the mirror variant's subset) and `mirrorPercentage`; a mirror to a subset of one of the
//!   route's variants is ours to remove afterwards, a mirror elsewhere is the user's and kept
//!   (though a mirror step replaces it while it runs: a route has one `mirror`).
//!
//! Everything else the user wrote (other routes, their order, retries, timeouts, other subsets,
//! traffic policies) is kept as it is.

use meshcanary_core::config::RouteConfig;
use serde_json::{json, Map, Value};

/// The name prefix of the header routes the service owns: `variant-v2`.
pub const VARIANT_ROUTE_PREFIX: &str = "variant-";
/// The name of the default route the service adds when a `VirtualService` has none.
pub const DEFAULT_ROUTE: &str = "stable";

/// The specs to write, each `None` when the live one is already right.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The `DestinationRule`'s whole new `spec`.
    pub destination_rule: Option<Value>,
    /// The `VirtualService`'s whole new `spec`.
    pub virtual_service: Option<Value>,
}

/// A spec this module cannot work with: the field (from `spec`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ShapeError {
    /// Which object: `DestinationRule` or `VirtualService`.
    pub kind: &'static str,
    /// The field path, e.g. `spec.http[2].route`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The specs a `DestinationRule` (`destination_rule`) and a `VirtualService` (`virtual_service`)
/// must have for `route`, whose first variant is the stable one, when the filter writes the
/// variant into `variant_header`.
pub fn desired(
    destination_rule: &Value,
    virtual_service: &Value,
    route: &RouteConfig,
    variant_header: &str,
) -> Result<Desired, ShapeError> {
    let variants: Vec<&str> = route
        .variants
        .iter()
        .map(|variant| variant.name.as_str())
        .collect();
    let host = destination_rule
        .get("host")
        .and_then(Value::as_str)
        .filter(|host| !host.is_empty())
        .ok_or_else(|| ShapeError {
            kind: "DestinationRule",
            field: "spec.host".into(),
            reason: "missing: the subsets' host is what the header routes send to".into(),
        })?;
    let mirror = route
        .mirrors
        .first()
        .map(|mirror| (mirror.name.as_str(), mirror.weight));
    Ok(Desired {
        destination_rule: changed(destination_rule, with_subsets(destination_rule, &variants)?),
        virtual_service: changed(
            virtual_service,
            with_routes(virtual_service, host, variant_header, &variants, mirror)?,
        ),
    })
}

fn changed(live: &Value, desired: Value) -> Option<Value> {
    (*live != desired).then_some(desired)
}

/// An array field of `spec` (absent or `null` counts as empty).
fn array<'a>(spec: &'a Value, key: &str, kind: &'static str) -> Result<&'a [Value], ShapeError> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(ShapeError {
            kind,
            field: format!("spec.{key}"),
            reason: "not a list".into(),
        }),
    }
}

fn with_array(spec: &Value, key: &str, items: Vec<Value>) -> Value {
    let mut spec = match spec {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    spec.insert(key.to_string(), Value::Array(items));
    Value::Object(spec)
}

fn name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// `spec` with a subset for every variant that has none. Subsets of variants no longer on the
/// route stay: another `VirtualService` (or a person's own route) may send traffic to them, and
/// a `VirtualService` naming a subset that is gone makes its proxies answer 503.
fn with_subsets(spec: &Value, variants: &[&str]) -> Result<Value, ShapeError> {
    let mut subsets = array(spec, "subsets", "DestinationRule")?.to_vec();
    for variant in variants {
        if !subsets.iter().any(|subset| name(subset) == Some(variant)) {
            subsets.push(json!({"name": variant, "labels": {"version": variant}}));
        }
    }
    Ok(with_array(spec, "subsets", subsets))
}

/// The header route the service writes for `variant`.
fn variant_route(variant: &str, host: &str, header: &str) -> Value {
    json!({
        "name": format!("{VARIANT_ROUTE_PREFIX}{variant}"),
        "match": [{"headers": {header: {"exact": variant}}}],
        "route": [{"destination": {"host": host, "subset": variant}}],
    })
}

/// The variant a route of ours is for, if it is one of ours.
fn variant_of(route: &Value) -> Option<&str> {
    name(route)?.strip_prefix(VARIANT_ROUTE_PREFIX)
}

fn has_match(route: &Value) -> bool {
    match route.get("match") {
        None | Some(Value::Null) => false,
        Some(Value::Array(matches)) => !matches.is_empty(),
        Some(_) => true,
    }
}

/// The default route of `http`: the one named [`DEFAULT_ROUTE`], else the last one without a
/// `match` (a route after it could never be reached).
fn default_route(http: &[Value]) -> Option<usize> {
    http.iter()
        .position(|route| name(route) == Some(DEFAULT_ROUTE))
        .or_else(|| {
            http.iter()
                .rposition(|route| !has_match(route) && variant_of(route).is_none())
        })
}

/// `spec` with a header route per variant before the default route, none for variants gone, and
/// the default route sent to the stable variant, mirroring to `mirror` (variant, basis points)
/// if given.
///
/// A header route of ours already before the default keeps its place (rewritten to what it must
/// be); missing ones, and any found after the default (where they could never match), go just
/// before the default, in the route's variant order. Foreign routes keep their order.
fn with_routes(
    spec: &Value,
    host: &str,
    header: &str,
    variants: &[&str],
    mirror: Option<(&str, u32)>,
) -> Result<Value, ShapeError> {
    let Some(stable) = variants.first() else {
        return Ok(spec.clone());
    };
    let old = array(spec, "http", "VirtualService")?;
    let default = default_route(old);
    let mut http = Vec::with_capacity(old.len() + variants.len());
    // Which variants have their header route in `http` yet.
    let mut placed = vec![false; variants.len()];
    let place_missing = |http: &mut Vec<Value>, placed: &mut [bool]| {
        for (variant, placed) in variants.iter().zip(placed.iter_mut()) {
            if !*placed {
                http.push(variant_route(variant, host, header));
                *placed = true;
            }
        }
    };
    for (index, route) in old.iter().enumerate() {
        if let Some(variant) = variant_of(route) {
            let live = variants.iter().position(|live| *live == variant);
            if let Some(live) = live {
                if default.is_none_or(|default| index < default) && !placed[live] {
                    http.push(variant_route(variant, host, header));
                    placed[live] = true;
                }
            }
        } else if Some(index) == default {
            place_missing(&mut http, &mut placed);
            let mut route = route.clone();
            point_at(&mut route, index, host, stable)?;
            set_mirror(&mut route, host, variants, mirror);
            http.push(route);
        } else {
            http.push(route.clone());
        }
    }
    if default.is_none() {
        place_missing(&mut http, &mut placed);
        let mut route = json!({
            "name": DEFAULT_ROUTE,
            "route": [{"destination": {"host": host, "subset": stable}}],
        });
        set_mirror(&mut route, host, variants, mirror);
        http.push(route);
    }
    Ok(with_array(spec, "http", http))
}

/// Gives the default route `route` Istio's mirror to `mirror`'s subset at its share, or, without
/// one, takes off a mirror of ours: one to the subset of a variant of the route on `host`.
fn set_mirror(route: &mut Value, host: &str, variants: &[&str], mirror: Option<(&str, u32)>) {
    let Value::Object(route) = route else {
        return;
    };
    match mirror {
        Some((variant, basis_points)) => {
            route.insert("mirror".into(), json!({"host": host, "subset": variant}));
            route.insert(
                "mirrorPercentage".into(),
                json!({"value": mirror_percentage(basis_points)}),
            );
        }
        None => {
            let ours = route.get("mirror").is_some_and(|live| {
                live.get("host").and_then(Value::as_str) == Some(host)
                    && live
                        .get("subset")
                        .and_then(Value::as_str)
                        .is_some_and(|subset| variants.contains(&subset))
            });
            if ours {
                route.remove("mirror");
                route.remove("mirrorPercentage");
            }
        }
    }
}

/// Basis points as Istio's `mirrorPercentage.value` (a percent): a whole number when it is one,
/// as the API server gives it back, so an unchanged mirror compares equal and is not rewritten.
fn mirror_percentage(basis_points: u32) -> Value {
    if basis_points.is_multiple_of(100) {
        json!(basis_points / 100)
    } else {
        json!(f64::from(basis_points) / 100.0)
    }
}

/// Points every destination of the default route (`http[index]`) at `stable`'s subset; a default
/// route without destinations gets one.
fn point_at(route: &mut Value, index: usize, host: &str, stable: &str) -> Result<(), ShapeError> {
    let field = format!("spec.http[{index}].route");
    let Value::Object(route) = route else {
        return Err(ShapeError {
            kind: "VirtualService",
            field: format!("spec.http[{index}]"),
            reason: "not an object".into(),
        });
    };
    let destinations = route
        .entry("route")
        .or_insert_with(|| Value::Array(Vec::new()));
    if destinations.is_null() {
        *destinations = Value::Array(Vec::new());
    }
    let Value::Array(destinations) = destinations else {
        return Err(ShapeError {
            kind: "VirtualService",
            field,
            reason: "not a list".into(),
        });
    };
    if destinations.is_empty() {
        destinations.push(json!({"destination": {"host": host}}));
    }
    for (at, destination) in destinations.iter_mut().enumerate() {
        let Some(Value::Object(destination)) = destination.get_mut("destination") else {
            return Err(ShapeError {
                kind: "VirtualService",
                field: format!("{field}[{at}].destination"),
                reason: "missing".into(),
            });
        };
        destination.insert("subset".into(), Value::String(stable.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcanary_core::config::VariantConfig;

    const HEADER: &str = "x-meshcanary-variant";

    fn route(variants: &[&str]) -> RouteConfig {
        RouteConfig {
            name: "reviews".into(),
            hosts: vec!["reviews".into()],
            variants: variants
                .iter()
                .enumerate()
                .map(|(index, name)| VariantConfig {
                    name: name.to_string(),
                    weight: if index == 0 { 10000 } else { 0 },
                })
                .collect(),
            ..RouteConfig::default()
        }
    }

    fn subset(variant: &str) -> Value {
        json!({"name": variant, "labels": {"version": variant}})
    }

    fn ours(variant: &str) -> Value {
        variant_route(variant, "reviews", HEADER)
    }

    fn stable(variant: &str) -> Value {
        json!({"name": "stable", "route": [{"destination": {"host": "reviews", "subset": variant}}]})
    }

    /// Bookinfo's shipped objects: subsets v1-v3, header routes for v2 and v3, stable v1.
    fn shipped() -> (Value, Value) {
        (
            json!({"host": "reviews", "subsets": [subset("v1"), subset("v2"), subset("v3")]}),
            json!({"hosts": ["reviews"], "http": [ours("v2"), ours("v3"), stable("v1")]}),
        )
    }

    fn foreign_route() -> Value {
        json!({"name": "jason-test", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
               "route": [{"destination": {"host": "reviews", "subset": "v3"}}], "timeout": "2s"})
    }

    /// What happens, the DestinationRule and VirtualService specs, the route's variants, and the
    /// specs wanted (`None`: no change).
    type Case = (
        &'static str,
        Value,
        Value,
        &'static [&'static str],
        Option<Value>,
        Option<Value>,
    );

    #[test]
    fn the_default_route_mirrors_while_the_filter_route_does() {
        let (dr, _) = shipped();
        let mirrored = |variant: &str, value: Value| {
            let mut route = stable("v1");
            route["mirror"] = json!({"host": "reviews", "subset": variant});
            route["mirrorPercentage"] = json!({"value": value});
            route
        };
        let http = |default: Value| json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), ours("v3"), default]});
        let users_mirror = {
            let mut route = stable("v1");
            route["mirror"] = json!({"host": "shadow.test", "port": {"number": 80}});
            route["mirrorPercentage"] = json!({"value": 1});
            route
        };
        let vs = http(stable("v1"));
        // What happens, the live VirtualService, the route's mirror, the VirtualService wanted.
        type MirrorCase = (
            &'static str,
            Value,
            Option<(&'static str, u32)>,
            Option<Value>,
        );
        let cases: Vec<MirrorCase> = vec![
            (
                "a mirror step adds the mirror",
                vs.clone(),
                Some(("v2", 2000)),
                Some(http(mirrored("v2", json!(20)))),
            ),
            (
                "a share that is not a whole percent",
                vs.clone(),
                Some(("v2", 1250)),
                Some(http(mirrored("v2", json!(12.5)))),
            ),
            (
                "a new share replaces the old",
                http(mirrored("v2", json!(20))),
                Some(("v3", 5)),
                Some(http(mirrored("v3", json!(0.05)))),
            ),
            (
                "the end of the step removes ours",
                http(mirrored("v2", json!(20))),
                None,
                Some(vs.clone()),
            ),
            ("without a mirror, nothing changes", vs.clone(), None, None),
            (
                "a mirror of the user's elsewhere is kept",
                http(users_mirror.clone()),
                None,
                None,
            ),
        ];
        for (what, live, mirror, want) in cases {
            let mut route = route(&["v1", "v2", "v3"]);
            route.mirrors = mirror
                .map(|(name, weight)| VariantConfig {
                    name: name.into(),
                    weight,
                })
                .into_iter()
                .collect();
            let got = desired(&dr, &live, &route, HEADER).unwrap();
            assert_eq!(got.virtual_service, want, "{what}");
            assert_eq!(got.destination_rule, None, "{what}");
            let vs = got.virtual_service.unwrap_or(live);
            let again = desired(&dr, &vs, &route, HEADER).unwrap();
            assert_eq!(
                again.virtual_service, None,
                "{what}: a second pass changes nothing"
            );
        }
        // A VirtualService without a default route gets one, mirroring.
        let mut route = route(&["v1", "v2"]);
        route.mirrors = vec![VariantConfig {
            name: "v2".into(),
            weight: 10000,
        }];
        let got = desired(&dr, &json!({"hosts": ["reviews"]}), &route, HEADER).unwrap();
        assert_eq!(
            got.virtual_service.unwrap()["http"][2],
            mirrored("v2", json!(100))
        );
    }

    #[test]
    fn the_specs_follow_the_route_and_keep_what_is_not_ours() {
        let (dr, vs) = shipped();
        let foreign_subset = json!({"name": "legacy", "labels": {"version": "v0"}, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}});
        let cases: Vec<Case> = vec![
            (
                "a new canary gets a subset and a header route before the default",
                dr.clone(),
                vs.clone(),
                &["v1", "v2", "v3", "v4"],
                Some(
                    json!({"host": "reviews", "subsets": [subset("v1"), subset("v2"), subset("v3"), subset("v4")]}),
                ),
                Some(
                    json!({"hosts": ["reviews"], "http": [ours("v2"), ours("v3"), ours("v1"), ours("v4"), stable("v1")]}),
                ),
            ),
            (
                "a promotion points the default route at the new stable",
                dr.clone(),
                json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), ours("v3"), stable("v1")]}),
                &["v2", "v1", "v3"],
                None,
                Some(
                    json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), ours("v3"), stable("v2")]}),
                ),
            ),
            (
                "a retired variant loses its header route but keeps its subset",
                dr.clone(),
                json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), ours("v3"), stable("v1")]}),
                &["v1", "v2"],
                None,
                Some(json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), stable("v1")]})),
            ),
            (
                "foreign routes and subsets stay as written, in order",
                json!({"host": "reviews", "subsets": [foreign_subset.clone(), {"name": "v1", "labels": {"track": "stable"}}]}),
                json!({"hosts": ["reviews"], "gateways": ["mesh"], "http": [foreign_route(), ours("v3"), stable("v1")]}),
                &["v1", "v2"],
                Some(
                    json!({"host": "reviews", "subsets": [foreign_subset.clone(), {"name": "v1", "labels": {"track": "stable"}}, subset("v2")]}),
                ),
                Some(
                    json!({"hosts": ["reviews"], "gateways": ["mesh"], "http": [foreign_route(), ours("v1"), ours("v2"), stable("v1")]}),
                ),
            ),
            (
                "without a default route one named stable is added at the end",
                json!({"host": "reviews"}),
                json!({"hosts": ["reviews"], "http": [foreign_route()]}),
                &["v1", "v2"],
                Some(json!({"host": "reviews", "subsets": [subset("v1"), subset("v2")]})),
                Some(
                    json!({"hosts": ["reviews"], "http": [foreign_route(), ours("v1"), ours("v2"), stable("v1")]}),
                ),
            ),
            (
                "an unnamed catch-all is the default; a route of ours after it moves before it",
                dr.clone(),
                json!({"hosts": ["reviews"], "http": [
                    {"route": [{"destination": {"host": "reviews", "subset": "v3"}, "weight": 100}], "retries": {"attempts": 3}},
                    ours("v2"), ours("v1"),
                ]}),
                &["v1", "v2"],
                None,
                Some(json!({"hosts": ["reviews"], "http": [
                    ours("v1"), ours("v2"),
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 100}], "retries": {"attempts": 3}},
                ]})),
            ),
            (
                "a header route of ours edited by hand is written back",
                dr.clone(),
                json!({"hosts": ["reviews"], "http": [
                    {"name": "variant-v1", "match": [{"headers": {HEADER: {"exact": "v1"}}}], "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
                    stable("v1"),
                ]}),
                &["v1"],
                None,
                Some(json!({"hosts": ["reviews"], "http": [ours("v1"), stable("v1")]})),
            ),
            (
                "nothing to do",
                dr.clone(),
                json!({"hosts": ["reviews"], "http": [ours("v1"), ours("v2"), stable("v1")]}),
                &["v1", "v2"],
                None,
                None,
            ),
        ];
        for (what, dr, vs, variants, want_dr, want_vs) in cases {
            let got = desired(&dr, &vs, &route(variants), HEADER).unwrap();
            assert_eq!(got.destination_rule, want_dr, "{what}: DestinationRule");
            assert_eq!(got.virtual_service, want_vs, "{what}: VirtualService");
            // Idempotent: what it asks for is what it then asks no change of.
            let dr = got.destination_rule.unwrap_or(dr);
            let vs = got.virtual_service.unwrap_or(vs);
            let again = desired(&dr, &vs, &route(variants), HEADER).unwrap();
            assert_eq!(
                again,
                Desired {
                    destination_rule: None,
                    virtual_service: None
                },
                "{what}: a second pass changes nothing"
            );
        }
    }

    #[test]
    fn the_header_routes_use_the_configured_header_and_the_rule_host() {
        let got = desired(
            &json!({"host": "reviews.shop.svc.cluster.local"}),
            &json!({}),
            &route(&["v1"]),
            "x-variant",
        )
        .unwrap();
        assert_eq!(
            got.virtual_service,
            Some(json!({"http": [
                {"name": "variant-v1", "match": [{"headers": {"x-variant": {"exact": "v1"}}}],
                 "route": [{"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v1"}}]},
                {"name": "stable", "route": [{"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v1"}}]},
            ]}))
        );
    }

    #[test]
    fn specs_it_cannot_read_are_refused_with_the_field() {
        let cases = [
            (json!({}), json!({}), "DestinationRule", "spec.host"),
            (
                json!({"host": "r", "subsets": {}}),
                json!({}),
                "DestinationRule",
                "spec.subsets",
            ),
            (
                json!({"host": "r"}),
                json!({"http": "x"}),
                "VirtualService",
                "spec.http",
            ),
            (
                json!({"host": "r"}),
                json!({"http": [{"name": "stable", "route": [{"weight": 1}]}]}),
                "VirtualService",
                "spec.http[0].route[0].destination",
            ),
        ];
        for (dr, vs, kind, field) in cases {
            let error = desired(&dr, &vs, &route(&["v1"]), HEADER).unwrap_err();
            assert_eq!((error.kind, error.field.as_str()), (kind, field), "{error}");
        }
    }
}

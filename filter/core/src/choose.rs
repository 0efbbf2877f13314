//! The variant choice: which route a request belongs to, and which variant it goes to, and why.
//!
//! Order of precedence on the matched route: QA rules (first match wins), then the sticky key
//! hashed with the route's salt, then `x-request-id` hashed the same way, then a random draw. A
//! route's variants own consecutive bucket ranges in config order, so as a later variant's weight
//! grows it only takes buckets from the earlier ones: a sticky user moves from stable to canary,
//! never back, while weights rise.

use crate::config::{CheckedConfig, CheckedRoute, ValueMatch, ValueSource};
use crate::request::{cookie, find_query, host_of, path_of, RequestView};
use crate::token::{self, Rejection, TokenKey};
use crate::{base64url, hash};

/// The request id header Envoy sets (or keeps) on every request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a variant was chosen; the `reason` label of `meshcanary_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A QA rule matched.
    Rule,
    /// The sticky key was hashed.
    Sticky,
    /// No sticky key; `x-request-id` was hashed.
    RequestId,
    /// Neither key was there; a random draw.
    Random,
    /// Something failed (no randomness available); the stable variant was used.
    Fallback,
    /// No sticky cookie, and the route assigns one: a new visitor id was drawn and hashed, and the
    /// cookie is set on the response.
    Assigned,
}

impl Reason {
    /// Every reason, in stat order.
    pub const ALL: [Reason; 6] = [
        Reason::Rule,
        Reason::Sticky,
        Reason::RequestId,
        Reason::Random,
        Reason::Fallback,
        Reason::Assigned,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Sticky => "sticky",
            Reason::RequestId => "request_id",
            Reason::Random => "random",
            Reason::Fallback => "fallback",
            Reason::Assigned => "assigned",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome for one request that matched a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into [`CheckedConfig::routes`].
    pub route: usize,
    /// Index into that route's variants.
    pub variant: usize,
    /// Which stage chose it: a QA rule, the sticky key, the request id, a random draw, a fallback.
    pub reason: Reason,
    /// With [`Reason::Assigned`]: the id drawn for the new visitor, to set in the route's sticky
    /// cookie on the response ([`crate::config::CheckedAssign::set_cookie`]).
    pub visitor: Option<VisitorId>,
    /// A signed rule's token that was refused (the request was placed as if it were absent).
    pub token_rejection: Option<Rejection>,
}

/// A new visitor's id: 128 random bits in base64url, 22 characters that are valid in a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorId([u8; 22]);

impl VisitorId {
    /// The id written out from 128 random bits.
    pub fn from_bits(bits: u128) -> VisitorId {
        let mut id = [b'A'; 22];
        for (slot, byte) in id
            .iter_mut()
            .zip(base64url::encode(&bits.to_be_bytes()).bytes())
        {
            *slot = byte;
        }
        VisitorId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Always base64url characters, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// What a decision may draw on besides the config and the request: randomness, and for signed QA
/// tokens the clock. The filter implements it with a per-worker generator seeded from WASI and
/// the host's clock; a plain closure returning a bucket is enough where neither ids nor tokens
/// are in play.
pub trait Inputs {
    /// A uniform bucket in `0..10000` for a request without any key, or `None` without randomness
    /// (then the stable variant is chosen with [`Reason::Fallback`]).
    fn random_bucket(&mut self) -> Option<u32>;

    /// 128 uniform random bits for a new visitor's id, or `None` without randomness (then the
    /// request is placed as if the route assigned no cookie).
    fn visitor_bits(&mut self) -> Option<u128> {
        None
    }

    /// Seconds since the Unix epoch, or `None` if the clock cannot be read (then every signed
    /// token counts as expired).
    fn now_unix(&self) -> Option<u64> {
        None
    }
}

impl<F: FnMut() -> Option<u32>> Inputs for F {
    fn random_bucket(&mut self) -> Option<u32> {
        self()
    }
}

/// Picks the route and variant for a request, or `None` if no route matches it.
///
/// `inputs` is asked for randomness only when the request carries neither a sticky key nor a
/// request id (a bucket), or when a route that assigns its sticky cookie meets a visitor without
/// it (an id); see [`Inputs`].
pub fn choose(
    config: &CheckedConfig,
    request: &impl RequestView,
    inputs: &mut impl Inputs,
) -> Option<Decision> {
    if config.routes.is_empty() {
        return None;
    }
    let host = host_of(request.header(":authority").unwrap_or_default());
    let path = || request.header(":path");

    // The first route in config order whose hosts and path prefix match, found through the
    // index so that it costs the same with one route or thousands.
    let route_index = config.host_index.first(host, |index| {
        match config.routes.get(index).map(|route| &route.path_prefix) {
            Some(None) => true,
            Some(Some(prefix)) => path().is_some_and(|p| path_of(p).starts_with(prefix.as_bytes())),
            None => false,
        }
    })?;
    let route = config.routes.get(route_index)?;

    let decision = |variant, reason| Decision {
        route: route_index,
        variant,
        reason,
        visitor: None,
        token_rejection: None,
    };

    // QA rules, in order; a signed rule whose token does not check out is passed over, and the
    // first such refusal is kept to be counted.
    let mut token_rejection = None;
    for rule in &route.rules {
        let value = match &rule.source {
            ValueSource::Header(name) => request.header(name),
            ValueSource::Cookie(name) => cookie(request, name),
            ValueSource::Query(name) => path().and_then(|p| find_query(p, name)),
        };
        let Some(value) = value else {
            continue;
        };
        match &rule.matcher {
            ValueMatch::Token(keys) => {
                match opened_variant(route, keys, value, inputs.now_unix()) {
                    Ok(variant) => return Some(decision(variant, Reason::Rule)),
                    Err(rejection) => token_rejection = token_rejection.or(Some(rejection)),
                }
            }
            matcher if matcher.matches(value) => {
                return Some(Decision {
                    token_rejection,
                    ..decision(rule.variant, Reason::Rule)
                });
            }
            _ => {}
        }
    }

    let placed = place(route, request, inputs);
    Some(Decision {
        route: route_index,
        token_rejection,
        ..placed
    })
}

/// The request header that asks the proxy to mirror a request, holding the variant the copy goes
/// to. The filter writes it on the requests it picks and removes it from every other request, so a
/// client can neither trigger a copy nor pick where it goes.
pub const MIRROR_HEADER: &str = "x-meshcanary-mirror";

/// The variant (index into the route's variants) a request placed by `decision` on `route` is
/// also copied to, if any: the route mirrors, the request is on another variant than the mirror
/// (a request the mirror variant serves itself is not copied to it), and a draw of `inputs` falls
/// in the mirrored share. The draw is asked for only when the first two hold, and without
/// randomness nothing is copied.
pub fn mirror(
    route: &CheckedRoute,
    decision: &Decision,
    inputs: &mut impl Inputs,
) -> Option<usize> {
    let mirror = route.mirror.as_ref()?;
    if decision.variant == mirror.to {
        return None;
    }
    let bucket = inputs.random_bucket()?;
    (bucket < mirror.basis_points).then_some(mirror.to)
}

/// The variant a signed QA token opens on `route`, or why it opens none.
fn opened_variant(
    route: &CheckedRoute,
    keys: &[TokenKey],
    token: &[u8],
    now: Option<u64>,
) -> Result<usize, Rejection> {
    let variant = token::verify(keys, token, now)?;
    route
        .variants
        .iter()
        .position(|name| name.as_bytes() == variant)
        .ok_or(Rejection::UnknownVariant)
}

/// Places a request on `route` when no rule decided: by the sticky key, a new visitor's id, the
/// request id, or a random draw. (The decision's `route` is left at 0 for the caller to set.)
fn place(route: &CheckedRoute, request: &impl RequestView, inputs: &mut impl Inputs) -> Decision {
    let decision = |variant, reason| Decision {
        route: 0,
        variant,
        reason,
        visitor: None,
        token_rejection: None,
    };

    if let Some(sticky) = &route.sticky {
        let salt = route.salt.as_bytes();
        let bucket = match &sticky.source {
            ValueSource::Header(name) => request
                .header(name)
                .filter(|key| !key.is_empty())
                .map(|key| hash::bucket(salt, key)),
            ValueSource::Cookie(name) => cookie(request, name)
                .filter(|key| !key.is_empty())
                .map(|key| hash::bucket(salt, key)),
            // Validation only allows headers and cookies as sticky keys.
            ValueSource::Query(_) => None,
        };
        if let Some(bucket) = bucket {
            return decision(variant_for_bucket(route, bucket), Reason::Sticky);
        }
        // A visitor without the cookie: draw an id and place the request by it exactly as the
        // cookie will place the visitor's next requests.
        if let Some(visitor) = sticky
            .assign
            .as_ref()
            .and_then(|_| inputs.visitor_bits())
            .map(VisitorId::from_bits)
        {
            let bucket = hash::bucket(salt, visitor.as_str().as_bytes());
            return Decision {
                visitor: Some(visitor),
                ..decision(variant_for_bucket(route, bucket), Reason::Assigned)
            };
        }
    }

    if let Some(id) = request
        .header(REQUEST_ID_HEADER)
        .filter(|id| !id.is_empty())
    {
        let bucket = hash::bucket(route.salt.as_bytes(), id);
        return decision(variant_for_bucket(route, bucket), Reason::RequestId);
    }

    match inputs.random_bucket() {
        Some(bucket) => decision(variant_for_bucket(route, bucket), Reason::Random),
        None => decision(0, Reason::Fallback),
    }
}

/// The variant owning `bucket`; the stable variant if the bucket is out of range.
pub fn variant_for_bucket(route: &CheckedRoute, bucket: u32) -> usize {
    route
        .bucket_upper_bounds
        .iter()
        .position(|upper| bucket < *upper)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TOTAL_WEIGHT;
    use proptest::prelude::*;
    use serde_json::json;
    use std::cell::Cell;

    /// A request as a list of headers (names may repeat) that counts lookups, so tests can check
    /// which headers are read.
    #[derive(Default)]
    struct FakeRequest {
        headers: Vec<(String, Vec<u8>)>,
        reads: Cell<usize>,
    }

    impl FakeRequest {
        fn new(headers: &[(&str, &str)]) -> Self {
            Self {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                reads: Cell::new(0),
            }
        }
    }

    impl RequestView for FakeRequest {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.reads.set(self.reads.get() + 1);
            let (_, value) = self.headers.iter().find(|(key, _)| key == name)?;
            Some(value)
        }

        fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
            self.reads.set(self.reads.get() + 1);
            self.headers
                .iter()
                .filter(move |(key, _)| key == name)
                .map(|(_, value)| value.as_slice())
        }
    }

    fn config(value: serde_json::Value) -> CheckedConfig {
        CheckedConfig::from_json(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn mirrors_a_share_of_the_other_variants_requests() {
        let checked = config(json!({"routes": [{
            "name": "reviews", "hosts": ["reviews"],
            "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 0}, {"name": "v3", "weight": 1000}],
            "mirrors": [{"name": "v2", "weight": 2500}]
        }, {
            "name": "plain", "hosts": ["plain"], "variants": [{"name": "v1", "weight": 10000}]
        }]}));
        let placed = |route, variant| Decision {
            route,
            variant,
            reason: Reason::Random,
            visitor: None,
            token_rejection: None,
        };
        let reviews = &checked.routes[0];
        // (route, variant placed on, draw) -> copied to
        let cases: Vec<(usize, usize, Option<u32>, Option<usize>)> = vec![
            (0, 0, Some(0), Some(1)),
            (0, 0, Some(2499), Some(1)),
            (0, 0, Some(2500), None),
            (0, 0, Some(9999), None),
            (0, 0, None, None),
            // Requests on any variant but the mirror's own are candidates.
            (0, 2, Some(2499), Some(1)),
            (0, 2, Some(2500), None),
            // Requests the mirror variant serves are never copied to it, whatever the draw.
            (0, 1, Some(0), None),
            // A route without mirror copies nothing.
            (1, 0, Some(0), None),
        ];
        for (route, variant, draw, want) in cases {
            let mut asked = 0;
            let mut inputs = || {
                asked += 1;
                draw
            };
            let got = mirror(&checked.routes[route], &placed(route, variant), &mut inputs);
            assert_eq!(got, want, "route {route} variant {variant} draw {draw:?}");
            // The draw is only taken when it decides something.
            let decides = route == 0 && variant != 1;
            assert_eq!(
                asked,
                usize::from(decides),
                "route {route} variant {variant}"
            );
        }
        // Over many draws, the copied share is the configured one.
        let copied = (0..TOTAL_WEIGHT)
            .filter(|bucket| mirror(reviews, &placed(0, 0), &mut || Some(*bucket)).is_some())
            .count();
        assert_eq!(copied, 2500);
    }

    fn reviews(weights: [u32; 2], salt: &str) -> CheckedConfig {
        config(json!({"routes": [{
            "name": "reviews",
            "hosts": ["reviews", "reviews.default.svc.cluster.local"],
            "variants": [{"name": "v1", "weight": weights[0]}, {"name": "v2", "weight": weights[1]}],
            "rules": [
                {"header": "x-canary", "exact": "always", "variant": "v2"},
                {"cookie": "canary", "prefix": "v2", "variant": "v2"},
                {"query": "canary", "present": true, "variant": "v2"},
                {"header": "x-stable", "present": true, "variant": "v1"}
            ],
            "sticky": {"header": "x-user-id", "salt": salt}
        }, {
            "name": "ratings",
            "hosts": ["*.ratings.example"],
            "pathPrefix": "/api",
            "variants": [{"name": "a", "weight": 5000}, {"name": "b", "weight": 2500}, {"name": "c", "weight": 2500}],
            "sticky": {"cookie": "session"}
        }]}))
    }

    fn pick(
        config: &CheckedConfig,
        headers: &[(&str, &str)],
        random: Option<u32>,
    ) -> Option<(usize, String, Reason)> {
        let request = FakeRequest::new(headers);
        choose(config, &request, &mut || random).map(|d| {
            (
                d.route,
                config.routes[d.route].variants[d.variant].clone(),
                d.reason,
            )
        })
    }

    #[test]
    fn precedence_and_matching() {
        let config = reviews([10000, 0], "s");
        let r = |v: &str, reason| Some((0, v.to_string(), reason));
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str)>,
            Option<u32>,
            Option<(usize, String, Reason)>,
        );
        let cases: Vec<Case> = vec![
            (
                "qa header forces canary at weight 0",
                vec![(":authority", "reviews"), ("x-canary", "always")],
                Some(0),
                r("v2", Reason::Rule),
            ),
            (
                "qa header must match exactly",
                vec![(":authority", "reviews"), ("x-canary", "always!")],
                Some(0),
                r("v1", Reason::Random),
            ),
            (
                "cookie prefix",
                vec![
                    (":authority", "reviews:9080"),
                    ("cookie", "a=1; canary=v2-beta"),
                ],
                Some(0),
                r("v2", Reason::Rule),
            ),
            (
                "cookie rule in a later cookie line (HTTP/1.1 may send several)",
                vec![
                    (":authority", "reviews"),
                    ("cookie", "a=1; b=2"),
                    ("cookie", "canary=v2-beta"),
                ],
                Some(0),
                r("v2", Reason::Rule),
            ),
            (
                "the first cookie of that name wins across lines",
                vec![
                    (":authority", "reviews"),
                    ("cookie", "canary=v1"),
                    ("cookie", "canary=v2"),
                ],
                Some(0),
                r("v1", Reason::Random),
            ),
            (
                "cookie other value",
                vec![(":authority", "reviews"), ("cookie", "canary=v1")],
                Some(0),
                r("v1", Reason::Random),
            ),
            (
                "query present",
                vec![(":authority", "reviews"), (":path", "/x?canary")],
                Some(0),
                r("v2", Reason::Rule),
            ),
            (
                "query absent",
                vec![(":authority", "reviews"), (":path", "/x?other=canary")],
                Some(0),
                r("v1", Reason::Random),
            ),
            (
                "first rule wins",
                vec![
                    (":authority", "reviews"),
                    ("x-stable", "1"),
                    ("x-canary", "always"),
                ],
                Some(0),
                r("v2", Reason::Rule),
            ),
            (
                "later rule",
                vec![(":authority", "reviews"), ("x-stable", "1")],
                Some(0),
                r("v1", Reason::Rule),
            ),
            (
                "sticky key",
                vec![
                    (":authority", "REVIEWS.default.svc.cluster.local."),
                    ("x-user-id", "u1"),
                ],
                Some(0),
                r("v1", Reason::Sticky),
            ),
            (
                "empty sticky key falls back to request id",
                vec![
                    (":authority", "reviews"),
                    ("x-user-id", ""),
                    ("x-request-id", "abc"),
                ],
                Some(0),
                r("v1", Reason::RequestId),
            ),
            (
                "request id",
                vec![(":authority", "reviews"), ("x-request-id", "abc")],
                Some(0),
                r("v1", Reason::RequestId),
            ),
            (
                "random",
                vec![(":authority", "reviews")],
                Some(9999),
                r("v1", Reason::Random),
            ),
            (
                "no randomness",
                vec![(":authority", "reviews")],
                None,
                r("v1", Reason::Fallback),
            ),
            (
                "unknown host",
                vec![(":authority", "details")],
                Some(0),
                None,
            ),
            ("no authority", vec![], Some(0), None),
            (
                "suffix host and path prefix",
                vec![(":authority", "eu.ratings.example"), (":path", "/api/x")],
                Some(9000),
                Some((1, "c".into(), Reason::Random)),
            ),
            (
                "path prefix mismatch",
                vec![(":authority", "eu.ratings.example"), (":path", "/web")],
                Some(0),
                None,
            ),
            (
                "path prefix needs path",
                vec![(":authority", "eu.ratings.example")],
                Some(0),
                None,
            ),
        ];
        for (name, headers, random, expected) in cases {
            assert_eq!(pick(&config, &headers, random), expected, "{name}");
        }
    }

    #[test]
    fn cookie_sticky_key_uses_the_cookie() {
        let config = reviews([5000, 5000], "");
        let (route, _, reason) = pick(
            &config,
            &[
                (":authority", "x.ratings.example"),
                (":path", "/api"),
                ("cookie", "session=abc"),
            ],
            Some(0),
        )
        .unwrap();
        assert_eq!((route, reason), (1, Reason::Sticky));
        let (_, _, reason) = pick(
            &config,
            &[
                (":authority", "x.ratings.example"),
                (":path", "/api"),
                ("cookie", "other=abc"),
            ],
            Some(0),
        )
        .unwrap();
        assert_eq!(reason, Reason::Random);
        // The session cookie in a second `cookie` line is the sticky key all the same, and gives
        // the variant it gives in a single line.
        let one_line = pick(
            &config,
            &[
                (":authority", "x.ratings.example"),
                (":path", "/api"),
                ("cookie", "theme=dark; session=abc"),
            ],
            Some(0),
        );
        let two_lines = pick(
            &config,
            &[
                (":authority", "x.ratings.example"),
                (":path", "/api"),
                ("cookie", "theme=dark"),
                ("cookie", "session=abc"),
            ],
            Some(0),
        );
        assert_eq!(two_lines, one_line);
        assert_eq!(two_lines.unwrap().2, Reason::Sticky);
    }

    /// Inputs with a counter for visitor ids, so each new visitor gets a distinct one.
    struct Draws {
        next_visitor: u128,
        bucket: Option<u32>,
    }

    impl Inputs for Draws {
        fn random_bucket(&mut self) -> Option<u32> {
            self.bucket
        }
        fn visitor_bits(&mut self) -> Option<u128> {
            self.next_visitor = self
                .next_visitor
                .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                .wrapping_add(0x5851_f42d_4c95_7f2d_1405_7b7e_f767_814f);
            Some(self.next_visitor)
        }
    }

    fn assigning(canary_weight: u32) -> CheckedConfig {
        config(json!({"routes": [{
            "name": "shop", "hosts": ["*"],
            "variants": [{"name": "v1", "weight": 10000 - canary_weight}, {"name": "v2", "weight": canary_weight}],
            "rules": [{"header": "x-canary", "exact": "always", "variant": "v2"}],
            "sticky": {"cookie": "mc", "salt": "s", "assign": {"maxAge": 3600}}
        }]}))
    }

    #[test]
    fn a_visitor_without_the_cookie_is_assigned_one() {
        let config = assigning(5000);
        let mut draws = Draws {
            next_visitor: 7,
            bucket: Some(0),
        };
        let request = FakeRequest::new(&[(":authority", "shop"), ("x-request-id", "r1")]);
        let first = choose(&config, &request, &mut draws).unwrap();
        assert_eq!(first.reason, Reason::Assigned);
        let id = first.visitor.unwrap();
        assert_eq!(id.as_str().len(), 22);
        assert!(id
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        // Coming back with the cookie, the visitor is placed by it: same variant, no new id.
        let cookie = format!("theme=dark; mc={}", id.as_str());
        let back = FakeRequest::new(&[(":authority", "shop"), ("cookie", &cookie)]);
        let again = choose(&config, &back, &mut draws).unwrap();
        assert_eq!(
            (again.variant, again.reason, again.visitor),
            (first.variant, Reason::Sticky, None)
        );
        // An empty cookie is no cookie; a rule still comes first and assigns nothing.
        let empty = FakeRequest::new(&[(":authority", "shop"), ("cookie", "mc=")]);
        assert_eq!(
            choose(&config, &empty, &mut draws).unwrap().reason,
            Reason::Assigned
        );
        let qa = FakeRequest::new(&[(":authority", "shop"), ("x-canary", "always")]);
        let ruled = choose(&config, &qa, &mut draws).unwrap();
        assert_eq!((ruled.reason, ruled.visitor), (Reason::Rule, None));
        // Without randomness for an id, the request is placed as before: by its request id.
        let no_ids = choose(&config, &request, &mut || Some(0)).unwrap();
        assert_eq!((no_ids.reason, no_ids.visitor), (Reason::RequestId, None));
    }

    #[test]
    fn assigned_visitors_split_by_weight_and_only_move_to_the_canary() {
        let mut draws = Draws {
            next_visitor: 1,
            bucket: None,
        };
        let request = FakeRequest::new(&[(":authority", "shop")]);
        let visitors: Vec<(String, usize)> = (0..20_000)
            .map(|_| {
                let d = choose(&assigning(2000), &request, &mut draws).unwrap();
                (d.visitor.unwrap().as_str().to_string(), d.variant)
            })
            .collect();
        let canary = visitors.iter().filter(|(_, v)| *v == 1).count();
        assert!((3_700..=4_300).contains(&canary), "{canary} of 20000");
        let ids: std::collections::HashSet<&String> = visitors.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), visitors.len(), "every visitor has its own id");
        // Weights rise: each visitor, coming back with its cookie, stays or moves to the canary.
        for weight in [2000, 5000, 9000] {
            let config = assigning(weight);
            for (id, assigned) in visitors.iter().take(2000) {
                let cookie = format!("mc={id}");
                let back = FakeRequest::new(&[(":authority", "shop"), ("cookie", &cookie)]);
                let now = choose(&config, &back, &mut draws).unwrap();
                assert_eq!(now.reason, Reason::Sticky);
                assert!(now.variant >= *assigned, "{id} moved back at {weight}");
                if weight == 2000 {
                    assert_eq!(now.variant, *assigned, "{id} flipped at the same weight");
                }
            }
        }
    }

    /// Inputs at a fixed time, for signed tokens.
    struct At(u64);

    impl Inputs for At {
        fn random_bucket(&mut self) -> Option<u32> {
            Some(0)
        }
        fn now_unix(&self) -> Option<u64> {
            Some(self.0)
        }
    }

    #[test]
    fn signed_tokens_open_their_variant_and_refusals_are_noted() {
        let secret = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
        let config = config(json!({"routes": [{
            "name": "shop", "hosts": ["*"],
            "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}, {"name": "v3", "weight": 0}],
            "rules": [
                {"header": "x-qa", "tokenKeys": [format!("k1:{secret}")]},
                {"query": "qa", "tokenKeys": [format!("k1:{secret}")]},
                {"header": "x-canary", "exact": "always", "variant": "v3"}
            ],
            "sticky": {"header": "x-user-id"}
        }]}));
        let key = token::TokenKey::parse(&format!("k1:{secret}")).unwrap();
        let v2 = token::mint(&key, "v2", 2_000);
        let v9 = token::mint(&key, "v9", 2_000);
        let path = format!("/p?qa={v2}");
        let on = |headers: &[(&str, &str)]| {
            let mut all = vec![(":authority", "shop"), ("x-user-id", "u1")];
            all.extend_from_slice(headers);
            let d = choose(&config, &FakeRequest::new(&all), &mut At(1_000)).unwrap();
            (
                config.routes[0].variants[d.variant].as_str(),
                d.reason,
                d.token_rejection,
            )
        };
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str)>,
            (&'a str, Reason, Option<Rejection>),
        );
        let cases: Vec<Case> = vec![
            ("no token", vec![], ("v1", Reason::Sticky, None)),
            (
                "valid token",
                vec![("x-qa", &v2)],
                ("v2", Reason::Rule, None),
            ),
            (
                "valid token in the query",
                vec![(":path", &path)],
                ("v2", Reason::Rule, None),
            ),
            (
                "forged token: placed as without it",
                vec![(
                    "x-qa",
                    "k1.v2.2000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                )],
                ("v1", Reason::Sticky, Some(Rejection::BadSignature)),
            ),
            (
                "a plain value is no token",
                vec![("x-qa", "always")],
                ("v1", Reason::Sticky, Some(Rejection::Malformed)),
            ),
            (
                "a variant the route lacks",
                vec![("x-qa", &v9)],
                ("v1", Reason::Sticky, Some(Rejection::UnknownVariant)),
            ),
            (
                "a refused token does not stop later rules",
                vec![("x-qa", "nonsense"), ("x-canary", "always")],
                ("v3", Reason::Rule, Some(Rejection::Malformed)),
            ),
        ];
        for (name, headers, expected) in cases {
            assert_eq!(on(&headers), expected, "{name}");
        }
        // Expired: the same token after its time.
        let request = FakeRequest::new(&[(":authority", "shop"), ("x-qa", &v2)]);
        let late = choose(&config, &request, &mut At(2_000)).unwrap();
        assert_eq!(
            (late.reason, late.token_rejection),
            (Reason::Random, Some(Rejection::Expired))
        );
    }

    #[test]
    fn visitor_ids_are_the_base64url_of_their_bits() {
        let cases: &[(u128, &str)] = &[
            (0, "AAAAAAAAAAAAAAAAAAAAAA"),
            (u128::MAX, "_____________________w"),
            (1, "AAAAAAAAAAAAAAAAAAAAAQ"),
        ];
        for (bits, id) in cases {
            assert_eq!(VisitorId::from_bits(*bits).as_str(), *id);
        }
    }

    #[test]
    fn reads_only_the_headers_it_needs() {
        let config = reviews([9000, 1000], "");
        // Host mismatch: only :authority is read.
        let request = FakeRequest::new(&[(":authority", "details")]);
        assert_eq!(choose(&config, &request, &mut || Some(0)), None);
        assert_eq!(request.reads.get(), 1);
        // Sticky hit on the first route: authority, 4 rule sources (cookie and path once each), sticky key.
        let request = FakeRequest::new(&[(":authority", "reviews"), ("x-user-id", "u")]);
        assert!(choose(&config, &request, &mut || Some(0)).is_some());
        assert_eq!(request.reads.get(), 6);
    }

    #[test]
    fn random_draw_is_only_taken_when_needed() {
        let config = reviews([9000, 1000], "");
        let request = FakeRequest::new(&[(":authority", "reviews"), ("x-request-id", "id")]);
        let drawn = Cell::new(false);
        choose(&config, &request, &mut || {
            drawn.set(true);
            Some(0)
        });
        assert!(!drawn.get());
    }

    #[test]
    fn buckets_map_to_variants_in_order() {
        let config = config(
            json!({"routes": [{"name": "r", "hosts": ["*"], "variants": [
            {"name": "a", "weight": 100}, {"name": "zero", "weight": 0}, {"name": "b", "weight": 9900}]}]}),
        );
        let route = &config.routes[0];
        let cases = [
            (0, 0),
            (99, 0),
            (100, 2),
            (9999, 2),
            (10000, 0),
            (u32::MAX, 0),
        ];
        for (bucket, variant) in cases {
            assert_eq!(
                variant_for_bucket(route, bucket),
                variant,
                "bucket {bucket}"
            );
        }
    }

    #[test]
    fn random_split_converges_to_weights() {
        // Every bucket once: the split is exact.
        let config = config(
            json!({"routes": [{"name": "r", "hosts": ["*"], "variants": [
            {"name": "a", "weight": 7000}, {"name": "b", "weight": 2999}, {"name": "c", "weight": 1}]}]}),
        );
        let mut counts = [0u32; 3];
        for bucket in 0..TOTAL_WEIGHT {
            counts[variant_for_bucket(&config.routes[0], bucket)] += 1;
        }
        assert_eq!(counts, [7000, 2999, 1]);
    }

    #[test]
    fn request_ids_split_close_to_weights() {
        let config = reviews([9000, 1000], "");
        let canary = (0..100_000)
            .filter(|i| {
                let id = format!("{i:08x}-4b7e-9f2a-request");
                pick(
                    &config,
                    &[(":authority", "reviews"), ("x-request-id", &id)],
                    None,
                )
                .unwrap()
                .1 == "v2"
            })
            .count();
        assert!((9_500..=10_500).contains(&canary), "{canary}");
    }

    fn sticky_variant(weights: [u32; 2], salt: &str, user: &str) -> String {
        pick(
            &reviews(weights, salt),
            &[(":authority", "reviews"), ("x-user-id", user)],
            None,
        )
        .unwrap()
        .1
    }

    proptest! {
        #[test]
        fn sticky_users_only_move_from_stable_to_canary(user in "[a-z0-9]{1,16}", low in 0u32..=10000, high in 0u32..=10000) {
            let (low, high) = (low.min(high), low.max(high));
            let before = sticky_variant([10000 - low, low], "s", &user);
            let after = sticky_variant([10000 - high, high], "s", &user);
            prop_assert!(!(before == "v2" && after == "v1"), "moved back at {low} -> {high}");
        }

        #[test]
        fn sticky_users_keep_their_variant(user in "[a-z0-9]{1,16}", weight in 0u32..=10000) {
            prop_assert_eq!(sticky_variant([10000 - weight, weight], "s", &user), sticky_variant([10000 - weight, weight], "s", &user));
        }

        #[test]
        fn moving_weight_between_the_first_two_variants_leaves_the_others_alone(user in "[a-z0-9]{1,16}", shift in 0u32..=4000) {
            // A/B/n: variants own consecutive ranges, so weight moved from the first to the second
            // variant moves users only from the first to the second; users of later variants stay.
            let cfg = |first: u32, second: u32| config(json!({"routes": [{"name": "r", "hosts": ["*"],
                "sticky": {"header": "u"},
                "variants": [{"name": "a", "weight": first}, {"name": "b", "weight": second}, {"name": "c", "weight": 3000}]}]}));
            let before = pick(&cfg(5000, 2000), &[(":authority", "h"), ("u", &user)], None).unwrap().1;
            let after = pick(&cfg(5000 - shift, 2000 + shift), &[(":authority", "h"), ("u", &user)], None).unwrap().1;
            if before != "a" {
                prop_assert_eq!(before, after);
            } else {
                prop_assert!(after == "a" || after == "b", "{} moved to {}", user, after);
            }
        }

        #[test]
        fn any_headers_give_a_decision_or_none(
            authority in proptest::collection::vec(any::<u8>(), 0..64),
            cookie in proptest::collection::vec(any::<u8>(), 0..256),
            path in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let config = reviews([5000, 5000], "");
            let request = FakeRequest {
                headers: [(":authority", authority), ("cookie", cookie), (":path", path)]
                    .into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                reads: Cell::new(0),
            };
            if let Some(d) = choose(&config, &request, &mut || Some(1)) {
                prop_assert!(d.variant < config.routes[d.route].variants.len());
            }
        }
    }

    #[test]
    fn a_new_salt_draws_a_different_cohort() {
        let users: Vec<String> = (0..2000).map(|i| format!("user{i}")).collect();
        let cohort = |salt: &str| -> Vec<bool> {
            users
                .iter()
                .map(|u| sticky_variant([8000, 2000], salt, u) == "v2")
                .collect()
        };
        let (a, b) = (cohort("r1"), cohort("r2"));
        let same_canary = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
        let canary = a.iter().filter(|x| **x).count();
        assert!((300..=500).contains(&canary), "{canary}");
        // Independent cohorts overlap by about 20 % of the canary users, not 100 %.
        assert!(same_canary < canary / 2, "{same_canary} of {canary}");
    }
}

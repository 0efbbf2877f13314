//! The filter's configuration: the JSON a WasmPlugin's `pluginConfig` carries, and its validation.
//!
//! [`FilterConfig`] and its parts are the schema as a user writes it (YAML in a WasmPlugin, JSON on
//! the wire): unknown fields are errors, names are camelCase. [`CheckedConfig::try_from`] validates it
//! and returns a form the request path can use without further checks. Every error names the field
//! path and the reason, e.g. `routes[2].variants[1].weight: 10001 exceeds 10000`.
//!
//! A complete example:
//!
//! ```json
//! {
//!   "generation": 7,
//!   "variantHeader": "x-meshcanary-variant",
//!   "responseHeader": "x-meshcanary",
//!   "routes": [{
//!     "name": "reviews",
//!     "hosts": ["reviews", "reviews.default.svc.cluster.local"],
//!     "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
//!     "rules": [
//!       {"header": "x-canary", "exact": "always", "variant": "v2"},
//!       {"cookie": "meshcanary", "exact": "v2", "variant": "v2"}
//!     ],
//!     "sticky": {"header": "x-user-id", "salt": "release-42"}
//!   }]
//! }
//! ```

use crate::host_index::HostIndex;
use crate::token::TokenKey;
use serde::{Deserialize, Serialize};

/// Makes a schema struct deserializable from a JSON object only.
///
/// serde's derived `Deserialize` for a struct also accepts a sequence of its fields in order, so
/// `[42]` would read as `{"generation": 42}` and `[]` as an empty config — nothing a user means,
/// and nothing `deny_unknown_fields` catches. Each schema struct therefore derives with
/// `#[serde(remote = "Self")]`, which turns the derived code into inherent functions, and this
/// implements the traits: `Serialize` as derived, `Deserialize` by asking the deserializer for a
/// map (`deserialize_map` refuses a sequence) and handing the map to the derived code.
macro_rules! objects_only {
    ($($ty:ident),+ $(,)?) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Object;
                impl<'de> serde::de::Visitor<'de> for Object {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $ty::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(Object)
            }
        }
    )+};
}

objects_only!(
    FilterConfig,
    RouteConfig,
    VariantConfig,
    RuleConfig,
    StickyConfig,
    AssignConfig,
);

/// Weights are in basis points: 10000 is all of a route's traffic, 1 is 0.01 %.
pub const TOTAL_WEIGHT: u32 = 10_000;
/// The request header the filter writes when the config does not name one.
pub const DEFAULT_VARIANT_HEADER: &str = "x-meshcanary-variant";
/// At most this many routes in one config: enough for a route per service of a large mesh. The
/// decision finds a request's routes through an index built at configure time, so the number of
/// routes does not change what a request costs.
pub const MAX_ROUTES: usize = 4096;
/// At most this many host patterns per route.
pub const MAX_HOSTS: usize = 64;
/// At most this many variants per route.
pub const MAX_VARIANTS: usize = 16;
/// At most this many QA rules per route; they are evaluated in order on every request.
pub const MAX_RULES: usize = 64;
/// Longest route or variant name (they become stat labels).
pub const MAX_NAME_LEN: usize = 64;
/// Longest header, cookie or query parameter name, and longest `Path` of an assigned cookie.
pub const MAX_KEY_LEN: usize = 256;
/// Longest value a rule compares against, and longest path prefix.
pub const MAX_VALUE_LEN: usize = 4096;
/// Longest sticky salt: it is hashed with the key on every request, so it stays short.
pub const MAX_SALT_LEN: usize = 256;
/// Longest host pattern (a DNS name is at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;

/// The whole filter configuration, as written in a WasmPlugin's `pluginConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterConfig {
    /// Which push this is. The control service increments it on every change; the filter exports it
    /// as the `meshcanary_config_generation` gauge so a pusher can see when a proxy runs its config.
    #[serde(default)]
    pub generation: u64,
    /// The request header the filter writes the chosen variant into, and that routes match on.
    /// Defaults to `x-meshcanary-variant`. Any value a client sends in it is replaced or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_header: Option<String>,
    /// If set, the filter adds this response header with the variant and the reason it was chosen
    /// (`v2; reason=rule`), so a QA engineer sees what they got. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header: Option<String>,
    /// The routes the filter splits, tried in order; the first whose hosts and path prefix match a
    /// request decides it. Requests that match no route pass through untouched (apart from the variant
    /// header being removed) and are counted in `meshcanary_unmatched_total`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One destination whose traffic is split between variants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// The route's name: the `route` label of its stats, and how the control service refers to it.
    /// Letters, digits, `_` and `-`, at most 64 characters, unique in the config.
    pub name: String,
    /// Which `:authority` values this route matches, compared without the port and case-insensitively:
    /// an exact name (`reviews`, `reviews.default.svc.cluster.local`), a suffix pattern
    /// (`*.example.com` matches `a.example.com`, not `example.com`) or `*` for any host.
    /// A service reached by several names lists each of them.
    pub hosts: Vec<String>,
    /// If set, the route also requires the request path (before `?`) to start with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// One or more variants and their weights. The first one is the stable (baseline) variant: it
    /// gets the traffic when anything goes wrong. Weights sum to 10000. Between releases a route
    /// may hold its stable variant alone (the control service retires the others).
    pub variants: Vec<VariantConfig>,
    /// QA rules, evaluated in order before any weight; the first that matches forces its variant,
    /// whatever that variant's weight (even 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Keeps a user on one variant: the variant comes from `hash(salt, key)` instead of a coin toss.
    /// Without it (or when a request lacks the key) the filter hashes `x-request-id` if present,
    /// else draws at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// Decide and count, but do not write the variant header, so routing is unchanged. For trying a
    /// config on live traffic: the stats show what the split would be.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Traffic mirroring: at most one entry `{"name", "weight"}`, whose variant `name` receives a
    /// copy of `weight` basis points (1 to 10000) of the requests placed on the route's other
    /// variants; the copies' responses are discarded, clients only ever see the variant they were
    /// placed on. The filter writes `name` into the `x-meshcanary-mirror` request header of each
    /// request it picks (and removes any value a client sent), and the proxy's route mirrors on
    /// that header: the standalone bootstrap has a `request_mirror_policies` entry per variant,
    /// while in a mesh the VirtualService's `mirror` does the copying. (A list, as Istio's
    /// `mirrors`, and the same type as `variants`, whose parsing code the module already has.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<VariantConfig>,
}

/// A variant of a route and its share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct VariantConfig {
    /// The value written to the variant header (what routes match on) and the `variant` stat label.
    /// Letters, digits, `_` and `-`, at most 64 characters, unique in the route.
    pub name: String,
    /// Share of the route's traffic in basis points (0 to 10000; 1 = 0.01 %).
    pub weight: u32,
}

/// A QA rule: when a request carries this header, cookie or query parameter with a matching value,
/// it goes to `variant`. Exactly one of `header`, `cookie`, `query` is set, and exactly one of
/// `exact`, `prefix`, `present` — or, for a signed rule, `tokenKeys` (and no `variant`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConfig {
    /// The variant a matching request is sent to. Required, except in a signed rule, whose
    /// tokens name their variant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// Match on this request header (case-insensitive name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Match on this cookie (case-sensitive name), found in any of the request's `cookie` headers
    /// (HTTP/1.1 clients may send several lines; they form one list, as RFC 6265 says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Match on this query parameter (case-sensitive name, compared as sent, without percent-decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The value must equal this, byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value must start with this (non-empty) prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `true`: the header, cookie or parameter only has to be there, with any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Makes this a signed rule: the value is a QA token `<key id>.<variant>.<expiry>.<mac>`
    /// (see `meshcanary qa-token`), and a request whose token is signed by one of these keys and
    /// not expired goes to the token's variant. Each key is `"<key id>:<secret>"`, the secret 32
    /// to 64 random bytes in base64; list several to rotate. A token that does not check out is
    /// ignored (and counted), as if the rule were not there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_keys: Vec<String>,
}

/// Where the sticky user key comes from. Exactly one of `header` and `cookie` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct StickyConfig {
    /// Take the key from this request header, e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Take the key from this cookie, e.g. `session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Mixed into the hash. Keep it to keep every user's variant; change it to draw a new cohort
    /// (for example per release). At most [`MAX_SALT_LEN`] bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// Only with `cookie`: a visitor who comes without the cookie gets one. The filter draws a
    /// random id, places this request by it like any sticky key, and sets the cookie on the
    /// response (`Set-Cookie`), so the visitor's next requests stick to the same variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign: Option<AssignConfig>,
}

/// The cookie the filter sets for a new visitor: its attributes (the name is `sticky.cookie`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
pub struct AssignConfig {
    /// `Max-Age` in seconds, 1 to 34560000 (400 days, the most browsers keep a cookie). Unset: a
    /// session cookie, gone when the browser closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    /// `Path`; default `/`, so the cookie comes with every request to the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Secure`: sent over HTTPS only. Default false (set it where clients reach you over HTTPS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub secure: bool,
    /// `HttpOnly`: not readable by scripts. Default true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub http_only: bool,
    /// `SameSite`: `Strict`, `Lax` (default) or `None` (which browsers accept only with `secure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_true(value: &bool) -> bool {
    *value
}

fn yes() -> bool {
    true
}

/// Longest `Max-Age` of an assigned cookie: 400 days, the limit browsers apply anyway.
pub const MAX_COOKIE_AGE: u32 = 400 * 24 * 3600;

/// A config that failed to parse or validate: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ConfigError {
    /// The field path, e.g. `routes[2].variants[1].weight`; empty for the document as a whole.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated configuration, ready for the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedConfig {
    /// See [`FilterConfig::generation`].
    pub generation: u64,
    /// The request header carrying the variant, lowercase.
    pub variant_header: String,
    /// The response header echoing the decision, lowercase, if any.
    pub response_header: Option<String>,
    /// The routes, in the order they are tried.
    pub routes: Vec<CheckedRoute>,
    /// The routes by host, so that finding a request's route does not grow with their number.
    pub host_index: HostIndex,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRoute {
    /// See [`RouteConfig::name`].
    pub name: String,
    /// Host patterns, normalised to lowercase.
    pub hosts: Vec<HostPattern>,
    /// See [`RouteConfig::path_prefix`].
    pub path_prefix: Option<String>,
    /// Variant names, in config order; index 0 is the stable variant.
    pub variants: Vec<String>,
    /// Cumulative weights: variant `i` owns buckets `[upper[i-1], upper[i])`. The last is 10000.
    pub bucket_upper_bounds: Vec<u32>,
    /// QA rules in evaluation order.
    pub rules: Vec<CheckedRule>,
    /// The sticky key, if any.
    pub sticky: Option<CheckedSticky>,
    /// Salt for hashing (sticky key or `x-request-id`); empty without `sticky`.
    pub salt: String,
    /// See [`RouteConfig::dry_run`].
    pub dry_run: bool,
    /// See [`RouteConfig::mirrors`].
    pub mirror: Option<CheckedMirror>,
}

/// A validated entry of [`RouteConfig::mirrors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedMirror {
    /// The variant that receives the copies: an index into [`CheckedRoute::variants`].
    pub to: usize,
    /// Share of the other variants' requests copied, in basis points (1 to 10000).
    pub basis_points: u32,
}

/// A host pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: every request.
    Any,
    /// One exact host name (lowercase).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any host ending in it.
    Suffix(String),
}

impl HostPattern {
    /// Whether `host` (already without port, any case) matches.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
            }
        }
    }
}

/// A validated QA rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRule {
    /// Where the value comes from.
    pub source: ValueSource,
    /// How it is compared.
    pub matcher: ValueMatch,
    /// Index of the forced variant in [`CheckedRoute::variants`] (unused for a signed rule: the
    /// token names it).
    pub variant: usize,
}

/// Where a rule or sticky key reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie from any of the request's `cookie` headers.
    Cookie(String),
    /// A query parameter of `:path`.
    Query(String),
}

/// How a rule compares a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal bytes.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Any value.
    Present,
    /// A signed QA token, checked against these keys ([`crate::token::verify`]); the variant is
    /// the token's.
    Token(Vec<TokenKey>),
}

impl ValueMatch {
    /// Whether `value` satisfies this matcher (a token never does here: it is verified, not
    /// compared).
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(expected) => value == expected.as_bytes(),
            ValueMatch::Prefix(prefix) => value.starts_with(prefix.as_bytes()),
            ValueMatch::Present => true,
            ValueMatch::Token(_) => false,
        }
    }
}

/// At most this many keys in a signed rule.
pub const MAX_TOKEN_KEYS: usize = 8;

/// A validated sticky key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSticky {
    /// A header or a cookie (never a query parameter).
    pub source: ValueSource,
    /// For a cookie: the cookie to set for a visitor without one.
    pub assign: Option<CheckedAssign>,
}

/// A validated [`AssignConfig`], ready to be written into `Set-Cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAssign {
    /// The cookie's name (`sticky.cookie`).
    pub cookie: String,
    /// Its attributes as they follow the value: `; Max-Age=…; Path=/; HttpOnly; SameSite=Lax`.
    pub attributes: String,
}

impl CheckedAssign {
    /// The `Set-Cookie` value giving a visitor `id`.
    pub fn set_cookie(&self, id: &str) -> String {
        format!("{}={id}{}", self.cookie, self.attributes)
    }
}

impl CheckedConfig {
    /// Parses and validates the raw bytes Envoy hands the filter. Empty input (a WasmPlugin without
    /// `pluginConfig`) is a valid config with no routes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::try_from(FilterConfig::from_json(bytes)?)
    }
}

impl FilterConfig {
    /// Parses the JSON form without validating it; errors name the field path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes).map_err(|error| {
            let field = crate::json_path::path_at(bytes, error.line(), error.column());
            ConfigError::new(field, error.to_string())
        })
    }

    /// The canonical JSON form, as pushed to the filter.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// This config as it may be shown to people who only read it (the control service's
    /// `GET /v1/routes`): every signed rule's secrets replaced by [`REDACTED`], key ids kept.
    pub fn redacted(&self) -> FilterConfig {
        let mut config = self.clone();
        for route in &mut config.routes {
            for rule in &mut route.rules {
                *rule = rule.redacted();
            }
        }
        config
    }
}

/// What a signed rule's secret shows as where the config is shown rather than pushed.
pub const REDACTED: &str = "<redacted>";

impl RuleConfig {
    /// This rule with the secrets of its `tokenKeys` replaced by [`REDACTED`] (`k1:<redacted>`).
    pub fn redacted(&self) -> RuleConfig {
        let mut rule = self.clone();
        for key in &mut rule.token_keys {
            let id = key.split(':').next().unwrap_or_default();
            *key = format!("{id}:{REDACTED}");
        }
        rule
    }
}

impl TryFrom<FilterConfig> for CheckedConfig {
    type Error = ConfigError;

    fn try_from(raw: FilterConfig) -> Result<Self, ConfigError> {
        let variant_header = match &raw.variant_header {
            Some(name) => checked_header_name(&Field::Top("variantHeader"), name)?,
            None => DEFAULT_VARIANT_HEADER.to_string(),
        };
        if RESERVED_HEADERS.contains(&variant_header.as_str()) {
            return Err(Field::Top("variantHeader").error(format!(
                "{variant_header:?} is a header Envoy, HTTP or the filter itself uses; pick another name"
            )));
        }
        let response_header = raw
            .response_header
            .as_deref()
            .map(|name| checked_header_name(&Field::Top("responseHeader"), name))
            .transpose()?;
        let routes_field = Field::Top("routes");
        if raw.routes.len() > MAX_ROUTES {
            return Err(routes_field.error(format!(
                "{} routes exceed the limit of {MAX_ROUTES}",
                raw.routes.len()
            )));
        }
        let mut routes: Vec<CheckedRoute> = Vec::with_capacity(raw.routes.len());
        for (index, route) in raw.routes.iter().enumerate() {
            let field = routes_field.index(index);
            let checked = checked_route(&field, route)?;
            if let Some(earlier) = routes.iter().position(|r| r.name == checked.name) {
                return Err(field.key("name").error(format!(
                    "{:?} is already the name of routes[{earlier}]",
                    checked.name
                )));
            }
            check_reachable(&field, &checked, &routes)?;
            routes.push(checked);
        }
        Ok(Self {
            generation: raw.generation,
            variant_header,
            response_header,
            host_index: HostIndex::build(&routes),
            routes,
        })
    }
}

/// Headers the variant header must not replace: routing, framing or cookies would break, or
/// the filter's own mirror header (which it removes from every request it does not copy).
const RESERVED_HEADERS: &[&str] = &[
    crate::choose::MIRROR_HEADER,
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "cookie",
    "upgrade",
    "te",
    "keep-alive",
    "x-request-id",
];

// Each part of a route's validation (the `checked_*` and `check_*` functions below that take a
// part of `RouteConfig`) is `#[inline(never)]`: called once each, LLVM inlines them all into
// one large function, and that made the filter's module 428 bytes larger than these separate
// functions (bench/findings.md, the module's size).
#[inline(never)]
fn checked_route(field: &Field<'_>, route: &RouteConfig) -> Result<CheckedRoute, ConfigError> {
    // In this order, so that the first error in the config is the one reported.
    check_label(&field.key("name"), &route.name)?;
    let hosts = checked_hosts(&field.key("hosts"), &route.hosts)?;
    if let Some(prefix) = &route.path_prefix {
        check_path_prefix(&field.key("pathPrefix"), prefix)?;
    }
    let (variants, bucket_upper_bounds) =
        checked_variants(&field.key("variants"), &route.variants)?;
    let rules = checked_rules(&field.key("rules"), &route.rules, &variants)?;
    let (sticky, salt) = match &route.sticky {
        Some(sticky) => {
            let checked = checked_sticky(&field.key("sticky"), sticky)?;
            (Some(checked), sticky.salt.clone())
        }
        None => (None, String::new()),
    };
    let mirror = checked_mirrors(&field.key("mirrors"), &route.mirrors, &variants)?;
    Ok(CheckedRoute {
        name: route.name.clone(),
        hosts,
        path_prefix: route.path_prefix.clone(),
        variants,
        bucket_upper_bounds,
        rules,
        sticky,
        salt,
        dry_run: route.dry_run,
        mirror,
    })
}

/// The index of the variant `name` among the route's `variants`, or the error saying it is none
/// of them.
#[inline(never)]
fn variant_index(field: &Field<'_>, name: &str, variants: &[String]) -> Result<usize, ConfigError> {
    variants.iter().position(|v| v == name).ok_or_else(|| {
        field.error(format!(
            "{name:?} is not a variant of this route (variants: {})",
            variants.join(", ")
        ))
    })
}

/// `mirrors`: none, or one variant of the route with a share in `1..=10000`.
fn checked_mirrors(
    field: &Field<'_>,
    mirrors: &[VariantConfig],
    variants: &[String],
) -> Result<Option<CheckedMirror>, ConfigError> {
    let mirror = match mirrors {
        [] => return Ok(None),
        [mirror] => mirror,
        _ => return Err(field.error("at most 1 mirror: a request is copied to one variant")),
    };
    let field = field.index(0);
    let to = variant_index(&field.key("name"), &mirror.name, variants)?;
    if !(1..=TOTAL_WEIGHT).contains(&mirror.weight) {
        return Err(field.key("weight").error("must be 1 to 10000"));
    }
    Ok(Some(CheckedMirror {
        to,
        basis_points: mirror.weight,
    }))
}

/// `hosts`: 1 to [`MAX_HOSTS`] patterns, each valid.
#[inline(never)]
fn checked_hosts(field: &Field<'_>, hosts: &[String]) -> Result<Vec<HostPattern>, ConfigError> {
    if hosts.is_empty() {
        return Err(field.error("at least one host is required (use \"*\" for any host)"));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(field.error(format!(
            "{} hosts exceed the limit of {MAX_HOSTS}",
            hosts.len()
        )));
    }
    let mut checked = Vec::with_capacity(hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        checked.push(checked_host(&field.index(i), host)?);
    }
    Ok(checked)
}

/// `pathPrefix`: a path (no query or fragment) of bounded length.
#[inline(never)]
fn check_path_prefix(field: &Field<'_>, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') {
        return Err(field.error("must start with '/'"));
    }
    if prefix.bytes().any(|byte| matches!(byte, b'?' | b'#')) {
        return Err(field.error("must not contain '?' or '#': it is compared with the path only"));
    }
    check_len(field, prefix, MAX_VALUE_LEN)
}

/// `variants`: 1 to [`MAX_VARIANTS`] uniquely named variants whose weights sum to
/// [`TOTAL_WEIGHT`]; their names and the upper bound of each one's bucket range.
#[inline(never)]
fn checked_variants(
    field: &Field<'_>,
    variants: &[VariantConfig],
) -> Result<(Vec<String>, Vec<u32>), ConfigError> {
    if variants.is_empty() {
        return Err(field.error("needs at least 1 variant (the stable one, first)"));
    }
    if variants.len() > MAX_VARIANTS {
        return Err(field.error(format!(
            "{} variants exceed the limit of {MAX_VARIANTS}",
            variants.len()
        )));
    }
    let mut names: Vec<String> = Vec::with_capacity(variants.len());
    let mut bucket_upper_bounds = Vec::with_capacity(variants.len());
    let mut total: u32 = 0;
    for (i, variant) in variants.iter().enumerate() {
        let variant_field = field.index(i);
        check_label(&variant_field.key("name"), &variant.name)?;
        if let Some(earlier) = names.iter().position(|n| *n == variant.name) {
            return Err(variant_field.key("name").error(format!(
                "{:?} is already the name of variants[{earlier}]",
                variant.name
            )));
        }
        if variant.weight > TOTAL_WEIGHT {
            return Err(variant_field.key("weight").error(format!(
                "{} exceeds {TOTAL_WEIGHT} (weights are basis points: 10000 = 100 %)",
                variant.weight
            )));
        }
        total += variant.weight;
        names.push(variant.name.clone());
        bucket_upper_bounds.push(total);
    }
    if total != TOTAL_WEIGHT {
        return Err(field.error(format!(
            "weights sum to {total}, they must sum to {TOTAL_WEIGHT} (basis points)"
        )));
    }
    Ok((names, bucket_upper_bounds))
}

/// `rules`: at most [`MAX_RULES`], each valid and naming one of `variants`.
#[inline(never)]
fn checked_rules(
    field: &Field<'_>,
    rules: &[RuleConfig],
    variants: &[String],
) -> Result<Vec<CheckedRule>, ConfigError> {
    if rules.len() > MAX_RULES {
        return Err(field.error(format!(
            "{} rules exceed the limit of {MAX_RULES}",
            rules.len()
        )));
    }
    let mut checked = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        checked.push(checked_rule(&field.index(i), rule, variants)?);
    }
    Ok(checked)
}

/// `sticky`: exactly one key source, a bounded salt, and an assignment only for a cookie.
#[inline(never)]
fn checked_sticky(field: &Field<'_>, sticky: &StickyConfig) -> Result<CheckedSticky, ConfigError> {
    let source = match (&sticky.header, &sticky.cookie) {
        (Some(header), None) => {
            ValueSource::Header(checked_header_name(&field.key("header"), header)?)
        }
        (None, Some(cookie)) => {
            check_cookie_name(&field.key("cookie"), cookie)?;
            ValueSource::Cookie(cookie.clone())
        }
        _ => {
            return Err(one_of_field(
                field,
                &[
                    ("header", sticky.header.is_some()),
                    ("cookie", sticky.cookie.is_some()),
                ],
            )
            .error("set exactly one of \"header\" and \"cookie\""))
        }
    };
    check_len(&field.key("salt"), &sticky.salt, MAX_SALT_LEN)?;
    let assign = match (&sticky.assign, &source) {
        (None, _) => None,
        (Some(assign), ValueSource::Cookie(cookie)) => {
            Some(checked_assign(&field.key("assign"), cookie, assign)?)
        }
        (Some(_), _) => {
            return Err(field
                .key("assign")
                .error("only a cookie can be assigned; use \"cookie\" as the sticky key"))
        }
    };
    Ok(CheckedSticky { source, assign })
}

#[inline(never)]
fn checked_assign(
    field: &Field<'_>,
    cookie: &str,
    assign: &AssignConfig,
) -> Result<CheckedAssign, ConfigError> {
    let mut attributes = String::new();
    if let Some(age) = assign.max_age {
        if !(1..=MAX_COOKIE_AGE).contains(&age) {
            return Err(field.key("maxAge").error(format!(
                "{age} is outside 1..={MAX_COOKIE_AGE} seconds (400 days); leave it out for a session cookie"
            )));
        }
        attributes.push_str(&format!("; Max-Age={age}"));
    }
    let path = assign.path.as_deref().unwrap_or("/");
    let path_field = field.key("path");
    if !path.starts_with('/') {
        return Err(path_field.error("must start with '/'"));
    }
    check_len(&path_field, path, MAX_KEY_LEN)?;
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic() || *c == ';') {
        return Err(path_field.error(format!("{bad:?} cannot be in a cookie's Path")));
    }
    attributes.push_str("; Path=");
    attributes.push_str(path);
    if assign.secure {
        attributes.push_str("; Secure");
    }
    if assign.http_only {
        attributes.push_str("; HttpOnly");
    }
    let same_site = assign.same_site.as_deref().unwrap_or("Lax");
    if !["Strict", "Lax", "None"].contains(&same_site) {
        return Err(field.key("sameSite").error(format!(
            "{same_site:?} is not one of \"Strict\", \"Lax\" and \"None\""
        )));
    }
    if same_site == "None" && !assign.secure {
        return Err(field
            .key("sameSite")
            .error("\"None\" needs \"secure\": true (browsers drop the cookie otherwise)"));
    }
    attributes.push_str("; SameSite=");
    attributes.push_str(same_site);
    Ok(CheckedAssign {
        cookie: cookie.to_string(),
        attributes,
    })
}

#[inline(never)]
fn checked_rule(
    field: &Field<'_>,
    rule: &RuleConfig,
    variants: &[String],
) -> Result<CheckedRule, ConfigError> {
    let source = match (&rule.header, &rule.cookie, &rule.query) {
        (Some(header), None, None) => {
            ValueSource::Header(checked_header_name(&field.key("header"), header)?)
        }
        (None, Some(cookie), None) => {
            check_cookie_name(&field.key("cookie"), cookie)?;
            ValueSource::Cookie(cookie.clone())
        }
        (None, None, Some(query)) => {
            let query_field = field.key("query");
            if query.is_empty() {
                return Err(query_field.error("must not be empty"));
            }
            if query
                .bytes()
                .any(|byte| matches!(byte, b'&' | b'=' | b'#' | b'?'))
            {
                return Err(query_field.error("must not contain '&', '=', '#' or '?'"));
            }
            check_len(&query_field, query, MAX_KEY_LEN)?;
            ValueSource::Query(query.clone())
        }
        _ => {
            return Err(one_of_field(
                field,
                &[
                    ("header", rule.header.is_some()),
                    ("cookie", rule.cookie.is_some()),
                    ("query", rule.query.is_some()),
                ],
            )
            .error("set exactly one of \"header\", \"cookie\" and \"query\""))
        }
    };
    if !rule.token_keys.is_empty() {
        return checked_signed_rule(field, rule, source);
    }
    let matcher = match (&rule.exact, &rule.prefix, rule.present) {
        (Some(exact), None, None) => {
            check_len(&field.key("exact"), exact, MAX_VALUE_LEN)?;
            ValueMatch::Exact(exact.clone())
        }
        (None, Some(prefix), None) => {
            let prefix_field = field.key("prefix");
            if prefix.is_empty() {
                return Err(prefix_field
                    .error("must not be empty; use \"present\": true to match any value"));
            }
            check_len(&prefix_field, prefix, MAX_VALUE_LEN)?;
            ValueMatch::Prefix(prefix.clone())
        }
        (None, None, Some(true)) => ValueMatch::Present,
        (None, None, Some(false)) => {
            return Err(field
                .key("present")
                .error("only true is supported: a rule matches something the request carries"))
        }
        _ => {
            return Err(one_of_field(
                field,
                &[
                    ("exact", rule.exact.is_some()),
                    ("prefix", rule.prefix.is_some()),
                    ("present", rule.present.is_some()),
                ],
            )
            .error("set exactly one of \"exact\", \"prefix\" and \"present\""))
        }
    };
    if rule.variant.is_empty() {
        return Err(field
            .key("variant")
            .error("is required: the variant a matching request goes to"));
    }
    let variant = variant_index(&field.key("variant"), &rule.variant, variants)?;
    Ok(CheckedRule {
        source,
        matcher,
        variant,
    })
}

#[inline(never)]
fn checked_signed_rule(
    field: &Field<'_>,
    rule: &RuleConfig,
    source: ValueSource,
) -> Result<CheckedRule, ConfigError> {
    if rule.exact.is_some() || rule.prefix.is_some() || rule.present.is_some() {
        return Err(field.error(
            "a signed rule (\"tokenKeys\") compares no value: remove \"exact\", \"prefix\" and \"present\"",
        ));
    }
    if !rule.variant.is_empty() {
        return Err(field
            .key("variant")
            .error("a signed rule sends a request to its token's variant: remove \"variant\""));
    }
    let keys_field = field.key("tokenKeys");
    if rule.token_keys.len() > MAX_TOKEN_KEYS {
        return Err(keys_field.error(format!(
            "{} keys exceed the limit of {MAX_TOKEN_KEYS}",
            rule.token_keys.len()
        )));
    }
    let mut keys: Vec<TokenKey> = Vec::with_capacity(rule.token_keys.len());
    for (i, text) in rule.token_keys.iter().enumerate() {
        let key_field = keys_field.index(i);
        let key = TokenKey::parse(text).map_err(|reason| key_field.error(reason))?;
        if let Some(earlier) = keys.iter().position(|k| k.id == key.id) {
            return Err(key_field.error(format!(
                "key id {:?} is already the id of tokenKeys[{earlier}]",
                key.id
            )));
        }
        keys.push(key);
    }
    Ok(CheckedRule {
        source,
        matcher: ValueMatch::Token(keys),
        variant: 0,
    })
}

/// A later route whose every host is already claimed by an earlier route with a path prefix that
/// covers it would never see a request; that is almost always a mistake in the config.
#[inline(never)]
fn check_reachable(
    field: &Field<'_>,
    route: &CheckedRoute,
    earlier: &[CheckedRoute],
) -> Result<(), ConfigError> {
    for (index, other) in earlier.iter().enumerate() {
        let prefix_covers = match (&other.path_prefix, &route.path_prefix) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(theirs), Some(ours)) => ours.starts_with(theirs.as_str()),
        };
        let hosts_covered = route.hosts.iter().all(|host| {
            other
                .hosts
                .iter()
                .any(|theirs| theirs == host || *theirs == HostPattern::Any)
        });
        if prefix_covers && hosts_covered {
            return Err(field.key("hosts").error(format!(
                "route {:?} is unreachable: routes[{index}] ({:?}) comes first and matches all its requests",
                route.name, other.name
            )));
        }
    }
    Ok(())
}

/// Where a value sits in the config, as an error names it: `routes[2].variants[1].weight`.
///
/// Validation passes these down as it descends and writes one out only when an error names it:
/// a valid config allocates no paths, and the filter's module carries one path writer instead
/// of a `format!` or a string built at each of the many places that name a field.
#[derive(Clone, Copy)]
enum Field<'a> {
    /// A key of the document itself.
    Top(&'static str),
    /// A key of an object.
    Key(&'a Field<'a>, &'static str),
    /// An element of a list.
    Index(&'a Field<'a>, usize),
}

impl Field<'_> {
    /// The key `name` of this object.
    fn key(&self, name: &'static str) -> Field<'_> {
        Field::Key(self, name)
    }

    /// The element `index` of this list.
    fn index(&self, index: usize) -> Field<'_> {
        Field::Index(self, index)
    }

    /// The error saying that this field is wrong, and why.
    fn error(&self, reason: impl Into<String>) -> ConfigError {
        let mut path = String::new();
        self.write(&mut path);
        ConfigError::new(path, reason)
    }

    fn write(&self, path: &mut String) {
        match self {
            Field::Top(name) => path.push_str(name),
            Field::Key(object, name) => {
                object.write(path);
                path.push('.');
                path.push_str(name);
            }
            Field::Index(list, index) => {
                list.write(path);
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
}

/// Where an "exactly one of these keys" error points: at the second key given when several are
/// (the one that conflicts), else at the first key (none is given, and it is one way to fix it).
/// Naming a key, not the object, lets an API that took the object as its whole body name a field.
fn one_of_field<'a>(object: &'a Field<'a>, keys: &[(&'static str, bool)]) -> Field<'a> {
    let mut given = keys.iter().filter(|(_, set)| *set).map(|(key, _)| *key);
    let key = match (given.next(), given.next()) {
        (Some(_), Some(second)) => second,
        _ => keys.first().map_or("", |(key, _)| *key),
    };
    object.key(key)
}

fn check_len(field: &Field<'_>, value: &str, max: usize) -> Result<(), ConfigError> {
    if value.len() > max {
        return Err(field.error(format!("is {} bytes long, the limit is {max}", value.len())));
    }
    Ok(())
}

/// Route and variant names end up in stat names, where `.`, `;` and `=` would break tag extraction.
fn check_label(field: &Field<'_>, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(field.error("must not be empty"));
    }
    check_len(field, name, MAX_NAME_LEN)?;
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(field.error(format!(
            "{name:?} contains {bad:?}; use letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

/// RFC 9110 token characters, which header and cookie names are made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '.'
                | '^'
                | '_'
                | '`'
                | '|'
                | '~'
        )
}

fn checked_header_name(field: &Field<'_>, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(field.error("must not be empty"));
    }
    if name.starts_with(':') {
        return Err(field.error(format!(
            "{name:?} is a pseudo-header; use a regular header name"
        )));
    }
    check_len(field, name, MAX_KEY_LEN)?;
    if let Some(bad) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(field.error(format!(
            "{name:?} is not a valid header name: {bad:?} is not allowed"
        )));
    }
    Ok(name.to_ascii_lowercase())
}

fn check_cookie_name(field: &Field<'_>, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(field.error("must not be empty"));
    }
    check_len(field, name, MAX_KEY_LEN)?;
    if let Some(bad) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(field.error(format!(
            "{name:?} is not a valid cookie name: {bad:?} is not allowed"
        )));
    }
    Ok(())
}

#[inline(never)]
fn checked_host(field: &Field<'_>, host: &str) -> Result<HostPattern, ConfigError> {
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    check_len(field, host, MAX_HOST_LEN)?;
    let (pattern, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(field.error("must not be empty"));
    }
    let colon = name.bytes().rposition(|byte| byte == b':');
    if let Some(port) = colon.and_then(|colon| name.get(colon + 1..)) {
        if port.chars().all(|c| c.is_ascii_digit()) {
            return Err(field.error(format!(
                "{host:?} has a port; ports are ignored when matching, list the host without \":{port}\""
            )));
        }
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_'))
    {
        return Err(field.error(format!(
            "{host:?} is not a host name or pattern: {bad:?} is not allowed (use a name, \"*.suffix\" or \"*\")"
        )));
    }
    let lower = name.to_ascii_lowercase();
    Ok(if pattern {
        HostPattern::Suffix(format!(".{lower}"))
    } else {
        HostPattern::Exact(lower)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A signed rule's key: id `k1`, 32 bytes of secret.
    const KEY: &str = "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

    #[test]
    fn shown_configs_hide_the_secrets() {
        let mut value = base();
        value["routes"][0]["rules"] = json!([
            {"header": "x-canary", "exact": "always", "variant": "v2"},
            {"header": "x-qa", "tokenKeys": [KEY, KEY.replace("k1", "k0")]}
        ]);
        let raw = FilterConfig::from_json(value.to_string().as_bytes()).unwrap();
        let shown: serde_json::Value = serde_json::from_str(&raw.redacted().to_json()).unwrap();
        assert_eq!(
            shown["routes"][0]["rules"][1]["tokenKeys"],
            json!(["k1:<redacted>", "k0:<redacted>"])
        );
        assert_eq!(
            shown["routes"][0]["rules"][0],
            value["routes"][0]["rules"][0]
        );
        assert!(!raw.redacted().to_json().contains(&KEY[3..]));
        assert!(
            raw.to_json().contains(&KEY[3..]),
            "what is pushed keeps them"
        );
    }

    #[test]
    fn signed_rules_keep_their_keys_ready() {
        let mut value = base();
        value["routes"][0]["rules"] = json!([{"header": "X-QA", "tokenKeys": [KEY]}]);
        let checked = check(value.clone()).unwrap();
        let rule = &checked.routes[0].rules[0];
        assert_eq!(rule.source, ValueSource::Header("x-qa".into()));
        let ValueMatch::Token(keys) = &rule.matcher else {
            panic!("{rule:?}");
        };
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, "k1");
        // Written back without a variant.
        let raw = FilterConfig::from_json(value.to_string().as_bytes()).unwrap();
        let again: serde_json::Value = serde_json::from_str(&raw.to_json()).unwrap();
        assert_eq!(
            again["routes"][0]["rules"][0],
            json!({"header": "X-QA", "tokenKeys": [KEY]})
        );
    }

    fn base() -> serde_json::Value {
        json!({
            "generation": 3,
            "routes": [{
                "name": "reviews",
                "hosts": ["reviews", "*.example.com"],
                "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
                "rules": [{"header": "x-canary", "exact": "always", "variant": "v2"}],
                "sticky": {"header": "x-user-id", "salt": "s1"}
            }]
        })
    }

    fn check(value: serde_json::Value) -> Result<CheckedConfig, ConfigError> {
        CheckedConfig::from_json(value.to_string().as_bytes())
    }

    /// Applies `edit` to the base config and returns the validation error's field and message.
    fn error_of(edit: impl FnOnce(&mut serde_json::Value)) -> (String, String) {
        let mut value = base();
        edit(&mut value);
        let error = check(value).expect_err("config should be rejected");
        (error.field, error.reason)
    }

    #[test]
    fn accepts_the_documented_example() {
        let checked = check(base()).unwrap();
        assert_eq!(checked.generation, 3);
        assert_eq!(checked.variant_header, DEFAULT_VARIANT_HEADER);
        let route = &checked.routes[0];
        assert_eq!(route.bucket_upper_bounds, vec![9000, 10000]);
        assert_eq!(
            route.hosts,
            vec![
                HostPattern::Exact("reviews".into()),
                HostPattern::Suffix(".example.com".into())
            ]
        );
        assert_eq!(route.salt, "s1");
    }

    #[test]
    fn empty_configuration_is_a_config_without_routes() {
        for input in ["", "  \n", "{}"] {
            let checked = CheckedConfig::from_json(input.as_bytes()).unwrap();
            assert!(checked.routes.is_empty(), "{input:?}");
            assert_eq!(checked.generation, 0);
        }
    }

    #[test]
    fn rejections_name_the_field_and_the_reason() {
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(&str, Edit, &str, &str)> = vec![
            (
                "unknown top-level field",
                |v| v["routess"] = json!([]),
                "routess",
                "unknown field `routess`, expected one of",
            ),
            (
                "unknown route field",
                |v| v["routes"][0]["weight"] = json!(1),
                "routes[0].weight",
                "unknown field `weight`",
            ),
            (
                "weight above total",
                |v| v["routes"][0]["variants"][1]["weight"] = json!(10001),
                "routes[0].variants[1].weight",
                "10001 exceeds 10000",
            ),
            (
                "negative weight",
                |v| v["routes"][0]["variants"][1]["weight"] = json!(-1),
                "routes[0].variants[1].weight",
                "invalid value",
            ),
            (
                "fractional weight",
                |v| v["routes"][0]["variants"][1]["weight"] = json!(10.5),
                "routes[0].variants[1].weight",
                "invalid type",
            ),
            (
                "weights do not sum",
                |v| v["routes"][0]["variants"][1]["weight"] = json!(999),
                "routes[0].variants",
                "sum to 9999",
            ),
            (
                "mirror to an unknown variant",
                |v| v["routes"][0]["mirrors"] = json!([{"name": "v3", "weight": 100}]),
                "routes[0].mirrors[0].name",
                "\"v3\" is not a variant of this route (variants: v1, v2)",
            ),
            (
                "mirror of nothing",
                |v| v["routes"][0]["mirrors"] = json!([{"name": "v2", "weight": 0}]),
                "routes[0].mirrors[0].weight",
                "must be 1 to 10000",
            ),
            (
                "mirror of more than everything",
                |v| v["routes"][0]["mirrors"] = json!([{"name": "v2", "weight": 10001}]),
                "routes[0].mirrors[0].weight",
                "must be 1 to 10000",
            ),
            (
                "mirror without a share",
                |v| v["routes"][0]["mirrors"] = json!([{"name": "v2"}]),
                "routes[0].mirrors[0]",
                "missing field `weight`",
            ),
            (
                "unknown mirror field",
                |v| v["routes"][0]["mirrors"] = json!([{"name": "v2", "weight": 1, "from": "v1"}]),
                "routes[0].mirrors[0].from",
                "unknown field `from`",
            ),
            (
                "two mirrors",
                |v| {
                    v["routes"][0]["mirrors"] =
                        json!([{"name": "v2", "weight": 1}, {"name": "v1", "weight": 1}])
                },
                "routes[0].mirrors",
                "at most 1 mirror",
            ),
            (
                "a mirror that is not a list",
                |v| v["routes"][0]["mirrors"] = json!({"name": "v2", "weight": 1}),
                "routes[0].mirrors",
                "invalid type",
            ),
            (
                "no variant",
                |v| v["routes"][0]["variants"] = json!([]),
                "routes[0].variants",
                "at least 1 variant",
            ),
            (
                "duplicate variant",
                |v| v["routes"][0]["variants"][1]["name"] = json!("v1"),
                "routes[0].variants[1].name",
                "already the name of variants[0]",
            ),
            (
                "variant name with dot",
                |v| v["routes"][0]["variants"][1]["name"] = json!("v.2"),
                "routes[0].variants[1].name",
                "contains '.'",
            ),
            (
                "empty route name",
                |v| v["routes"][0]["name"] = json!(""),
                "routes[0].name",
                "must not be empty",
            ),
            (
                "long route name",
                |v| v["routes"][0]["name"] = json!("r".repeat(65)),
                "routes[0].name",
                "limit is 64",
            ),
            (
                "no hosts",
                |v| v["routes"][0]["hosts"] = json!([]),
                "routes[0].hosts",
                "at least one host",
            ),
            (
                "host with port",
                |v| v["routes"][0]["hosts"][0] = json!("reviews:9080"),
                "routes[0].hosts[0]",
                "without \":9080\"",
            ),
            (
                "host with slash",
                |v| v["routes"][0]["hosts"][1] = json!("a/b"),
                "routes[0].hosts[1]",
                "'/' is not allowed",
            ),
            (
                "path prefix without slash",
                |v| v["routes"][0]["pathPrefix"] = json!("api"),
                "routes[0].pathPrefix",
                "must start with '/'",
            ),
            (
                "path prefix with query",
                |v| v["routes"][0]["pathPrefix"] = json!("/a?b"),
                "routes[0].pathPrefix",
                "must not contain",
            ),
            (
                "rule without source",
                |v| v["routes"][0]["rules"][0] = json!({"exact": "a", "variant": "v2"}),
                "routes[0].rules[0].header",
                "exactly one of \"header\", \"cookie\" and \"query\"",
            ),
            (
                "rule with two sources",
                |v| v["routes"][0]["rules"][0]["cookie"] = json!("c"),
                "routes[0].rules[0].cookie",
                "exactly one of \"header\"",
            ),
            (
                "rule without matcher",
                |v| v["routes"][0]["rules"][0] = json!({"header": "a", "variant": "v2"}),
                "routes[0].rules[0].exact",
                "exactly one of \"exact\", \"prefix\" and \"present\"",
            ),
            (
                "rule with two matchers",
                |v| v["routes"][0]["rules"][0]["prefix"] = json!("a"),
                "routes[0].rules[0].prefix",
                "exactly one of \"exact\"",
            ),
            (
                "rule present false",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"header": "a", "present": false, "variant": "v2"})
                },
                "routes[0].rules[0].present",
                "only true",
            ),
            (
                "rule empty prefix",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"header": "a", "prefix": "", "variant": "v2"})
                },
                "routes[0].rules[0].prefix",
                "must not be empty",
            ),
            (
                "rule unknown variant",
                |v| v["routes"][0]["rules"][0]["variant"] = json!("v9"),
                "routes[0].rules[0].variant",
                "\"v9\" is not a variant of this route (variants: v1, v2)",
            ),
            (
                "rule bad header",
                |v| v["routes"][0]["rules"][0]["header"] = json!("x canary"),
                "routes[0].rules[0].header",
                "not a valid header name",
            ),
            (
                "rule pseudo header",
                |v| v["routes"][0]["rules"][0]["header"] = json!(":path"),
                "routes[0].rules[0].header",
                "pseudo-header",
            ),
            (
                "rule bad query",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"query": "a=b", "exact": "x", "variant": "v2"})
                },
                "routes[0].rules[0].query",
                "must not contain",
            ),
            (
                "rule bad cookie",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"cookie": "a;b", "exact": "x", "variant": "v2"})
                },
                "routes[0].rules[0].cookie",
                "not a valid cookie name",
            ),
            (
                "rule long value",
                |v| v["routes"][0]["rules"][0]["exact"] = json!("x".repeat(4097)),
                "routes[0].rules[0].exact",
                "limit is 4096",
            ),
            (
                "sticky salt too long",
                |v| v["routes"][0]["sticky"]["salt"] = json!("s".repeat(MAX_SALT_LEN + 1)),
                "routes[0].sticky.salt",
                "is 257 bytes long, the limit is 256",
            ),
            (
                "sticky with both",
                |v| v["routes"][0]["sticky"]["cookie"] = json!("c"),
                "routes[0].sticky.cookie",
                "exactly one of \"header\" and \"cookie\"",
            ),
            (
                "sticky with neither",
                |v| v["routes"][0]["sticky"] = json!({"salt": "x"}),
                "routes[0].sticky.header",
                "exactly one of",
            ),
            (
                "assign with a header key",
                |v| v["routes"][0]["sticky"]["assign"] = json!({}),
                "routes[0].sticky.assign",
                "only a cookie can be assigned",
            ),
            (
                "assign max age 0",
                |v| v["routes"][0]["sticky"] = json!({"cookie": "mc", "assign": {"maxAge": 0}}),
                "routes[0].sticky.assign.maxAge",
                "0 is outside 1..=34560000 seconds",
            ),
            (
                "assign max age above 400 days",
                |v| {
                    v["routes"][0]["sticky"] =
                        json!({"cookie": "mc", "assign": {"maxAge": 34_560_001}})
                },
                "routes[0].sticky.assign.maxAge",
                "outside 1..=34560000",
            ),
            (
                "assign negative max age",
                |v| v["routes"][0]["sticky"] = json!({"cookie": "mc", "assign": {"maxAge": -1}}),
                "routes[0].sticky.assign.maxAge",
                "invalid value",
            ),
            (
                "assign relative path",
                |v| v["routes"][0]["sticky"] = json!({"cookie": "mc", "assign": {"path": "shop"}}),
                "routes[0].sticky.assign.path",
                "must start with '/'",
            ),
            (
                "assign path with semicolon",
                |v| {
                    v["routes"][0]["sticky"] =
                        json!({"cookie": "mc", "assign": {"path": "/a;Domain=evil"}})
                },
                "routes[0].sticky.assign.path",
                "';' cannot be in a cookie's Path",
            ),
            (
                "assign unknown same site",
                |v| {
                    v["routes"][0]["sticky"] =
                        json!({"cookie": "mc", "assign": {"sameSite": "lax"}})
                },
                "routes[0].sticky.assign.sameSite",
                "\"lax\" is not one of \"Strict\", \"Lax\" and \"None\"",
            ),
            (
                "assign same site none without secure",
                |v| {
                    v["routes"][0]["sticky"] =
                        json!({"cookie": "mc", "assign": {"sameSite": "None"}})
                },
                "routes[0].sticky.assign.sameSite",
                "needs \"secure\": true",
            ),
            (
                "assign unknown field",
                |v| {
                    v["routes"][0]["sticky"] =
                        json!({"cookie": "mc", "assign": {"domain": "example.com"}})
                },
                "routes[0].sticky.assign.domain",
                "unknown field `domain`",
            ),
            (
                "assign as an array",
                |v| v["routes"][0]["sticky"] = json!({"cookie": "mc", "assign": [3600]}),
                "routes[0].sticky.assign",
                "expected a JSON object",
            ),
            (
                "rule without variant",
                |v| v["routes"][0]["rules"][0] = json!({"header": "x", "present": true}),
                "routes[0].rules[0].variant",
                "is required",
            ),
            (
                "signed rule with a variant",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"header": "x-qa", "tokenKeys": [KEY], "variant": "v2"})
                },
                "routes[0].rules[0].variant",
                "its token's variant: remove \"variant\"",
            ),
            (
                "signed rule with a matcher",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"header": "x-qa", "tokenKeys": [KEY], "present": true})
                },
                "routes[0].rules[0]",
                "compares no value",
            ),
            (
                "signed rule with a bad key",
                |v| {
                    v["routes"][0]["rules"][0] =
                        json!({"query": "qa", "tokenKeys": [KEY, "k2:c2hvcnQ"]})
                },
                "routes[0].rules[0].tokenKeys[1]",
                "is 5 bytes; use 32 to 64 random bytes",
            ),
            (
                "signed rule with a repeated key id",
                |v| v["routes"][0]["rules"][0] = json!({"cookie": "qa", "tokenKeys": [KEY, KEY]}),
                "routes[0].rules[0].tokenKeys[1]",
                "key id \"k1\" is already the id of tokenKeys[0]",
            ),
            (
                "signed rule with too many keys",
                |v| {
                    let keys: Vec<String> = (0..9)
                        .map(|i| KEY.replace("k1", &format!("k{i}")))
                        .collect();
                    v["routes"][0]["rules"][0] = json!({"header": "x-qa", "tokenKeys": keys})
                },
                "routes[0].rules[0].tokenKeys",
                "9 keys exceed the limit of 8",
            ),
            (
                "the mirror header as the variant header",
                |v| v["variantHeader"] = json!("X-Meshcanary-Mirror"),
                "variantHeader",
                "the filter itself uses",
            ),
            (
                "variant header reserved",
                |v| v["variantHeader"] = json!("Host"),
                "variantHeader",
                "pick another name",
            ),
            (
                "variant header invalid",
                |v| v["variantHeader"] = json!("x:y"),
                "variantHeader",
                "not a valid header name",
            ),
            (
                "response header invalid",
                |v| v["responseHeader"] = json!(""),
                "responseHeader",
                "must not be empty",
            ),
            (
                "generation negative",
                |v| v["generation"] = json!(-1),
                "generation",
                "invalid value",
            ),
            (
                "routes not a list",
                |v| v["routes"] = json!({}),
                "routes",
                "invalid type",
            ),
            (
                "duplicate route",
                |v| {
                    let r = v["routes"][0].clone();
                    v["routes"].as_array_mut().unwrap().push(r);
                },
                "routes[1].name",
                "already the name of routes[0]",
            ),
            (
                "unreachable route",
                |v| {
                    let mut r = v["routes"][0].clone();
                    r["name"] = json!("shadow");
                    r["pathPrefix"] = json!("/api");
                    v["routes"].as_array_mut().unwrap().push(r);
                },
                "routes[1].hosts",
                "unreachable",
            ),
            (
                "too many rules",
                |v| {
                    let rule = v["routes"][0]["rules"][0].clone();
                    v["routes"][0]["rules"] = json!(vec![rule; 65]);
                },
                "routes[0].rules",
                "65 rules exceed the limit of 64",
            ),
        ];
        for (name, edit, field, reason) in cases {
            let (got_field, got_reason) = error_of(edit);
            assert_eq!(got_field, field, "{name}: {got_reason}");
            assert!(
                got_reason.contains(reason),
                "{name}: {got_reason:?} lacks {reason:?}"
            );
        }
    }

    #[test]
    fn only_json_objects_are_structs() {
        // serde's derived struct code reads a sequence of fields in order: each of these applied
        // as a config before (the first as an empty one, the second as generation 42, the third
        // sending all of reviews to v2). Every struct of the schema is covered, at its path.
        let cases: &[(&str, &str, &str)] = &[
            ("[]", "", "expected a JSON object"),
            ("[42]", "", "expected a JSON object"),
            (
                r#"{"generation":45,"routes":[["reviews",["reviews"],null,[["v1",0],["v2",10000]]]]}"#,
                "routes[0]",
                "invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"routes":[{"name":"r","hosts":["*"],"variants":[["v1",0],{"name":"v2","weight":10000}]}]}"#,
                "routes[0].variants[0]",
                "expected a JSON object",
            ),
            (
                r#"{"routes":[{"name":"r","hosts":["*"],"variants":[{"name":"v1","weight":0},{"name":"v2","weight":10000}],"rules":[["v2","x-canary"]]}]}"#,
                "routes[0].rules[0]",
                "expected a JSON object",
            ),
            (
                r#"{"routes":[{"name":"r","hosts":["*"],"variants":[{"name":"v1","weight":0},{"name":"v2","weight":10000}],"sticky":["x-user-id"]}]}"#,
                "routes[0].sticky",
                "expected a JSON object",
            ),
        ];
        for (input, field, reason) in cases {
            let error = CheckedConfig::from_json(input.as_bytes())
                .expect_err(&format!("{input} must be rejected"));
            assert_eq!(error.field, *field, "{input}: {error}");
            assert!(error.reason.contains(reason), "{input}: {error}");
        }
        // The same types as the control service's API reads them (serde_json::from_value).
        for value in [json!([]), json!([42])] {
            assert!(serde_json::from_value::<FilterConfig>(value).is_err());
        }
        assert!(serde_json::from_value::<RuleConfig>(json!(["v2", "x-canary"])).is_err());
        assert!(serde_json::from_value::<VariantConfig>(json!(["v2", 1])).is_err());
        // Objects still read, and serialise as before.
        let rule: RuleConfig =
            serde_json::from_value(json!({"variant": "v2", "header": "x", "present": true}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&rule).unwrap(),
            json!({"variant": "v2", "header": "x", "present": true})
        );
    }

    #[test]
    fn assigned_cookies_carry_their_attributes() {
        let cases: &[(serde_json::Value, &str)] = &[
            (json!({}), "mc=ID; Path=/; HttpOnly; SameSite=Lax"),
            (
                json!({"maxAge": 2_592_000, "path": "/shop", "secure": true, "httpOnly": false, "sameSite": "Strict"}),
                "mc=ID; Max-Age=2592000; Path=/shop; Secure; SameSite=Strict",
            ),
            (
                json!({"secure": true, "sameSite": "None"}),
                "mc=ID; Path=/; Secure; HttpOnly; SameSite=None",
            ),
        ];
        for (assign, set_cookie) in cases {
            let mut value = base();
            value["routes"][0]["sticky"] = json!({"cookie": "mc", "salt": "s", "assign": assign});
            let checked = check(value.clone()).unwrap();
            let sticky = checked.routes[0].sticky.as_ref().unwrap();
            assert_eq!(
                sticky.assign.as_ref().unwrap().set_cookie("ID"),
                *set_cookie,
                "{assign}"
            );
            // Defaults are left out when the config is written back.
            let raw = FilterConfig::from_json(value.to_string().as_bytes()).unwrap();
            let again: serde_json::Value = serde_json::from_str(&raw.to_json()).unwrap();
            assert_eq!(again["routes"][0]["sticky"]["assign"], *assign);
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let error = CheckedConfig::from_json(b"{\"routes\": [").unwrap_err();
        assert!(error.reason.contains("line 1"), "{error}");
        let error = CheckedConfig::from_json(b"{} trailing").unwrap_err();
        assert!(error.reason.contains("trailing"), "{error}");
        let error = CheckedConfig::from_json(&[0xff, 0xfe]).unwrap_err();
        assert!(!error.reason.is_empty());
    }

    #[test]
    fn error_display_puts_the_field_first() {
        let error = ConfigError::new("routes[0].name", "must not be empty");
        assert_eq!(error.to_string(), "routes[0].name: must not be empty");
        assert_eq!(ConfigError::new("", "bad").to_string(), "bad");
    }

    #[test]
    fn a_later_route_with_a_longer_prefix_is_reachable_the_other_way_round() {
        let mut value = base();
        let mut api = value["routes"][0].clone();
        api["name"] = json!("api");
        api["pathPrefix"] = json!("/api");
        value["routes"] = json!([api, value["routes"][0].clone()]);
        let checked = check(value).unwrap();
        assert_eq!(checked.routes.len(), 2);
    }

    #[test]
    fn names_are_normalised() {
        let mut value = base();
        value["variantHeader"] = json!("X-Variant");
        value["routes"][0]["hosts"] =
            json!(["Reviews.Default.svc.cluster.local.", "*.EXAMPLE.com"]);
        value["routes"][0]["rules"][0]["header"] = json!("X-Canary");
        let checked = check(value).unwrap();
        assert_eq!(checked.variant_header, "x-variant");
        assert_eq!(
            checked.routes[0].hosts,
            vec![
                HostPattern::Exact("reviews.default.svc.cluster.local".into()),
                HostPattern::Suffix(".example.com".into())
            ]
        );
        assert_eq!(
            checked.routes[0].rules[0].source,
            ValueSource::Header("x-canary".into())
        );
    }

    #[test]
    fn host_patterns_match() {
        let cases: &[(&str, &str, bool)] = &[
            ("reviews", "reviews", true),
            ("reviews", "REVIEWS", true),
            ("reviews", "reviews2", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.Example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "xexample.com", false),
            ("*", "anything", true),
        ];
        for (pattern, host, expected) in cases {
            let checked = checked_host(&Field::Top("h"), pattern).unwrap();
            assert_eq!(
                checked.matches(host.as_bytes()),
                *expected,
                "{pattern} vs {host}"
            );
        }
    }

    #[test]
    fn serialises_back_to_what_it_parsed() {
        let raw = FilterConfig::from_json(base().to_string().as_bytes()).unwrap();
        let again = FilterConfig::from_json(raw.to_json().as_bytes()).unwrap();
        assert_eq!(raw, again);
        assert!(!raw.to_json().contains("dryRun"), "defaults are omitted");
    }
}

/// Validation against configs drawn from every field's valid and invalid values: whatever
/// validates survives its own JSON and never trips the chooser, on any request.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::choose::{choose, Inputs};
    use crate::request::RequestView;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    /// A signed rule's key that validates, and one that does not.
    const KEYS: [&str; 2] = [
        "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA",
        "k2:c2hvcnQ",
    ];

    fn one_of(values: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(values).prop_map(String::from)
    }

    /// Mostly one of `valid`, sometimes one of `invalid`: a config has many fields, and one
    /// invalid value refuses it, so each field leans valid for enough configs to validate.
    fn mostly(
        valid: &'static [&'static str],
        invalid: &'static [&'static str],
    ) -> impl Strategy<Value = String> {
        prop_oneof![8 => one_of(valid), 1 => one_of(invalid)]
    }

    fn header_name() -> impl Strategy<Value = String> {
        mostly(
            &["x-canary", "x-user-id", "x-qa"],
            &[
                "X-Canary",
                "",
                "bad header",
                ":path",
                "host",
                "x-request-id",
            ],
        )
    }

    /// Mostly a valid set: 2 to 4 names `v1`… whose weights sum to 10000; sometimes anything.
    fn variants() -> impl Strategy<Value = Vec<VariantConfig>> {
        let valid = (1usize..=4, vec(0u32..=TOTAL_WEIGHT, 3)).prop_map(|(count, cuts)| {
            let mut cuts: Vec<u32> = cuts.into_iter().take(count - 1).collect();
            cuts.sort_unstable();
            cuts.push(TOTAL_WEIGHT);
            let mut last = 0;
            cuts.iter()
                .enumerate()
                .map(|(i, cut)| {
                    let weight = cut - last;
                    last = *cut;
                    VariantConfig {
                        name: format!("v{}", i + 1),
                        weight,
                    }
                })
                .collect()
        });
        let any = vec(
            (
                one_of(&["v1", "v2", "v3", "", "v 1"]),
                prop_oneof![
                    Just(0u32),
                    Just(5000),
                    Just(10000),
                    Just(10001),
                    any::<u32>()
                ],
            )
                .prop_map(|(name, weight)| VariantConfig { name, weight }),
            0..5,
        );
        prop_oneof![8 => valid, 1 => any]
    }

    /// A rule with one source and one matcher naming `v1` or `v2`, a signed rule, or any mix of
    /// fields (mostly refused).
    fn rule() -> impl Strategy<Value = RuleConfig> {
        let source = prop_oneof![
            header_name().prop_map(|h| (Some(h), None, None)),
            mostly(&["canary", "qa"], &["", "bad;cookie"]).prop_map(|c| (None, Some(c), None)),
            mostly(&["canary"], &[""]).prop_map(|q| (None, None, Some(q))),
        ];
        let matcher = prop_oneof![
            mostly(&["always", "v2"], &[""]).prop_map(|e| (Some(e), None, None)),
            mostly(&["qa-"], &["", "bad\u{7f}"]).prop_map(|p| (None, Some(p), None)),
            Just((None, None, Some(true))),
        ];
        let plain = (source.clone(), matcher, mostly(&["v1", "v2"], &["", "v9"])).prop_map(
            |((header, cookie, query), (exact, prefix, present), variant)| RuleConfig {
                variant,
                header,
                cookie,
                query,
                exact,
                prefix,
                present,
                token_keys: Vec::new(),
            },
        );
        let signed =
            (source, vec(one_of(&KEYS), 1..3)).prop_map(|((header, cookie, query), token_keys)| {
                RuleConfig {
                    header,
                    cookie,
                    query,
                    token_keys,
                    ..RuleConfig::default()
                }
            });
        let value = || option::of(one_of(&["always", "", "v2"]));
        let mixed = (
            option::of(one_of(&["v1", ""])),
            option::of(header_name()),
            option::of(one_of(&["canary", ""])),
            (value(), value(), option::of(any::<bool>())),
            vec(one_of(&KEYS), 0..2),
        )
            .prop_map(
                |(variant, header, cookie, (exact, prefix, present), token_keys)| RuleConfig {
                    variant: variant.unwrap_or_default(),
                    header,
                    cookie,
                    query: None,
                    exact,
                    prefix,
                    present,
                    token_keys,
                },
            );
        prop_oneof![6 => plain, 2 => signed, 1 => mixed]
    }

    fn sticky() -> impl Strategy<Value = StickyConfig> {
        let assign = (
            option::of(
                prop_oneof![8 => Just(3600u32), 1 => Just(0), 1 => Just(MAX_COOKIE_AGE + 1)],
            ),
            option::of(mostly(&["/", "/app"], &["app", "/a;b"])),
            any::<bool>(),
            any::<bool>(),
            option::of(mostly(&["Lax", "Strict"], &["None", "lax", "bogus"])),
        )
            .prop_map(
                |(max_age, path, secure, http_only, same_site)| AssignConfig {
                    max_age,
                    path,
                    secure,
                    http_only,
                    same_site,
                },
            );
        let key = prop_oneof![
            4 => header_name().prop_map(|h| (Some(h), None)),
            4 => mostly(&["session", "mc-visitor"], &["", "bad;cookie"]).prop_map(|c| (None, Some(c))),
            1 => Just((None, None)),
        ];
        (
            key,
            one_of(&["", "release-42"]),
            prop_oneof![3 => Just(None), 2 => assign.prop_map(Some)],
        )
            .prop_map(|((header, cookie), salt, assign)| StickyConfig {
                header,
                cookie,
                salt,
                assign,
            })
    }

    fn mirror() -> impl Strategy<Value = VariantConfig> {
        (
            mostly(&["v2", "v3"], &["v9", ""]),
            prop_oneof![4 => 1u32..=TOTAL_WEIGHT, 1 => Just(0u32), 1 => Just(TOTAL_WEIGHT + 1)],
        )
            .prop_map(|(name, weight)| VariantConfig { name, weight })
    }

    fn route() -> impl Strategy<Value = RouteConfig> {
        let hosts = prop_oneof![
            9 => vec(
                mostly(
                    &["*", "reviews", "Reviews.Default", "*.example.com", "a.example.com."],
                    &["*.", "", "a b"],
                ),
                1..4,
            ),
            1 => Just(Vec::new()),
        ];
        (
            mostly(&["reviews", "r-2"], &["", "bad name"]),
            hosts,
            option::of(mostly(&["/", "/api"], &["api", "/a?b"])),
            variants(),
            vec(rule(), 0..3),
            option::of(sticky()),
            (
                any::<bool>(),
                prop_oneof![6 => Just(Vec::new()), 3 => vec(mirror(), 1..=1), 1 => vec(mirror(), 2..=2)],
            ),
        )
            .prop_map(
                |(name, hosts, path_prefix, variants, rules, sticky, (dry_run, mirrors))| {
                    RouteConfig {
                        name,
                        hosts,
                        path_prefix,
                        variants,
                        rules,
                        sticky,
                        dry_run,
                        mirrors,
                    }
                },
            )
    }

    fn config() -> impl Strategy<Value = FilterConfig> {
        (
            any::<u64>(),
            option::of(mostly(&["x-meshcanary-variant"], &["", "bad header"])),
            option::of(mostly(&["x-meshcanary"], &["", "bad header"])),
            vec(route(), 0..3),
        )
            .prop_map(|(generation, variant_header, response_header, routes)| {
                FilterConfig {
                    generation,
                    variant_header,
                    response_header,
                    routes,
                }
            })
    }

    /// A request: each header absent, a likely value, or any bytes.
    fn request() -> impl Strategy<Value = Request> {
        let header = |likely: &'static [&'static str]| {
            option::of(prop_oneof![
                proptest::sample::select(likely).prop_map(|v| v.as_bytes().to_vec()),
                vec(any::<u8>(), 0..48),
            ])
        };
        (
            header(&["reviews", "Reviews.Default:8080", "a.example.com", ""]),
            header(&["/", "/api/x", "/?canary=1", "/a?canary&qa=1"]),
            vec(
                header(&[
                    "canary=v2; qa=true",
                    "mc-visitor=abc; session=s1",
                    "session=",
                ]),
                0..3,
            ),
            header(&["always", "qa-1"]),
            header(&["user-0042", ""]),
            header(&["k1.v2.1800000000.AAAA", "k9.v2.1.x", "..."]),
        )
            .prop_map(|(authority, path, cookies, canary, user, token)| {
                let mut headers = Vec::new();
                let mut add = |name: &str, value: Option<Vec<u8>>| {
                    if let Some(value) = value {
                        headers.push((name.to_string(), value));
                    }
                };
                add(":authority", authority);
                add(":path", path);
                for cookie in cookies {
                    add("cookie", cookie);
                }
                add("x-canary", canary.clone());
                add("x-user-id", user);
                add("x-request-id", canary);
                add("x-meshcanary-qa", token);
                Request(headers)
            })
    }

    #[derive(Debug, Clone)]
    struct Request(Vec<(String, Vec<u8>)>);

    impl RequestView for Request {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_slice())
        }

        fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
            self.0
                .iter()
                .filter(move |(key, _)| key == name)
                .map(|(_, value)| value.as_slice())
        }
    }

    /// The host's draws, each possibly missing.
    #[derive(Debug, Clone)]
    struct Draws {
        bucket: Option<u32>,
        visitor: Option<u128>,
        now: Option<u64>,
    }

    impl Inputs for Draws {
        fn random_bucket(&mut self) -> Option<u32> {
            self.bucket
        }
        fn visitor_bits(&mut self) -> Option<u128> {
            self.visitor
        }
        fn now_unix(&self) -> Option<u64> {
            self.now
        }
    }

    fn draws() -> impl Strategy<Value = Draws> {
        (
            option::of(0u32..TOTAL_WEIGHT),
            option::of(any::<u128>()),
            option::of(prop_oneof![Just(1_800_000_000u64), any::<u64>()]),
        )
            .prop_map(|(bucket, visitor, now)| Draws {
                bucket,
                visitor,
                now,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A config that validates is written and read back unchanged, and validates to the same
        /// checked config: what the control service stores and pushes is what it checked.
        #[test]
        fn a_valid_config_round_trips(config in config()) {
            let Ok(checked) = CheckedConfig::try_from(config.clone()) else {
                return Ok(());
            };
            let json = config.to_json();
            let read = FilterConfig::from_json(json.as_bytes());
            prop_assert_eq!(read.as_ref(), Ok(&config), "{}", json);
            prop_assert_eq!(CheckedConfig::from_json(json.as_bytes()), Ok(checked));
        }

        /// On a config that validates, the chooser answers any request without panicking, and
        /// its decision names a route and a variant that exist.
        #[test]
        fn a_valid_config_never_trips_the_chooser(
            config in config(),
            requests in vec((request(), draws()), 1..8),
        ) {
            let Ok(checked) = CheckedConfig::try_from(config) else {
                return Ok(());
            };
            for (request, mut draws) in requests {
                if let Some(decision) = choose(&checked, &request, &mut draws) {
                    let route = checked.routes.get(decision.route);
                    prop_assert!(route.is_some(), "{decision:?}");
                    prop_assert!(route.is_some_and(|r| decision.variant < r.variants.len()), "{decision:?}");
                }
            }
        }

        /// Validation answers, without panicking, for any bytes at all.
        #[test]
        fn any_bytes_are_accepted_or_refused(bytes in vec(any::<u8>(), 0..256)) {
            let _ = CheckedConfig::from_json(&bytes);
        }
    }

    /// The generator is worth running: a good share of what it draws validates, so the properties
    /// above are checked on valid configs, not only on refused ones.
    #[test]
    fn the_generator_draws_valid_configs() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = config();
        let valid = (0..1000)
            .filter(|_| {
                let config = strategy.new_tree(&mut runner).unwrap().current();
                !config.routes.is_empty() && CheckedConfig::try_from(config).is_ok()
            })
            .count();
        assert!(
            valid >= 50,
            "{valid} of 1000 drawn configs with routes validate"
        );
    }
}

//! Which routes may match a request's host, found in time that does not grow with the config.
//!
//! Routes are tried in config order, and a mesh-wide config has a route per service: scanning
//! them costs a request ~12 ns per route before the index (1 000 routes: 12 µs, criterion in
//! `benches/choose.rs`). The index is built once when a config is applied: exact host names in
//! one hash table, `*.suffix` patterns in another keyed by the suffix (`.example.com`), and the
//! routes with `*` in a list. A request's host is looked up whole, then by each of its suffixes
//! that starts at a dot (`a.b.example.com`: `.b.example.com`, `.example.com`, `.com`), so the
//! cost is one lookup per label of the host. Each key lists its routes in config order, and
//! [`HostIndex::first`] returns the first route of all of them that also passes the caller's
//! check (the path prefix): the same answer as trying every route in order.
//!
//! The tables are small open-addressing tables hashed with FNV-1a over the lowercase bytes taken
//! from the end, so one pass over the host hashes it and all its suffixes, without allocating or
//! lowercasing it first. Their keys come from the config, so a client cannot provoke collisions
//! in them.

use crate::config::{CheckedRoute, HostPattern};

/// The routes of a config by host; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostIndex {
    exact: Table,
    suffix: Table,
    any: Vec<u16>,
}

impl HostIndex {
    /// Indexes `routes` by their host patterns.
    pub fn build(routes: &[CheckedRoute]) -> HostIndex {
        let mut index = HostIndex::default();
        for (route, checked) in routes.iter().enumerate() {
            // Route indices fit: a config has at most MAX_ROUTES (4096) routes.
            let route = u16::try_from(route).unwrap_or(u16::MAX);
            for pattern in &checked.hosts {
                let list = match pattern {
                    HostPattern::Any => Some(&mut index.any),
                    HostPattern::Exact(name) => index.exact.routes_mut(name.as_bytes()),
                    HostPattern::Suffix(suffix) => index.suffix.routes_mut(suffix.as_bytes()),
                };
                // A route lists a host once even if its patterns repeat it.
                if let Some(list) = list.filter(|list| list.last() != Some(&route)) {
                    list.push(route);
                }
            }
        }
        index
    }

    /// The first route, in config order, whose host patterns match `host` (without port, any
    /// case) and for which `accept` holds.
    ///
    /// One pass over the host from its end hashes it and every suffix that starts at a dot (the
    /// tables hash keys backwards, see [`Hasher`]); a table without keys is not looked at.
    pub fn first(&self, host: &[u8], accept: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut consider = |routes: &[u16]| {
            // Each list is in config order: only a route before the best so far can improve it.
            let better = routes
                .iter()
                .map(|route| usize::from(*route))
                .take_while(|route| best.is_none_or(|best| *route < best))
                .find(|route| accept(*route));
            best = better.or(best);
        };
        if !self.suffix.is_empty() || !self.exact.is_empty() {
            let mut hasher = Hasher::new();
            for (at, byte) in host.iter().enumerate().rev() {
                hasher.push(*byte);
                // `.example.com` matches `a.example.com`, not `.example.com` itself.
                if *byte == b'.' && at > 0 && !self.suffix.is_empty() {
                    if let Some(suffix) = host.get(at..) {
                        consider(self.suffix.routes(hasher.finish(), suffix));
                    }
                }
            }
            consider(self.exact.routes(hasher.finish(), host));
        }
        consider(&self.any);
        best
    }
}

/// FNV-1a over a key's bytes from last to first, ASCII letters as lowercase, finished with
/// MurmurHash3's mixer (so the low bits a table uses depend on every byte). Backwards, so that
/// one pass over a host name from its end yields the hash of every suffix on the way.
struct Hasher(u64);

impl Hasher {
    fn new() -> Hasher {
        Hasher(crate::hash::FNV_OFFSET)
    }

    fn push(&mut self, byte: u8) {
        self.0 =
            (self.0 ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(crate::hash::FNV_PRIME);
    }

    fn finish(&self) -> u64 {
        crate::hash::finalize(self.0)
    }

    /// The hash of a whole key.
    fn of(key: &[u8]) -> u64 {
        let mut hasher = Hasher::new();
        for byte in key.iter().rev() {
            hasher.push(*byte);
        }
        hasher.finish()
    }
}

/// An open-addressing hash table from a lowercase key to the routes listing it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Table {
    /// Indices into `entries`, `u32::MAX` for an empty slot; the length is a power of two at
    /// least twice the number of entries (or 0).
    slots: Vec<u32>,
    entries: Vec<(Box<[u8]>, Vec<u16>)>,
}

const EMPTY: u32 = u32::MAX;

impl Table {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The routes of `key` (any case), whose [`Hasher`] hash is `hash`; empty if it has none.
    fn routes(&self, hash: u64, key: &[u8]) -> &[u16] {
        let mask = self.slots.len().wrapping_sub(1);
        let mut slot = hash as usize & mask;
        while let Some(&entry) = self.slots.get(slot) {
            let Some((name, routes)) = self.entries.get(entry as usize) else {
                break;
            };
            if name.eq_ignore_ascii_case(key) {
                return routes;
            }
            slot = (slot + 1) & mask;
        }
        &[]
    }

    /// The route list of `key` (lowercase), added if it is new.
    fn routes_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u16>> {
        if self.slots.len() < 2 * (self.entries.len() + 1) {
            self.grow();
        }
        let mask = self.slots.len().wrapping_sub(1);
        let mut slot = Hasher::of(key) as usize & mask;
        loop {
            let entry = *self.slots.get(slot)?;
            if entry == EMPTY {
                let entry = u32::try_from(self.entries.len()).ok()?;
                *self.slots.get_mut(slot)? = entry;
                self.entries.push((key.into(), Vec::new()));
                return self.entries.last_mut().map(|(_, routes)| routes);
            }
            if self.entries.get(entry as usize)?.0.as_ref() == key {
                return self
                    .entries
                    .get_mut(entry as usize)
                    .map(|(_, routes)| routes);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Doubles the slots (at least 8) and places every entry again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(8);
        let mut slots = vec![EMPTY; size];
        for (entry, (key, _)) in self.entries.iter().enumerate() {
            let mut slot = Hasher::of(key) as usize & (size - 1);
            while slots.get(slot).is_some_and(|taken| *taken != EMPTY) {
                slot = (slot + 1) & (size - 1);
            }
            if let Some(free) = slots.get_mut(slot) {
                *free = u32::try_from(entry).unwrap_or(EMPTY);
            }
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {

    use crate::config::CheckedConfig;
    use proptest::prelude::*;
    use serde_json::json;

    fn config(routes: serde_json::Value) -> CheckedConfig {
        CheckedConfig::from_json(json!({ "routes": routes }).to_string().as_bytes()).unwrap()
    }

    /// What trying every route in order gives.
    fn scan(config: &CheckedConfig, host: &[u8], accept: impl Fn(usize) -> bool) -> Option<usize> {
        config
            .routes
            .iter()
            .enumerate()
            .find(|(i, route)| route.hosts.iter().any(|p| p.matches(host)) && accept(*i))
            .map(|(i, _)| i)
    }

    fn route(name: &str, hosts: &[&str], prefix: Option<&str>) -> serde_json::Value {
        let mut route = json!({"name": name, "hosts": hosts,
            "variants": [{"name": "a", "weight": 5000}, {"name": "b", "weight": 5000}]});
        if let Some(prefix) = prefix {
            route["pathPrefix"] = json!(prefix);
        }
        route
    }

    #[test]
    fn finds_the_first_matching_route_in_config_order() {
        let config = config(json!([
            route("api", &["reviews"], Some("/api")),
            route("eu", &["*.eu.example.com"], None),
            route("reviews", &["reviews", "Reviews.Default"], None),
            route("wide", &["*.example.com"], None),
            route("all", &["*"], Some("/all")),
        ]));
        let index = &config.host_index;
        let no_prefix_routes = |route: usize| config.routes[route].path_prefix.is_none();
        let cases: &[(&str, Option<usize>, Option<usize>)] = &[
            // host, first with any path, first among routes without a path prefix
            ("reviews", Some(0), Some(2)),
            ("REVIEWS", Some(0), Some(2)),
            ("reviews.default", Some(2), Some(2)),
            ("a.eu.example.com", Some(1), Some(1)),
            ("a.b.eu.example.com", Some(1), Some(1)),
            ("eu.example.com", Some(3), Some(3)),
            ("x.example.com", Some(3), Some(3)),
            ("example.com", Some(4), None),
            (".example.com", Some(4), None),
            ("details", Some(4), None),
            ("", Some(4), None),
        ];
        for (host, any, without_prefix) in cases {
            assert_eq!(index.first(host.as_bytes(), |_| true), *any, "{host}");
            assert_eq!(
                index.first(host.as_bytes(), no_prefix_routes),
                *without_prefix,
                "{host}"
            );
        }
    }

    #[test]
    fn thousands_of_hosts_are_all_found() {
        let routes: Vec<serde_json::Value> = (0..2000)
            .map(|i| {
                let (short, full) = (format!("svc-{i}"), format!("svc-{i}.ns.svc.cluster.local"));
                route(
                    &short,
                    &[&short, &full, &format!("*.svc-{i}.example")],
                    None,
                )
            })
            .collect();
        let config = config(json!(routes));
        for i in (0..2000).step_by(7) {
            for host in [
                format!("svc-{i}"),
                format!("SVC-{i}.ns.svc.cluster.local"),
                format!("x.svc-{i}.example"),
            ] {
                assert_eq!(
                    config.host_index.first(host.as_bytes(), |_| true),
                    Some(i),
                    "{host}"
                );
            }
        }
        assert_eq!(config.host_index.first(b"svc-2000", |_| true), None);
    }

    proptest! {
        #[test]
        fn the_index_answers_what_trying_routes_in_order_answers(
            routes in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![
                    Just("*".to_string()),
                    "[ab]{1,2}(\\.[ab]{1,2}){0,2}",
                    "\\*\\.[ab]{1,2}(\\.[ab]{1,2}){0,1}",
                ], 1..4), proptest::option::of(prop_oneof![Just("/a"), Just("/b")])),
                1..8,
            ),
            hosts in proptest::collection::vec("[aAbB.]{0,8}", 1..16),
            rejected in proptest::collection::vec(any::<bool>(), 8),
        ) {
            let routes: Vec<serde_json::Value> = routes
                .iter()
                .enumerate()
                .map(|(i, (hosts, prefix))| {
                    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                    route(&format!("r{i}"), &hosts, *prefix)
                })
                .collect();
            // Configs with unreachable routes are refused; those say nothing about the index.
            let Ok(config) = CheckedConfig::from_json(json!({ "routes": routes }).to_string().as_bytes()) else {
                return Ok(());
            };
            let accept = |route: usize| !rejected[route % rejected.len()];
            for host in &hosts {
                prop_assert_eq!(
                    config.host_index.first(host.as_bytes(), accept),
                    scan(&config, host.as_bytes(), accept),
                    "{}", host
                );
            }
        }
    }
}

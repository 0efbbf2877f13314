//! A read-only view of a request, and the parsing the decision needs: the host of `:authority`,
//! one cookie out of the `cookie` header, one parameter out of the query string.
//!
//! Everything here works on raw bytes: header values are not guaranteed to be UTF-8, and odd input
//! (huge cookies, stray separators, missing parts) must give "not found", never an error.

/// What the decision may read from a request. The filter implements it with the request's header
/// map fetched once ([`crate::header_map::HeaderPairs`]); tests with a map. Names are lowercase,
/// pseudo-headers included (`:authority`, `:path`).
pub trait RequestView {
    /// The value of header `name`, if present; the first one if the header is repeated.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// Every value of header `name`, in the order the request carries them. HTTP/1.1 clients may
    /// send several `cookie` lines, which Envoy keeps apart (it joins them only for HTTP/2); a view
    /// that cannot hold a repeated header has just the one value of [`RequestView::header`].
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.header(name).into_iter()
    }
}

/// The value of cookie `name` across every `cookie` header of the request, which RFC 6265 treats
/// as one list (HTTP/2 sends each cookie as its own header field, and Envoy joins them; HTTP/1.1
/// clients may send several lines, which Envoy keeps). The first cookie with that name wins.
pub fn cookie<'a>(request: &'a impl RequestView, name: &'a str) -> Option<&'a [u8]> {
    request
        .header_values("cookie")
        .find_map(|header| find_cookie(header, name))
}

/// The host part of an `:authority` value: without the port, without a trailing dot, and for IPv6
/// literals without the brackets' port (`[::1]:80` → `[::1]`).
pub fn host_of(authority: &[u8]) -> &[u8] {
    let host = if authority.first() == Some(&b'[') {
        match authority.iter().position(|b| *b == b']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        }
    } else {
        match authority.iter().rposition(|b| *b == b':') {
            Some(colon) => authority.get(..colon).unwrap_or(authority),
            None => authority,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

/// The path of `:path` without query string and fragment.
pub fn path_of(path: &[u8]) -> &[u8] {
    match split_at_first(path, |b| b == b'?' || b == b'#') {
        Some((head, _, _)) => head,
        None => path,
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without surrounding quotes.
/// The first cookie with that name wins; a cookie without `=` has no value and does not match.
pub fn find_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let (key, _, value) = split_at_first(trim(pair), |b| b == b'=')?;
        if trim(key) != name.as_bytes() {
            return None;
        }
        let value = trim(value);
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// The value of query parameter `name` in a `:path` (`/p?a=1&b`), as sent (not percent-decoded).
/// A parameter without `=` is present with an empty value.
pub fn find_query<'a>(path: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let (_, mark, rest) = split_at_first(path, |b| b == b'?' || b == b'#')?;
    if mark == b'#' {
        return None;
    }
    let query = match split_at_first(rest, |b| b == b'#') {
        Some((query, _, _)) => query,
        None => rest,
    };
    query.split(|b| *b == b'&').find_map(|pair| {
        let (key, value) = match split_at_first(pair, |b| b == b'=') {
            Some((key, _, value)) => (key, value),
            None => (pair, &[][..]),
        };
        (key == name.as_bytes()).then_some(value)
    })
}

/// Splits at the first byte satisfying `is_separator`: (before, separator, after).
fn split_at_first(bytes: &[u8], is_separator: impl Fn(u8) -> bool) -> Option<(&[u8], u8, &[u8])> {
    let index = bytes.iter().position(|b| is_separator(*b))?;
    let (head, tail) = bytes.split_at_checked(index)?;
    let (separator, rest) = tail.split_first()?;
    Some((head, *separator, rest))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t');
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_of_strips_port_and_dot() {
        let cases: &[(&str, &str)] = &[
            ("reviews", "reviews"),
            ("reviews:9080", "reviews"),
            (
                "reviews.default.svc.cluster.local.",
                "reviews.default.svc.cluster.local",
            ),
            (
                "reviews.default.svc.cluster.local.:80",
                "reviews.default.svc.cluster.local",
            ),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1"),
            (":80", ""),
            ("", ""),
        ];
        for (authority, host) in cases {
            assert_eq!(
                host_of(authority.as_bytes()),
                host.as_bytes(),
                "{authority}"
            );
        }
    }

    #[test]
    fn path_of_drops_query_and_fragment() {
        let cases: &[(&str, &str)] =
            &[("/a/b?x=1", "/a/b"), ("/a#f", "/a"), ("/", "/"), ("?q", "")];
        for (path, expected) in cases {
            assert_eq!(path_of(path.as_bytes()), expected.as_bytes(), "{path}");
        }
    }

    #[test]
    fn finds_cookies() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("a=1; b=2", "b", Some("2")),
            ("a=1;b=2", "b", Some("2")),
            ("a=1; b=\"quoted\"", "b", Some("quoted")),
            ("a=1; b=", "b", Some("")),
            ("ab=1; b=2", "b", Some("2")),
            ("b=first; b=second", "b", Some("first")),
            ("a=1; b", "b", None),
            ("a=1", "b", None),
            ("", "b", None),
            (";;;", "b", None),
            ("b==x", "b", Some("=x")),
            ("\"", "b", None),
            ("b=\"", "b", Some("\"")),
        ];
        for (header, name, expected) in cases {
            assert_eq!(
                find_cookie(header.as_bytes(), name),
                expected.map(str::as_bytes),
                "{header:?} {name}"
            );
        }
    }

    #[test]
    fn a_cookie_is_found_in_any_cookie_line() {
        struct Lines(Vec<&'static str>);
        impl RequestView for Lines {
            fn header(&self, name: &str) -> Option<&[u8]> {
                (name == "cookie").then(|| self.0.first().map(|line| line.as_bytes()))?
            }
            fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
                self.0
                    .iter()
                    .filter(move |_| name == "cookie")
                    .map(|line| line.as_bytes())
            }
        }
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["a=1", "session=s1"], "session", Some("s1")),
            (&["session=s1", "session=s2"], "session", Some("s1")),
            (&["a=1; session=s1", "b=2"], "session", Some("s1")),
            (&["a=1", "b=2"], "session", None),
            (&["", "session=\"q\""], "session", Some("q")),
            (&[], "session", None),
        ];
        for (lines, name, expected) in cases {
            let request = Lines(lines.to_vec());
            assert_eq!(
                cookie(&request, name),
                expected.map(str::as_bytes),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn finds_query_parameters() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/p?canary=always", "canary", Some("always")),
            ("/p?a=1&canary=v2&b", "canary", Some("v2")),
            ("/p?canary", "canary", Some("")),
            ("/p?canary=x#frag", "canary", Some("x")),
            ("/p#?canary=x", "canary", None),
            ("/p?xcanary=1", "canary", None),
            ("/p", "canary", None),
            ("/p?", "canary", None),
            ("/p?&&=&canary=%20", "canary", Some("%20")),
        ];
        for (path, name, expected) in cases {
            assert_eq!(
                find_query(path.as_bytes(), name),
                expected.map(str::as_bytes),
                "{path}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512), name in "[a-z]{1,4}") {
            let _ = host_of(&input);
            let _ = path_of(&input);
            let _ = find_cookie(&input, &name);
            let _ = find_query(&input, &name);
        }
    }
}

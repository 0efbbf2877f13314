//! The dashboard: one self-contained HTML page (`dashboard.html`: markup, style and script inline,
//! no libraries, nothing fetched from elsewhere) that the browser fills from this API. It lists the
//! rollouts and, for the selected one, plots its canary weight and each variant's success rate and
//! latency over time, shows its steps, history and latest analysis check, and has buttons for the
//! actions (they send the token typed into the page).
//!
//! The page is open like `/healthz`: it holds no data, and the API calls it makes carry the token
//! where the service wants one. A strict `Content-Security-Policy` lets only the page's own inline
//! script and style run (by hash) and lets it talk only to this service, so even a rollout name or
//! analysis reason crafted as markup could not run script or send the token elsewhere; the page
//! also inserts every such text as text, never as HTML.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The dashboard: one self-contained HTML page (script and style inline), served at `/`.
pub const PAGE: &str = include_str!("dashboard.html");

/// Where the page is served.
pub const PATH: &str = "/dashboard";

/// The `Content-Security-Policy` for [`PAGE`], computed once.
static POLICY: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

/// The dashboard (HTML).
#[utoipa::path(get, path = "/dashboard", tag = "system",
    responses((status = 200, description = "The dashboard: a self-contained HTML page that reads and drives this API", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// `/` leads to the dashboard.
pub async fn root() -> Redirect {
    Redirect::to(PATH)
}

/// Allows exactly the page's inline `<script>` and `<style>` blocks (by their sha256), requests
/// to this origin only, and nothing else.
fn content_security_policy(page: &str) -> String {
    let hashes = |tag: &str| {
        inline_blocks(page, tag)
            .map(|block| format!("'sha256-{}'", base64(&Sha256::digest(block.as_bytes()))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// The contents of every `<tag>…</tag>` block (without attributes on the opening tag, as the
/// page writes them).
fn inline_blocks<'a>(page: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = page;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let length = rest[start..].find(&close)?;
        let block = &rest[start..start + length];
        rest = &rest[start + length + close.len()..];
        Some(block)
    })
}

/// Standard base64 with padding (RFC 4648), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        // The CSP spelling of sha256 of nothing.
        assert_eq!(
            base64(&Sha256::digest(b"")),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_blocks() {
        let page = "<style>a{}</style><p>x</p><script>1</script><script>2</script>";
        let policy = content_security_policy(page);
        let sha = |text: &str| format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())));
        assert!(
            policy.contains(&format!("script-src {} {};", sha("1"), sha("2"))),
            "{policy}"
        );
        assert!(
            policy.contains(&format!("style-src {};", sha("a{}"))),
            "{policy}"
        );
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
    }

    /// What the policy would silently block in a browser: a second way to run script or style.
    #[test]
    fn the_page_keeps_to_what_its_policy_allows() {
        assert_eq!(inline_blocks(PAGE, "script").count(), 1);
        assert_eq!(inline_blocks(PAGE, "style").count(), 1);
        assert_eq!(PAGE.matches("<script").count(), 1, "one script element");
        assert_eq!(PAGE.matches("<style").count(), 1, "one style element");
        let lower = PAGE.to_ascii_lowercase();
        for forbidden in [
            " style=\"",
            " onclick=",
            " onload=",
            " oninput=",
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
            "src=\"http",
            "href=\"http",
        ] {
            assert!(!lower.contains(forbidden), "the page uses {forbidden:?}");
        }
    }
}

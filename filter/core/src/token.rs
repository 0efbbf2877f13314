//! Signed QA tokens: access to an unreleased variant that nobody can forge.
//!
//! A plain header rule (`x-canary: always`) lets anyone who learns the header reach the canary
//! from outside. A signed rule instead reads a token from its header, cookie or query parameter:
//!
//! ```text
//! <key id>.<variant>.<expiry>.<mac>
//! 2026-12.v2.1767225600.Rq0p5j2v5tq5yq0c4Kp6Nw9oX3a1fV8nqk7T2b9cP4s
//! ```
//!
//! - `key id`: which of the rule's keys signed it (several keys let you rotate: add the new key,
//!   mint with it, then remove the old one); letters, digits, `_` and `-`.
//! - `variant`: the variant the token opens, a variant name of the route.
//! - `expiry`: Unix time in seconds after which the token is refused.
//! - `mac`: HMAC-SHA256 with the key's secret over `<key id>.<variant>.<expiry>` (the token up to
//!   its last dot), in base64url without padding (43 characters).
//!
//! A token that is malformed, names a key the rule does not have, carries a wrong MAC, has
//! expired, or opens a variant the route does not have is ignored — the request is placed as if
//! the rule were not there — and counted by its [`Rejection`]. The MAC is compared in constant
//! time. [`mint`] writes tokens (the `meshcanary qa-token` command); the filter and the CLI share
//! this code, so they cannot disagree on the format.

use crate::base64url;
use crate::sha256::HmacKey;

/// A key of a signed rule: its id and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKey {
    /// The id tokens name it by.
    pub id: String,
    /// The HMAC secret (32 to 64 bytes), made ready for MACs.
    pub secret: HmacKey,
}

/// Shortest secret: HMAC-SHA256's output length, below which the key is the weak point (RFC 2104).
pub const MIN_SECRET_LEN: usize = 32;
/// Longest secret: SHA-256's block; a longer key would be hashed down to 32 bytes anyway.
pub const MAX_SECRET_LEN: usize = 64;

impl TokenKey {
    /// Reads a key written as `<id>:<secret in base64>` (either base64 alphabet, padding
    /// optional), as a rule's `tokenKeys` lists them. The error says what is wrong.
    pub fn parse(text: &str) -> Result<TokenKey, String> {
        let colon = text.bytes().position(|byte| byte == b':');
        let (Some(id), Some(secret)) = (
            colon.and_then(|colon| text.get(..colon)),
            colon.and_then(|colon| text.get(colon + 1..)),
        ) else {
            return Err("is not \"<key id>:<secret in base64>\"".into());
        };
        if id.is_empty() || id.len() > 64 || !id.bytes().all(is_label_byte) {
            return Err(format!(
                "key id {id:?} must be 1 to 64 letters, digits, '_' and '-'"
            ));
        }
        let Some(secret) = base64url::decode(secret) else {
            return Err(format!("the secret of key {id:?} is not base64"));
        };
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
            return Err(format!(
                "the secret of key {id:?} is {} bytes; use {MIN_SECRET_LEN} to {MAX_SECRET_LEN} random bytes (openssl rand -base64 32)",
                secret.len()
            ));
        }
        Ok(TokenKey {
            id: id.to_string(),
            secret: HmacKey::new(&secret),
        })
    }
}

/// Why a token was refused: the `reason` label of `meshcanary_qa_tokens_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not `<key id>.<variant>.<expiry>.<mac>`.
    Malformed,
    /// Names a key the rule does not have (retired, or never there).
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadSignature,
    /// Past its expiry (or the proxy's clock could not be read).
    Expired,
    /// Signed, but for a variant this route does not have.
    UnknownVariant,
}

impl Rejection {
    /// Every rejection, in stat order.
    pub const ALL: [Rejection; 5] = [
        Rejection::Malformed,
        Rejection::UnknownKey,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::UnknownVariant,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::UnknownVariant => "unknown_variant",
        }
    }

    /// Position in [`Rejection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A token for `variant`, signed with `key`, valid until `expiry` (Unix seconds).
pub fn mint(key: &TokenKey, variant: &str, expiry: u64) -> String {
    let payload = format!("{}.{variant}.{expiry}", key.id);
    let mac = base64url::encode(&key.secret.mac(payload.as_bytes()));
    format!("{payload}.{mac}")
}

/// Checks `token` against `keys` at time `now` (Unix seconds; `None`: unknown, so expired), and
/// returns the variant it opens. Which variants the route has is the caller's check
/// ([`Rejection::UnknownVariant`]).
pub fn verify<'a>(
    keys: &[TokenKey],
    token: &'a [u8],
    now: Option<u64>,
) -> Result<&'a [u8], Rejection> {
    let mut parts = token.rsplitn(2, |byte| *byte == b'.');
    let (Some(mac), Some(payload)) = (parts.next(), parts.next()) else {
        return Err(Rejection::Malformed);
    };
    let mut fields = payload.splitn(3, |byte| *byte == b'.');
    let (Some(id), Some(variant), Some(expiry)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(Rejection::Malformed);
    };
    let well_formed = mac.len() == 43
        && !id.is_empty()
        && !variant.is_empty()
        && [id, variant]
            .iter()
            .all(|part| part.iter().copied().all(is_label_byte))
        && (1..=20).contains(&expiry.len())
        && expiry.iter().all(u8::is_ascii_digit);
    if !well_formed {
        return Err(Rejection::Malformed);
    }
    let key = keys
        .iter()
        .find(|key| key.id.as_bytes() == id)
        .ok_or(Rejection::UnknownKey)?;
    let expected = base64url::encode(&key.secret.mac(payload));
    if !constant_time_eq(expected.as_bytes(), mac) {
        return Err(Rejection::BadSignature);
    }
    // Digits only and at most 20 of them; a value past u64 is "never", as far as anyone will see.
    let expiry = expiry.iter().fold(0u64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    });
    match now {
        Some(now) if now < expiry => Ok(variant),
        _ => Err(Rejection::Expired),
    }
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only: a forger learns
/// nothing from how long a wrong MAC took to refuse.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |difference, (x, y)| difference | (x ^ y));
    // `black_box` keeps the compiler from turning the fold into an early-exit comparison.
    a.len() == b.len() && std::hint::black_box(difference) == 0
}

fn is_label_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 bytes of 0x01..0x20, as base64.
    const SECRET: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

    fn key(id: &str) -> TokenKey {
        TokenKey::parse(&format!("{id}:{SECRET}")).unwrap()
    }

    #[test]
    fn a_minted_token_has_the_documented_form() {
        let token = mint(&key("k1"), "v2", 1_767_225_600);
        let (payload, mac) = token.rsplit_once('.').unwrap();
        assert_eq!(payload, "k1.v2.1767225600");
        // HMAC-SHA256 under bytes 1..=32 of exactly this payload, computed independently with
        // the hmac crate.
        use hmac::{KeyInit, Mac};
        let secret: Vec<u8> = (1..=32).collect();
        let mut reference = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
        reference.update(payload.as_bytes());
        assert_eq!(mac, base64url::encode(&reference.finalize().into_bytes()));
        assert_eq!(mac.len(), 43);
    }

    #[test]
    fn tokens_are_verified() {
        let keys = [key("k1"), key("k0")];
        let now = Some(1_000);
        let good = mint(&keys[0], "v2", 2_000);
        let by_old_key = mint(&keys[1], "v3", 2_000);
        let mut altered = good.clone().into_bytes();
        altered[3] = b'3'; // v2 -> v3 under the same MAC
        let other_secret = TokenKey::parse(&format!("k1:{}", base64url::encode(&[9; 32]))).unwrap();
        let forged = mint(&other_secret, "v2", 2_000);
        let mut flipped_mac = good.clone().into_bytes();
        let last = flipped_mac.len() - 1;
        flipped_mac[last] = if flipped_mac[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        type Case<'a> = (&'a str, Vec<u8>, Option<u64>, Result<&'a str, Rejection>);
        let cases: Vec<Case> = vec![
            ("valid", good.clone().into_bytes(), now, Ok("v2")),
            ("valid, second key", by_old_key.into_bytes(), now, Ok("v3")),
            (
                "at its expiry",
                good.clone().into_bytes(),
                Some(2_000),
                Err(Rejection::Expired),
            ),
            (
                "after it",
                good.clone().into_bytes(),
                Some(5_000),
                Err(Rejection::Expired),
            ),
            (
                "no clock",
                good.clone().into_bytes(),
                None,
                Err(Rejection::Expired),
            ),
            (
                "variant changed",
                altered,
                now,
                Err(Rejection::BadSignature),
            ),
            (
                "another secret",
                forged.into_bytes(),
                now,
                Err(Rejection::BadSignature),
            ),
            (
                "one MAC character changed",
                flipped_mac,
                now,
                Err(Rejection::BadSignature),
            ),
            (
                "retired key",
                mint(&key("k9"), "v2", 2_000).into_bytes(),
                now,
                Err(Rejection::UnknownKey),
            ),
            ("empty", b"".to_vec(), now, Err(Rejection::Malformed)),
            (
                "no dots",
                b"always".to_vec(),
                now,
                Err(Rejection::Malformed),
            ),
            (
                "three parts",
                b"k1.v2.2000".to_vec(),
                now,
                Err(Rejection::Malformed),
            ),
            (
                "short MAC",
                good.as_bytes()[..good.len() - 1].to_vec(),
                now,
                Err(Rejection::Malformed),
            ),
            (
                "expiry not a number",
                format!("k1.v2.soon.{}", "A".repeat(43)).into_bytes(),
                now,
                Err(Rejection::Malformed),
            ),
            (
                "dot in the variant",
                format!("k1.v.2.2000.{}", "A".repeat(43)).into_bytes(),
                now,
                Err(Rejection::Malformed),
            ),
            (
                "non-UTF-8",
                b"k1.v\xff.2000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_vec(),
                now,
                Err(Rejection::Malformed),
            ),
        ];
        for (name, token, now, expected) in cases {
            let got = verify(&keys, &token, now).map(|v| std::str::from_utf8(v).unwrap());
            assert_eq!(got, expected, "{name}");
        }
        // A far-future expiry does not overflow.
        let forever = mint(&keys[0], "v2", u64::MAX);
        assert_eq!(
            verify(&keys, forever.as_bytes(), Some(u64::MAX - 1)),
            Ok(&b"v2"[..])
        );
    }

    #[test]
    fn keys_are_parsed_with_reasons() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA", Ok("k1")),
            (
                "2026-12:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
                Ok("2026-12"),
            ),
            ("k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA+", Ok("k1")),
            (
                "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw",
                Err("is 31 bytes"),
            ),
            (
                "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyB",
                Err("is not base64"),
            ),
            ("no-colon", Err("is not \"<key id>:<secret in base64>\"")),
            (":AQID", Err("must be 1 to 64 letters")),
            ("k.1:AQID", Err("must be 1 to 64 letters")),
            ("k1:AQID", Err("is 3 bytes; use 32 to 64 random bytes")),
            ("k1:!!", Err("is not base64")),
        ];
        for (text, expected) in cases {
            match (TokenKey::parse(text), expected) {
                (Ok(key), Ok(id)) => assert_eq!(key.id, *id),
                (Err(reason), Err(part)) => assert!(reason.contains(part), "{text}: {reason}"),
                (got, want) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
        let long = format!("k1:{}", base64url::encode(&[7; 65]));
        assert!(TokenKey::parse(&long).unwrap_err().contains("is 65 bytes"));
    }

    #[test]
    fn comparison_looks_at_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}

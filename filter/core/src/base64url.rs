//! Base64 in the URL- and cookie-safe alphabet (RFC 4648 §5), without padding: new visitors' ids
//! and the MACs of signed QA tokens are written in it, and key secrets are read from it.
//!
//! Small on purpose (the filter's module has a size budget): an encoder, and a decoder that also
//! takes the standard alphabet and `=` padding, since secrets are usually made with
//! `openssl rand -base64 32`.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (i, byte)| {
            word | u32::from(*byte) << (16 - 8 * i)
        });
        // A chunk of n bytes gives n + 1 characters.
        for i in 0..=chunk.len() {
            let index = (word >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(
                ALPHABET.get(index as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
    out
}

/// The value of one base64 character of either alphabet.
fn value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' | b'+' => 62,
        b'_' | b'/' => 63,
        _ => return None,
    }))
}

/// Decodes base64 in either alphabet, with or without `=` padding; `None` for anything else
/// (other characters, a length no encoding has, bits left over in the last character).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut text = text.as_bytes();
    while let Some(rest) = text.strip_suffix(b"=") {
        text = rest;
    }
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut word = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            word |= value(*c)? << (18 - 6 * i);
        }
        // A chunk of n characters holds n − 1 bytes; the bits below them must be zero.
        let bytes = chunk.len() - 1;
        if word & (0x00ff_ffff >> (8 * bytes)) != 0 {
            return None;
        }
        out.extend(word.to_be_bytes().iter().skip(1).take(bytes));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_4648_vectors() {
        // RFC 4648 §10, without padding.
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn decodes_either_alphabet_with_or_without_padding() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("Zm9vYg==", Some(b"foob")),
            ("Zm9vYg", Some(b"foob")),
            ("-_8", Some(&[0xfb, 0xff])),
            ("+/8=", Some(&[0xfb, 0xff])),
            ("Zm9vY", None),
            ("Zm9vYh", None),
            ("Zm 9v", None),
            ("Zm9v!", None),
        ];
        for (text, bytes) in cases {
            assert_eq!(decode(text).as_deref(), *bytes, "{text}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let text = encode(&bytes);
            prop_assert!(text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            prop_assert_eq!(text.len(), (bytes.len() * 4).div_ceil(3));
            prop_assert_eq!(decode(&text), Some(bytes));
        }

        #[test]
        fn decoding_anything_never_panics(text in ".{0,64}") {
            let _ = decode(&text);
        }
    }
}

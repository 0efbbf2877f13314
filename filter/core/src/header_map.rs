//! A header map in the proxy-wasm ABI's wire format, read in place.
//!
//! The filter fetches all request headers with one host call (`proxy_get_header_map_pairs`) instead
//! of one call per header: every host call that returns data makes Envoy call back into the VM to
//! allocate the buffer, and that round trip, not the lookup, is what a header read costs (see
//! BENCHMARKS.md). The decision then looks headers up here, without copying them.
//!
//! The format (little-endian): the number of pairs as a `u32`; for each pair its key length and
//! value length as two `u32`; then for each pair the key, a NUL byte, the value, a NUL byte.

use crate::request::RequestView;

/// Bytes per length field.
const WORD: usize = 4;

/// A serialized header map. Every read is bounds-checked: a malformed buffer never panics, and
/// the pairs from the first one that does not fit on are simply not there, so the decision sees a
/// request without those headers and the request passes through.
///
/// Lookups scan the buffer itself: indexing the pairs first cost more per request than it saved,
/// even with ten rules to evaluate (BENCHMARKS.md). A lookup skips a pair by its key length, from
/// the length table, before reading any of its bytes.
#[derive(Debug, Clone, Copy)]
pub struct HeaderPairs<'a> {
    bytes: &'a [u8],
}

impl<'a> HeaderPairs<'a> {
    /// Reads the header map in `bytes`.
    pub fn new(bytes: &'a [u8]) -> HeaderPairs<'a> {
        HeaderPairs { bytes }
    }

    /// The pairs in the order the host sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let bytes = self.bytes;
        let count = read_word(bytes, 0).unwrap_or(0);
        // The data follows the length table (a key and a value length per pair).
        let mut data = usize::try_from(count)
            .ok()
            .and_then(|count| count.checked_mul(2 * WORD)?.checked_add(WORD));
        let mut table = WORD;
        (0..count).map_while(move |_| {
            let key_length = usize::try_from(read_word(bytes, table)?).ok()?;
            let value_length = usize::try_from(read_word(bytes, table + WORD)?).ok()?;
            table += 2 * WORD;
            let key_start = data?;
            let key = bytes.get(key_start..key_start.checked_add(key_length)?)?;
            let value_start = key_start + key_length + 1;
            let value = bytes.get(value_start..value_start.checked_add(value_length)?)?;
            data = value_start.checked_add(value_length + 1);
            Some((key, value))
        })
    }
}

impl<'a> HeaderPairs<'a> {
    /// The first pair named `name` at or after `cursor`, and where the scan stops after it.
    ///
    /// The hot loop of the decision (once per rule and key): it compares a pair's key length from
    /// the length table before touching the pair's bytes, and slices only the pair that matches.
    fn find(&self, name: &[u8], cursor: Cursor) -> Option<(&'a [u8], Cursor)> {
        let bytes = self.bytes;
        let count = usize::try_from(read_word(bytes, 0)?).ok()?;
        let Cursor {
            mut pair,
            mut table,
            mut data,
        } = match cursor {
            Cursor::START => Cursor {
                pair: 0,
                table: WORD,
                data: count.checked_mul(2 * WORD)?.checked_add(WORD)?,
            },
            cursor => cursor,
        };
        while pair < count {
            let key_length = usize::try_from(read_word(bytes, table)?).ok()?;
            let value_length = usize::try_from(read_word(bytes, table + WORD)?).ok()?;
            table += 2 * WORD;
            pair += 1;
            let value_start = data.checked_add(key_length)?.checked_add(1)?;
            let value_end = value_start.checked_add(value_length)?;
            // Past the end, every later pair is missing too, as `iter` says.
            let next = value_end.checked_add(1)?;
            if key_length == name.len() && bytes.get(data..value_start - 1)? == name {
                let value = bytes.get(value_start..value_end)?;
                return Some((
                    value,
                    Cursor {
                        pair,
                        table,
                        data: next,
                    },
                ));
            }
            data = next;
        }
        None
    }
}

/// Where a scan of the pairs goes on: the next pair's index, its length-table entry and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    pair: usize,
    table: usize,
    data: usize,
}

impl Cursor {
    /// Before the first pair (its offsets depend on the pair count, read by the first scan).
    const START: Cursor = Cursor {
        pair: 0,
        table: 0,
        data: 0,
    };
}

impl RequestView for HeaderPairs<'_> {
    /// The first value of header `name`, like Envoy's single-header read. Envoy's keys are
    /// lowercase, and so are the names the decision asks for.
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.find(name.as_bytes(), Cursor::START)
            .map(|(value, _)| value)
    }

    /// Every value of header `name`, each found by the same scan as [`HeaderPairs::header`],
    /// going on from the pair after the last one found.
    fn header_values<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b [u8]> {
        let mut cursor = Some(Cursor::START);
        std::iter::from_fn(move || {
            let (value, next) = self.find(name.as_bytes(), cursor?)?;
            cursor = Some(next);
            Some(value)
        })
    }
}

fn read_word(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(WORD)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Serializes pairs the way the host does: for tests and benchmarks that stand in for Envoy.
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let word = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&word(pairs.len()));
    for (key, value) in pairs {
        bytes.extend_from_slice(&word(key.as_ref().len()));
        bytes.extend_from_slice(&word(value.as_ref().len()));
    }
    for (key, value) in pairs {
        bytes.extend_from_slice(key.as_ref());
        bytes.push(0);
        bytes.extend_from_slice(value.as_ref());
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_headers_by_name() {
        let bytes = encode(&[
            (":authority", "reviews:9080"),
            (":path", "/reviews/1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-empty", ""),
        ]);
        let headers = HeaderPairs::new(&bytes);
        let cases: &[(&str, Option<&str>)] = &[
            (":authority", Some("reviews:9080")),
            (":path", Some("/reviews/1")),
            // The first of repeated headers, as Envoy's single-header read returns.
            ("cookie", Some("a=1")),
            ("x-empty", Some("")),
            ("x-missing", None),
            ("", None),
            ("Cookie", None),
        ];
        for (name, expected) in cases {
            assert_eq!(headers.header(name), expected.map(str::as_bytes), "{name}");
        }
        let all = |name| headers.header_values(name).collect::<Vec<_>>();
        assert_eq!(all("cookie"), vec![&b"a=1"[..], &b"b=2"[..]]);
        assert_eq!(all(":path"), vec![&b"/reviews/1"[..]]);
        assert_eq!(all("x-empty"), vec![&b""[..]]);
        assert!(all("x-missing").is_empty());
        assert_eq!(headers.iter().count(), 5);
    }

    #[test]
    fn reads_the_abi_wire_format() {
        // Two pairs as the ABI lays them out: count, length table, NUL-terminated data. (That Envoy
        // sends exactly this is checked end to end: every e2e test decides on headers read here.)
        let bytes = b"\x02\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00a\x00bc\x00xyz\x00\x00";
        let headers = HeaderPairs::new(bytes);
        let pairs: Vec<_> = headers.iter().collect();
        assert_eq!(
            pairs,
            vec![(&b"a"[..], &b"bc"[..]), (&b"xyz"[..], &b""[..])]
        );
        assert_eq!(encode(&[("a", "bc"), ("xyz", "")]), bytes.to_vec());
    }

    #[test]
    fn malformed_buffers_end_where_they_stop_making_sense() {
        let good = encode(&[("x-user-id", "u1"), (":authority", "reviews")]);
        let mut lying_count = good.clone();
        lying_count[0] = 100;
        let mut long_second_value = good.clone();
        long_second_value[16] = 200;
        let mut long_first_key = good.clone();
        long_first_key[4] = 200;
        let huge_count = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        // (case, buffer, the pairs that can still be read)
        let cases: &[(&str, &[u8], usize)] = &[
            ("well formed", &good, 2),
            ("empty buffer", &[], 0),
            ("short count", &[1, 0], 0),
            ("count beyond the buffer", &lying_count, 0),
            ("second value beyond the buffer", &long_second_value, 1),
            ("first key beyond the buffer", &long_first_key, 0),
            ("truncated data", good.get(..good.len() - 3).unwrap(), 1),
            ("count that overflows", &huge_count, 0),
        ];
        for (case, bytes, readable) in cases {
            let headers = HeaderPairs::new(bytes);
            assert_eq!(headers.iter().count(), *readable, "{case}");
            assert_eq!(
                headers.header("x-user-id").is_some(),
                *readable >= 1,
                "{case}"
            );
            assert_eq!(
                headers.header(":authority").is_some(),
                *readable >= 2,
                "{case}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..64)),
            0..12,
        )) {
            let bytes = encode(&pairs);
            let read: Vec<(Vec<u8>, Vec<u8>)> = HeaderPairs::new(&bytes)
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            prop_assert_eq!(read, pairs);
        }

        #[test]
        fn a_lookup_finds_what_iterating_finds(
            pairs in proptest::collection::vec((0usize..4, proptest::collection::vec(any::<u8>(), 0..8)), 0..8),
            cut in 0usize..64,
            lie in proptest::option::of((0usize..64, any::<u8>())),
        ) {
            // Well-formed maps, then truncated or with one byte changed (a length that lies).
            let names = ["a", "bb", "x-user-id", ""];
            let named: Vec<(&str, Vec<u8>)> =
                pairs.iter().map(|(name, value)| (names[*name], value.clone())).collect();
            let mut bytes = encode(&named);
            if let Some((at, byte)) = lie {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            let headers = HeaderPairs::new(&bytes);
            for name in names {
                let by_iterating: Vec<&[u8]> = headers
                    .iter()
                    .filter(|(key, _)| *key == name.as_bytes())
                    .map(|(_, value)| value)
                    .collect();
                prop_assert_eq!(headers.header(name), by_iterating.first().copied(), "{}", name);
                prop_assert_eq!(headers.header_values(name).collect::<Vec<_>>(), by_iterating, "{}", name);
            }
        }

        #[test]
        fn any_bytes_are_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let headers = HeaderPairs::new(&bytes);
            let _ = headers.header(":authority");
            // Every pair takes at least its two length words and two NUL bytes.
            prop_assert!(headers.iter().count() <= bytes.len() / 10);
        }
    }
}

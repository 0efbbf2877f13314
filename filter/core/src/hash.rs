//! Assigning a key to one of 10000 buckets, the same way on every proxy and every run.
//!
//! Sticky assignment must not depend on the process, the worker or the Rust version, so this is a
//! fixed, documented function rather than `std`'s randomly seeded hasher: 64-bit FNV-1a over the
//! salt, a separator byte and the key, then MurmurHash3's 64-bit finaliser so that keys differing in
//! their last bytes (user-1, user-2, …) spread over the whole range. The bucket is taken from the
//! high bits by multiplication, which is unbiased enough for 10000 buckets (bias < 10000 / 2^32).

use crate::config::TOTAL_WEIGHT;

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(crate) const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit hash of `(salt, key)`.
pub fn hash(salt: &[u8], key: &[u8]) -> u64 {
    let mut state = FNV_OFFSET;
    for byte in salt.iter().chain(&[0xff]).chain(key) {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(FNV_PRIME);
    }
    finalize(state)
}

/// MurmurHash3's fmix64: every input bit affects every output bit.
pub(crate) fn finalize(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The bucket in `0..10000` that `(salt, key)` falls into.
pub fn bucket(salt: &[u8], key: &[u8]) -> u32 {
    bucket_of(hash(salt, key))
}

/// Maps any 64-bit value (a hash or random draw) onto `0..10000`.
pub fn bucket_of(value: u64) -> u32 {
    // (value >> 32) < 2^32, so the product fits in u64 and the result is < TOTAL_WEIGHT.
    (((value >> 32) * u64::from(TOTAL_WEIGHT)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn is_stable_across_releases() {
        // Pinned values: changing them moves every sticky user, which must be a deliberate decision.
        let cases: &[(&str, &str, u64, u32)] = &[
            ("", "", 0x1bbd_5c81_3c69_a8d7, 1083),
            ("", "user-1", 0xaea7_d55b_6dbd_44ff, 6822),
            ("s1", "alice", 0xa8db_79bf_6669_622f, 6595),
            ("salt", "user-42", 0xd3e6_a5b4_b164_2fe7, 8277),
        ];
        for (salt, key, expected_hash, expected_bucket) in cases {
            assert_eq!(
                hash(salt.as_bytes(), key.as_bytes()),
                *expected_hash,
                "{salt}/{key}"
            );
            assert_eq!(
                bucket(salt.as_bytes(), key.as_bytes()),
                *expected_bucket,
                "{salt}/{key}"
            );
        }
    }

    #[test]
    fn salt_and_key_are_separated() {
        // ("ab", "c") and ("a", "bc") must not collide just because the bytes concatenate the same.
        assert_ne!(hash(b"ab", b"c"), hash(b"a", b"bc"));
    }

    #[test]
    fn sequential_keys_spread_uniformly() {
        // 200 000 keys into 10 deciles: each decile within 2 % of its expected 20 000.
        let mut deciles = [0u32; 10];
        for i in 0..200_000 {
            let b = bucket(b"salt", format!("user-{i}").as_bytes());
            deciles[(b / 1000) as usize] += 1;
        }
        for (i, count) in deciles.iter().enumerate() {
            assert!((19_600..=20_400).contains(count), "decile {i}: {count}");
        }
    }

    #[test]
    fn a_new_salt_draws_an_independent_cohort() {
        // Of users in the bottom 10 % under one salt, about 10 % stay there under another.
        let keys: Vec<String> = (0..100_000).map(|i| format!("u{i}")).collect();
        let first: Vec<&String> = keys
            .iter()
            .filter(|k| bucket(b"r1", k.as_bytes()) < 1000)
            .collect();
        let stay = first
            .iter()
            .filter(|k| bucket(b"r2", k.as_bytes()) < 1000)
            .count();
        let share = stay as f64 / first.len() as f64;
        assert!((0.08..0.12).contains(&share), "{share}");
    }

    proptest! {
        #[test]
        fn buckets_are_always_in_range(salt in ".{0,20}", key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(bucket(salt.as_bytes(), &key) < TOTAL_WEIGHT);
        }

        #[test]
        fn bucket_of_covers_the_range(value in any::<u64>()) {
            prop_assert!(bucket_of(value) < TOTAL_WEIGHT);
        }
    }

    #[test]
    fn bucket_of_extremes() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), TOTAL_WEIGHT - 1);
    }
}

//! SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for signed QA tokens.
//!
//! Our own because of the module's size budget: the `hmac` and `sha2` crates put the filter's
//! module 16.3 KB higher (160 966 bytes against the 150 000 allowed); this is a few hundred bytes
//! of wasm. It is checked against the FIPS 180-4 and RFC 4231 test vectors, and against those
//! crates (dev-dependencies) on random input. Only what tokens need: one-shot hashing of short
//! messages, no streaming API. Not constant time in the message (nothing secret is hashed but the
//! key, which goes through the same fixed sequence of operations whatever its bytes).

/// SHA-256's round constants: the first 32 bits of the fractional parts of the cube roots of the
/// first 64 primes.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// The initial hash value: the first 32 bits of the fractional parts of the square roots of the
/// first 8 primes.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256's block length in bytes.
const BLOCK: usize = 64;

/// SHA-256 of `message`, continuing from `state` after `hashed` bytes (whole blocks) went into it.
#[allow(clippy::indexing_slicing)] // The padding block's indices are below 128 by construction.
fn finish(mut state: [u32; 8], hashed: u64, message: &[u8]) -> [u8; 32] {
    let mut blocks = message.chunks_exact(BLOCK);
    for block in &mut blocks {
        compress(&mut state, block);
    }
    // Padding: a 1 bit, zeros, and the length in bits as 64 bits big-endian, ending a block (two,
    // if the rest of the message leaves no room for the length).
    let rest = blocks.remainder();
    let mut padding = [0u8; 2 * BLOCK];
    padding[..rest.len()].copy_from_slice(rest);
    padding[rest.len()] = 0x80;
    let end = if rest.len() + 9 > BLOCK {
        2 * BLOCK
    } else {
        BLOCK
    };
    let bits = (hashed + message.len() as u64) * 8;
    padding[end - 8..end].copy_from_slice(&bits.to_be_bytes());
    for block in padding[..end].chunks_exact(BLOCK) {
        compress(&mut state, block);
    }
    let mut digest = [0u8; 32];
    for (chunk, word) in digest.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// SHA-256 of `message`.
pub fn sha256(message: &[u8]) -> [u8; 32] {
    finish(H0, 0, message)
}

/// One application of the compression function to a 64-byte block.
#[allow(clippy::indexing_slicing)] // Fixed-size arrays indexed by loop counters below their length.
fn compress(state: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16]
            .wrapping_add(s0)
            .wrapping_add(w[t - 7])
            .wrapping_add(s1);
    }
    let mut v = *state;
    for t in 0..64 {
        let [a, b, c, d, e, f, g, h] = v;
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let choice = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(choice)
            .wrapping_add(K[t])
            .wrapping_add(w[t]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let majority = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(majority);
        v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
    }
    for (word, add) in state.iter_mut().zip(v) {
        *word = word.wrapping_add(add);
    }
}

/// An HMAC-SHA256 key made ready: the hash states after its inner and outer padded blocks, so a
/// MAC costs two blocks fewer, and the key's bytes are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// Prepares `key` (RFC 2104: a key longer than a block is hashed first).
    #[allow(clippy::indexing_slicing)] // The first 32 of 64 bytes.
    pub fn new(key: &[u8]) -> HmacKey {
        let mut padded = [0u8; BLOCK];
        if key.len() > BLOCK {
            padded[..32].copy_from_slice(&sha256(key));
        } else {
            for (slot, byte) in padded.iter_mut().zip(key) {
                *slot = *byte;
            }
        }
        let state_after = |with: u8| {
            let mut state = H0;
            compress(&mut state, &padded.map(|byte| byte ^ with));
            state
        };
        HmacKey {
            inner: state_after(0x36),
            outer: state_after(0x5c),
        }
    }

    /// HMAC-SHA256 of `message`.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        let inner = finish(self.inner, BLOCK as u64, message);
        finish(self.outer, BLOCK as u64, &inner)
    }
}

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    HmacKey::new(key).mac(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn fips_180_4_vectors() {
        // FIPS 180-4's examples (NIST's SHA256.pdf, ShortMsg) and the lengths around a block end.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (b"abc".to_vec(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".to_vec(),
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu".to_vec(),
                "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
            ),
            (vec![b'a'; 1_000_000], "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
        ];
        for (message, digest) in cases {
            assert_eq!(hex(&sha256(&message)), digest, "{} bytes", message.len());
        }
    }

    #[test]
    fn rfc_4231_vectors() {
        // RFC 4231 §4.2–4.8, the HMAC-SHA-256 results (test 5's is truncated to 128 bits).
        let cases: &[(&str, &str, &str)] = &[
            (
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "4869205468657265",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                "4a656665",
                "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &"aa".repeat(20),
                &"dd".repeat(50),
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                "0102030405060708090a0b0c0d0e0f10111213141516171819",
                &"cd".repeat(50),
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &"0c".repeat(20),
                "546573742057697468205472756e636174696f6e",
                "a3b6167473100ee06e0c796c2955552b",
            ),
            (
                &"aa".repeat(131),
                "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a65204b6579202d2048617368204b6579204669727374",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &"aa".repeat(131),
                "5468697320697320612074657374207573696e672061206c6172676572207468616e20626c6f636b2d73697a65206b657920616e642061206c6172676572207468616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565647320746f20626520686173686564206265666f7265206265696e6720757365642062792074686520484d414320616c676f726974686d2e",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, mac) in cases {
            let got = hex(&hmac_sha256(&unhex(key), &unhex(data)));
            assert!(got.starts_with(mac), "key {key}: {got}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_sha2_crate(message in proptest::collection::vec(any::<u8>(), 0..300)) {
            use sha2::Digest;
            let expected: [u8; 32] = sha2::Sha256::digest(&message).into();
            prop_assert_eq!(sha256(&message), expected);
        }

        #[test]
        fn agrees_with_the_hmac_crate(
            key in proptest::collection::vec(any::<u8>(), 0..150),
            message in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            use hmac::{KeyInit, Mac};
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(&message);
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            prop_assert_eq!(hmac_sha256(&key, &message), expected);
        }
    }
}

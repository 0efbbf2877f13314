//! Random buckets for requests that carry neither a sticky key nor a request id.
//!
//! One WASI `random_get` per request would be a host call on the hot path, so each VM (one per
//! Envoy worker thread) seeds a wyrand generator once from WASI and draws from it afterwards.

use meshcanary_core::hash::bucket_of;
use std::cell::Cell;

thread_local! {
    /// `None` until seeded; seeding is retried on the next draw if WASI had no randomness.
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A uniform bucket in `0..10000`, or `None` if no seed could be had.
pub fn bucket() -> Option<u32> {
    draw().map(bucket_of)
}

/// 128 random bits for a new visitor's id (two draws), or `None` if no seed could be had. The id
/// only has to be unique and spread evenly over the buckets, not secret: a visitor can send any
/// cookie value anyway.
pub fn visitor_bits() -> Option<u128> {
    Some(u128::from(draw()?) << 64 | u128::from(draw()?))
}

fn draw() -> Option<u64> {
    STATE.with(|state| {
        let current = match state.get() {
            Some(value) => value,
            None => getrandom::u64().ok()?,
        };
        let (next, output) = wyrand(current);
        state.set(Some(next));
        Some(output)
    })
}

/// wyrand: a 64-bit generator passing BigCrush, one multiply per draw.
fn wyrand(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0xa076_1d64_78bd_642f);
    let product = u128::from(next).wrapping_mul(u128::from(next ^ 0xe703_7ed1_a0b4_28db));
    (next, ((product >> 64) as u64) ^ (product as u64))
}

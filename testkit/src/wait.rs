//! Waiting for something a test cannot be told about directly: poll until it holds.

use std::time::{Duration, Instant};

/// Polls `probe` every 25 ms until it answers `Ok`, for at most `limit`; panics with `what` and
/// the last `Err` if it never does.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

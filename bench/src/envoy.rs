//! The benchmark's Envoys: the test kit's ([`meshcanary_testkit::envoy`]), with one worker and
//! quiet logs, and the reading of their admin `/stats`.

use meshcanary_testkit::envoy::Options;
pub use meshcanary_testkit::envoy::{version, Envoy};
use std::path::Path;
use std::time::Duration;

/// How long Envoy may take to bind its listener when started directly.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How the benchmark runs Envoy `bin`. One worker: the setting, and CPU per request then
/// measures one event loop. Warning level: nothing is logged per request at info either, but
/// startup chatter is not wanted in the log kept for errors.
pub fn options(bin: &Path) -> Options {
    Options {
        concurrency: 1,
        log_level: "warning",
        ready_within: READY_WITHIN,
        ..Options::with_bin(bin.to_path_buf())
    }
}

/// Writes `bootstrap` into `dir`, starts Envoy `bin` on it and waits until its listener is up.
pub async fn start(bin: &Path, bootstrap: &str, dir: &Path) -> anyhow::Result<Envoy> {
    Ok(Envoy::start_bootstrap(bootstrap, dir, &options(bin)).await?)
}

/// The admin `/stats` lines of `envoy` whose names match the regex `filter`.
pub async fn stats(envoy: &Envoy, filter: &str) -> anyhow::Result<String> {
    Ok(envoy.admin_get(&format!("/stats?filter={filter}")).await?)
}

/// Requests each of the two clusters of `envoy` completed so far: (v1, v2).
pub async fn completed_by_cluster(envoy: &Envoy) -> anyhow::Result<(u64, u64)> {
    let stats = stats(envoy, "upstream_rq_completed").await?;
    let get = |cluster: &str| {
        stat_value(&stats, &format!("cluster.{cluster}.upstream_rq_completed")).unwrap_or(0)
    };
    Ok((get("reviews-v1"), get("reviews-v2")))
}

/// The value of stat `name` in Envoy's text `/stats` output (`name: value` lines).
pub fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_values() {
        let stats = "cluster.reviews-v1.upstream_rq_completed: 9012\n\
                     cluster.reviews-v2.upstream_rq_completed: 988\n\
                     cluster.reviews-v2.upstream_rq_completed_x: 5\n";
        let cases = [
            ("cluster.reviews-v1.upstream_rq_completed", Some(9012)),
            ("cluster.reviews-v2.upstream_rq_completed", Some(988)),
            ("cluster.reviews-v3.upstream_rq_completed", None),
            ("upstream_rq_completed", None),
        ];
        for (name, expected) in cases {
            assert_eq!(stat_value(stats, name), expected, "{name}");
        }
    }
}

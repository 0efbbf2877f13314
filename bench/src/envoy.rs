//! An Envoy under test: one worker (`--concurrency 1`), ephemeral loopback ports, stopped when
//! dropped; and the reading of its admin `/stats`.

use crate::client;
use crate::process::Guarded;
use anyhow::{bail, Context};
use hyper::body::Bytes;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long Envoy may take to bind its listener when started directly.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running Envoy; killed and reaped when dropped.
pub struct Envoy {
    process: Guarded,
    /// Its admin interface.
    pub admin: SocketAddr,
    /// Its HTTP listener.
    pub listener: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Writes `bootstrap` into `dir`, starts Envoy on it and waits until its listener is up.
    pub async fn start(envoy_bin: &Path, bootstrap: &str, dir: &Path) -> anyhow::Result<Envoy> {
        Envoy::start_under(&[], envoy_bin, bootstrap, dir, READY_WITHIN).await
    }

    /// [`Envoy::start`] with Envoy's command line after `wrapper` (a program and its arguments, such
    /// as valgrind's; empty: Envoy itself), allowing `ready_within` for the listener to come up.
    /// [`Envoy::pid`] is then the wrapper's process, which must run Envoy in itself (as valgrind
    /// does), not in a child.
    pub async fn start_under(
        wrapper: &[OsString],
        envoy_bin: &Path,
        bootstrap: &str,
        dir: &Path,
        ready_within: Duration,
    ) -> anyhow::Result<Envoy> {
        std::fs::create_dir_all(dir)?;
        let bootstrap_path = dir.join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap).context("write bootstrap")?;
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let log_file = std::fs::File::create(&log).context("create envoy.log")?;
        let (mut command, what) = match wrapper.split_first() {
            None => (
                Command::new(envoy_bin),
                format!("Envoy {}", envoy_bin.display()),
            ),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(envoy_bin);
                let what = format!(
                    "Envoy {} under {}",
                    envoy_bin.display(),
                    program.to_string_lossy()
                );
                (command, what)
            }
        };
        command
            .arg("-c")
            .arg(&bootstrap_path)
            // One worker: the issue's setting, and CPU per request then measures one event loop.
            // warning level: nothing is logged per request at info either, but startup chatter is
            // not wanted in the log kept for errors.
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let process = Guarded::spawn(&mut command, &what)?;
        let deadline = Instant::now() + ready_within;
        let admin = loop {
            if let Some(status) = process.try_wait()? {
                bail!("Envoy exited with {status}:\n{}", read_log(&log));
            }
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok())
            {
                break admin;
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy wrote no admin address in {} s:\n{}",
                    ready_within.as_secs(),
                    read_log(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listener = loop {
            if let Some(status) = process.try_wait()? {
                bail!("Envoy exited with {status}:\n{}", read_log(&log));
            }
            let ready = client::get_text(admin, "/ready").await.is_ok();
            if ready {
                let listeners = client::get_text(admin, "/listeners?format=json").await?;
                if let Some(port) = listener_port(&listeners) {
                    break SocketAddr::from(([127, 0, 0, 1], port));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy not ready in {} s:\n{}",
                    ready_within.as_secs(),
                    read_log(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Envoy {
            process,
            admin,
            listener,
            log,
        })
    }

    /// Asks Envoy to exit (`POST /quitquitquit` on its admin interface) and waits at most `within`
    /// for it to end, so that a wrapper such as valgrind ends cleanly too. Whatever happens, the
    /// process is gone when this returns: one still running is killed when `self` drops.
    pub async fn quit(self, within: Duration) -> anyhow::Result<ExitStatus> {
        let mut admin = client::Connection::open(self.admin).await?;
        let (status, body) = admin
            .send(
                "POST",
                "/quitquitquit",
                &[("host", "localhost")],
                Bytes::new(),
            )
            .await?;
        if status != 200 {
            bail!(
                "POST /quitquitquit: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy still running {} s after /quitquitquit",
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id (CPU and memory are read from /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The admin `/stats` lines whose names match the regex `filter`.
    pub async fn stats(&self, filter: &str) -> anyhow::Result<String> {
        client::get_text(self.admin, &format!("/stats?filter={filter}")).await
    }

    /// Requests each of the two clusters completed so far: (v1, v2).
    pub async fn completed_by_cluster(&self) -> anyhow::Result<(u64, u64)> {
        let stats = self.stats("upstream_rq_completed").await?;
        let get = |cluster: &str| {
            stat_value(&stats, &format!("cluster.{cluster}.upstream_rq_completed")).unwrap_or(0)
        };
        Ok((get("reviews-v1"), get("reviews-v2")))
    }
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    // The end is where the reason is.
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|index| log.is_char_boundary(*index))
        .unwrap_or(log.len());
    log[start..].to_string()
}

/// The port of the first listener in `/listeners?format=json`; `None` until it is bound.
pub fn listener_port(json: &str) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let port =
        value["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|port| *port != 0)
}

/// The value of stat `name` in Envoy's text `/stats` output (`name: value` lines).
pub fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// The version in `envoy --version` output (`…/1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse_version(text: &str) -> Option<String> {
    let build = text.split("version:").nth(1)?.split_whitespace().next()?;
    let fields: Vec<&str> = build.split('/').collect();
    let version = fields.get(1)?;
    Some(match (fields.get(2), fields.get(3)) {
        (Some(state), Some(mode)) => format!("{version} ({state} {mode})"),
        _ => version.to_string(),
    })
}

/// `envoy --version`, parsed.
pub fn version(envoy_bin: &Path) -> Option<String> {
    let output = Command::new(envoy_bin).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
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

    #[test]
    fn listener_ports() {
        let bound = r#"{"listener_statuses":[{"name":"ingress","local_address":{"socket_address":{"address":"127.0.0.1","port_value":41234}}}]}"#;
        let unbound = r#"{"listener_statuses":[{"name":"ingress","local_address":{"socket_address":{"address":"127.0.0.1","port_value":0}}}]}"#;
        let cases = [
            (bound, Some(41234)),
            (unbound, None),
            ("{}", None),
            ("not json", None),
        ];
        for (json, expected) in cases {
            assert_eq!(listener_port(json), expected, "{json}");
        }
    }

    #[test]
    fn versions() {
        let cases = [
            (
                "\nenvoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n\n",
                Some("1.40.0 (Clean RELEASE)"),
            ),
            ("envoy version: abc/1.33.2", Some("1.33.2")),
            ("no such file", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_version(text).as_deref(), expected, "{text}");
        }
    }
}

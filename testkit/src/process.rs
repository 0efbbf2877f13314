//! Child processes that are always stopped: when their handle drops (a normal end, an error, a
//! panic) and, once [`stop_children_on_signal`] is called, when the program gets Ctrl-C or
//! SIGTERM, which would otherwise end it without running any destructor (`make bench` runs for
//! many minutes, and a person stops it).
//!
//! Every child lives in one registry; a handle removes, kills and reaps its child on drop, and the
//! signal watcher kills and reaps whatever is still registered before exiting. The servers a test
//! binary shares in statics outlive every handle and run under [`crate::supervise`] instead.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much of a log's end an error carries: where the reason is, without pages of startup.
const LOG_TAIL_BYTES: usize = 4000;

struct Registry {
    children: Vec<(u64, Child)>,
    /// Directories to remove on a signal (their owners' destructors will not run).
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    dirs: Vec::new(),
});
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the data usable: it is only a list.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running child process; killed and reaped when dropped.
pub struct Process {
    id: u64,
    pid: u32,
    what: String,
    log: Option<PathBuf>,
}

impl Process {
    /// Starts `command` as it is set up (its standard streams included); `what` names the program
    /// in errors.
    pub fn spawn(command: &mut Command, what: &str) -> Result<Process> {
        Process::register(command, what, None)
    }

    /// Starts `command` with no standard input and its output appended to `log` (created if
    /// need be, so a restarted process continues the same story).
    pub fn spawn_logged(command: &mut Command, what: &str, log: &Path) -> Result<Process> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|error| Error::failed(format!("open {}", log.display()), error))?;
        let stderr = file
            .try_clone()
            .map_err(|error| Error::failed(format!("open {}", log.display()), error))?;
        command.stdin(Stdio::null()).stdout(file).stderr(stderr);
        Process::register(command, what, Some(log.to_path_buf()))
    }

    fn register(command: &mut Command, what: &str, log: Option<PathBuf>) -> Result<Process> {
        // Spawned under the lock, so a signal cannot come between the start and the registration.
        let mut registry = registry();
        let child = command.spawn().map_err(|source| Error::Start {
            what: what.to_string(),
            source,
        })?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = child.id();
        registry.children.push((id, child));
        Ok(Process {
            id,
            pid,
            what: what.to_string(),
            log,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the child has ended.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut registry = registry();
        let Some((_, child)) = registry.children.iter_mut().find(|(id, _)| *id == self.id) else {
            return Err(Error::failed(
                format!("{} (pid {})", self.what, self.pid),
                "no longer registered",
            ));
        };
        child
            .try_wait()
            .map_err(|error| Error::failed(format!("wait for {}", self.what), error))
    }

    /// Waits for the child to end by itself, at most `within`.
    pub fn wait(&self, within: Duration) -> Result<ExitStatus> {
        // Polled rather than blocking in `wait()` so the registry lock stays free for the signal
        // watcher.
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::StillRunning {
                    what: self.what.clone(),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; waits at most `within` for the exit.
    pub fn terminate(&self, within: Duration) -> Result<ExitStatus> {
        let pid = self.pid.to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        if !sent.as_ref().is_ok_and(ExitStatus::success) {
            return Err(Error::failed(
                format!("kill -TERM {pid}"),
                format!("{sent:?}"),
            ));
        }
        self.wait(within)
    }

    /// SIGKILL (gone without a word: a lost node, an OOM kill), then reaps it; how it ended.
    pub fn kill(&self) -> Result<ExitStatus> {
        let mut registry = registry();
        let Some((_, child)) = registry.children.iter_mut().find(|(id, _)| *id == self.id) else {
            return Err(Error::failed(self.what.clone(), "no longer registered"));
        };
        // An error means it has ended already; the wait says how.
        let _ = child.kill();
        child
            .wait()
            .map_err(|error| Error::failed(format!("reap {}", self.what), error))
    }

    /// Its whole log so far (empty if it has none).
    pub fn log(&self) -> String {
        self.log
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..log.len())
            .find(|index| log.is_char_boundary(*index))
            .unwrap_or(log.len());
        log[start..].to_string()
    }

    /// The file it logs to, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Polls `probe` every 25 ms until it answers `Ok`, for at most `within`: an error if the
    /// process ends first ([`Error::Exited`]) or the time runs out ([`Error::NotReady`], with the
    /// probe's last answer).
    pub async fn wait_ready<T>(
        &self,
        within: Duration,
        mut probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(Error::Exited {
                    what: self.what.clone(),
                    status,
                    log: self.log_tail(),
                });
            }
            match probe().await {
                Ok(value) => return Ok(value),
                Err(last) if Instant::now() > deadline => {
                    return Err(Error::NotReady {
                        what: self.what.clone(),
                        within,
                        last,
                        log: self.log_tail(),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = {
            let mut registry = registry();
            let index = registry.children.iter().position(|(id, _)| *id == self.id);
            index.map(|index| registry.children.swap_remove(index).1)
        };
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Registers a directory to delete if the program is stopped by a signal.
pub fn remove_on_signal(dir: PathBuf) {
    registry().dirs.push(dir);
}

/// Kills and reaps every registered child and removes the registered directories.
fn stop_everything() {
    let mut registry = registry();
    for (_, child) in &mut registry.children {
        let _ = child.kill();
        let _ = child.wait();
    }
    registry.children.clear();
    for dir in registry.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Watches for Ctrl-C and SIGTERM on a thread of its own; on either, says so as `who`, stops
/// every child and exits with 130.
pub fn stop_children_on_signal(who: &str) -> Result<()> {
    let setup = |error: std::io::Error| Error::failed("watch for signals", error);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(setup)?;
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before returning, so a signal right after this call is already caught.
    let mut terminate = runtime
        .block_on(async { signal(SignalKind::terminate()) })
        .map_err(setup)?;
    let mut interrupt = runtime
        .block_on(async { signal(SignalKind::interrupt()) })
        .map_err(setup)?;
    let who = who.to_string();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                }
            });
            eprintln!("{who}: {name}: stopping every process it started");
            stop_everything();
            std::process::exit(130);
        })
        .map_err(setup)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped child's /proc entry is gone; a zombie would show state Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn a_dropped_handle_kills_and_reaps_its_child() {
        let child = Process::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let pid = child.pid();
        assert!(alive(pid));
        assert!(child.try_wait().unwrap().is_none());
        drop(child);
        assert!(!alive(pid));
    }

    #[test]
    fn wait_returns_the_exit_status_or_times_out() {
        let quick = Process::spawn(&mut Command::new("true"), "true").unwrap();
        assert!(quick.wait(Duration::from_secs(10)).unwrap().success());
        let slow = Process::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let error = slow.wait(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(error, Error::StillRunning { .. }), "{error}");
    }

    #[test]
    fn terminate_and_kill_end_the_child() {
        let termed = Process::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let status = termed.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        let killed = Process::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let status = killed.kill().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!alive(killed.pid()));
    }

    #[test]
    fn a_missing_program_is_a_named_error() {
        let error = Process::spawn(&mut Command::new("/nonexistent/wrk"), "wrk")
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("start wrk: "), "{error}");
    }

    #[test]
    fn a_log_keeps_what_the_process_wrote_and_its_tail_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "earlier run\n").unwrap();
        let long = "y".repeat(LOG_TAIL_BYTES);
        let process = Process::spawn_logged(
            Command::new("sh").args(["-c", &format!("echo out; echo {long}-end >&2")]),
            "sh",
            &log,
        )
        .unwrap();
        process.wait(Duration::from_secs(10)).unwrap();
        let whole = process.log();
        assert!(whole.starts_with("earlier run\nout\n"), "{whole}");
        let tail = process.log_tail();
        assert_eq!(tail.len(), LOG_TAIL_BYTES);
        assert!(tail.ends_with("-end\n"), "{tail}");
    }

    #[tokio::test]
    async fn readiness_ends_with_the_probe_the_exit_or_the_time() {
        let running = Process::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let mut probes = 0;
        let ready = running
            .wait_ready(Duration::from_secs(5), async || {
                probes += 1;
                if probes < 3 {
                    Err(format!("probe {probes}"))
                } else {
                    Ok(probes)
                }
            })
            .await
            .unwrap();
        assert_eq!(ready, 3);
        let late = running
            .wait_ready(Duration::from_millis(60), async || {
                Err::<(), _>("no".into())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&late, Error::NotReady { last, .. } if last == "no"),
            "{late}"
        );
        let gone = Process::spawn(Command::new("sh").args(["-c", "exit 3"]), "sh").unwrap();
        let exited = gone
            .wait_ready(Duration::from_secs(5), async || Err::<(), _>("no".into()))
            .await
            .unwrap_err();
        assert!(
            exited
                .to_string()
                .starts_with("sh exited with exit status: 3"),
            "{exited}"
        );
    }
}

//! Child processes (Envoys, the control service, wrk) that are always stopped: when their handle drops (normal end, `?`
//! error, panic) and when the bench gets Ctrl-C or SIGTERM, which would otherwise end the process
//! without running any destructor.
//!
//! Every child lives in one registry; a handle removes, kills and reaps its child on drop, and the
//! signal watcher kills and reaps whatever is still registered before exiting.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
pub struct Guarded {
    id: u64,
    pid: u32,
}

impl Guarded {
    /// Starts `command`; `what` names the program in the error if it cannot start.
    pub fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Guarded> {
        let mut registry = registry();
        let child = command.spawn().with_context(|| format!("start {what}"))?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = child.id();
        registry.children.push((id, child));
        Ok(Guarded { id, pid })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the child has ended.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        let mut registry = registry();
        let Some((_, child)) = registry.children.iter_mut().find(|(id, _)| *id == self.id) else {
            bail!("process {} is no longer registered", self.pid);
        };
        Ok(child.try_wait()?)
    }

    /// Waits for the child to end by itself, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        // Polled rather than blocking in `wait()` so the registry lock stays free for the signal
        // watcher.
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process {} still running after {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
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

/// Registers a directory to delete if the bench is stopped by a signal.
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

/// Watches for Ctrl-C and SIGTERM on a thread of its own; on either, stops every child and exits
/// with 130.
pub fn stop_children_on_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("signal runtime")?;
    // Registered before returning, so a signal right after this call is already caught.
    let mut terminate = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .context("watch SIGTERM")?;
    let mut interrupt = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .context("watch SIGINT")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                }
            });
            eprintln!("bench: {name}: stopping every process it started");
            stop_everything();
            std::process::exit(130);
        })
        .context("signal thread")?;
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
        let child = Guarded::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let pid = child.pid();
        assert!(alive(pid));
        assert!(child.try_wait().unwrap().is_none());
        drop(child);
        assert!(!alive(pid));
    }

    #[test]
    fn wait_returns_the_exit_status_or_times_out() {
        let quick = Guarded::spawn(Command::new("true").arg(""), "true").unwrap();
        assert!(quick.wait(Duration::from_secs(10)).unwrap().success());
        let slow = Guarded::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        assert!(slow.wait(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_missing_program_is_a_named_error() {
        let error = Guarded::spawn(&mut Command::new("/nonexistent/wrk"), "wrk")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("start wrk"), "{error}");
    }
}

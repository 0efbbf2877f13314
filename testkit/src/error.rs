//! Why something the kit starts did not start, or did not answer.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

/// A process that would not start or get ready, or a file or request that failed. Messages carry
/// the end of the process's log, where the reason usually is.
#[derive(thiserror::Error)]
pub enum Error {
    /// The program could not be started at all (missing, not executable).
    #[error("start {what}: {source}")]
    Start {
        /// The program, as the caller named it.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The process ended before it was ready.
    #[error("{what} exited with {status}:\n{log}")]
    Exited {
        /// The process.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The process ran but did not get ready in time.
    #[error("{what} not ready within {within:?} (last: {last}):\n{log}")]
    NotReady {
        /// The process.
        what: String,
        /// How long it was given.
        within: Duration,
        /// What the last readiness probe saw.
        last: String,
        /// The end of its log.
        log: String,
    },
    /// The process did not end when it should have.
    #[error("{what} still running after {within:?}")]
    StillRunning {
        /// The process.
        what: String,
        /// How long it was given.
        within: Duration,
    },
    /// A file the kit writes or reads, or a request it sends, failed.
    #[error("{what}: {reason}")]
    Failed {
        /// What was being done, e.g. `write /tmp/x/envoy.yaml`.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl Error {
    /// A [`Error::Failed`] for `what`, with `reason` as its cause.
    pub fn failed(what: impl Into<String>, reason: impl fmt::Display) -> Error {
        Error::Failed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

// Tests end with `.unwrap()` and `.expect()`, which print `Debug`: the message, with its log's
// line breaks intact, says more there than an escaped struct would.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The kit's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

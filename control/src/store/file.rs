//! The state as one JSON file, replaced atomically: write a temp file, fsync it, rename it over the
//! old one, fsync the directory. A lock file keeps a second service off the same directory.

use super::StateStore;
use crate::atomic_file::write_atomically;
use crate::error::{Error, Result};
use crate::state::ServiceState;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// State in `<dir>/state.json`.
pub struct FileStore {
    dir: PathBuf,
    // Held for the store's lifetime: the OS releases the lock when the process dies, even on kill -9.
    _lock: File,
}

impl FileStore {
    /// Opens (creating) `dir` and takes its lock; fails if another process holds it.
    pub fn open(dir: &Path) -> Result<FileStore> {
        let io = |source| Error::Store {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        lock.try_lock().map_err(|_| Error::Store {
            path: lock_path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another meshcanary service is using this state directory",
            ),
        })?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
}

#[async_trait::async_trait]
impl StateStore for FileStore {
    // Small files on local disk: blocking IO here costs less than a thread hop.
    async fn load(&self) -> Result<Option<ServiceState>> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Store {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| Error::CorruptState {
                path: path.display().to_string(),
                reason: error.to_string(),
            })
    }

    async fn save(&self, state: &ServiceState) -> Result<()> {
        let path = self.path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|error| Error::CorruptState {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        write_atomically(&path, &bytes).map_err(|source| Error::Store {
            path: path.display().to_string(),
            source,
        })
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcanary_core::config::FilterConfig;

    #[tokio::test]
    async fn saves_and_loads_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().await.unwrap(), None);
        let state = ServiceState::new(FilterConfig {
            generation: 7,
            ..FilterConfig::default()
        })
        .unwrap();
        store.save(&state).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(state));
        let second = FileStore::open(dir.path());
        assert!(second.is_err_and(|e| e.to_string().contains("another meshcanary service")));
        drop(store);
        assert!(
            FileStore::open(dir.path()).is_ok(),
            "lock released with the store"
        );
    }

    #[tokio::test]
    async fn a_leftover_temp_file_does_not_matter_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        fs::write(dir.path().join(".state.json.tmp"), b"half a fi").unwrap();
        assert_eq!(store.load().await.unwrap(), None);
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert!(store
            .load()
            .await
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
    }
}

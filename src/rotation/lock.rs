//! One rotation at a time per asset dir: an OS file lock on `<assets>/certrotate/.lock`,
//! which the kernel frees when the holder dies, so a killed run never leaves a stale lock.

use std::fs::{File, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::files::private_dir;
use crate::error::{Error, Result};

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct RotationLock {
    _file: File,
}

impl RotationLock {
    /// Takes the lock of the asset dir whose rotation folder is `root`, or says who holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(".lock");
        let io = |e: std::io::Error| Error::JournalIo { path: path.clone(), source: e };
        private_dir(root).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "holder unknown" } else { holder };
                return Err(Error::RotationLocked {
                    path: PathBuf::from(&path),
                    holder: holder.into(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = format!(
            "pid {} since {}: {}",
            std::process::id(),
            jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certrotate");
        let first = RotationLock::acquire(&root).unwrap();
        let err = RotationLock::acquire(&root).unwrap_err().to_string();
        assert!(
            err.contains("another rotation") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        RotationLock::acquire(&root).expect("free again once the holder is gone");
    }
}

//! Advisory file locks (`flock`): a lock is held while its file stays open and is released by
//! the operating system when the holder dies, so a killed process never leaves a stale lock.
//! The run lock, the checkout locks, the Python environment build locks and the supervisor's
//! lock all take theirs here.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens (creating, never truncating) the lock file at `path`, without locking it.
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Takes the exclusive lock of `path` if nobody holds it: `Ok(None)` when another open file
/// (of this process or another) holds it. The lock lasts as long as the returned file.
pub fn try_lock(path: &Path) -> io::Result<Option<File>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_until_its_file_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = try_lock(&path).unwrap().expect("a free lock is taken");
        assert!(try_lock(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock(&path).unwrap().is_some());
    }
}

//! Atomic, durable file writes: the one way Kiln writes a file that someone may read back
//! (store objects and refs, the stat cache, params files, `.gitignore`, reports, `kiln.yaml`).
//!
//! A write goes to a temporary file in the target's own folder (so that the rename never crosses
//! file systems), is flushed to disk, renamed over the target, and the folder is flushed so that
//! the rename itself survives a power cut. A reader sees the old file or the whole new one, never
//! half of one; a crash leaves at most a temporary named `.<name>.kiln-tmp-<pid>-<n>`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Marks Kiln's temporaries in a user's folder, so that they can be told from the user's files.
pub const TEMPORARY_MARK: &str = ".kiln-tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` atomically and durably (see the module documentation). A file
/// that existed keeps its permissions; a new one gets the umask's.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_of(path);
    let temporary = temporary_beside(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        if let Ok(existing) = fs::metadata(path) {
            file.set_permissions(existing.permissions())?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Moves a temporary that was written and flushed (by [`write_new`]) over `target`, creating
/// the target's folder, and flushes the folder. For writers that keep their temporaries in a
/// folder of their own (the object store's `tmp/`, cleaned after a crash).
pub fn commit(temporary: &Path, target: &Path) -> io::Result<()> {
    let dir = parent_of(target);
    fs::create_dir_all(dir)?;
    fs::rename(temporary, target)?;
    sync_dir(dir)
}

/// Creates `temporary` (which must not exist) with `contents`, flushed to disk: the first half
/// of a write finished by [`commit`].
pub fn write_new(temporary: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temporary)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Flushes a file already written (a copy made by `fs::copy`, say) to disk.
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes a folder's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A fresh temporary name in `path`'s folder, unique in this process and across processes.
pub(crate) fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}{TEMPORARY_MARK}{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("params.yaml");
        write(&path, b"a: 1\n").unwrap();
        write(&path, b"a: 2\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"a: 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["params.yaml"]);
    }

    #[test]
    fn an_existing_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sh");
        write(&path, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
        write(&path, b"#!/bin/sh\necho\n").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.md");
        write(&path, b"old").unwrap();
        // A folder where the file should be: the rename fails, the temporary is removed.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // A missing folder is an error, not a panic.
        assert!(write(&dir.path().join("missing/x"), b"x").is_err());
    }

    #[test]
    fn a_relative_path_is_written_in_the_current_folder_s_terms() {
        assert_eq!(parent_of(Path::new("kiln.yaml")), Path::new("."));
        assert_eq!(parent_of(Path::new("a/kiln.yaml")), Path::new("a"));
    }

    #[test]
    fn commit_moves_a_flushed_temporary_into_a_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let temporary = dir.path().join("tmp-1");
        write_new(&temporary, b"object").unwrap();
        assert!(write_new(&temporary, b"again").is_err(), "must not clobber");
        let target = dir.path().join("objects/ab/cdef");
        commit(&temporary, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"object");
        assert!(!temporary.exists());
    }
}

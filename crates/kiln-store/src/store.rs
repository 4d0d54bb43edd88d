//! The object store on the local filesystem: `objects/ab/cdef…` holds each content once,
//! `refs/<namespace>/<name>` holds small named records, `tmp/` holds writes in progress.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::{Digest, atomic};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` changed while Kiln was storing it", path.display())]
    ChangedWhileStoring { path: PathBuf },
    #[error("object `{digest}` is missing from the store at `{}`", store.display())]
    MissingObject { digest: Digest, store: PathBuf },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A content-addressed store rooted in one folder.
///
/// Durability: objects are renamed into place as soon as they are copied, but flushed to disk
/// in batches (in parallel, since one `fsync` costs milliseconds and a folder out may hold
/// thousands of files): every ref write first flushes the objects stored before it, so a ref
/// (a stage-cache entry, a tree) never names an object that a power cut could lose.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    counter: AtomicU64,
    /// Objects renamed into place but not yet flushed to disk.
    unsynced: Mutex<Vec<PathBuf>>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes temporary files left by
    /// processes that are gone.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, Error> {
        let root = root.into();
        for dir in ["objects", "refs", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        }
        let store = Store {
            root,
            counter: AtomicU64::new(0),
            unsynced: Mutex::new(Vec::new()),
        };
        store.remove_abandoned_temporaries();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn remove_abandoned_temporaries(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_string_lossy()
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// A fresh path in `tmp/`, named after this process so that a later `open` can tell
    /// abandoned files from files still being written.
    fn temporary(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.object_path(digest).is_file()
    }

    /// Copies the file at `source`, whose content has `digest`, into the store.
    pub fn put_file(&self, source: &Path, digest: &Digest) -> Result<(), Error> {
        let target = self.object_path(digest);
        if self.holds_whole(&target, source) {
            return Ok(());
        }
        let temporary = self.temporary();
        fs::copy(source, &temporary).map_err(io_error("copy into the store", source))?;
        // The copy is hashed again: a file rewritten after it was hashed must not be stored
        // under a digest that is not its own.
        let stored = crate::hash_file(&temporary).map_err(io_error("hash", &temporary))?;
        if stored != *digest {
            let _ = fs::remove_file(&temporary);
            return Err(Error::ChangedWhileStoring {
                path: source.to_path_buf(),
            });
        }
        self.commit(&temporary, &target)
    }

    /// Stores `bytes` and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of_bytes(bytes);
        let target = self.object_path(&digest);
        let whole =
            fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
        if !whole {
            let temporary = self.temporary();
            fs::write(&temporary, bytes).map_err(io_error("write", &temporary))?;
            self.commit(&temporary, &target)?;
        }
        Ok(digest)
    }

    pub fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.object_path(digest);
        fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::MissingObject {
                digest: *digest,
                store: self.root.clone(),
            },
            _ => Error::Io {
                action: "read",
                path,
                source,
            },
        })
    }

    /// Whether `target` is an object of the same size as `source`: an object that a power cut
    /// emptied before it was flushed is stored again rather than trusted.
    fn holds_whole(&self, target: &Path, source: &Path) -> bool {
        match (fs::metadata(target), fs::metadata(source)) {
            (Ok(object), Ok(source)) => object.is_file() && object.len() == source.len(),
            _ => false,
        }
    }

    /// Renames an object's temporary into place; it is flushed by the next [`Store::sync`].
    fn commit(&self, temporary: &Path, target: &Path) -> Result<(), Error> {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        fs::rename(temporary, target).map_err(io_error("move into place", target))?;
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target.to_path_buf());
        Ok(())
    }

    /// Flushes to disk every object stored since the last call (their content, then their
    /// folders' entries), all at once on every core. Refs call it before they are written.
    pub fn sync(&self) -> Result<(), Error> {
        let objects = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|e| e.into_inner()));
        if objects.is_empty() {
            return Ok(());
        }
        let result = objects
            .par_iter()
            .try_for_each(|object| atomic::sync_file(object).map_err(io_error("flush", object)))
            .and_then(|()| {
                let mut folders: Vec<&Path> = objects.iter().filter_map(|o| o.parent()).collect();
                folders.sort();
                folders.dedup();
                folders
                    .par_iter()
                    .try_for_each(|dir| atomic::sync_dir(dir).map_err(io_error("flush", dir)))
            });
        if result.is_err() {
            // Keep them for the next attempt: a ref must not be written over unflushed objects.
            self.unsynced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(objects);
        }
        result
    }

    /// Writes the object `digest` to `destination`, atomically (a reader sees the old file or
    /// the whole new one), creating parent folders.
    pub fn restore_file(
        &self,
        digest: &Digest,
        destination: &Path,
        executable: bool,
    ) -> Result<(), Error> {
        let object = self.object_path(digest);
        if !object.is_file() {
            return Err(Error::MissingObject {
                digest: *digest,
                store: self.root.clone(),
            });
        }
        let parent = destination.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        // The copy is made in the store's `tmp/` (cleaned after a crash), then renamed into
        // place; only when the destination is on another file system is it made beside it.
        // Outs in the workspace are atomic but not flushed: the store holds them durably, and a
        // lost one is restored again by the next run.
        let mut temporary = self.temporary();
        fs::copy(&object, &temporary).map_err(io_error("restore", destination))?;
        if let Err(error) = fs::rename(&temporary, destination) {
            if error.kind() != io::ErrorKind::CrossesDevices {
                let _ = fs::remove_file(&temporary);
                return Err(io_error("restore", destination)(error));
            }
            let _ = fs::remove_file(&temporary);
            let file_name = destination
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            temporary = parent.join(format!(".{file_name}.kiln-{}", std::process::id()));
            fs::copy(&object, &temporary).map_err(io_error("restore", destination))?;
            fs::rename(&temporary, destination).map_err(io_error("restore", destination))?;
        }
        set_executable(destination, executable).map_err(io_error("set permissions on", destination))
    }

    fn ref_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("refs").join(namespace).join(name)
    }

    /// Writes a named record atomically.
    /// Writes a named record atomically and durably, after flushing the objects stored before
    /// it (see [`Store::sync`]), so that a ref never names an object a power cut could lose.
    pub fn write_ref(&self, namespace: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.sync()?;
        let temporary = self.temporary();
        atomic::write_new(&temporary, bytes).map_err(io_error("write", &temporary))?;
        let target = self.ref_path(namespace, name);
        atomic::commit(&temporary, &target).map_err(io_error("move into place", &target))
    }

    /// Reads a named record; `None` when there is none.
    pub fn read_ref(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.ref_path(namespace, name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "read",
                path,
                source,
            }),
        }
    }
}

#[cfg(unix)]
fn set_executable(path: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = fs::metadata(path)?.permissions();
    let mode = if executable { 0o755 } else { 0o644 };
    permissions.set_mode(mode);
    fs::set_permissions(path, permissions)
}

#[cfg(not(unix))]
fn set_executable(_path: &Path, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_file;

    #[test]
    fn stores_and_restores_files_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let source = dir.path().join("model.onnx");
        fs::write(&source, b"weights").unwrap();
        let digest = hash_file(&source).unwrap();
        store.put_file(&source, &digest).unwrap();
        store.put_file(&source, &digest).unwrap();
        assert!(store.contains(&digest));
        let restored = dir.path().join("out/nested/model.onnx");
        store.restore_file(&digest, &restored, false).unwrap();
        assert_eq!(fs::read(&restored).unwrap(), b"weights");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("store/tmp"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn missing_objects_and_refs_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"nothing");
        assert!(matches!(
            store.get_bytes(&digest),
            Err(Error::MissingObject { .. })
        ));
        assert_eq!(store.read_ref("runs", "abc").unwrap(), None);
        store.write_ref("runs", "abc", b"{}").unwrap();
        assert_eq!(
            store.read_ref("runs", "abc").unwrap().as_deref(),
            Some(&b"{}"[..])
        );
    }

    #[test]
    fn an_object_emptied_by_a_power_cut_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let source = dir.path().join("out.csv");
        fs::write(&source, b"a,b\n1,2\n").unwrap();
        let digest = hash_file(&source).unwrap();
        store.put_file(&source, &digest).unwrap();
        // What a crash between the rename and the flush can leave: the name, without the data.
        fs::write(store.object_path(&digest), b"").unwrap();
        store.put_file(&source, &digest).unwrap();
        assert_eq!(store.get_bytes(&digest).unwrap(), b"a,b\n1,2\n");
        // Writing a ref flushes the objects before it: none is left waiting.
        store.write_ref("stage-cache", "k", b"{}").unwrap();
        assert!(store.unsynced.lock().unwrap().is_empty());
    }

    #[test]
    fn abandoned_temporaries_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        // pid 0 is never a live user process.
        fs::write(dir.path().join("tmp/0-7"), b"half").unwrap();
        fs::write(dir.path().join("tmp/notapid"), b"half").unwrap();
        Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}

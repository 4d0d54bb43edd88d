//! The object store on the local filesystem: `objects/ab/cdef…` holds each content once,
//! `refs/<namespace>/<name>` holds small named records, `tmp/` holds writes in progress.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::blobs::{BlobInfo, BlobStore, parse_tree, verify};
use crate::error::io_error;
use crate::{Digest, Error, Tree, atomic};

/// The ref namespace that holds folder outs' file lists (`refs/trees/<digest>`).
pub const TREES: &str = "trees";

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
        // A device or a FIFO would be read forever, or block: only regular files are stored.
        if !fs::metadata(source).is_ok_and(|m| m.is_file()) {
            return Err(Error::NotAFile {
                path: source.to_path_buf(),
            });
        }
        if self.holds_whole(&target, source) {
            freshen(&target);
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
        if whole {
            freshen(&target);
        } else {
            let temporary = self.temporary();
            fs::write(&temporary, bytes).map_err(io_error("write", &temporary))?;
            self.commit(&temporary, &target)?;
        }
        Ok(digest)
    }

    /// A blob's content, checked against its digest.
    pub fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.object_path(digest);
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => self.missing(digest),
            _ => Error::Io {
                action: "read",
                path,
                source,
            },
        })?;
        verify(digest, Digest::of_bytes(&bytes), &self.location())?;
        Ok(bytes)
    }

    fn missing(&self, digest: &Digest) -> Error {
        Error::MissingObject {
            digest: *digest,
            location: self.location(),
        }
    }

    /// The location of the store for messages.
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    /// Stores a folder's file list under `refs/trees/<digest>` and returns its digest. The
    /// files it names must be stored first.
    pub fn put_tree(&self, tree: &Tree) -> Result<Digest, Error> {
        let digest = tree.digest();
        let bytes = serde_json::to_vec(tree).expect("a tree serialises to JSON");
        self.write_ref(TREES, &digest.to_hex(), &bytes)?;
        Ok(digest)
    }

    /// A folder's file list, checked against its digest; `None` when none is stored.
    pub fn get_tree(&self, digest: &Digest) -> Result<Option<Tree>, Error> {
        match self.read_ref(TREES, &digest.to_hex())? {
            Some(bytes) => parse_tree(digest, &bytes, &self.location()).map(Some),
            None => Ok(None),
        }
    }

    /// The digests of every tree stored, with when each was written.
    pub fn list_trees(&self) -> Result<Vec<(Digest, SystemTime)>, Error> {
        let dir = self.root.join("refs").join(TREES);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("list", &dir)(source)),
        };
        let mut trees = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &dir))?;
            let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                continue;
            };
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io_error("inspect", &entry.path()))?;
            trees.push((digest, modified));
        }
        Ok(trees)
    }

    /// Removes a stored tree (not its files).
    pub fn delete_tree(&self, digest: &Digest) -> Result<(), Error> {
        remove_if_there(&self.ref_path(TREES, &digest.to_hex()))
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
        self.note_unsynced(target.to_path_buf());
        Ok(())
    }

    /// Remembers an object renamed into place, to be flushed by the next [`Store::sync`].
    pub(crate) fn note_unsynced(&self, object: PathBuf) {
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(object);
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
            return Err(self.missing(digest));
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

    /// Writes a named record atomically and durably, after flushing the objects stored before
    /// it (see [`Store::sync`]), so that a ref never names an object a power cut could lose.
    pub fn write_ref(&self, namespace: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.sync()?;
        let temporary = self.temporary();
        atomic::write_new(&temporary, bytes).map_err(io_error("write", &temporary))?;
        let target = self.ref_path(namespace, name);
        atomic::commit(&temporary, &target).map_err(io_error("move into place", &target))
    }

    /// The names of every record in `namespace`.
    pub fn list_refs(&self, namespace: &str) -> Result<Vec<String>, Error> {
        let dir = self.root.join("refs").join(namespace);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("list", &dir)(source)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
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

impl BlobStore for Store {
    fn location(&self) -> String {
        Store::location(self)
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool, Error> {
        Ok(self.contains(digest))
    }

    fn put_file(&self, source: &Path, digest: &Digest) -> Result<(), Error> {
        Store::put_file(self, source, digest)?;
        self.sync()
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Store::put_bytes(self, bytes)?;
        self.sync()?;
        Ok(digest)
    }

    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        Store::get_bytes(self, digest)
    }

    fn get_file(&self, digest: &Digest, destination: &Path) -> Result<(), Error> {
        let object = self.object_path(digest);
        if !object.is_file() {
            return Err(self.missing(digest));
        }
        let temporary = atomic::temporary_beside(destination);
        let parent = temporary.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let result = (|| {
            fs::copy(&object, &temporary).map_err(io_error("copy", destination))?;
            let actual = crate::hash_file(&temporary).map_err(io_error("hash", &temporary))?;
            verify(digest, actual, &self.location())?;
            fs::rename(&temporary, destination).map_err(io_error("move into place", destination))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    fn rehash(&self, digest: &Digest) -> Result<Digest, Error> {
        let object = self.object_path(digest);
        crate::hash_file(&object).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => self.missing(digest),
            _ => io_error("hash", &object)(source),
        })
    }

    fn list(&self) -> Result<Vec<BlobInfo>, Error> {
        let objects = self.root.join("objects");
        let mut blobs = Vec::new();
        let folders = fs::read_dir(&objects).map_err(io_error("list", &objects))?;
        for folder in folders {
            let folder = folder.map_err(io_error("list", &objects))?;
            let prefix = folder.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !folder.path().is_dir() {
                continue;
            }
            let path = folder.path();
            for entry in fs::read_dir(&path).map_err(io_error("list", &path))? {
                let entry = entry.map_err(io_error("list", &path))?;
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                let Some(digest) = Digest::from_hex(&name) else {
                    continue;
                };
                let metadata = entry
                    .metadata()
                    .map_err(io_error("inspect", &entry.path()))?;
                if !metadata.is_file() {
                    continue;
                }
                blobs.push(BlobInfo {
                    digest,
                    size: metadata.len(),
                    modified: metadata
                        .modified()
                        .map_err(io_error("inspect", &entry.path()))?,
                });
            }
        }
        Ok(blobs)
    }

    fn delete(&self, digest: &Digest) -> Result<(), Error> {
        remove_if_there(&self.object_path(digest))
    }

    fn put_tree(&self, tree: &Tree) -> Result<Digest, Error> {
        Store::put_tree(self, tree)
    }

    fn get_tree(&self, digest: &Digest) -> Result<Option<Tree>, Error> {
        Store::get_tree(self, digest)
    }
}

/// Marks an object as written now: a run that finds its content already stored makes it young
/// again, so that `gc`'s grace period covers it until the run has recorded it.
fn freshen(object: &Path) {
    // `futimens` on a read-only descriptor: the owner may set times without write access.
    let _ = fs::File::open(object).and_then(|file| file.set_modified(SystemTime::now()));
}

fn remove_if_there(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("remove", path)(source)),
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

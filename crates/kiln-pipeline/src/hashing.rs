//! Content digests of deps and outs, with a stat cache so that unchanged files are not read
//! again: a file whose size, mtime and inode match the cache keeps its recorded digest.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_spec::RelPath;
use kiln_store::{Digest, Entry, EntryKind, Tree, hash_file};
use rayon::prelude::*;

/// What the stat cache remembers of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stat {
    fn of(metadata: &fs::Metadata) -> Stat {
        Stat {
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            inode: metadata.ino(),
        }
    }
}

/// Digests of files by path, valid while their (size, mtime, inode) are unchanged.
///
/// Persisted as text lines `digest size mtime_ns inode path` under `.kiln/`; a missing or
/// damaged file just means files are hashed again.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    entries: Mutex<HashMap<PathBuf, (Stat, Digest)>>,
    changed: Mutex<bool>,
}

const STAT_CACHE_HEADER: &str = "kiln-stat-cache-v1";

impl StatCache {
    pub fn load(path: &Path) -> StatCache {
        let mut entries = HashMap::new();
        if let Ok(text) = fs::read_to_string(path)
            && text.starts_with(STAT_CACHE_HEADER)
        {
            for line in text.lines().skip(1) {
                let mut parts = line.splitn(5, ' ');
                let parsed = (|| {
                    let digest = Digest::from_hex(parts.next()?)?;
                    let size = parts.next()?.parse().ok()?;
                    let mtime_ns = parts.next()?.parse().ok()?;
                    let inode = parts.next()?.parse().ok()?;
                    let file = PathBuf::from(parts.next()?);
                    Some((
                        file,
                        (
                            Stat {
                                size,
                                mtime_ns,
                                inode,
                            },
                            digest,
                        ),
                    ))
                })();
                if let Some((file, entry)) = parsed {
                    entries.insert(file, entry);
                }
            }
        }
        StatCache {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            changed: Mutex::new(false),
        }
    }

    /// Writes the cache back if anything changed (atomically: temp file and rename).
    pub fn save(&self) -> io::Result<()> {
        if !*self.changed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::with_capacity(entries.len() * 120);
        text.push_str(STAT_CACHE_HEADER);
        text.push('\n');
        for (file, (stat, digest)) in entries.iter() {
            if file.exists() {
                use std::fmt::Write;
                let _ = writeln!(
                    text,
                    "{digest} {} {} {} {}",
                    stat.size,
                    stat.mtime_ns,
                    stat.inode,
                    file.display()
                );
            }
        }
        let temporary = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        fs::write(&temporary, text)?;
        fs::rename(&temporary, &self.path)
    }

    /// The digest of one file, read from the cache when its stat is unchanged.
    pub fn file_digest(&self, path: &Path, metadata: &fs::Metadata) -> io::Result<Digest> {
        let stat = Stat::of(metadata);
        if let Some((cached, digest)) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            && *cached == stat
        {
            return Ok(*digest);
        }
        let digest = hash_file(path)?;
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), (stat, digest));
        *self.changed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(digest)
    }
}

/// The content of a dep or out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDigest {
    pub kind: EntryKind,
    pub digest: Digest,
    pub size: u64,
    /// The folder's files, for folders.
    pub tree: Option<Tree>,
}

/// Hashes a file or a folder of the project; `None` when it does not exist.
pub fn hash_path(root: &Path, path: &RelPath, cache: &StatCache) -> io::Result<Option<PathDigest>> {
    let absolute = path.to_path(root);
    let metadata = match fs::metadata(&absolute) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if metadata.is_file() {
        let digest = cache.file_digest(&absolute, &metadata)?;
        return Ok(Some(PathDigest {
            kind: EntryKind::File,
            digest,
            size: metadata.len(),
            tree: None,
        }));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&absolute).follow_links(true) {
        let entry = entry.map_err(io::Error::other)?;
        if entry.file_type().is_file() {
            files.push(entry);
        }
    }
    let entries = files
        .par_iter()
        .map(|entry| {
            let metadata = entry.metadata().map_err(io::Error::other)?;
            let digest = cache.file_digest(entry.path(), &metadata)?;
            let relative = entry.path().strip_prefix(&absolute).unwrap_or(entry.path());
            Ok(Entry {
                path: relative.to_string_lossy().replace('\\', "/"),
                digest,
                size: metadata.len(),
                executable: metadata.mode() & 0o111 != 0,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let tree = Tree::new(entries);
    Ok(Some(PathDigest {
        kind: EntryKind::Dir,
        digest: tree.digest(),
        size: tree.size(),
        tree: Some(tree),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("data/a.csv"), "x\n1\n").unwrap();
        fs::write(root.join("data/b.csv"), "x\n2\n").unwrap();
        let cache = StatCache::load(&root.join("stat-cache"));
        let data = RelPath::resolve(&RelPath::root(), "data").unwrap();
        let first = hash_path(root, &data, &cache).unwrap().unwrap();
        assert_eq!(first.tree.as_ref().unwrap().entries.len(), 2);
        cache.save().unwrap();

        // Poison the cached digest of a.csv: a reload that trusts the stat proves no re-read.
        let text = fs::read_to_string(root.join("stat-cache")).unwrap();
        let poisoned = Digest::of_bytes(b"poison").to_hex();
        let text: String = text
            .lines()
            .map(|line| {
                if line.ends_with("a.csv") {
                    format!("{poisoned}{}\n", &line[64..])
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        fs::write(root.join("stat-cache"), text).unwrap();
        let cache = StatCache::load(&root.join("stat-cache"));
        let second = hash_path(root, &data, &cache).unwrap().unwrap();
        assert_ne!(first.digest, second.digest);
        assert!(
            second
                .tree
                .unwrap()
                .entries
                .iter()
                .any(|e| e.digest.to_hex() == poisoned)
        );

        // A change of content changes the stat, so the file is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(root.join("data/b.csv"), "x\n3\n").unwrap();
        let third = hash_path(root, &data, &cache).unwrap().unwrap();
        assert_ne!(second.digest, third.digest);
        assert!(
            hash_path(
                root,
                &RelPath::resolve(&RelPath::root(), "missing").unwrap(),
                &cache
            )
            .unwrap()
            .is_none()
        );
    }
}

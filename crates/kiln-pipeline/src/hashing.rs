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
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
    /// The change time catches rewrites that restore the mtime (`cp -p`, `touch -r`).
    pub(crate) ctime_ns: i128,
    pub(crate) inode: u64,
}

impl Stat {
    pub(crate) fn of(metadata: &fs::Metadata) -> Stat {
        Stat {
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
            inode: metadata.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    stat: Stat,
    digest: Digest,
    /// Looked up by this process: the file existed a moment ago.
    seen: bool,
}

#[derive(Debug, Default)]
struct Entries {
    /// Absolute path (as text: cheaper to hash than `PathBuf`) -> what is known of it.
    files: HashMap<String, Cached>,
    changed: bool,
}

/// Digests of files by path, valid while their (size, mtime, inode) are unchanged.
///
/// Persisted as text lines `digest size mtime_ns ctime_ns inode path` under `.kiln/`; a missing or
/// damaged file just means files are hashed again.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    entries: Mutex<Entries>,
}

const STAT_CACHE_HEADER: &str = "kiln-stat-cache-v2";

impl StatCache {
    pub fn load(path: &Path) -> StatCache {
        let mut files = HashMap::new();
        if let Ok(text) = fs::read_to_string(path)
            && let Some(body) = text.strip_prefix(STAT_CACHE_HEADER)
        {
            files.reserve(body.len() / 110);
            for line in body.lines() {
                let mut parts = line.splitn(6, ' ');
                let parsed = (|| {
                    let digest = Digest::from_hex(parts.next()?)?;
                    let size = parts.next()?.parse().ok()?;
                    let mtime_ns = parts.next()?.parse().ok()?;
                    let ctime_ns = parts.next()?.parse().ok()?;
                    let inode = parts.next()?.parse().ok()?;
                    let file = parts.next()?.to_string();
                    let stat = Stat {
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                    };
                    Some((
                        file,
                        Cached {
                            stat,
                            digest,
                            seen: false,
                        },
                    ))
                })();
                if let Some((file, entry)) = parsed {
                    files.insert(file, entry);
                }
            }
        }
        StatCache {
            path: path.to_path_buf(),
            entries: Mutex::new(Entries {
                files,
                ..Entries::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the cache back if anything changed (with `kiln_store::atomic::write`). Entries of
    /// files this process did not look at are kept only if the file still exists.
    pub fn save(&self) -> io::Result<()> {
        let entries = self.lock();
        if !entries.changed {
            return Ok(());
        }
        let mut text = String::with_capacity(entries.files.len() * 120);
        text.push_str(STAT_CACHE_HEADER);
        text.push('\n');
        for (file, Cached { stat, digest, seen }) in &entries.files {
            if *seen || Path::new(file).exists() {
                use std::fmt::Write;
                let _ = writeln!(
                    text,
                    "{digest} {} {} {} {} {file}",
                    stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode
                );
            }
        }
        kiln_store::atomic::write(&self.path, text.as_bytes())
    }

    /// The stat of each path (absolute, spelt as it was hashed) that this process already took
    /// (git's dirty check reuses them rather than stat-ing every tracked file again).
    pub(crate) fn stats_seen<'a>(
        &self,
        paths: impl Iterator<Item = Option<&'a str>>,
    ) -> Vec<Option<Stat>> {
        let entries = self.lock();
        paths
            .map(|path| {
                entries
                    .files
                    .get(path?)
                    .filter(|cached| cached.seen)
                    .map(|cached| cached.stat)
            })
            .collect()
    }

    /// The digests of `files` (path and metadata), reading only the files whose stat changed;
    /// those are hashed in parallel.
    fn digests(&self, files: &[(PathBuf, fs::Metadata)]) -> io::Result<Vec<Digest>> {
        let mut digests: Vec<Option<Digest>> = Vec::with_capacity(files.len());
        {
            let mut entries = self.lock();
            for (path, metadata) in files {
                let hit = path
                    .to_str()
                    .and_then(|key| entries.files.get_mut(key))
                    .and_then(|cached| {
                        cached.seen = true;
                        (cached.stat == Stat::of(metadata)).then_some(cached.digest)
                    });
                digests.push(hit);
            }
        }
        let misses: Vec<usize> = (0..files.len()).filter(|&i| digests[i].is_none()).collect();
        if misses.is_empty() {
            return Ok(digests.into_iter().flatten().collect());
        }
        let hashed = misses
            .par_iter()
            .map(|&i| hash_file(&files[i].0))
            .collect::<io::Result<Vec<Digest>>>()?;
        let mut entries = self.lock();
        for (&i, digest) in misses.iter().zip(hashed) {
            let (path, metadata) = &files[i];
            let cached = Cached {
                stat: Stat::of(metadata),
                digest,
                seen: true,
            };
            entries
                .files
                .insert(path.to_string_lossy().into_owned(), cached);
            digests[i] = Some(digest);
        }
        entries.changed = true;
        Ok(digests.into_iter().flatten().collect())
    }
}

/// Saves the stat cache; a failure only costs re-hashing next time, so it is a warning.
pub(crate) fn save_stat_cache(cache: &StatCache, observer: &dyn crate::Observer) {
    if let Err(error) = cache.save() {
        observer.on_event(crate::Event::Warning {
            message: &stat_cache_warning(cache, &error),
        });
    }
}

/// What the user is told when the stat cache cannot be saved.
pub(crate) fn stat_cache_warning(cache: &StatCache, error: &io::Error) -> String {
    format!(
        "cannot save the stat cache `{}` ({error}): unchanged files will be hashed again next time",
        cache.path.display()
    )
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
        let size = metadata.len();
        let digest = cache.digests(&[(absolute, metadata)])?[0];
        return Ok(Some(PathDigest {
            kind: EntryKind::File,
            digest,
            size,
            tree: None,
        }));
    }
    let mut files = Vec::new();
    let mut names = Vec::new();
    walk(&absolute, "", &mut files, &mut names)?;
    let digests = cache.digests(&files)?;
    let entries = files
        .iter()
        .zip(names)
        .zip(digests)
        .map(|(((_, metadata), name), digest)| Entry {
            path: name,
            digest,
            size: metadata.len(),
            executable: metadata.mode() & 0o111 != 0,
        })
        .collect();
    let tree = Tree::new(entries);
    Ok(Some(PathDigest {
        kind: EntryKind::Dir,
        digest: tree.digest(),
        size: tree.size(),
        tree: Some(tree),
    }))
}

/// Every file under `dir` with its metadata and its `/`-separated name inside the walked folder
/// (`prefix` is the name of `dir`), following symbolic links, leaving out `.kiln` and `.git`. The stats run on all cores: for a
/// folder of thousands of unchanged files they are most of a no-op run's time.
/// `DirEntry::metadata` stats relative to the open folder, cheaper than by full path.
fn walk(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(PathBuf, fs::Metadata)>,
    names: &mut Vec<String>,
) -> io::Result<()> {
    let entries = fs::read_dir(dir)?.collect::<io::Result<Vec<fs::DirEntry>>>()?;
    let stats = entries
        .par_iter()
        .map(|entry| {
            let metadata = entry.metadata()?;
            if metadata.is_symlink() {
                let path = entry.path();
                fs::metadata(&path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("`{}` is a link to nothing readable: {e}", path.display()),
                    )
                })
            } else {
                Ok(metadata)
            }
        })
        .collect::<io::Result<Vec<fs::Metadata>>>()?;
    for (entry, metadata) in entries.iter().zip(stats) {
        let file_name = entry.file_name();
        let name = format!("{prefix}{}", file_name.to_string_lossy());
        if metadata.is_dir() {
            // Kiln's own state and git's change on every run: a folder dep holding them (the
            // project root, say) would never be cached.
            if matches!(file_name.to_str(), Some(".kiln" | ".git")) {
                continue;
            }
            walk(&entry.path(), &format!("{name}/"), files, names)?;
        } else if metadata.is_file() {
            files.push((entry.path(), metadata));
            names.push(name);
        }
    }
    Ok(())
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

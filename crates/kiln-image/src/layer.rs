//! A reproducible filesystem layer: entries collected by path, then written as a gzipped tar
//! in path order with fixed times and owners and a gzip header without a name or a time, so
//! that the same content always gives the same digest. Both digests an image needs are computed
//! while writing: the compressed blob's (the layer's digest) and the tar's (its `diff_id`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// Every entry's modification time: the epoch, so that a layer does not depend on when it was
/// built or when its files were copied.
const MTIME: u64 = 0;

/// How deep symbolic links are followed when a host path is copied.
const MAX_LINKS: usize = 40;

#[derive(Debug, Clone)]
enum Source {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(PathBuf),
    /// An executable copied from the host with its symbols stripped (`strip`), at write time.
    Stripped(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    source: Source,
    mode: u32,
    uid: u64,
}

/// A layer's entries by path (relative to the image's root, without a leading `/`).
#[derive(Debug, Default, Clone)]
pub struct LayerBuilder {
    entries: BTreeMap<String, Entry>,
}

/// A layer written: its blob's digest and size, and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenLayer {
    /// `sha256:…` of the gzipped blob.
    pub digest: String,
    pub size: u64,
    /// `sha256:…` of the tar.
    pub diff_id: String,
}

/// The path of `path` inside the image, as a tar entry names it: no leading `/`, no `.`,
/// refusing `..`.
fn entry_path(path: &Path) -> String {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.join("/")
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The paths of the regular files copied from the host, as the host names them.
    pub fn host_files(&self) -> Vec<PathBuf> {
        self.entries
            .values()
            .filter_map(|entry| match &entry.source {
                Source::File(path) | Source::Stripped(path) => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    fn insert(&mut self, path: &Path, entry: Entry) {
        let path = entry_path(path);
        if path.is_empty() {
            return;
        }
        // Every parent is a folder of its own entry, as tar readers expect.
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry {
                source: Source::Dir,
                mode: 0o755,
                uid: 0,
            });
        }
        self.entries.insert(path, entry);
    }

    /// A folder owned by root.
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) {
        self.insert(
            path.as_ref(),
            Entry {
                source: Source::Dir,
                mode,
                uid: 0,
            },
        );
    }

    /// A file with the given content, owned by root.
    pub fn bytes(&mut self, path: impl AsRef<Path>, content: impl Into<Vec<u8>>, mode: u32) {
        self.insert(
            path.as_ref(),
            Entry {
                source: Source::Bytes(content.into()),
                mode,
                uid: 0,
            },
        );
    }

    /// A file copied from `host` (read when the layer is written), owned by root; executable
    /// when the host's file is.
    pub fn file(&mut self, path: impl AsRef<Path>, host: &Path) -> Result<(), Error> {
        let metadata = std::fs::metadata(host).map_err(Error::io("read", host))?;
        let mode = if std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0
        {
            0o755
        } else {
            0o644
        };
        self.insert(
            path.as_ref(),
            Entry {
                source: Source::File(host.to_path_buf()),
                mode,
                uid: 0,
            },
        );
        Ok(())
    }

    /// An executable copied from `host` with its symbols stripped when the layer is written.
    pub fn stripped(&mut self, path: impl AsRef<Path>, host: &Path) {
        self.insert(
            path.as_ref(),
            Entry {
                source: Source::Stripped(host.to_path_buf()),
                mode: 0o755,
                uid: 0,
            },
        );
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl Into<PathBuf>) {
        self.insert(
            path.as_ref(),
            Entry {
                source: Source::Symlink(target.into()),
                mode: 0o777,
                uid: 0,
            },
        );
    }

    /// Copies the folder `host` (files, folders, symbolic links as they are) to `path`.
    /// `skip` leaves out entries.
    pub fn tree(
        &mut self,
        path: &Path,
        host: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), Error> {
        self.copy_tree(path, host, skip, false)
    }

    /// [`LayerBuilder::tree`], with symbolic links replaced by what they point at.
    pub fn tree_following_links(
        &mut self,
        path: &Path,
        host: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), Error> {
        self.copy_tree(path, host, skip, true)
    }

    fn copy_tree(
        &mut self,
        path: &Path,
        host: &Path,
        skip: &dyn Fn(&Path) -> bool,
        follow: bool,
    ) -> Result<(), Error> {
        self.dir(path, 0o755);
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(Error::io("read", host))?
            .collect::<Result<_, _>>()
            .map_err(Error::io("read", host))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let from = entry.path();
            if skip(&from) {
                continue;
            }
            let to = path.join(entry.file_name());
            let kind = if follow {
                std::fs::metadata(&from)
                    .map_err(Error::io("read", &from))?
                    .file_type()
            } else {
                entry.file_type().map_err(Error::io("read", &from))?
            };
            if kind.is_symlink() {
                let target = std::fs::read_link(&from).map_err(Error::io("read", &from))?;
                self.symlink(&to, target);
            } else if kind.is_dir() {
                self.copy_tree(&to, &from, skip, follow)?;
            } else if kind.is_file() {
                self.file(&to, &from)?;
            }
        }
        Ok(())
    }

    /// Makes `path` resolve in the image as it does on this machine: each symbolic link on the
    /// way (`/lib` → `usr/lib` on a merged-`/usr` system, `libfoo.so.1` → `libfoo.so.1.2.3`) is
    /// copied as a link, and the file it ends at as a file, at the same paths.
    pub fn host_path(&mut self, path: &Path) -> Result<(), Error> {
        self.host_path_within(path, 0)
    }

    fn host_path_within(&mut self, path: &Path, links: usize) -> Result<(), Error> {
        if links > MAX_LINKS {
            return Err(Error::Io {
                action: "resolve",
                path: path.to_path_buf(),
                source: io::Error::other("too many levels of symbolic links"),
            });
        }
        let parts: Vec<_> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_os_string()),
                _ => None,
            })
            .collect();
        let mut so_far = PathBuf::from("/");
        for (index, part) in parts.iter().enumerate() {
            let here = so_far.join(part);
            let metadata = std::fs::symlink_metadata(&here).map_err(Error::io("read", &here))?;
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&here).map_err(Error::io("read", &here))?;
                self.symlink(&here, target.clone());
                let mut rest = if target.is_absolute() {
                    target
                } else {
                    so_far.join(target)
                };
                for part in &parts[index + 1..] {
                    rest.push(part);
                }
                return self
                    .host_path_within(&PathBuf::from("/").join(entry_path(&rest)), links + 1);
            }
            if index + 1 == parts.len() {
                if metadata.is_dir() {
                    self.dir(&here, 0o755);
                } else {
                    self.file(&here, &here)?;
                }
            }
            so_far = here;
        }
        Ok(())
    }

    /// Writes the layer as a gzipped tar to `out`, hashing as it goes.
    pub fn write(&self, out: &Path) -> Result<WrittenLayer, Error> {
        let file = File::create(out).map_err(Error::io("create", out))?;
        let blob = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        let gzip = flate2::GzBuilder::new().write(blob, flate2::Compression::default());
        let tar_stream = HashingWriter::new(gzip);
        let mut tar = tar::Builder::new(tar_stream);
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            self.append(&mut tar, path, entry)
                .map_err(Error::io("write the layer", out))?;
        }
        let tar_stream = tar
            .into_inner()
            .map_err(Error::io("write the layer", out))?;
        let (gzip, diff_id, _) = tar_stream.finish();
        let blob = gzip.finish().map_err(Error::io("write the layer", out))?;
        let (mut writer, digest, size) = blob.finish();
        writer.flush().map_err(Error::io("write the layer", out))?;
        let file = writer
            .into_inner()
            .map_err(|error| Error::io("write the layer", out)(error.into_error()))?;
        file.sync_all().map_err(Error::io("write the layer", out))?;
        Ok(WrittenLayer {
            digest,
            size,
            diff_id,
        })
    }

    fn append<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        path: &str,
        entry: &Entry,
    ) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(MTIME);
        header.set_uid(entry.uid);
        header.set_gid(entry.uid);
        header.set_mode(entry.mode);
        match &entry.source {
            Source::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{path}/"), io::empty())
            }
            Source::Bytes(content) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(content.len() as u64);
                tar.append_data(&mut header, path, content.as_slice())
            }
            Source::File(host) => {
                let file = File::open(host)?;
                let length = file.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(length);
                // A file that changes while it is copied would give a blob that lies about its
                // content: read exactly the length the header says.
                tar.append_data(&mut header, path, io::Read::take(file, length))
            }
            Source::Stripped(host) => {
                let stripped = strip(host)?;
                let result = (|| {
                    let file = File::open(&stripped)?;
                    let length = file.metadata()?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(length);
                    tar.append_data(&mut header, path, io::Read::take(file, length))
                })();
                let _ = std::fs::remove_file(&stripped);
                result
            }
            Source::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, path, target)
            }
        }
    }
}

/// Checks that `strip` (GNU binutils) is on PATH: a server binary keeps its debug information
/// otherwise, which makes a debug build's image hundreds of megabytes.
pub fn check_strip() -> Result<(), Error> {
    check_strip_in(std::env::var_os("PATH").as_deref())
}

fn check_strip_in(path: Option<&std::ffi::OsStr>) -> Result<(), Error> {
    let found =
        path.is_some_and(|path| std::env::split_paths(path).any(|dir| dir.join("strip").is_file()));
    if found {
        Ok(())
    } else {
        Err(Error::ToolMissing {
            tool: "strip",
            purpose: "it removes the debug information of the server put into the image",
            package: "binutils",
        })
    }
}

/// `host` stripped of its symbols (`strip --strip-all`), in the system's temporary folder; the caller
/// removes it.
fn strip(host: &Path) -> io::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("kiln-stripped-{}-{n}", std::process::id()));
    let output = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(host)
        .output()?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&out);
        return Err(io::Error::other(format!(
            "`strip --strip-all {}` failed: {}",
            host.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(out)
}

/// A writer that hashes (SHA-256) and counts what passes through.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the `sha256:…` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, sha256_digest(self.hasher), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.hasher.update(&buffer[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn sha256_digest(hasher: Sha256) -> String {
    let bytes = hasher.finalize();
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// `sha256:…` of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    sha256_digest(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> LayerBuilder {
        std::fs::write(dir.join("data.bin"), b"content").unwrap();
        let mut layer = LayerBuilder::new();
        layer.file("model/data.bin", &dir.join("data.bin")).unwrap();
        layer.bytes("etc/passwd", "root:x:0:0::/:/sbin/nologin\n", 0o644);
        layer.dir("tmp", 0o1777);
        layer.symlink("lib", "usr/lib");
        layer
    }

    #[test]
    fn the_same_entries_give_the_same_digests_whenever_written() {
        let dir = tempfile::tempdir().unwrap();
        let first = sample(dir.path())
            .write(&dir.path().join("a.tar.gz"))
            .unwrap();
        // Newer times on the host file change nothing.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("data.bin"), b"content").unwrap();
        let second = sample(dir.path())
            .write(&dir.path().join("b.tar.gz"))
            .unwrap();
        assert_eq!(first, second);
        let bytes = std::fs::read(dir.path().join("a.tar.gz")).unwrap();
        assert_eq!(first.digest, sha256_of(&bytes));
        assert_eq!(first.size, bytes.len() as u64);
        // gzip header: no name flag, zero mtime.
        assert_eq!(&bytes[3..8], &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn entries_are_sorted_with_parents_and_fixed_owners_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("layer.tar.gz");
        let written = sample(dir.path()).write(&out).unwrap();
        let tar_bytes = {
            let mut text = Vec::new();
            io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(File::open(&out).unwrap()),
                &mut text,
            )
            .unwrap();
            text
        };
        assert_eq!(written.diff_id, sha256_of(&tar_bytes));
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let listed: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("etc/".to_string(), 0o755, 0, 0),
                ("etc/passwd".to_string(), 0o644, 0, 0),
                ("lib".to_string(), 0o777, 0, 0),
                ("model/".to_string(), 0o755, 0, 0),
                ("model/data.bin".to_string(), 0o644, 0, 0),
                ("tmp/".to_string(), 0o1777, 0, 0),
            ]
        );
    }

    #[test]
    fn strip_is_looked_for_on_the_path_and_its_package_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_strip_in(Some(dir.path().as_os_str())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`strip` is not on PATH: it removes the debug information of the server put into the image"
        );
        assert!(error.hint().unwrap().contains("binutils"));
        std::fs::write(dir.path().join("strip"), b"").unwrap();
        assert!(check_strip_in(Some(dir.path().as_os_str())).is_ok());
    }

    #[test]
    fn host_paths_keep_their_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/libx.so.1.2"), b"elf").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        let mut layer = LayerBuilder::new();
        layer.host_path(&root.join("lib/libx.so.1")).unwrap();
        let base = entry_path(root);
        let names: Vec<String> = layer
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.source, Source::Dir))
            .map(|(path, _)| path.strip_prefix(&base).unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            ["/lib", "/usr/lib/libx.so.1", "/usr/lib/libx.so.1.2"]
        );
    }
}

//! `kiln models import`: reads an export, checks every entry and blob against its manifest
//! while staging the blobs in the store's `tmp/`, and only then stores them and registers the
//! version with its origin.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_registry::{Lineage, Origin, Registered, Version};
use kiln_store::Digest;

use super::TransferError;
use super::manifest::{ArtifactKind, MAX_MANIFEST_BYTES, Manifest, ParseError};
use crate::Error;
use crate::workspace::Workspace;

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub model: String,
    /// The version's number here.
    pub version: Version,
    /// `false` when this registry held the version already.
    pub new: bool,
    pub origin: Origin,
    pub blobs: usize,
    /// The blobs' bytes.
    pub bytes: u64,
}

const MANIFEST: &str = "manifest.json";
const BLOBS: &str = "blobs/";

/// Imports the export `file` into the workspace's store and registry.
pub fn import_version(workspace: &mut Workspace, file: &Path) -> Result<Imported, Error> {
    let staged = stage(workspace, file)?;
    let Staged { manifest, blobs } = &staged;
    // Everything is checked: commit the blobs, then what names them.
    for (digest, path) in blobs {
        workspace.store.put_file(path, digest)?;
    }
    let digest_text = &manifest.artifact.digest;
    if manifest.artifact.kind == ArtifactKind::Tree {
        let tree = manifest
            .tree()
            .map_err(|reason| TransferError::BadManifest {
                file: file.to_path_buf(),
                reason,
            })?;
        let bytes = serde_json::to_vec(&tree).expect("a tree serialises to JSON");
        workspace
            .store
            .write_ref(crate::stage::TREES, digest_text, &bytes)?;
    }
    let out = serde_json::to_vec(&manifest.out()).expect("an out serialises to JSON");
    workspace
        .store
        .write_ref(crate::artifact::IMPORTED_OUTS, digest_text, &out)?;
    let origin = Origin {
        model: manifest.model.clone(),
        version: manifest.version,
        registered_at_ms: manifest.registered_at_ms,
        source: file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string()),
    };
    let lineage: Lineage = manifest.lineage.clone().into();
    let registered =
        workspace
            .registry
            .import_version(&manifest.model, digest_text, &lineage, &origin)?;
    Ok(Imported {
        model: manifest.model.clone(),
        version: registered.version(),
        new: matches!(registered, Registered::New(_)),
        origin,
        blobs: blobs.len(),
        bytes: manifest.blobs.iter().map(|b| b.size).sum(),
    })
}

/// A checked export: its manifest, and each blob staged in the store's `tmp/`.
struct Staged {
    manifest: Manifest,
    blobs: BTreeMap<Digest, PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for path in self.blobs.values() {
            let _ = std::fs::remove_file(path);
        }
    }
}

static STAGED: AtomicU64 = AtomicU64::new(0);

/// Reads and checks the whole archive, staging each blob; any mistake removes what was staged.
fn stage(workspace: &Workspace, file: &Path) -> Result<Staged, TransferError> {
    let source = File::open(file).map_err(|source| TransferError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let corrupt = |source| TransferError::Corrupt {
        file: file.to_path_buf(),
        source,
    };
    let unsafe_entry = |entry: &str, reason: &str| TransferError::UnsafeEntry {
        file: file.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let mut archive = tar::Archive::new(BufReader::new(source));
    let mut entries = archive.entries().map_err(corrupt)?;

    let mut first = entries
        .next()
        .ok_or_else(|| TransferError::NotAnExport {
            file: file.to_path_buf(),
            reason: "it is empty".to_string(),
        })?
        .map_err(corrupt)?;
    let name = entry_name(&first);
    check_entry(&first, &name).map_err(|reason| unsafe_entry(&name, reason))?;
    if name != MANIFEST {
        return Err(TransferError::NotAnExport {
            file: file.to_path_buf(),
            reason: format!("its first entry is `{name}`, not `{MANIFEST}`"),
        });
    }
    let size = first.header().size().map_err(corrupt)?;
    if size > MAX_MANIFEST_BYTES {
        return Err(TransferError::BadManifest {
            file: file.to_path_buf(),
            reason: format!("it is {size} bytes, more than a manifest holds"),
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    first.read_to_end(&mut bytes).map_err(corrupt)?;
    if bytes.len() as u64 != size {
        return Err(corrupt(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let manifest = Manifest::parse(&bytes).map_err(|error| match error {
        ParseError::NotAnExport(reason) => TransferError::NotAnExport {
            file: file.to_path_buf(),
            reason,
        },
        ParseError::Newer(found) => TransferError::NewerFormat {
            file: file.to_path_buf(),
            found,
            known: super::FORMAT_VERSION,
        },
        ParseError::Bad(reason) => TransferError::BadManifest {
            file: file.to_path_buf(),
            reason,
        },
    })?;
    let expected = manifest
        .check()
        .map_err(|reason| TransferError::BadManifest {
            file: file.to_path_buf(),
            reason,
        })?;

    let mut staged = Staged {
        manifest,
        blobs: BTreeMap::new(),
    };
    let tmp = workspace.store.root().join("tmp");
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry_name(&entry);
        check_entry(&entry, &name).map_err(|reason| unsafe_entry(&name, reason))?;
        let digest = name
            .strip_prefix(BLOBS)
            .and_then(super::manifest::parse_digest)
            .filter(|digest| expected.contains_key(digest))
            .ok_or_else(|| unsafe_entry(&name, "an entry its manifest does not name"))?;
        if staged.blobs.contains_key(&digest) {
            return Err(unsafe_entry(&name, "a second time"));
        }
        let size = expected[&digest];
        let header_size = entry.header().size().map_err(corrupt)?;
        if header_size != size {
            return Err(TransferError::CorruptBlob {
                file: file.to_path_buf(),
                digest: digest.to_hex(),
                reason: format!("it is {header_size} bytes, and its manifest says {size}"),
            });
        }
        // Named after this process, so that the store removes it if the process dies here.
        let path = tmp.join(format!(
            "{}-import-{}",
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        ));
        staged.blobs.insert(digest, path.clone());
        let (copied, actual) =
            copy_hashing(&mut entry, &path).map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
                    corrupt(source)
                }
                _ => TransferError::Write {
                    file: path.clone(),
                    source,
                },
            })?;
        if copied != size {
            return Err(corrupt(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "blob `{}` ends after {copied} of its {size} bytes",
                    digest.to_hex()
                ),
            )));
        }
        if actual != digest {
            return Err(TransferError::CorruptBlob {
                file: file.to_path_buf(),
                digest: digest.to_hex(),
                reason: format!("its content hashes to `{}`", actual.to_hex()),
            });
        }
    }
    let seen: BTreeSet<&Digest> = staged.blobs.keys().collect();
    if let Some(missing) = expected.keys().find(|digest| !seen.contains(digest)) {
        return Err(TransferError::MissingBlob {
            file: file.to_path_buf(),
            digest: missing.to_hex(),
        });
    }
    Ok(staged)
}

/// The entry's path as the archive spells it (not made safe: it is only compared).
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

/// Refuses every entry that is not a plain file at a plain relative path.
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<(), &'static str> {
    use tar::EntryType;
    if name.starts_with('/') {
        return Err("an absolute path, which would write outside the store");
    }
    if name.split('/').any(|part| part == "..") {
        return Err("a path with `..`, which would write outside the store");
    }
    match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous => Ok(()),
        EntryType::Symlink => Err("a symbolic link, which an export never holds"),
        EntryType::Link => Err("a hard link, which an export never holds"),
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            Err("a device file, which an export never holds")
        }
        EntryType::Directory => Err("a folder, which an export never holds"),
        _ => Err("an entry of a kind an export never holds"),
    }
}

/// Copies `reader` into the new file `path`, hashing on the way; returns the bytes copied and
/// their digest.
fn copy_hashing(reader: &mut impl Read, path: &Path) -> std::io::Result<(u64, Digest)> {
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n])?;
        copied += n as u64;
    }
    Ok((copied, Digest(*hasher.finalize().as_bytes())))
}

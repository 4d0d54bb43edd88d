//! `kiln models export`: a registered version, its lineage and its artifact's blobs, into one
//! tar file written atomically (a temporary beside it, renamed over it when complete).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_registry::{ModelRef, OutKind, Version};
use kiln_spec::{Project, RelPath};
use kiln_store::{Digest, atomic};

use super::TransferError;
use super::manifest::{
    ArtifactKind, ArtifactRecord, BlobRecord, FORMAT, FORMAT_VERSION, FileRecord, LineageRecord,
    Manifest,
};
use crate::Error;
use crate::workspace::Workspace;

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exported {
    pub model: String,
    pub version: Version,
    pub artifact_digest: String,
    pub file: PathBuf,
    pub blobs: usize,
    /// The blobs' bytes.
    pub bytes: u64,
}

/// Writes the version `reference` names, with its lineage and its artifact's blobs, to `file`.
pub fn export_version(
    workspace: &Workspace,
    project: &Project,
    reference: &ModelRef,
    file: &Path,
) -> Result<Exported, Error> {
    let version = workspace.registry.resolve(reference)?;
    let registered = workspace
        .registry
        .model_version(&reference.model, version)?;
    let out = crate::artifact::version_out(workspace, project, &registered)?;
    let declared = project
        .model(&reference.model)
        .and_then(|model| model.artifact.clone());
    let artifact = artifact_record(workspace, &out, declared.as_ref())?;
    if artifact.digest != registered.artifact_digest {
        return Err(TransferError::ArtifactMismatch {
            model: registered.model.clone(),
            version,
            digest: registered.artifact_digest.clone(),
        }
        .into());
    }
    let mut blobs: Vec<BlobRecord> = match artifact.kind {
        ArtifactKind::File => {
            let digest = digest_of(&artifact.digest)?;
            vec![BlobRecord {
                digest: artifact.digest.clone(),
                size: object_size(workspace, &digest)?,
            }]
        }
        ArtifactKind::Tree => artifact
            .files
            .iter()
            .map(|file| BlobRecord {
                digest: file.digest.clone(),
                size: file.size,
            })
            .collect(),
    };
    blobs.sort();
    blobs.dedup();
    let manifest = Manifest {
        format: FORMAT.to_string(),
        format_version: FORMAT_VERSION,
        model: registered.model.clone(),
        version,
        registered_at_ms: registered.registered_at_ms,
        artifact,
        lineage: LineageRecord::from(&registered.lineage),
        blobs,
    };
    // What is written must read back: an export that its own import refuses is a bug here.
    manifest
        .check()
        .map_err(|reason| TransferError::BadManifest {
            file: file.to_path_buf(),
            reason,
        })?;
    for blob in &manifest.blobs {
        let digest = digest_of(&blob.digest)?;
        let size = object_size(workspace, &digest)?;
        if size != blob.size {
            return Err(TransferError::ArtifactMismatch {
                model: registered.model.clone(),
                version,
                digest: blob.digest.clone(),
            }
            .into());
        }
    }
    write_archive(workspace, &manifest, file)?;
    Ok(Exported {
        model: manifest.model,
        version,
        artifact_digest: manifest.artifact.digest,
        file: file.to_path_buf(),
        blobs: manifest.blobs.len(),
        bytes: manifest.blobs.iter().map(|b| b.size).sum(),
    })
}

/// A digest the registry or the store holds; one that is not is Kiln's state damaged.
fn digest_of(text: &str) -> Result<Digest, Error> {
    Digest::from_hex(text).ok_or_else(|| {
        TransferError::NotADigest {
            text: text.to_string(),
        }
        .into()
    })
}

fn object_size(workspace: &Workspace, digest: &Digest) -> Result<u64, Error> {
    let path = workspace.store.object_path(digest);
    std::fs::metadata(&path).map(|m| m.len()).map_err(|_| {
        Error::Store(kiln_store::Error::MissingObject {
            digest: *digest,
            location: workspace.store.root().display().to_string(),
        })
    })
}

/// The artifact as the registry names it: the out's file, a file inside the out's folder
/// (the version's digest is then the file's), or the out's whole folder (its tree's digest,
/// even when the artifact is a part of it).
fn artifact_record(
    workspace: &Workspace,
    out: &kiln_registry::StageOut,
    declared: Option<&RelPath>,
) -> Result<ArtifactRecord, Error> {
    let out_path =
        RelPath::resolve(&RelPath::root(), &out.path).ok_or_else(|| Error::CacheEntryPath {
            key: out.digest.clone(),
            path: out.path.clone(),
        })?;
    if out.kind == OutKind::File {
        return Ok(ArtifactRecord {
            digest: out.digest.clone(),
            kind: ArtifactKind::File,
            path: out_path.as_str().to_string(),
            executable: out.executable,
            files: Vec::new(),
        });
    }
    let digest = digest_of(&out.digest)?;
    let tree = crate::stage::read_tree(&workspace.store, &out_path, &digest)?;
    // A single file inside the folder is the artifact by itself, as `materialise` sees it.
    if let Some(declared) = declared {
        let inner = declared
            .as_str()
            .strip_prefix(out_path.as_str())
            .unwrap_or("")
            .trim_start_matches('/');
        let within: Vec<_> = tree
            .entries
            .iter()
            .filter(|e| {
                !inner.is_empty() && (e.path == inner || e.path.starts_with(&format!("{inner}/")))
            })
            .collect();
        if let [entry] = within.as_slice()
            && entry.path == inner
        {
            return Ok(ArtifactRecord {
                digest: entry.digest.to_hex(),
                kind: ArtifactKind::File,
                path: declared.as_str().to_string(),
                executable: entry.executable,
                files: Vec::new(),
            });
        }
    }
    Ok(ArtifactRecord {
        digest: out.digest.clone(),
        kind: ArtifactKind::Tree,
        path: out_path.as_str().to_string(),
        executable: false,
        files: tree
            .entries
            .iter()
            .map(|entry| FileRecord {
                path: entry.path.clone(),
                digest: entry.digest.to_hex(),
                size: entry.size,
                executable: entry.executable,
            })
            .collect(),
    })
}

/// Writes `manifest.json`, then each blob, to a temporary beside `file`, flushes it and
/// renames it over `file`: a reader never sees half an export.
fn write_archive(workspace: &Workspace, manifest: &Manifest, file: &Path) -> Result<(), Error> {
    let write_error = |source| TransferError::Write {
        file: file.to_path_buf(),
        source,
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export.tar".to_string());
    let dir = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temporary = dir.join(format!(
        ".{name}{}{}",
        atomic::TEMPORARY_MARK,
        std::process::id()
    ));
    let result = (|| -> Result<(), Error> {
        let output = File::create(&temporary).map_err(write_error)?;
        let mut builder = tar::Builder::new(BufWriter::new(output));
        let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest serialises to JSON");
        builder
            .append_data(&mut header(bytes.len() as u64), "manifest.json", &bytes[..])
            .map_err(write_error)?;
        for blob in &manifest.blobs {
            let digest = digest_of(&blob.digest)?;
            let object = workspace.store.object_path(&digest);
            let source = File::open(&object).map_err(|source| TransferError::Read {
                file: object.clone(),
                source,
            })?;
            builder
                .append_data(
                    &mut header(blob.size),
                    format!("blobs/{}", blob.digest),
                    source,
                )
                .map_err(write_error)?;
        }
        let mut output = builder
            .into_inner()
            .map_err(write_error)?
            .into_inner()
            .map_err(|error| write_error(error.into_error()))?;
        output.flush().map_err(write_error)?;
        output.sync_all().map_err(write_error)?;
        std::fs::rename(&temporary, file).map_err(write_error)?;
        atomic::sync_dir(&dir).map_err(write_error)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// A plain file entry: mode 0644, owned by root, dated 1970, so that two exports of the same
/// version are the same bytes.
fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

//! The base layer of an image: Kiln's server (stripped), what serves the model (ONNX Runtime,
//! or a Python interpreter with its standard library and the version's virtualenv), the shared
//! libraries all of them load as this machine resolves them (`ldd`, the loader included), a
//! non-root user and `/tmp`. Nothing is pulled: every file comes from this machine.
//!
//! Written once per set of inputs: `<cache>/base/<key>.json` records a base layer by a key of
//! its primary inputs (a versioned encoding of the server's, the runtime's and the
//! interpreter's paths, sizes, times and inodes), with every host file it copied and the same
//! facts about each; a record is used only while each of those files is unchanged and its blob
//! is in the layout or in `<cache>/blobs/`. Another version of a model therefore builds no base.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::build::{CachedBase, ImageSpec, KILN_PATH, Runtime};
use crate::closure::{debian_packages, libraries};
use crate::layer::{LayerBuilder, check_strip};
use crate::layout::Layout;
use crate::sbom::Package;

/// The tag of the cache key's encoding: bump it when what a base holds changes.
const KEY_TAG: &str = "kiln-image-base-v1";

/// Where ONNX Runtime sits in the image.
const LIBRARY_DIR: &str = "/opt/kiln/lib";
/// Where a Python model's virtualenv sits in the image.
const VENV_DIR: &str = "/opt/kiln/venv";

const PASSWD: &str =
    "root:x:0:0:root:/root:/usr/sbin/nologin\nkiln:x:65532:65532:kiln:/tmp:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nkiln:x:65532:\n";

/// Standard library folders a server never imports.
const STDLIB_SKIPPED: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "dist-packages",
];

/// A host file's identity for the cache: path, size, modification time, inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp, Error> {
        let metadata = std::fs::metadata(path).map_err(Error::io("read", path))?;
        Ok(Stamp {
            path: path.to_path_buf(),
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            inode: metadata.ino(),
        })
    }

    fn encode(&self, hasher: &mut Sha256) {
        let path = self.path.to_string_lossy();
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(self.size.to_le_bytes());
        hasher.update(self.mtime_ns.to_le_bytes());
        hasher.update(self.inode.to_le_bytes());
    }
}

/// A cache record: the base and the files it was made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    base: CachedBase,
    inputs: Vec<Stamp>,
}

/// The base layer for `spec` in `layout`: from the cache when its inputs are unchanged (true),
/// else written now (false).
pub(crate) fn base_layer(
    spec: &ImageSpec,
    layout: &Layout,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(CachedBase, bool), Error> {
    let key = key(spec)?;
    let record_path = cache.join("base").join(format!("{key}.json"));
    if let Some(base) = cached(&record_path, layout, cache)? {
        return Ok((base, true));
    }
    check_strip()?;
    progress("building the base layer (once for this server and runtime)");
    let plan = plan(spec)?;
    let temporary = layout.temporary();
    let written = plan.layer.write(&temporary).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })?;
    layout.commit_blob(&temporary, &written.digest)?;
    // The cache keeps its own link to the blob, for the next layout (`--output`).
    let cached_blob = cache.join("blobs").join(written.digest.replace(':', "/"));
    if !cached_blob.is_file() {
        let folder = cached_blob.parent().unwrap_or(cache);
        std::fs::create_dir_all(folder).map_err(Error::io("create", folder))?;
        if std::fs::hard_link(layout.blob_path(&written.digest), &cached_blob).is_err() {
            let copy = folder.join(format!(
                "{}{}",
                kiln_store::atomic::TEMPORARY_MARK,
                std::process::id()
            ));
            std::fs::copy(layout.blob_path(&written.digest), &copy)
                .and_then(|_| kiln_store::atomic::commit(&copy, &cached_blob))
                .map_err(Error::io("write", &cached_blob))?;
        }
    }
    let host_files = plan.layer.host_files();
    let mut packages = plan.packages;
    // Asked by the paths `ldd` printed too: on a merged-`/usr` system dpkg knows a library by
    // the path its package ships it at (`/lib/…`), which may not be the real one (`/usr/lib/…`).
    let asked: Vec<PathBuf> = host_files.iter().chain(&plan.libraries).cloned().collect();
    for package in debian_packages(&asked) {
        packages.push(Package::deb(
            &package.name,
            &package.version,
            &package.architecture,
        ));
    }
    packages.sort();
    packages.dedup();
    let inputs = host_files
        .iter()
        .map(|path| Stamp::of(path))
        .collect::<Result<Vec<_>, _>>()?;
    let base = CachedBase {
        layer: written,
        description: plan.description,
        packages,
        serve_args: plan.serve_args,
        env: plan.env,
    };
    let record = Record {
        base: base.clone(),
        inputs,
    };
    let folder = record_path.parent().unwrap_or(cache);
    std::fs::create_dir_all(folder).map_err(Error::io("create", folder))?;
    let text = serde_json::to_vec_pretty(&record).map_err(|error| Error::Oci {
        what: "base cache record",
        message: error.to_string(),
    })?;
    kiln_store::atomic::write(&record_path, &text).map_err(Error::io("write", &record_path))?;
    Ok((base, false))
}

/// The cached base at `record_path`, when every file it was made from is unchanged and its
/// blob is at hand (copied into the layout from the cache when the layout lacks it).
fn cached(record_path: &Path, layout: &Layout, cache: &Path) -> Result<Option<CachedBase>, Error> {
    let Ok(text) = std::fs::read(record_path) else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<Record>(&text) else {
        return Ok(None);
    };
    for stamp in &record.inputs {
        if Stamp::of(&stamp.path).ok().as_ref() != Some(stamp) {
            return Ok(None);
        }
    }
    let digest = &record.base.layer.digest;
    if !layout.has_blob(digest) {
        let cached_blob = cache.join("blobs").join(digest.replace(':', "/"));
        if !cached_blob.is_file() {
            return Ok(None);
        }
        let temporary = layout.temporary();
        if std::fs::hard_link(&cached_blob, &temporary).is_err() {
            std::fs::copy(&cached_blob, &temporary).map_err(Error::io("copy", &cached_blob))?;
        }
        layout.commit_blob(&temporary, digest)?;
    }
    Ok(Some(record.base))
}

/// The cache key: the encoding's tag, the runtime's kind, and the stamps of the primary inputs
/// (the server, ONNX Runtime or the interpreter and the virtualenv's marker file).
fn key(spec: &ImageSpec) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    hasher.update(KEY_TAG.as_bytes());
    Stamp::of(&spec.kiln)?.encode(&mut hasher);
    hasher.update((spec.kiln_version.len() as u64).to_le_bytes());
    hasher.update(spec.kiln_version.as_bytes());
    match &spec.runtime {
        Runtime::Onnx { library } => {
            hasher.update(b"onnx");
            Stamp::of(&canonical(library)?)?.encode(&mut hasher);
        }
        Runtime::Python { python } => {
            hasher.update(b"python");
            let venv = venv_of(python)?;
            Stamp::of(&venv.join("pyvenv.cfg"))?.encode(&mut hasher);
            Stamp::of(&canonical(python)?)?.encode(&mut hasher);
        }
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn canonical(path: &Path) -> Result<PathBuf, Error> {
    std::fs::canonicalize(path).map_err(Error::io("read", path))
}

/// What a base holds, before it is written.
struct Plan {
    layer: LayerBuilder,
    description: String,
    packages: Vec<Package>,
    serve_args: Vec<String>,
    env: Vec<String>,
    /// The libraries as `ldd` named them.
    libraries: Vec<PathBuf>,
}

fn plan(spec: &ImageSpec) -> Result<Plan, Error> {
    let mut layer = LayerBuilder::new();
    layer.stripped(KILN_PATH, &canonical(&spec.kiln)?);
    layer.bytes("/etc/passwd", PASSWD, 0o644);
    layer.bytes("/etc/group", GROUP, 0o644);
    layer.dir("/tmp", 0o1777);
    let mut packages = vec![Package {
        name: "kiln".to_string(),
        version: spec.kiln_version.clone(),
        purl: None,
    }];
    let mut elves = vec![canonical(&spec.kiln)?];
    let (description, serve_args, env, skip_under) = match &spec.runtime {
        Runtime::Onnx { library } => {
            let library = canonical(library)?;
            let name = library
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "libonnxruntime.so".to_string());
            let in_image = format!("{LIBRARY_DIR}/{name}");
            layer.file(&in_image, &library)?;
            let version = onnx_runtime_version(&library);
            packages.push(Package::pypi("onnxruntime", &version));
            elves.push(library);
            (
                format!("kiln {}, ONNX Runtime {version}", spec.kiln_version),
                vec!["--ort-lib".to_string(), in_image],
                Vec::new(),
                None,
            )
        }
        Runtime::Python { python } => {
            let venv = venv_of(python)?;
            let facts = python_facts(python)?;
            // The interpreter the virtualenv's `python` links to, at its own path (the
            // virtualenv's links name it), with the links on the way.
            let interpreter = canonical(python)?;
            let mut link = python.clone();
            while let Ok(target) = std::fs::read_link(&link) {
                let next = if target.is_absolute() {
                    target
                } else {
                    link.parent().unwrap_or(Path::new("/")).join(target)
                };
                if !next.starts_with(&venv) {
                    layer.host_path(&next)?;
                }
                link = next;
            }
            layer.host_path(&interpreter)?;
            elves.push(interpreter);
            let stdlib = PathBuf::from(&facts.stdlib);
            layer.tree(&stdlib, &stdlib, &|path| {
                path.parent() == Some(stdlib.as_path())
                    && path.file_name().is_some_and(|n| {
                        // `config-3.11-x86_64-linux-gnu`: what building extensions needs.
                        STDLIB_SKIPPED.iter().any(|s| n == *s)
                            || n.to_string_lossy().starts_with("config-")
                    })
            })?;
            layer.tree(Path::new(VENV_DIR), &venv, &|_| false)?;
            let mut extensions = Vec::new();
            collect_shared_objects(&stdlib, &mut extensions)?;
            collect_shared_objects(&venv, &mut extensions)?;
            elves.extend(extensions);
            packages.push(Package {
                name: "python".to_string(),
                version: facts.version.clone(),
                purl: None,
            });
            packages.extend(venv_packages(&venv));
            (
                format!(
                    "kiln {}, Python {} with the model's virtualenv",
                    spec.kiln_version, facts.version
                ),
                vec!["--python".to_string(), format!("{VENV_DIR}/bin/python")],
                vec!["PYTHONDONTWRITEBYTECODE=1".to_string()],
                Some(venv),
            )
        }
    };
    // Libraries inside the virtualenv are in the image already, at its path there; the
    // extensions find them relative to themselves (`$ORIGIN`).
    let libraries: BTreeSet<PathBuf> = libraries(&elves)?
        .into_iter()
        .filter(|library| {
            skip_under.as_ref().is_none_or(|venv| {
                !library.starts_with(venv)
                    && std::fs::canonicalize(library).is_ok_and(|real| !real.starts_with(venv))
            })
        })
        .collect();
    let count = libraries.len();
    for library in &libraries {
        layer.host_path(library)?;
    }
    Ok(Plan {
        layer,
        description: format!("{description}, {count} shared libraries"),
        packages,
        serve_args,
        env,
        libraries: libraries.into_iter().collect(),
    })
}

/// ONNX Runtime's version: from the library's name (`libonnxruntime.so.1.32.0`), else from
/// the `onnxruntime-*.dist-info` folder of the package it came with.
fn onnx_runtime_version(library: &Path) -> String {
    let name = library
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, version)) = name.split_once(".so.")
        && version.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return version.to_string();
    }
    // site-packages/onnxruntime/capi/libonnxruntime.so
    if let Some(site) = library.ancestors().nth(3)
        && let Ok(entries) = std::fs::read_dir(site)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name
                .strip_prefix("onnxruntime-")
                .and_then(|rest| rest.strip_suffix(".dist-info"))
            {
                return version.to_string();
            }
        }
    }
    "unknown".to_string()
}

/// The virtualenv `python` belongs to (`<venv>/bin/python`, beside `pyvenv.cfg`).
fn venv_of(python: &Path) -> Result<PathBuf, Error> {
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if !venv.join("pyvenv.cfg").is_file() {
        return Err(Error::Python {
            path: python.to_path_buf(),
            message: "it is not the interpreter of a virtualenv (no `pyvenv.cfg` beside its `bin`)"
                .to_string(),
        });
    }
    Ok(venv)
}

struct PythonFacts {
    stdlib: String,
    version: String,
}

fn python_facts(python: &Path) -> Result<PythonFacts, Error> {
    let output = Command::new(python)
        .args([
            "-c",
            "import sys, sysconfig; print(sysconfig.get_paths()['stdlib']); print(sys.version.split()[0])",
        ])
        .output()
        .map_err(|error| Error::Python {
            path: python.to_path_buf(),
            message: error.to_string(),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    match (output.status.success(), lines.next(), lines.next()) {
        (true, Some(stdlib), Some(version)) => Ok(PythonFacts {
            stdlib: stdlib.to_string(),
            version: version.to_string(),
        }),
        _ => Err(Error::Python {
            path: python.to_path_buf(),
            message: format!(
                "it did not say where its standard library is: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}

/// Every `*.so*` file under `folder` (extension modules and the libraries wheels bundle).
fn collect_shared_objects(folder: &Path, found: &mut Vec<PathBuf>) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect_shared_objects(&path, found)?;
        } else if kind.is_file()
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"))
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(())
}

/// The packages of a virtualenv, from its `*.dist-info` folders (`name-version.dist-info`).
fn venv_packages(venv: &Path) -> Vec<Package> {
    let mut packages = Vec::new();
    let Ok(lib) = std::fs::read_dir(venv.join("lib")) else {
        return packages;
    };
    for python in lib.flatten() {
        let Ok(entries) = std::fs::read_dir(python.path().join("site-packages")) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".dist-info")
                && let Some((package, version)) = stem.rsplit_once('-')
            {
                packages.push(Package::pypi(package, version));
            }
        }
    }
    packages.sort();
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_onnx_runtime_version_comes_from_the_library_or_its_package() {
        assert_eq!(
            onnx_runtime_version(Path::new("/x/libonnxruntime.so.1.32.0")),
            "1.32.0"
        );
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join("site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::create_dir_all(
            dir.path()
                .join("site-packages/onnxruntime-1.20.1.dist-info"),
        )
        .unwrap();
        assert_eq!(
            onnx_runtime_version(&capi.join("libonnxruntime.so")),
            "1.20.1"
        );
    }

    #[test]
    fn a_python_outside_a_virtualenv_is_refused() {
        let error = venv_of(Path::new("/usr/bin/python3")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not the interpreter of a virtualenv"),
            "{error}"
        );
    }

    #[test]
    fn virtualenv_packages_come_from_dist_info_folders() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.11/site-packages");
        std::fs::create_dir_all(site.join("numpy-2.1.0.dist-info")).unwrap();
        std::fs::create_dir_all(site.join("scikit_learn-1.5.2.dist-info")).unwrap();
        std::fs::create_dir_all(site.join("numpy")).unwrap();
        let packages = venv_packages(dir.path());
        assert_eq!(
            packages,
            [
                Package::pypi("numpy", "2.1.0"),
                Package::pypi("scikit_learn", "1.5.2")
            ]
        );
    }
}

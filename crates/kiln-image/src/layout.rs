//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/…`), as the image
//! layout specification describes it: blobs are written once, by content; `index.json` names
//! images by `org.opencontainers.image.ref.name` and lists the SBOM artifacts beside them, and
//! is rewritten whole, under a lock, so that two builds into one layout do not lose an entry.
//! Every JSON document Kiln writes is canonical (keys sorted, no spaces), so the same content
//! has the same digest.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use serde::Serialize;

use crate::Error;
use crate::layer::sha256_of;

/// The annotation naming an image in a layout (`iris:v3`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The annotation of an SBOM's index entry naming the image it describes (by ref name), so
/// that a rebuild replaces it.
pub const SBOM_OF: &str = "dev.kiln.sbom.of";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An OCI image layout folder.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// A blob put into the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    /// It was there already.
    pub reused: bool,
}

impl Layout {
    /// Opens the layout at `root`, creating it (and the folder) when there is none.
    pub fn open_or_create(root: &Path) -> Result<Layout, Error> {
        let layout = Layout {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(Error::io("create", root))?;
        let marker = root.join("oci-layout");
        match std::fs::read(&marker) {
            Ok(text) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&text).map_err(|error| Error::BadLayout {
                        path: root.to_path_buf(),
                        message: format!("`oci-layout`: {error}"),
                    })?;
                if value
                    .get("imageLayoutVersion")
                    .and_then(|v| v.as_str())
                    .is_none()
                {
                    return Err(Error::BadLayout {
                        path: root.to_path_buf(),
                        message: "`oci-layout` has no `imageLayoutVersion`".to_string(),
                    });
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                kiln_store::atomic::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                    .map_err(Error::io("write", &marker))?;
            }
            Err(error) => return Err(Error::io("read", &marker)(error)),
        }
        if !root.join("index.json").exists() {
            layout.write_index(&[])?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` (`sha256:…`) is.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A fresh temporary path inside the layout (for a blob being written), removed by the
    /// caller or moved into place by [`Layout::commit_blob`].
    pub fn temporary(&self) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!(
            "blobs/{}{}-{n}",
            kiln_store::atomic::TEMPORARY_MARK,
            std::process::id()
        ))
    }

    /// Moves the written temporary into place as the blob `digest` (or drops it when the blob
    /// is there already).
    pub fn commit_blob(&self, temporary: &Path, digest: &str) -> Result<bool, Error> {
        let target = self.blob_path(digest);
        if target.is_file() {
            let _ = std::fs::remove_file(temporary);
            return Ok(true);
        }
        kiln_store::atomic::commit(temporary, &target).map_err(Error::io("write", &target))?;
        Ok(false)
    }

    /// Puts `bytes` as a blob.
    pub fn put(&self, bytes: &[u8]) -> Result<Blob, Error> {
        let digest = sha256_of(bytes);
        let size = bytes.len() as u64;
        if self.has_blob(&digest) {
            return Ok(Blob {
                digest,
                size,
                reused: true,
            });
        }
        let temporary = self.temporary();
        let result = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(error) = result {
            let _ = std::fs::remove_file(&temporary);
            return Err(Error::io("write", &temporary)(error));
        }
        let reused = self.commit_blob(&temporary, &digest)?;
        Ok(Blob {
            digest,
            size,
            reused,
        })
    }

    /// The layout's index.
    pub fn index(&self) -> Result<ImageIndex, Error> {
        let path = self.root.join("index.json");
        let text = std::fs::read(&path).map_err(Error::io("read", &path))?;
        serde_json::from_slice(&text).map_err(|error| Error::BadLayout {
            path: self.root.clone(),
            message: format!("`index.json`: {error}"),
        })
    }

    /// The manifest descriptor named `reference` (`iris:v3`).
    pub fn resolve(&self, reference: &str) -> Result<Option<Descriptor>, Error> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .find(|descriptor| {
                descriptor
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|name| name == reference)
            })
            .cloned())
    }

    /// Changes the index's list of manifests under the layout's lock; entries are kept sorted
    /// (by ref name, then digest) so that the index reads the same whatever the order of builds.
    pub fn update_index(&self, change: impl FnOnce(&mut Vec<Descriptor>)) -> Result<(), Error> {
        let lock_path = self.root.join(".kiln-index.lock");
        let lock = kiln_store::lock::open(&lock_path).map_err(Error::io("lock", &lock_path))?;
        lock.lock().map_err(Error::io("lock", &lock_path))?;
        let mut manifests = self.index()?.manifests().clone();
        change(&mut manifests);
        manifests.sort_by_key(|descriptor| {
            let annotation = |key: &str| {
                descriptor
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(key).cloned())
                    .unwrap_or_default()
            };
            (
                annotation(REF_NAME),
                annotation(SBOM_OF),
                descriptor.digest().to_string(),
            )
        });
        manifests.dedup();
        self.write_index(&manifests)
    }

    fn write_index(&self, manifests: &[Descriptor]) -> Result<(), Error> {
        let mut index = ImageIndex::default();
        index.set_schema_version(2);
        index.set_media_type(Some(MediaType::ImageIndex));
        index.set_manifests(manifests.to_vec());
        let path = self.root.join("index.json");
        kiln_store::atomic::write(&path, &canonical_json(&index, "index.json")?)
            .map_err(Error::io("write", &path))
    }
}

/// `value` as canonical JSON: object keys sorted at every level, no insignificant spaces. The
/// OCI types keep annotations and labels in hash maps, whose order changes from run to run.
pub fn canonical_json(value: &impl Serialize, what: &'static str) -> Result<Vec<u8>, Error> {
    let value = serde_json::to_value(value).map_err(|error| Error::Oci {
        what,
        message: error.to_string(),
    })?;
    serde_json::to_vec(&sorted(value)).map_err(|error| Error::Oci {
        what,
        message: error.to_string(),
    })
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut map = HashMap::new();
        for key in ["zeta", "alpha", "mu", "beta", "omega", "gamma"] {
            map.insert(
                key.to_string(),
                serde_json::json!({"b": 1, "a": [ {"y": 1, "x": 2} ]}),
            );
        }
        let text = String::from_utf8(canonical_json(&map, "test").unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"alpha":{"a":[{"x":2,"y":1}],"b":1},"beta""#),
            "{text}"
        );
    }

    #[test]
    fn a_new_layout_has_its_marker_and_an_empty_index_and_blobs_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open_or_create(&dir.path().join("images")).unwrap();
        assert!(layout.index().unwrap().manifests().is_empty());
        let first = layout.put(b"{}").unwrap();
        assert_eq!(
            first.digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(!first.reused);
        assert!(layout.put(b"{}").unwrap().reused);
        let again = Layout::open_or_create(layout.root()).unwrap();
        assert!(again.has_blob(&first.digest));
    }

    #[test]
    fn a_folder_that_is_not_a_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("oci-layout"), b"not json").unwrap();
        let error = Layout::open_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("not readable"), "{error}");
    }
}

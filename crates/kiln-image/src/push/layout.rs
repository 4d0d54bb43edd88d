//! Reading what a push needs from an OCI image layout: an image manifest found by its
//! `org.opencontainers.image.ref.name` (or its digest), the blobs it names, and the artifacts
//! in the layout whose `subject` is that manifest (the SBOM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The annotation that names a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An OCI content descriptor, with the fields a push reads or writes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFields {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A manifest of the layout, as bytes (pushed as they are, so its digest stays) and as read.
#[derive(Debug)]
pub struct Manifest {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
    /// The config first, then the layers.
    pub blobs: Vec<Descriptor>,
    pub subject: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image layout on disk.
pub struct Layout {
    root: PathBuf,
    index: Vec<Descriptor>,
}

impl Layout {
    pub fn open(root: &Path) -> Result<Layout, Error> {
        let index_path = root.join("index.json");
        let text = match std::fs::read(&index_path) {
            Ok(text) => text,
            // No layout yet: it holds no image, which the caller may build.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Layout {
                    root: root.to_owned(),
                    index: Vec::new(),
                });
            }
            Err(source) => {
                return Err(Error::LayoutIo {
                    path: index_path,
                    source,
                });
            }
        };
        let index: Index = serde_json::from_slice(&text).map_err(|error| Error::LayoutInvalid {
            path: root.to_owned(),
            reason: format!("`index.json` does not read as an OCI index: {error}"),
        })?;
        Ok(Layout {
            root: root.to_owned(),
            index: index.manifests,
        })
    }

    /// The image manifest named `reference` in `index.json` (or whose digest it is).
    pub fn image(&self, reference: &str) -> Result<Manifest, Error> {
        let found = self.index.iter().rev().find(|descriptor| {
            descriptor.annotations.get(REF_NAME).map(String::as_str) == Some(reference)
                || descriptor.digest == reference
        });
        let Some(descriptor) = found else {
            return Err(Error::ImageNotInLayout {
                layout: self.root.clone(),
                reference: reference.to_owned(),
            });
        };
        if descriptor.media_type != IMAGE_MANIFEST && descriptor.media_type != DOCKER_MANIFEST {
            return Err(self.invalid(format!(
                "`{reference}` is a `{}`, not an image manifest",
                descriptor.media_type
            )));
        }
        self.manifest(descriptor)
    }

    /// The manifests of the layout's index whose `subject` is `digest`.
    pub fn referrers(&self, digest: &str) -> Result<Vec<Manifest>, Error> {
        let mut referrers = Vec::new();
        for descriptor in &self.index {
            if descriptor.media_type != IMAGE_MANIFEST || descriptor.digest == digest {
                continue;
            }
            let manifest = self.manifest(descriptor)?;
            if manifest.subject.as_deref() == Some(digest) {
                referrers.push(manifest);
            }
        }
        Ok(referrers)
    }

    fn manifest(&self, descriptor: &Descriptor) -> Result<Manifest, Error> {
        let path = self.blob_path(descriptor)?;
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::BlobMissing {
                layout: self.root.clone(),
                digest: descriptor.digest.clone(),
            },
            _ => Error::LayoutIo { path, source },
        })?;
        let fields: ManifestFields = serde_json::from_slice(&bytes).map_err(|error| {
            self.invalid(format!(
                "manifest `{}` does not read as an OCI manifest: {error}",
                descriptor.digest
            ))
        })?;
        let mut blobs = vec![fields.config];
        blobs.extend(fields.layers);
        for blob in &blobs {
            self.blob_path(blob)?;
        }
        Ok(Manifest {
            descriptor: descriptor.clone(),
            bytes,
            blobs,
            subject: fields.subject.map(|subject| subject.digest),
            artifact_type: fields.artifact_type,
            annotations: fields.annotations,
        })
    }

    /// `blobs/<algorithm>/<hex>`, for a digest that can name nothing else (no `/`, no `..`).
    pub fn blob_path(&self, descriptor: &Descriptor) -> Result<PathBuf, Error> {
        let digest = &descriptor.digest;
        let valid = digest.split_once(':').filter(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && !hex.is_empty()
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        match valid {
            Some((algorithm, hex)) => Ok(self.root.join("blobs").join(algorithm).join(hex)),
            None => Err(self.invalid(format!("`{digest}` is not a digest"))),
        }
    }

    /// The blob's file, checked to exist with the descriptor's size.
    pub fn blob_file(&self, descriptor: &Descriptor) -> Result<PathBuf, Error> {
        let path = self.blob_path(descriptor)?;
        let metadata = std::fs::metadata(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::BlobMissing {
                layout: self.root.clone(),
                digest: descriptor.digest.clone(),
            },
            _ => Error::LayoutIo {
                path: path.clone(),
                source,
            },
        })?;
        if metadata.len() != descriptor.size {
            return Err(Error::BlobSize {
                layout: self.root.clone(),
                digest: descriptor.digest.clone(),
                expected: descriptor.size,
                actual: metadata.len(),
            });
        }
        Ok(path)
    }

    fn invalid(&self, reason: String) -> Error {
        Error::LayoutInvalid {
            path: self.root.clone(),
            reason,
        }
    }
}

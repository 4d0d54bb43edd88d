//! `manifest.json` of a model export, format 1: what the version is, where its artifact was
//! found in the project it was registered in, and every blob with its size. Its own serde
//! types (not the registry's), so that the file's shape changes only with `FORMAT_VERSION`.

use std::collections::{BTreeMap, BTreeSet};

use kiln_registry::{Lineage, OutKind, ServableSummary, StageOut, Version};
use kiln_store::{Digest, Entry, Tree};
use serde::{Deserialize, Serialize};

/// The `format` field every export carries.
pub const FORMAT: &str = "kiln-model-export";
/// The version of the manifest's shape this Kiln writes and reads. Bump it when the shape
/// changes: an older Kiln then refuses the file with a message instead of misreading it.
pub const FORMAT_VERSION: u64 = 1;

/// The largest manifest read (lineage, signature, example and profile are small documents).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u64,
    pub model: String,
    pub version: Version,
    /// When the version was registered where it was exported from (Unix milliseconds).
    pub registered_at_ms: i64,
    pub artifact: ArtifactRecord,
    pub lineage: LineageRecord,
    /// Every blob of the archive, sorted by digest.
    pub blobs: Vec<BlobRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// One file, the blob named by `digest`.
    File,
    /// A folder: `files` lists its files, and `digest` is their tree's.
    Tree,
}

/// The artifact as the version's registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    /// The version's artifact digest.
    pub digest: String,
    pub kind: ArtifactKind,
    /// For a file, its path in the project; for a tree, the path of the out it is (the
    /// artifact may be a part of it).
    pub path: String,
    #[serde(default)]
    pub executable: bool,
    /// For a tree: its files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub executable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRecord {
    pub digest: String,
    pub size: u64,
}

/// A version's lineage as the manifest holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageRecord {
    /// The run in the registry the version was exported from.
    pub run_id: i64,
    pub commit: Option<String>,
    pub dirty: bool,
    pub params: serde_json::Value,
    pub metrics: BTreeMap<String, f64>,
    pub deps: BTreeMap<String, Option<String>>,
    pub environment: Option<Vec<String>>,
    pub servable: Option<ServableRecord>,
    pub signature: Option<serde_json::Value>,
    pub example: Option<serde_json::Value>,
    pub profile: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServableRecord {
    pub passed: bool,
    pub message: String,
}

impl From<&Lineage> for LineageRecord {
    fn from(lineage: &Lineage) -> LineageRecord {
        LineageRecord {
            run_id: lineage.run_id,
            commit: lineage.commit.clone(),
            dirty: lineage.dirty,
            params: lineage.params.clone(),
            metrics: lineage.metrics.iter().cloned().collect(),
            deps: lineage.deps.clone(),
            environment: lineage.environment.clone(),
            servable: lineage.servable.as_ref().map(|s| ServableRecord {
                passed: s.passed,
                message: s.message.clone(),
            }),
            signature: lineage.signature.clone(),
            example: lineage.example.clone(),
            profile: lineage.profile.clone(),
        }
    }
}

impl From<LineageRecord> for Lineage {
    fn from(record: LineageRecord) -> Lineage {
        Lineage {
            run_id: record.run_id,
            commit: record.commit,
            dirty: record.dirty,
            params: record.params,
            metrics: record.metrics.into_iter().collect(),
            deps: record.deps,
            environment: record.environment,
            servable: record.servable.map(|s| ServableSummary {
                passed: s.passed,
                message: s.message,
            }),
            signature: record.signature,
            example: record.example,
            profile: record.profile,
        }
    }
}

/// A digest as a manifest must write it: 64 lowercase hex digits.
pub fn parse_digest(text: &str) -> Option<Digest> {
    Digest::from_hex(text).filter(|digest| digest.to_hex() == text)
}

/// Whether `path` is a relative, `/`-separated path that stays where it is put: no empty,
/// `.` or `..` component, no leading `/`, no NUL.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

impl Manifest {
    /// Reads a manifest: the format first (a newer one is its own error), then the shape.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ParseError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
            ParseError::NotAnExport(format!("its manifest is not JSON: {error}"))
        })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(ParseError::NotAnExport(format!(
                "its manifest's `format` is not `{FORMAT}`"
            )));
        }
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ParseError::Bad("`format_version` is not a number".to_string()))?;
        if found > FORMAT_VERSION {
            return Err(ParseError::Newer(found));
        }
        if found != FORMAT_VERSION {
            return Err(ParseError::Bad(format!(
                "`format_version` is {found}; formats start at 1"
            )));
        }
        serde_json::from_value(value).map_err(|error| ParseError::Bad(error.to_string()))
    }

    /// Checks that the manifest is whole and says one thing: names Kiln accepts, safe paths,
    /// the artifact's digest recomputed from its files, and exactly the blobs the artifact
    /// needs. Returns the blobs by digest, with their sizes.
    pub fn check(&self) -> Result<BTreeMap<Digest, u64>, String> {
        if !kiln_spec::valid_name(&self.model) {
            return Err(format!("`{}` is not a model name", self.model));
        }
        if self.version < 1 {
            return Err(format!(
                "`version` is {}; versions start at 1",
                self.version
            ));
        }
        if !self.lineage.params.is_object() {
            return Err("`lineage.params` is not an object".to_string());
        }
        let artifact = &self.artifact;
        if !is_safe_relative(&artifact.path) {
            return Err(format!(
                "the artifact's path `{}` is not a relative path inside a project",
                artifact.path
            ));
        }
        let digest = parse_digest(&artifact.digest)
            .ok_or_else(|| format!("`{}` is not a digest", artifact.digest))?;
        let mut needed: BTreeMap<Digest, u64> = BTreeMap::new();
        match artifact.kind {
            ArtifactKind::File => {
                if !artifact.files.is_empty() {
                    return Err("a file artifact lists `files`".to_string());
                }
                let size = self
                    .blobs
                    .iter()
                    .find(|blob| blob.digest == artifact.digest)
                    .map(|blob| blob.size)
                    .ok_or_else(|| "the artifact's blob is not in `blobs`".to_string())?;
                needed.insert(digest, size);
            }
            ArtifactKind::Tree => {
                let tree = self.tree()?;
                if tree.entries.is_empty() {
                    return Err("the artifact's folder holds no file".to_string());
                }
                if tree.digest() != digest {
                    return Err(format!(
                        "the artifact's files make the tree `{}`, not `{}`",
                        tree.digest().to_hex(),
                        artifact.digest
                    ));
                }
                for entry in &tree.entries {
                    if let Some(size) = needed.insert(entry.digest, entry.size)
                        && size != entry.size
                    {
                        return Err(format!(
                            "blob `{}` has two sizes in `files`",
                            entry.digest.to_hex()
                        ));
                    }
                }
            }
        }
        let mut listed = BTreeMap::new();
        for blob in &self.blobs {
            let digest = parse_digest(&blob.digest)
                .ok_or_else(|| format!("`{}` in `blobs` is not a digest", blob.digest))?;
            if listed.insert(digest, blob.size).is_some() {
                return Err(format!("`blobs` lists `{}` twice", blob.digest));
            }
        }
        if listed != needed {
            return Err(
                "`blobs` does not list exactly the artifact's blobs with their sizes".to_string(),
            );
        }
        Ok(listed)
    }

    /// A tree artifact's files as a tree, each path checked.
    pub fn tree(&self) -> Result<Tree, String> {
        let mut seen = BTreeSet::new();
        let mut entries = Vec::new();
        for file in &self.artifact.files {
            if !is_safe_relative(&file.path) {
                return Err(format!(
                    "`{}` in the artifact's `files` is not a relative path inside the artifact",
                    file.path
                ));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(format!("`files` lists `{}` twice", file.path));
            }
            let digest = parse_digest(&file.digest)
                .ok_or_else(|| format!("`{}` in `files` is not a digest", file.digest))?;
            entries.push(Entry {
                path: file.path.clone(),
                digest,
                size: file.size,
                executable: file.executable,
            });
        }
        Ok(Tree::new(entries))
    }

    /// The out the artifact is found in, as the importing registry records it.
    pub fn out(&self) -> StageOut {
        StageOut {
            path: self.artifact.path.clone(),
            kind: match self.artifact.kind {
                ArtifactKind::File => OutKind::File,
                ArtifactKind::Tree => OutKind::Dir,
            },
            digest: self.artifact.digest.clone(),
            executable: self.artifact.executable,
        }
    }
}

/// Why a manifest could not be read.
#[derive(Debug)]
pub enum ParseError {
    NotAnExport(String),
    Newer(u64),
    Bad(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-1 manifest as a file holds it: reading it must keep working, whatever the
    /// code becomes (a change of shape takes a new `FORMAT_VERSION`).
    const GOLDEN_V1: &str = r#"{
  "format": "kiln-model-export",
  "format_version": 1,
  "model": "iris",
  "version": 3,
  "registered_at_ms": 1764441600000,
  "artifact": {
    "digest": "DIGEST",
    "kind": "tree",
    "path": "models/iris/model",
    "executable": false,
    "files": [
      {"path": "predict.py", "digest": "PREDICT", "size": 12, "executable": false}
    ]
  },
  "lineage": {
    "run_id": 41,
    "commit": "0123abcd",
    "dirty": false,
    "params": {"train.C": 1.0},
    "metrics": {"accuracy": 0.93},
    "deps": {"data/iris.csv": null},
    "environment": ["scikit-learn==1.5.0"],
    "servable": {"passed": true, "message": "predicted 1 row"},
    "signature": null,
    "example": null,
    "profile": null
  },
  "blobs": [{"digest": "PREDICT", "size": 12}]
}"#;

    fn golden() -> String {
        let predict = Digest::of_bytes(b"print('hi')\n");
        let tree = Tree::new(vec![Entry {
            path: "predict.py".into(),
            digest: predict,
            size: 12,
            executable: false,
        }]);
        GOLDEN_V1
            .replace("PREDICT", &predict.to_hex())
            .replace("DIGEST", &tree.digest().to_hex())
    }

    #[test]
    fn a_format_1_manifest_reads_and_checks() {
        let manifest = Manifest::parse(golden().as_bytes()).unwrap();
        assert_eq!(manifest.model, "iris");
        assert_eq!(manifest.lineage.run_id, 41);
        let blobs = manifest.check().unwrap();
        assert_eq!(blobs.len(), 1);
        assert_eq!(manifest.out().kind, OutKind::Dir);
        let lineage: Lineage = manifest.lineage.clone().into();
        assert_eq!(LineageRecord::from(&lineage), manifest.lineage);
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let newer = golden().replace("\"format_version\": 1", "\"format_version\": 2");
        assert!(matches!(
            Manifest::parse(newer.as_bytes()),
            Err(ParseError::Newer(2))
        ));
        let other = golden().replace("kiln-model-export", "something-else");
        assert!(matches!(
            Manifest::parse(other.as_bytes()),
            Err(ParseError::NotAnExport(_))
        ));
        let checked = |text: String| Manifest::parse(text.as_bytes()).unwrap().check();
        for (from, to, reason) in [
            (
                "\"predict.py\"",
                "\"../predict.py\"",
                "is not a relative path",
            ),
            (
                "\"predict.py\"",
                "\"/etc/passwd\"",
                "is not a relative path",
            ),
            (
                "models/iris/model",
                "../model",
                "is not a relative path inside",
            ),
            (
                "\"model\": \"iris\"",
                "\"model\": \"../x\"",
                "is not a model name",
            ),
            (
                "\"size\": 12, \"executable\"",
                "\"size\": 13, \"executable\"",
                "`blobs` does not list",
            ),
            ("\"version\": 3", "\"version\": 0", "versions start at 1"),
        ] {
            let error = checked(golden().replacen(from, to, 1)).unwrap_err();
            assert!(error.contains(reason), "{from} -> {to}: {error}");
        }
        // A file added to the list changes the tree: it no longer is the artifact.
        let extra = golden().replace("\"executable\": false}\n", "\"executable\": true}\n");
        assert!(checked(extra).unwrap_err().contains("make the tree"));
    }

    #[test]
    fn safe_paths_stay_inside() {
        for good in ["a", "a/b.onnx", "a..b/c", ".hidden/x"] {
            assert!(is_safe_relative(good), "{good}");
        }
        for bad in ["", "/a", "a//b", "a/../b", "..", "./a", "a/", "a\0b"] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
    }
}

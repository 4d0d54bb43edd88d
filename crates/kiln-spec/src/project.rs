//! The validated project: models, stages and their paths resolved against the project root.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::deploy::Deploy;
use crate::diagnostic::Location;
use crate::gate::Expr;
pub use crate::schema::{ColumnRule, ColumnType, RowBounds};

/// Which file the project was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectFormat {
    Kiln,
    Dvc,
}

/// A project: a folder with a `kiln.yaml` (or a `dvc.yaml`) at its root.
#[derive(Debug, Clone)]
pub struct Project {
    /// Absolute path of the project root.
    pub root: PathBuf,
    /// The file the project was read from, relative to the root.
    pub file: PathBuf,
    pub format: ProjectFormat,
    pub models: Vec<Model>,
    /// Who is told of runs, versions and deployments (`notify:` in kiln.yaml).
    pub notify: Option<crate::notify::Notify>,
}

impl Project {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|model| model.name == name)
    }

    pub fn stages(&self) -> impl Iterator<Item = &Stage> {
        self.models.iter().flat_map(|model| model.stages.iter())
    }

    pub fn stage(&self, id: &StageId) -> Option<&Stage> {
        self.stages().find(|stage| &stage.id == id)
    }
}

/// A model: a named pipeline whose result is a servable artifact.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// Folder of the model, relative to the project root (`.` for the root itself).
    pub dir: RelPath,
    pub python: Option<PythonEnv>,
    /// The params file, relative to the project root, when the model has one.
    pub params_file: Option<RelPath>,
    pub stages: Vec<Stage>,
    pub artifact: Option<RelPath>,
    /// A CSV or JSON file of example inputs, relative to the project root: fed to the model
    /// after a green run to prove that it serves.
    pub example: Option<RelPath>,
    /// The CSV file the model is trained on, relative to the project root: profiled with every
    /// version the model registers.
    pub training_data: Option<RelPath>,
    pub gates: Vec<Gate>,
    /// Where its versions are deployed (`deploy:`, else [`Deploy::default_for_model`]).
    pub deploy: Deploy,
    /// The registry repository its images are pushed to (`image.repository`).
    pub image_repository: Option<String>,
}

/// A Python virtualenv built from a requirements file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The requirements file, relative to the project root.
    pub requirements: RelPath,
}

/// `model/stage`: how a stage is named across the project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId {
    pub model: String,
    pub stage: String,
}

impl StageId {
    pub fn new(model: impl Into<String>, stage: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            stage: stage.into(),
        }
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model, self.stage)
    }
}

/// One stage. Every path is relative to the project root; the command runs in `workdir`.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: StageId,
    pub cmd: String,
    pub workdir: RelPath,
    pub deps: Vec<RelPath>,
    /// Everything the stage writes, metrics files included.
    pub outs: Vec<RelPath>,
    /// Metrics files (also listed in `outs`).
    pub metrics: Vec<RelPath>,
    /// Param keys or sections (`train`, `train.C`) the stage reads.
    pub params: Vec<String>,
    pub checks: Vec<DataCheck>,
    pub env: BTreeMap<String, String>,
    /// Where each part was declared, for diagnostics.
    pub locations: StageLocations,
}

/// Where a stage's parts stand in the project file (`None` where unknown).
#[derive(Debug, Clone, Default)]
pub struct StageLocations {
    pub name: Option<Location>,
    pub cmd: Option<Location>,
    /// One entry per `Stage::deps` entry.
    pub deps: Vec<Option<Location>>,
    /// One entry per `Stage::outs` entry.
    pub outs: Vec<Option<Location>>,
    /// One entry per `Stage::params` entry.
    pub params: Vec<Option<Location>>,
}

/// Data checks on one CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataCheck {
    /// The checked file, relative to the project root.
    pub file: RelPath,
    pub rows: RowBounds,
    pub columns: Vec<(String, ColumnRule)>,
}

/// A quality gate: a boolean expression over the run's metrics.
#[derive(Debug, Clone)]
pub struct Gate {
    pub text: String,
    pub expr: Expr,
    pub location: Option<Location>,
}

/// A model name made from a folder name: letters, digits, `_`, `-` and `.`, anything else
/// becoming `-`; `fallback` when nothing is left.
pub(crate) fn name_from_folder(folder: &str, fallback: &str) -> String {
    let cleaned: String = folder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches(['.', '-']).trim_end_matches('-');
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

/// A normalised path relative to the project root, with `/` separators and no `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// The project root itself.
    pub fn root() -> Self {
        RelPath(String::new())
    }

    /// Resolves `path` against `base` (both relative to the root). `None` when the result leaves
    /// the project or `path` is absolute.
    pub fn resolve(base: &RelPath, path: &str) -> Option<RelPath> {
        if Path::new(path).is_absolute() {
            return None;
        }
        let mut parts: Vec<&str> = base.0.split('/').filter(|p| !p.is_empty()).collect();
        for component in Path::new(path).components() {
            match component {
                Component::Normal(part) => parts.push(part.to_str()?),
                Component::ParentDir => {
                    parts.pop()?;
                }
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(RelPath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        if self.0.is_empty() { "." } else { &self.0 }
    }

    pub fn to_path(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&self.0)
        }
    }

    /// True when `self` is `other` or lies inside it.
    pub fn is_within(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// True when one of the two paths contains the other.
    pub fn overlaps(&self, other: &RelPath) -> bool {
        self.is_within(other) || other.is_within(self)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_against_the_model_dir() {
        let base = RelPath::resolve(&RelPath::root(), "models/iris").unwrap();
        assert_eq!(
            RelPath::resolve(&base, "../../data/raw/iris.csv")
                .unwrap()
                .as_str(),
            "data/raw/iris.csv"
        );
        assert_eq!(
            RelPath::resolve(&base, "./src/train.py").unwrap().as_str(),
            "models/iris/src/train.py"
        );
        assert!(RelPath::resolve(&base, "../../../outside").is_none());
        assert!(RelPath::resolve(&base, "/etc/passwd").is_none());
    }

    #[test]
    fn containment_respects_path_boundaries() {
        let data = RelPath("data".into());
        assert!(RelPath("data/x.csv".into()).is_within(&data));
        assert!(!RelPath("database.csv".into()).is_within(&data));
        assert!(data.overlaps(&RelPath("data/processed".into())));
    }
}

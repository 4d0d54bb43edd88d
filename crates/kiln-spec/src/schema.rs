//! The file format of `kiln.yaml`, as serde reads it: every value keeps its span for diagnostics.
//!
//! These types mirror the file one to one; [`crate::project`] holds the validated form that the
//! rest of Kiln uses.

use indexmap::IndexMap;
use marked_yaml::Spanned;
use serde::Deserialize;

/// The whole `kiln.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KilnFile {
    pub models: IndexMap<Spanned<String>, ModelSpec>,
    pub notify: Option<crate::notify::NotifySpec>,
}

/// One model: a named pipeline whose result is a servable artifact.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Folder of the model, relative to the project root; stage paths are relative to it.
    pub dir: Option<Spanned<String>>,
    pub python: Option<PythonSpec>,
    /// Params file, relative to `dir` (default: `params.yaml` when it exists).
    pub params: Option<Spanned<String>>,
    pub stages: IndexMap<Spanned<String>, StageSpec>,
    pub artifact: Option<Spanned<String>>,
    /// A CSV or JSON file of example inputs, relative to `dir`, that Kiln feeds the model after
    /// a green run to prove that it serves.
    pub example: Option<Spanned<String>>,
    /// The CSV file the model is trained on, relative to `dir`: profiled, per column, with
    /// every version the model registers.
    pub training_data: Option<Spanned<String>>,
    #[serde(default)]
    pub gates: Vec<Spanned<String>>,
    /// The environments new versions go to, in promotion order (default: `staging`, then
    /// `production`).
    pub deploy: Option<crate::deploy::DeploySpec>,
    /// How the model's OCI images are named and pushed.
    pub image: Option<Spanned<ImageSpec>>,
}

/// `image:` of a model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The registry repository images are pushed to (`registry.example.com/team/iris`); what a
    /// Kubernetes environment pulls from.
    pub repository: Option<Spanned<String>>,
}

/// A Python virtualenv built from a requirements file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    pub requirements: Spanned<String>,
}

/// One stage: a command with declared inputs and outputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub cmd: Spanned<String>,
    #[serde(default)]
    pub deps: Vec<Spanned<String>>,
    #[serde(default)]
    pub outs: Vec<Spanned<String>>,
    #[serde(default)]
    pub params: Vec<Spanned<String>>,
    #[serde(default)]
    pub metrics: Vec<Spanned<String>>,
    #[serde(default)]
    pub checks: IndexMap<Spanned<String>, DataCheckSpec>,
    /// Extra environment variables for the command; part of the cache key.
    #[serde(default)]
    pub env: IndexMap<String, String>,
}

/// Data checks on one CSV file that the stage writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCheckSpec {
    pub rows: Option<RowBounds>,
    #[serde(default)]
    pub columns: IndexMap<Spanned<String>, ColumnRule>,
}

/// Bounds on the number of data rows (the header is not counted).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowBounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// Rules for one column of a CSV file. Every rule is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// The type every non-missing value must parse as.
    #[serde(rename = "type")]
    pub kind: Option<ColumnType>,
    /// Smallest allowed value (numeric columns).
    pub min: Option<f64>,
    /// Largest allowed value (numeric columns).
    pub max: Option<f64>,
    /// The allowed values; anything else fails the check.
    pub values: Option<Vec<String>>,
    /// Missing (empty, `NA`, `NaN`, `null`) values allowed: a count when 1 or more, a fraction of
    /// the rows when below 1.
    pub missing: Option<f64>,
}

/// Column types a data check understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    #[serde(alias = "integer")]
    Int,
    #[serde(alias = "number", alias = "double")]
    Float,
    #[serde(alias = "str", alias = "text")]
    String,
    #[serde(alias = "boolean")]
    Bool,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
        }
    }
}

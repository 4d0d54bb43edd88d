//! The values the registry stores, as types: statuses, outcomes, verdicts, rules and failure
//! kinds are enums whose serde names are both their JSON form and what the database holds.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub type RunId = i64;

/// How a run or a stage ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
}

/// Why a run did not succeed, from the most to the least fundamental (a run that fails in
/// several ways is recorded with the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The model's Python environment could not be built.
    Environment,
    /// A stage command failed, or could not be run.
    Stage,
    /// A data check failed.
    Check,
    /// A quality gate failed.
    Gate,
    /// The artifact could not be loaded and served: the servable check failed.
    Unservable,
    /// The run was cancelled (Ctrl-C, SIGTERM).
    Cancelled,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Environment => "environment",
            FailureKind::Stage => "stage",
            FailureKind::Check => "check",
            FailureKind::Gate => "gate",
            FailureKind::Unservable => "unservable",
            FailureKind::Cancelled => "cancelled",
        }
    }
}

/// How one stage of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// The command ran and succeeded.
    Ran,
    /// Inputs and outs unchanged: nothing to do.
    Cached,
    /// Inputs unchanged, outs restored from the cache.
    Restored,
    Failed,
    Cancelled,
    /// Not started: an upstream stage failed, or the run was cancelled.
    NotRun,
}

impl StageOutcome {
    /// The outcome as people read it (`not run`, not `not_run`).
    pub fn label(self) -> &'static str {
        match self {
            StageOutcome::Ran => "ran",
            StageOutcome::Cached => "cached",
            StageOutcome::Restored => "restored",
            StageOutcome::Failed => "failed",
            StageOutcome::Cancelled => "cancelled",
            StageOutcome::NotRun => "not run",
        }
    }
}

/// Whether an out is a single file or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutKind {
    File,
    Dir,
}

/// What one out of a stage held after the stage, so that a run's artifact is found as that
/// run made it even if the stage cache changes later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOut {
    /// The out's path from the project root, `/`-separated.
    pub path: String,
    pub kind: OutKind,
    /// The BLAKE3 digest of the file, or of the folder's tree, in hex.
    pub digest: String,
    /// For a file out: whether it is executable.
    pub executable: bool,
}

/// One stage's result within a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageResult {
    pub stage: String,
    pub outcome: StageOutcome,
    pub duration_ms: i64,
    pub exit_code: Option<i32>,
    pub log_path: Option<String>,
    pub cache_key: Option<String>,
    /// The outs, when the stage succeeded (ran, cached or restored).
    pub outs: Vec<StageOut>,
}

/// The rule a data-check result is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckRule {
    /// The file could be read as CSV at all.
    Readable,
    /// The number of data rows.
    Rows,
    /// A column exists in the header.
    Present,
    /// Every non-missing value has the declared type.
    Type,
    Min,
    Max,
    /// Every non-missing value is one of the allowed values.
    Values,
    /// The share of missing values.
    Missing,
}

impl CheckRule {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckRule::Readable => "readable",
            CheckRule::Rows => "rows",
            CheckRule::Present => "present",
            CheckRule::Type => "type",
            CheckRule::Min => "min",
            CheckRule::Max => "max",
            CheckRule::Values => "values",
            CheckRule::Missing => "missing",
        }
    }
}

/// One data-check rule's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub stage: String,
    pub file: String,
    /// The column the rule is about; `None` for file-wide rules (`rows`, `readable`).
    pub column: Option<String>,
    pub rule: CheckRule,
    pub passed: bool,
    pub message: String,
}

impl CheckResult {
    /// `column.rule`, or the rule alone.
    pub fn rule_name(&self) -> String {
        match &self.column {
            Some(column) => format!("{column}.{}", self.rule.as_str()),
            None => self.rule.as_str().to_string(),
        }
    }
}

/// What a gate concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateVerdict {
    Pass,
    Fail,
    /// Not evaluated (say, no previous run to compare with); does not fail the run.
    Skipped,
    /// The gate names a metric the run does not have; fails the run.
    Error,
}

impl GateVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            GateVerdict::Pass => "pass",
            GateVerdict::Fail => "fail",
            GateVerdict::Skipped => "skipped",
            GateVerdict::Error => "error",
        }
    }
}

/// One gate's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    pub expr: String,
    pub verdict: GateVerdict,
    /// The values the gate read, e.g. `accuracy=0.95`, or why it was skipped.
    pub detail: String,
}

/// The servable check of a run: its artifact loaded in its engine and asked to predict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServableResult {
    pub passed: bool,
    /// One line: what was predicted, or why the model could not be served.
    pub message: String,
    /// More of the model's error (a Python traceback, say).
    pub detail: Option<String>,
    pub duration_ms: i64,
}

/// The name a value of `T` has in the database (its serde name).
pub(crate) fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => unreachable!("registry enums serialise as strings"),
    }
}

/// The value of `T` a name in the database stands for, if any.
pub(crate) fn parse_name<T: DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        assert_eq!(name_of(&StageOutcome::NotRun), "not_run");
        assert_eq!(name_of(&FailureKind::Unservable), "unservable");
        assert_eq!(name_of(&GateVerdict::Error), "error");
        assert_eq!(name_of(&CheckRule::Missing), "missing");
        assert_eq!(parse_name::<Status>("succeeded"), Some(Status::Succeeded));
        assert_eq!(parse_name::<Status>("green"), None);
        for kind in [
            FailureKind::Environment,
            FailureKind::Stage,
            FailureKind::Check,
            FailureKind::Gate,
            FailureKind::Unservable,
            FailureKind::Cancelled,
        ] {
            assert_eq!(name_of(&kind), kind.as_str());
        }
        assert!(FailureKind::Gate < FailureKind::Unservable);
    }
}

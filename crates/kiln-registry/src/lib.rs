//! The run history of a project: runs, stage results and their outs, metrics, data-check
//! results, gate verdicts, servable checks, and the inputs each stage last ran with (for
//! `kiln status`).
//!
//! Only this crate speaks SQL. The database is SQLite in WAL mode under `.kiln/`; every write
//! is a transaction, so a crash leaves the history as it was before or after a step, never
//! between. Runs left `running` by a process that died are marked `interrupted` on open.
//! Values are written and read through the types of `types.rs`: a row that does not read as
//! its type is an [`Error::Corrupt`], never skipped.

mod migrations;
mod models;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use migrations::SCHEMA_VERSION;
pub use models::{
    AliasCommand, AliasMove, LATEST, Lineage, ModelRef, ModelSummary, ModelVersion, MoveBy, Origin,
    Registered, Selector, ServableSummary, Version, lineage_key, validate_alias,
};
pub use types::{
    CheckResult, CheckRule, FailureKind, GateResult, GateVerdict, OutKind, RunId, ServableResult,
    StageOut, StageOutcome, StageResult, Status,
};
use types::{name_of, parse_name};

/// A registry operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the run database `{}`", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("run database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("run `{0}` does not exist")]
    NoSuchRun(i64),
    #[error(
        "the run database was written by a newer Kiln (schema {found}, this Kiln knows {known})"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("cannot migrate the run database with `{name}`")]
    Migration {
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migration `{name}` left rows of table `{table}` naming rows that do not exist")]
    MigrationBrokeKeys { name: &'static str, table: String },
    #[error("no version of model `{0}` is registered")]
    NoSuchModel(String),
    #[error("model `{model}` has no version {version}")]
    NoSuchVersion { model: String, version: i64 },
    #[error("no version of model `{model}` is in `{alias}`")]
    AliasUnset { model: String, alias: String },
    #[error("`{alias}` cannot be an alias: {reason}")]
    BadAlias { alias: String, reason: String },
    #[error("`{text}` is not a model reference: {reason}")]
    BadModelRef { text: String, reason: String },
    #[error("alias `{alias}` of model `{model}` named no version before this one")]
    NothingToRollBack { model: String, alias: String },
    #[error("row {row} of table `{table}` in the run database is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        row: i64,
        reason: String,
    },
}

impl Error {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NewerSchema { .. } => {
                Some("use the Kiln that wrote it, or a newer one".to_string())
            }
            Error::NoSuchModel(model) => Some(format!(
                "a green `kiln run {model}` registers its first version; `kiln models list` shows the registered models"
            )),
            Error::NoSuchVersion { model, .. } | Error::AliasUnset { model, .. } => Some(format!(
                "`kiln models history {model}` shows its versions and aliases"
            )),
            Error::BadModelRef { .. } => Some(
                "write `MODEL`, `MODEL@vN` or `MODEL@ALIAS`, e.g. `iris@v3`, `iris@production`"
                    .to_string(),
            ),
            Error::Corrupt { .. } => Some(
                "the run history under `.kiln/kiln.db` was changed outside Kiln; \
                 move it away to start a new history"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

/// A run as it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub model: String,
    /// Param values the run used, as a JSON object of dotted keys.
    pub params: serde_json::Value,
    /// `--set` overrides, as a JSON object of dotted keys.
    pub overrides: serde_json::Value,
}

/// A run as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: RunId,
    pub model: String,
    pub status: Status,
    /// Why the run failed (or that it was cancelled); `None` otherwise.
    pub failure: Option<FailureKind>,
    pub commit: Option<String>,
    pub dirty: bool,
    /// Unix time in milliseconds.
    pub started_at_ms: i64,
    pub duration_ms: Option<i64>,
    /// A JSON object of dotted keys.
    pub params: serde_json::Value,
    /// A JSON object of dotted keys.
    pub overrides: serde_json::Value,
    pub message: Option<String>,
}

/// What a run produced, recorded when it ends.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome<'a> {
    pub status: Status,
    pub failure: Option<FailureKind>,
    /// The git state, when it was found out after the start: the commit checked out, and
    /// whether tracked files had uncommitted changes.
    pub git: Option<(Option<&'a str>, bool)>,
    /// Why it failed, in one line.
    pub message: Option<&'a str>,
    pub stages: &'a [StageResult],
    pub metrics: &'a [(String, f64)],
    pub checks: &'a [CheckResult],
    pub gates: &'a [GateResult],
    pub servable: Option<&'a ServableResult>,
}

impl RunOutcome<'_> {
    /// A run that ended before any stage: only a status, why, and a message.
    pub fn bare(
        status: Status,
        failure: Option<FailureKind>,
        message: Option<&str>,
    ) -> RunOutcome<'_> {
        RunOutcome {
            status,
            failure,
            git: None,
            message,
            stages: &[],
            metrics: &[],
            checks: &[],
            gates: &[],
            servable: None,
        }
    }
}

/// Everything recorded about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub stages: Vec<StageResult>,
    /// By key; in JSON, an object.
    #[serde(serialize_with = "metrics_object")]
    pub metrics: Vec<(String, f64)>,
    pub checks: Vec<CheckResult>,
    pub gates: Vec<GateResult>,
    pub servable: Option<ServableResult>,
}

/// Metrics as a JSON object of key to value.
fn metrics_object<S: serde::Serializer>(
    metrics: &[(String, f64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(metrics.iter().map(|(key, value)| (key, value)))
}

/// The run database of one project.
#[derive(Debug)]
pub struct Registry {
    connection: Connection,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn process_alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads `text`, found in `column` of a row of `table`, as a value of `T`.
fn typed<T: DeserializeOwned>(
    table: &'static str,
    row: i64,
    column: &str,
    text: &str,
) -> Result<T, Error> {
    parse_name(text).ok_or_else(|| Error::Corrupt {
        table,
        row,
        reason: format!("`{column}` holds `{text}`, which is not one of its values"),
    })
}

/// Reads a JSON object stored in `column` of a row of `table`.
fn json_object(
    table: &'static str,
    row: i64,
    column: &str,
    text: &str,
) -> Result<serde_json::Value, Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(Error::Corrupt {
            table,
            row,
            reason: format!("`{column}` is not a JSON object"),
        }),
    }
}

/// Collects rows that were each read through their type: a failed query and an unreadable row
/// are both errors.
fn read_rows<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, Error>>>,
) -> Result<Vec<T>, Error> {
    rows.map(|row| row?).collect()
}

fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `runs` row as SQLite holds it, before it is read through types.
struct RunRow {
    id: i64,
    model: String,
    status: String,
    failure: Option<String>,
    commit: Option<String>,
    dirty: bool,
    started_at_ms: i64,
    duration_ms: Option<i64>,
    params: String,
    overrides: String,
    message: Option<String>,
}

impl RunRow {
    const COLUMNS: &str = "id, model, status, failure, commit_sha, dirty, started_at_ms, duration_ms, params, overrides, message";

    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            model: row.get(1)?,
            status: row.get(2)?,
            failure: row.get(3)?,
            commit: row.get(4)?,
            dirty: row.get(5)?,
            started_at_ms: row.get(6)?,
            duration_ms: row.get(7)?,
            params: row.get(8)?,
            overrides: row.get(9)?,
            message: row.get(10)?,
        })
    }

    fn into_run(self) -> Result<Run, Error> {
        let id = self.id;
        Ok(Run {
            id,
            model: self.model,
            status: typed("runs", id, "status", &self.status)?,
            failure: match &self.failure {
                Some(text) => Some(typed("runs", id, "failure", text)?),
                None => None,
            },
            commit: self.commit,
            dirty: self.dirty,
            started_at_ms: self.started_at_ms,
            duration_ms: self.duration_ms,
            params: json_object("runs", id, "params", &self.params)?,
            overrides: json_object("runs", id, "overrides", &self.overrides)?,
            message: self.message,
        })
    }
}

impl Registry {
    /// Opens (creating if needed) the database at `path`, brings its schema up to date, and
    /// marks runs whose process is gone as interrupted.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        let open_error = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            // A failure here surfaces as the open error below, with the path.
            let _ = std::fs::create_dir_all(parent);
        }
        let mut connection = Connection::open(path).map_err(open_error)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        migrations::migrate(&mut connection)?;
        let mut registry = Registry { connection };
        registry.recover()?;
        Ok(registry)
    }

    /// Runs still `running` whose process has died (a crash, `kill -9`) become `interrupted`.
    fn recover(&mut self) -> Result<(), Error> {
        let mut statement = self
            .connection
            .prepare("SELECT id, pid FROM runs WHERE status = 'running'")?;
        let running: Vec<(RunId, i64)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(statement);
        for (id, _) in running.into_iter().filter(|(_, pid)| !process_alive(*pid)) {
            self.connection.execute(
                "UPDATE runs SET status = ?2, message = 'the kiln process stopped before the run finished' WHERE id = ?1",
                params![id, name_of(&Status::Interrupted)],
            )?;
        }
        Ok(())
    }

    pub fn start_run(&mut self, run: &NewRun) -> Result<RunId, Error> {
        self.connection.execute(
            "INSERT INTO runs (model, status, dirty, started_at_ms, params, overrides, pid)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
            params![
                run.model,
                name_of(&Status::Running),
                now_ms(),
                run.params.to_string(),
                run.overrides.to_string(),
                std::process::id()
            ],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Records everything a run produced and its final status, in one transaction.
    pub fn finish_run(&mut self, id: RunId, outcome: &RunOutcome<'_>) -> Result<(), Error> {
        let RunOutcome {
            status,
            failure,
            git,
            message,
            stages,
            metrics,
            checks,
            gates,
            servable,
        } = *outcome;
        // Immediate: the transaction reads before it writes, and a deferred one would fail at
        // once (not wait) if another process wrote in between, e.g. registering a version.
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let started: i64 = transaction
            .query_row(
                "SELECT started_at_ms FROM runs WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?
            .ok_or(Error::NoSuchRun(id))?;
        for (position, stage) in stages.iter().enumerate() {
            transaction.execute(
                "INSERT OR REPLACE INTO stage_results (run_id, position, stage, outcome, duration_ms, exit_code, log_path, cache_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    position as i64,
                    stage.stage,
                    name_of(&stage.outcome),
                    stage.duration_ms,
                    stage.exit_code,
                    stage.log_path,
                    stage.cache_key,
                ],
            )?;
            for (position, out) in stage.outs.iter().enumerate() {
                transaction.execute(
                    "INSERT OR REPLACE INTO stage_outs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        id,
                        stage.stage,
                        position as i64,
                        out.path,
                        name_of(&out.kind),
                        out.digest,
                        out.executable
                    ],
                )?;
            }
        }
        for (key, value) in metrics {
            transaction.execute(
                "INSERT OR REPLACE INTO metrics VALUES (?1, ?2, ?3)",
                params![id, key, value],
            )?;
        }
        for (position, check) in checks.iter().enumerate() {
            transaction.execute(
                "INSERT INTO check_results (run_id, position, stage, file, rule, passed, message, column_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    position as i64,
                    check.stage,
                    check.file,
                    name_of(&check.rule),
                    check.passed,
                    check.message,
                    check.column
                ],
            )?;
        }
        for (position, gate) in gates.iter().enumerate() {
            transaction.execute(
                "INSERT INTO gate_results VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    position as i64,
                    gate.expr,
                    name_of(&gate.verdict),
                    gate.detail
                ],
            )?;
        }
        if let Some(servable) = servable {
            transaction.execute(
                "INSERT OR REPLACE INTO servable_checks VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    servable.passed,
                    servable.message,
                    servable.detail,
                    servable.duration_ms
                ],
            )?;
        }
        if let Some((commit, dirty)) = git {
            transaction.execute(
                "UPDATE runs SET commit_sha = ?2, dirty = ?3 WHERE id = ?1",
                params![id, commit, dirty],
            )?;
        }
        transaction.execute(
            "UPDATE runs SET status = ?2, failure = ?3, duration_ms = ?4, message = ?5 WHERE id = ?1",
            params![
                id,
                name_of(&status),
                failure.map(|f| name_of(&f)),
                now_ms() - started,
                message
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// The newest runs first, optionally of one model.
    pub fn runs(&self, model: Option<&str>, limit: usize) -> Result<Vec<Run>, Error> {
        let sql = format!(
            "SELECT {} FROM runs WHERE (?1 IS NULL OR model = ?1) ORDER BY id DESC LIMIT ?2",
            RunRow::COLUMNS
        );
        let mut statement = self.connection.prepare(&sql)?;
        let rows: Vec<RunRow> = statement
            .query_map(params![model, limit as i64], RunRow::read)?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    pub fn run(&self, id: RunId) -> Result<RunDetail, Error> {
        let sql = format!("SELECT {} FROM runs WHERE id = ?1", RunRow::COLUMNS);
        let run = self
            .connection
            .query_row(&sql, [id], RunRow::read)
            .optional()?
            .ok_or(Error::NoSuchRun(id))?
            .into_run()?;
        Ok(RunDetail {
            run,
            stages: self.stage_results(id)?,
            metrics: self.metrics(id)?,
            checks: self.check_results(id)?,
            gates: self.gate_results(id)?,
            servable: self.servable_check(id)?,
        })
    }

    fn stage_results(&self, id: RunId) -> Result<Vec<StageResult>, Error> {
        let mut outs = self.stage_outs(id)?;
        let mut statement = self.connection.prepare(
            "SELECT rowid, stage, outcome, duration_ms, exit_code, log_path, cache_key
             FROM stage_results WHERE run_id = ?1 ORDER BY position",
        )?;
        read_rows(statement.query_map([id], |row| {
            let (rowid, outcome): (i64, String) = (row.get(0)?, row.get(2)?);
            let stage: String = row.get(1)?;
            let outs = outs.remove(&stage).unwrap_or_default();
            let result = typed("stage_results", rowid, "outcome", &outcome);
            Ok(result.and_then(|outcome| {
                Ok(StageResult {
                    stage,
                    outcome,
                    duration_ms: row.get(3)?,
                    exit_code: row.get(4)?,
                    log_path: row.get(5)?,
                    cache_key: row.get(6)?,
                    outs,
                })
            }))
        })?)
    }

    /// The outs of each stage of a run, in their order.
    fn stage_outs(&self, id: RunId) -> Result<HashMap<String, Vec<StageOut>>, Error> {
        let mut statement = self.connection.prepare(
            "SELECT rowid, stage, path, kind, digest, executable
             FROM stage_outs WHERE run_id = ?1 ORDER BY stage, position",
        )?;
        let rows = read_rows(statement.query_map([id], |row| {
            let (rowid, kind, digest): (i64, String, String) =
                (row.get(0)?, row.get(3)?, row.get(4)?);
            if !is_digest(&digest) {
                return Ok(Err(Error::Corrupt {
                    table: "stage_outs",
                    row: rowid,
                    reason: format!("`digest` holds `{digest}`, which is not a BLAKE3 digest"),
                }));
            }
            let stage: String = row.get(1)?;
            let result = typed("stage_outs", rowid, "kind", &kind);
            Ok(result.and_then(|kind| {
                let out = StageOut {
                    path: row.get(2)?,
                    kind,
                    digest,
                    executable: row.get(5)?,
                };
                Ok((stage, out))
            }))
        })?)?;
        let mut outs: HashMap<String, Vec<StageOut>> = HashMap::new();
        for (stage, out) in rows {
            outs.entry(stage).or_default().push(out);
        }
        Ok(outs)
    }

    fn check_results(&self, id: RunId) -> Result<Vec<CheckResult>, Error> {
        let mut statement = self.connection.prepare(
            "SELECT rowid, stage, file, column_name, rule, passed, message
             FROM check_results WHERE run_id = ?1 ORDER BY position",
        )?;
        read_rows(statement.query_map([id], |row| {
            let (rowid, rule): (i64, String) = (row.get(0)?, row.get(4)?);
            let result = typed("check_results", rowid, "rule", &rule);
            Ok(result.and_then(|rule| {
                Ok(CheckResult {
                    stage: row.get(1)?,
                    file: row.get(2)?,
                    column: row.get(3)?,
                    rule,
                    passed: row.get(5)?,
                    message: row.get(6)?,
                })
            }))
        })?)
    }

    fn gate_results(&self, id: RunId) -> Result<Vec<GateResult>, Error> {
        let mut statement = self.connection.prepare(
            "SELECT rowid, expr, verdict, detail FROM gate_results WHERE run_id = ?1 ORDER BY position",
        )?;
        read_rows(statement.query_map([id], |row| {
            let (rowid, verdict): (i64, String) = (row.get(0)?, row.get(2)?);
            let result = typed("gate_results", rowid, "verdict", &verdict);
            Ok(result.and_then(|verdict| {
                Ok(GateResult {
                    expr: row.get(1)?,
                    verdict,
                    detail: row.get(3)?,
                })
            }))
        })?)
    }

    fn servable_check(&self, id: RunId) -> Result<Option<ServableResult>, Error> {
        Ok(self
            .connection
            .query_row(
                "SELECT passed, message, detail, duration_ms FROM servable_checks WHERE run_id = ?1",
                [id],
                |row| {
                    Ok(ServableResult {
                        passed: row.get(0)?,
                        message: row.get(1)?,
                        detail: row.get(2)?,
                        duration_ms: row.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn metrics(&self, id: RunId) -> Result<Vec<(String, f64)>, Error> {
        let mut statement = self
            .connection
            .prepare("SELECT key, value FROM metrics WHERE run_id = ?1 ORDER BY key")?;
        let metrics = statement
            .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(metrics)
    }

    /// The newest run of `model` before `before` (any run when `None`) that recorded metrics;
    /// with `succeeded_only`, the newest green one (what `previous.NAME` in a gate compares
    /// against: a failed run must not lower the bar for the next).
    pub fn previous_run_with_metrics(
        &self,
        model: &str,
        before: Option<RunId>,
        succeeded_only: bool,
    ) -> Result<Option<RunId>, Error> {
        Ok(self
            .connection
            .query_row(
                "SELECT id FROM runs WHERE model = ?1 AND id < ?2 AND (?3 = 0 OR status = ?4)
                 AND EXISTS (SELECT 1 FROM metrics WHERE run_id = runs.id)
                 ORDER BY id DESC LIMIT 1",
                params![
                    model,
                    before.unwrap_or(i64::MAX),
                    succeeded_only,
                    name_of(&Status::Succeeded)
                ],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Remembers the inputs a stage last ran (or was restored) with.
    pub fn set_stage_state(
        &self,
        stage: &str,
        cache_key: &str,
        inputs: &serde_json::Value,
    ) -> Result<(), Error> {
        self.connection.execute(
            "INSERT OR REPLACE INTO stage_state VALUES (?1, ?2, ?3)",
            params![stage, cache_key, inputs.to_string()],
        )?;
        Ok(())
    }

    /// The cache key and inputs a stage last ran with.
    pub fn stage_state(&self, stage: &str) -> Result<Option<(String, serde_json::Value)>, Error> {
        let row: Option<(i64, String, String)> = self
            .connection
            .query_row(
                "SELECT rowid, cache_key, inputs FROM stage_state WHERE stage = ?1",
                [stage],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        row.map(|(rowid, key, inputs)| {
            Ok((key, json_object("stage_state", rowid, "inputs", &inputs)?))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_run() -> NewRun {
        NewRun {
            model: "iris".into(),
            params: json!({"train.C": 1.0}),
            overrides: json!({}),
        }
    }

    fn stage() -> StageResult {
        StageResult {
            stage: "train".into(),
            outcome: StageOutcome::Ran,
            duration_ms: 12,
            exit_code: Some(0),
            log_path: Some("logs/1/train.log".into()),
            cache_key: Some("k".into()),
            outs: vec![
                StageOut {
                    path: "model".into(),
                    kind: OutKind::Dir,
                    digest: "0f".repeat(32),
                    executable: false,
                },
                StageOut {
                    path: "bin/predict".into(),
                    kind: OutKind::File,
                    digest: "a1".repeat(32),
                    executable: true,
                },
            ],
        }
    }

    #[test]
    fn records_a_run_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(&dir.path().join("kiln.db")).unwrap();
        let id = registry.start_run(&new_run()).unwrap();
        let stage = stage();
        let check = CheckResult {
            stage: "train".into(),
            file: "data.csv".into(),
            column: Some("sepal.length".into()),
            rule: CheckRule::Min,
            passed: true,
            message: "min 4.3".into(),
        };
        let gate = GateResult {
            expr: "accuracy >= 0.9".into(),
            verdict: GateVerdict::Pass,
            detail: "accuracy=0.95".into(),
        };
        let servable = ServableResult {
            passed: false,
            message: "`predict.py` raised `ValueError`".into(),
            detail: Some("Traceback ...".into()),
            duration_ms: 40,
        };
        registry
            .finish_run(
                id,
                &RunOutcome {
                    status: Status::Failed,
                    failure: Some(FailureKind::Unservable),
                    git: Some((Some("def"), true)),
                    message: Some("the model could not be served"),
                    stages: std::slice::from_ref(&stage),
                    metrics: &[("accuracy".into(), 0.95)],
                    checks: std::slice::from_ref(&check),
                    gates: std::slice::from_ref(&gate),
                    servable: Some(&servable),
                },
            )
            .unwrap();
        let detail = registry.run(id).unwrap();
        assert_eq!(detail.run.status, Status::Failed);
        assert_eq!(detail.run.failure, Some(FailureKind::Unservable));
        assert_eq!(
            (detail.run.commit.as_deref(), detail.run.dirty),
            (Some("def"), true)
        );
        assert_eq!(detail.stages, vec![stage]);
        assert_eq!(detail.checks, vec![check]);
        assert_eq!(detail.gates, vec![gate]);
        assert_eq!(detail.servable, Some(servable));
        assert_eq!(detail.metrics, vec![("accuracy".to_string(), 0.95)]);
        assert_eq!(
            registry
                .previous_run_with_metrics("iris", None, true)
                .unwrap(),
            None
        );
        assert_eq!(
            registry
                .previous_run_with_metrics("iris", None, false)
                .unwrap(),
            Some(id)
        );
        assert!(matches!(registry.run(99), Err(Error::NoSuchRun(99))));
    }

    #[test]
    fn typed_values_serialise_as_typed_json() {
        let json = serde_json::to_value(stage()).unwrap();
        assert_eq!(json["outcome"], json!("ran"));
        let detail = RunDetail {
            run: Run {
                id: 1,
                model: "iris".into(),
                status: Status::Failed,
                failure: Some(FailureKind::Gate),
                commit: None,
                dirty: false,
                started_at_ms: 0,
                duration_ms: None,
                params: json!({"train.C": 1.0}),
                overrides: json!({}),
                message: None,
            },
            stages: vec![],
            metrics: vec![("accuracy".into(), 0.9), ("loss.test".into(), 0.2)],
            checks: vec![],
            gates: vec![],
            servable: None,
        };
        let shown = serde_json::to_value(detail).unwrap();
        assert_eq!(shown["metrics"], json!({"accuracy": 0.9, "loss.test": 0.2}));
        assert_eq!(shown["failure"], json!("gate"));
        assert_eq!(shown["params"], json!({"train.C": 1.0}));
        assert_eq!(json["outs"][1]["kind"], json!("file"));
        assert_eq!(json["outs"][1]["executable"], json!(true));
    }

    #[test]
    fn runs_of_dead_processes_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let mut registry = Registry::open(&path).unwrap();
        let id = registry.start_run(&new_run()).unwrap();
        registry
            .connection
            .execute("UPDATE runs SET pid = 0 WHERE id = ?1", [id])
            .unwrap();
        drop(registry);
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.run(id).unwrap().run.status, Status::Interrupted);
    }

    #[test]
    fn an_unreadable_row_is_an_error_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let mut registry = Registry::open(&path).unwrap();
        let id = registry.start_run(&new_run()).unwrap();
        registry
            .finish_run(
                id,
                &RunOutcome {
                    stages: std::slice::from_ref(&stage()),
                    ..RunOutcome::bare(Status::Succeeded, None, None)
                },
            )
            .unwrap();
        let corrupt = |sql: &str| {
            let registry = Registry::open(&path).unwrap();
            registry.connection.execute_batch(sql).unwrap();
            registry
        };

        let registry = corrupt("UPDATE stage_results SET outcome = 'exploded'");
        let error = registry.run(id).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { table: "stage_results", reason, .. } if reason.contains("`exploded`")),
            "{error}"
        );
        assert!(error.to_string().contains("`stage_results`"), "{error}");
        corrupt("UPDATE stage_results SET outcome = 'ran'");

        let registry = corrupt("UPDATE stage_outs SET digest = 'zz' WHERE position = 0");
        assert!(matches!(
            registry.run(id),
            Err(Error::Corrupt {
                table: "stage_outs",
                ..
            })
        ));
        corrupt(&format!(
            "UPDATE stage_outs SET digest = '{}'",
            "0f".repeat(32)
        ));

        let registry = corrupt("UPDATE runs SET status = 'green'");
        assert!(matches!(
            registry.runs(None, 10),
            Err(Error::Corrupt { table: "runs", .. })
        ));
        let registry = corrupt("UPDATE runs SET status = 'succeeded', params = '[1]'");
        assert!(matches!(
            registry.runs(None, 10),
            Err(Error::Corrupt { table: "runs", .. })
        ));
    }
}

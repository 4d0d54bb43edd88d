//! The run history of a project: runs, stage results, metrics, data-check results, gate
//! verdicts, and the inputs each stage last ran with (for `kiln status`).
//!
//! Only this crate speaks SQL. The database is SQLite in WAL mode under `.kiln/`; every write
//! is a transaction, so a crash leaves the history as it was before or after a step, never
//! between. Runs left `running` by a process that died are marked `interrupted` on open.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

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
}

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

    fn parse(text: &str) -> Status {
        match text {
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => Status::Interrupted,
        }
    }
}

/// A run as it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub model: String,
    /// Param values the run used, as a JSON object of dotted keys.
    pub params: serde_json::Value,
    /// `--set` overrides, as a JSON object.
    pub overrides: serde_json::Value,
}

/// A run as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: RunId,
    pub model: String,
    pub status: Status,
    pub commit: Option<String>,
    pub dirty: bool,
    /// Unix time in milliseconds.
    pub started_at_ms: i64,
    pub duration_ms: Option<i64>,
    pub params: serde_json::Value,
    pub overrides: serde_json::Value,
    pub message: Option<String>,
}

/// One stage's result within a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageResult {
    pub stage: String,
    /// `ran`, `cached`, `restored`, `failed`, `cancelled` or `not run`.
    pub outcome: String,
    pub duration_ms: i64,
    pub exit_code: Option<i32>,
    pub log_path: Option<String>,
    pub cache_key: Option<String>,
    /// What the stage's outs held after it (JSON, as the pipeline writes it), so that an
    /// artifact is found as this run made it even if the stage cache changes later.
    pub outs: Option<String>,
}

/// One data-check rule's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub stage: String,
    pub file: String,
    pub rule: String,
    pub passed: bool,
    pub message: String,
}

/// One gate's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    pub expr: String,
    /// `pass`, `fail`, `skipped` or `error`.
    pub verdict: String,
    /// The values the gate read, e.g. `accuracy=0.95`, or why it was skipped.
    pub detail: String,
}

/// What a run produced, recorded when it ends.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome<'a> {
    pub status: Status,
    /// The git state, when it was found out after the start: the commit checked out, and
    /// whether tracked files had uncommitted changes.
    pub git: Option<(Option<&'a str>, bool)>,
    /// Why it failed, in one line.
    pub message: Option<&'a str>,
    pub stages: &'a [StageResult],
    pub metrics: &'a [(String, f64)],
    pub checks: &'a [CheckResult],
    pub gates: &'a [GateResult],
}

impl RunOutcome<'_> {
    /// A run that ended before any stage: only a status and a message.
    pub fn bare(status: Status, message: Option<&str>) -> RunOutcome<'_> {
        RunOutcome {
            status,
            git: None,
            message,
            stages: &[],
            metrics: &[],
            checks: &[],
            gates: &[],
        }
    }
}

/// Everything recorded about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub stages: Vec<StageResult>,
    pub metrics: Vec<(String, f64)>,
    pub checks: Vec<CheckResult>,
    pub gates: Vec<GateResult>,
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    commit_sha TEXT,
    dirty INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER,
    params TEXT NOT NULL,
    overrides TEXT NOT NULL,
    message TEXT,
    pid INTEGER NOT NULL
);
CREATE INDEX runs_by_model ON runs (model, id);
CREATE TABLE stage_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    stage TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    exit_code INTEGER,
    log_path TEXT,
    cache_key TEXT,
    outs TEXT,
    PRIMARY KEY (run_id, stage)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE check_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    stage TEXT NOT NULL,
    file TEXT NOT NULL,
    rule TEXT NOT NULL,
    passed INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE gate_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    expr TEXT NOT NULL,
    verdict TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE stage_state (
    stage TEXT PRIMARY KEY,
    cache_key TEXT NOT NULL,
    inputs TEXT NOT NULL
);
";

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

impl Registry {
    /// Opens (creating if needed) the database at `path`, and marks runs whose process is gone
    /// as interrupted.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        let open_error = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        let mut registry = Registry { connection };
        registry.migrate()?;
        registry.recover()?;
        Ok(registry)
    }

    fn migrate(&mut self) -> Result<(), Error> {
        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            let transaction = self.connection.transaction()?;
            transaction.execute_batch(SCHEMA)?;
            transaction.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            transaction.commit()?;
        }
        Ok(())
    }

    /// Runs still `running` whose process has died (a crash, `kill -9`) become `interrupted`.
    fn recover(&mut self) -> Result<(), Error> {
        let mut statement = self
            .connection
            .prepare("SELECT id, pid FROM runs WHERE status = 'running'")?;
        let orphans: Vec<RunId> = statement
            .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))?
            .filter_map(Result::ok)
            .filter(|(_, pid)| !process_alive(*pid))
            .map(|(id, _)| id)
            .collect();
        drop(statement);
        for id in orphans {
            self.connection.execute(
                "UPDATE runs SET status = 'interrupted', message = 'the kiln process stopped before the run finished' WHERE id = ?1",
                [id],
            )?;
        }
        Ok(())
    }

    pub fn start_run(&mut self, run: &NewRun) -> Result<RunId, Error> {
        self.connection.execute(
            "INSERT INTO runs (model, status, dirty, started_at_ms, params, overrides, pid)
             VALUES (?1, 'running', 0, ?2, ?3, ?4, ?5)",
            params![
                run.model,
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
            git,
            message,
            stages,
            metrics,
            checks,
            gates,
        } = *outcome;
        let transaction = self.connection.transaction()?;
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
                "INSERT OR REPLACE INTO stage_results VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    position as i64,
                    stage.stage,
                    stage.outcome,
                    stage.duration_ms,
                    stage.exit_code,
                    stage.log_path,
                    stage.cache_key,
                    stage.outs
                ],
            )?;
        }
        for (key, value) in metrics {
            transaction.execute(
                "INSERT OR REPLACE INTO metrics VALUES (?1, ?2, ?3)",
                params![id, key, value],
            )?;
        }
        for (position, check) in checks.iter().enumerate() {
            transaction.execute(
                "INSERT INTO check_results VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    position as i64,
                    check.stage,
                    check.file,
                    check.rule,
                    check.passed,
                    check.message
                ],
            )?;
        }
        for (position, gate) in gates.iter().enumerate() {
            transaction.execute(
                "INSERT INTO gate_results VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, position as i64, gate.expr, gate.verdict, gate.detail],
            )?;
        }
        if let Some((commit, dirty)) = git {
            transaction.execute(
                "UPDATE runs SET commit_sha = ?2, dirty = ?3 WHERE id = ?1",
                params![id, commit, dirty],
            )?;
        }
        transaction.execute(
            "UPDATE runs SET status = ?2, duration_ms = ?3, message = ?4 WHERE id = ?1",
            params![id, status.as_str(), now_ms() - started, message],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
        let json = |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(Run {
            id: row.get(0)?,
            model: row.get(1)?,
            status: Status::parse(&row.get::<_, String>(2)?),
            commit: row.get(3)?,
            dirty: row.get(4)?,
            started_at_ms: row.get(5)?,
            duration_ms: row.get(6)?,
            params: json(row.get(7)?),
            overrides: json(row.get(8)?),
            message: row.get(9)?,
        })
    }

    const RUN_COLUMNS: &str = "id, model, status, commit_sha, dirty, started_at_ms, duration_ms, params, overrides, message";

    /// The newest runs first, optionally of one model.
    pub fn runs(&self, model: Option<&str>, limit: usize) -> Result<Vec<Run>, Error> {
        let sql = format!(
            "SELECT {} FROM runs WHERE (?1 IS NULL OR model = ?1) ORDER BY id DESC LIMIT ?2",
            Self::RUN_COLUMNS
        );
        let mut statement = self.connection.prepare(&sql)?;
        let runs = statement
            .query_map(params![model, limit as i64], Self::run_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(runs)
    }

    pub fn run(&self, id: RunId) -> Result<RunDetail, Error> {
        let sql = format!("SELECT {} FROM runs WHERE id = ?1", Self::RUN_COLUMNS);
        let run = self
            .connection
            .query_row(&sql, [id], Self::run_from_row)
            .optional()?
            .ok_or(Error::NoSuchRun(id))?;
        let mut statement = self.connection.prepare(
            "SELECT stage, outcome, duration_ms, exit_code, log_path, cache_key, outs FROM stage_results WHERE run_id = ?1 ORDER BY position",
        )?;
        let stages = statement
            .query_map([id], |row| {
                Ok(StageResult {
                    stage: row.get(0)?,
                    outcome: row.get(1)?,
                    duration_ms: row.get(2)?,
                    exit_code: row.get(3)?,
                    log_path: row.get(4)?,
                    cache_key: row.get(5)?,
                    outs: row.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let metrics = self.metrics(id)?;
        let mut statement = self
            .connection
            .prepare("SELECT stage, file, rule, passed, message FROM check_results WHERE run_id = ?1 ORDER BY position")?;
        let checks = statement
            .query_map([id], |row| {
                Ok(CheckResult {
                    stage: row.get(0)?,
                    file: row.get(1)?,
                    rule: row.get(2)?,
                    passed: row.get(3)?,
                    message: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut statement = self.connection.prepare(
            "SELECT expr, verdict, detail FROM gate_results WHERE run_id = ?1 ORDER BY position",
        )?;
        let gates = statement
            .query_map([id], |row| {
                Ok(GateResult {
                    expr: row.get(0)?,
                    verdict: row.get(1)?,
                    detail: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(RunDetail {
            run,
            stages,
            metrics,
            checks,
            gates,
        })
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
                "SELECT id FROM runs WHERE model = ?1 AND id < ?2 AND (?3 = 0 OR status = 'succeeded')
                 AND EXISTS (SELECT 1 FROM metrics WHERE run_id = runs.id)
                 ORDER BY id DESC LIMIT 1",
                params![model, before.unwrap_or(i64::MAX), succeeded_only],
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
        Ok(self
            .connection
            .query_row(
                "SELECT cache_key, inputs FROM stage_state WHERE stage = ?1",
                [stage],
                |row| {
                    let inputs: String = row.get(1)?;
                    Ok((
                        row.get(0)?,
                        serde_json::from_str(&inputs).unwrap_or(serde_json::Value::Null),
                    ))
                },
            )
            .optional()?)
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

    #[test]
    fn records_a_run_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(&dir.path().join("kiln.db")).unwrap();
        let id = registry.start_run(&new_run()).unwrap();
        let stage = StageResult {
            stage: "train".into(),
            outcome: "ran".into(),
            duration_ms: 12,
            exit_code: Some(0),
            log_path: Some("logs/1/train.log".into()),
            cache_key: Some("k".into()),
            outs: Some("[]".into()),
        };
        let gate = GateResult {
            expr: "accuracy >= 0.9".into(),
            verdict: "pass".into(),
            detail: "accuracy=0.95".into(),
        };
        registry
            .finish_run(
                id,
                &RunOutcome {
                    status: Status::Succeeded,
                    git: Some((Some("def"), true)),
                    message: None,
                    stages: std::slice::from_ref(&stage),
                    metrics: &[("accuracy".into(), 0.95)],
                    checks: &[],
                    gates: std::slice::from_ref(&gate),
                },
            )
            .unwrap();
        let detail = registry.run(id).unwrap();
        assert_eq!(detail.run.status, Status::Succeeded);
        assert_eq!(
            (detail.run.commit.as_deref(), detail.run.dirty),
            (Some("def"), true)
        );
        assert_eq!(detail.stages, vec![stage]);
        assert_eq!(detail.gates, vec![gate]);
        assert_eq!(detail.metrics, vec![("accuracy".to_string(), 0.95)]);
        assert_eq!(
            registry
                .previous_run_with_metrics("iris", None, true)
                .unwrap(),
            Some(id)
        );
        assert_eq!(
            registry
                .previous_run_with_metrics("iris", Some(id), false)
                .unwrap(),
            None
        );
        assert!(matches!(registry.run(99), Err(Error::NoSuchRun(99))));
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
}

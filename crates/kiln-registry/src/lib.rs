//! The run history of a project: runs, stage results and their outs, metrics, data-check
//! results, gate verdicts, servable checks, and the inputs each stage last ran with (for
//! `kiln status`).
//!
//! Only this crate speaks SQL. The database is SQLite in WAL mode under `.kiln/` (the default)
//! or PostgreSQL (`KILN_DATABASE_URL`), both behind the layer of `db.rs`: each query is written
//! once. Every write is a transaction, so a crash leaves the history as it was before or after
//! a step, never between. Runs left `running` by a process that died are marked `interrupted`
//! on open.
//! Values are written and read through the types of `types.rs`: a row that does not read as
//! its type is an [`Error::Corrupt`], never skipped.

mod db;
mod images;
mod location;
mod migrations;
mod models;
mod types;

#[cfg(test)]
#[path = "../tests/backends/mod.rs"]
mod backends;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use db::DatabaseError;
use db::{Database, Row, args};
pub use images::VersionImage;
pub use location::{DATABASE_URL_ENV, Location};
pub use migrations::SCHEMA_VERSION;
pub use models::{
    AliasCommand, AliasMove, LATEST, Lineage, ModelRef, ModelSummary, ModelVersion, MoveBy, Origin,
    Registered, Selector, ServableSummary, Version, VersionSummary, lineage_key, validate_alias,
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
        source: DatabaseError,
    },
    /// The PostgreSQL server could not be reached, or refused the connection. `server` names
    /// the host, port, database and user, never the password.
    #[error("cannot connect to the PostgreSQL database {server}")]
    Connect {
        server: String,
        #[source]
        source: DatabaseError,
    },
    /// `KILN_DATABASE_URL` (or another location given) is not a PostgreSQL URL.
    #[error("the database URL is not a PostgreSQL URL: {reason}")]
    BadDatabaseUrl { reason: String },
    #[error("run database query failed")]
    Query(#[from] DatabaseError),
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
        source: DatabaseError,
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
                "the run history was changed outside Kiln; restore the database from a backup, \
                 or (SQLite) move `.kiln/kiln.db` away to start a new history"
                    .to_string(),
            ),
            Error::Connect { .. } => Some(format!(
                "check that the server is running and reachable from this machine, and that \
                 `{DATABASE_URL_ENV}` names its host, port, database, user and password; unset \
                 it to keep the registry in `.kiln/kiln.db`"
            )),
            Error::BadDatabaseUrl { .. } => Some(format!(
                "set `{DATABASE_URL_ENV}` to `postgres://USER:PASSWORD@HOST:PORT/DATABASE`"
            )),
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
    db: Database,
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

fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `runs` row as the database holds it, before it is read through types.
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

    fn read(row: &Row) -> Result<RunRow, DatabaseError> {
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

/// Opens the database at `location`, as it is.
fn open_database(location: &Location) -> Result<Database, Error> {
    match location {
        Location::Sqlite(path) => {
            if let Some(parent) = path.parent() {
                // A failure here surfaces as the open error below, with the path.
                let _ = std::fs::create_dir_all(parent);
            }
            Database::open_sqlite(path).map_err(|source| Error::Open {
                path: path.clone(),
                source: source.into(),
            })
        }
        Location::Postgres(_) => {
            let config = location.postgres_config()?;
            let server = location::describe(&config);
            Database::connect_postgres(config).map_err(|source| Error::Connect {
                server,
                source: source.into(),
            })
        }
    }
}

impl Registry {
    /// Opens (creating if needed) the SQLite database at `path`, brings its schema up to
    /// date, and marks runs whose process is gone as interrupted.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        Registry::connect(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens the database at `location` (a SQLite file, created if needed, or a PostgreSQL
    /// database, which must exist), brings its schema up to date, and marks runs whose
    /// process is gone as interrupted.
    pub fn connect(location: &Location) -> Result<Registry, Error> {
        let db = open_database(location)?;
        migrations::migrate(&db)?;
        let mut registry = Registry { db };
        registry.recover()?;
        Ok(registry)
    }

    /// Runs still `running` whose process has died (a crash, `kill -9`) become `interrupted`.
    fn recover(&mut self) -> Result<(), Error> {
        let running = self
            .db
            .query("SELECT id, pid FROM runs WHERE status = 'running'", &[])?;
        for row in running {
            let (id, pid): (RunId, i64) = (row.get(0)?, row.get(1)?);
            // On PostgreSQL the run's process may be on another machine: it holds a lock on
            // the run for as long as it lives. On SQLite it is on this one.
            let alive = match self.db.run_is_held(id)? {
                Some(held) => held,
                None => process_alive(pid),
            };
            if alive {
                continue;
            }
            self.db.execute(
                "UPDATE runs SET status = ?2, message = 'the kiln process stopped before the run finished' WHERE id = ?1",
                args![id, name_of(&Status::Interrupted)],
            )?;
        }
        Ok(())
    }

    /// Records a run as `running`; it stays so until [`Registry::finish_run`], or until its
    /// process is found gone when a registry opens.
    pub fn start_run(&mut self, run: &NewRun) -> Result<RunId, Error> {
        // The run is held before any other process can see it.
        self.db.transaction(|tx| {
            let id: RunId = tx
                .query_one(
                    "INSERT INTO runs (model, status, dirty, started_at_ms, params, overrides, pid)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                    args![
                        run.model,
                        name_of(&Status::Running),
                        false,
                        now_ms(),
                        run.params.to_string(),
                        run.overrides.to_string(),
                        std::process::id()
                    ],
                )?
                .get(0)?;
            tx.hold_run(id)?;
            Ok(id)
        })
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
        self.db.transaction(|tx| {
            let started: i64 = tx
                .query_opt("SELECT started_at_ms FROM runs WHERE id = ?1", args![id])?
                .ok_or(Error::NoSuchRun(id))?
                .get(0)?;
            for (position, stage) in stages.iter().enumerate() {
                tx.execute(
                    "INSERT INTO stage_results (run_id, position, stage, outcome, duration_ms,
                         exit_code, log_path, cache_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (run_id, stage) DO UPDATE SET position = excluded.position,
                         outcome = excluded.outcome, duration_ms = excluded.duration_ms,
                         exit_code = excluded.exit_code, log_path = excluded.log_path,
                         cache_key = excluded.cache_key",
                    args![
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
                    tx.execute(
                        "INSERT INTO stage_outs (run_id, stage, position, path, kind, digest,
                             executable)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (run_id, stage, position) DO UPDATE SET
                             path = excluded.path, kind = excluded.kind,
                             digest = excluded.digest, executable = excluded.executable",
                        args![
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
                tx.execute(
                    "INSERT INTO metrics (run_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                    args![id, key, value],
                )?;
            }
            for (position, check) in checks.iter().enumerate() {
                tx.execute(
                    "INSERT INTO check_results (run_id, position, stage, file, rule, passed,
                         message, column_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    args![
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
                tx.execute(
                    "INSERT INTO gate_results (run_id, position, expr, verdict, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![
                        id,
                        position as i64,
                        gate.expr,
                        name_of(&gate.verdict),
                        gate.detail
                    ],
                )?;
            }
            if let Some(servable) = servable {
                tx.execute(
                    "INSERT INTO servable_checks (run_id, passed, message, detail, duration_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (run_id) DO UPDATE SET passed = excluded.passed,
                         message = excluded.message, detail = excluded.detail,
                         duration_ms = excluded.duration_ms",
                    args![
                        id,
                        servable.passed,
                        servable.message,
                        servable.detail,
                        servable.duration_ms
                    ],
                )?;
            }
            if let Some((commit, dirty)) = git {
                tx.execute(
                    "UPDATE runs SET commit_sha = ?2, dirty = ?3 WHERE id = ?1",
                    args![id, commit, dirty],
                )?;
            }
            tx.execute(
                "UPDATE runs SET status = ?2, failure = ?3, duration_ms = ?4, message = ?5
                 WHERE id = ?1",
                args![
                    id,
                    name_of(&status),
                    failure.map(|f| name_of(&f)),
                    now_ms() - started,
                    message
                ],
            )?;
            Ok(())
        })?;
        self.db.release_run(id)?;
        Ok(())
    }

    /// The newest runs first, optionally of one model.
    pub fn runs(&self, model: Option<&str>, limit: usize) -> Result<Vec<Run>, Error> {
        let sql = format!(
            "SELECT {} FROM runs WHERE (CAST(?1 AS TEXT) IS NULL OR model = ?1) ORDER BY id DESC LIMIT ?2",
            RunRow::COLUMNS
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .query(&sql, args![model, limit])?
            .iter()
            .map(|row| RunRow::read(row)?.into_run())
            .collect()
    }

    pub fn run(&self, id: RunId) -> Result<RunDetail, Error> {
        let sql = format!("SELECT {} FROM runs WHERE id = ?1", RunRow::COLUMNS);
        let row = self.db.query_opt(&sql, args![id])?;
        let run = RunRow::read(&row.ok_or(Error::NoSuchRun(id))?)?.into_run()?;
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
        let rows = self.db.query(
            "SELECT rowid, stage, outcome, duration_ms, exit_code, log_path, cache_key
             FROM stage_results WHERE run_id = ?1 ORDER BY position",
            args![id],
        )?;
        rows.iter()
            .map(|row| {
                let (rowid, stage, outcome): (i64, String, String) =
                    (row.get(0)?, row.get(1)?, row.get(2)?);
                Ok(StageResult {
                    outcome: typed("stage_results", rowid, "outcome", &outcome)?,
                    outs: outs.remove(&stage).unwrap_or_default(),
                    stage,
                    duration_ms: row.get(3)?,
                    exit_code: row.get(4)?,
                    log_path: row.get(5)?,
                    cache_key: row.get(6)?,
                })
            })
            .collect()
    }

    /// The outs of each stage of a run, in their order.
    fn stage_outs(&self, id: RunId) -> Result<HashMap<String, Vec<StageOut>>, Error> {
        let rows = self.db.query(
            "SELECT rowid, stage, path, kind, digest, executable
             FROM stage_outs WHERE run_id = ?1 ORDER BY stage, position",
            args![id],
        )?;
        let mut outs: HashMap<String, Vec<StageOut>> = HashMap::new();
        for row in rows {
            let (rowid, kind, digest): (i64, String, String) =
                (row.get(0)?, row.get(3)?, row.get(4)?);
            if !is_digest(&digest) {
                return Err(Error::Corrupt {
                    table: "stage_outs",
                    row: rowid,
                    reason: format!("`digest` holds `{digest}`, which is not a BLAKE3 digest"),
                });
            }
            let out = StageOut {
                path: row.get(2)?,
                kind: typed("stage_outs", rowid, "kind", &kind)?,
                digest,
                executable: row.get(5)?,
            };
            outs.entry(row.get(1)?).or_default().push(out);
        }
        Ok(outs)
    }

    fn check_results(&self, id: RunId) -> Result<Vec<CheckResult>, Error> {
        let rows = self.db.query(
            "SELECT rowid, stage, file, column_name, rule, passed, message
             FROM check_results WHERE run_id = ?1 ORDER BY position",
            args![id],
        )?;
        rows.iter()
            .map(|row| {
                let (rowid, rule): (i64, String) = (row.get(0)?, row.get(4)?);
                Ok(CheckResult {
                    stage: row.get(1)?,
                    file: row.get(2)?,
                    column: row.get(3)?,
                    rule: typed("check_results", rowid, "rule", &rule)?,
                    passed: row.get(5)?,
                    message: row.get(6)?,
                })
            })
            .collect()
    }

    fn gate_results(&self, id: RunId) -> Result<Vec<GateResult>, Error> {
        let rows = self.db.query(
            "SELECT rowid, expr, verdict, detail FROM gate_results WHERE run_id = ?1
             ORDER BY position",
            args![id],
        )?;
        rows.iter()
            .map(|row| {
                let (rowid, verdict): (i64, String) = (row.get(0)?, row.get(2)?);
                Ok(GateResult {
                    expr: row.get(1)?,
                    verdict: typed("gate_results", rowid, "verdict", &verdict)?,
                    detail: row.get(3)?,
                })
            })
            .collect()
    }

    fn servable_check(&self, id: RunId) -> Result<Option<ServableResult>, Error> {
        let row = self.db.query_opt(
            "SELECT passed, message, detail, duration_ms FROM servable_checks WHERE run_id = ?1",
            args![id],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ServableResult {
            passed: row.get(0)?,
            message: row.get(1)?,
            detail: row.get(2)?,
            duration_ms: row.get(3)?,
        }))
    }

    /// A run's metrics, by key (in byte order, whatever the database's collation).
    pub fn metrics(&self, id: RunId) -> Result<Vec<(String, f64)>, Error> {
        let rows = self.db.query(
            "SELECT key, value FROM metrics WHERE run_id = ?1",
            args![id],
        )?;
        let mut metrics = rows
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<Result<Vec<(String, f64)>, DatabaseError>>()?;
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
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
        let row = self.db.query_opt(
            "SELECT id FROM runs WHERE model = ?1 AND id < ?2 AND (NOT ?3 OR status = ?4)
             AND EXISTS (SELECT 1 FROM metrics WHERE run_id = runs.id)
             ORDER BY id DESC LIMIT 1",
            args![
                model,
                before.unwrap_or(i64::MAX),
                succeeded_only,
                name_of(&Status::Succeeded)
            ],
        )?;
        Ok(row.map(|row| row.get(0)).transpose()?)
    }

    /// Remembers the inputs a stage last ran (or was restored) with.
    pub fn set_stage_state(
        &self,
        stage: &str,
        cache_key: &str,
        inputs: &serde_json::Value,
    ) -> Result<(), Error> {
        self.db.execute(
            "INSERT INTO stage_state (stage, cache_key, inputs) VALUES (?1, ?2, ?3)
             ON CONFLICT (stage) DO UPDATE SET cache_key = excluded.cache_key,
                 inputs = excluded.inputs",
            args![stage, cache_key, inputs.to_string()],
        )?;
        Ok(())
    }

    /// The cache key and inputs a stage last ran with.
    pub fn stage_state(&self, stage: &str) -> Result<Option<(String, serde_json::Value)>, Error> {
        let row = self.db.query_opt(
            "SELECT rowid, cache_key, inputs FROM stage_state WHERE stage = ?1",
            args![stage],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (rowid, key, inputs): (i64, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok(Some((
            key,
            json_object("stage_state", rowid, "inputs", &inputs)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}

//! The model registry: each green run's artifact registered as version N of its model, with
//! its lineage; aliases (`latest`, `production`, any valid name) naming a version; and an audit
//! trail of every alias move.
//!
//! The whole API is these methods of [`Registry`] and the plain types below, so that another
//! backend (PostgreSQL) can implement the same calls. Version numbers are taken inside an
//! immediate (write-locking) transaction: two processes registering at once get distinct,
//! gap-free numbers, and a registration is all there or not at all.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::types::name_of;
use crate::{Error, Registry, RunId, json_object, now_ms, typed};

/// A version number of a model, from 1.
pub type Version = i64;

/// The alias every registration moves.
pub const LATEST: &str = "latest";

/// Version tag of [`lineage_key`]'s encoding: a change to it must bump this, or versions
/// registered before would no longer be recognised as the same.
const LINEAGE_ENCODING: &[u8] = b"kiln-lineage-v1\0";

/// What a model version was made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lineage {
    pub run_id: RunId,
    pub commit: Option<String>,
    pub dirty: bool,
    /// The params the stages saw, as a JSON object of dotted keys.
    pub params: serde_json::Value,
    /// By key; in JSON, an object.
    #[serde(serialize_with = "crate::metrics_object")]
    pub metrics: Vec<(String, f64)>,
    /// Every dep of the model's stages with its digest (`None`: it did not exist).
    pub deps: BTreeMap<String, Option<String>>,
    /// The exact packages of the model's Python environment (`name==version`), when it has one.
    pub environment: Option<Vec<String>>,
    /// The servable check the version passed, when one ran.
    pub servable: Option<ServableSummary>,
    /// The model's inputs and outputs (names, datatypes, shapes), as the serving engine reads
    /// them from the artifact.
    pub signature: Option<serde_json::Value>,
    /// An input the version answered at registration (a request body).
    pub example: Option<serde_json::Value>,
    /// A profile of the training data, per column, for drift detection.
    pub profile: Option<serde_json::Value>,
}

/// Where an imported version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The model and version it was in the registry it was exported from.
    pub model: String,
    pub version: Version,
    /// When it was registered there (Unix time in milliseconds).
    pub registered_at_ms: i64,
    /// What it was read from (the export file's name).
    pub source: String,
}

/// The servable check as a version keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServableSummary {
    pub passed: bool,
    pub message: String,
}

/// A registered version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: Version,
    pub artifact_digest: String,
    /// Unix time in milliseconds.
    pub registered_at_ms: i64,
    pub lineage: Lineage,
    /// Set when the version was imported from another registry; `lineage.run_id` is then the
    /// run in that registry.
    pub origin: Option<Origin>,
    /// The aliases naming this version now, sorted.
    pub aliases: Vec<String>,
}

/// A model in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub versions: i64,
    pub latest_version: Version,
    /// Each alias with the version it names.
    pub aliases: BTreeMap<String, Version>,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new version, with this number.
    New(Version),
    /// The same artifact with the same lineage was already this version.
    Existing(Version),
}

impl Registered {
    pub fn version(self) -> Version {
        match self {
            Registered::New(version) | Registered::Existing(version) => version,
        }
    }
}

/// What moved an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AliasCommand {
    /// A green run (`latest`).
    Run,
    Alias,
    Promote,
    Rollback,
    /// A version imported from another registry (`latest`).
    Import,
}

/// One alias move of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AliasMove {
    pub id: i64,
    pub model: String,
    pub alias: String,
    /// `None` when the alias was new.
    pub from_version: Option<Version>,
    pub to_version: Version,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub command: AliasCommand,
    pub run_id: Option<RunId>,
    pub reason: Option<String>,
}

/// What a model reference (`iris`, `iris@v3`, `iris@production`) points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(Version),
    Alias(String),
}

/// A model with the version or alias of it meant: `iris@v3`, `iris@production`, or `iris`
/// (`iris@latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub model: String,
    pub selector: Selector,
}

impl ModelRef {
    pub fn parse(text: &str) -> Result<ModelRef, Error> {
        let bad = |reason: &str| Error::BadModelRef {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let (model, selector) = match text.split_once('@') {
            None => (text, Selector::Alias(LATEST.to_string())),
            Some((model, after)) => {
                let selector = match version_number(after) {
                    Some(0) => return Err(bad("versions are numbered from 1")),
                    Some(version) => Selector::Version(version),
                    None => {
                        check_alias_name(after).map_err(|reason| bad(&reason))?;
                        Selector::Alias(after.to_string())
                    }
                };
                (model, selector)
            }
        };
        if model.is_empty() {
            return Err(bad("it names no model"));
        }
        Ok(ModelRef {
            model: model.to_string(),
            selector,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Version(version) => write!(f, "{}@v{version}", self.model),
            Selector::Alias(alias) => write!(f, "{}@{alias}", self.model),
        }
    }
}

/// `v12` -> 12; anything else is no version number.
fn version_number(text: &str) -> Option<Version> {
    let digits = text.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why `name` cannot be an alias, if it cannot: lowercase letters, digits, `-` and `_`,
/// starting with a letter, at most 64 characters, and not a version (`v3`).
fn check_alias_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("an alias has 1 to 64 characters".to_string());
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("an alias starts with a lowercase letter".to_string());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("an alias has only lowercase letters, digits, `-` and `_`".to_string());
    }
    if version_number(name).is_some() {
        return Err("`vN` names version N, not an alias".to_string());
    }
    Ok(())
}

/// Checks an alias a user moves: a valid name, and not `latest`, which only registrations move.
pub fn validate_alias(name: &str) -> Result<(), Error> {
    check_alias_name(name).map_err(|reason| Error::BadAlias {
        alias: name.to_string(),
        reason,
    })?;
    if name == LATEST {
        return Err(Error::BadAlias {
            alias: name.to_string(),
            reason: "`latest` moves by itself with every registered version".to_string(),
        });
    }
    Ok(())
}

/// `value` with the keys of every object sorted, so that its text does not depend on the order
/// the keys were inserted in.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

/// What makes two registrations the same version: the artifact and everything it was made
/// from. Not the run id (a cached rerun is the same model) nor the servable check's message
/// (it holds a time).
pub fn lineage_key(artifact_digest: &str, lineage: &Lineage) -> String {
    let metrics: BTreeMap<&str, f64> = lineage
        .metrics
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let identity = serde_json::json!({
        "artifact": artifact_digest,
        "commit": lineage.commit,
        "dirty": lineage.dirty,
        "params": lineage.params,
        "metrics": metrics,
        "deps": lineage.deps,
        "environment": lineage.environment,
    });
    let mut hasher = blake3::Hasher::new();
    hasher.update(LINEAGE_ENCODING);
    hasher.update(canonical(&identity).to_string().as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// A `model_versions` row as SQLite holds it.
struct VersionRow {
    rowid: i64,
    model: String,
    version: Version,
    run_id: RunId,
    artifact_digest: String,
    commit: Option<String>,
    dirty: bool,
    params: String,
    metrics: String,
    deps: String,
    environment: Option<String>,
    servable_passed: Option<bool>,
    servable_message: Option<String>,
    signature: Option<String>,
    example: Option<String>,
    profile: Option<String>,
    registered_at_ms: i64,
    origin: Option<String>,
}

impl VersionRow {
    const COLUMNS: &str = "rowid, model, version, run_id, artifact_digest, commit_sha, dirty, params, metrics, deps, environment, servable_passed, servable_message, signature, example, profile, registered_at_ms, origin";

    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
        Ok(VersionRow {
            rowid: row.get(0)?,
            model: row.get(1)?,
            version: row.get(2)?,
            run_id: row.get(3)?,
            artifact_digest: row.get(4)?,
            commit: row.get(5)?,
            dirty: row.get(6)?,
            params: row.get(7)?,
            metrics: row.get(8)?,
            deps: row.get(9)?,
            environment: row.get(10)?,
            servable_passed: row.get(11)?,
            servable_message: row.get(12)?,
            signature: row.get(13)?,
            example: row.get(14)?,
            profile: row.get(15)?,
            registered_at_ms: row.get(16)?,
            origin: row.get(17)?,
        })
    }

    fn into_version(self, aliases: Vec<String>) -> Result<ModelVersion, Error> {
        const TABLE: &str = "model_versions";
        let row = self.rowid;
        let corrupt = |column: &str| Error::Corrupt {
            table: TABLE,
            row,
            reason: format!("`{column}` does not hold what it should"),
        };
        let metrics: BTreeMap<String, f64> =
            serde_json::from_str(&self.metrics).map_err(|_| corrupt("metrics"))?;
        let deps: BTreeMap<String, Option<String>> =
            serde_json::from_str(&self.deps).map_err(|_| corrupt("deps"))?;
        let environment: Option<Vec<String>> =
            optional_json(&self.environment).map_err(|_| corrupt("environment"))?;
        let origin: Option<Origin> = optional_json(&self.origin).map_err(|_| corrupt("origin"))?;
        let servable = match (self.servable_passed, self.servable_message) {
            (Some(passed), Some(message)) => Some(ServableSummary { passed, message }),
            _ => None,
        };
        Ok(ModelVersion {
            model: self.model,
            version: self.version,
            artifact_digest: self.artifact_digest,
            registered_at_ms: self.registered_at_ms,
            lineage: Lineage {
                run_id: self.run_id,
                commit: self.commit,
                dirty: self.dirty,
                params: json_object(TABLE, row, "params", &self.params)?,
                metrics: metrics.into_iter().collect(),
                deps,
                environment,
                servable,
                signature: optional_json(&self.signature).map_err(|_| corrupt("signature"))?,
                example: optional_json(&self.example).map_err(|_| corrupt("example"))?,
                profile: optional_json(&self.profile).map_err(|_| corrupt("profile"))?,
            },
            origin,
            aliases,
        })
    }
}

/// A nullable JSON column.
fn optional_json<T: serde::de::DeserializeOwned>(
    text: &Option<String>,
) -> serde_json::Result<Option<T>> {
    text.as_deref().map(serde_json::from_str).transpose()
}

/// Reads an alias move row.
fn read_move(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AliasMove, Error>> {
    let (id, command): (i64, String) = (row.get(0)?, row.get(6)?);
    let command = typed("alias_moves", id, "command", &command);
    Ok(match command {
        Ok(command) => Ok(AliasMove {
            id,
            model: row.get(1)?,
            alias: row.get(2)?,
            from_version: row.get(3)?,
            to_version: row.get(4)?,
            at_ms: row.get(5)?,
            command,
            run_id: row.get(7)?,
            reason: row.get(8)?,
        }),
        Err(error) => Err(error),
    })
}

const MOVE_COLUMNS: &str =
    "id, model, alias, from_version, to_version, at_ms, command, run_id, reason";

/// Who moves an alias, and why.
#[derive(Debug, Clone, Copy)]
pub struct MoveBy<'a> {
    pub command: AliasCommand,
    pub run_id: Option<RunId>,
    pub reason: Option<&'a str>,
}

impl Registry {
    /// Registers `artifact_digest` (already in the store) as the next version of `model`, with
    /// its lineage, and moves `latest` to it, in one transaction. The same artifact with the
    /// same lineage is not registered twice: the existing version is returned.
    pub fn register_version(
        &mut self,
        model: &str,
        artifact_digest: &str,
        lineage: &Lineage,
    ) -> Result<Registered, Error> {
        let by = MoveBy {
            command: AliasCommand::Run,
            run_id: Some(lineage.run_id),
            reason: None,
        };
        self.insert_version(model, artifact_digest, lineage, None, by)
    }

    /// Registers a version exported from another registry (its artifact already in the store)
    /// as the next version of `model`, keeping its lineage and where it came from, and moves
    /// `latest` to it. Importing the same version twice gives the existing one.
    pub fn import_version(
        &mut self,
        model: &str,
        artifact_digest: &str,
        lineage: &Lineage,
        origin: &Origin,
    ) -> Result<Registered, Error> {
        let reason = format!(
            "imported from `{}` ({}@v{})",
            origin.source, origin.model, origin.version
        );
        let by = MoveBy {
            command: AliasCommand::Import,
            run_id: None,
            reason: Some(&reason),
        };
        self.insert_version(model, artifact_digest, lineage, Some(origin), by)
    }

    fn insert_version(
        &mut self,
        model: &str,
        artifact_digest: &str,
        lineage: &Lineage,
        origin: Option<&Origin>,
        by: MoveBy<'_>,
    ) -> Result<Registered, Error> {
        let key = lineage_key(artifact_digest, lineage);
        // Immediate: the write lock is taken before the next number is read.
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<Version> = transaction
            .query_row(
                "SELECT version FROM model_versions WHERE model = ?1 AND lineage_key = ?2",
                params![model, key],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(version) = existing {
            return Ok(Registered::Existing(version));
        }
        let version: Version = transaction.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model = ?1",
            [model],
            |row| row.get(0),
        )?;
        let metrics: BTreeMap<&str, f64> = lineage
            .metrics
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let json = |value: &serde_json::Value| value.to_string();
        transaction.execute(
            "INSERT INTO model_versions (model, version, run_id, artifact_digest, lineage_key,
                 commit_sha, dirty, params, metrics, deps, environment, servable_passed,
                 servable_message, signature, example, profile, registered_at_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18)",
            params![
                model,
                version,
                lineage.run_id,
                artifact_digest,
                key,
                lineage.commit,
                lineage.dirty,
                lineage.params.to_string(),
                serde_json::to_string(&metrics).expect("metrics serialise"),
                serde_json::to_string(&lineage.deps).expect("deps serialise"),
                lineage
                    .environment
                    .as_ref()
                    .map(|e| serde_json::to_string(e).expect("packages serialise")),
                lineage.servable.as_ref().map(|s| s.passed),
                lineage.servable.as_ref().map(|s| s.message.as_str()),
                lineage.signature.as_ref().map(json),
                lineage.example.as_ref().map(json),
                lineage.profile.as_ref().map(json),
                now_ms(),
                origin.map(|o| serde_json::to_string(o).expect("origin serialises")),
            ],
        )?;
        move_alias_in(&transaction, model, LATEST, version, by, None)?;
        transaction.commit()?;
        Ok(Registered::New(version))
    }

    /// Every model with versions, by name.
    pub fn models(&self) -> Result<Vec<ModelSummary>, Error> {
        let mut statement = self.connection.prepare(
            "SELECT model, COUNT(*), MAX(version) FROM model_versions GROUP BY model ORDER BY model",
        )?;
        let rows: Vec<(String, i64, Version)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(model, versions, latest_version)| {
                Ok(ModelSummary {
                    aliases: self.aliases(&model)?,
                    model,
                    versions,
                    latest_version,
                })
            })
            .collect()
    }

    /// Each alias of `model` with the version it names.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, Version>, Error> {
        let mut statement = self
            .connection
            .prepare("SELECT alias, version FROM model_aliases WHERE model = ?1")?;
        let aliases = statement
            .query_map([model], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(aliases)
    }

    /// The version `reference` names; an error says what is missing (the model, the version,
    /// or a version in the alias).
    pub fn resolve(&self, reference: &ModelRef) -> Result<Version, Error> {
        let model = &reference.model;
        let known: bool = self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = ?1)",
            [model],
            |row| row.get(0),
        )?;
        if !known {
            return Err(Error::NoSuchModel(model.clone()));
        }
        match &reference.selector {
            Selector::Version(version) => {
                let exists: bool = self.connection.query_row(
                    "SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = ?1 AND version = ?2)",
                    params![model, version],
                    |row| row.get(0),
                )?;
                if exists {
                    Ok(*version)
                } else {
                    Err(Error::NoSuchVersion {
                        model: model.clone(),
                        version: *version,
                    })
                }
            }
            Selector::Alias(alias) => {
                self.alias_version(model, alias)?
                    .ok_or_else(|| Error::AliasUnset {
                        model: model.clone(),
                        alias: alias.clone(),
                    })
            }
        }
    }

    /// The version `alias` of `model` names, if any.
    pub fn alias_version(&self, model: &str, alias: &str) -> Result<Option<Version>, Error> {
        Ok(self
            .connection
            .query_row(
                "SELECT version FROM model_aliases WHERE model = ?1 AND alias = ?2",
                params![model, alias],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// One version with its lineage and aliases.
    pub fn model_version(&self, model: &str, version: Version) -> Result<ModelVersion, Error> {
        let sql = format!(
            "SELECT {} FROM model_versions WHERE model = ?1 AND version = ?2",
            VersionRow::COLUMNS
        );
        let row = self
            .connection
            .query_row(&sql, params![model, version], VersionRow::read)
            .optional()?
            .ok_or_else(|| Error::NoSuchVersion {
                model: model.to_string(),
                version,
            })?;
        let aliases = self
            .aliases(model)?
            .into_iter()
            .filter(|(_, v)| *v == version)
            .map(|(alias, _)| alias)
            .collect();
        row.into_version(aliases)
    }

    /// Every version of `model`, newest first.
    pub fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>, Error> {
        let sql = format!(
            "SELECT {} FROM model_versions WHERE model = ?1 ORDER BY version DESC",
            VersionRow::COLUMNS
        );
        let mut statement = self.connection.prepare(&sql)?;
        let rows: Vec<VersionRow> = statement
            .query_map([model], VersionRow::read)?
            .collect::<Result<_, _>>()?;
        let aliases = self.aliases(model)?;
        rows.into_iter()
            .map(|row| {
                let named = aliases
                    .iter()
                    .filter(|(_, v)| **v == row.version)
                    .map(|(alias, _)| alias.clone())
                    .collect();
                row.into_version(named)
            })
            .collect()
    }

    /// Points `alias` (validated: not `latest`) of `model` at `version`, and records the move.
    /// Returns the version it named before.
    pub fn move_alias(
        &mut self,
        model: &str,
        alias: &str,
        version: Version,
        by: MoveBy<'_>,
    ) -> Result<Option<Version>, Error> {
        validate_alias(alias)?;
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = transaction.query_row(
            "SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = ?1 AND version = ?2)",
            params![model, version],
            |row| row.get(0),
        )?;
        if !exists {
            return Err(Error::NoSuchVersion {
                model: model.to_string(),
                version,
            });
        }
        let from = move_alias_in(&transaction, model, alias, version, by, None)?;
        transaction.commit()?;
        Ok(from)
    }

    /// Moves `alias` of `model` back to the version it named before its latest move that is
    /// not undone yet: rollbacks walk back through the history. Returns (from, to).
    pub fn rollback_alias(
        &mut self,
        model: &str,
        alias: &str,
        reason: Option<&str>,
    ) -> Result<(Version, Version), Error> {
        validate_alias(alias)?;
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moves: Vec<(i64, Option<Version>, Option<i64>)> = {
            let mut statement = transaction.prepare(
                "SELECT id, from_version, undoes FROM alias_moves
                 WHERE model = ?1 AND alias = ?2 ORDER BY id DESC",
            )?;
            statement
                .query_map(params![model, alias], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<Result<_, _>>()?
        };
        let current: Option<Version> = transaction
            .query_row(
                "SELECT version FROM model_aliases WHERE model = ?1 AND alias = ?2",
                params![model, alias],
                |row| row.get(0),
            )
            .optional()?;
        let Some(current) = current else {
            return Err(Error::AliasUnset {
                model: model.to_string(),
                alias: alias.to_string(),
            });
        };
        let mut undone = Vec::new();
        let mut target = None;
        for (id, from, undoes) in moves {
            if let Some(undoes) = undoes {
                undone.push(undoes);
                continue;
            }
            if undone.contains(&id) {
                continue;
            }
            target = Some((id, from));
            break;
        }
        let Some((undoes, Some(to))) = target else {
            return Err(Error::NothingToRollBack {
                model: model.to_string(),
                alias: alias.to_string(),
            });
        };
        move_alias_in(
            &transaction,
            model,
            alias,
            to,
            MoveBy {
                command: AliasCommand::Rollback,
                run_id: None,
                reason,
            },
            Some(undoes),
        )?;
        transaction.commit()?;
        Ok((current, to))
    }

    /// The alias moves of `model`, oldest first; of one alias when given.
    pub fn alias_history(&self, model: &str, alias: Option<&str>) -> Result<Vec<AliasMove>, Error> {
        let sql = format!(
            "SELECT {MOVE_COLUMNS} FROM alias_moves WHERE model = ?1 AND (?2 IS NULL OR alias = ?2) ORDER BY id"
        );
        let mut statement = self.connection.prepare(&sql)?;
        crate::read_rows(statement.query_map(params![model, alias], read_move)?)
    }
}

/// Points `alias` at `version` and appends the move to the audit trail, inside `transaction`.
fn move_alias_in(
    transaction: &rusqlite::Transaction<'_>,
    model: &str,
    alias: &str,
    version: Version,
    by: MoveBy<'_>,
    undoes: Option<i64>,
) -> Result<Option<Version>, Error> {
    let from: Option<Version> = transaction
        .query_row(
            "SELECT version FROM model_aliases WHERE model = ?1 AND alias = ?2",
            params![model, alias],
            |row| row.get(0),
        )
        .optional()?;
    transaction.execute(
        "INSERT INTO model_aliases (model, alias, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
        params![model, alias, version],
    )?;
    transaction.execute(
        "INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, run_id, reason, undoes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            model,
            alias,
            from,
            version,
            now_ms(),
            name_of(&by.command),
            by.run_id,
            by.reason,
            undoes
        ],
    )?;
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewRun, RunOutcome, Status};
    use serde_json::json;

    fn run(registry: &mut Registry) -> RunId {
        let id = registry
            .start_run(&NewRun {
                model: "iris".into(),
                params: json!({"train.C": 1.0}),
                overrides: json!({}),
            })
            .unwrap();
        registry
            .finish_run(id, &RunOutcome::bare(Status::Succeeded, None, None))
            .unwrap();
        id
    }

    fn lineage(run_id: RunId, accuracy: f64) -> Lineage {
        Lineage {
            run_id,
            commit: Some("abc".into()),
            dirty: false,
            params: json!({"train.C": 1.0, "prepare.seed": 7}),
            metrics: vec![("accuracy".into(), accuracy)],
            deps: BTreeMap::from([("data/iris.csv".to_string(), Some("ab".repeat(32)))]),
            environment: Some(vec!["scikit-learn==1.5.0".into()]),
            servable: Some(ServableSummary {
                passed: true,
                message: "predicted 5 rows".into(),
            }),
            signature: Some(
                json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}),
            ),
            example: Some(json!({"inputs": [{"name": "x", "data": [[1, 2, 3, 4]]}]})),
            profile: Some(json!({"rows": 150})),
        }
    }

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn registers_versions_with_lineage_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(&dir.path().join("kiln.db")).unwrap();
        let first = run(&mut registry);
        assert_eq!(
            registry
                .register_version("iris", &digest(1), &lineage(first, 0.9))
                .unwrap(),
            Registered::New(1)
        );
        // A cached rerun: another run id and servable message, the same model.
        let again = run(&mut registry);
        let mut same = lineage(again, 0.9);
        same.servable.as_mut().unwrap().message = "predicted 5 rows in 3 ms".into();
        same.params = json!({"prepare.seed": 7, "train.C": 1.0});
        assert_eq!(
            registry
                .register_version("iris", &digest(1), &same)
                .unwrap(),
            Registered::Existing(1)
        );
        let second = run(&mut registry);
        assert_eq!(
            registry
                .register_version("iris", &digest(2), &lineage(second, 0.95))
                .unwrap(),
            Registered::New(2)
        );
        let shown = registry.model_version("iris", 1).unwrap();
        assert_eq!(shown.lineage, lineage(first, 0.9));
        assert_eq!(shown.artifact_digest, digest(1));
        assert!(shown.aliases.is_empty());
        assert_eq!(
            registry.model_version("iris", 2).unwrap().aliases,
            ["latest"]
        );
        let models = registry.models().unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!((models[0].versions, models[0].latest_version), (2, 2));
        assert_eq!(models[0].aliases, BTreeMap::from([("latest".into(), 2)]));
        assert!(matches!(
            registry.model_version("iris", 3),
            Err(Error::NoSuchVersion { version: 3, .. })
        ));
    }

    #[test]
    fn an_imported_version_keeps_its_lineage_and_origin_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(&dir.path().join("kiln.db")).unwrap();
        // Run 41 is in the registry the version was exported from, not in this one.
        let exported = lineage(41, 0.9);
        let origin = Origin {
            model: "iris".into(),
            version: 3,
            registered_at_ms: 1_700_000_000_000,
            source: "iris-v3.tar".into(),
        };
        let imported = registry
            .import_version("iris", &digest(1), &exported, &origin)
            .unwrap();
        assert_eq!(imported, Registered::New(1));
        assert_eq!(
            registry
                .import_version("iris", &digest(1), &exported, &origin)
                .unwrap(),
            Registered::Existing(1)
        );
        let shown = registry.model_version("iris", 1).unwrap();
        assert_eq!(shown.lineage, exported);
        assert_eq!(shown.origin, Some(origin));
        assert_eq!(shown.aliases, ["latest"]);
        let moves = registry.alias_history("iris", None).unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].command, AliasCommand::Import);
        assert_eq!(
            moves[0].reason.as_deref(),
            Some("imported from `iris-v3.tar` (iris@v3)")
        );
        // A version trained here afterwards is the next number.
        let id = run(&mut registry);
        let next = registry
            .register_version("iris", &digest(2), &lineage(id, 0.95))
            .unwrap();
        assert_eq!(next, Registered::New(2));
        assert_eq!(registry.model_version("iris", 2).unwrap().origin, None);
    }

    #[test]
    fn two_threads_registering_get_distinct_gap_free_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        Registry::open(&path).unwrap();
        let threads: Vec<_> = (0..2u8)
            .map(|thread| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut registry = Registry::open(&path).unwrap();
                    (0..60u8)
                        .map(|i| {
                            let id = run(&mut registry);
                            registry
                                .register_version(
                                    "iris",
                                    &digest(thread * 100 + i),
                                    &lineage(id, 0.9),
                                )
                                .unwrap()
                                .version()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut versions: Vec<Version> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        versions.sort();
        assert_eq!(versions, (1..=120).collect::<Vec<_>>());
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.alias_version("iris", LATEST).unwrap(), Some(120));
        assert_eq!(
            registry.alias_history("iris", Some(LATEST)).unwrap().len(),
            120
        );
    }

    #[test]
    fn aliases_move_roll_back_through_history_and_are_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(&dir.path().join("kiln.db")).unwrap();
        for n in 1..=3 {
            let id = run(&mut registry);
            registry
                .register_version("iris", &digest(n), &lineage(id, 0.9))
                .unwrap();
        }
        let by = |command| MoveBy {
            command,
            run_id: None,
            reason: Some("tested"),
        };
        let production = ModelRef::parse("iris@production").unwrap();
        assert!(matches!(
            registry.resolve(&production),
            Err(Error::AliasUnset { .. })
        ));
        assert_eq!(
            registry
                .move_alias("iris", "production", 1, by(AliasCommand::Alias))
                .unwrap(),
            None
        );
        registry
            .move_alias("iris", "production", 2, by(AliasCommand::Promote))
            .unwrap();
        registry
            .move_alias("iris", "production", 3, by(AliasCommand::Promote))
            .unwrap();
        assert_eq!(registry.resolve(&production).unwrap(), 3);
        assert_eq!(
            registry.rollback_alias("iris", "production", None).unwrap(),
            (3, 2)
        );
        assert_eq!(
            registry.rollback_alias("iris", "production", None).unwrap(),
            (2, 1)
        );
        assert!(matches!(
            registry.rollback_alias("iris", "production", None),
            Err(Error::NothingToRollBack { .. })
        ));
        let history = registry.alias_history("iris", Some("production")).unwrap();
        let moves: Vec<_> = history
            .iter()
            .map(|m| (m.from_version, m.to_version, m.command))
            .collect();
        assert_eq!(
            moves,
            [
                (None, 1, AliasCommand::Alias),
                (Some(1), 2, AliasCommand::Promote),
                (Some(2), 3, AliasCommand::Promote),
                (Some(3), 2, AliasCommand::Rollback),
                (Some(2), 1, AliasCommand::Rollback),
            ]
        );
        assert_eq!(history[0].reason.as_deref(), Some("tested"));
        assert!(matches!(
            registry.move_alias("iris", "production", 9, by(AliasCommand::Alias)),
            Err(Error::NoSuchVersion { version: 9, .. })
        ));
        for bad in ["latest", "v2", "Prod", "", "a b"] {
            assert!(
                matches!(
                    registry.move_alias("iris", bad, 1, by(AliasCommand::Alias)),
                    Err(Error::BadAlias { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            registry.resolve(&ModelRef::parse("wine").unwrap()),
            Err(Error::NoSuchModel(_))
        ));
    }

    #[test]
    fn model_references_parse() {
        let parsed = |text: &str| ModelRef::parse(text).map(|r| r.selector);
        assert_eq!(parsed("iris").unwrap(), Selector::Alias("latest".into()));
        assert_eq!(parsed("iris@v3").unwrap(), Selector::Version(3));
        assert_eq!(
            parsed("iris@production").unwrap(),
            Selector::Alias("production".into())
        );
        for bad in ["iris@v0", "@v1", "iris@", "iris@Prod"] {
            assert!(
                matches!(ModelRef::parse(bad), Err(Error::BadModelRef { .. })),
                "{bad}"
            );
        }
        assert_eq!(ModelRef::parse("iris@v3").unwrap().to_string(), "iris@v3");
    }

    #[test]
    fn lineage_key_is_stable() {
        // A golden value: if this changes, bump `LINEAGE_ENCODING`.
        let key = lineage_key(&digest(1), &lineage(1, 0.9));
        assert_eq!(
            key,
            "11273889b0fb88c6655b2e4be04c0e52bc5ba40f20e8846e4971f949e990999f"
        );
        assert_eq!(key, lineage_key(&digest(1), &lineage(7, 0.9)));
        assert_ne!(key, lineage_key(&digest(1), &lineage(1, 0.91)));
    }
}

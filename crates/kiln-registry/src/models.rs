//! The model registry: each green run's artifact registered as version N of its model, with
//! its lineage; aliases (`latest`, `production`, any valid name) naming a version; and an audit
//! trail of every alias move.
//!
//! The whole API is these methods of [`Registry`] and the plain types below, the same on SQLite
//! and PostgreSQL. Version numbers are taken inside a transaction that holds the model's write
//! lock (SQLite's database lock, a PostgreSQL advisory lock on the model): two processes
//! registering at once get distinct, gap-free numbers, and a registration is all there or not
//! at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::db::{Database, DatabaseError, Row, args};
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
    /// The registries it was pushed to as an image, by repository (absent from JSON when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::VersionImage>,
}

/// A version as a listing shows it: what made it and how it scored, without its whole lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionSummary {
    pub version: Version,
    /// Unix time in milliseconds.
    pub registered_at_ms: i64,
    pub run_id: RunId,
    pub commit: Option<String>,
    pub dirty: bool,
    /// By key; in JSON, an object.
    #[serde(serialize_with = "crate::metrics_object")]
    pub metrics: Vec<(String, f64)>,
    /// Imported from another registry (its run is over there).
    pub imported: bool,
    /// The aliases naming it now, sorted.
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
    /// An environment rolled out to a version: `kiln deploy`, or Kiln's supervisor deploying a
    /// new version or promoting it from the environment before.
    Deploy,
}

impl AliasCommand {
    pub const ALL: [AliasCommand; 6] = [
        AliasCommand::Run,
        AliasCommand::Alias,
        AliasCommand::Promote,
        AliasCommand::Rollback,
        AliasCommand::Import,
        AliasCommand::Deploy,
    ];

    /// The command's name: what the audit trail shows and the database holds.
    pub fn as_str(self) -> &'static str {
        match self {
            AliasCommand::Run => "run",
            AliasCommand::Alias => "alias",
            AliasCommand::Promote => "promote",
            AliasCommand::Rollback => "rollback",
            AliasCommand::Import => "import",
            AliasCommand::Deploy => "deploy",
        }
    }

    /// The command named `name`, if any.
    pub fn parse(name: &str) -> Option<AliasCommand> {
        AliasCommand::ALL
            .into_iter()
            .find(|command| command.as_str() == name)
    }
}

impl std::fmt::Display for AliasCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// A `model_versions` row as the database holds it.
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

    fn read(row: &Row) -> Result<VersionRow, DatabaseError> {
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
            images: Vec::new(),
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
fn read_move(row: &Row) -> Result<AliasMove, Error> {
    let (id, command): (i64, String) = (row.get(0)?, row.get(6)?);
    Ok(AliasMove {
        id,
        model: row.get(1)?,
        alias: row.get(2)?,
        from_version: row.get(3)?,
        to_version: row.get(4)?,
        at_ms: row.get(5)?,
        command: typed("alias_moves", id, "command", &command)?,
        run_id: row.get(7)?,
        reason: row.get(8)?,
    })
}

/// The name of the lock a transaction takes before it writes the versions or aliases of
/// `model`.
fn model_lock(model: &str) -> String {
    format!("model\0{model}")
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
        let metrics: BTreeMap<&str, f64> = lineage
            .metrics
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let json = |value: &serde_json::Value| value.to_string();
        self.db.transaction(|tx| {
            // The lock is taken before the next number is read.
            tx.lock(&model_lock(model))?;
            let existing = tx.query_opt(
                "SELECT version FROM model_versions WHERE model = ?1 AND lineage_key = ?2",
                args![model, key],
            )?;
            if let Some(row) = existing {
                return Ok(Registered::Existing(row.get(0)?));
            }
            let version: Version = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model = ?1",
                    args![model],
                )?
                .get(0)?;
            tx.execute(
                "INSERT INTO model_versions (model, version, run_id, artifact_digest, lineage_key,
                     commit_sha, dirty, params, metrics, deps, environment, servable_passed,
                     servable_message, signature, example, profile, registered_at_ms, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18)",
                args![
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
            move_alias_in(tx, model, LATEST, version, by, None)?;
            Ok(Registered::New(version))
        })
    }

    /// Every model with versions, by name (in byte order, whatever the database's collation).
    pub fn models(&self) -> Result<Vec<ModelSummary>, Error> {
        let rows = self.db.query(
            "SELECT model, COUNT(*), MAX(version) FROM model_versions GROUP BY model",
            &[],
        )?;
        let mut models = rows
            .iter()
            .map(|row| {
                let model: String = row.get(0)?;
                Ok(ModelSummary {
                    aliases: self.aliases(&model)?,
                    model,
                    versions: row.get(1)?,
                    latest_version: row.get(2)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        models.sort_by(|a, b| a.model.cmp(&b.model));
        Ok(models)
    }

    /// Each alias of `model` with the version it names.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, Version>, Error> {
        let rows = self.db.query(
            "SELECT alias, version FROM model_aliases WHERE model = ?1",
            args![model],
        )?;
        Ok(rows
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<Result<_, DatabaseError>>()?)
    }

    /// The version `reference` names; an error says what is missing (the model, the version,
    /// or a version in the alias).
    pub fn resolve(&self, reference: &ModelRef) -> Result<Version, Error> {
        let model = &reference.model;
        let known: bool = self
            .db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = ?1)",
                args![model],
            )?
            .get(0)?;
        if !known {
            return Err(Error::NoSuchModel(model.clone()));
        }
        match &reference.selector {
            Selector::Version(version) => {
                if version_exists(&self.db, model, *version)? {
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
        alias_version_in(&self.db, model, alias)
    }

    /// One version with its lineage and aliases.
    pub fn model_version(&self, model: &str, version: Version) -> Result<ModelVersion, Error> {
        let sql = format!(
            "SELECT {} FROM model_versions WHERE model = ?1 AND version = ?2",
            VersionRow::COLUMNS
        );
        let row = self
            .db
            .query_opt(&sql, args![model, version])?
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
        let mut found = VersionRow::read(&row)?.into_version(aliases)?;
        found.images = crate::images::images_of(self, model, version)?;
        Ok(found)
    }

    /// The versions of `model`, newest first, as a listing shows them: at most `limit` of them
    /// (all when `None`). Only the columns shown are read, so that a model with thousands of
    /// versions lists at once. An unknown model is an error.
    pub fn version_summaries(
        &self,
        model: &str,
        limit: Option<usize>,
    ) -> Result<Vec<VersionSummary>, Error> {
        let limit = limit.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows = self.db.query(
            "SELECT rowid, version, registered_at_ms, run_id, commit_sha, dirty, metrics,
                 origin IS NOT NULL
             FROM model_versions WHERE model = ?1 ORDER BY version DESC LIMIT ?2",
            args![model, limit],
        )?;
        if rows.is_empty() && limit > 0 {
            return Err(Error::NoSuchModel(model.to_string()));
        }
        let aliases = self.aliases(model)?;
        rows.iter()
            .map(|row| {
                let rowid: i64 = row.get(0)?;
                let version: Version = row.get(1)?;
                let metrics: String = row.get(6)?;
                let metrics: BTreeMap<String, f64> =
                    serde_json::from_str(&metrics).map_err(|_| Error::Corrupt {
                        table: "model_versions",
                        row: rowid,
                        reason: "`metrics` does not hold what it should".into(),
                    })?;
                Ok(VersionSummary {
                    version,
                    registered_at_ms: row.get(2)?,
                    run_id: row.get(3)?,
                    commit: row.get(4)?,
                    dirty: row.get(5)?,
                    metrics: metrics.into_iter().collect(),
                    imported: row.get(7)?,
                    aliases: aliases
                        .iter()
                        .filter(|(_, v)| **v == version)
                        .map(|(alias, _)| alias.clone())
                        .collect(),
                })
            })
            .collect()
    }

    /// Every version of `model`, newest first.
    pub fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>, Error> {
        let sql = format!(
            "SELECT {} FROM model_versions WHERE model = ?1 ORDER BY version DESC",
            VersionRow::COLUMNS
        );
        let rows = self.db.query(&sql, args![model])?;
        let aliases = self.aliases(model)?;
        rows.iter()
            .map(|row| {
                let row = VersionRow::read(row)?;
                let named = aliases
                    .iter()
                    .filter(|(_, v)| **v == row.version)
                    .map(|(alias, _)| alias.clone())
                    .collect();
                let mut found = row.into_version(named)?;
                found.images = crate::images::images_of(self, model, found.version)?;
                Ok(found)
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
        self.db.transaction(|tx| {
            tx.lock(&model_lock(model))?;
            if !version_exists(tx, model, version)? {
                return Err(Error::NoSuchVersion {
                    model: model.to_string(),
                    version,
                });
            }
            move_alias_in(tx, model, alias, version, by, None)
        })
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
        self.db.transaction(|tx| {
            tx.lock(&model_lock(model))?;
            let moves = tx
                .query(
                    "SELECT id, from_version, undoes FROM alias_moves
                     WHERE model = ?1 AND alias = ?2 ORDER BY id DESC",
                    args![model, alias],
                )?
                .iter()
                .map(|row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .collect::<Result<Vec<(i64, Option<Version>, Option<i64>)>, DatabaseError>>()?;
            let Some(current) = alias_version_in(tx, model, alias)? else {
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
            let by = MoveBy {
                command: AliasCommand::Rollback,
                run_id: None,
                reason,
            };
            move_alias_in(tx, model, alias, to, by, Some(undoes))?;
            Ok((current, to))
        })
    }

    /// The alias moves of `model`, oldest first; of one alias when given.
    pub fn alias_history(&self, model: &str, alias: Option<&str>) -> Result<Vec<AliasMove>, Error> {
        let sql = format!(
            "SELECT {MOVE_COLUMNS} FROM alias_moves WHERE model = ?1 AND (CAST(?2 AS TEXT) IS NULL OR alias = ?2) ORDER BY id"
        );
        self.db
            .query(&sql, args![model, alias])?
            .iter()
            .map(read_move)
            .collect()
    }
}

/// Whether `model` has version `version`.
fn version_exists(db: &Database, model: &str, version: Version) -> Result<bool, Error> {
    Ok(db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = ?1 AND version = ?2)",
            args![model, version],
        )?
        .get(0)?)
}

/// The version `alias` of `model` names, if any.
fn alias_version_in(db: &Database, model: &str, alias: &str) -> Result<Option<Version>, Error> {
    let row = db.query_opt(
        "SELECT version FROM model_aliases WHERE model = ?1 AND alias = ?2",
        args![model, alias],
    )?;
    Ok(row.map(|row| row.get(0)).transpose()?)
}

/// Points `alias` at `version` and appends the move to the audit trail, inside a transaction
/// that holds the model's lock.
fn move_alias_in(
    tx: &Database,
    model: &str,
    alias: &str,
    version: Version,
    by: MoveBy<'_>,
    undoes: Option<i64>,
) -> Result<Option<Version>, Error> {
    let from = alias_version_in(tx, model, alias)?;
    tx.execute(
        "INSERT INTO model_aliases (model, alias, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
        args![model, alias, version],
    )?;
    tx.execute(
        "INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, run_id,
             reason, undoes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![
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
    use serde_json::json;

    /// The database holds a command's serde name: `as_str` and `parse` must agree with it.
    #[test]
    fn alias_commands_are_named_as_stored() {
        for command in AliasCommand::ALL {
            assert_eq!(name_of(&command), command.as_str());
            assert_eq!(AliasCommand::parse(command.as_str()), Some(command));
            assert_eq!(
                crate::types::parse_name::<AliasCommand>(command.as_str()),
                Some(command)
            );
        }
        assert_eq!(AliasCommand::Deploy.to_string(), "deploy");
        assert_eq!(AliasCommand::parse("Deploy"), None);
        assert_eq!(AliasCommand::parse("undeploy"), None);
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

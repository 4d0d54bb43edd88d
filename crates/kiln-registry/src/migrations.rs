//! The schema, as numbered migration files (`migrations/NNNN_name.sql`) applied in order. The
//! database's `PRAGMA user_version` is the number of the last one applied; each is applied in
//! its own transaction together with the version bump, so a crash leaves the database at one
//! version or the next, never between.
//!
//! A shipped migration is never edited: a change to the schema is a new file.

use rusqlite::{Connection, OptionalExtension};

use crate::Error;

/// Every migration, in order; the `n`th (from 1) brings the schema to version `n`.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        "0002_typed_rows",
        include_str!("../migrations/0002_typed_rows.sql"),
    ),
    (
        "0003_model_versions",
        include_str!("../migrations/0003_model_versions.sql"),
    ),
    (
        "0004_imported_versions",
        include_str!("../migrations/0004_imported_versions.sql"),
    ),
];

/// The schema version this Kiln writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`]; refuses one written by a newer Kiln.
pub(crate) fn migrate(connection: &mut Connection) -> Result<(), Error> {
    migrate_to(connection, SCHEMA_VERSION)
}

/// Applies the migrations after the database's version, up to `target`.
pub(crate) fn migrate_to(connection: &mut Connection, target: i64) -> Result<(), Error> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    // A migration may rebuild a table (SQLite cannot drop a constraint), which foreign keys
    // would refuse midway; they are off while it runs and checked before it commits. The
    // pragma has no effect inside a transaction, so it is set around them.
    let enforced: bool = connection.query_row("PRAGMA foreign_keys", [], |row| row.get(0))?;
    connection.pragma_update(None, "foreign_keys", false)?;
    let result = apply(connection, version, target);
    connection.pragma_update(None, "foreign_keys", enforced)?;
    result
}

fn apply(connection: &mut Connection, version: i64, target: i64) -> Result<(), Error> {
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let number = index as i64 + 1;
        if number <= version || number > target {
            continue;
        }
        let transaction = connection.transaction()?;
        transaction
            .execute_batch(sql)
            .map_err(|source| Error::Migration { name, source })?;
        let dangling: Option<String> = transaction
            .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
            .optional()?;
        if let Some(table) = dangling {
            return Err(Error::MigrationBrokeKeys { name, table });
        }
        transaction
            .pragma_update(None, "user_version", number)
            .and_then(|()| transaction.commit())
            .map_err(|source| Error::Migration { name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckRule, FailureKind, GateVerdict, OutKind, Registry, StageOutcome, Status};

    /// A database as the first schema's Kiln wrote it: a green run whose stage recorded two
    /// outs as JSON, a run failed by a data check, one failed by a gate, and one cancelled.
    fn version_1_database(path: &std::path::Path) {
        let mut connection = Connection::open(path).unwrap();
        migrate_to(&mut connection, 1).unwrap();
        let digest = "ab".repeat(32);
        let outs = format!(
            r#"[{{"path":"model","kind":"dir","digest":"{digest}"}},{{"path":"metrics.json","kind":"file","digest":"{digest}"}}]"#
        );
        connection
            .execute_batch(&format!(
                "INSERT INTO runs VALUES (1, 'iris', 'succeeded', 'abc', 0, 1000, 20, '{{\"train.C\":1.0}}', '{{}}', NULL, 1);
                 INSERT INTO runs VALUES (2, 'iris', 'failed', NULL, 0, 2000, 20, '{{}}', '{{}}', NULL, 1);
                 INSERT INTO runs VALUES (3, 'iris', 'failed', NULL, 0, 3000, 20, '{{}}', '{{\"train.C\":\"0.5\"}}', NULL, 1);
                 INSERT INTO runs VALUES (4, 'iris', 'cancelled', NULL, 0, 4000, 20, '{{}}', '{{}}', 'cancelled', 1);
                 INSERT INTO stage_results VALUES (1, 0, 'train', 'ran', 15, 0, 'logs/1/train.log', 'k', '{outs}');
                 INSERT INTO stage_results VALUES (1, 1, 'eval', 'not run', 0, NULL, NULL, NULL, NULL);
                 INSERT INTO metrics VALUES (1, 'accuracy', 0.95);
                 INSERT INTO check_results VALUES (2, 0, 'prepare', 'data.csv', 'sepal.length.min', 0, 'below 0');
                 INSERT INTO check_results VALUES (2, 1, 'prepare', 'data.csv', 'rows', 1, '150 rows');
                 INSERT INTO stage_results VALUES (2, 0, 'prepare', 'failed', 5, NULL, NULL, 'k2', NULL);
                 INSERT INTO gate_results VALUES (3, 0, 'accuracy >= 0.99', 'fail', 'accuracy=0.95');
                 INSERT INTO stage_state VALUES ('iris/train', 'k', '{{}}');"
            ))
            .unwrap();
    }

    #[test]
    fn a_version_1_database_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        version_1_database(&path);

        let registry = Registry::open(&path).unwrap();
        let version: i64 = registry
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);

        let green = registry.run(1).unwrap();
        assert_eq!(green.run.status, Status::Succeeded);
        assert_eq!(green.run.failure, None);
        assert_eq!(green.run.params, serde_json::json!({"train.C": 1.0}));
        assert_eq!(green.metrics, vec![("accuracy".to_string(), 0.95)]);
        let train = &green.stages[0];
        assert_eq!(train.outcome, StageOutcome::Ran);
        let outs: Vec<(&str, OutKind)> = train
            .outs
            .iter()
            .map(|o| (o.path.as_str(), o.kind))
            .collect();
        assert_eq!(
            outs,
            vec![("model", OutKind::Dir), ("metrics.json", OutKind::File)]
        );
        assert_eq!(train.outs[0].digest, "ab".repeat(32));
        assert_eq!(green.stages[1].outcome, StageOutcome::NotRun);
        assert!(green.stages[1].outs.is_empty());

        let check_failed = registry.run(2).unwrap();
        assert_eq!(check_failed.run.failure, Some(FailureKind::Check));
        let rules: Vec<(Option<&str>, CheckRule)> = check_failed
            .checks
            .iter()
            .map(|c| (c.column.as_deref(), c.rule))
            .collect();
        assert_eq!(
            rules,
            vec![
                (Some("sepal.length"), CheckRule::Min),
                (None, CheckRule::Rows)
            ]
        );

        let gate_failed = registry.run(3).unwrap();
        assert_eq!(gate_failed.run.failure, Some(FailureKind::Gate));
        assert_eq!(gate_failed.gates[0].verdict, GateVerdict::Fail);
        assert_eq!(
            gate_failed.run.overrides,
            serde_json::json!({"train.C": "0.5"})
        );
        assert_eq!(
            registry.run(4).unwrap().run.failure,
            Some(FailureKind::Cancelled)
        );
        assert!(registry.stage_state("iris/train").unwrap().is_some());
    }

    #[test]
    fn a_version_3_registry_is_migrated_with_its_versions_aliases_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        version_1_database(&path);
        let mut connection = Connection::open(&path).unwrap();
        migrate_to(&mut connection, 3).unwrap();
        let digest = "cd".repeat(32);
        connection
            .execute_batch(&format!(
                "INSERT INTO model_versions (model, version, run_id, artifact_digest, lineage_key,
                     commit_sha, dirty, params, metrics, deps, environment, servable_passed,
                     servable_message, registered_at_ms)
                 VALUES ('iris', 1, 1, '{digest}', 'k1', 'abc', 0, '{{\"train.C\":1.0}}',
                     '{{\"accuracy\":0.95}}', '{{}}', NULL, 1, 'predicted 1 row', 5000);
                 INSERT INTO model_aliases VALUES ('iris', 'latest', 1);
                 INSERT INTO model_aliases VALUES ('iris', 'production', 1);
                 INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, run_id)
                     VALUES ('iris', 'latest', NULL, 1, 5000, 'run', 1);
                 INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, reason)
                     VALUES ('iris', 'production', NULL, 1, 6000, 'alias', 'first');"
            ))
            .unwrap();
        drop(connection);

        let mut registry = Registry::open(&path).unwrap();
        let version = registry.model_version("iris", 1).unwrap();
        assert_eq!(version.artifact_digest, digest);
        assert_eq!(version.lineage.metrics, vec![("accuracy".into(), 0.95)]);
        assert_eq!(version.lineage.signature, None);
        assert_eq!(version.origin, None);
        assert_eq!(version.aliases, ["latest", "production"]);
        let history = registry.alias_history("iris", None).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].reason.as_deref(), Some("first"));
        // Keys hold after the rebuild: an alias still cannot name a missing version, and the
        // history goes on from its last id.
        assert!(
            registry
                .connection
                .execute(
                    "INSERT INTO model_aliases VALUES ('iris', 'staging', 9)",
                    []
                )
                .is_err()
        );
        registry
            .rollback_alias("iris", "production", None)
            .expect_err("production named no version before");
        let by = crate::MoveBy {
            command: crate::AliasCommand::Alias,
            run_id: None,
            reason: None,
        };
        registry.move_alias("iris", "staging", 1, by).unwrap();
        assert_eq!(registry.alias_history("iris", None).unwrap()[2].id, 3);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let connection = Connection::open(&path).unwrap();
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(connection);
        assert!(matches!(
            Registry::open(&path),
            Err(Error::NewerSchema { .. })
        ));
    }
}

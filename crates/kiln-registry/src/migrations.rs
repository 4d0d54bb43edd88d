//! The schema, as numbered migration files applied in order: `migrations/sqlite/NNNN_name.sql`
//! and `migrations/postgres/NNNN_name.sql`, where the same number is the same schema in each
//! dialect. The database's schema version (SQLite's `PRAGMA user_version`, PostgreSQL's
//! `kiln_schema` table) is the number of the last one applied; each is applied in its own
//! transaction together with the version bump, so a crash leaves the database at one version
//! or the next, never between. Opening a database applies what it lacks; two processes
//! opening one at once apply each migration once (SQLite's write lock, a PostgreSQL advisory
//! lock).
//!
//! A shipped migration is never edited: a change to the schema is a new file in each folder.

use crate::Error;
use crate::db::{Database, Dialect};

/// One migration, in both dialects.
struct Migration {
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Migration {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

macro_rules! migration {
    ($name:literal) => {
        Migration {
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $name, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $name, ".sql")),
        }
    };
}

/// Every migration, in order; the `n`th (from 1) brings the schema to version `n`.
const MIGRATIONS: &[Migration] = &[
    migration!("0001_initial"),
    migration!("0002_typed_rows"),
    migration!("0003_model_versions"),
    migration!("0004_imported_versions"),
    migration!("0005_deploy_moves"),
    migration!("0006_version_images"),
];

/// The schema version this Kiln writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`]; refuses one written by a newer Kiln.
pub(crate) fn migrate(db: &Database) -> Result<(), Error> {
    migrate_to(db, SCHEMA_VERSION)
}

/// Applies the migrations after the database's version, up to `target`.
pub(crate) fn migrate_to(db: &Database, target: i64) -> Result<(), Error> {
    let version = db.schema_version()?;
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version >= target {
        return Ok(());
    }
    // A SQLite migration may rebuild a table (SQLite cannot drop a constraint), which foreign
    // keys would refuse midway: they are off while it runs and checked before it commits.
    db.without_foreign_keys(|| {
        for (index, migration) in MIGRATIONS.iter().enumerate().take(target as usize) {
            apply(db, index as i64 + 1, migration)?;
        }
        Ok(())
    })
}

/// Applies `migration` (number `number`) unless the database has it already: another process
/// may have applied it since this one looked.
fn apply(db: &Database, number: i64, migration: &Migration) -> Result<(), Error> {
    let name = migration.name;
    db.transaction(|db| {
        db.lock_schema()?;
        let version = db.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version >= number {
            return Ok(());
        }
        db.execute_batch(migration.sql(db.dialect()))
            .map_err(|source| Error::Migration { name, source })?;
        if let Some(table) = db.broken_foreign_key()? {
            return Err(Error::MigrationBrokeKeys { name, table });
        }
        db.set_schema_version(number)
            .map_err(|source| Error::Migration { name, source })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Backend;
    use crate::{
        AliasCommand, CheckRule, FailureKind, GateVerdict, MoveBy, OutKind, Registry, StageOutcome,
        Status,
    };
    use serde_json::json;

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// Rows as the Kiln of schema `version` wrote them, in SQL both dialects read (no ids: the
    /// rows get 1, 2, ... in order, as they did).
    fn rows_of_version(version: i64) -> String {
        let d1 = digest(0xab);
        let d2 = digest(0xcd);
        let runs_v1 = format!(
            r#"INSERT INTO runs (model, status, commit_sha, dirty, started_at_ms, duration_ms, params, overrides, message, pid) VALUES
                 ('iris', 'succeeded', 'abc', FALSE, 1000, 20, '{{"train.C":1.0}}', '{{}}', NULL, 1),
                 ('iris', 'failed', NULL, FALSE, 2000, 20, '{{}}', '{{}}', NULL, 1),
                 ('iris', 'failed', NULL, FALSE, 3000, 20, '{{}}', '{{"train.C":"0.5"}}', NULL, 1),
                 ('iris', 'cancelled', NULL, FALSE, 4000, 20, '{{}}', '{{}}', 'cancelled', 1);
             INSERT INTO stage_results (run_id, position, stage, outcome, duration_ms, exit_code, log_path, cache_key, outs) VALUES
                 (1, 0, 'train', 'ran', 15, 0, 'logs/1/train.log', 'k',
                  '[{{"path":"model","kind":"dir","digest":"{d1}"}},{{"path":"metrics.json","kind":"file","digest":"{d1}"}}]'),
                 (1, 1, 'eval', 'not run', 0, NULL, NULL, NULL, NULL),
                 (2, 0, 'prepare', 'failed', 5, NULL, NULL, 'k2', 'not json');
             INSERT INTO metrics (run_id, key, value) VALUES (1, 'accuracy', 0.95);
             INSERT INTO check_results (run_id, position, stage, file, rule, passed, message) VALUES
                 (2, 0, 'prepare', 'data.csv', 'sepal.length.min', FALSE, 'below 0'),
                 (2, 1, 'prepare', 'data.csv', 'rows', TRUE, '150 rows');
             INSERT INTO gate_results (run_id, position, expr, verdict, detail) VALUES
                 (3, 0, 'accuracy >= 0.99', 'fail', 'accuracy=0.95');
             INSERT INTO stage_state (stage, cache_key, inputs) VALUES ('iris/train', 'k', '{{}}');"#
        );
        let runs_v2 = format!(
            r#"INSERT INTO runs (model, status, failure, commit_sha, dirty, started_at_ms, duration_ms, params, overrides, message, pid) VALUES
                 ('iris', 'succeeded', NULL, 'abc', TRUE, 1000, 20, '{{"train.C":1.0}}', '{{}}', NULL, 1),
                 ('iris', 'failed', 'unservable', 'abc', FALSE, 2000, 30, '{{}}', '{{}}', 'the model could not be served', 1);
             INSERT INTO stage_results (run_id, position, stage, outcome, duration_ms, exit_code, log_path, cache_key) VALUES
                 (1, 0, 'train', 'ran', 15, 0, 'logs/1/train.log', 'k');
             INSERT INTO stage_outs (run_id, stage, position, path, kind, digest, executable) VALUES
                 (1, 'train', 0, 'model.onnx', 'file', '{d1}', FALSE),
                 (1, 'train', 1, 'bin/predict', 'file', '{d2}', TRUE);
             INSERT INTO metrics (run_id, key, value) VALUES (1, 'loss', 0.1), (1, 'accuracy', 0.95);
             INSERT INTO check_results (run_id, position, stage, file, column_name, rule, passed, message) VALUES
                 (1, 0, 'train', 'data.csv', 'sepal.length', 'min', TRUE, 'min 4.3');
             INSERT INTO gate_results (run_id, position, expr, verdict, detail) VALUES
                 (1, 0, 'accuracy >= 0.9', 'pass', 'accuracy=0.95');
             INSERT INTO servable_checks (run_id, passed, message, detail, duration_ms) VALUES
                 (2, FALSE, 'raised', 'Traceback', 40);
             INSERT INTO stage_state (stage, cache_key, inputs) VALUES ('iris/train', 'k', '{{}}');"#
        );
        let versions_v3 = format!(
            r#"INSERT INTO model_versions (model, version, run_id, artifact_digest, lineage_key, commit_sha, dirty, params, metrics, deps, environment, servable_passed, servable_message, registered_at_ms) VALUES
                 ('iris', 1, 1, '{d1}', 'k1', 'abc', FALSE, '{{"train.C":1.0}}', '{{"accuracy":0.95}}', '{{"data/iris.csv":"{d2}"}}', '["scikit-learn==1.5.0"]', TRUE, 'predicted 1 row', 5000),
                 ('iris', 2, 1, '{d2}', 'k2', 'abc', TRUE, '{{}}', '{{}}', '{{}}', NULL, NULL, NULL, 6000);
             INSERT INTO model_aliases (model, alias, version) VALUES ('iris', 'latest', 2), ('iris', 'production', 1);
             INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, run_id, reason, undoes) VALUES
                 ('iris', 'latest', NULL, 1, 5000, 'run', 1, NULL, NULL),
                 ('iris', 'latest', 1, 2, 6000, 'run', 1, NULL, NULL),
                 ('iris', 'production', NULL, 1, 7000, 'alias', NULL, 'first', NULL);"#
        );
        let import_v4 = format!(
            r#"INSERT INTO model_versions (model, version, run_id, artifact_digest, lineage_key, commit_sha, dirty, params, metrics, deps, environment, servable_passed, servable_message, signature, example, profile, registered_at_ms, origin) VALUES
                 ('iris', 3, 41, '{d1}', 'k3', NULL, FALSE, '{{}}', '{{}}', '{{}}', NULL, NULL, NULL, '{{"inputs":[]}}', '{{"x":[1]}}', '{{"rows":150}}', 8000,
                  '{{"model":"iris","version":7,"registered_at_ms":1,"source":"iris-v7.tar"}}');
             UPDATE model_aliases SET version = 3 WHERE alias = 'latest';
             INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command, run_id, reason, undoes) VALUES
                 ('iris', 'latest', 2, 3, 8000, 'import', NULL, 'imported', NULL);"#
        );
        match version {
            0 => String::new(),
            1 => runs_v1,
            2 => runs_v2,
            3 => format!("{runs_v2}\n{versions_v3}"),
            4 => format!("{runs_v2}\n{versions_v3}\n{import_v4}"),
            // Schema 5 changed a constraint only: version 4's rows are version 5's.
            5 => format!("{runs_v2}\n{versions_v3}\n{import_v4}"),
            _ => unreachable!("a fixture for every schema version before the current one"),
        }
    }

    fn database(backend: &Backend) -> Database {
        crate::open_database(&backend.location()).unwrap()
    }

    /// What the rows of `rows_of_version(1)` read as, migrated.
    fn check_version_1_rows(registry: &Registry) {
        let green = registry.run(1).unwrap();
        assert_eq!(green.run.status, Status::Succeeded);
        assert_eq!(green.run.failure, None);
        assert_eq!(green.run.params, json!({"train.C": 1.0}));
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
        assert_eq!(train.outs[0].digest, digest(0xab));
        assert_eq!(green.stages[1].outcome, StageOutcome::NotRun);
        assert!(green.stages[1].outs.is_empty());

        let check_failed = registry.run(2).unwrap();
        assert_eq!(check_failed.run.failure, Some(FailureKind::Check));
        assert!(
            check_failed.stages[0].outs.is_empty(),
            "outs that were not JSON"
        );
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
        assert_eq!(gate_failed.run.overrides, json!({"train.C": "0.5"}));
        assert_eq!(
            registry.run(4).unwrap().run.failure,
            Some(FailureKind::Cancelled)
        );
        assert!(registry.stage_state("iris/train").unwrap().is_some());
    }

    /// What the rows of `rows_of_version(2)` read as, migrated.
    fn check_version_2_rows(registry: &Registry) {
        let green = registry.run(1).unwrap();
        assert_eq!(
            (green.run.commit.as_deref(), green.run.dirty),
            (Some("abc"), true)
        );
        let outs: Vec<(&str, bool)> = green.stages[0]
            .outs
            .iter()
            .map(|o| (o.path.as_str(), o.executable))
            .collect();
        assert_eq!(outs, [("model.onnx", false), ("bin/predict", true)]);
        assert_eq!(
            green.metrics,
            vec![("accuracy".to_string(), 0.95), ("loss".to_string(), 0.1)]
        );
        assert_eq!(green.checks[0].column.as_deref(), Some("sepal.length"));
        assert_eq!(green.gates[0].verdict, GateVerdict::Pass);
        let red = registry.run(2).unwrap();
        assert_eq!(red.run.failure, Some(FailureKind::Unservable));
        let servable = red.servable.unwrap();
        assert!(!servable.passed);
        assert_eq!(servable.detail.as_deref(), Some("Traceback"));
    }

    /// What the rows of `rows_of_version(3)` read as, migrated; `imported`: with those of 4.
    fn check_version_3_rows(backend: &Backend, registry: &mut Registry, imported: bool) {
        let first = registry.model_version("iris", 1).unwrap();
        assert_eq!(first.artifact_digest, digest(0xab));
        assert_eq!(first.lineage.metrics, vec![("accuracy".into(), 0.95)]);
        assert_eq!(first.lineage.deps.len(), 1);
        assert_eq!(
            first.lineage.environment,
            Some(vec!["scikit-learn==1.5.0".to_string()])
        );
        assert!(first.lineage.servable.unwrap().passed);
        assert_eq!(first.lineage.signature, None);
        assert_eq!(first.origin, None);
        assert_eq!(first.aliases, ["production"]);
        let second = registry.model_version("iris", 2).unwrap();
        assert!(second.lineage.dirty);
        assert_eq!(second.lineage.servable, None);
        let moves = if imported { 4 } else { 3 };
        let history = registry.alias_history("iris", None).unwrap();
        assert_eq!(history.len(), moves);
        assert_eq!(history[2].reason.as_deref(), Some("first"));
        // Keys hold after the migration: an alias still cannot name a missing version.
        assert!(
            backend
                .execute(
                    "INSERT INTO model_aliases (model, alias, version) VALUES ('iris', 'staging', 9)"
                )
                .is_err()
        );
        registry
            .rollback_alias("iris", "production", None)
            .expect_err("production named no version before");
        let by = MoveBy {
            command: AliasCommand::Alias,
            run_id: None,
            reason: None,
        };
        registry.move_alias("iris", "staging", 1, by).unwrap();
        // A deploy (schema 5) moves an environment, and is told apart in the trail.
        let deploy = MoveBy {
            command: AliasCommand::Deploy,
            run_id: Some(1),
            reason: Some("rolled out"),
        };
        assert_eq!(
            registry.move_alias("iris", "staging", 2, deploy).unwrap(),
            Some(1)
        );
        // The history goes on from its last id.
        let history = registry.alias_history("iris", None).unwrap();
        assert_eq!(history[moves].id, moves as i64 + 1);
        let last = &history[moves + 1];
        assert_eq!(last.id, moves as i64 + 2);
        assert_eq!(
            (
                last.command,
                last.from_version,
                last.to_version,
                last.run_id
            ),
            (AliasCommand::Deploy, Some(1), 2, Some(1))
        );
        // The rebuilt trail keeps its index, and rollbacks still walk it.
        assert_eq!(
            registry.rollback_alias("iris", "staging", None).unwrap(),
            (2, 1)
        );
    }

    fn check_version_4_rows(registry: &Registry) {
        let imported = registry.model_version("iris", 3).unwrap();
        let origin = imported.origin.unwrap();
        assert_eq!((origin.version, origin.source.as_str()), (7, "iris-v7.tar"));
        assert_eq!(imported.lineage.run_id, 41);
        assert_eq!(imported.lineage.profile, Some(json!({"rows": 150})));
        assert_eq!(imported.aliases, ["latest"]);
        let history = registry.alias_history("iris", Some("latest")).unwrap();
        assert_eq!(history.last().unwrap().command, AliasCommand::Import);
    }

    /// A database of every earlier schema, with the rows its Kiln wrote, opens at the current
    /// schema and reads its rows back; the registry then goes on writing.
    fn migrates_from_every_earlier_version(backend: impl Fn() -> Backend) {
        for version in 0..SCHEMA_VERSION {
            let backend = backend();
            let db = database(&backend);
            migrate_to(&db, version).unwrap();
            assert_eq!(db.schema_version().unwrap(), version);
            drop(db);
            backend
                .execute(&rows_of_version(version))
                .unwrap_or_else(|error| panic!("rows of version {version}: {error}"));
            if (3..5).contains(&version) {
                // Before schema 5, the trail has no `deploy`. (With its id given, the refused
                // row takes none from PostgreSQL's sequence.)
                let deploy = "INSERT INTO alias_moves (id, model, alias, from_version, to_version, at_ms, command) VALUES (1000, 'iris', 'staging', NULL, 1, 1, 'deploy')";
                assert!(backend.execute(deploy).is_err(), "version {version}");
            }

            let mut registry = Registry::connect(&backend.location())
                .unwrap_or_else(|error| panic!("migrating from version {version}: {error:?}"));
            assert_eq!(database(&backend).schema_version().unwrap(), SCHEMA_VERSION);
            match version {
                0 => assert!(registry.runs(None, 10).unwrap().is_empty()),
                1 => check_version_1_rows(&registry),
                _ => check_version_2_rows(&registry),
            }
            if version >= 3 {
                check_version_3_rows(&backend, &mut registry, version >= 4);
            }
            if version >= 4 {
                check_version_4_rows(&registry);
            }
            // New rows follow the old ones.
            let runs = registry.runs(None, 100).unwrap().len() as i64;
            let new_run = crate::NewRun {
                model: "iris".into(),
                params: json!({}),
                overrides: json!({}),
            };
            assert_eq!(registry.start_run(&new_run).unwrap(), runs + 1);
            let versions = registry.model_versions("iris").unwrap().len() as i64;
            let lineage = crate::Lineage {
                run_id: runs + 1,
                commit: None,
                dirty: false,
                params: json!({}),
                metrics: vec![],
                deps: Default::default(),
                environment: None,
                servable: None,
                signature: None,
                example: None,
                profile: None,
            };
            let registered = registry
                .register_version("iris", &digest(1), &lineage)
                .unwrap();
            assert_eq!(registered.version(), versions + 1);
            // Schema 6: versions carry the images pushed of them.
            let image = crate::VersionImage {
                repository: "127.0.0.1:5000/iris".into(),
                digest: format!("sha256:{}", digest(2)),
                tags: vec!["v1".into()],
                pushed_at_ms: 1,
            };
            registry
                .record_image("iris", registered.version(), &image)
                .unwrap();
            let shown = registry
                .model_version("iris", registered.version())
                .unwrap();
            assert_eq!(shown.images, [image]);
        }
    }

    #[test]
    fn sqlite_migrates_from_every_earlier_version() {
        migrates_from_every_earlier_version(Backend::sqlite);
    }

    #[test]
    fn postgres_migrates_from_every_earlier_version() {
        migrates_from_every_earlier_version(Backend::postgres);
    }

    /// Rebuilding `alias_moves` (SQLite's 0005) keeps its counter: an id once handed out is
    /// not handed out again, even when its row is gone. PostgreSQL keeps its sequence anyway.
    #[test]
    fn the_rebuilt_alias_trail_keeps_its_counter() {
        for backend in [Backend::sqlite(), Backend::postgres()] {
            let db = database(&backend);
            migrate_to(&db, 4).unwrap();
            drop(db);
            backend.execute(&rows_of_version(4)).unwrap();
            backend
                .execute(
                    "INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command) VALUES ('iris', 'x', NULL, 1, 9000, 'alias');
                     DELETE FROM alias_moves WHERE alias = 'x';",
                )
                .unwrap();
            let mut registry = Registry::connect(&backend.location()).unwrap();
            let by = MoveBy {
                command: AliasCommand::Deploy,
                run_id: None,
                reason: None,
            };
            registry.move_alias("iris", "staging", 1, by).unwrap();
            let history = registry.alias_history("iris", None).unwrap();
            assert_eq!(
                history.iter().map(|m| m.id).collect::<Vec<_>>(),
                [1, 2, 3, 4, 6]
            );
            // The index on (model, alias, id) is there again.
            assert!(
                backend
                    .execute("CREATE INDEX alias_moves_by_alias ON alias_moves (model, alias, id)")
                    .is_err()
            );
        }
    }

    /// Every dialect has every migration, and each file says what it is.
    #[test]
    fn every_migration_exists_in_both_dialects() {
        for migration in MIGRATIONS {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                assert!(
                    migration.sql(dialect).starts_with("--"),
                    "{} ({dialect:?}) starts with a comment",
                    migration.name
                );
            }
        }
    }

    fn a_newer_database_is_refused(backend: Backend, set_version: &str) {
        Registry::connect(&backend.location()).unwrap();
        backend.execute(set_version).unwrap();
        assert!(matches!(
            Registry::connect(&backend.location()),
            Err(Error::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn a_newer_database_is_refused_on_sqlite() {
        a_newer_database_is_refused(Backend::sqlite(), "PRAGMA user_version = 99");
    }

    #[test]
    fn a_newer_database_is_refused_on_postgres() {
        a_newer_database_is_refused(Backend::postgres(), "UPDATE kiln_schema SET version = 99");
    }

    #[test]
    fn a_failed_migration_leaves_the_database_as_it_was() {
        for backend in [Backend::sqlite(), Backend::postgres()] {
            let db = database(&backend);
            migrate_to(&db, 1).unwrap();
            // A table migration 0002 creates, there already: 0002 fails midway.
            backend
                .execute("CREATE TABLE servable_checks (x TEXT)")
                .unwrap();
            let error = migrate_to(&db, SCHEMA_VERSION).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Migration {
                        name: "0002_typed_rows",
                        ..
                    }
                ),
                "{error:?}"
            );
            assert_eq!(db.schema_version().unwrap(), 1);
            // Nothing of 0002 stayed: its first index can be created again.
            backend
                .execute("CREATE INDEX check_results_by_run ON check_results (run_id)")
                .unwrap();
        }
    }
}

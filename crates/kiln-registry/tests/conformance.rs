//! One conformance suite for every backend of the registry: each behaviour is a function of a
//! [`Backend`], run against a SQLite file and against a fresh database on a real PostgreSQL
//! server (see `backends/mod.rs`). A behaviour added here is checked on both.

mod backends;

use std::collections::BTreeMap;

use backends::Backend;
use kiln_registry::{
    AliasCommand, CheckResult, CheckRule, Error, FailureKind, GateResult, GateVerdict, LATEST,
    Lineage, Location, ModelRef, MoveBy, NewRun, Origin, OutKind, Registered, Registry, RunId,
    RunOutcome, ServableResult, ServableSummary, StageOut, StageOutcome, StageResult, Status,
    Version, VersionImage,
};
use serde_json::json;

/// Runs each named behaviour against every backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $behaviour() {
                super::$behaviour(&super::Backend::sqlite());
            })*
        }
        mod postgres {
            $(#[test]
            fn $behaviour() {
                super::$behaviour(&super::Backend::postgres());
            })*
        }
    };
}

conformance!(
    records_a_run_and_reads_it_back,
    lists_runs_newest_first_and_by_model,
    finds_the_previous_run_with_metrics,
    remembers_stage_state,
    runs_of_dead_processes_become_interrupted,
    an_unreadable_row_is_an_error_not_skipped,
    registers_versions_with_lineage_once,
    lineage_round_trips_whole,
    aliases_move_roll_back_through_history_and_are_audited,
    an_imported_version_keeps_its_lineage_and_origin_once,
    deploys_move_environments_and_are_audited,
    concurrent_registrations_get_distinct_gap_free_numbers,
    concurrent_opens_migrate_once,
    models_and_metrics_are_listed_in_byte_order,
    version_summaries_list_newest_first_with_aliases,
    pushed_images_are_recorded_per_repository,
);

fn open(backend: &Backend) -> Registry {
    Registry::connect(&backend.location()).expect("the registry opens")
}

fn new_run(model: &str) -> NewRun {
    NewRun {
        model: model.into(),
        params: json!({"train.C": 1.0}),
        overrides: json!({}),
    }
}

/// A green run of `iris`.
fn run(registry: &mut Registry) -> RunId {
    let id = registry.start_run(&new_run("iris")).unwrap();
    registry
        .finish_run(id, &RunOutcome::bare(Status::Succeeded, None, None))
        .unwrap();
    id
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
        signature: Some(json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})),
        example: Some(json!({"inputs": [{"name": "x", "data": [[1, 2, 3, 4]]}]})),
        profile: Some(json!({"rows": 150})),
    }
}

fn digest(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn records_a_run_and_reads_it_back(backend: &Backend) {
    let mut registry = open(backend);
    let id = registry.start_run(&new_run("iris")).unwrap();
    assert_eq!(registry.run(id).unwrap().run.status, Status::Running);
    let stage = stage();
    let checks = vec![
        CheckResult {
            stage: "train".into(),
            file: "data.csv".into(),
            column: Some("sepal.length".into()),
            rule: CheckRule::Min,
            passed: true,
            message: "min 4.3".into(),
        },
        CheckResult {
            stage: "train".into(),
            file: "data.csv".into(),
            column: None,
            rule: CheckRule::Rows,
            passed: false,
            message: "3 rows".into(),
        },
    ];
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
                metrics: &[("accuracy".into(), 0.95), ("loss".into(), 1.0)],
                checks: &checks,
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
    assert_eq!(
        detail.run.message.as_deref(),
        Some("the model could not be served")
    );
    assert_eq!(detail.run.params, json!({"train.C": 1.0}));
    assert!(detail.run.duration_ms.is_some());
    assert_eq!(detail.stages, vec![stage]);
    assert_eq!(detail.checks, checks);
    assert_eq!(detail.gates, vec![gate]);
    assert_eq!(detail.servable, Some(servable));
    assert_eq!(
        detail.metrics,
        vec![("accuracy".to_string(), 0.95), ("loss".to_string(), 1.0)]
    );
    assert_eq!(registry.metrics(id).unwrap(), detail.metrics);
    assert!(matches!(registry.run(99), Err(Error::NoSuchRun(99))));
    assert!(matches!(
        registry.finish_run(99, &RunOutcome::bare(Status::Succeeded, None, None)),
        Err(Error::NoSuchRun(99))
    ));
}

fn lists_runs_newest_first_and_by_model(backend: &Backend) {
    let mut registry = open(backend);
    let first = registry.start_run(&new_run("iris")).unwrap();
    let second = registry.start_run(&new_run("wine")).unwrap();
    let third = registry.start_run(&new_run("iris")).unwrap();
    assert!(first < second && second < third);
    let ids = |runs: Vec<kiln_registry::Run>| runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(registry.runs(None, 10).unwrap()),
        [third, second, first]
    );
    assert_eq!(
        ids(registry.runs(Some("iris"), 10).unwrap()),
        [third, first]
    );
    assert_eq!(ids(registry.runs(None, 1).unwrap()), [third]);
    assert_eq!(ids(registry.runs(None, usize::MAX).unwrap()).len(), 3);
    assert!(registry.runs(Some("none"), 10).unwrap().is_empty());
}

fn finds_the_previous_run_with_metrics(backend: &Backend) {
    let mut registry = open(backend);
    let green = registry.start_run(&new_run("iris")).unwrap();
    let metrics = [("accuracy".to_string(), 0.9)];
    registry
        .finish_run(
            green,
            &RunOutcome {
                metrics: &metrics,
                ..RunOutcome::bare(Status::Succeeded, None, None)
            },
        )
        .unwrap();
    let red = registry.start_run(&new_run("iris")).unwrap();
    registry
        .finish_run(
            red,
            &RunOutcome {
                metrics: &metrics,
                ..RunOutcome::bare(Status::Failed, Some(FailureKind::Gate), None)
            },
        )
        .unwrap();
    let bare = registry.start_run(&new_run("iris")).unwrap();
    let previous = |before, green_only| {
        registry
            .previous_run_with_metrics("iris", before, green_only)
            .unwrap()
    };
    assert_eq!(previous(None, false), Some(red));
    assert_eq!(previous(None, true), Some(green));
    assert_eq!(previous(Some(bare), false), Some(red));
    assert_eq!(previous(Some(red), false), Some(green));
    assert_eq!(previous(Some(green), false), None);
}

fn remembers_stage_state(backend: &Backend) {
    let registry = open(backend);
    assert_eq!(registry.stage_state("iris/train").unwrap(), None);
    registry
        .set_stage_state("iris/train", "k1", &json!({"deps": {"a": "1"}}))
        .unwrap();
    registry
        .set_stage_state("iris/train", "k2", &json!({"deps": {"a": "2"}}))
        .unwrap();
    assert_eq!(
        registry.stage_state("iris/train").unwrap(),
        Some(("k2".to_string(), json!({"deps": {"a": "2"}})))
    );
}

fn runs_of_dead_processes_become_interrupted(backend: &Backend) {
    let mut crashed = open(backend);
    let dead = crashed.start_run(&new_run("iris")).unwrap();
    let mut running = open(backend);
    let alive = running.start_run(&new_run("iris")).unwrap();
    // Its process is gone: on this machine (no process 0), and from the database (its
    // connection closed).
    backend
        .execute(&format!("UPDATE runs SET pid = 0 WHERE id = {dead}"))
        .unwrap();
    drop(crashed);
    let registry = open(backend);
    let interrupted = registry.run(dead).unwrap().run;
    assert_eq!(interrupted.status, Status::Interrupted);
    assert!(interrupted.message.unwrap().contains("stopped"));
    // This process is alive and holds its registry: its run goes on, and ends as it says.
    assert_eq!(registry.run(alive).unwrap().run.status, Status::Running);
    running
        .finish_run(alive, &RunOutcome::bare(Status::Succeeded, None, None))
        .unwrap();
    drop(running);
    assert_eq!(
        open(backend).run(alive).unwrap().run.status,
        Status::Succeeded
    );
}

fn an_unreadable_row_is_an_error_not_skipped(backend: &Backend) {
    let mut registry = open(backend);
    let id = run(&mut registry);
    registry
        .finish_run(
            id,
            &RunOutcome {
                stages: std::slice::from_ref(&stage()),
                gates: &[GateResult {
                    expr: "a > 1".into(),
                    verdict: GateVerdict::Pass,
                    detail: String::new(),
                }],
                ..RunOutcome::bare(Status::Succeeded, None, None)
            },
        )
        .unwrap();
    registry
        .register_version("iris", &digest(1), &lineage(id, 0.9))
        .unwrap();
    let corrupt = |sql: &str| {
        backend.execute(sql).unwrap();
        open(backend)
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

    let registry = corrupt("UPDATE gate_results SET verdict = 'maybe'");
    assert!(matches!(
        registry.run(id),
        Err(Error::Corrupt {
            table: "gate_results",
            ..
        })
    ));
    corrupt("UPDATE gate_results SET verdict = 'pass'");

    let registry = corrupt("UPDATE model_versions SET deps = 'not json'");
    let error = registry.model_version("iris", 1).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { table: "model_versions", reason, .. } if reason.contains("`deps`")),
        "{error}"
    );
    assert!(matches!(
        registry.model_versions("iris"),
        Err(Error::Corrupt { .. })
    ));
    corrupt("UPDATE model_versions SET deps = '{}'");

    let registry =
        corrupt("INSERT INTO stage_state (stage, cache_key, inputs) VALUES ('s', 'k', '[1]')");
    assert!(matches!(
        registry.stage_state("s"),
        Err(Error::Corrupt {
            table: "stage_state",
            ..
        })
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

fn registers_versions_with_lineage_once(backend: &Backend) {
    let mut registry = open(backend);
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
    assert_eq!(shown.artifact_digest, digest(1));
    assert!(shown.aliases.is_empty());
    assert_eq!(shown.origin, None);
    assert_eq!(
        registry.model_version("iris", 2).unwrap().aliases,
        ["latest"]
    );
    let versions: Vec<Version> = registry
        .model_versions("iris")
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [2, 1]);
    let models = registry.models().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!((models[0].versions, models[0].latest_version), (2, 2));
    assert_eq!(models[0].aliases, BTreeMap::from([("latest".into(), 2)]));
    assert!(matches!(
        registry.model_version("iris", 3),
        Err(Error::NoSuchVersion { version: 3, .. })
    ));
    assert_eq!(
        registry.resolve(&ModelRef::parse("iris").unwrap()).unwrap(),
        2
    );
    assert_eq!(
        registry
            .resolve(&ModelRef::parse("iris@v1").unwrap())
            .unwrap(),
        1
    );
    assert!(matches!(
        registry.resolve(&ModelRef::parse("iris@v7").unwrap()),
        Err(Error::NoSuchVersion { version: 7, .. })
    ));
    assert!(matches!(
        registry.resolve(&ModelRef::parse("wine").unwrap()),
        Err(Error::NoSuchModel(_))
    ));
}

fn lineage_round_trips_whole(backend: &Backend) {
    let mut registry = open(backend);
    let id = run(&mut registry);
    let mut full = lineage(id, 0.9125);
    full.dirty = true;
    full.metrics = vec![("accuracy".into(), 0.9125), ("f1".into(), -0.0)];
    full.deps.insert("data/missing.csv".into(), None);
    full.params = json!({"train": {"C": 0.5, "layers": [1, 2]}, "name": "é ✓ 'quoted'"});
    registry
        .register_version("iris", &digest(1), &full)
        .unwrap();
    let shown = registry.model_version("iris", 1).unwrap();
    assert_eq!(shown.lineage, full);

    let bare = Lineage {
        commit: None,
        environment: None,
        servable: None,
        signature: None,
        example: None,
        profile: None,
        deps: BTreeMap::new(),
        metrics: vec![],
        ..lineage(id, 0.0)
    };
    registry
        .register_version("iris", &digest(2), &bare)
        .unwrap();
    assert_eq!(registry.model_version("iris", 2).unwrap().lineage, bare);
}

fn aliases_move_roll_back_through_history_and_are_audited(backend: &Backend) {
    let mut registry = open(backend);
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
    assert!(matches!(
        registry.rollback_alias("iris", "production", None),
        Err(Error::AliasUnset { .. })
    ));
    assert_eq!(
        registry
            .move_alias("iris", "production", 1, by(AliasCommand::Alias))
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .move_alias("iris", "production", 2, by(AliasCommand::Promote))
            .unwrap(),
        Some(1)
    );
    registry
        .move_alias("iris", "production", 3, by(AliasCommand::Promote))
        .unwrap();
    assert_eq!(registry.resolve(&production).unwrap(), 3);
    assert_eq!(
        registry.alias_version("iris", "production").unwrap(),
        Some(3)
    );
    assert_eq!(
        registry
            .rollback_alias("iris", "production", Some("bad"))
            .unwrap(),
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
    assert_eq!(history[3].reason.as_deref(), Some("bad"));
    assert!(history.windows(2).all(|w| w[0].id < w[1].id));
    let all = registry.alias_history("iris", None).unwrap();
    assert_eq!(all.len(), 3 + 5);
    assert_eq!(all[0].command, AliasCommand::Run);
    assert_eq!(all[0].alias, LATEST);
    assert_eq!(
        registry.aliases("iris").unwrap(),
        BTreeMap::from([("latest".into(), 3), ("production".into(), 1)])
    );
    assert_eq!(
        registry.model_version("iris", 1).unwrap().aliases,
        ["production"]
    );
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
    // An alias names an existing version, whatever writes it.
    assert!(
        backend
            .execute("INSERT INTO model_aliases (model, alias, version) VALUES ('iris', 'x', 9)")
            .is_err()
    );
}

fn an_imported_version_keeps_its_lineage_and_origin_once(backend: &Backend) {
    let mut registry = open(backend);
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
    let id = run(&mut registry);
    let next = registry
        .register_version("iris", &digest(2), &lineage(id, 0.95))
        .unwrap();
    assert_eq!(next, Registered::New(2));
    assert_eq!(registry.model_version("iris", 2).unwrap().origin, None);
}

fn pushed_images_are_recorded_per_repository(backend: &Backend) {
    let mut registry = open(backend);
    let id = run(&mut registry);
    registry
        .register_version("iris", &digest(1), &lineage(id, 0.9))
        .unwrap();
    assert!(registry.version_images("iris", 1).unwrap().is_empty());
    let image = |repository: &str, digest_byte: u8, tags: &[&str], at: i64| VersionImage {
        repository: repository.into(),
        digest: format!("sha256:{}", digest(digest_byte)),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        pushed_at_ms: at,
    };
    let local = image("127.0.0.1:5000/team/iris", 7, &["v1", "abc1234"], 10);
    let remote = image("ghcr.io/acme/iris", 7, &["v1"], 20);
    registry.record_image("iris", 1, &remote).unwrap();
    registry.record_image("iris", 1, &local).unwrap();
    // By repository, in byte order.
    assert_eq!(
        registry.version_images("iris", 1).unwrap(),
        [local.clone(), remote.clone()]
    );
    // A push to the same repository again replaces its row.
    let again = image("127.0.0.1:5000/team/iris", 8, &["v1", "production"], 30);
    registry.record_image("iris", 1, &again).unwrap();
    let shown = registry.model_version("iris", 1).unwrap();
    assert_eq!(shown.images, [again, remote]);
    let json = serde_json::to_value(&shown).unwrap();
    assert_eq!(
        json["images"][0]["tags"],
        serde_json::json!(["v1", "production"])
    );
    // A version that does not exist has no image.
    assert!(matches!(
        registry.record_image("iris", 9, &local),
        Err(Error::NoSuchVersion { version: 9, .. })
    ));
}

fn deploys_move_environments_and_are_audited(backend: &Backend) {
    let mut registry = open(backend);
    for n in 1..=2 {
        let id = run(&mut registry);
        registry
            .register_version("iris", &digest(n), &lineage(id, 0.9))
            .unwrap();
    }
    let deploy = |run_id, reason| MoveBy {
        command: AliasCommand::Deploy,
        run_id,
        reason,
    };
    // A green run rolled out to staging by the supervisor, then `kiln deploy` by hand.
    assert_eq!(
        registry
            .move_alias("iris", "staging", 2, deploy(Some(2), None))
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .move_alias("iris", "staging", 1, deploy(None, Some("pinned")))
            .unwrap(),
        Some(2)
    );
    // Promoted from staging to production by the supervisor (`approve: auto`).
    registry
        .move_alias(
            "iris",
            "production",
            1,
            deploy(None, Some("promoted from staging")),
        )
        .unwrap();
    // A deploy is undone like any move.
    assert_eq!(
        registry
            .rollback_alias("iris", "staging", Some("crash-looped"))
            .unwrap(),
        (1, 2)
    );
    let staging = registry.alias_history("iris", Some("staging")).unwrap();
    let moves: Vec<_> = staging
        .iter()
        .map(|m| {
            (
                m.from_version,
                m.to_version,
                m.command,
                m.run_id,
                m.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            (None, 2, AliasCommand::Deploy, Some(2), None),
            (Some(2), 1, AliasCommand::Deploy, None, Some("pinned")),
            (
                Some(1),
                2,
                AliasCommand::Rollback,
                None,
                Some("crash-looped")
            ),
        ]
    );
    let production = registry.alias_history("iris", Some("production")).unwrap();
    assert_eq!(production.len(), 1);
    assert_eq!(production[0].command, AliasCommand::Deploy);
    assert_eq!(
        registry.aliases("iris").unwrap(),
        BTreeMap::from([
            ("latest".into(), 2),
            ("production".into(), 1),
            ("staging".into(), 2)
        ])
    );
    // The database holds the command by its name: a row written with `deploy` by something
    // else reads back as a deploy, and an unknown command is refused by the schema.
    let row = |command: &str| {
        format!(
            "INSERT INTO alias_moves (model, alias, from_version, to_version, at_ms, command) \
             VALUES ('iris', 'canary', NULL, 1, 1, '{command}')"
        )
    };
    backend
        .execute(&row(AliasCommand::Deploy.as_str()))
        .unwrap();
    assert!(backend.execute(&row("redeploy")).is_err());
    let canary = registry.alias_history("iris", Some("canary")).unwrap();
    assert_eq!(canary.len(), 1);
    assert_eq!(canary[0].command, AliasCommand::Deploy);
    let json = serde_json::to_value(&canary[0]).unwrap();
    assert_eq!(json["command"], "deploy");
}

fn concurrent_registrations_get_distinct_gap_free_numbers(backend: &Backend) {
    let location = backend.location();
    open(backend);
    let threads: Vec<_> = (0..3u8)
        .map(|thread| {
            let location = location.clone();
            std::thread::spawn(move || {
                let mut registry = Registry::connect(&location).unwrap();
                (0..25u8)
                    .map(|i| {
                        let id = run(&mut registry);
                        let model = if i % 5 == 4 { "wine" } else { "iris" };
                        let version = registry
                            .register_version(model, &digest(thread * 100 + i), &lineage(id, 0.9))
                            .unwrap()
                            .version();
                        // Alias moves interleave with registrations, in the same model.
                        if i % 7 == 0 {
                            let by = MoveBy {
                                command: AliasCommand::Promote,
                                run_id: None,
                                reason: None,
                            };
                            registry
                                .move_alias(model, "production", version, by)
                                .unwrap();
                        }
                        (model, version)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut iris = Vec::new();
    let mut wine = Vec::new();
    for (model, version) in threads.into_iter().flat_map(|t| t.join().unwrap()) {
        if model == "iris" {
            iris.push(version);
        } else {
            wine.push(version);
        }
    }
    iris.sort();
    wine.sort();
    assert_eq!(iris, (1..=60).collect::<Vec<_>>());
    assert_eq!(wine, (1..=15).collect::<Vec<_>>());
    let registry = open(backend);
    assert_eq!(registry.alias_version("iris", LATEST).unwrap(), Some(60));
    assert_eq!(
        registry.alias_history("iris", Some(LATEST)).unwrap().len(),
        60
    );
    // Each move's `from` is the version the one before it moved to: no move was lost.
    let production = registry.alias_history("iris", Some("production")).unwrap();
    assert_eq!(production.len(), 9);
    for pair in production.windows(2) {
        assert_eq!(pair[1].from_version, Some(pair[0].to_version));
    }
}

fn concurrent_opens_migrate_once(backend: &Backend) {
    let location = backend.location();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let location = location.clone();
            std::thread::spawn(move || Registry::connect(&location).map(drop))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().expect("every open succeeds");
    }
    let mut registry = open(backend);
    assert_eq!(run(&mut registry), 1);
}

fn version_summaries_list_newest_first_with_aliases(backend: &Backend) {
    let mut registry = open(backend);
    for n in 1..=3u8 {
        let id = run(&mut registry);
        registry
            .register_version("iris", &digest(n), &lineage(id, 0.9 + f64::from(n) / 100.0))
            .unwrap();
    }
    let by = MoveBy {
        command: AliasCommand::Alias,
        run_id: None,
        reason: None,
    };
    registry.move_alias("iris", "production", 2, by).unwrap();
    let origin = Origin {
        model: "iris".into(),
        version: 9,
        registered_at_ms: 1,
        source: "iris-v9.tar".into(),
    };
    registry
        .import_version("iris", &digest(4), &lineage(77, 0.5), &origin)
        .unwrap();

    let listed = registry.version_summaries("iris", None).unwrap();
    let shown: Vec<(Version, Vec<&str>, bool)> = listed
        .iter()
        .map(|v| {
            let aliases = v.aliases.iter().map(String::as_str).collect();
            (v.version, aliases, v.imported)
        })
        .collect();
    assert_eq!(
        shown,
        [
            (4, vec!["latest"], true),
            (3, vec![], false),
            (2, vec!["production"], false),
            (1, vec![], false),
        ]
    );
    let two = &listed[2];
    let full = registry.model_version("iris", 2).unwrap();
    assert_eq!(two.metrics, full.lineage.metrics);
    assert_eq!(
        (two.run_id, &two.commit, two.dirty, two.registered_at_ms),
        (
            full.lineage.run_id,
            &full.lineage.commit,
            full.lineage.dirty,
            full.registered_at_ms
        )
    );
    let newest: Vec<Version> = registry
        .version_summaries("iris", Some(2))
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(newest, [4, 3]);
    assert!(matches!(
        registry.version_summaries("nope", None),
        Err(Error::NoSuchModel(_))
    ));
}

fn models_and_metrics_are_listed_in_byte_order(backend: &Backend) {
    let mut registry = open(backend);
    for (n, model) in ["iris", "Wine", "_b", "a"].iter().enumerate() {
        let id = registry.start_run(&new_run(model)).unwrap();
        registry
            .register_version(model, &digest(n as u8), &lineage(id, 0.9))
            .unwrap();
    }
    let models: Vec<String> = registry
        .models()
        .unwrap()
        .into_iter()
        .map(|m| m.model)
        .collect();
    assert_eq!(models, ["Wine", "_b", "a", "iris"]);
    let id = registry.start_run(&new_run("iris")).unwrap();
    let metrics = [
        ("b".to_string(), 1.0),
        ("B".to_string(), 2.0),
        ("a.x".to_string(), 3.0),
        ("a_x".to_string(), 4.0),
    ];
    registry
        .finish_run(
            id,
            &RunOutcome {
                metrics: &metrics,
                ..RunOutcome::bare(Status::Succeeded, None, None)
            },
        )
        .unwrap();
    let keys: Vec<String> = registry
        .metrics(id)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["B", "a.x", "a_x", "b"]);
}

/// On PostgreSQL a run's process may be on another machine, where its process id means
/// nothing here: the run stays `running` while its process holds its registry open.
#[test]
fn a_postgres_run_of_another_machine_stays_running() {
    let backend = Backend::postgres();
    let mut elsewhere = open(&backend);
    let id = elsewhere.start_run(&new_run("iris")).unwrap();
    backend
        .execute(&format!("UPDATE runs SET pid = 0 WHERE id = {id}"))
        .unwrap();
    assert_eq!(open(&backend).run(id).unwrap().run.status, Status::Running);
    drop(elsewhere);
    assert_eq!(
        open(&backend).run(id).unwrap().run.status,
        Status::Interrupted
    );
}

#[test]
fn an_unreachable_postgres_is_a_clear_error_without_the_password() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let location = Location::Postgres(format!("postgres://kiln:s3cret@127.0.0.1:{port}/registry"));
    let error = Registry::connect(&location).unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, Error::Connect { .. }), "{shown}");
    assert_eq!(
        shown,
        format!(
            "cannot connect to the PostgreSQL database `127.0.0.1:{port}` (database `registry`, user `kiln`)"
        )
    );
    let hint = error.hint().unwrap();
    assert!(hint.contains("KILN_DATABASE_URL"), "{hint}");
    let mut chain = format!("{error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(!chain.contains("s3cret"), "{chain}");
    assert!(!hint.contains("s3cret"));

    let error =
        Registry::connect(&Location::Postgres("mysql://kiln:s3cret@db/x".into())).unwrap_err();
    assert!(matches!(error, Error::BadDatabaseUrl { .. }), "{error}");
}

#[test]
fn a_refused_login_names_the_server_and_user() {
    let backend = Backend::postgres();
    let Location::Postgres(url) = backend.location() else {
        unreachable!()
    };
    // A database that does not exist on a server that runs.
    let missing = url.replacen("/kiln_test_", "/missing_kiln_test_", 1);
    let error = Registry::connect(&Location::Postgres(missing)).unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(
        error.to_string().contains("database `missing_kiln_test_"),
        "{error}"
    );
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("does not exist"), "{source}");
}

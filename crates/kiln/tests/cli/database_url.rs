//! The registry in PostgreSQL (`KILN_DATABASE_URL`) through the real binary: two `kiln run`s
//! registering at once, from two checkouts of one project, get distinct, gap-free version
//! numbers; a server that cannot be reached is a clear error with a hint, never showing the
//! password. The server is the registry tests' (`KILN_TEST_DATABASE_URL`, or one started for
//! this process), each test on a fresh database of its own.

use kiln_registry::Location;
use serde_json::Value;

use crate::common::{TestProject, kiln_command, stderr, stdout};
use crate::serve::{free_port, test_python};

#[allow(dead_code)]
#[path = "../../../kiln-registry/tests/backends/mod.rs"]
mod backends;

/// A model whose artifact is the folder `model` (its `predict.py` and `score.json`).
fn project(accuracy: f64) -> TestProject {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py score.json model/ && cp score.json metrics.json', deps: [predict.py, score.json], outs: [model], metrics: [metrics.json]}\n    artifact: model\n    example: example.csv\n",
    );
    project.write(
        "predict.py",
        "def predict(inputs):\n    return {\"sum\": inputs[\"a\"] + inputs[\"b\"]}\n",
    );
    project.write("example.csv", "a,b\n1,2\n");
    project.write("score.json", &format!("{{\"accuracy\": {accuracy}}}"));
    project
}

fn kiln_on(project: &TestProject, url: &str, args: &[&str]) -> std::process::Output {
    kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .env("KILN_DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn two_runs_registering_at_once_in_postgres_get_distinct_gap_free_numbers() {
    let database = backends::Backend::postgres();
    let Location::Postgres(url) = database.location() else {
        unreachable!("a PostgreSQL backend")
    };
    let checkouts = [project(0.9), project(0.8)];
    std::thread::scope(|scope| {
        let runs: Vec<_> = checkouts
            .iter()
            .map(|checkout| scope.spawn(|| kiln_on(checkout, &url, &["run"])))
            .collect();
        for run in runs {
            let output = run.join().unwrap();
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        }
    });
    for checkout in &checkouts {
        assert!(
            !checkout.path(".kiln/kiln.db").exists(),
            "the registry is in PostgreSQL"
        );
    }
    let json = |args: &[&str]| -> Value {
        let output = kiln_on(&checkouts[0], &url, args);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        serde_json::from_str(&stdout(&output)).unwrap()
    };
    let listed = json(&["models", "list", "--json"]);
    assert_eq!(listed[0]["versions"], 2, "{listed}");
    let accuracies: Vec<f64> = (1..=2)
        .map(|n| {
            let shown = json(&["models", "show", &format!("m@v{n}"), "--json"]);
            shown["lineage"]["metrics"]["accuracy"].as_f64().unwrap()
        })
        .collect();
    assert!(
        accuracies.contains(&0.9) && accuracies.contains(&0.8),
        "each run registered its own version: {accuracies:?}"
    );
}

#[test]
fn an_unreachable_postgres_is_an_error_naming_the_server_not_the_password() {
    let project = project(0.9);
    let port = free_port();
    let url = format!("postgres://kiln:s3cret@127.0.0.1:{port}/registry");
    let output = kiln_on(&project, &url, &["runs"]);
    let shown = stderr(&output);
    assert_ne!(output.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(&format!(
            "cannot connect to the PostgreSQL database `127.0.0.1:{port}` (database `registry`, user `kiln`)"
        )),
        "{shown}"
    );
    assert!(shown.contains("KILN_DATABASE_URL"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

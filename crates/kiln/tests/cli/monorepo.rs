//! The monorepo example (`examples/monorepo`), for real: two models of one repository, each in
//! its own Kiln-managed virtualenv, one served as ONNX and one through `predict.py`, with shared
//! preprocessing, data checks, gates and pytest unit tests run as stages.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::common::{copy_tree, kiln_command, stderr};
use crate::registry::ChildGuard;
use crate::serve::{free_port, post, spawn_serve, terminate, wait_listening};

/// Each stage's outcome word, keyed by `model/stage`, from plain progress lines.
fn stage_outcomes(output: &Output) -> Vec<String> {
    let mut outcomes: Vec<String> = stderr(output)
        .lines()
        .filter_map(|line| {
            let rest = ["✓ ", "· ", "✗ ", "- "]
                .iter()
                .find_map(|mark| line.strip_prefix(mark))?;
            let (id, what) = rest.split_once("  ")?;
            let word = what.split_whitespace().next()?.trim_end_matches(':');
            Some(format!("{id}: {word}"))
        })
        .collect();
    outcomes.sort();
    outcomes
}

fn show(dir: &Path, version: &str) -> Value {
    let output = kiln_command(dir)
        .args(["models", "show", version, "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_monorepo_example_trains_tests_registers_and_serves_both_models() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/monorepo");
    let dir = tempfile::tempdir().unwrap();
    // data/raw is committed; what the pipeline writes is left behind, in case the example was
    // run where it lies.
    copy_tree(
        &source,
        dir.path(),
        &[
            ".kiln",
            "processed",
            "model",
            "model.onnx",
            "metrics.json",
            "__pycache__",
        ],
    );

    let first = kiln_command(dir.path()).arg("run").output().unwrap();
    let text = stderr(&first);
    assert_eq!(first.status.code(), Some(0), "{text}");
    assert_eq!(
        stage_outcomes(&first),
        [
            "churn/prepare: ran",
            "churn/test: ran",
            "churn/train: ran",
            "price/prepare: ran",
            "price/test: ran",
            "price/train: ran"
        ]
    );
    for gate in [
        "roc_auc >= 0.85  pass",
        "recall >= 0.7    pass",
        "mape <= 0.1  pass",
        "r2 >= 0.9    pass",
    ] {
        assert!(text.contains(gate), "missing `{gate}` in:\n{text}");
    }
    assert!(
        text.contains("registered `churn` v1 (now `latest`)"),
        "{text}"
    );
    assert!(
        text.contains("registered `price` v1 (now `latest`)"),
        "{text}"
    );
    // The servable check predicted on the checked training rows, the label left out.
    assert!(
        text.contains("predicted 5 rows of `data/processed/churn/train.csv`"),
        "{text}"
    );
    assert!(
        text.contains("predicted 5 rows of `data/processed/price/train.csv`"),
        "{text}"
    );

    // Each version carries its engine's signature, its example and the profile of the training
    // data it declares; its lineage names the shared script and raw export it came from.
    let churn = show(dir.path(), "churn@v1");
    let lineage = &churn["lineage"];
    assert_eq!(lineage["signature"]["platform"], json!("onnxruntime_onnx"));
    assert_eq!(
        lineage["signature"]["feature_names"],
        json!([
            "tenure_months",
            "monthly_fee",
            "plan_tier",
            "autopay",
            "tickets_per_month",
            "logins_30d"
        ]),
        "{churn}"
    );
    assert_eq!(
        lineage["profile"]["source"]["path"],
        json!("data/processed/churn/train.csv"),
        "{churn}"
    );
    for dep in ["scripts/prepare.py", "data/raw/customers.csv"] {
        assert!(lineage["deps"].get(dep).is_some(), "{dep}: {churn}");
    }
    let price = show(dir.path(), "price@v1");
    let lineage = &price["lineage"];
    assert_eq!(lineage["signature"]["platform"], json!("kiln_python"));
    assert_eq!(
        lineage["profile"]["source"]["path"],
        json!("data/processed/price/train.csv"),
        "{price}"
    );
    // The example kept with the version is what the servable check sent: without the target.
    let columns = &lineage["example"]["dataframe_split"]["columns"];
    assert_eq!(
        columns,
        &json!([
            "district",
            "area_m2",
            "rooms",
            "floor",
            "age_years",
            "balcony"
        ]),
        "{price}"
    );
    let packages = lineage["environment"].as_array().unwrap();
    // The pinned requirements are what the version records.
    assert!(packages.contains(&json!("scikit_learn==1.9.1")), "{price}");

    // A failing unit test fails the run: the retrained price model is not registered, and the
    // churn model, whose inputs did not change, stays cached.
    let test_file = dir.path().join("tests/unit/test_price.py");
    let tests = std::fs::read_to_string(&test_file).unwrap();
    let broken = tests.replace("[25.0, 20.0, 30.0, 45.0]", "[25.0, 20.0, 30.0, 40.0]");
    assert_ne!(broken, tests, "the test to break was not found");
    std::fs::write(&test_file, broken).unwrap();
    let failing = kiln_command(dir.path())
        .args(["run", "--set", "train.learning_rate=0.1"])
        .output()
        .unwrap();
    let text = stderr(&failing);
    assert_eq!(failing.status.code(), Some(1), "{text}");
    assert_eq!(
        stage_outcomes(&failing),
        [
            "churn/prepare: cached",
            "churn/test: cached",
            "churn/train: cached",
            "price/prepare: cached",
            "price/test: failed",
            "price/train: ran"
        ]
    );
    assert!(
        text.contains("FAILED tests/unit/test_price.py::test_features_derive_area_per_room"),
        "{text}"
    );
    assert!(!text.contains("registered `price`"), "{text}");
    let listed = kiln_command(dir.path())
        .args(["models", "list", "--json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let versions: Vec<(&Value, &Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (&m["model"], &m["latest_version"]))
        .collect();
    assert_eq!(
        versions,
        [(&json!("churn"), &json!(1)), (&json!("price"), &json!(1))]
    );

    // `kiln serve` answers real predictions from both registered versions: the ONNX model in
    // ONNX Runtime, the pickled one through predict.py in its own environment.
    let churn_port = free_port();
    let price_port = free_port();
    let mut churn_server = ChildGuard(spawn_serve(
        dir.path(),
        &["churn", "--port", &churn_port.to_string()],
    ));
    let mut price_server = ChildGuard(spawn_serve(
        dir.path(),
        &["price", "--port", &price_port.to_string()],
    ));
    wait_listening(&mut churn_server.0);
    wait_listening(&mut price_server.0);

    // A new customer on a discounted premium plan with many tickets and no logins, and a loyal
    // one of four years on autopay.
    let (status, body) = post(
        churn_port,
        "/invocations",
        &json!({"dataframe_split": {
            "columns": ["tenure_months", "monthly_fee", "plan_tier", "autopay", "tickets_per_month", "logins_30d"],
            "data": [[3, 22.99, 2, 0, 0.67, 4], [48, 9.99, 0, 1, 0.04, 30]]
        }}),
    );
    assert_eq!(status, 200, "{body}");
    let labels: Vec<&Value> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["label"])
        .collect();
    assert_eq!(labels, [&json!(1), &json!(0)], "{body}");

    let (status, body) = post(
        price_port,
        "/invocations",
        &json!({"dataframe_records": [
            {"district": "inner", "area_m2": 72.5, "rooms": 3, "floor": 2, "age_years": 31, "balcony": 1},
            {"district": "centre", "area_m2": 72.5, "rooms": 3, "floor": 2, "age_years": 31, "balcony": 1}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let prices: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    // In euros (the model learnt the logarithm), rounded to the hundred, and the same flat costs
    // more in the centre.
    assert!(
        prices
            .iter()
            .all(|p| (100_000.0..600_000.0).contains(p) && p % 100.0 == 0.0),
        "{body}"
    );
    assert!(prices[1] > prices[0], "{body}");
    // A request that misses a field is refused before it reaches predict.py.
    let (status, body) = post(
        price_port,
        "/invocations",
        &json!({"dataframe_records": [{"district": "inner", "area_m2": 72.5}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], json!("missing_input"), "{body}");

    assert!(terminate(&mut churn_server.0).success());
    assert!(terminate(&mut price_server.0).success());

    // `kiln up --once` on the repository (the unit test mended, the params as shipped): the
    // head commit runs in a clean checkout, restoring every stage from the cache the runs above
    // filled, and both models are served: churn on staging, price on staging and, by
    // `approve: auto`, on production.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/monorepo");
    std::fs::write(&test_file, &tests).unwrap();
    std::fs::copy(
        example.join("models/price/params.yaml"),
        dir.path().join("models/price/params.yaml"),
    )
    .unwrap();
    let kiln_yaml = std::fs::read_to_string(dir.path().join("kiln.yaml")).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let kiln_yaml = ["8110", "8111", "8120", "8121"]
        .iter()
        .zip(&ports)
        .fold(kiln_yaml, |text, (from, to)| {
            text.replace(&format!("port: {from}"), &format!("port: {to}"))
        });
    std::fs::write(dir.path().join("kiln.yaml"), kiln_yaml).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=Kiln Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "monorepo",
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
    let up = kiln_command(dir.path())
        .args(["up", "--once"])
        .output()
        .unwrap();
    let text = stderr(&up);
    assert_eq!(up.status.code(), Some(0), "{text}");
    assert!(
        !stage_outcomes(&up).iter().any(|o| o.ends_with(": ran")),
        "{text}"
    );
    for (model, environment, port) in [
        ("churn", "staging", ports[0]),
        ("price", "staging", ports[2]),
        ("price", "production", ports[3]),
    ] {
        assert!(
            text.contains(&format!(
                "serves `{environment}` at http://127.0.0.1:{port}"
            )) && text.contains(&format!("`{model}` v")),
            "{model}@{environment}: {text}"
        );
    }
    assert!(text.contains("promoted `price` v"), "{text}");
    assert!(
        text.contains("waits for approval: kiln promote churn --to production"),
        "{text}"
    );
    assert_eq!(text.matches("answered a prediction").count(), 2, "{text}");
}

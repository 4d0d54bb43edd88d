//! The workload of `bench/registry/run.sh`: fills a registry with many versions of one model
//! through `kiln_registry`'s public API (as green runs register them), and times listing them
//! in process.
//!
//! ```text
//! registry_fill fill DB MODEL N      N green runs of MODEL, each registered as the next version
//! registry_fill list DB MODEL RUNS   median time of listing every version of MODEL, and of the
//!                                    model summary (`kiln models list`'s query), over RUNS calls
//! ```

// A benchmark tool: it prints its figures.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_registry::{Lineage, NewRun, Registry, RunOutcome, ServableSummary, Status};
use serde_json::json;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["fill", db, model, n] => fill(Path::new(db), model, n.parse().context("N")?),
        ["list", db, model, runs] => list(Path::new(db), model, runs.parse().context("RUNS")?),
        _ => bail!("usage: registry_fill fill DB MODEL N | registry_fill list DB MODEL RUNS"),
    }
}

/// A profile the size of a real one: four numeric columns (quantiles, a 20-bin histogram) and
/// a categorical one.
fn profile(i: usize) -> serde_json::Value {
    let numeric = |name: &str| {
        let quantiles: Vec<_> = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
            .iter()
            .map(|q| json!({"q": q, "value": q * 7.0}))
            .collect();
        let edges: Vec<f64> = (0..=20).map(|e| e as f64 * 0.39).collect();
        let counts = [6; 20];
        json!({
            "name": name, "dtype": "float64", "count": 120, "missing": 0,
            "stats": {"kind": "numeric", "min": 0.1, "max": 7.9, "mean": 3.4 + i as f64 / 1e4,
                "std": 1.7, "quantiles": quantiles,
                "histogram": {"edges": edges, "counts": counts}},
        })
    };
    json!({
        "version": 1,
        "source": {"path": "data/processed/train.csv", "digest": "ab".repeat(32), "declared": true},
        "rows": 120,
        "columns": [
            numeric("sepal_length"), numeric("sepal_width"), numeric("petal_length"),
            numeric("petal_width"),
            {"name": "species", "dtype": "string", "count": 120, "missing": 0,
             "stats": {"kind": "categorical", "distinct": 3, "top": [
                {"value": "setosa", "count": 40}, {"value": "versicolor", "count": 40},
                {"value": "virginica", "count": 40}]}},
        ],
    })
}

/// A lineage the size of a real one: four params, four metrics, five deps, thirty packages,
/// a signature, an example and a training-data profile.
fn lineage(run_id: i64, i: usize) -> Lineage {
    let digest = |what: &str| kiln_store::Digest::of_bytes(what.as_bytes()).to_hex();
    Lineage {
        run_id,
        commit: Some(digest(&format!("commit {i}"))[..40].to_string()),
        dirty: false,
        params: json!({"train.C": i as f64 / 100.0, "train.max_iter": 500, "prepare.seed": 7, "prepare.test_size": 0.2}),
        metrics: vec![
            ("accuracy".into(), 0.9 + (i % 100) as f64 / 1000.0),
            ("f1".into(), 0.89),
            ("precision".into(), 0.91),
            ("recall".into(), 0.88),
        ],
        deps: BTreeMap::from_iter(
            [
                "src/train.py",
                "src/prepare.py",
                "data/raw/iris.csv",
                "data/processed",
                "params.yaml",
            ]
            .map(|path| (path.to_string(), Some(digest(&format!("{path} {i}"))))),
        ),
        environment: Some((0..30).map(|p| format!("package-{p}==1.{p}.0")).collect()),
        servable: Some(ServableSummary {
            passed: true,
            message: "loaded and predicted 5 rows of `data/processed/test.csv` in 212 ms"
                .to_string(),
        }),
        signature: Some(json!({
            "platform": "onnxruntime",
            "inputs": [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
            "feature_names": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        })),
        example: Some(json!({"dataframe_split": {
            "columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]],
        }})),
        profile: Some(profile(i)),
    }
}

fn fill(db: &Path, model: &str, n: usize) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let started = Instant::now();
    for i in 0..n {
        let run = registry.start_run(&NewRun {
            model: model.to_string(),
            params: json!({"train.C": i as f64 / 100.0}),
            overrides: json!({}),
        })?;
        registry.finish_run(run, &RunOutcome::bare(Status::Succeeded, None, None))?;
        let artifact = kiln_store::Digest::of_bytes(format!("artifact {i}").as_bytes()).to_hex();
        registry.register_version(model, &artifact, &lineage(run, i))?;
    }
    println!(
        "registered {n} versions of `{model}` in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn list(db: &Path, model: &str, runs: usize) -> Result<()> {
    let registry = Registry::open(db)?;
    let mut versions = Vec::new();
    let mut summaries = Vec::new();
    let mut count = 0;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        count = registry.model_versions(model)?.len();
        versions.push(started.elapsed());
        let started = Instant::now();
        registry.models()?;
        summaries.push(started.elapsed());
    }
    println!(
        "model_versions\t{count}\t{:.3}",
        median(versions).as_secs_f64() * 1000.0
    );
    println!("models\t-\t{:.3}", median(summaries).as_secs_f64() * 1000.0);
    Ok(())
}

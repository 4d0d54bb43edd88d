//! Run reports for people and CI systems: the gate table, JUnit XML, a Markdown summary for
//! pull-request comments, and JSON.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_pipeline::Outcome;
use kiln_pipeline::run::{ModelReport, RunReport};
use kiln_spec::gate::Verdict;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::{Value, json};

use crate::ui;

/// Each gate, the values it read, and its verdict.
pub fn gate_table(model: &ModelReport) -> String {
    let width = model
        .gates
        .iter()
        .map(|g| g.text.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "gates of `{}`:\n  {:<width$}  {:<8}  values\n",
        model.model, "gate", "verdict"
    );
    for gate in &model.gates {
        out.push_str(&format!(
            "  {:<width$}  {:<8}  {}\n",
            gate.text,
            gate.verdict.label(),
            gate.detail()
        ));
    }
    out.trim_end().to_string()
}

/// Metrics of `new` against `old`: (key, new, old) for every key in either.
pub fn metric_rows(
    new: &[(String, f64)],
    old: Option<&Vec<(String, f64)>>,
) -> Vec<(String, Option<f64>, Option<f64>)> {
    let find =
        |list: &[(String, f64)], key: &str| list.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    let keys: BTreeSet<&String> = new
        .iter()
        .map(|(k, _)| k)
        .chain(old.into_iter().flatten().map(|(k, _)| k))
        .collect();
    keys.into_iter()
        .map(|k| (k.clone(), find(new, k), old.and_then(|o| find(o, k))))
        .collect()
}

pub fn write_junit(path: &Path, result: &RunReport) -> std::io::Result<()> {
    let mut report = Report::new("kiln");
    for model in &result.models {
        let mut suite = TestSuite::new(format!("kiln.{}", model.model));
        for stage in &model.stages {
            let status = match &stage.outcome {
                Outcome::Failed(failure) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(format!("stage `{}` {}", stage.id, failure.describe()));
                    if let kiln_pipeline::run::Failure::Exit { log_tail, .. } = failure {
                        status.set_description(log_tail.clone());
                    }
                    status
                }
                Outcome::NotRun | Outcome::Cancelled => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(stage.outcome.label());
                    status
                }
                _ => TestCaseStatus::success(),
            };
            let mut case = TestCase::new(format!("stage {}", stage.id.stage), status);
            case.set_classname(format!("kiln.{}.stages", model.model));
            case.set_time(stage.duration);
            suite.add_test_case(case);
            for check in &stage.checks {
                let status = if check.passed {
                    TestCaseStatus::success()
                } else {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(check.message.clone());
                    status
                };
                let mut case = TestCase::new(
                    format!("check {} {}", check.file, check.rule_name()),
                    status,
                );
                case.set_classname(format!("kiln.{}.checks", model.model));
                suite.add_test_case(case);
            }
        }
        for gate in &model.gates {
            let status = match &gate.verdict {
                Verdict::Pass => TestCaseStatus::success(),
                Verdict::Skipped(reason) => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(reason.clone());
                    status
                }
                Verdict::Fail | Verdict::UnknownMetric(_) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(format!("gate `{}` failed: {}", gate.text, gate.detail()));
                    status
                }
            };
            let mut case = TestCase::new(format!("gate {}", gate.text), status);
            case.set_classname(format!("kiln.{}.gates", model.model));
            suite.add_test_case(case);
        }
        if let Some(servable) = &model.servable {
            let status = if servable.passed {
                TestCaseStatus::success()
            } else {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(format!(
                    "the artifact could not be served: {}",
                    servable.message
                ));
                if let Some(detail) = &servable.detail {
                    status.set_description(detail.clone());
                }
                status
            };
            let mut case = TestCase::new("servable check", status);
            case.set_classname(format!("kiln.{}.servable", model.model));
            case.set_time(std::time::Duration::from_millis(
                servable.duration_ms as u64,
            ));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    let xml = report.to_string().map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, xml.as_bytes())
}

/// A Markdown summary: verdict, metrics with deltas against the previous run, gates, stages.
pub fn write_markdown(path: &Path, result: &RunReport) -> std::io::Result<()> {
    let mut md = String::new();
    for model in &result.models {
        let icon = if model.status == kiln_registry::Status::Succeeded {
            "✅"
        } else {
            "❌"
        };
        let why = model
            .failure
            .filter(|_| model.status == kiln_registry::Status::Failed)
            .map_or(String::new(), |kind| format!(" ({})", kind.as_str()));
        md.push_str(&format!(
            "## {icon} Kiln: `{}` run {} {}{why}\n\n",
            model.model,
            model.run_id,
            model.status.as_str()
        ));
        if let Some(message) = &model.message {
            md.push_str(&format!("{message}\n\n"));
        }
        if !model.metrics.is_empty() {
            let previous = model.previous.as_ref();
            let header = previous.map_or("previous".to_string(), |(id, _)| format!("run {id}"));
            md.push_str(&format!(
                "| metric | this run | {header} | change |\n|---|---:|---:|---:|\n"
            ));
            for (key, new, old) in metric_rows(&model.metrics, previous.map(|(_, m)| m)) {
                let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
                let delta = new
                    .zip(old)
                    .map_or("—".to_string(), |(n, o)| format!("{:+.4}", n - o));
                md.push_str(&format!(
                    "| `{key}` | {} | {} | {delta} |\n",
                    show(new),
                    show(old)
                ));
            }
            md.push('\n');
        }
        if !model.gates.is_empty() {
            md.push_str("| gate | verdict | values |\n|---|---|---|\n");
            for gate in &model.gates {
                let verdict = match gate.verdict {
                    Verdict::Pass => "✅ pass",
                    Verdict::Fail => "❌ fail",
                    Verdict::Skipped(_) => "⏭ skipped",
                    Verdict::UnknownMetric(_) => "❌ error",
                };
                md.push_str(&format!(
                    "| `{}` | {verdict} | {} |\n",
                    gate.text,
                    gate.detail()
                ));
            }
            md.push('\n');
        }
        if let Some(servable) = &model.servable {
            let verdict = if servable.passed { "✅" } else { "❌" };
            md.push_str(&format!(
                "Servable check: {verdict} {}\n\n",
                servable.message
            ));
        }
        md.push_str("<details><summary>Stages</summary>\n\n| stage | outcome | duration |\n|---|---|---:|\n");
        for stage in &model.stages {
            md.push_str(&format!(
                "| `{}` | {} | {} |\n",
                stage.id.stage,
                stage.outcome.label(),
                ui::duration(stage.duration)
            ));
        }
        md.push_str("\n</details>\n\n");
    }
    crate::files::write_atomically(path, md.as_bytes())
}

pub fn run_json(result: &RunReport) -> Value {
    let models: Vec<Value> = result
        .models
        .iter()
        .map(|model| {
            json!({
                "model": model.model,
                "run": model.run_id,
                "status": model.status,
                "failure": model.failure,
                "message": model.message,
                "stages": model.stages.iter().map(|s| json!({
                    "stage": s.id.stage,
                    "outcome": s.outcome.recorded(),
                    "duration_ms": s.duration.as_millis() as u64,
                    "cache_key": s.key.map(|k| k.to_hex()),
                    "log": s.log,
                    "outs": s.outs,
                    "checks": s.checks,
                })).collect::<Vec<_>>(),
                "metrics": model.metrics.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "gates": model.gates.iter().map(|g| json!({
                    "gate": g.text,
                    "verdict": g.recorded_verdict(),
                    "values": g.values.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "detail": g.detail(),
                })).collect::<Vec<_>>(),
                "servable": model.servable,
                "version": model.version.map(|v| v.version()),
            })
        })
        .collect();
    json!({
        "duration_ms": result.duration.as_millis() as u64,
        "failure": result.failure,
        "models": models,
    })
}

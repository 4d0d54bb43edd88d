//! After the stages: the model's metrics, read from its metrics files, and its gates judged
//! against them, against the previous green run's metrics for `previous.NAME`, and against the
//! registered version an alias holds for `production.NAME` and `staging.NAME` (a gate on an
//! alias no version holds yet is skipped, saying so, and does not fail the run).

use std::collections::BTreeMap;
use std::path::Path;

use std::collections::HashMap;

use kiln_registry::{GateVerdict, Version};
use kiln_spec::Model;
use kiln_spec::gate::{Lookup, Verdict, is_reference};
use kiln_spec::values::read_flat;

/// One gate's verdict with the values it read.
#[derive(Debug, Clone)]
pub struct GateReport {
    pub text: String,
    pub verdict: Verdict,
    pub values: Vec<(String, Option<f64>)>,
}

impl GateReport {
    /// The verdict as the run records it.
    pub fn recorded_verdict(&self) -> GateVerdict {
        match self.verdict {
            Verdict::Pass => GateVerdict::Pass,
            Verdict::Fail => GateVerdict::Fail,
            Verdict::Skipped(_) => GateVerdict::Skipped,
            Verdict::UnknownMetric(_) => GateVerdict::Error,
        }
    }

    pub fn detail(&self) -> String {
        match &self.verdict {
            Verdict::Skipped(reason) => reason.clone(),
            Verdict::UnknownMetric(name) => match name.split_once('.') {
                Some(("previous", metric)) if is_reference(name) => {
                    format!("the previous green run has no metric `{metric}`")
                }
                Some((alias, metric)) if is_reference(name) => {
                    format!("the version in `{alias}` has no metric `{metric}`")
                }
                _ => format!("no metric `{name}` in this run"),
            },
            _ => self
                .values
                .iter()
                .map(|(name, value)| match value {
                    Some(v) => format!("{name}={v}"),
                    None => format!("{name}=?"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Reads the model's metrics files: numeric leaves, flattened with dots. A file that cannot
/// be read or parsed is reported (the second list), not silently skipped: a gate on it would
/// otherwise only say that the metric is missing.
pub(crate) fn read_metrics(root: &Path, model: &Model) -> (Vec<(String, f64)>, Vec<String>) {
    let mut metrics = BTreeMap::new();
    let mut problems = Vec::new();
    for stage in &model.stages {
        for file in &stage.metrics {
            match read_flat(&file.to_path(root)) {
                Ok(values) => {
                    for (key, value) in values {
                        if let Some(number) = value.as_number() {
                            metrics.insert(key, number);
                        }
                    }
                }
                Err(error) => problems.push(format!("metrics of stage `{}`: {error}", stage.id)),
            }
        }
    }
    (metrics.into_iter().collect(), problems)
}

/// The registered version an alias holds, with its metrics, for gates that compare with it.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasedVersion {
    pub version: Version,
    pub metrics: Vec<(String, f64)>,
}

/// Judges the model's gates. `aliased` holds, for each alias the gates name, the version it
/// holds (`None`: no version yet).
pub(crate) fn evaluate_gates(
    model: &Model,
    metrics: &[(String, f64)],
    previous: Option<&Vec<(String, f64)>>,
    aliased: &HashMap<String, Option<AliasedVersion>>,
) -> Vec<GateReport> {
    let lookup = |name: &str| -> Lookup {
        if let Some(metric) = name.strip_prefix("previous.") {
            return match previous {
                None => Lookup::Unavailable(format!(
                    "model `{}` has no previous green run with metrics",
                    model.name
                )),
                Some(values) => values
                    .iter()
                    .find(|(k, _)| k == metric)
                    .map_or(Lookup::Unknown, |(_, v)| Lookup::Value(*v)),
            };
        }
        if is_reference(name)
            && let Some((alias, metric)) = name.split_once('.')
        {
            return match aliased.get(alias) {
                Some(Some(held)) => held
                    .metrics
                    .iter()
                    .find(|(k, _)| k == metric)
                    .map_or(Lookup::Unknown, |(_, v)| Lookup::Value(*v)),
                _ => Lookup::Unavailable(format!(
                    "no version of model `{}` is in `{alias}` yet",
                    model.name
                )),
            };
        }
        metrics
            .iter()
            .find(|(k, _)| k == name)
            .map_or(Lookup::Unknown, |(_, v)| Lookup::Value(*v))
    };
    model
        .gates
        .iter()
        .map(|gate| GateReport {
            text: gate.text.clone(),
            verdict: gate.expr.verdict(&lookup),
            values: gate
                .expr
                .names()
                .into_iter()
                .map(|name| {
                    let value = match lookup(name) {
                        Lookup::Value(v) => Some(v),
                        _ => None,
                    };
                    (name.to_string(), value)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_metric_names_where_it_was_looked_for() {
        let detail = |name: &str| {
            GateReport {
                text: String::new(),
                verdict: Verdict::UnknownMetric(name.to_string()),
                values: Vec::new(),
            }
            .detail()
        };
        assert_eq!(detail("f1"), "no metric `f1` in this run");
        assert_eq!(
            detail("production.f1"),
            "the version in `production` has no metric `f1`"
        );
        assert_eq!(
            detail("previous.f1"),
            "the previous green run has no metric `f1`"
        );
    }
}

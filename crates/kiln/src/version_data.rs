//! What a registered version carries besides its lineage, as `kiln models show` and `diff` put
//! it: the model's signature (a table of inputs and outputs), the example it answered (its
//! size), and the profile of its training data (a line per column; per-column changes between
//! two versions).

use kiln_profile::{ColumnProfile, ColumnStats, Profile};
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::printer::outln;

/// Prints a version's signature, example and training-data profile (text form of `show`).
pub fn show(
    signature: Option<&Value>,
    example: Option<&Value>,
    profile: Option<&Value>,
) -> Result<()> {
    match signature {
        Some(signature) => print_signature(signature)?,
        None => outln!("\nsignature: (none: no servable check read it)"),
    }
    match example {
        Some(example) => outln!(
            "\nexample: {} ({}, {} bytes)",
            rows_text(example_rows(example)),
            example_format(example),
            example.to_string().len()
        ),
        None => outln!("\nexample: (none)"),
    }
    match profile.map(read_profile) {
        Some(Ok(profile)) => print_profile(&profile)?,
        Some(Err(error)) => outln!("\ntraining data: (a profile Kiln cannot read: {error})"),
        None => outln!(
            "\ntraining data: (no profile: none of the model's data is CSV, or it could not be read at registration; declare `training_data:` in kiln.yaml)"
        ),
    }
    Ok(())
}

fn read_profile(value: &Value) -> serde_json::Result<Profile> {
    serde_json::from_value(value.clone())
}

fn print_signature(signature: &Value) -> Result<()> {
    let platform = signature["platform"].as_str().unwrap_or("?");
    outln!("\nsignature ({platform}):");
    let mut rows: Vec<[String; 4]> = Vec::new();
    let specs = |key: &str| signature[key].as_array().cloned().unwrap_or_default();
    if signature["inputs"].is_null() {
        rows.push([
            "input".into(),
            "(any: the model declares none)".into(),
            String::new(),
            String::new(),
        ]);
    }
    for (role, key) in [("input", "inputs"), ("output", "outputs")] {
        for spec in specs(key) {
            let shape = spec["shape"]
                .as_array()
                .map(|dims| {
                    let dims: Vec<String> = dims
                        .iter()
                        .map(|d| match d.as_i64() {
                            Some(d) if d < 0 => "?".to_string(),
                            _ => d.to_string(),
                        })
                        .collect();
                    format!("[{}]", dims.join(", "))
                })
                .unwrap_or_default();
            rows.push([
                role.to_string(),
                spec["name"].as_str().unwrap_or("?").to_string(),
                spec["datatype"].as_str().unwrap_or("?").to_string(),
                shape,
            ]);
        }
    }
    let width = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(4);
    outln!("  {:<6}  {:<width$}  {:<8}  shape", "", "name", "datatype");
    for [role, name, datatype, shape] in rows {
        outln!("  {role:<6}  {name:<width$}  {datatype:<8}  {shape}");
    }
    if let Some(names) = signature["feature_names"].as_array() {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        outln!("  feature names: {}", names.join(", "));
    }
    if let Some(labels) = signature["class_labels"].as_array() {
        let labels: Vec<String> = labels.iter().map(Value::to_string).collect();
        outln!("  class labels: {}", labels.join(", "));
    }
    Ok(())
}

/// Rows in a scoring body (MLflow's formats, or a v2 request), when it says.
fn example_rows(example: &Value) -> Option<usize> {
    let object = example.as_object()?;
    let (key, value) = object.iter().next()?;
    match (key.as_str(), value) {
        ("dataframe_split", split) => split["data"].as_array().map(Vec::len),
        ("inputs", Value::Array(inputs))
            if inputs.first().is_some_and(|i| i.get("shape").is_some()) =>
        {
            inputs[0]["shape"][0].as_u64().map(|n| n as usize)
        }
        ("inputs", Value::Object(named)) => named.values().next()?.as_array().map(Vec::len),
        (_, Value::Array(rows)) => Some(rows.len()),
        _ => None,
    }
}

fn example_format(example: &Value) -> &'static str {
    let Some(key) = example.as_object().and_then(|o| o.keys().next()) else {
        return "unknown format";
    };
    match key.as_str() {
        "dataframe_split" => "MLflow dataframe_split",
        "dataframe_records" => "MLflow dataframe_records",
        "instances" => "MLflow instances",
        "inputs" if example["inputs"][0].get("datatype").is_some() => "v2 request, generated",
        "inputs" => "MLflow inputs",
        _ => "unknown format",
    }
}

fn rows_text(rows: Option<usize>) -> String {
    match rows {
        Some(1) => "1 row".to_string(),
        Some(n) => format!("{n} rows"),
        None => "rows unknown".to_string(),
    }
}

fn print_profile(profile: &Profile) -> Result<()> {
    let source = match &profile.source {
        Some(source) if source.declared => format!("`{}`", source.path),
        Some(source) => format!(
            "`{}` (found among the model's data; declare `training_data:` to choose)",
            source.path
        ),
        None => "(file not recorded)".to_string(),
    };
    outln!(
        "\ntraining data: {source}, {} rows, {} columns",
        profile.rows,
        profile.columns.len()
    );
    let width = profile
        .columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for column in &profile.columns {
        outln!(
            "  {:<width$}  {:<7}  {}",
            column.name,
            column.dtype.as_str(),
            column_line(column)
        );
    }
    Ok(())
}

/// A short number: 4 significant digits, or an integer as it is.
fn short(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value}")
    } else if value != 0.0 && (value.abs() >= 1e6 || value.abs() < 1e-3) {
        format!("{value:.3e}")
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or("-".to_string(), short)
}

fn column_line(column: &ColumnProfile) -> String {
    let missing = if column.missing == 0 {
        String::new()
    } else {
        format!(
            ", {} missing ({:.1}%)",
            column.missing,
            column.missing_fraction() * 100.0
        )
    };
    match &column.stats {
        ColumnStats::Numeric(stats) => format!(
            "count {}{missing}, mean {}, std {}, min {}, median {}, max {}",
            column.count,
            optional(stats.mean),
            optional(stats.std),
            optional(stats.min),
            optional(stats.quantile(0.5)),
            optional(stats.max),
        ),
        ColumnStats::Categorical(stats) => {
            let top: Vec<String> = stats
                .top
                .iter()
                .take(3)
                .map(|c| format!("{} {}", c.value, c.count))
                .collect();
            let more = if stats.distinct as usize > top.len() {
                ", ..."
            } else {
                ""
            };
            format!(
                "count {}{missing}, {} distinct: {}{more}",
                column.count,
                stats.distinct,
                top.join(", ")
            )
        }
    }
}

/// How one column changed between two profiles.
#[derive(Debug, Serialize)]
pub struct ColumnChange {
    pub column: String,
    /// `None` on the side that lacks the column.
    pub dtype: (Option<&'static str>, Option<&'static str>),
    pub count: (Option<u64>, Option<u64>),
    pub missing: (Option<u64>, Option<u64>),
    /// Fraction of rows missing, `b - a`.
    pub missing_fraction_delta: Option<f64>,
    pub mean: (Option<f64>, Option<f64>),
    pub mean_delta: Option<f64>,
    pub std: (Option<f64>, Option<f64>),
    pub distinct: (Option<u64>, Option<u64>),
}

/// The profiles of two versions compared: rows, and each column of either.
#[derive(Debug, Serialize)]
pub struct ProfileDiff {
    pub source: (Option<String>, Option<String>),
    /// Both profiles describe files of the same content (by digest).
    pub same_content: bool,
    pub rows: (u64, u64),
    pub columns: Vec<ColumnChange>,
}

/// Compares two versions' profiles, when both have one Kiln can read.
pub fn profile_diff(a: Option<&Value>, b: Option<&Value>) -> Option<ProfileDiff> {
    let (a, b) = (read_profile(a?).ok()?, read_profile(b?).ok()?);
    let mut names: Vec<&str> = a.columns.iter().map(|c| c.name.as_str()).collect();
    for column in &b.columns {
        if !names.contains(&column.name.as_str()) {
            names.push(&column.name);
        }
    }
    let columns = names
        .into_iter()
        .map(|name| {
            let (ca, cb) = (a.column(name), b.column(name));
            let pair = |f: &dyn Fn(&ColumnProfile) -> Option<f64>| (ca.and_then(f), cb.and_then(f));
            let mean = pair(&|c| c.numeric().and_then(|s| s.mean));
            let fraction = pair(&|c| Some(c.missing_fraction()));
            ColumnChange {
                column: name.to_string(),
                dtype: (ca.map(|c| c.dtype.as_str()), cb.map(|c| c.dtype.as_str())),
                count: (ca.map(|c| c.count), cb.map(|c| c.count)),
                missing: (ca.map(|c| c.missing), cb.map(|c| c.missing)),
                missing_fraction_delta: fraction.0.zip(fraction.1).map(|(x, y)| y - x),
                mean,
                mean_delta: mean.0.zip(mean.1).map(|(x, y)| y - x),
                std: pair(&|c| c.numeric().and_then(|s| s.std)),
                distinct: (
                    ca.and_then(|c| c.categorical()).map(|s| s.distinct),
                    cb.and_then(|c| c.categorical()).map(|s| s.distinct),
                ),
            }
        })
        .collect();
    let digest = |p: &Profile| p.source.as_ref().and_then(|s| s.digest.clone());
    let same_content = digest(&a).is_some() && digest(&a) == digest(&b);
    Some(ProfileDiff {
        same_content,
        source: (a.source.map(|s| s.path), b.source.map(|s| s.path)),
        rows: (a.rows, b.rows),
        columns,
    })
}

/// Prints a profile comparison (text form of `diff`).
pub fn print_profile_diff(diff: Option<&ProfileDiff>) -> Result<()> {
    let Some(diff) = diff else {
        outln!("\ntraining data: (not compared: both versions need a profile)");
        return Ok(());
    };
    if diff.same_content {
        let path = diff.source.1.as_deref().unwrap_or("?");
        outln!("\ntraining data: unchanged (`{path}`, same content)");
        return Ok(());
    }
    outln!("\ntraining data: {} -> {} rows", diff.rows.0, diff.rows.1);
    let width = diff
        .columns
        .iter()
        .map(|c| c.column.len())
        .max()
        .unwrap_or(0);
    for change in &diff.columns {
        let line = match change.dtype {
            (None, Some(dtype)) => format!("added ({dtype})"),
            (Some(dtype), None) => format!("removed (was {dtype})"),
            (a, b) => {
                let mut parts = Vec::new();
                if a != b {
                    parts.push(format!("type {} -> {}", a.unwrap_or("-"), b.unwrap_or("-")));
                }
                if let (Some(x), Some(y)) = change.missing {
                    let delta = change.missing_fraction_delta.unwrap_or(0.0) * 100.0;
                    parts.push(format!("missing {x} -> {y} ({delta:+.1} pts)"));
                }
                if let (Some(x), Some(y)) = change.mean {
                    let delta = change.mean_delta.unwrap_or(0.0);
                    parts.push(format!(
                        "mean {} -> {} ({}{})",
                        short(x),
                        short(y),
                        if delta >= 0.0 { "+" } else { "" },
                        short(delta)
                    ));
                }
                if let (Some(x), Some(y)) = change.std {
                    parts.push(format!("std {} -> {}", short(x), short(y)));
                }
                if let (Some(x), Some(y)) = change.distinct {
                    parts.push(format!("distinct {x} -> {y}"));
                }
                parts.join(", ")
            }
        };
        outln!("  {:<width$}  {line}", change.column);
    }
    Ok(())
}

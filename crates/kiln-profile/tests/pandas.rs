//! Profiles checked against pandas and numpy: a generated CSV file is profiled by Kiln and
//! summarised by the test Python (`KILN_TEST_PYTHON`, else `python3`; pandas required), and
//! every number is compared within a relative tolerance. Also the JSON form, pinned.

use std::path::Path;
use std::process::Command;

use kiln_profile::{ColumnStats, DataType, Error, QUANTILES, profile_csv};
use serde_json::{Value, json};

const PANDAS_SUMMARY: &str = r#"
import json, sys
import numpy as np
import pandas as pd

quantiles = json.loads(sys.argv[2])
frame = pd.read_csv(sys.argv[1])
columns = []
for name in frame.columns:
    s = frame[name]
    column = {"name": name, "dtype": str(s.dtype), "count": int(s.count()),
              "missing": int(s.isna().sum())}
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        values = s.dropna().to_numpy(dtype=float)
        if len(values):
            column["min"] = float(values.min())
            column["max"] = float(values.max())
            column["mean"] = float(s.mean())
            column["std"] = float(s.std()) if len(values) > 1 else None
            column["quantiles"] = [float(q) for q in np.quantile(values, quantiles)]
            counts, edges = np.histogram(values[np.isfinite(values)], bins=20)
            column["histogram"] = {"counts": [int(c) for c in counts],
                                   "edges": [float(e) for e in edges]}
    else:
        present = s.dropna().astype(str)
        column["distinct"] = int(present.nunique())
        column["counts"] = {str(k): int(v) for k, v in present.value_counts().items()}
    columns.append(column)
print(json.dumps({"rows": len(frame), "columns": columns}))
"#;

fn python() -> String {
    std::env::var("KILN_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

fn pandas_summary(path: &Path) -> Value {
    let output = Command::new(python())
        .args(["-c", PANDAS_SUMMARY])
        .arg(path)
        .arg(serde_json::to_string(&QUANTILES).unwrap())
        .output()
        .expect("run the test python (set KILN_TEST_PYTHON)");
    assert!(
        output.status.success(),
        "pandas failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A small deterministic generator (no dependency, same file on every machine).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Columns of every kind pandas tells apart, with its missing markers and a short row.
fn generated_csv(rows: usize) -> String {
    let mut random = Lcg(42);
    let mut text = String::from(
        "id,age,income,ratio,flag,species,maybe_flag,mixed,code,empty,constant,skewed,flag_then_word\n",
    );
    let species = ["setosa", "versicolor", "virginica", "hybrid"];
    let missing = ["", "NA", "NaN", "null", "N/A", "None", "nan", "<NA>"];
    for row in 0..rows {
        let r = random.next();
        let age = (18.0 + r * 60.0) as i64;
        let income = if row % 17 == 3 {
            missing[row % missing.len()].to_string()
        } else {
            format!("{}", (20_000.0 + random.next() * 80_000.0) as i64)
        };
        let ratio = if row % 23 == 0 {
            "".to_string()
        } else {
            format!("{:.6}", random.next() * 2.0 - 1.0)
        };
        let kind = species[((random.next() * random.next()) * 4.0) as usize];
        let flag = if random.next() < 0.3 { "True" } else { "false" };
        let maybe_flag = if row % 50 == 7 { "" } else { flag };
        // Numbers first, then a word: the earlier numbers count as text too.
        let mixed = if row == rows * 2 / 3 {
            "n/a-ish".to_string()
        } else {
            format!("{}", row % 7)
        };
        let code = format!("C{:03}", (random.next() * 300.0) as u32);
        let skewed = format!("{:e}", (random.next() * 12.0).exp());
        // Booleans, then a word: the earlier booleans count as text, spelled as written.
        let flag_then_word = if row == rows * 3 / 4 { "unknown" } else { flag };
        if row == rows / 2 {
            // A short row: the missing fields read as missing.
            text.push_str(&format!("{row},{age},{income},{ratio},{flag}\n"));
            continue;
        }
        text.push_str(&format!(
            "{row},{age},{income},{ratio},{flag},{kind},{maybe_flag},{mixed},{code},,7,{skewed},{flag_then_word}\n"
        ));
    }
    text
}

fn close(kiln: f64, pandas: &Value, what: &str) {
    let pandas = pandas
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {pandas}"));
    let tolerance = 1e-9 * pandas.abs().max(1.0);
    assert!(
        (kiln - pandas).abs() <= tolerance,
        "{what}: kiln {kiln}, pandas {pandas}"
    );
}

#[test]
fn profiles_match_pandas_and_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.csv");
    std::fs::write(&path, generated_csv(20_000)).unwrap();
    let profile = profile_csv(&path).unwrap();
    let expected = pandas_summary(&path);
    assert_eq!(profile.rows, expected["rows"].as_u64().unwrap());
    let expected = expected["columns"].as_array().unwrap();
    assert_eq!(profile.columns.len(), expected.len());
    for (column, pandas) in profile.columns.iter().zip(expected) {
        let name = &column.name;
        assert_eq!(name, pandas["name"].as_str().unwrap());
        let dtype = match pandas["dtype"].as_str().unwrap() {
            "object" | "str" | "string" => DataType::String,
            "int64" => DataType::Int64,
            "float64" => DataType::Float64,
            "bool" => DataType::Bool,
            other => panic!("{name}: pandas dtype {other}"),
        };
        assert_eq!(column.dtype, dtype, "{name}: dtype");
        assert_eq!(column.count, pandas["count"].as_u64().unwrap(), "{name}");
        assert_eq!(
            column.missing,
            pandas["missing"].as_u64().unwrap(),
            "{name}"
        );
        match &column.stats {
            ColumnStats::Numeric(stats) => {
                if pandas.get("min").is_none() {
                    assert_eq!(stats.min, None, "{name}");
                    assert!(stats.histogram.is_none() && stats.quantiles.is_empty());
                    continue;
                }
                close(stats.min.unwrap(), &pandas["min"], &format!("{name} min"));
                close(stats.max.unwrap(), &pandas["max"], &format!("{name} max"));
                close(
                    stats.mean.unwrap(),
                    &pandas["mean"],
                    &format!("{name} mean"),
                );
                close(stats.std.unwrap(), &pandas["std"], &format!("{name} std"));
                for (quantile, pandas) in stats
                    .quantiles
                    .iter()
                    .zip(pandas["quantiles"].as_array().unwrap())
                {
                    close(quantile.value, pandas, &format!("{name} q{}", quantile.q));
                }
                let histogram = stats.histogram.as_ref().unwrap();
                let counts: Vec<u64> = pandas["histogram"]["counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect();
                assert_eq!(histogram.counts, counts, "{name} histogram");
                for (edge, pandas) in histogram
                    .edges
                    .iter()
                    .zip(pandas["histogram"]["edges"].as_array().unwrap())
                {
                    close(*edge, pandas, &format!("{name} edge"));
                }
            }
            ColumnStats::Categorical(stats) => {
                assert_eq!(
                    stats.distinct,
                    pandas["distinct"].as_u64().unwrap(),
                    "{name}"
                );
                let counts = pandas["counts"].as_object().unwrap();
                for category in &stats.top {
                    assert_eq!(
                        Some(category.count),
                        counts.get(&category.value).and_then(Value::as_u64),
                        "{name}: `{}`",
                        category.value
                    );
                }
                let mut expected: Vec<u64> = counts.values().map(|c| c.as_u64().unwrap()).collect();
                expected.sort_unstable_by(|a, b| b.cmp(a));
                expected.truncate(stats.top.len());
                let top: Vec<u64> = stats.top.iter().map(|c| c.count).collect();
                assert_eq!(top, expected, "{name}: top counts");
            }
        }
    }
    // The kinds the generated columns were made to have.
    let dtypes: Vec<&str> = profile.columns.iter().map(|c| c.dtype.as_str()).collect();
    assert_eq!(
        dtypes,
        [
            "int64", "int64", "float64", "float64", "bool", "string", "string", "string", "string",
            "float64", "float64", "float64", "string"
        ]
    );
}

#[test]
fn the_json_form_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.csv");
    std::fs::write(&path, "x,kind\n1,a\n2,b\n4,a\n,a\n").unwrap();
    let profile = profile_csv(&path).unwrap();
    let mut value = serde_json::to_value(&profile).unwrap();
    // Pin the shape with a 2-bin excerpt of the 20-bin histogram.
    let histogram = &mut value["columns"][0]["stats"]["histogram"];
    assert_eq!(histogram["counts"].as_array().unwrap().len(), 20);
    *histogram = json!("...");
    assert_eq!(
        value,
        json!({
            "version": 1,
            "rows": 4,
            "columns": [
                {"name": "x", "dtype": "float64", "count": 3, "missing": 1,
                 "stats": {"kind": "numeric", "min": 1.0, "max": 4.0,
                           "mean": 7.0 / 3.0, "std": 1.5275252316519468,
                           "quantiles": [
                               {"q": 0.01, "value": 1.02}, {"q": 0.05, "value": 1.1},
                               {"q": 0.25, "value": 1.5}, {"q": 0.5, "value": 2.0},
                               {"q": 0.75, "value": 3.0}, {"q": 0.95, "value": 3.8},
                               {"q": 0.99, "value": 3.96}],
                           "histogram": "..."}},
                {"name": "kind", "dtype": "string", "count": 4, "missing": 0,
                 "stats": {"kind": "categorical", "distinct": 2,
                           "top": [{"value": "a", "count": 3}, {"value": "b", "count": 1}]}}
            ]
        })
    );
    let back: kiln_profile::Profile =
        serde_json::from_value(serde_json::to_value(&profile).unwrap()).unwrap();
    assert_eq!(back, profile);
}

#[test]
fn files_that_are_not_csv_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.csv");
    assert!(matches!(profile_csv(&missing), Err(Error::Read { .. })));
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(profile_csv(&empty), Err(Error::NoHeader { .. })));
    let ragged = dir.path().join("ragged.csv");
    std::fs::write(&ragged, "a,b\n1,2\n1,2,3\n").unwrap();
    let error = profile_csv(&ragged).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "row 3 of `{}` has 3 fields, its header has 2",
            ragged.display()
        )
    );
    assert!(error.hint().is_some());
}

#[test]
fn a_header_without_rows_profiles_as_empty_text_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("header.csv");
    std::fs::write(&path, "a,b\n").unwrap();
    let profile = profile_csv(&path).unwrap();
    assert_eq!(profile.rows, 0);
    assert!(
        profile
            .columns
            .iter()
            .all(|c| c.dtype == DataType::String && c.count == 0)
    );
}

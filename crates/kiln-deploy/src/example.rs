//! The example input a green run's model must answer before it is published: the file named by
//! `example:` in kiln.yaml, else the first rows of a CSV file of the model's data — the files its
//! data checks read first, then CSV files its stages write (a name with `train` first), then CSV
//! files its stages read (`kiln_pipeline::training_data::model_data_csv`). Rows become an MLflow scoring body (`dataframe_split`), so the check
//! goes through the same decoding and signature validation as a client's request.

use std::path::{Path, PathBuf};

use kiln_spec::{Model, Project};
use serde_json::{Map, Value, json};

use crate::Error;
use crate::error::ExampleError;

/// Rows taken from an example file.
pub const EXAMPLE_ROWS: usize = 5;

/// An example input and where it came from.
#[derive(Debug, Clone)]
pub struct Example {
    /// An MLflow scoring body.
    pub body: Value,
    pub path: PathBuf,
    /// The path as the user knows it: relative to the project root.
    pub shown: String,
    /// Named by `example:` (rather than found among the model's data).
    pub declared: bool,
}

/// The example input for `model`, or `None` when it declares none and none of its data is CSV.
pub fn example_input(project: &Project, model: &Model) -> Result<Option<Example>, Error> {
    let (path, declared) = match &model.example {
        Some(example) => (example.to_path(&project.root), true),
        None => match kiln_pipeline::training_data::model_data_csv(project, model) {
            Some(path) => (path, false),
            None => return Ok(None),
        },
    };
    let body = read_example(&path).map_err(|source| Error::Example {
        path: path.clone(),
        source,
    })?;
    let shown = path
        .strip_prefix(&project.root)
        .unwrap_or(&path)
        .display()
        .to_string();
    Ok(Some(Example {
        body,
        path,
        shown,
        declared,
    }))
}

/// Reads a CSV file (header row, then data) or a JSON file (a list of records, or an MLflow
/// scoring body) into a `dataframe_split` body of at most [`EXAMPLE_ROWS`] rows.
pub fn read_example(path: &Path) -> Result<Value, ExampleError> {
    if path.extension().is_some_and(|e| e == "json") {
        let value: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        return from_json(value);
    }
    let mut reader = csv::Reader::from_path(path)?;
    let columns: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    let mut data = Vec::new();
    for record in reader.records().take(EXAMPLE_ROWS) {
        data.push(Value::Array(record?.iter().map(cell).collect()));
    }
    if data.is_empty() {
        return Err(ExampleError::Shape("it has a header but no rows".into()));
    }
    Ok(json!({"dataframe_split": {"columns": columns, "data": data}}))
}

/// A CSV cell typed as a reader of the file would type it: integers, floats, empty as null,
/// anything else as text.
fn cell(text: &str) -> Value {
    let text = text.trim();
    if text.is_empty() {
        return Value::Null;
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Value::from(integer);
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Value::from(number),
        _ => Value::String(text.to_string()),
    }
}

fn from_json(value: Value) -> Result<Value, ExampleError> {
    match value {
        Value::Array(records) => {
            let mut columns: Vec<String> = Vec::new();
            for record in &records {
                let Value::Object(fields) = record else {
                    return Err(ExampleError::Shape(
                        "a JSON example is a list of records (objects), or an MLflow scoring body"
                            .into(),
                    ));
                };
                for key in fields.keys() {
                    if !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
            let data: Vec<Value> = records
                .iter()
                .take(EXAMPLE_ROWS)
                .map(|record| {
                    Value::Array(
                        columns
                            .iter()
                            .map(|c| record.get(c).cloned().unwrap_or(Value::Null))
                            .collect(),
                    )
                })
                .collect();
            if data.is_empty() {
                return Err(ExampleError::Shape("the list of records is empty".into()));
            }
            Ok(json!({"dataframe_split": {"columns": columns, "data": data}}))
        }
        Value::Object(body) if is_scoring_body(&body) => Ok(first_rows(Value::Object(body))),
        _ => Err(ExampleError::Shape(
            "a JSON example is a list of records, or an MLflow scoring body (`dataframe_split`, `dataframe_records`, `instances` or `inputs`)".into(),
        )),
    }
}

/// A scoring body cut to its first [`EXAMPLE_ROWS`] rows (records, instances, or rows of a
/// split or of each named input), so that the example a version keeps stays small.
fn first_rows(mut body: Value) -> Value {
    let rows = match body.as_object_mut().and_then(|b| b.iter_mut().next()) {
        Some((key, value)) if key == "dataframe_split" => value.get_mut("data"),
        Some((_, value)) => Some(value),
        None => None,
    };
    match rows {
        Some(Value::Array(rows)) => rows.truncate(EXAMPLE_ROWS),
        Some(Value::Object(inputs)) => {
            for rows in inputs.values_mut() {
                if let Value::Array(rows) = rows {
                    rows.truncate(EXAMPLE_ROWS);
                }
            }
        }
        _ => {}
    }
    body
}

fn is_scoring_body(body: &Map<String, Value>) -> bool {
    body.len() == 1
        && [
            "dataframe_split",
            "dataframe_records",
            "instances",
            "inputs",
        ]
        .iter()
        .any(|k| body.contains_key(*k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_a_typed_dataframe_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        let mut text = String::from("x,n,label,gap\n");
        for i in 0..8 {
            text.push_str(&format!("{i}.5,{i},cat,\n"));
        }
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            read_example(&path).unwrap(),
            json!({"dataframe_split": {
                "columns": ["x", "n", "label", "gap"],
                "data": [[0.5, 0, "cat", null], [1.5, 1, "cat", null], [2.5, 2, "cat", null],
                         [3.5, 3, "cat", null], [4.5, 4, "cat", null]]
            }})
        );
    }

    #[test]
    fn json_records_and_scoring_bodies_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records.json");
        std::fs::write(&records, r#"[{"a": 1, "b": "x"}, {"b": "y", "c": 2.5}]"#).unwrap();
        assert_eq!(
            read_example(&records).unwrap(),
            json!({"dataframe_split": {"columns": ["a", "b", "c"],
                   "data": [[1, "x", null], [null, "y", 2.5]]}})
        );
        let body = dir.path().join("body.json");
        std::fs::write(&body, r#"{"inputs": [[1, 2]]}"#).unwrap();
        assert_eq!(read_example(&body).unwrap(), json!({"inputs": [[1, 2]]}));
        // A version keeps its example: a long body is cut to its first rows.
        let rows: Vec<Value> = (0..100).map(|i| json!([i])).collect();
        std::fs::write(
            &body,
            json!({"dataframe_split": {"columns": ["a"], "data": rows}}).to_string(),
        )
        .unwrap();
        assert_eq!(
            read_example(&body).unwrap(),
            json!({"dataframe_split": {"columns": ["a"], "data": [[0], [1], [2], [3], [4]]}})
        );
        std::fs::write(&body, json!({"inputs": {"x": rows}}).to_string()).unwrap();
        assert_eq!(
            read_example(&body).unwrap(),
            json!({"inputs": {"x": [[0], [1], [2], [3], [4]]}})
        );
    }

    #[test]
    fn unusable_examples_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "a,b\n").unwrap();
        assert!(
            read_example(&empty)
                .unwrap_err()
                .to_string()
                .contains("no rows")
        );
        let scalar = dir.path().join("scalar.json");
        std::fs::write(&scalar, "3").unwrap();
        assert!(
            read_example(&scalar)
                .unwrap_err()
                .to_string()
                .contains("list of records")
        );
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "[{").unwrap();
        assert!(matches!(read_example(&broken), Err(ExampleError::Json(_))));
    }
}

//! MLflow's scoring protocol: `POST /invocations` with `dataframe_split`, `dataframe_records`, `instances`
//! or `inputs`, answered with `{"predictions": ...}`.

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;

use crate::api_error::{ApiError, ErrorCode};
use crate::engine::NamedTensors;
use crate::protocol::{Table, json_tensor, table_to_inputs};
use crate::tensor::{DataType, Signature, Tensor, TensorData, short};

const FORMATS: &str = "`dataframe_split`, `dataframe_records`, `instances` or `inputs`";

/// Decodes a parsed request body into model inputs (not yet checked against the signature).
pub fn decode(
    body: &Value,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body must be a JSON object with one of {FORMATS}"),
        ));
    };
    let formats: Vec<&String> = object.keys().filter(|k| k.as_str() != "params").collect();
    let [format] = formats.as_slice() else {
        let got = if formats.is_empty() {
            "none".to_string()
        } else {
            formats
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body must have exactly one of {FORMATS}, got {got}"),
        ));
    };
    let value = &object[format.as_str()];
    match format.as_str() {
        "dataframe_split" => dataframe_split(value, signature, allow_nan),
        "dataframe_records" => records(value, "dataframe_records", signature, allow_nan),
        "instances" => instances(value, signature, allow_nan),
        "inputs" => inputs(value, signature, allow_nan),
        other => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("unknown input format `{other}`; expected {FORMATS}"),
        )
        .with_field(other)),
    }
}

/// Decodes a `text/csv` body as MLflow's scoring server reads one (with pandas): a header row
/// of column names, then a row per example. A cell is a number when it reads as one, `true` or
/// `false` (any case) a boolean, an empty cell missing, anything else a string. Also returns the
/// table as a `dataframe_split` body, for the request log.
pub fn decode_csv(
    body: &[u8],
    signature: &Signature,
    allow_nan: bool,
) -> Result<(NamedTensors, Value), ApiError> {
    let not_csv = |error: csv::Error| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is not valid CSV: {error}"),
        )
    };
    // Flexible: a row of the wrong width is reported by the table, with its number.
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(body);
    let columns: Vec<String> = reader
        .headers()
        .map_err(not_csv)?
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|record| Ok(record.map_err(not_csv)?.iter().map(csv_cell).collect()))
        .collect::<Result<Vec<Vec<Value>>, ApiError>>()?;
    let table = Table {
        columns: Some(columns.clone()),
        rows: rows.iter().map(|row| row.iter().collect()).collect(),
        field: "csv",
    };
    let inputs = table_to_inputs(table, signature, allow_nan)?;
    let logged = serde_json::json!({"dataframe_split": {"columns": columns, "data": rows}});
    Ok((inputs, logged))
}

fn csv_cell(text: &str) -> Value {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    if let Ok(integer) = trimmed.parse::<i64>() {
        return Value::from(integer);
    }
    if let Some(number) = trimmed
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        return Value::Number(number);
    }
    match trimmed.to_ascii_lowercase().as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// The common bodies of a numeric model, decoded without building a `serde_json::Value` tree: `inputs` or
/// `instances` as a list of rows of numbers, or `dataframe_split` whose cells are all numbers, for a model
/// with one 2-D float input. `None` for anything else (other formats, `null`s, strings, a shape or a
/// column set the model does not take): the caller then decodes the body the general way, which also
/// words the errors. Both ways give the same tensors for the bodies this one accepts.
pub fn decode_fast(body: &[u8], signature: &Signature) -> Option<NamedTensors> {
    let spec = match signature.inputs.as_deref() {
        Some([spec]) if spec.shape.len() == 2 => spec,
        _ => return None,
    };
    let dtype = spec.dtype;
    if !matches!(dtype, DataType::Fp32 | DataType::Fp64) {
        return None;
    }
    let expected_width = usize::try_from(spec.shape[1]).ok();
    let (table, columns) = match serde_json::from_slice::<FastBody>(body).ok()? {
        FastBody::Inputs(rows) | FastBody::Instances(rows) => (rows, None),
        FastBody::DataframeSplit(split) => (split.data, Some(split.columns)),
    };
    let FlatRows {
        values,
        rows,
        width,
    } = table;
    if rows == 0 {
        return None;
    }
    let order: Option<Vec<usize>> = match (columns, &signature.feature_names) {
        (Some(columns), Some(features)) => {
            let mut seen = std::collections::HashSet::new();
            if columns.len() != width
                || columns.len() != features.len()
                || !columns.iter().all(|c| seen.insert(c.as_str()))
            {
                return None;
            }
            Some(
                features
                    .iter()
                    .map(|f| columns.iter().position(|c| c == f))
                    .collect::<Option<_>>()?,
            )
        }
        (Some(columns), None) if columns.len() != width => return None,
        _ => None,
    };
    if expected_width.is_some_and(|w| w != width) {
        return None;
    }
    let reordered = |values: Vec<f64>| -> Vec<f64> {
        match &order {
            Some(order) if order.iter().enumerate().any(|(i, &j)| i != j) => values
                .chunks_exact(width)
                .flat_map(|row| order.iter().map(move |&j| row[j]))
                .collect(),
            _ => values,
        }
    };
    let values = reordered(values);
    let data = match dtype {
        DataType::Fp32 => TensorData::Fp32(values.iter().map(|&x| x as f32).collect()),
        _ => TensorData::Fp64(values),
    };
    Some(vec![(
        spec.name.clone(),
        Tensor {
            shape: vec![rows, width],
            data,
        },
    )])
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
enum FastBody {
    #[serde(rename = "inputs")]
    Inputs(FlatRows),
    #[serde(rename = "instances")]
    Instances(FlatRows),
    #[serde(rename = "dataframe_split")]
    DataframeSplit(FastSplit),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastSplit {
    columns: Vec<String>,
    data: FlatRows,
}

/// Rows of numbers of one width, read into one flat vector.
struct FlatRows {
    values: Vec<f64>,
    rows: usize,
    width: usize,
}

impl<'de> serde::Deserialize<'de> for FlatRows {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(FlatRowsVisitor)
    }
}

struct FlatRowsVisitor;

impl<'de> serde::de::Visitor<'de> for FlatRowsVisitor {
    type Value = FlatRows;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of rows of numbers")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FlatRows, A::Error> {
        let mut table = FlatRows {
            values: Vec::with_capacity(seq.size_hint().unwrap_or(0) * 4),
            rows: 0,
            width: 0,
        };
        while seq.next_element_seed(RowSeed(&mut table))?.is_some() {}
        Ok(table)
    }
}

/// Appends one row to the table, failing on a row of another width.
struct RowSeed<'t>(&'t mut FlatRows);

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a row of numbers")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let table = self.0;
        let before = table.values.len();
        while let Some(x) = seq.next_element::<f64>()? {
            table.values.push(x);
        }
        let width = table.values.len() - before;
        if table.rows > 0 && width != table.width {
            return Err(serde::de::Error::custom("ragged rows"));
        }
        table.width = width;
        table.rows += 1;
        Ok(())
    }
}

fn dataframe_split(
    value: &Value,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    let field = "dataframe_split";
    let object = value.as_object().ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "`dataframe_split` must be an object with `columns` and `data`",
        )
        .with_field(field)
    })?;
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "columns" | "data" | "index"))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unexpected key `{key}` in `dataframe_split`; expected `columns`, `data`, `index`"
            ),
        )
        .with_field(format!("{field}.{key}")));
    }
    let columns = match object.get("columns") {
        None | Some(Value::Null) => None,
        Some(Value::Array(cols)) => Some(
            cols.iter()
                .map(|c| match c {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("column names must be strings, got `{}`", short(other)),
                    )
                    .with_field("dataframe_split.columns")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "`dataframe_split.columns` must be a list",
            )
            .with_field("dataframe_split.columns"));
        }
    };
    let Some(Value::Array(data)) = object.get("data") else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`dataframe_split.data` must be a list of rows",
        )
        .with_field("dataframe_split.data"));
    };
    let rows = data
        .iter()
        .enumerate()
        .map(|(i, row)| match row {
            Value::Array(cells) => Ok(cells.iter().collect()),
            other => Err(ApiError::new(
                ErrorCode::InvalidShape,
                format!(
                    "`dataframe_split.data` row {i} must be a list, got `{}`",
                    short(other)
                ),
            )
            .with_field(format!("dataframe_split.data[{i}]"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    table_to_inputs(
        Table {
            columns,
            rows,
            field: "dataframe_split.data",
        },
        signature,
        allow_nan,
    )
}

fn records(
    value: &Value,
    field: &'static str,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    let Value::Array(list) = value else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`{field}` must be a list of objects"),
        )
        .with_field(field));
    };
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::with_capacity(list.len());
    for (i, record) in list.iter().enumerate() {
        let Value::Object(record) = record else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "`{field}` item {i} must be an object, got `{}`",
                    short(record)
                ),
            )
            .with_field(format!("{field}[{i}]")));
        };
        if i == 0 {
            columns = record.keys().cloned().collect();
        }
        if let Some(missing) = columns.iter().find(|c| !record.contains_key(c.as_str())) {
            return Err(ApiError::new(
                ErrorCode::MissingInput,
                format!("`{field}` record {i} has no column `{missing}`"),
            )
            .with_field(format!("{field}[{i}].{missing}")));
        }
        if let Some(extra) = record.keys().find(|k| !columns.contains(k)) {
            return Err(ApiError::new(
                ErrorCode::UnexpectedInput,
                format!("`{field}` record {i} has column `{extra}`, which record 0 lacks"),
            )
            .with_field(format!("{field}[{i}].{extra}")));
        }
        rows.push(columns.iter().map(|c| &record[c.as_str()]).collect());
    }
    table_to_inputs(
        Table {
            columns: Some(columns),
            rows,
            field,
        },
        signature,
        allow_nan,
    )
}

fn instances(
    value: &Value,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    match value {
        Value::Array(list) if list.first().is_some_and(Value::is_object) => {
            records(value, "instances", signature, allow_nan)
        }
        Value::Array(_) => single_tensor(value, "instances", signature, allow_nan),
        _ => Err(
            ApiError::new(ErrorCode::InvalidRequest, "`instances` must be a list")
                .with_field("instances"),
        ),
    }
}

fn inputs(value: &Value, signature: &Signature, allow_nan: bool) -> Result<NamedTensors, ApiError> {
    match value {
        Value::Object(named) => named
            .iter()
            .map(|(name, tensor)| {
                let spec = signature
                    .inputs
                    .as_ref()
                    .and_then(|specs| specs.iter().find(|s| &s.name == name));
                json_tensor(tensor, name, spec, &format!("inputs.{name}"), allow_nan)
            })
            .collect(),
        Value::Array(_) => single_tensor(value, "inputs", signature, allow_nan),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`inputs` must be a list or an object of named tensors",
        )
        .with_field("inputs")),
    }
}

fn single_tensor(
    value: &Value,
    field: &str,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    match signature.inputs.as_deref() {
        Some([spec]) => Ok(vec![json_tensor(value, &spec.name, Some(spec), field, allow_nan)?]),
        Some(specs) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`{field}` as a plain list needs a model with one input; this one takes {} (send named columns)", specs.len()),
        )
        .with_field(field)),
        None => Ok(vec![json_tensor(value, "inputs", None, field, allow_nan)?]),
    }
}

/// `{"predictions": ...}` as bytes, written straight from the tensors: one value per row for single-output
/// models, else one record per row; class probabilities become `{label: probability}` maps when the model
/// names its classes.
pub fn encode(outputs: &NamedTensors, signature: &Signature) -> Vec<u8> {
    let labels: Option<Vec<String>> = signature.class_labels.as_ref().map(|labels| {
        labels
            .iter()
            .map(|label| {
                label
                    .as_str()
                    .map_or_else(|| label.to_string(), str::to_string)
            })
            .collect()
    });
    let body = Predictions {
        outputs,
        probability_output: signature.probability_output.as_deref(),
        labels: labels.as_deref(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

struct Predictions<'a> {
    outputs: &'a NamedTensors,
    probability_output: Option<&'a str>,
    labels: Option<&'a [String]>,
}

impl Serialize for Predictions<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_map(Some(1))?;
        body.serialize_entry("predictions", &Rows(self))?;
        body.end()
    }
}

struct Rows<'p, 'a>(&'p Predictions<'a>);

impl Serialize for Rows<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let outputs = self.0.outputs;
        let rows = outputs.first().map_or(0, |(_, t)| t.rows());
        let mut seq = serializer.serialize_seq(Some(rows))?;
        for row in 0..rows {
            if let [(_, tensor)] = outputs.as_slice() {
                seq.serialize_element(&tensor.json_row(row))?;
            } else {
                seq.serialize_element(&Record(self.0, row))?;
            }
        }
        seq.end()
    }
}

struct Record<'p, 'a>(&'p Predictions<'a>, usize);

impl Serialize for Record<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Record(predictions, row) = self;
        let mut record = serializer.serialize_map(Some(predictions.outputs.len()))?;
        for (name, tensor) in predictions.outputs {
            let value = tensor.json_row(*row);
            match predictions.labels {
                Some(labels)
                    if predictions.probability_output == Some(name.as_str())
                        && tensor.shape.len() == 2
                        && tensor.row_len() == labels.len() =>
                {
                    record.serialize_entry(name, &value.labelled(labels))?;
                }
                _ => record.serialize_entry(name, &value)?,
            }
        }
        record.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{TensorSpec, check_inputs};

    #[test]
    fn the_fast_decoder_agrees_with_the_general_one_or_declines() {
        let signature = Signature {
            inputs: Some(vec![TensorSpec {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![-1, 2],
            }]),
            feature_names: Some(vec!["a".into(), "b".into()]),
            ..Signature::default()
        };
        let agree = [
            r#"{"inputs": [[1, 2.5], [3, 4]]}"#,
            r#"{"instances": [[1, 2]]}"#,
            r#"{"dataframe_split": {"columns": ["b", "a"], "data": [[1, 2], [3, 4.25]]}}"#,
        ];
        for body in agree {
            let fast = decode_fast(body.as_bytes(), &signature).expect(body);
            let general = decode(&serde_json::from_str(body).unwrap(), &signature, false)
                .and_then(|inputs| check_inputs(&signature, inputs, ""))
                .unwrap();
            assert_eq!(fast, general, "{body}");
        }
        let decline = [
            r#"{"inputs": [[1, null]]}"#,
            r#"{"inputs": [[1, 2], [3]]}"#,
            r#"{"inputs": [[1, 2, 3]]}"#,
            r#"{"inputs": []}"#,
            r#"{"inputs": [[1, 2]], "params": {}}"#,
            r#"{"dataframe_split": {"columns": ["a", "c"], "data": [[1, 2]]}}"#,
            r#"{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}"#,
            r#"{"dataframe_records": [{"a": 1, "b": 2}]}"#,
        ];
        for body in decline {
            assert!(decode_fast(body.as_bytes(), &signature).is_none(), "{body}");
        }
    }
}

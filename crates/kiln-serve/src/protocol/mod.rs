//! Wire protocols: Open Inference Protocol v2 and MLflow scoring, decoded into named tensors checked
//! against the model signature, and model outputs encoded back.

pub mod mlflow;
pub mod v2;

use serde_json::Value;

use crate::api_error::{ApiError, ErrorCode};
use crate::engine::NamedTensors;
use crate::tensor::{DataType, Signature, Tensor, TensorSpec, infer_dtype, json_to_data};

/// Rows of a dataframe, with column names when the client gave them.
pub struct Table<'a> {
    pub columns: Option<Vec<String>>,
    pub rows: Vec<Vec<&'a Value>>,
    /// Where the table sits in the request, for error messages (`dataframe_split.data`).
    pub field: &'static str,
}

/// Maps a table onto the model inputs: by column name when inputs are per-column (or the model lists its
/// feature names), else by position onto a single 2-D input.
pub fn table_to_inputs(
    table: Table<'_>,
    signature: &Signature,
    allow_nan: bool,
) -> Result<NamedTensors, ApiError> {
    let field = table.field;
    if table.rows.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidShape, format!("`{field}` has no rows"))
                .with_field(field),
        );
    }
    let width = table.rows[0].len();
    if let Some((i, row)) = table
        .rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != width)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidShape,
            format!(
                "`{field}` row {i} has {} values, row 0 has {width}",
                row.len()
            ),
        )
        .with_field(format!("{field}[{i}]")));
    }
    if let Some(columns) = &table.columns
        && columns.len() != width
    {
        return Err(ApiError::new(
            ErrorCode::InvalidShape,
            format!(
                "`{field}` rows have {width} values for {} columns",
                columns.len()
            ),
        )
        .with_field(field));
    }
    let column = |j: usize| -> Vec<&Value> { table.rows.iter().map(|row| row[j]).collect() };
    let n = table.rows.len();
    let Some(specs) = &signature.inputs else {
        // No signature: one 1-D tensor per column, typed by its values.
        let columns = table
            .columns
            .clone()
            .unwrap_or_else(|| (0..width).map(|j| format!("{j}")).collect());
        return columns
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let values = column(j);
                let data = json_to_data(
                    &values,
                    infer_dtype(&values),
                    &format!("{field}.{name}"),
                    allow_nan,
                )?;
                Ok((
                    name.clone(),
                    Tensor {
                        shape: vec![n],
                        data,
                    },
                ))
            })
            .collect();
    };
    let per_column = specs.len() > 1
        || table
            .columns
            .as_ref()
            .is_some_and(|cols| specs.len() == 1 && cols.len() == 1 && cols[0] == specs[0].name);
    if per_column {
        let Some(columns) = &table.columns else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "`{field}` needs column names: the model takes inputs {}",
                    names(specs)
                ),
            )
            .with_field(field));
        };
        check_columns(
            columns,
            &specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            field,
        )?;
        return specs
            .iter()
            .map(|spec| {
                let j = columns
                    .iter()
                    .position(|c| c == &spec.name)
                    .unwrap_or_default();
                let values = column(j);
                let data = json_to_data(
                    &values,
                    spec.dtype,
                    &format!("{field}.{}", spec.name),
                    allow_nan,
                )?;
                let shape = if spec.shape.len() == 1 {
                    vec![n]
                } else {
                    vec![n, 1]
                };
                Ok((spec.name.clone(), Tensor { shape, data }))
            })
            .collect();
    }
    let spec = &specs[0];
    let expected_width = spec
        .shape
        .get(1)
        .copied()
        .filter(|d| *d > 0)
        .map(|d| d as usize);
    if spec.shape.len() == 1 && width != 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidShape,
            format!(
                "`{field}` has {width} columns, the model takes one (`{}`)",
                spec.name
            ),
        )
        .with_field(field));
    }
    let order: Vec<usize> = match (&table.columns, &signature.feature_names) {
        (Some(columns), Some(features)) => {
            check_columns(columns, features, field)?;
            features
                .iter()
                .map(|f| columns.iter().position(|c| c == f).unwrap_or_default())
                .collect()
        }
        _ => {
            if let Some(expected) = expected_width
                && expected != width
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidShape,
                    format!(
                        "`{field}` has {width} columns, the model input `{}` takes {expected} ({})",
                        spec.name,
                        spec.shape_text()
                    ),
                )
                .with_field(field));
            }
            (0..width).collect()
        }
    };
    let values: Vec<&Value> = table
        .rows
        .iter()
        .flat_map(|row| order.iter().map(|&j| row[j]))
        .collect();
    let data = json_to_data(&values, spec.dtype, field, allow_nan)
        .map_err(|e| name_cell(e, &table.columns, &order))?;
    let shape = if spec.shape.len() == 1 {
        vec![n]
    } else {
        vec![n, order.len()]
    };
    Ok(vec![(spec.name.clone(), Tensor { shape, data })])
}

/// Turns "element 7" into "row 1, column `petal_width`" for tables.
fn name_cell(mut error: ApiError, columns: &Option<Vec<String>>, order: &[usize]) -> ApiError {
    let width = order.len().max(1);
    if let Some(rest) = error.message.split("element ").nth(1)
        && let Some(index) = rest.split(':').next().and_then(|i| i.parse::<usize>().ok())
    {
        let (row, col) = (
            index / width,
            order.get(index % width).copied().unwrap_or_default(),
        );
        let column = columns
            .as_ref()
            .and_then(|c| c.get(col))
            .map_or_else(|| format!("{col}"), |c| format!("`{c}`"));
        let detail = rest.split_once(": ").map_or("", |(_, d)| d).to_string();
        error.message = format!("row {row}, column {column}: {detail}");
    }
    error
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("`{}`", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_columns(columns: &[String], expected: &[String], field: &str) -> Result<(), ApiError> {
    let list = expected
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(missing) = expected.iter().find(|e| !columns.contains(e)) {
        return Err(ApiError::new(
            ErrorCode::MissingInput,
            format!("missing column `{missing}`; the model takes columns {list}"),
        )
        .with_field(format!("{field}.{missing}")));
    }
    if let Some(extra) = columns.iter().find(|c| !expected.contains(c)) {
        return Err(ApiError::new(
            ErrorCode::UnexpectedInput,
            format!("unexpected column `{extra}`; the model takes columns {list}"),
        )
        .with_field(format!("{field}.{extra}")));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = columns.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("column `{dup}` appears twice"),
        )
        .with_field(format!("{field}.{dup}")));
    }
    Ok(())
}

/// A JSON tensor (nested arrays or a scalar list) for input `name`, typed by its spec when there is one.
pub fn json_tensor(
    value: &Value,
    name: &str,
    spec: Option<&TensorSpec>,
    field: &str,
    allow_nan: bool,
) -> Result<(String, Tensor), ApiError> {
    let (shape, flat) = crate::tensor::flatten_json(value, field)?;
    let dtype = spec.map_or_else(|| infer_dtype(&flat), |s| s.dtype);
    let data = json_to_data(&flat, dtype, field, allow_nan)?;
    Ok((name.to_string(), Tensor { shape, data }))
}

/// Element type for a v2 datatype name, naming the field when it is unknown.
pub fn parse_datatype(name: &str, field: &str) -> Result<DataType, ApiError> {
    DataType::parse(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidDatatype,
            format!(
                "unknown datatype `{name}`; expected one of BOOL, INT32, INT64, FP32, FP64, BYTES"
            ),
        )
        .with_field(field)
    })
}

//! Tensors as the server sees them (row-major, batch on axis 0) and model signatures they are checked against.

use serde_json::Value;

use crate::api_error::{ApiError, ErrorCode};

/// Element types, named as in the Open Inference Protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Int32,
    Int64,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element in the binary tensor extension (`None` for BYTES, which is length-prefixed).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool => Some(1),
            DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

/// Flat, row-major tensor contents.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

macro_rules! each_variant {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Bool($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    /// `n` zeros (`false`, empty strings) of `dtype`: an input to check that a model runs.
    pub fn zeros(dtype: DataType, n: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::Int32 => TensorData::Int32(vec![0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(vec![String::new(); n]),
        }
    }

    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    fn empty(dtype: DataType, capacity: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    fn extend_from(&mut self, other: &TensorData, start: usize, end: usize) {
        match (self, other) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(&b[start..end]),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(&b[start..end]),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(&b[start..end]),
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(&b[start..end]),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(&b[start..end]),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(&b[start..end]),
            _ => unreachable!("extend_from is only called on tensors of one dtype"),
        }
    }
}

/// A tensor: a shape and flat row-major data. Axis 0 is the batch axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    /// Rows along the batch axis (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Joins tensors along axis 0. All must share dtype and the non-batch dimensions (the batcher checks).
    pub fn concat(parts: &[&Tensor]) -> Tensor {
        let first = parts[0];
        let rows: usize = parts.iter().map(|t| t.rows()).sum();
        let mut data = TensorData::empty(first.dtype(), rows * first.row_len());
        for part in parts {
            data.extend_from(&part.data, 0, part.data.len());
        }
        let mut shape = first.shape.clone();
        if shape.is_empty() {
            shape.push(rows);
        } else {
            shape[0] = rows;
        }
        Tensor { shape, data }
    }

    /// Whether two tensors can be joined along axis 0.
    pub fn concatenable(&self, other: &Tensor) -> bool {
        self.dtype() == other.dtype()
            && self.shape.len() == other.shape.len()
            && self.shape.get(1..) == other.shape.get(1..)
    }

    /// Splits along axis 0 into parts of `rows[i]` rows. The caller checks that `rows` sums to `self.rows()`.
    pub fn split_rows(&self, rows: &[usize]) -> Vec<Tensor> {
        if rows.len() == 1 {
            return vec![self.clone()];
        }
        let row_len = self.row_len();
        let mut start = 0;
        rows.iter()
            .map(|&n| {
                let mut data = TensorData::empty(self.dtype(), n * row_len);
                data.extend_from(&self.data, start * row_len, (start + n) * row_len);
                start += n;
                let mut shape = self.shape.clone();
                if !shape.is_empty() {
                    shape[0] = n;
                }
                Tensor { shape, data }
            })
            .collect()
    }

    /// Column `j` of a 2-D tensor, as a 1-D tensor of its rows.
    pub fn column(&self, j: usize) -> Tensor {
        let (rows, width) = (self.rows(), self.row_len().max(1));
        let mut data = TensorData::empty(self.dtype(), rows);
        for row in 0..rows {
            let at = row * width + j;
            data.extend_from(&self.data, at, at + 1);
        }
        Tensor {
            shape: vec![rows],
            data,
        }
    }

    /// The flat data as a JSON array.
    pub fn flat_json(&self) -> Value {
        serde_json::to_value(self.json_elements()).unwrap_or(Value::Null)
    }

    /// The flat data, serialised as a JSON array without building `Value`s.
    pub fn json_elements(&self) -> JsonElements<'_> {
        JsonElements {
            data: &self.data,
            dims: &[],
            offset: 0,
            len: self.data.len(),
            scalar: false,
        }
    }

    /// Row `row`, serialised as a scalar when rows hold one element, else as a (nested) array.
    pub fn json_row(&self, row: usize) -> JsonElements<'_> {
        let row_len = self.row_len();
        let dims: &[usize] = if self.shape.len() <= 1 || row_len == 1 {
            &[]
        } else {
            &self.shape[1..]
        };
        JsonElements {
            data: &self.data,
            dims,
            offset: row * row_len,
            len: row_len.max(1),
            scalar: dims.is_empty(),
        }
    }
}

/// Tensor elements written straight into a JSON serializer: one scalar, or `len` elements from `offset`
/// as arrays nested as `dims` (a flat array when `dims` is empty). Floats are written at their
/// own precision (an `FP32` as the shortest text that reads back as the same `f32`); non-finite ones
/// become `null`, as JSON has no NaN.
#[derive(Clone, Copy)]
pub struct JsonElements<'a> {
    data: &'a TensorData,
    dims: &'a [usize],
    offset: usize,
    len: usize,
    scalar: bool,
}

impl<'a> JsonElements<'a> {
    /// Element `index` of the tensor, written on its own.
    fn element<S: serde::Serializer>(
        &self,
        index: usize,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match self.data {
            TensorData::Bool(v) => serializer.serialize_bool(v[index]),
            TensorData::Int32(v) => serializer.serialize_i32(v[index]),
            TensorData::Int64(v) => serializer.serialize_i64(v[index]),
            TensorData::Fp32(v) if v[index].is_finite() => serializer.serialize_f32(v[index]),
            TensorData::Fp64(v) if v[index].is_finite() => serializer.serialize_f64(v[index]),
            TensorData::Fp32(_) | TensorData::Fp64(_) => serializer.serialize_none(),
            TensorData::Bytes(v) => serializer.serialize_str(&v[index]),
        }
    }

    /// This 1-D row written as `{label: value}`, the i-th label naming the i-th value.
    pub fn labelled<'l>(self, labels: &'l [String]) -> LabelledElements<'a, 'l> {
        LabelledElements {
            elements: self,
            labels,
        }
    }
}

impl serde::Serialize for JsonElements<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.dims {
            [] if self.scalar => self.element(self.offset, serializer),
            [] => {
                let mut seq = serializer.serialize_seq(Some(self.len))?;
                for i in self.offset..self.offset + self.len {
                    seq.serialize_element(&Element(self, i))?;
                }
                seq.end()
            }
            [outer, inner @ ..] => {
                let stride: usize = inner.iter().product();
                let mut seq = serializer.serialize_seq(Some(*outer))?;
                for i in 0..*outer {
                    if inner.is_empty() {
                        seq.serialize_element(&Element(self, self.offset + i))?;
                    } else {
                        seq.serialize_element(&JsonElements {
                            data: self.data,
                            dims: inner,
                            offset: self.offset + i * stride,
                            len: stride,
                            scalar: false,
                        })?;
                    }
                }
                seq.end()
            }
        }
    }
}

struct Element<'e, 'a>(&'e JsonElements<'a>, usize);

impl serde::Serialize for Element<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.element(self.1, serializer)
    }
}

/// A 1-D row written as `{label: value}` (class probabilities named by their classes).
pub struct LabelledElements<'a, 'l> {
    elements: JsonElements<'a>,
    labels: &'l [String],
}

impl serde::Serialize for LabelledElements<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.labels.len()))?;
        for (i, label) in self.labels.iter().enumerate() {
            map.serialize_entry(label, &Element(&self.elements, self.elements.offset + i))?;
        }
        map.end()
    }
}

/// One input or output of a model: name, element type and shape (`-1` for a dynamic dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn to_json(&self) -> Value {
        serde_json::json!({"name": self.name, "datatype": self.dtype.as_str(), "shape": self.shape})
    }

    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "-1".into() } else { d.to_string() })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// What a model takes and returns. `inputs` is `None` for a `predict.py` model that declares no signature:
/// its inputs are then passed on as sent.
#[derive(Debug, Clone, Default)]
pub struct Signature {
    pub inputs: Option<Vec<TensorSpec>>,
    pub outputs: Vec<TensorSpec>,
    /// Column names of a single 2-D input (from the ONNX metadata key `kiln.feature_names`), so that
    /// MLflow dataframes can be matched by column name.
    pub feature_names: Option<Vec<String>>,
    /// Class labels of a classifier's probability output, when the model names them (ONNX ZipMap).
    pub class_labels: Option<Vec<Value>>,
    /// The output holding per-class probabilities, if any.
    pub probability_output: Option<String>,
}

/// Converts JSON values (already flattened) into tensor data of `dtype`, naming `field` in errors.
pub fn json_to_data(
    values: &[&Value],
    dtype: DataType,
    field: &str,
    allow_nan: bool,
) -> Result<TensorData, ApiError> {
    let wrong = |i: usize, v: &Value| {
        ApiError::new(
            ErrorCode::InvalidDatatype,
            format!(
                "`{field}` element {i}: expected {} value, got `{}`",
                expected_kind(dtype),
                short(v)
            ),
        )
        .with_field(field.to_string())
    };
    let nan = |i: usize| {
        ApiError::new(
            ErrorCode::NanNotAllowed,
            format!(
                "`{field}` element {i}: NaN or null is not allowed (the model takes {})",
                dtype.as_str()
            ),
        )
        .with_field(field.to_string())
    };
    let float = |i: usize, v: &Value| -> Result<f64, ApiError> {
        let x = match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| wrong(i, v))?,
            Value::Null => f64::NAN,
            Value::String(s) if s.eq_ignore_ascii_case("nan") => f64::NAN,
            _ => return Err(wrong(i, v)),
        };
        if x.is_nan() && !allow_nan {
            return Err(nan(i));
        }
        Ok(x)
    };
    let int = |i: usize, v: &Value| -> Result<i64, ApiError> {
        match v {
            Value::Number(n) => n.as_i64().ok_or_else(|| wrong(i, v)),
            Value::Null => Err(nan(i)),
            _ => Err(wrong(i, v)),
        }
    };
    Ok(match dtype {
        DataType::Fp32 => TensorData::Fp32(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| float(i, v).map(|x| x as f32))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Fp64 => TensorData::Fp64(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| float(i, v))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Int64 => TensorData::Int64(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| int(i, v))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Int32 => TensorData::Int32(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| int(i, v).and_then(|x| i32::try_from(x).map_err(|_| wrong(i, v))))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Bool(b) => Ok(*b),
                    _ => Err(wrong(i, v)),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bytes => TensorData::Bytes(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(wrong(i, v)),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn expected_kind(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Fp32 | DataType::Fp64 => "a number",
        DataType::Int32 | DataType::Int64 => "an integer",
        DataType::Bool => "a boolean",
        DataType::Bytes => "a string",
    }
}

/// A short rendering of a JSON value for error messages.
pub fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// Guesses an element type for JSON values when no signature says (a `predict.py` model without one).
pub fn infer_dtype(values: &[&Value]) -> DataType {
    if values.iter().all(|v| v.is_boolean()) && !values.is_empty() {
        DataType::Bool
    } else if values.iter().all(|v| v.is_i64()) && !values.is_empty() {
        DataType::Int64
    } else if values.iter().all(|v| v.is_number() || v.is_null()) {
        DataType::Fp64
    } else {
        DataType::Bytes
    }
}

/// Flattens a (possibly nested) JSON array, returning its shape. Ragged arrays are an error.
pub fn flatten_json<'a>(
    value: &'a Value,
    field: &str,
) -> Result<(Vec<usize>, Vec<&'a Value>), ApiError> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut flat = Vec::with_capacity(shape.iter().product());
    collect_flat(value, &shape, 0, &mut flat, field)?;
    Ok((shape, flat))
}

fn collect_flat<'a>(
    value: &'a Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a Value>,
    field: &str,
) -> Result<(), ApiError> {
    if depth == shape.len() {
        if value.is_array() {
            return Err(ragged(field));
        }
        out.push(value);
        return Ok(());
    }
    match value {
        Value::Array(items) if items.len() == shape[depth] => {
            for item in items {
                collect_flat(item, shape, depth + 1, out, field)?;
            }
            Ok(())
        }
        _ => Err(ragged(field)),
    }
}

fn ragged(field: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidShape,
        format!("`{field}` is ragged: every row must have the same length"),
    )
    .with_field(field.to_string())
}

/// Checks named input tensors against the signature and returns them in signature order.
pub fn check_inputs(
    signature: &Signature,
    mut named: Vec<(String, Tensor)>,
    field_prefix: &str,
) -> Result<Vec<(String, Tensor)>, ApiError> {
    let Some(specs) = &signature.inputs else {
        return Ok(named);
    };
    if let Some((name, _)) = named
        .iter()
        .find(|(name, _)| !specs.iter().any(|s| &s.name == name))
    {
        let expected: Vec<String> = specs.iter().map(|s| format!("`{}`", s.name)).collect();
        return Err(ApiError::new(
            ErrorCode::UnexpectedInput,
            format!(
                "unexpected input `{name}`; the model takes {}",
                expected.join(", ")
            ),
        )
        .with_field(format!("{field_prefix}{name}")));
    }
    let mut ordered = Vec::with_capacity(specs.len());
    let mut rows = None;
    for spec in specs {
        let Some(pos) = named.iter().position(|(name, _)| name == &spec.name) else {
            return Err(ApiError::new(
                ErrorCode::MissingInput,
                format!(
                    "missing input `{}` ({} {})",
                    spec.name,
                    spec.dtype.as_str(),
                    spec.shape_text()
                ),
            )
            .with_field(format!("{field_prefix}{}", spec.name)));
        };
        let (name, mut tensor) = named.swap_remove(pos);
        let field = format!("{field_prefix}{name}");
        // A column sent as `[N, 1]` (as v2 clients of dataframe models do) for a 1-D input.
        if spec.shape.len() == 1 && tensor.shape.len() == 2 && tensor.shape[1] == 1 {
            tensor.shape.truncate(1);
        }
        if tensor.dtype() != spec.dtype {
            return Err(ApiError::new(
                ErrorCode::InvalidDatatype,
                format!(
                    "input `{name}`: expected datatype {}, got {}",
                    spec.dtype.as_str(),
                    tensor.dtype().as_str()
                ),
            )
            .with_field(field));
        }
        let shape_ok = tensor.shape.len() == spec.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(&got, &want)| want < 0 || got as i64 == want);
        if !shape_ok {
            return Err(ApiError::new(
                ErrorCode::InvalidShape,
                format!(
                    "input `{name}`: expected shape {}, got {:?}",
                    spec.shape_text(),
                    tensor.shape
                ),
            )
            .with_field(field));
        }
        if tensor.rows() == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidShape,
                format!("input `{name}` has no rows"),
            )
            .with_field(field));
        }
        match rows {
            None => rows = Some(tensor.rows()),
            Some(r) if r != tensor.rows() => {
                return Err(ApiError::new(
                    ErrorCode::InvalidShape,
                    format!(
                        "input `{name}` has {} rows, but other inputs have {r}",
                        tensor.rows()
                    ),
                )
                .with_field(field));
            }
            Some(_) => {}
        }
        ordered.push((name, tensor));
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_round_trips() {
        let a = Tensor {
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        };
        let b = Tensor {
            shape: vec![2, 2],
            data: TensorData::Fp32(vec![3.0, 4.0, 5.0, 6.0]),
        };
        let joined = Tensor::concat(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.split_rows(&[1, 2]), vec![a, b]);
    }

    #[test]
    fn elements_are_written_as_json_without_values() {
        let t = Tensor {
            shape: vec![2, 2, 2],
            data: TensorData::Fp32(vec![0.1, f32::NAN, 2.0, 3.5, 4.0, 5.0, 6.0, 7.0]),
        };
        assert_eq!(
            serde_json::to_string(&t.json_elements()).unwrap(),
            "[0.1,null,2.0,3.5,4.0,5.0,6.0,7.0]"
        );
        assert_eq!(
            serde_json::to_string(&t.json_row(1)).unwrap(),
            "[[4.0,5.0],[6.0,7.0]]"
        );
        let column = Tensor {
            shape: vec![2],
            data: TensorData::Int64(vec![7, 8]),
        };
        assert_eq!(serde_json::to_string(&column.json_row(1)).unwrap(), "8");
        let one = Tensor {
            shape: vec![1],
            data: TensorData::Bytes(vec!["a".into()]),
        };
        assert_eq!(
            serde_json::to_string(&one.json_elements()).unwrap(),
            "[\"a\"]"
        );
        let probabilities = Tensor {
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![0.25, 0.75]),
        };
        let labels = ["setosa".to_string(), "virginica".to_string()];
        assert_eq!(
            serde_json::to_string(&probabilities.json_row(0).labelled(&labels)).unwrap(),
            r#"{"setosa":0.25,"virginica":0.75}"#
        );
    }

    #[test]
    fn ragged_arrays_are_rejected() {
        let v: Value = serde_json::json!([[1, 2], [3]]);
        let err = flatten_json(&v, "inputs[0].data").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidShape);
    }
}

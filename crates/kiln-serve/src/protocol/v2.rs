//! Open Inference Protocol v2 (KServe / Triton) over REST, including the binary tensor data extension
//! that `tritonclient` uses by default (`Inference-Header-Content-Length`).

use serde::Serialize;
use serde_json::{Value, json};

use crate::api_error::{ApiError, ErrorCode};
use crate::engine::NamedTensors;
use crate::protocol::parse_datatype;
use crate::repository::LoadedModel;
use crate::tensor::{DataType, Signature, Tensor, TensorData, flatten_json, json_to_data};

/// Header giving the length of the JSON part when binary tensor data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded infer request.
pub struct InferRequest {
    pub id: Option<Value>,
    pub inputs: NamedTensors,
    /// Requested outputs and whether each wants binary data; `None`: all outputs.
    pub outputs: Option<Vec<(String, bool)>>,
    /// `parameters.binary_data_output`: every output in binary.
    pub binary_output: bool,
}

pub fn decode(
    body: &[u8],
    header_length: Option<usize>,
    signature: &Signature,
    allow_nan: bool,
) -> Result<InferRequest, ApiError> {
    let (json_part, mut binary) = match header_length {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "`Inference-Header-Content-Length` is {n}, but the body has only {} bytes",
                    body.len()
                ),
            ));
        }
        None => (body, &[][..]),
    };
    let request: Value = super_parse(json_part)?;
    let Some(object) = request.as_object() else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the request body must be a JSON object with `inputs`",
        ));
    };
    let Some(Value::Array(inputs)) = object.get("inputs") else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`inputs` must be a list of tensors",
        )
        .with_field("inputs"));
    };
    let mut named = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let name = input.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("`{field}.name` must be a string"),
            )
            .with_field(format!("{field}.name"))
        })?;
        let field = format!("inputs[{i}] (`{name}`)");
        let dtype_name = input
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("input `{name}` has no `datatype`"),
                )
                .with_field(format!("inputs[{i}].datatype"))
            })?;
        let dtype = parse_datatype(dtype_name, &format!("inputs[{i}].datatype"))?;
        let shape: Vec<usize> = input
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidShape,
                    format!("input `{name}`: `shape` must be a list of non-negative integers"),
                )
                .with_field(format!("inputs[{i}].shape"))
            })?;
        // Checked without zero dimensions too: later code multiplies the non-batch dimensions alone.
        let expected: usize = shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .filter(|_| {
                shape
                    .iter()
                    .filter(|d| **d > 0)
                    .try_fold(1usize, |acc, d| acc.checked_mul(*d))
                    .is_some_and(|n| n <= u32::MAX as usize)
            })
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidShape,
                    format!("input `{name}`: shape {shape:?} is too large"),
                )
                .with_field(format!("inputs[{i}].shape"))
            })?;
        let binary_size = input
            .pointer("/parameters/binary_data_size")
            .and_then(Value::as_u64);
        let data = if let Some(size) = binary_size {
            let size = size as usize;
            if size > binary.len() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("input `{name}`: binary_data_size {size} exceeds the remaining body"),
                )
                .with_field(format!("inputs[{i}].parameters.binary_data_size")));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            decode_binary(mine, dtype, expected, name, allow_nan)
                .map_err(|e| e.with_field(format!("inputs[{i}]")))?
        } else {
            let data = input.get("data").ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("input `{name}` has no `data`"),
                )
                .with_field(format!("inputs[{i}].data"))
            })?;
            let (_, flat) = flatten_json(data, &format!("inputs[{i}].data"))?;
            if flat.len() != expected {
                return Err(ApiError::new(
                    ErrorCode::InvalidShape,
                    format!(
                        "input `{name}`: shape {shape:?} needs {expected} values, `data` has {}",
                        flat.len()
                    ),
                )
                .with_field(format!("inputs[{i}].data")));
            }
            json_to_data(&flat, dtype, &field, allow_nan)?
        };
        named.push((name.to_string(), Tensor { shape, data }));
    }
    let outputs = match object.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("`outputs[{i}].name` must be a string"),
                        )
                        .with_field(format!("outputs[{i}].name"))
                    })?;
                    if !signature.outputs.is_empty()
                        && !signature.outputs.iter().any(|s| s.name == name)
                    {
                        let known: Vec<String> = signature
                            .outputs
                            .iter()
                            .map(|s| format!("`{}`", s.name))
                            .collect();
                        return Err(ApiError::new(
                            ErrorCode::UnknownOutput,
                            format!(
                                "unknown output `{name}`; the model has {}",
                                known.join(", ")
                            ),
                        )
                        .with_field(format!("outputs[{i}].name")));
                    }
                    let binary = o
                        .pointer("/parameters/binary_data")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    Ok((name.to_string(), binary))
                })
                .collect::<Result<Vec<_>, ApiError>>()?,
        ),
        Some(_) => {
            return Err(
                ApiError::new(ErrorCode::InvalidRequest, "`outputs` must be a list")
                    .with_field("outputs"),
            );
        }
    };
    let binary_output = request
        .pointer("/parameters/binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(InferRequest {
        id: object.get("id").cloned(),
        inputs: named,
        outputs,
        binary_output,
    })
}

fn super_parse(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

fn decode_binary(
    bytes: &[u8],
    dtype: DataType,
    expected: usize,
    name: &str,
    allow_nan: bool,
) -> Result<TensorData, ApiError> {
    let size_error =
        |what: String| ApiError::new(ErrorCode::InvalidShape, format!("input `{name}`: {what}"));
    if let Some(width) = dtype.element_size() {
        if Some(bytes.len()) != expected.checked_mul(width) {
            return Err(size_error(format!(
                "binary data has {} bytes, the shape needs {}",
                bytes.len(),
                expected.saturating_mul(width)
            )));
        }
        let chunks = bytes.chunks_exact(width);
        let data = match dtype {
            DataType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
            DataType::Int32 => TensorData::Int32(
                chunks
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            DataType::Int64 => TensorData::Int64(
                chunks
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            DataType::Fp32 => TensorData::Fp32(
                chunks
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            DataType::Fp64 => TensorData::Fp64(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            DataType::Bytes => unreachable!("BYTES has no fixed element size"),
        };
        let has_nan = match &data {
            TensorData::Fp32(v) => v.iter().position(|x| x.is_nan()),
            TensorData::Fp64(v) => v.iter().position(|x| x.is_nan()),
            _ => None,
        };
        if let (Some(i), false) = (has_nan, allow_nan) {
            return Err(ApiError::new(
                ErrorCode::NanNotAllowed,
                format!("input `{name}` element {i}: NaN is not allowed"),
            ));
        }
        return Ok(data);
    }
    let mut strings = Vec::with_capacity(expected);
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            return Err(size_error("truncated BYTES element in binary data".into()));
        }
        strings.push(String::from_utf8_lossy(&rest[4..4 + len]).into_owned());
        rest = &rest[4 + len..];
    }
    if strings.len() != expected || !rest.is_empty() {
        return Err(size_error(format!(
            "binary data holds {} strings, the shape needs {expected}",
            strings.len()
        )));
    }
    Ok(TensorData::Bytes(strings))
}

fn encode_binary(tensor: &Tensor) -> Vec<u8> {
    match &tensor.data {
        TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
        TensorData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bytes(v) => v
            .iter()
            .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
            .collect(),
    }
}

/// The response body, and the JSON header length when binary data follows it.
pub fn encode(
    request: &InferRequest,
    model: &LoadedModel,
    outputs: NamedTensors,
) -> (Vec<u8>, Option<usize>) {
    let mut binary = Vec::new();
    let mut encoded = Vec::new();
    for (name, tensor) in &outputs {
        let wanted = match &request.outputs {
            None => Some(request.binary_output),
            Some(list) => list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b || request.binary_output),
        };
        let Some(as_binary) = wanted else { continue };
        let binary_data_size = as_binary.then(|| {
            let bytes = encode_binary(tensor);
            let size = bytes.len();
            binary.extend(bytes);
            size
        });
        encoded.push(OutputJson {
            name,
            tensor,
            binary_data_size,
        });
    }
    let body = ResponseJson {
        model_name: &model.name,
        model_version: &model.version,
        id: request.id.as_ref(),
        outputs: encoded,
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if binary.is_empty() {
        (bytes, None)
    } else {
        let header = bytes.len();
        bytes.extend(binary);
        (bytes, Some(header))
    }
}

/// An infer response, written straight from the output tensors.
#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    outputs: Vec<OutputJson<'a>>,
}

struct OutputJson<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    /// Set when the data follows the JSON part in binary.
    binary_data_size: Option<usize>,
}

impl Serialize for OutputJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(Some(4))?;
        out.serialize_entry("name", self.name)?;
        out.serialize_entry("datatype", self.tensor.dtype().as_str())?;
        out.serialize_entry("shape", &self.tensor.shape)?;
        match self.binary_data_size {
            Some(size) => out.serialize_entry("parameters", &json!({"binary_data_size": size}))?,
            None => out.serialize_entry("data", &self.tensor.json_elements())?,
        }
        out.end()
    }
}

/// `GET /v2/models/{m}`.
pub fn model_metadata(model: &LoadedModel) -> Value {
    let signature = model.engine.signature();
    let inputs: Vec<Value> = signature
        .inputs
        .iter()
        .flatten()
        .map(|s| s.to_json())
        .collect();
    let outputs: Vec<Value> = signature.outputs.iter().map(|s| s.to_json()).collect();
    let mut body = json!({
        "name": model.name,
        "versions": [model.version],
        "platform": model.engine.platform(),
        "inputs": inputs,
        "outputs": outputs,
    });
    if let Some(labels) = &signature.class_labels {
        body["parameters"] = json!({"class_labels": labels});
    }
    body
}

//! ONNX models on ONNX Runtime: a few sessions per model, each driven by its own batcher thread.
//!
//! Classifier outputs exported by skl2onnx with ZipMap (`seq<map<int64|string, float>>`) are turned into a
//! dense `FP32 [N, classes]` tensor, with the class labels recorded in the signature.

use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};
use serde_json::Value;

use crate::engine::{InferError, ModelFailure};
use crate::error::{Error, Result};
use crate::tensor::{DataType, Signature, Tensor, TensorData, TensorSpec};

/// The ONNX metadata key under which a model may list the column names of its single 2-D input
/// (a JSON array or a comma-separated list), for MLflow dataframe requests.
pub const FEATURE_NAMES_KEY: &str = "kiln.feature_names";

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    Tensor,
    ZipMapInt,
    ZipMapString,
}

pub struct OnnxEngine {
    sessions: Vec<Mutex<Session>>,
    outputs: Vec<(String, OutputKind)>,
    pub signature: Signature,
}

impl OnnxEngine {
    pub fn load(
        path: &Path,
        env: &ort::environment::Environment,
        sessions: usize,
    ) -> Result<OnnxEngine> {
        let onnx_error = |source: ort::Error| Error::OnnxModel {
            path: path.to_path_buf(),
            source,
        };
        let unsupported = |reason: String| Error::UnsupportedModel {
            path: path.to_path_buf(),
            reason,
        };
        let mut built = Vec::new();
        for _ in 0..sessions.max(1) {
            let session = Session::builder(env)
                .map_err(onnx_error)?
                .with_intra_threads(1)
                .map_err(|e| onnx_error(e.into()))?
                .with_inter_threads(1)
                .map_err(|e| onnx_error(e.into()))?
                .commit_from_file(path)
                .map_err(onnx_error)?;
            built.push(session);
        }
        let first = &built[0];
        let mut inputs = Vec::new();
        for outlet in first.inputs() {
            match outlet.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    let dtype = data_type(*ty).ok_or_else(|| {
                        unsupported(format!("input `{}` has element type `{ty}`", outlet.name()))
                    })?;
                    inputs.push(TensorSpec {
                        name: outlet.name().to_string(),
                        dtype,
                        shape: shape.to_vec(),
                    });
                }
                other => {
                    return Err(unsupported(format!(
                        "input `{}` is a `{other}`, not a tensor",
                        outlet.name()
                    )));
                }
            }
        }
        let mut outputs = Vec::new();
        let mut kinds = Vec::new();
        let mut probability_output = None;
        for outlet in first.outputs() {
            let name = outlet.name().to_string();
            match outlet.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    let dtype = data_type(*ty).ok_or_else(|| {
                        unsupported(format!("output `{name}` has element type `{ty}`"))
                    })?;
                    if dtype == DataType::Fp32 && shape.len() == 2 && name.contains("prob") {
                        probability_output = Some(name.clone());
                    }
                    outputs.push(TensorSpec {
                        name: name.clone(),
                        dtype,
                        shape: shape.to_vec(),
                    });
                    kinds.push((name, OutputKind::Tensor));
                }
                ValueType::Sequence(inner) => match inner.as_ref() {
                    ValueType::Map {
                        key: TensorElementType::Int64,
                        value: TensorElementType::Float32,
                    } => {
                        outputs.push(TensorSpec {
                            name: name.clone(),
                            dtype: DataType::Fp32,
                            shape: vec![-1, -1],
                        });
                        probability_output = Some(name.clone());
                        kinds.push((name, OutputKind::ZipMapInt));
                    }
                    ValueType::Map {
                        key: TensorElementType::String,
                        value: TensorElementType::Float32,
                    } => {
                        outputs.push(TensorSpec {
                            name: name.clone(),
                            dtype: DataType::Fp32,
                            shape: vec![-1, -1],
                        });
                        probability_output = Some(name.clone());
                        kinds.push((name, OutputKind::ZipMapString));
                    }
                    other => {
                        return Err(unsupported(format!(
                            "output `{name}` is a sequence of `{other}`"
                        )));
                    }
                },
                other => return Err(unsupported(format!("output `{name}` is a `{other}`"))),
            }
        }
        let feature_names = first
            .metadata()
            .ok()
            .and_then(|m| m.custom(FEATURE_NAMES_KEY))
            .map(|raw| parse_names(&raw));
        let mut engine = OnnxEngine {
            sessions: built.into_iter().map(Mutex::new).collect(),
            outputs: kinds,
            signature: Signature {
                inputs: Some(inputs),
                outputs,
                feature_names,
                class_labels: None,
                probability_output,
            },
        };
        engine
            .check()
            .map_err(|e| unsupported(format!("a test prediction failed: {}", e.message())))?;
        Ok(engine)
    }

    /// Runs one row of zeros through the model: proves it runs and learns ZipMap class labels.
    fn check(&mut self) -> Result<(), InferError> {
        let specs = self.signature.inputs.clone().unwrap_or_default();
        let inputs: Vec<Tensor> = specs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect();
                let n = shape.iter().product();
                let data = TensorData::zeros(spec.dtype, n);
                Tensor { shape, data }
            })
            .collect();
        let (_, labels) = self.run_inner(0, &inputs)?;
        self.signature.class_labels = labels;
        Ok(())
    }

    /// How many batches can run at once.
    pub fn parallelism(&self) -> usize {
        self.sessions.len()
    }

    /// Runs a batch on session `session`. Blocking: the batcher calls it from the session's own thread.
    pub fn run(&self, session: usize, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        self.run_inner(session, inputs).map(|(outputs, _)| outputs)
    }

    fn run_inner(
        &self,
        session: usize,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Option<Vec<Value>>), InferError> {
        let specs = self.signature.inputs.as_deref().unwrap_or_default();
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (spec, tensor) in specs.iter().zip(inputs) {
            values.push((
                spec.name.clone(),
                to_ort(tensor).map_err(|e| runtime_failure(&e))?,
            ));
        }
        let mut session = self.sessions[session % self.sessions.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(values).map_err(|e| runtime_failure(&e))?;
        let mut result = Vec::with_capacity(self.outputs.len());
        let mut labels = None;
        for (name, kind) in &self.outputs {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| InferError::BadOutput(format!("output `{name}` missing")))?;
            let converted = match kind {
                OutputKind::Tensor => from_ort(value),
                OutputKind::ZipMapInt => zipmap::<i64>(value, &mut labels),
                OutputKind::ZipMapString => zipmap::<String>(value, &mut labels),
            }
            .map_err(|e| InferError::BadOutput(format!("output `{name}`: {e}")))?;
            result.push(converted);
        }
        Ok((result, labels))
    }
}

fn runtime_failure(error: &ort::Error) -> InferError {
    InferError::Model(ModelFailure {
        error: format!("onnx runtime: {error}"),
        traceback: None,
    })
}

fn parse_names(raw: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(raw)
        .unwrap_or_else(|_| raw.split(',').map(|s| s.trim().to_string()).collect())
}

fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn to_ort(tensor: &Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    Ok(match &tensor.data {
        TensorData::Fp32(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Fp64(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Int64(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Int32(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bool(v) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bytes(v) => {
            ort::value::Tensor::from_string_array((shape, v.as_slice()))?.into_dyn()
        }
    })
}

fn from_ort(value: &DynValue) -> ort::Result<Tensor> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(ort::Error::new("not a tensor"));
    };
    let (shape, data) = match ty {
        TensorElementType::Float32 => {
            let (s, d) = value.try_extract_tensor::<f32>()?;
            (s.to_vec(), TensorData::Fp32(d.to_vec()))
        }
        TensorElementType::Float64 => {
            let (s, d) = value.try_extract_tensor::<f64>()?;
            (s.to_vec(), TensorData::Fp64(d.to_vec()))
        }
        TensorElementType::Int64 => {
            let (s, d) = value.try_extract_tensor::<i64>()?;
            (s.to_vec(), TensorData::Int64(d.to_vec()))
        }
        TensorElementType::Int32 => {
            let (s, d) = value.try_extract_tensor::<i32>()?;
            (s.to_vec(), TensorData::Int32(d.to_vec()))
        }
        TensorElementType::Bool => {
            let (s, d) = value.try_extract_tensor::<bool>()?;
            (s.to_vec(), TensorData::Bool(d.to_vec()))
        }
        TensorElementType::String => {
            let (s, d) = value.try_extract_strings()?;
            (s.to_vec(), TensorData::Bytes(d))
        }
        other => {
            return Err(ort::Error::new(format!(
                "unsupported element type `{other}`"
            )));
        }
    };
    Ok(Tensor {
        shape: shape.into_iter().map(|d| d.max(0) as usize).collect(),
        data,
    })
}

trait LabelKey:
    ort::value::IntoTensorElementType + Clone + std::hash::Hash + Eq + std::fmt::Debug + Ord + 'static
{
    fn to_json(&self) -> Value;
}
impl LabelKey for i64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}
impl LabelKey for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
}

/// `seq<map<K, f32>>` -> dense `[N, classes]`, classes in sorted key order.
fn zipmap<K: LabelKey>(value: &DynValue, labels: &mut Option<Vec<Value>>) -> ort::Result<Tensor> {
    let rows = value.try_extract_sequence::<ort::value::DynValueTypeMarker>()?;
    let mut data = Vec::new();
    let mut classes = 0;
    for row in &rows {
        let mut pairs = row.try_extract_key_values::<K, f32>()?;
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        classes = pairs.len();
        if labels.is_none() {
            *labels = Some(pairs.iter().map(|(k, _)| k.to_json()).collect());
        }
        data.extend(pairs.into_iter().map(|(_, p)| p));
    }
    Ok(Tensor {
        shape: vec![rows.len(), classes],
        data: TensorData::Fp32(data),
    })
}

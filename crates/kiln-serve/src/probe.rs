//! "Green means servable": load a model as `kiln serve` would and predict on an example, then stop.
//!
//! The pipeline calls [`probe`] after a run's gates so that an artifact its engine cannot load, or that
//! fails on an example input, fails the run instead of failing later at `kiln serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::config::ServerConfig;
use crate::engine::{InferError, NamedTensors};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::protocol::mlflow;
use crate::repository::Repository;
use crate::tensor::{Signature, Tensor, TensorData, check_inputs};

/// What a probe did.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Rows predicted (0 when the model was only loaded).
    pub rows: usize,
    /// The prediction as `/invocations` would answer it (`{"predictions": ...}`), if one was made.
    pub response: Option<Value>,
    /// Loading and predicting, together.
    pub duration: Duration,
    /// The model's inputs and outputs as the engine read them from the artifact:
    /// `{"platform", "inputs": [{"name", "datatype", "shape"}] | null, "outputs": [...]}`, plus
    /// `feature_names` and `class_labels` when the model names them.
    pub signature: Value,
    /// The body the prediction was made on: the MLflow scoring body sent (without the columns
    /// the model does not take), or an Open Inference Protocol v2 request of the generated row.
    /// `None` when the model was only loaded.
    pub example: Option<Value>,
}

/// Loads the model as `kiln serve` would (same engines, same settings), sends `example` through the
/// MLflow scoring decoder and the signature check, predicts, and stops everything it started.
/// Blocking (builds its own small runtime). `example` is an MLflow scoring body
/// (`{"dataframe_split": {"columns": [...], "data": [[...]]}}`); columns the model's signature does
/// not name are dropped first (an example taken from training data carries the label column).
/// With no example, a row is generated from the signature when its shapes are known; otherwise the
/// model is only loaded.
pub fn probe(config: ServerConfig, model: &str, example: Option<&Value>) -> Result<Probe> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("kiln-probe")
        .build()?;
    let result = runtime.block_on(probe_async(config, model, example));
    // Workers are told to stop when the model drops; do not let a stuck one hold the caller.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let probed = result?;
    Ok(Probe {
        rows: probed.rows,
        response: probed.response,
        duration: started.elapsed(),
        signature: probed.signature,
        example: probed.example,
    })
}

/// What [`probe_async`] learnt.
struct Probed {
    rows: usize,
    response: Option<Value>,
    signature: Value,
    example: Option<Value>,
}

async fn probe_async(config: ServerConfig, model: &str, example: Option<&Value>) -> Result<Probed> {
    let allow_nan = config.allow_nan;
    let repository = Repository::new(Arc::new(config), Arc::new(Metrics::new()))?;
    let loaded = repository.load(model).await?;
    let signature = loaded.engine.signature();
    let signature_json = signature_json(loaded.engine.platform(), signature);
    let (inputs, sent) = match example {
        Some(example) => {
            let example = drop_unknown_columns(example, signature);
            let inputs = mlflow::decode(&example, signature, allow_nan)
                .and_then(|inputs| check_inputs(signature, inputs, ""))
                .map_err(|e| Error::BadExample {
                    model: model.to_string(),
                    message: e.message,
                    field: e.field,
                })?;
            (inputs, example)
        }
        None => match generated_row(signature) {
            Some(inputs) => {
                let sent = v2_request(&inputs);
                (inputs, sent)
            }
            None => {
                return Ok(Probed {
                    rows: 0,
                    response: None,
                    signature: signature_json,
                    example: None,
                });
            }
        },
    };
    let rows = inputs.first().map_or(0, |(_, t)| t.rows());
    let outputs = loaded.infer(inputs).await.map_err(|error| {
        let (message, traceback) = match error {
            InferError::Model(failure) => (failure.error, failure.traceback),
            other => (other.message(), None),
        };
        Error::ModelFailed {
            model: model.to_string(),
            message,
            traceback,
        }
    })?;
    let response = serde_json::from_slice(&mlflow::encode(&outputs, signature)).ok();
    repository.unload_all();
    Ok(Probed {
        rows,
        response,
        signature: signature_json,
        example: Some(sent),
    })
}

/// A model's signature as JSON (see [`Probe::signature`]).
fn signature_json(platform: &str, signature: &Signature) -> Value {
    let specs = |specs: &[crate::tensor::TensorSpec]| -> Vec<Value> {
        specs.iter().map(|s| s.to_json()).collect()
    };
    let mut body = serde_json::json!({
        "platform": platform,
        "inputs": signature.inputs.as_deref().map(specs),
        "outputs": specs(&signature.outputs),
    });
    if let Some(names) = &signature.feature_names {
        body["feature_names"] = serde_json::json!(names);
    }
    if let Some(labels) = &signature.class_labels {
        body["class_labels"] = Value::Array(labels.clone());
    }
    body
}

/// An Open Inference Protocol v2 request of `inputs`.
fn v2_request(inputs: &NamedTensors) -> Value {
    let inputs: Vec<Value> = inputs
        .iter()
        .map(|(name, tensor)| {
            serde_json::json!({
                "name": name,
                "datatype": tensor.data.dtype().as_str(),
                "shape": tensor.shape,
                "data": tensor.flat_json(),
            })
        })
        .collect();
    serde_json::json!({ "inputs": inputs })
}

/// The column names a model's signature knows, when it names them.
fn known_columns(signature: &Signature) -> Option<Vec<String>> {
    if let Some(features) = &signature.feature_names {
        return Some(features.clone());
    }
    match signature.inputs.as_deref() {
        Some([single]) if single.shape.len() > 1 => None,
        Some(specs) => Some(specs.iter().map(|s| s.name.clone()).collect()),
        None => None,
    }
}

/// `example` without the `dataframe_split` / `dataframe_records` columns the signature does not name.
fn drop_unknown_columns(example: &Value, signature: &Signature) -> Value {
    let Some(known) = known_columns(signature) else {
        return example.clone();
    };
    let is_known = |name: &Value| {
        let name = name
            .as_str()
            .map_or_else(|| name.to_string(), str::to_string);
        known.contains(&name)
    };
    let mut example = example.clone();
    if let Some(split) = example
        .get_mut("dataframe_split")
        .and_then(Value::as_object_mut)
        && let Some(Value::Array(columns)) = split.get("columns")
    {
        let keep: Vec<bool> = columns.iter().map(is_known).collect();
        let filter = |items: &[Value]| -> Vec<Value> {
            items
                .iter()
                .zip(&keep)
                .filter(|(_, keep)| **keep)
                .map(|(v, _)| v.clone())
                .collect()
        };
        let columns = filter(columns);
        if let Some(Value::Array(rows)) = split.get_mut("data") {
            for row in rows.iter_mut() {
                if let Value::Array(cells) = row
                    && cells.len() == keep.len()
                {
                    *cells = filter(cells);
                }
            }
        }
        split.insert("columns".into(), Value::Array(columns));
    }
    if let Some(Value::Array(records)) = example.get_mut("dataframe_records") {
        for record in records.iter_mut() {
            if let Value::Object(fields) = record {
                let kept: Map<String, Value> = std::mem::take(fields)
                    .into_iter()
                    .filter(|(name, _)| known.contains(name))
                    .collect();
                *fields = kept;
            }
        }
    }
    example
}

/// One row of zeros (empty strings, `false`) for each input, when every non-batch dimension is known.
fn generated_row(signature: &Signature) -> Option<NamedTensors> {
    let specs = signature.inputs.as_ref()?;
    if specs.is_empty() {
        return None;
    }
    specs
        .iter()
        .map(|spec| {
            let mut shape = Vec::with_capacity(spec.shape.len());
            for (axis, &dim) in spec.shape.iter().enumerate() {
                match (axis, dim) {
                    (0, d) if d < 0 => shape.push(1),
                    (_, d) if d < 0 => return None,
                    (_, d) => shape.push(d as usize),
                }
            }
            let n = shape.iter().product();
            let data = TensorData::zeros(spec.dtype, n);
            Some((spec.name.clone(), Tensor { shape, data }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, TensorSpec};

    #[test]
    fn columns_the_signature_does_not_name_are_dropped() {
        let signature = Signature {
            inputs: Some(vec![TensorSpec {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![-1, 2],
            }]),
            feature_names: Some(vec!["a".into(), "b".into()]),
            ..Signature::default()
        };
        let example = serde_json::json!({"dataframe_split": {"columns": ["a", "label", "b"], "data": [[1, 0, 2]]}});
        assert_eq!(
            drop_unknown_columns(&example, &signature),
            serde_json::json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}})
        );
        let records = serde_json::json!({"dataframe_records": [{"a": 1, "label": 0, "b": 2}]});
        assert_eq!(
            drop_unknown_columns(&records, &signature),
            serde_json::json!({"dataframe_records": [{"a": 1, "b": 2}]})
        );
    }
}

//! Inference engines behind one interface: ONNX Runtime in-process, or `predict.py` in worker processes.

pub mod onnx;
pub mod python;

use std::sync::Arc;

use crate::tensor::{Signature, Tensor};

/// Why a batch failed on the server side (client mistakes are caught before a batch is formed).
#[derive(Debug, Clone)]
pub enum InferError {
    /// The worker process died while running the batch; it is being replaced.
    WorkerCrashed(String),
    /// The model raised or returned something unusable.
    Failed(String),
    /// The model is being unloaded or the server is stopping.
    ShuttingDown,
}

impl InferError {
    pub fn message(&self) -> String {
        match self {
            InferError::WorkerCrashed(m) | InferError::Failed(m) => m.clone(),
            InferError::ShuttingDown => "the model was unloaded before the request ran".into(),
        }
    }
}

/// Named tensors, in signature order when the model has a signature.
pub type NamedTensors = Vec<(String, Tensor)>;

/// A loaded model, ready to run batches.
pub enum Engine {
    Onnx(Arc<onnx::OnnxEngine>),
    Python(python::PythonEngine),
}

impl Engine {
    pub fn signature(&self) -> &Signature {
        match self {
            Engine::Onnx(e) => &e.signature,
            Engine::Python(e) => &e.signature,
        }
    }

    /// The platform string of the v2 model metadata.
    pub fn platform(&self) -> &'static str {
        match self {
            Engine::Onnx(_) => "onnxruntime_onnx",
            Engine::Python(_) => "kiln_python",
        }
    }
}

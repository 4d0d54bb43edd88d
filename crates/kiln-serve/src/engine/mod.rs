//! Inference engines behind one interface: ONNX Runtime in-process, or python models (`predict.py`, MLflow
//! model folders) in worker processes.

pub mod onnx;
pub mod python;

use std::sync::Arc;

use crate::tensor::{Signature, Tensor};

/// Why a batch failed on the server side (client mistakes are caught before a batch is formed).
#[derive(Debug, Clone)]
pub enum InferError {
    /// The worker process died while running the batch; it is being replaced.
    WorkerCrashed(String),
    /// The model's own code raised (python), or its runtime refused the batch (ONNX).
    Model(ModelFailure),
    /// The model returned something Kiln cannot use (wrong row count, no outputs).
    BadOutput(String),
    /// The model is being unloaded or the server is stopping.
    ShuttingDown,
    /// The model's queue is full: the client should retry later.
    Overloaded,
}

/// An error raised by model code. It may hold file paths and data: it goes to the server log (and to the
/// local `kiln` CLI through [`crate::probe`]), never to an HTTP client.
#[derive(Debug, Clone)]
pub struct ModelFailure {
    /// The exception and its message (`ValueError: unlucky input`), or the runtime's message.
    pub error: String,
    /// The python traceback, when there is one.
    pub traceback: Option<String>,
}

impl InferError {
    pub fn message(&self) -> String {
        match self {
            InferError::WorkerCrashed(m) | InferError::BadOutput(m) => m.clone(),
            InferError::Model(failure) => failure.error.clone(),
            InferError::ShuttingDown => "the model was unloaded before the request ran".into(),
            InferError::Overloaded => "the model's queue is full".into(),
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
            Engine::Python(e) => e.kind.platform(),
        }
    }
}

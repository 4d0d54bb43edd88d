//! kiln-deploy: from a project's model to a served one. Today that is the glue a serving
//! process needs — the artifact of the model's latest green run, its Python environment, ONNX
//! Runtime — and the servable check that a green run passes before it is published
//! ([`ServableCheck`]). Deployment targets (the local supervisor, Kubernetes) build on it.
//!
//! Library code: nothing here prints; progress goes to the caller's callback.

mod error;
mod example;
mod runtime;
mod servable;
mod serving;

pub use error::Error;
pub use example::{EXAMPLE_ROWS, Example, example_input};
pub use runtime::{find_onnx_runtime, needs_onnx_runtime};
pub use servable::ServableCheck;
pub use serving::{ServedModel, prepare};

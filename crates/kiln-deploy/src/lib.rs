//! kiln-deploy: from a project's model to a served one. The glue a serving process needs (the
//! registered version's artifact, its Python environment, ONNX Runtime: [`prepare`]); the
//! servable check that a green run passes before it is registered ([`ServableCheck`]); and
//! deployment: environments as aliases, a [`Controller`] that rolls out what they name, on a
//! [`Target`] ([`LocalTarget`]: supervised processes on this machine; [`KubernetesTarget`]:
//! Deployments in a cluster).
//!
//! Library code: nothing here prints; progress goes to the caller's callback.

mod controller;
mod error;
mod example;
pub mod kubernetes;
pub mod local;
mod runtime;
mod servable;
mod serving;
mod target;

pub use controller::{Change, Controller};
pub use error::Error;
pub use example::{EXAMPLE_ROWS, Example, example_input};
pub use kubernetes::KubernetesTarget;
pub use local::{LocalOptions, LocalTarget};
pub use runtime::{find_onnx_runtime, needs_onnx_runtime};
pub use servable::ServableCheck;
pub use serving::{ServedModel, prepare};
pub use target::{DeploymentStatus, Health, Release, Replicas, RolloutError, Target, TargetEvent};

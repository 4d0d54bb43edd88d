//! OCI images of model versions, built without a container engine: [`build`] writes an image
//! layout on disk (a base layer with Kiln's server and its runtime, a model layer with the
//! artifact, an SBOM attached), [`push`] sends an image from the layout to any OCI distribution
//! registry.
//!
//! Library code: nothing here prints; progress goes to the caller's callback.

mod base;
pub mod build;
mod closure;
mod error;
pub mod layer;
pub mod layout;
pub mod push;
pub mod sbom;
#[cfg(feature = "testing")]
pub mod testing;

pub use build::{BuiltImage, BuiltLayer, ImageSpec, LayerRole, Runtime, build, check_reference};
pub use error::Error;
pub use layout::Layout;
pub use push::credentials::env_vars;
pub use push::{Auth, PushOptions, Pushed, push};

//! OCI images of model versions, built without a container engine: [`build`] writes an image
//! layout on disk (a base layer with Kiln's server and its runtime, a model layer with the
//! artifact), [`push`] sends an image from the layout to any OCI distribution registry.

pub mod build;
mod error;
pub mod push;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
pub use push::credentials::env_vars;
pub use push::{Auth, PushOptions, Pushed, push};

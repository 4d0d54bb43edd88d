//! OCI images of model versions, built without a container engine: [`build`] writes an image
//! layout on disk (a base layer with Kiln's server and its runtime, a model layer with the
//! artifact), [`push`] sends an image from the layout to any OCI distribution registry.

pub mod build;
pub mod push;

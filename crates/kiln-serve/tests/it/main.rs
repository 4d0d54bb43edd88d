//! Integration tests of kiln-serve: real servers on loopback, real clients (reqwest, tritonclient,
//! promtool), models exported by skl2onnx at test time.

mod batching;
mod common;
mod metrics;
mod mlflow;
mod python_model;
mod request_log;
mod swap;
mod v2;
mod validation;

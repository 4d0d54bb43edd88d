//! Integration tests of kiln-serve: real servers on loopback, real clients (reqwest, tritonclient,
//! promtool), models exported by skl2onnx and saved by mlflow at test time.

mod batching;
mod common;
mod front;
mod http_errors;
mod metrics;
mod mlflow;
mod probe;
mod python_model;
mod request_log;
mod swap;
mod tables;
mod v2;
mod validation;

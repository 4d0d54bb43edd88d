//! The one JSON error shape of the HTTP API, with stable machine-readable codes.
//!
//! Every error response, whatever the protocol, is `{"error": "<message>", "code": "<code>"}`, plus `"field"`
//! when one part of the request is at fault. `error` is a string so that Open Inference Protocol clients
//! (which read `error` as the message) understand it; `code` is stable and safe to match on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Stable error codes. Renaming one is a breaking change of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    InvalidRequest,
    MissingInput,
    UnexpectedInput,
    InvalidShape,
    InvalidDatatype,
    InvalidValue,
    NanNotAllowed,
    UnknownOutput,
    ModelNotFound,
    ModelVersionNotFound,
    ModelNotReady,
    ModelLoadFailed,
    WorkerCrashed,
    InferenceFailed,
    ShuttingDown,
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MissingInput => "missing_input",
            ErrorCode::UnexpectedInput => "unexpected_input",
            ErrorCode::InvalidShape => "invalid_shape",
            ErrorCode::InvalidDatatype => "invalid_datatype",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::NanNotAllowed => "nan_not_allowed",
            ErrorCode::UnknownOutput => "unknown_output",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelVersionNotFound => "model_version_not_found",
            ErrorCode::ModelNotReady => "model_not_ready",
            ErrorCode::ModelLoadFailed => "model_load_failed",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotFound => "not_found",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadJson
            | ErrorCode::InvalidRequest
            | ErrorCode::MissingInput
            | ErrorCode::UnexpectedInput
            | ErrorCode::InvalidShape
            | ErrorCode::InvalidDatatype
            | ErrorCode::InvalidValue
            | ErrorCode::NanNotAllowed
            | ErrorCode::UnknownOutput => StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ModelNotFound | ErrorCode::ModelVersionNotFound | ErrorCode::NotFound => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::ModelNotReady | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::WorkerCrashed => StatusCode::BAD_GATEWAY,
            ErrorCode::ModelLoadFailed | ErrorCode::InferenceFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The part of the request at fault, e.g. `inputs[0].shape` or `dataframe_split.columns`.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.message, "code": self.code.as_str()});
        if let Some(field) = &self.field {
            body["field"] = serde_json::Value::String(field.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.to_json())).into_response()
    }
}

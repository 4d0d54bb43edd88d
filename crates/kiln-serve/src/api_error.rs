//! The one JSON error shape of Kiln's HTTP APIs (the prediction server's here, the registry's in
//! `kiln-api`), with stable machine-readable codes.
//!
//! Every error response, whatever the protocol, is `{"error": "<message>", "code": "<code>"}`, plus `"field"`
//! when one part of the request is at fault and `"request_id"` on inference requests (the same id as the
//! `x-request-id` header, and the one the server log names). `error` is a string so that Open Inference
//! Protocol clients (which read `error` as the message) understand it; `code` is stable and safe to match on.
//! Server-side details (a model's traceback, with its file paths) stay in [`ApiError::detail`], which is
//! logged and never sent.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
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
    InvalidPath,
    MethodNotAllowed,
    ModelNotFound,
    ModelVersionNotFound,
    ModelNotReady,
    ModelLoadFailed,
    WorkerCrashed,
    ModelError,
    InferenceFailed,
    Overloaded,
    ShuttingDown,
    /// A deployment's front has no version to send the request to (none deployed yet).
    NoVersionServing,
    /// A deployment's front could not reach its serving process (being restarted) in time.
    BackendUnavailable,
    /// A deployment's serving process answered something that is not HTTP.
    BadGateway,
    NotFound,
    AliasNotFound,
    Unauthorized,
    Forbidden,
    Internal,
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
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelVersionNotFound => "model_version_not_found",
            ErrorCode::ModelNotReady => "model_not_ready",
            ErrorCode::ModelLoadFailed => "model_load_failed",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::ModelError => "model_error",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NoVersionServing => "no_version_serving",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AliasNotFound => "alias_not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
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
            | ErrorCode::UnknownOutput
            | ErrorCode::InvalidPath => StatusCode::BAD_REQUEST,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ModelNotFound
            | ErrorCode::ModelVersionNotFound
            | ErrorCode::AliasNotFound
            | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::ModelNotReady
            | ErrorCode::ShuttingDown
            | ErrorCode::Overloaded
            | ErrorCode::NoVersionServing
            | ErrorCode::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::WorkerCrashed | ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::ModelLoadFailed
            | ErrorCode::ModelError
            | ErrorCode::InferenceFailed
            | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
    /// The id of the inference request, echoed in the body.
    pub request_id: Option<String>,
    /// Server-side detail for the log (a model's error and traceback); never sent to the client.
    pub detail: Option<String>,
}

/// Seconds a client is asked to wait (`Retry-After`) when a model's queue is full, or when a
/// deployment has nothing serving.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            request_id: None,
            detail: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Whether the answer carries `Retry-After`: the condition is expected to pass by itself.
    pub fn retry_after(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::Overloaded | ErrorCode::NoVersionServing | ErrorCode::BackendUnavailable
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.message, "code": self.code.as_str()});
        if let Some(field) = &self.field {
            body["field"] = serde_json::Value::String(field.clone());
        }
        if let Some(id) = &self.request_id {
            body["request_id"] = serde_json::Value::String(id.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.to_json())).into_response();
        if self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if self.code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `axum::extract::Path`, answering its rejections (a segment that is not UTF-8, a missing
/// parameter) in the one JSON error shape instead of axum's plain text.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!(
                    "cannot read the request path `{}`: {}",
                    parts.uri.path(),
                    rejection.body_text().to_lowercase()
                ),
            )),
        }
    }
}

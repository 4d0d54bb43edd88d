//! The HTTP front end: routes of both protocols, body limits and content types, metrics, request log.
//!
//! Handlers never block: decoding is cheap and bounded by the body limit, inference runs on blocking
//! threads or worker processes behind the batcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::api_error::{ApiError, ApiPath as Path, ErrorCode};
use crate::config::ServerConfig;
use crate::engine::{InferError, NamedTensors};
use crate::metrics::Metrics;
use crate::protocol::{mlflow, v2};
use crate::repository::{LoadedModel, Repository};
use crate::request_log::RequestLog;
use crate::tensor::check_inputs;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub struct AppState {
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub request_log: Option<RequestLog>,
    pub settings: Arc<ServerConfig>,
    pub shutting_down: AtomicBool,
    next_request: AtomicU64,
    id_prefix: u32,
}

impl AppState {
    pub fn new(
        repository: Arc<Repository>,
        metrics: Arc<Metrics>,
        request_log: Option<RequestLog>,
        settings: Arc<ServerConfig>,
    ) -> AppState {
        AppState {
            repository,
            metrics,
            request_log,
            settings,
            shutting_down: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
            id_prefix: rand::random(),
        }
    }
}

type AppStateRef = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{model}/infer", post(v2_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2_infer_version),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route("/invocations", post(invocations))
        .route("/models/{model}/invocations", post(invocations_model))
        .route("/ping", get(ping))
        .route("/health", get(ping))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see `/v2/...` (Open Inference Protocol) or `/invocations` (MLflow)",
    )
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "this endpoint does not take `{method}`; inference endpoints take `POST`, the others `GET`"
        ),
    )
}

async fn server_metadata() -> Json {
    Json(
        json!({"name": "kiln", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data", "model_repository"]}),
    )
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): AppStateRef) -> StatusCode {
    if !state.shutting_down.load(Ordering::Relaxed) && state.repository.all_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn ping(state: AppStateRef) -> StatusCode {
    ready(state).await
}

async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn metrics(State(state): AppStateRef, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (body, content_type) = if wants_openmetrics {
        (
            state.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            state.metrics.encode_prometheus_text(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response built from a `Value` (axum's `Json` re-serialises; this keeps bodies as built).
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&self.0).unwrap_or_default(),
        )
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn lookup(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, ApiError> {
    if !state.repository.is_known(name) {
        let known: Vec<String> = state
            .repository
            .names()
            .iter()
            .map(|n| format!("`{n}`"))
            .collect();
        return Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!(
                "model `{name}` not found; this server has {}",
                known.join(", ")
            ),
        ));
    }
    let model = state
        .repository
        .get(name)
        .ok_or_else(|| ApiError::new(ErrorCode::ModelNotReady, format!("model `{name}` is not loaded; load it with `POST /v2/repository/models/{name}/load`")))?;
    if let Some(version) = version
        && version != model.version
    {
        return Err(ApiError::new(
            ErrorCode::ModelVersionNotFound,
            format!(
                "model `{name}` has no version `{version}`; the version serving is `{}`",
                model.version
            ),
        ));
    }
    Ok(model)
}

async fn model_metadata(
    State(state): AppStateRef,
    Path(model): Path<String>,
) -> Result<Json, ApiError> {
    Ok(Json(v2::model_metadata(&*lookup(&state, &model, None)?)))
}

async fn model_metadata_version(
    State(state): AppStateRef,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json, ApiError> {
    Ok(Json(v2::model_metadata(&*lookup(
        &state,
        &model,
        Some(&version),
    )?)))
}

async fn model_ready(
    State(state): AppStateRef,
    Path(model): Path<String>,
) -> Result<Json, ApiError> {
    let model = lookup(&state, &model, None)?;
    Ok(Json(json!({"name": model.name, "ready": true})))
}

async fn model_ready_version(
    State(state): AppStateRef,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json, ApiError> {
    let model = lookup(&state, &model, Some(&version))?;
    Ok(Json(json!({"name": model.name, "ready": true})))
}

async fn repository_index(State(state): AppStateRef) -> Json {
    let models: Vec<Value> = state
        .repository
        .names()
        .into_iter()
        .map(|name| match state.repository.get(&name) {
            Some(model) => json!({"name": name, "version": model.version, "state": "READY"}),
            None => json!({"name": name, "state": "UNAVAILABLE"}),
        })
        .collect();
    Json(Value::Array(models))
}

async fn load_model(
    State(state): AppStateRef,
    Path(model): Path<String>,
) -> Result<Json, ApiError> {
    if !state.repository.is_known(&model) {
        return Err(lookup(&state, &model, None)
            .err()
            .unwrap_or_else(|| ApiError::new(ErrorCode::ModelNotFound, "model not found")));
    }
    match state.repository.load(&model).await {
        Ok(loaded) => Ok(Json(
            json!({"name": loaded.name, "version": loaded.version}),
        )),
        Err(error) => Err(ApiError::new(
            ErrorCode::ModelLoadFailed,
            format!(
                "loading model `{model}` failed, the previous version (if any) keeps serving: {}",
                crate::error_chain(&error)
            ),
        )),
    }
}

async fn unload_model(
    State(state): AppStateRef,
    Path(model): Path<String>,
) -> Result<Json, ApiError> {
    state.repository.unload(&model).map_err(|_| {
        ApiError::new(
            ErrorCode::ModelNotFound,
            format!("model `{model}` not found"),
        )
    })?;
    Ok(Json(json!({})))
}

#[derive(Clone, Copy)]
enum Protocol {
    V2,
    Mlflow,
}

async fn v2_infer(
    state: AppStateRef,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(state, Protocol::V2, Some(model), None, headers, body).await
}

async fn v2_infer_version(
    state: AppStateRef,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(
        state,
        Protocol::V2,
        Some(model),
        Some(version),
        headers,
        body,
    )
    .await
}

async fn invocations(state: AppStateRef, headers: HeaderMap, body: Body) -> Response {
    infer(state, Protocol::Mlflow, None, None, headers, body).await
}

async fn invocations_model(
    state: AppStateRef,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(state, Protocol::Mlflow, Some(model), None, headers, body).await
}

/// What the request log records of one request.
struct Logged {
    inputs: Option<Value>,
    outputs: Option<Value>,
}

async fn infer(
    State(state): AppStateRef,
    protocol: Protocol,
    model: Option<String>,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(
            || {
                format!(
                    "{:08x}-{}",
                    state.id_prefix,
                    state.next_request.fetch_add(1, Ordering::Relaxed)
                )
            },
            str::to_string,
        );
    let sampled = state.request_log.as_ref().is_some_and(RequestLog::sample);
    let mut logged = Logged {
        inputs: None,
        outputs: None,
    };
    let mut model_label = String::new();
    let mut resolved: Option<Arc<LoadedModel>> = None;
    let result = run_infer(
        &state,
        protocol,
        model,
        version,
        &headers,
        body,
        sampled,
        &mut logged,
        &mut model_label,
        &mut resolved,
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(mut error) => {
            if error.status().is_server_error() && error.code != ErrorCode::Overloaded {
                let detail = error.detail.as_deref().unwrap_or(&error.message);
                tracing::error!(model = %model_label, request_id = %request_id, code = error.code.as_str(), "{detail}");
            }
            error.request_id = Some(request_id.clone());
            if sampled {
                logged.outputs = Some(error.to_json());
            }
            error.into_response()
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    match &resolved {
        Some(model) => model.metrics.request_done(&state.metrics, status, elapsed),
        None => state
            .metrics
            .request_done(&model_label, "", status, elapsed),
    }
    if let (true, Some(log)) = (sampled, &state.request_log) {
        log.record(json!({
            "timestamp": jiff::Timestamp::now().round(jiff::Unit::Millisecond).map(|t| t.to_string()).unwrap_or_default(),
            "request_id": request_id,
            "model": model_label,
            "model_version": resolved.as_ref().map(|m| m.version.clone()),
            "protocol": match protocol { Protocol::V2 => "v2", Protocol::Mlflow => "mlflow" },
            "status": status,
            "latency_seconds": elapsed.as_secs_f64(),
            "inputs": logged.inputs,
            "outputs": logged.outputs,
        }));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[allow(clippy::too_many_arguments)]
async fn run_infer(
    state: &AppState,
    protocol: Protocol,
    model: Option<String>,
    version: Option<String>,
    headers: &HeaderMap,
    body: Body,
    sampled: bool,
    logged: &mut Logged,
    model_label: &mut String,
    resolved: &mut Option<Arc<LoadedModel>>,
) -> Result<Response, ApiError> {
    let name = match model {
        Some(name) => name,
        None => {
            let names = state.repository.names();
            match names.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "this server has several models: post to `/models/{name}/invocations` or `/v2/models/{name}/infer`",
                    ));
                }
            }
        }
    };
    if state.repository.is_known(&name) {
        model_label.clone_from(&name);
    }
    let model = lookup(state, &name, version.as_deref())?;
    *resolved = Some(Arc::clone(&model));
    let in_flight = model.metrics.in_flight.clone();
    in_flight.inc();
    let _in_flight = scopeguard::guard((), move |()| {
        in_flight.dec();
    });
    let media = check_content_type(headers, protocol)?;
    let bytes = read_body(body, headers, state.settings.max_body_bytes).await?;
    let signature = model.engine.signature();
    let allow_nan = state.settings.allow_nan;
    match protocol {
        Protocol::V2 => {
            let header_length = headers.get(v2::HEADER_LENGTH).map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidRequest,
                            "`Inference-Header-Content-Length` must be a byte count",
                        )
                    })
            });
            let header_length = header_length.transpose()?;
            let mut request = v2::decode(&bytes, header_length, signature, allow_nan)?;
            let inputs = check_inputs(signature, std::mem::take(&mut request.inputs), "inputs.")?;
            if sampled {
                logged.inputs = Some(tensors_json(&inputs));
            }
            let outputs = model.infer(inputs).await.map_err(infer_error)?;
            if sampled {
                logged.outputs = Some(tensors_json(&outputs));
            }
            let (body, header_length) = v2::encode(&request, &model, outputs);
            let mut response = json_response(StatusCode::OK, body);
            if let Some(length) = header_length {
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
                    .headers_mut()
                    .insert(v2::HEADER_LENGTH, HeaderValue::from(length));
            }
            Ok(response)
        }
        Protocol::Mlflow => {
            if media == Media::Json
                && !sampled
                && let Some(inputs) = mlflow::decode_fast(&bytes, signature)
            {
                let outputs = model.infer(inputs).await.map_err(infer_error)?;
                return Ok(json_response(
                    StatusCode::OK,
                    mlflow::encode(&outputs, signature),
                ));
            }
            let (inputs, body) = match media {
                Media::Csv => mlflow::decode_csv(&bytes, signature, allow_nan)?,
                Media::Json => {
                    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::new(
                            ErrorCode::BadJson,
                            format!("the request body is not valid JSON: {e}"),
                        )
                    })?;
                    (mlflow::decode(&body, signature, allow_nan)?, body)
                }
            };
            let inputs = check_inputs(signature, inputs, "")?;
            if sampled {
                logged.inputs = Some(body);
            }
            let outputs = model.infer(inputs).await.map_err(infer_error)?;
            let bytes = mlflow::encode(&outputs, signature);
            if sampled {
                logged.outputs = serde_json::from_slice(&bytes).ok();
            }
            Ok(json_response(StatusCode::OK, bytes))
        }
    }
}

/// What the client is told when the model fails: the stable code and a pointer to the log, never the
/// model's error text or traceback (they carry file paths and possibly data), which go to the log.
fn infer_error(error: InferError) -> ApiError {
    let see_log = "the server log has the details under this request's id";
    match error {
        InferError::WorkerCrashed(message) => ApiError::new(ErrorCode::WorkerCrashed, message),
        InferError::Model(failure) => ApiError::new(
            ErrorCode::ModelError,
            format!("the model raised an error on this request; {see_log}"),
        )
        .with_detail(match &failure.traceback {
            Some(traceback) => format!("{}\n{traceback}", failure.error),
            None => failure.error,
        }),
        InferError::BadOutput(message) => ApiError::new(
            ErrorCode::InferenceFailed,
            format!("the model's output cannot be used; {see_log}"),
        )
        .with_detail(message),
        InferError::ShuttingDown => {
            ApiError::new(ErrorCode::ShuttingDown, InferError::ShuttingDown.message())
        }
        InferError::Overloaded => ApiError::new(
            ErrorCode::Overloaded,
            "the model's queue is full; retry after the `Retry-After` delay",
        ),
    }
}

fn tensors_json(tensors: &NamedTensors) -> Value {
    Value::Object(
        tensors
            .iter()
            .map(|(name, t)| (name.clone(), json!({"datatype": t.dtype().as_str(), "shape": t.shape, "data": t.flat_json()})))
            .collect(),
    )
}

/// What a request body holds, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Json,
    /// `text/csv`, which MLflow's `/invocations` also takes.
    Csv,
}

fn check_content_type(headers: &HeaderMap, protocol: Protocol) -> Result<Media, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
    let essence = content_type
        .as_deref()
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let (media, expected) = match (protocol, essence.as_deref()) {
        (Protocol::Mlflow, Some("application/json")) => (Some(Media::Json), ""),
        (Protocol::Mlflow, Some("text/csv")) => (Some(Media::Csv), ""),
        (Protocol::Mlflow, _) => (None, "`Content-Type: application/json` or `text/csv`"),
        (Protocol::V2, None | Some("application/json" | "application/octet-stream" | "")) => {
            (Some(Media::Json), "")
        }
        (Protocol::V2, _) => (None, "`Content-Type: application/json`"),
    };
    if let Some(media) = media {
        return Ok(media);
    }
    let got = content_type.map_or_else(|| "no `Content-Type`".to_string(), |c| format!("`{c}`"));
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!("expected {expected}, got {got}"),
    )
    .with_field("Content-Type"))
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than the limit of {limit} bytes (`--max-body-bytes`)"
            ),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

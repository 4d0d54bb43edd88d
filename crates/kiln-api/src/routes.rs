//! The routes of the registry API: names from the path checked first (400), then the registry
//! asked on a blocking thread (404 for what it does not hold), answers as JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use kiln_pipeline::{AliasChange, AliasMoved, Workspace};
use kiln_registry::{
    AliasCommand, AliasMove, LATEST, ModelRef, ModelSummary, ModelVersion, MoveBy, Registry,
    Selector, Version,
};
use kiln_serve::api_error::{ApiError, ApiPath as Path, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::ApiConfig;
use crate::auth::Token;
use crate::registries::Registries;

/// Versions in a page when the request names no `limit`.
const DEFAULT_PAGE: usize = 50;
/// The largest `limit` a request may ask for.
const MAX_PAGE: usize = 1000;
/// The largest body an alias move may send.
const MAX_BODY: usize = 64 * 1024;
/// The longest reason kept in the alias history.
const MAX_REASON: usize = 1000;
/// Kept as the reason of a move through the API that gave none, so that the history says how
/// the alias moved.
const DEFAULT_REASON: &str = "moved through the registry API";

pub struct ApiState {
    config: ApiConfig,
    token: Token,
    registries: Registries,
}

impl ApiState {
    pub fn new(config: ApiConfig) -> ApiState {
        ApiState {
            token: Token::new(config.token.as_deref()),
            registries: Registries::new(config.root.clone()),
            config,
        }
    }
}

type Shared = State<Arc<ApiState>>;

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/models/{model}/versions", get(versions))
        .route("/v1/models/{model}/versions/{version}", get(version))
        .route("/v1/models/{model}/aliases", get(aliases))
        .route(
            "/v1/models/{model}/aliases/{alias}",
            get(alias).put(move_alias),
        )
        .route("/v1/models/{model}/history", get(history))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; the registry API is under `/v1/models`",
    )
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "this endpoint does not take `{method}`; the registry API answers `GET`, and `PUT` on an alias"
        ),
    )
}

/// Runs `read` with a registry on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &Arc<ApiState>,
    read: impl FnOnce(&Registry) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    let joined =
        tokio::task::spawn_blocking(move || state.registries.with(read).map_err(internal)).await;
    match joined {
        Ok(result) => result?,
        Err(error) => Err(internal(error)),
    }
}

/// A failure of Kiln's, not the client's: logged with its causes, answered without them.
fn internal(error: impl std::error::Error) -> ApiError {
    let detail = kiln_serve::error_chain(&error);
    tracing::error!("registry API: {detail}");
    ApiError::new(
        ErrorCode::Internal,
        "the registry could not answer; the server's log says why",
    )
    .with_detail(detail)
}

/// A registry error as the client sees it: what does not exist is a 404.
fn registry_error(error: kiln_registry::Error) -> ApiError {
    use kiln_registry::Error;
    let (code, field) = match &error {
        Error::NoSuchModel(_) => (ErrorCode::ModelNotFound, None),
        Error::NoSuchVersion { .. } => (ErrorCode::ModelVersionNotFound, None),
        Error::AliasUnset { .. } => (ErrorCode::AliasNotFound, None),
        Error::BadAlias { .. } => (ErrorCode::InvalidPath, Some("alias")),
        Error::BadModelRef { .. } => (ErrorCode::InvalidPath, None),
        _ => return internal(error),
    };
    let answer = ApiError::new(code, error.to_string());
    match field {
        Some(field) => answer.with_field(field),
        None => answer,
    }
}

/// A model name from the path: the names `kiln.yaml` allows.
fn check_model(model: &str) -> Result<(), ApiError> {
    if kiln_spec::valid_name(model) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InvalidPath,
        format!(
            "`{model}` is not a model name: use letters, digits, `_`, `-` and `.`, not starting with `.` or `-`"
        ),
    )
    .with_field("model"))
}

/// An alias name from the path or the query (`latest` included).
fn check_alias(model: &str, alias: &str) -> Result<(), ApiError> {
    let bad = |reason: &str| {
        ApiError::new(
            ErrorCode::InvalidPath,
            format!("`{alias}` is not an alias: {reason}"),
        )
        .with_field("alias")
    };
    match ModelRef::parse(&format!("{model}@{alias}")) {
        Ok(ModelRef {
            selector: Selector::Alias(_),
            ..
        }) => Ok(()),
        Ok(ModelRef {
            selector: Selector::Version(version),
            ..
        }) => Err(bad(&format!(
            "`{alias}` names version {version}; see `/v1/models/{model}/versions/{version}`"
        ))),
        Err(kiln_registry::Error::BadModelRef { reason, .. }) => Err(bad(&reason)),
        Err(error) => Err(registry_error(error)),
    }
}

/// A version number from the path: `3` or `v3`.
fn parse_version(text: &str) -> Result<Version, ApiError> {
    let digits = text.strip_prefix('v').unwrap_or(text);
    match digits.parse::<Version>() {
        Ok(version) if version >= 1 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(version),
        _ => Err(ApiError::new(
            ErrorCode::InvalidPath,
            format!("`{text}` is not a version number: write `3` or `v3` (versions start at 1)"),
        )
        .with_field("version")),
    }
}

/// An error unless `model` has versions.
fn known_model(registry: &Registry, model: &str) -> Result<(), ApiError> {
    let latest = ModelRef {
        model: model.to_string(),
        selector: Selector::Alias(LATEST.to_string()),
    };
    match registry.resolve(&latest) {
        Ok(_) | Err(kiln_registry::Error::AliasUnset { .. }) => Ok(()),
        Err(error) => Err(registry_error(error)),
    }
}

#[derive(Debug, Serialize)]
struct ModelList {
    models: Vec<ModelSummary>,
}

async fn models(State(state): Shared) -> Result<Json<ModelList>, ApiError> {
    blocking(&state, |registry| {
        let models = registry.models().map_err(registry_error)?;
        Ok(Json(ModelList { models }))
    })
    .await
}

async fn model(
    State(state): Shared,
    Path(model): Path<String>,
) -> Result<Json<ModelSummary>, ApiError> {
    check_model(&model)?;
    blocking(&state, move |registry| {
        registry
            .models()
            .map_err(registry_error)?
            .into_iter()
            .find(|summary| summary.model == model)
            .map(Json)
            .ok_or_else(|| registry_error(kiln_registry::Error::NoSuchModel(model)))
    })
    .await
}

/// `?limit=&after=` of a version listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// One page of versions, newest first.
#[derive(Debug, Serialize)]
struct VersionPage {
    model: String,
    versions: Vec<ModelVersion>,
    /// The `after` of the next page; `null` on the last one.
    next_after: Option<Version>,
}

/// A query the extractor could not read, in the one error shape.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!(
            "cannot read the query string: {}",
            rejection.body_text().to_lowercase()
        ),
    )
}

fn page_limit(text: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_PAGE);
    };
    match text.parse::<usize>() {
        Ok(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`limit` is `{text}`: it takes a number of versions from 1 to {MAX_PAGE}"),
        )
        .with_field("limit")),
    }
}

async fn versions(
    State(state): Shared,
    Path(model): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<VersionPage>, ApiError> {
    check_model(&model)?;
    let Query(query) = query.map_err(bad_query)?;
    let limit = page_limit(query.limit.as_deref())?;
    let after = match query.after.as_deref() {
        None => None,
        Some(text) => Some(parse_version(text).map_err(|error| error.with_field("after"))?),
    };
    blocking(&state, move |registry| {
        let (versions, next_after) = page(registry, &model, after, limit)?;
        Ok(Json(VersionPage {
            model,
            versions,
            next_after,
        }))
    })
    .await
}

/// Up to `limit` versions of `model` below `after` (from the newest when `None`), and the
/// `after` of the next page. Versions are numbered without gaps and `latest` names the newest
/// (only registrations and imports move it), so a page is `limit` lookups, not a read of every
/// version.
fn page(
    registry: &Registry,
    model: &str,
    after: Option<Version>,
    limit: usize,
) -> Result<(Vec<ModelVersion>, Option<Version>), ApiError> {
    let latest = ModelRef {
        model: model.to_string(),
        selector: Selector::Alias(LATEST.to_string()),
    };
    let newest = match registry.resolve(&latest) {
        Ok(newest) => newest,
        // Every registration moves `latest`; should it be unset, the newest is read instead.
        Err(kiln_registry::Error::AliasUnset { .. }) => registry
            .model_versions(model)
            .map_err(registry_error)?
            .first()
            .map_or(0, |version| version.version),
        Err(error) => return Err(registry_error(error)),
    };
    let top = after.map_or(newest, |after| (after - 1).min(newest));
    let mut versions = Vec::new();
    let mut number = top;
    while number >= 1 && versions.len() < limit {
        match registry.model_version(model, number) {
            Ok(version) => versions.push(version),
            // Not expected (versions have no gaps), but a missing one is no error for a list.
            Err(kiln_registry::Error::NoSuchVersion { .. }) => {}
            Err(error) => return Err(registry_error(error)),
        }
        number -= 1;
    }
    let next_after = match versions.last() {
        Some(last) if last.version > 1 && number >= 1 => Some(last.version),
        _ => None,
    };
    Ok((versions, next_after))
}

async fn version(
    State(state): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelVersion>, ApiError> {
    check_model(&model)?;
    let version = parse_version(&version)?;
    blocking(&state, move |registry| {
        // The model first: an unknown model is not a missing version.
        let reference = ModelRef {
            model,
            selector: Selector::Version(version),
        };
        registry.resolve(&reference).map_err(registry_error)?;
        registry
            .model_version(&reference.model, version)
            .map(Json)
            .map_err(registry_error)
    })
    .await
}

#[derive(Debug, Serialize)]
struct AliasList {
    model: String,
    /// Each alias with the version it names.
    aliases: std::collections::BTreeMap<String, Version>,
}

async fn aliases(
    State(state): Shared,
    Path(model): Path<String>,
) -> Result<Json<AliasList>, ApiError> {
    check_model(&model)?;
    blocking(&state, move |registry| {
        known_model(registry, &model)?;
        let aliases = registry.aliases(&model).map_err(registry_error)?;
        Ok(Json(AliasList { model, aliases }))
    })
    .await
}

/// The version an alias names, as `/versions/{n}` shows it.
async fn alias(
    State(state): Shared,
    Path((model, alias)): Path<(String, String)>,
) -> Result<Json<ModelVersion>, ApiError> {
    check_model(&model)?;
    check_alias(&model, &alias)?;
    blocking(&state, move |registry| {
        let reference = ModelRef {
            model,
            selector: Selector::Alias(alias),
        };
        let version = registry.resolve(&reference).map_err(registry_error)?;
        registry
            .model_version(&reference.model, version)
            .map(Json)
            .map_err(registry_error)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    alias: Option<String>,
}

#[derive(Debug, Serialize)]
struct History {
    model: String,
    alias: Option<String>,
    /// Oldest first.
    moves: Vec<AliasMove>,
}

async fn history(
    State(state): Shared,
    Path(model): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    check_model(&model)?;
    let Query(HistoryQuery { alias }) = query.map_err(bad_query)?;
    if let Some(alias) = &alias {
        check_alias(&model, alias)?;
    }
    blocking(&state, move |registry| {
        known_model(registry, &model)?;
        let moves = registry
            .alias_history(&model, alias.as_deref())
            .map_err(registry_error)?;
        Ok(Json(History {
            model,
            alias,
            moves,
        }))
    })
    .await
}

/// The body of `PUT /v1/models/{model}/aliases/{alias}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    version: Version,
    reason: Option<String>,
}

async fn read_move(body: Body) -> Result<MoveRequest, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("an alias move's body is at most {MAX_BODY} bytes"),
        )
    })?;
    let request: MoveRequest = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::new(
            ErrorCode::BadJson,
            format!(
                "the body is not an alias move (`{{\"version\": N, \"reason\": \"...\"}}`): {error}"
            ),
        )
    })?;
    if request.version < 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`version` is {}: versions start at 1", request.version),
        )
        .with_field("version"));
    }
    if request
        .reason
        .as_ref()
        .is_some_and(|reason| reason.len() > MAX_REASON)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`reason` is longer than {MAX_REASON} bytes"),
        )
        .with_field("reason"));
    }
    Ok(request)
}

/// Moves an alias as `kiln models alias` does: the registry records the move (command
/// `alias`, with its reason), then `.kiln/serving/<model>@<alias>` follows it.
async fn move_alias(
    State(state): Shared,
    Path((model, alias)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AliasMoved>, ApiError> {
    // Nothing is said about the registry to a client without the token.
    state.token.check(&headers)?;
    check_model(&model)?;
    kiln_registry::validate_alias(&alias).map_err(registry_error)?;
    let request = read_move(body).await?;
    let root = state.config.root.clone();
    let on_moved = state.config.on_alias_moved.clone();
    let moved = tokio::task::spawn_blocking(move || -> Result<AliasMoved, ApiError> {
        let mut workspace = Workspace::open(&root).map_err(internal)?;
        let reference = ModelRef {
            model: model.clone(),
            selector: Selector::Version(request.version),
        };
        workspace
            .registry
            .resolve(&reference)
            .map_err(registry_error)?;
        let project = kiln_spec::load(&root).map_err(|error| error.to_string());
        let change = AliasChange::To {
            version: request.version,
            by: MoveBy {
                command: AliasCommand::Alias,
                run_id: None,
                reason: Some(request.reason.as_deref().unwrap_or(DEFAULT_REASON)),
            },
        };
        let moved = kiln_pipeline::move_alias(
            &mut workspace,
            project.as_ref().map_err(String::clone),
            &model,
            &alias,
            change,
        )
        .map_err(|error| match error {
            kiln_pipeline::Error::Registry(error) => registry_error(error),
            other => internal(other),
        })?;
        if let Some(on_moved) = on_moved {
            on_moved(&moved, request.reason.as_deref());
        }
        Ok(moved)
    })
    .await
    .map_err(internal)??;
    tracing::info!(
        "registry API: `{}@{}` moved to v{}",
        moved.model,
        moved.alias,
        moved.to_version
    );
    if let Some(warning) = &moved.serving_warning {
        tracing::warn!(
            "registry API: could not publish `{}@{}` for serving: {warning}",
            moved.model,
            moved.alias
        );
    }
    Ok(Json(moved))
}

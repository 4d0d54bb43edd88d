//! kiln-api: the model registry over HTTP, as JSON. Models, versions (lineage, metrics,
//! aliases), aliases and the audit history of their moves are read by anyone who can reach
//! the socket; moving an alias takes a bearer token (`KILN_REGISTRY_TOKEN`).
//!
//! [`router`] is the whole API as an `axum::Router`, for `kiln registry serve` and for a
//! control plane to mount; [`serve_blocking`] runs it on its own runtime. Errors are answered
//! in the serving API's one JSON shape (`kiln_serve::api_error`). Every registry call runs on
//! a blocking thread, never on the async executor.

mod auth;
mod registries;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use kiln_pipeline::AliasMoved;

/// The environment variable holding the token that alias moves must present
/// (`Authorization: Bearer <token>`). Unset or empty: the API moves no alias.
pub const KILN_REGISTRY_TOKEN: &str = "KILN_REGISTRY_TOKEN";

/// The API could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] kiln_pipeline::Error),
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry API stopped")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Pipeline(error) => error.hint(),
            Error::Bind { .. } => {
                Some("choose another address with `--listen 127.0.0.1:PORT`".to_string())
            }
            Error::Serve(_) => None,
        }
    }
}

/// Called (on a blocking thread) after an alias moved through the API, with the move and its
/// reason: how the binary sends the project's notifications, which this crate does not own.
pub type OnAliasMoved = Arc<dyn Fn(&AliasMoved, Option<&str>) + Send + Sync>;

/// What the API serves, and who may move aliases.
#[derive(Clone)]
pub struct ApiConfig {
    /// The project root: its `.kiln/` holds the registry, and the serving links that follow
    /// an alias when it moves.
    pub root: PathBuf,
    /// The token alias moves must present; `None` refuses every move.
    pub token: Option<String>,
    /// Told of every alias move, when set.
    pub on_alias_moved: Option<OnAliasMoved>,
}

impl ApiConfig {
    /// The project at `root`, with the token from `KILN_REGISTRY_TOKEN` (an empty value is
    /// none).
    pub fn from_env(root: PathBuf) -> ApiConfig {
        let token = std::env::var(KILN_REGISTRY_TOKEN)
            .ok()
            .filter(|token| !token.is_empty());
        ApiConfig {
            root,
            token,
            on_alias_moved: None,
        }
    }
}

// The token stays out of logs and debug output.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("root", &self.root)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("on_alias_moved", &self.on_alias_moved.is_some())
            .finish()
    }
}

/// The registry API of the project `config.root` names:
///
/// - `GET /v1/models`: every model, with its number of versions, latest version and aliases
/// - `GET /v1/models/{model}`: one of them
/// - `GET /v1/models/{model}/versions?limit=&after=`: its versions, newest first, a page at a
///   time (`after`: the `next_after` of the page before)
/// - `GET /v1/models/{model}/versions/{n}` (`3` or `v3`): one version with its lineage
/// - `GET /v1/models/{model}/aliases`, `GET /v1/models/{model}/aliases/{alias}`
/// - `GET /v1/models/{model}/history[?alias=]`: the alias moves, oldest first
/// - `PUT /v1/models/{model}/aliases/{alias}` with `{"version": N, "reason": "..."}` and
///   `Authorization: Bearer <token>`: moves the alias, as `kiln models alias` does
pub fn router(config: ApiConfig) -> axum::Router {
    routes::router(Arc::new(routes::ApiState::new(config)))
}

/// Serves [`router`] on `listen` until SIGTERM or Ctrl-C, on a runtime of its own (for
/// `kiln registry serve`). The registry is opened once first, so that a broken one fails here;
/// `on_listening` is called with the bound address before the first request is taken.
pub fn serve_blocking(
    config: ApiConfig,
    listen: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    kiln_pipeline::workspace::open_registry(&config.root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-api")
        .build()
        .map_err(Error::Serve)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        on_listening(addr);
        axum::serve(listener, router(config))
            .with_graceful_shutdown(kiln_serve::shutdown_signal())
            .await
            .map_err(Error::Serve)
    })
}

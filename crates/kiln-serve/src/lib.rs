//! kiln-serve: Kiln's prediction server — ONNX and `predict.py` engines, Open Inference Protocol v2 and
//! MLflow scoring over HTTP, adaptive batching, hot swap, Prometheus metrics and a sampled request log.
//!
//! Entry points: [`Server::start`] (async, for tests and embedding), [`run_blocking`] (for `kiln serve`),
//! [`probe`] (load a model and predict once, to prove an artifact servable) and [`Front`] (the stable
//! address of a local deployment, forwarding to the serving process of the moment; with its checks in
//! [`front`]).

pub mod api_error;
mod batcher;
pub mod config;
mod engine;
mod error;
pub mod front;
mod http;
pub mod metrics;
pub mod ortlib;
mod probe;
mod protocol;
mod repository;
mod request_log;
mod tensor;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use config::{BatchConfig, ModelConfig, RequestLogConfig, ServerConfig};
pub use engine::onnx::FEATURE_NAMES_KEY;
pub use error::{Error, Result};
pub use front::{Drain, Front};
pub use probe::{Probe, probe};

use crate::http::AppState;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::request_log::RequestLog;

/// A server whose models are loaded and whose socket is bound, ready to [`run`](Server::run).
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Binds the address, then loads every model (concurrently). Fails if any model fails to load.
    pub async fn start(config: ServerConfig) -> Result<Server> {
        let settings = Arc::new(config);
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.addr.to_string(),
                source,
            })?;
        let metrics = Arc::new(Metrics::new());
        let repository = Arc::new(Repository::new(
            Arc::clone(&settings),
            Arc::clone(&metrics),
        )?);
        let mut loads = Vec::new();
        for name in repository.names() {
            let repository = Arc::clone(&repository);
            loads.push(tokio::spawn(async move { repository.load(&name).await }));
        }
        for load in loads {
            load.await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        }
        let request_log = match &settings.request_log {
            Some(log) => Some(RequestLog::start(log, Arc::clone(&metrics))?),
            None => None,
        };
        let state = Arc::new(AppState::new(repository, metrics, request_log, settings));
        Ok(Server { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.settings.addr)
    }

    /// Serves until `shutdown` completes, then stops accepting, drains in-flight requests and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server { listener, state } = self;
        let addr = listener.local_addr()?;
        let watcher = state
            .settings
            .watch_interval
            .map(|interval| tokio::spawn(Arc::clone(&state.repository).watch(interval)));
        let models: Vec<String> = state.repository.names();
        tracing::info!(
            "kiln serve: listening on http://{addr} (models: {})",
            models.join(", ")
        );
        let drain_state = Arc::clone(&state);
        let signal = async move {
            shutdown.await;
            drain_state.shutting_down.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: draining in-flight requests");
        };
        let result = axum::serve(listener, http::router(Arc::clone(&state)))
            .with_graceful_shutdown(signal)
            .await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        state.repository.unload_all();
        tracing::info!("kiln serve: stopped");
        result.map_err(Error::Io)
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

/// Completes when standard input reaches its end. A supervised server's stdin is a pipe from its
/// supervisor, which never writes to it: the end comes when the supervisor closes it (to stop
/// the server) or dies, so that no server outlives the supervisor that started it.
pub async fn stdin_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel::<()>();
    // A plain thread, not the runtime's blocking pool: the runtime must not wait for it at exit.
    let reader = std::thread::Builder::new()
        .name("kiln-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
    match reader {
        Ok(_) => {
            let _ = wait.await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Completes on SIGTERM, SIGINT or the end of stdin: the stop of a supervised server.
pub async fn supervised_shutdown() {
    tokio::select! {
        () = shutdown_signal() => {},
        () = stdin_closed() => {},
    }
}

/// Runs a server on its own runtime until SIGTERM / SIGINT, then drains and returns (for `kiln serve`).
pub fn run_blocking(config: ServerConfig) -> Result<()> {
    run_blocking_until(config, shutdown_signal())
}

/// Runs a server on its own runtime until `stop` completes, then drains and returns.
pub fn run_blocking_until(
    config: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-serve")
        .build()?;
    let result = runtime.block_on(async move {
        let server = Server::start(config).await?;
        server.run(stop).await
    });
    // Requests are drained by now; do not let a stuck worker pipe hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

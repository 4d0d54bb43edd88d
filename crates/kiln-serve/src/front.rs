//! The front of a local deployment: a stable address that forwards each request to the serving
//! process of the moment (the "backend", a `kiln serve` on an ephemeral loopback port), so that a
//! rollout switching versions, or a crashed backend being restarted, fails no client request.
//!
//! A blocking API for the supervisor's plain threads: [`Front`] owns a small tokio runtime. New
//! requests go to the backend set last ([`Front::set_backend`]); requests already sent to the
//! previous one finish there, and the returned [`Drain`] says when the last has, after which the old
//! process can be stopped: its pooled connections are no longer used. A request finding no backend,
//! or one that refuses connections (it died), waits for one up to `hold`, then gets 503.
//! `proxy.rs` forwards one request; `check.rs` holds the health and smoke checks of a backend.

mod check;
mod proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hyper::http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{oneshot, watch};

pub use check::{check_live, check_ready, example_path, predict_example};

use crate::error::{Error, Result};

/// How long a pooled connection to a backend may stay idle before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to a live backend on loopback takes microseconds; one that takes this long is hung.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A listening front. Dropping it stops it at once; [`Front::shutdown`] lets requests finish.
/// Its methods are meant for plain threads: from async code, stopping cannot wait for requests.
pub struct Front {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the accept loop to stop, with the grace period for open connections.
    stop: Option<oneshot::Sender<Duration>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// What the connections of a front share.
struct Shared {
    /// The front's own address, for the log.
    addr: SocketAddr,
    hold: Duration,
    /// The backend new requests go to.
    current: watch::Sender<Option<Arc<Backend>>>,
    /// Set while requests find the backend unreachable, so that the log says so once, not per request.
    unreachable: AtomicBool,
}

/// One backend: its address and its own pool of keep-alive connections.
struct Backend {
    addr: SocketAddr,
    authority: Authority,
    client: Client<HttpConnector, http_body_util::Full<bytes::Bytes>>,
    /// Requests sent to it whose response has not been fully passed on yet.
    in_flight: AtomicUsize,
    /// Set once it is no longer the current backend: no request starts on it after that.
    retired: AtomicBool,
    /// Signalled when the last request of a retired backend finishes.
    idle_lock: Mutex<()>,
    idle: Condvar,
}

impl Backend {
    fn new(addr: SocketAddr) -> Backend {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        Backend {
            addr,
            authority,
            client,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle_lock: Mutex::new(()),
            idle: Condvar::new(),
        }
    }

    /// Counts a request in, unless the backend was retired meanwhile (the caller then takes the
    /// current one again). Together with [`Front::set_backend`] (retire, then count) this makes
    /// sure that no request starts on a backend whose [`Drain`] has seen zero.
    fn enter(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        if self.retired.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }
}

/// A request in flight to a backend; kept by the response body until the client has it all.
struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let backend = &self.0;
        if backend.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && backend.retired.load(Ordering::SeqCst)
        {
            // Taking the lock orders this wake-up after a waiter's check of the count.
            let _lock = backend.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
            backend.idle.notify_all();
        }
    }
}

/// The requests still in flight to a backend that was replaced.
pub struct Drain {
    previous: Option<Arc<Backend>>,
}

impl Drain {
    /// True when every request to the previous backend finished within `timeout` (at once when
    /// there was none). After that, the previous backend's connections are closed by the front and
    /// its process can be stopped.
    pub fn wait(self, timeout: Duration) -> bool {
        let Some(backend) = self.previous else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut lock = backend.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = backend.in_flight.load(Ordering::SeqCst);
            if left == 0 {
                tracing::debug!("backend {} drained", backend.addr);
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "backend {}: {left} request(s) still in flight after {timeout:?}",
                    backend.addr
                );
                return false;
            }
            lock = backend
                .idle
                .wait_timeout(lock, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Front {
    /// Listens on `addr` (port 0 picks one) at once. With no backend set, requests wait up to
    /// `hold` for one, then get 503 (`no_version_serving`).
    pub fn bind(addr: SocketAddr, hold: Duration) -> Result<Front> {
        // Two workers at most: the supervisor runs a front per model and environment. One was
        // a few per cent slower than two on two cores (bench/front), with a worse p99.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name("kiln-front")
            .build()?;
        let bind_error = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = {
            let _entered = runtime.enter();
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(bind_error)?;
            socket.set_reuseaddr(true).map_err(bind_error)?;
            socket.bind(addr).map_err(bind_error)?;
            socket.listen(1024).map_err(bind_error)?
        };
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr: local,
            hold,
            current: watch::Sender::new(None),
            unreachable: AtomicBool::new(false),
        });
        let (stop, stopped) = oneshot::channel();
        let server = runtime.spawn(serve(listener, Arc::clone(&shared), stopped));
        tracing::info!("front listening on http://{local}, no backend yet");
        Ok(Front {
            shared,
            addr: local,
            runtime: Some(runtime),
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// New requests go to `backend` from now on (`None`: they wait for one, up to `hold`); the
    /// returned [`Drain`] waits for the requests still in flight to the previous backend.
    pub fn set_backend(&self, backend: Option<SocketAddr>) -> Drain {
        let next = backend.map(|addr| Arc::new(Backend::new(addr)));
        let previous = self.shared.current.send_replace(next);
        if let Some(previous) = &previous {
            previous.retired.store(true, Ordering::SeqCst);
        }
        match backend {
            Some(addr) => tracing::info!("front {}: new requests go to {addr}", self.addr),
            None => tracing::info!("front {}: no backend, requests wait", self.addr),
        }
        Drain { previous }
    }

    pub fn backend(&self) -> Option<SocketAddr> {
        self.shared.current.borrow().as_ref().map(|b| b.addr)
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), returns.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop_serving(grace);
    }

    fn stop_serving(&mut self, grace: Duration) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from async code, which must not block (nor drop a runtime): stop at once.
            tracing::warn!(
                "front {}: stopped from async code, without waiting for requests",
                self.addr
            );
            runtime.shutdown_background();
            return;
        }
        if let Some(server) = self.server.take() {
            // The accept loop itself bounds its wait by `grace`; this bound is for a wedged runtime.
            let _ = runtime.block_on(async {
                tokio::time::timeout(grace + Duration::from_secs(1), server).await
            });
        }
        self.shared.current.send_replace(None);
        runtime.shutdown_timeout(Duration::from_millis(100));
        tracing::info!("front {}: stopped", self.addr);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop_serving(Duration::ZERO);
    }
}

/// Accepts connections until told to stop, then waits for open ones up to the grace period.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let service = hyper::service::service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move {
                            Ok::<_, std::convert::Infallible>(proxy::forward(&shared, request).await)
                        }
                    });
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!("front connection ended: {error}");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!("front {}: cannot accept a connection: {error}", shared.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    tracing::info!(
        "front {}: stopped accepting, draining open connections",
        shared.addr
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "front {}: connections still open after {grace:?}, closing them",
            shared.addr
        );
    }
}

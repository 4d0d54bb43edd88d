//! Forwarding one request through the front: read the body whole (so that the request can be sent
//! again), send it to the current backend, retry while the backend cannot be reached, pass the
//! response on unchanged.
//!
//! A request is sent again only when the backend failed before answering anything: it refused the
//! connection, or the connection was reset or closed before a response head came (the process
//! died, taking the request with it). A backend that answered is never asked again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Request, Response, Version};

use super::{Backend, InFlight, Shared};
use crate::api_error::{ApiError, ErrorCode, RETRY_AFTER_SECONDS};
use crate::config::DEFAULT_MAX_BODY_BYTES;

/// How often a request waiting for an unreachable backend tries again.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Headers about one connection, which a proxy must not pass on (RFC 9110 §7.6.1), and `expect`:
/// the front has read the body already.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The body of a response of the front: the backend's, streamed, or the front's own error.
pub(super) enum FrontBody {
    Backend {
        body: Incoming,
        /// Keeps the request counted until the client has the whole response.
        _in_flight: InFlight,
    },
    Local(Option<Bytes>),
}

impl Body for FrontBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            FrontBody::Backend { body, .. } => Pin::new(body).poll_frame(cx),
            FrontBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FrontBody::Backend { body, .. } => body.is_end_stream(),
            FrontBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FrontBody::Backend { body, .. } => body.size_hint(),
            FrontBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Forwards `request` to the current backend and answers what it answered, or the front's error.
pub(super) async fn forward(shared: &Shared, request: Request<Incoming>) -> Response<FrontBody> {
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(error) => return error_response(&error),
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    if parts.version == Version::HTTP_2
        && !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }

    let deadline = Instant::now() + shared.hold;
    // Subscribed only once the request has to wait: most never do.
    let mut changes: Option<tokio::sync::watch::Receiver<Option<Arc<Backend>>>> = None;
    loop {
        let backend = match &mut changes {
            Some(changes) => changes.borrow_and_update().clone(),
            None => shared.current.borrow().clone(),
        };
        let Some(backend) = backend else {
            if changes.is_none() {
                changes = Some(shared.current.subscribe());
                continue;
            }
            if wait_for_change(changes.as_mut(), deadline, None).await {
                continue;
            }
            tracing::warn!(
                "front {}: no backend within {:?}, answering 503",
                shared.addr,
                shared.hold
            );
            return error_response(&ApiError::new(
                ErrorCode::NoVersionServing,
                format!(
                    "no version of this model is serving yet (waited {} ms for one); deploy one, or retry",
                    shared.hold.as_millis()
                ),
            ));
        };
        let Some(in_flight) = backend.enter() else {
            // Replaced while this request picked it: take the new one.
            continue;
        };
        let request = backend_request(&parts.method, &backend, &path, &headers, body.clone());
        let error = match backend.client.request(request).await {
            Ok(response) => {
                // A load first: the common case writes nothing shared.
                if shared.unreachable.load(Ordering::Relaxed)
                    && shared.unreachable.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(
                        "front {}: backend {} answers again",
                        shared.addr,
                        backend.addr
                    );
                }
                return backend_response(response, in_flight);
            }
            Err(error) => error,
        };
        drop(in_flight);
        if !unanswered(&error) {
            tracing::warn!(
                "front {}: backend {} failed: {}",
                shared.addr,
                backend.addr,
                crate::error_chain(&error)
            );
            return error_response(&ApiError::new(
                ErrorCode::BadGateway,
                "the serving process gave an invalid answer; the supervisor's log may say more",
            ));
        }
        if !shared.unreachable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "front {}: backend {} unreachable ({}), waiting up to {:?} for it",
                shared.addr,
                backend.addr,
                crate::error_chain(&error),
                shared.hold
            );
        }
        if changes.is_none() {
            changes = Some(shared.current.subscribe());
        }
        if wait_for_change(changes.as_mut(), deadline, Some(RETRY_INTERVAL)).await {
            continue;
        }
        tracing::warn!(
            "front {}: backend {} unreachable for {:?}, answering 503",
            shared.addr,
            backend.addr,
            shared.hold
        );
        return error_response(&ApiError::new(
            ErrorCode::BackendUnavailable,
            format!(
                "the model's serving process did not answer within {} ms (it is being restarted, or \
                 failed to start); retry, and see `kiln ps` if it persists",
                shared.hold.as_millis()
            ),
        ));
    }
}

/// Waits until the backend changes (true), or until `poll` passes (true, to try again), or until
/// `deadline` (false).
async fn wait_for_change(
    changes: Option<&mut tokio::sync::watch::Receiver<Option<Arc<Backend>>>>,
    deadline: Instant,
    poll: Option<Duration>,
) -> bool {
    let Some(changes) = changes else {
        return true;
    };
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    let until = poll.map_or(deadline, |poll| (now + poll).min(deadline));
    tokio::select! {
        changed = changes.changed() => changed.is_ok(),
        () = tokio::time::sleep_until(until.into()) => until < deadline,
    }
}

/// Whether the backend failed without answering anything, so that the request may be sent again.
fn unanswered(error: &hyper_util::client::legacy::Error) -> bool {
    if error.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>()
            && (hyper_error.is_incomplete_message() || hyper_error.is_canceled())
        {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn backend_request(
    method: &hyper::Method,
    backend: &Backend,
    path: &PathAndQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.authority.clone())
        .path_and_query(path.clone())
        .build()
        .expect("scheme, authority and path are valid");
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers.clone();
    request
}

fn backend_response(response: Response<Incoming>, in_flight: InFlight) -> Response<FrontBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        FrontBody::Backend {
            body,
            _in_flight: in_flight,
        },
    )
}

/// Removes the hop-by-hop headers, and those the `connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The request body, whole, within the server's default limit.
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than the limit of {DEFAULT_MAX_BODY_BYTES} bytes"),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > DEFAULT_MAX_BODY_BYTES
    {
        return Err(too_large());
    }
    match Limited::new(body, DEFAULT_MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("cannot read the request body: {error}"),
        )),
    }
}

/// The front's own answer, in the one JSON error shape.
fn error_response(error: &ApiError) -> Response<FrontBody> {
    let body = serde_json::to_vec(&error.to_json()).unwrap_or_default();
    let mut response = Response::new(FrontBody::Local(Some(Bytes::from(body))));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if error.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}

//! Blocking code driving an async client (object_store, oci-client) on a private runtime.

use std::future::Future;

use tokio::runtime::Runtime;

/// Runs `future` to completion on `runtime`. Called from inside another tokio runtime (which may
/// not block), it runs on a thread of its own.
pub fn block_on<F>(runtime: &Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime.block_on(future)
    }
}

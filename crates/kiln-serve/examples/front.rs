//! Benchmark harness: a deployment front on PORT forwarding every request to BACKEND (a running
//! `kiln serve`), until SIGTERM or Ctrl-C. `bench/front/run.sh` compares requests sent straight to
//! the backend with the same requests sent through it.
//!
//! Usage: `cargo run --release -p kiln-serve --example front -- PORT BACKEND_ADDR`

use std::net::SocketAddr;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: front PORT BACKEND_ADDR";
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let backend: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let front = kiln_serve::Front::bind(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    front.set_backend(Some(backend));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(kiln_serve::shutdown_signal());
    front.shutdown(Duration::from_secs(1));
    Ok(())
}

//! One client connection: choose a backend, connect (trying the next one on
//! failure), then hand both sockets to `forward`.
//!
//! The snapshot is loaded once and kept for the connection's life. Only
//! backend-side connect failures feed passive detection; client-side errors
//! never count against a backend.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use crate::backend::{Backend, Service};
use crate::config::BackendAddress;
use crate::forward::{self, ForwardOptions};
use crate::listener;
use crate::ratelimit::LogLimit;

/// TCP keepalive on both sockets so a vanished peer is noticed: first probe
/// after 60 s idle, then every 10 s, given up after 6 unanswered probes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 6;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serve one accepted client. `_permit` holds a `max_connections` slot.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    service: Arc<Service>,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // TCP_NODELAY and keepalive came from the listener (see `listener::bind_std`).
    let snapshot = service.snapshot();
    let settings = &snapshot.settings;
    for backend in snapshot.connect_order() {
        // Taken before connecting, so a switch during the connect still
        // closes this connection.
        let close = backend.close_token();
        match connect(&backend.address, settings.connect_timeout).await {
            Ok(upstream) => {
                backend.record_connect_ok();
                if let Err(err) = tune(&upstream) {
                    debug!(service = %service.name, id, error = %err, "backend socket options failed");
                }
                let options = ForwardOptions {
                    zero_copy: settings.zero_copy,
                    idle_timeout: settings.idle_timeout,
                };
                let _guard = backend.open_connection();
                let started = Instant::now();
                let result =
                    forward::forward(client, upstream, options, &backend.metrics.bytes, &close)
                        .await;
                log_end(&service, backend, id, peer, started, result);
                return;
            }
            Err(err) if listener::is_resource_error(&err) => {
                // Out of fds or memory here: not the backend's fault, and
                // the next backend would fail the same way.
                static LIMIT: LogLimit = LogLimit::new();
                if let Some(suppressed) = LIMIT.check() {
                    warn!(service = %service.name, id, error = %err, suppressed, "no resources to connect, closing client");
                }
                break;
            }
            Err(err) => {
                if let Some(suppressed) = backend.connect_error_log.check() {
                    warn!(
                        service = %service.name, id, backend = %backend.name,
                        address = %backend.address, error = %err, suppressed,
                        "backend connect failed"
                    );
                }
                service.report_connect_error(backend, settings.passive_errors);
            }
        }
    }
    service.client_failures.increment(1);
    if let Some(suppressed) = service.client_failure_log.check() {
        warn!(service = %service.name, id, %peer, suppressed, "every backend failed, closing client");
    }
}

fn log_end(
    service: &Service,
    backend: &Backend,
    id: u64,
    peer: SocketAddr,
    started: Instant,
    result: io::Result<(forward::Outcome, forward::Transferred)>,
) {
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((outcome, bytes)) => debug!(
            service = %service.name, id, %peer, backend = %backend.name,
            to_backend = bytes.to_backend, to_client = bytes.to_client, ms,
            outcome = ?outcome, "connection closed"
        ),
        Err(err) => debug!(
            service = %service.name, id, %peer, backend = %backend.name, ms,
            error = %err, "connection ended by error"
        ),
    }
}

/// TCP_NODELAY and keepalive.
fn tune(stream: &TcpStream) -> io::Result<()> {
    tune_socket(SockRef::from(stream))
}

/// TCP_NODELAY and keepalive on any TCP socket. Set on a listener, Linux
/// copies both to every accepted socket, which saves five setsockopt calls
/// per client connection.
pub fn tune_socket(socket: SockRef<'_>) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)
}

/// Connect to a backend within `timeout`; a hostname is resolved now and
/// each of its addresses tried in turn within the same deadline.
pub async fn connect(address: &BackendAddress, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async { connect_first(resolve(address).await?).await };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect timed out after {}",
                crate::config::format_duration(timeout)
            ),
        )),
    }
}

/// A backend's addresses: the literal one (no lookup, no allocation), or
/// what its hostname resolves to now. Shared by connects and health checks.
pub async fn resolve(address: &BackendAddress) -> io::Result<impl Iterator<Item = SocketAddr>> {
    let (literal, resolved) = match address {
        BackendAddress::Ip(addr) => (Some(*addr), None),
        BackendAddress::Host { host, port } => (
            None,
            Some(tokio::net::lookup_host((host.as_str(), *port)).await?),
        ),
    };
    Ok(literal.into_iter().chain(resolved.into_iter().flatten()))
}

/// Connect to the first of `addrs` that accepts; the last error otherwise.
pub async fn connect_first(addrs: impl Iterator<Item = SocketAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

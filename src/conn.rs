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
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::forward::{self, ForwardOptions};
use crate::limit::Slot;
use crate::net;
use crate::ratelimit::LogLimit;
use crate::service::{Backend, Service};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serve one accepted client. `_slot` holds its `max_connections` slot.
pub async fn handle(client: TcpStream, peer: SocketAddr, service: Arc<Service>, _slot: Slot) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // TCP_NODELAY and keepalive came from the listener (see `net::bind_std`).
    let snapshot = service.snapshot();
    let settings = &snapshot.settings;
    for backend in snapshot.connect_order() {
        // Taken before connecting, so a switch during the connect still
        // closes this connection.
        let close = backend.close_token();
        match net::connect(&backend.address, settings.connect_timeout).await {
            Ok(upstream) => {
                backend.record_connect_ok();
                if let Err(err) = net::tune(&upstream) {
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
            Err(err) if net::is_resource_error(&err) => {
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

//! Accept loops and `max_connections`.
//!
//! `accept_loop` only accepts, holds a slot under `max_connections`, and
//! spawns one task per connection; everything slow happens in that task
//! (`conn.rs`), never here. Sockets are bound by `net.rs`.
//!
//! Each worker has its own `SO_REUSEPORT` socket and the kernel decides
//! which socket queues a new client. So a loop takes a slot only once its
//! own socket has a connection waiting, and then accepts without blocking:
//! a slot never parks on an empty queue while a client waits in another
//! worker's backlog, and the limit holds exactly whatever the worker count.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::accept::Acceptor;
use crate::conn;
use crate::net;
use crate::ratelimit::LogLimit;
use crate::service::Service;

/// Pause after an accept error such as EMFILE before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accept until `stop` fires, then drop the listener (new connects are
/// refused at once) and return. Runs on the worker runtime it was spawned
/// on; its connections are spawned there too, on `tracker`.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    service: Arc<Service>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let listener = match Acceptor::register(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(service = %service.name, error = %err, "cannot register listener");
            return;
        }
    };
    loop {
        // 1. A connection waits on this socket.
        let ready = tokio::select! {
            ready = listener.ready() => ready,
            _ = stop.cancelled() => return,
        };
        if ready.is_err() {
            // Only when this worker's runtime shuts down.
            return;
        }
        // 2. A slot for it: waits while the service is at its limit (the
        //    client waits in the backlog meanwhile).
        let slot = tokio::select! {
            slot = service.limit.acquire() => slot,
            _ = stop.cancelled() => return,
        };
        // 3. Take it without blocking; an empty queue drops the slot and
        //    waits for the next connection.
        match listener.try_accept() {
            Ok(Some((stream, peer))) => {
                tracker.spawn(conn::handle(stream, peer, Arc::clone(&service), slot));
            }
            Ok(None) => {}
            Err(err) => {
                drop(slot);
                if net::is_resource_error(&err) {
                    // Process-wide: when fds run out, every accept loop fails at once.
                    static LIMIT: LogLimit = LogLimit::new();
                    if let Some(suppressed) = LIMIT.check() {
                        warn!(service = %service.name, error = %err, suppressed, "accept failed, pausing");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                // Other errors (ECONNABORTED and the like) concern one
                // client only: accept the next.
            }
        }
    }
}

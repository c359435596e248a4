//! Listening sockets and accept loops.
//!
//! `accept_loop` only accepts, waits for a slot under `max_connections`,
//! and spawns one task per connection; everything slow happens in that task
//! (`conn.rs`), never here. Sockets are bound by `net.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(service = %service.name, error = %err, "cannot register listener");
            return;
        }
    };
    loop {
        let limit = service.limit.load_full();
        let permit = tokio::select! {
            permit = limit.acquire() => permit,
            _ = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(conn::handle(stream, peer, Arc::clone(&service), permit));
            }
            Err(err) => {
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

//! Listening sockets and accept loops.
//!
//! `bind` builds the socket with socket2 (SO_REUSEADDR, IP_FREEBIND on
//! request, a large backlog). `accept_loop` only accepts, waits for a slot
//! under `max_connections`, and spawns one task per connection; everything
//! slow happens in that task (`conn.rs`), never here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::backend::Service;
use crate::conn;

/// Pending-connection queue length asked of the kernel (capped by
/// net.core.somaxconn). Large, because at `max_connections` new clients wait
/// here rather than being refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Pause after an accept error such as EMFILE before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accept errors are logged at most this often.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Bind a listening socket for a service.
pub fn bind(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    if addr.is_ipv6() {
        // A `[::]:port` listener serves IPv6 only; an IPv4 service is listed separately.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Limits open connections per service; `None` = unlimited.
pub struct Limit(Option<Arc<Semaphore>>);

impl Limit {
    pub fn new(max_connections: usize) -> Self {
        Limit((max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))))
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        match &self.0 {
            Some(sem) => Arc::clone(sem).acquire_owned().await.ok(),
            None => None,
        }
    }
}

/// Accept until `stop` fires, then drop the listener (new connects are
/// refused at once) and return. Connections are spawned on `tracker`.
pub async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut last_error_log: Option<Instant> = None;
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
                if is_resource_error(&err) {
                    let now = Instant::now();
                    if last_error_log
                        .is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_INTERVAL)
                    {
                        warn!(service = %service.name, error = %err, "accept failed, pausing");
                        last_error_log = Some(now);
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

/// Errors that mean this process is out of a resource (fds, buffers,
/// memory): transient, and never a peer's fault.
pub fn is_resource_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

//! Listening sockets and accept loops.
//!
//! `bind` builds the socket with socket2 (SO_REUSEADDR, IP_FREEBIND on
//! request, a large backlog). `accept_loop` only accepts, waits for a slot
//! under `max_connections`, and spawns one task per connection; everything
//! slow happens in that task (`conn.rs`), never here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::backend::Service;
use crate::conn;
use crate::ratelimit::LogLimit;

/// Pending-connection queue length asked of the kernel (capped by
/// net.core.somaxconn). Large, because at `max_connections` new clients wait
/// here rather than being refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Pause after an accept error such as EMFILE before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bind a listening socket and register it with the current runtime.
pub fn bind(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, freebind, false)?)
}

/// Bind a non-blocking listening socket, not yet tied to a runtime (each
/// worker registers its own). `reuseport` lets one socket per worker share
/// the address, so the kernel spreads new connections over the workers.
pub fn bind_std(
    addr: SocketAddr,
    freebind: bool,
    reuseport: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
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
    // Inherited by every accepted socket (Linux copies them on accept).
    conn::tune_socket(SockRef::from(&socket))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
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
                if is_resource_error(&err) {
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

/// Errors that mean this process is out of a resource (fds, buffers,
/// memory): transient, and never a peer's fault.
pub fn is_resource_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client socket is never tuned per connection: this is what makes
    /// that correct.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), conn::KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            conn::KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            conn::KEEPALIVE_RETRIES
        );
    }

    /// `freebind = true` binds an address this host does not have (yet):
    /// the floating IP before keepalived moves it here. Nothing is sent.
    #[test]
    fn freebind_binds_an_address_that_is_not_on_this_host() {
        // TEST-NET-1 (RFC 5737): never assigned to a real host.
        let addr: SocketAddr = "192.0.2.77:0".parse().unwrap();
        let err = bind_std(addr, false, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL));
        bind_std(addr, true, false).expect("IP_FREEBIND lets it bind");
        let addr6: SocketAddr = "[2001:db8::77]:0".parse().unwrap();
        bind_std(addr6, true, false).expect("IPV6_FREEBIND lets it bind");
    }

    #[test]
    fn reuseport_sockets_share_one_port() {
        let first = bind_std("127.0.0.1:0".parse().unwrap(), false, true).unwrap();
        let port = first.local_addr().unwrap();
        bind_std(port, false, true).expect("second worker socket on the same port");
        // Without SO_REUSEPORT the port stays taken.
        assert!(bind_std(port, false, false).is_err());
    }
}

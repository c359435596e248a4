//! Socket helpers every higher layer calls: bind a listener (socket2),
//! resolve a backend, connect within a deadline, set TCP options, and tell
//! a local resource error from a peer's.
//!
//! Nothing here knows about services, health or failover.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpStream;

use crate::config::{BackendAddress, format_duration};

/// Pending-connection queue length asked of the kernel (capped by
/// net.core.somaxconn). Large, because at `max_connections` new clients wait
/// here rather than being refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// TCP keepalive on both sockets so a vanished peer is noticed: first probe
/// after 60 s idle, then every 10 s, given up after 6 unanswered probes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 6;

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
    tune_socket(SockRef::from(&socket))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Fail with `AddrInUse` when another process listens on `addr` (or on a
/// wildcard address of the same port). Our worker sockets use
/// `SO_REUSEPORT`, which would let them join another instance's sockets
/// silently; this bind without it is refused by any listening socket
/// there, with or without `SO_REUSEPORT`. The socket closes at once; port
/// 0 needs no probe. Call it before binding our own sockets on `addr`.
pub fn probe_unused(addr: SocketAddr, freebind: bool) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As for the real sockets, so TIME_WAIT leftovers do not count.
    socket.set_reuse_address(true)?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(|err| {
        if err.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process already listens there (a second failoverd?); stop it first",
            )
        } else {
            err
        }
    })
}

/// TCP_NODELAY and keepalive on a connected stream.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
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
            format!("connect timed out after {}", format_duration(timeout)),
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
        let std = bind_std("127.0.0.1:0".parse().unwrap(), false, false).unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
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
    fn probe_finds_a_listener_even_with_reuseport() {
        let theirs = bind_std("127.0.0.1:0".parse().unwrap(), false, true).unwrap();
        let port = theirs.local_addr().unwrap();
        let err = probe_unused(port, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another process"), "{err}");
        // A wildcard listener on the port covers 127.0.0.1 too.
        let wildcard = bind_std("0.0.0.0:0".parse().unwrap(), false, true).unwrap();
        let on_loopback =
            SocketAddr::new([127, 0, 0, 1].into(), wildcard.local_addr().unwrap().port());
        assert!(probe_unused(on_loopback, false).is_err());
        drop(theirs);
        probe_unused(port, false).expect("free once the listener closed");
        probe_unused("127.0.0.1:0".parse().unwrap(), false).expect("port 0 is never probed");
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

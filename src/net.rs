//! Socket helpers every higher layer calls: bind a listener (socket2),
//! resolve a backend, connect within a deadline, set TCP options, and tell
//! a local resource error from a peer's.
//!
//! Nothing here knows about services, health or failover.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// TCP_USER_TIMEOUT on a backend socket: a backend that leaves sent data
/// unacknowledged this long is given up (ETIMEDOUT) instead of after the
/// ~15 minutes of `tcp_retries2`. 30 s is far beyond the retransmission
/// back-off of a live but congested path, and well inside keepalive's
/// 120 s (which it also shortens: with unanswered probes a dead idle
/// backend is dropped after 70 s). Client sockets keep the kernel default,
/// since clients may sit behind slow links.
pub const BACKEND_USER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A backend connection gets keepalive ([`backend_keepalive`]) once it has
/// lived this long: most short connections end sooner and never pay its
/// three system calls, and a long-lived one sends its first probe after
/// at most this much more than [`KEEPALIVE_IDLE`] of silence.
pub const BACKEND_KEEPALIVE_AFTER: Duration = Duration::from_secs(1);

/// TCP_NODELAY and [`BACKEND_USER_TIMEOUT`] on a connected backend stream,
/// at once; keepalive comes later ([`BACKEND_KEEPALIVE_AFTER`]).
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_tcp_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(BACKEND_USER_TIMEOUT))?;
    Ok(())
}

/// Keepalive on a backend stream. With TCP_USER_TIMEOUT set, the kernel
/// gives up on unanswered probes after that timeout instead of after
/// TCP_KEEPCNT probes, so the count is not set (one system call fewer).
pub fn backend_keepalive(stream: &TcpStream) -> io::Result<()> {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let keepalive = keepalive.with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
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

/// Connect to a backend within `timeout`: to the first of the addresses
/// `addrs` yields that accepts (the data path's cached addresses; nothing
/// is resolved here).
pub async fn connect(
    addrs: impl Future<Output = Arc<Vec<SocketAddr>>>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let attempt = async { connect_first(addrs.await.iter().copied()).await };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {}", format_duration(timeout)),
        )),
    }
}

/// Resolves one backend's address for its health checks, with at most one
/// lookup in flight: a getaddrinfo that outlives its check (a DNS server
/// that does not answer) is awaited again by the next check instead of
/// starting another, so a DNS outage never grows the blocking pool.
#[derive(Default)]
pub struct Lookup {
    pending: Option<tokio::task::JoinHandle<io::Result<Vec<SocketAddr>>>>,
}

impl Lookup {
    /// The literal address (no lookup), or what the hostname resolves to
    /// now. Cancel-safe: dropped mid-way, the lookup goes on for the next
    /// call.
    pub async fn resolve(&mut self, address: &BackendAddress) -> io::Result<Vec<SocketAddr>> {
        let (host, port) = match address {
            BackendAddress::Ip(addr) => return Ok(vec![*addr]),
            BackendAddress::Host { host, port } => (host.clone(), *port),
        };
        let lookup = self.pending.get_or_insert_with(|| {
            tokio::task::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
            })
        });
        let result = lookup.await;
        self.pending = None;
        result.map_err(|err| io::Error::other(format!("lookup task failed: {err}")))?
    }
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

/// Errors this host makes, not the backend: a resource error, no free
/// local port (EADDRNOTAVAIL: the ephemeral range is used up), or a local
/// firewall or security module refusing the connect (EPERM, EACCES). Such
/// an error is no result: never a failed check, never a passive error.
pub fn is_local_error(err: &io::Error) -> bool {
    is_resource_error(err)
        || matches!(
            err.raw_os_error(),
            Some(libc::EADDRNOTAVAIL | libc::EPERM | libc::EACCES)
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

    /// Backend sockets give up on a black-holed peer after
    /// BACKEND_USER_TIMEOUT, not after ~15 minutes of retransmissions.
    #[tokio::test]
    async fn backend_sockets_get_a_tcp_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(async { Arc::new(vec![addr]) }, Duration::from_secs(2))
            .await
            .unwrap();
        tune(&stream).unwrap();
        let socket = SockRef::from(&stream);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(BACKEND_USER_TIMEOUT)
        );
        assert!(socket.tcp_nodelay().unwrap());
        assert!(!socket.keepalive().unwrap(), "keepalive comes later");
        backend_keepalive(&stream).unwrap();
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    }

    /// A refused port is reported as refused, and the next address that
    /// accepts is connected.
    #[tokio::test]
    async fn connect_reports_refusal_and_success() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = connect(
            async move { Arc::new(vec![closed]) },
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // The refused address first, then one that accepts: the second wins.
        let stream = connect(
            async move { Arc::new(vec![closed, open]) },
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
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

    /// A lookup cut off by its check's deadline is not started again: the
    /// next check awaits the same one.
    #[tokio::test]
    async fn a_lookup_outliving_its_check_is_reused_by_the_next() {
        let mut lookup = Lookup::default();
        let localhost = BackendAddress::Host {
            host: "localhost".into(),
            port: 80,
        };
        // Polled once, then dropped: the getaddrinfo thread cannot have
        // answered within that one poll.
        let cut = tokio::select! {
            biased;
            _ = lookup.resolve(&localhost) => false,
            () = std::future::ready(()) => true,
        };
        assert!(cut, "the first lookup answered within one poll");
        assert!(lookup.pending.is_some(), "the cut-off lookup is kept");
        let addrs = lookup.resolve(&localhost).await.unwrap();
        assert!(
            addrs.iter().all(|a| a.port() == 80 && a.ip().is_loopback()),
            "{addrs:?}"
        );
        assert!(lookup.pending.is_none());
        let ip: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert_eq!(
            lookup.resolve(&BackendAddress::Ip(ip)).await.unwrap(),
            vec![ip]
        );
    }

    #[test]
    fn local_errors_are_told_from_a_backends() {
        let local = [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
            libc::EPERM,
            libc::EACCES,
        ];
        for errno in local {
            assert!(
                is_local_error(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        let remote = [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ];
        for errno in remote {
            assert!(
                !is_local_error(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        assert!(!is_local_error(&io::ErrorKind::TimedOut.into()));
        assert!(is_resource_error(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(
            libc::EPERM
        )));
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

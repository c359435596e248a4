//! A listening socket registered with its worker's reactor for readiness
//! only, so the accept loop can wait for a pending connection *before* it
//! takes a `max_connections` slot, then accept without blocking.
//!
//! tokio's `TcpListener` offers no readiness without accepting, hence
//! `AsyncFd`, whose registration is the one `unsafe` here. This module does
//! not bind (`net.rs`) and knows nothing of services or limits.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;

use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

/// A non-blocking listening socket on the current runtime's reactor.
pub struct Acceptor(AsyncFd<Socket>);

impl Acceptor {
    /// Register `listener` (already non-blocking) with the current runtime.
    pub fn register(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        let socket = Socket::from(listener);
        // SAFETY: the `Socket` owns its fd and moves into the `AsyncFd`,
        // which keeps it open until the `AsyncFd` drops; nothing here hands
        // out `&mut Socket` or replaces it, so `as_raw_fd` keeps returning
        // that same fd for the registration's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        fd.map(Acceptor).map_err(|err| err.into_parts().1)
    }

    /// Wait until a connection is pending (it may be gone by the time
    /// [`Acceptor::try_accept`] runs). Errors only when the runtime shuts down.
    pub async fn ready(&self) -> io::Result<()> {
        let mut guard = self.0.readable().await?;
        // Keep the readiness: `try_accept` clears it when the queue is empty.
        guard.retain_ready();
        Ok(())
    }

    /// Accept one pending connection without blocking: `Ok(None)` when the
    /// queue is empty (readiness cleared, so [`Acceptor::ready`] waits for
    /// the next). The stream is non-blocking (accept4 flags save a syscall
    /// per client) and registered with the current runtime.
    pub fn try_accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        match self.0.try_io(Interest::READABLE, accept_nonblocking) {
            Ok(accepted) => accepted.map(Some),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }
}

fn accept_nonblocking(socket: &Socket) -> io::Result<io::Result<(TcpStream, SocketAddr)>> {
    let (conn, peer) = socket.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    // Errors after the accept itself are the connection's, never WouldBlock
    // of the listener: keep them apart so they do not clear its readiness.
    Ok(peer
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))
        .and_then(|peer| Ok((TcpStream::from_std(std::net::TcpStream::from(conn))?, peer))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_a_pending_connection_then_accepts_it() {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&std).set_tcp_nodelay(true).unwrap();
        let addr = std.local_addr().unwrap();
        let acceptor = Acceptor::register(std).unwrap();
        assert!(acceptor.try_accept().unwrap().is_none(), "empty queue");
        let waiting = tokio::time::timeout(Duration::from_millis(50), acceptor.ready()).await;
        assert!(waiting.is_err(), "ready with nothing pending");
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), acceptor.ready())
            .await
            .expect("ready once a client connected")
            .unwrap();
        let (stream, peer) = acceptor.try_accept().unwrap().expect("the pending client");
        assert_eq!(peer, _client.local_addr().unwrap());
        assert_eq!(stream.local_addr().unwrap(), addr);
        // TCP_NODELAY is inherited from the listener through accept4 too.
        assert!(socket2::SockRef::from(&stream).tcp_nodelay().unwrap());
        assert!(
            acceptor.try_accept().unwrap().is_none(),
            "only one was pending"
        );
    }
}

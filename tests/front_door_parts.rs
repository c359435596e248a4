//! The front door's parts on real sockets: PROXY headers read off TCP
//! connections (whole, split, missing, malformed, late) and exchanged with a
//! real HAProxy in both directions, and listening sockets passed over a Unix
//! socket pair as `run --takeover` does.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::haproxy::HaProxy;
use failoverd::fdpass::{self, MAX_FDS_PER_FRAME};
use failoverd::proxy_header::{self, Accepted, HeaderError, Version};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::Instant;

const MIB: usize = 1024 * 1024;

/// Every test bounds its own time with this.
async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// Deterministic bytes that are not a repeating pattern (xorshift64).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Read to EOF; returns (bytes, SHA-256).
async fn drain(stream: &mut TcpStream) -> (usize, [u8; 32]) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await.expect("read after the header");
        if n == 0 {
            return (total, hasher.finalize().into());
        }
        total += n;
        hasher.update(&buf[..n]);
    }
}

/// A connected loopback pair: (client, server side).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (server, _) = listener.accept().await.expect("accept");
    (client, server)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// CPU time this thread has used: a current-thread runtime runs the whole
/// server side (read_header) on it, and tests running in parallel in this
/// process do not count.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of the whole test process (all threads), for the report.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A v2 header with two TLVs (an authority and a 1000-byte no-op), larger
/// than read_header's first peek buffer.
fn v2_with_tlvs(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = proxy_header::encode(Version::V2, source, destination);
    let mut tlvs = vec![0x02, 0, 11];
    tlvs.extend_from_slice(b"db.internal");
    tlvs.extend_from_slice(&[0x04, 0x03, 0xe8]);
    tlvs.extend(std::iter::repeat_n(0u8, 1000));
    header.extend_from_slice(&tlvs);
    let len = u16::try_from(header.len() - 16).expect("small header");
    header[14..16].copy_from_slice(&len.to_be_bytes());
    header
}

/// The client sends `header` (in pieces cut at `cuts`, pausing `pause`
/// between them, the last piece together with the data) then `body`;
/// the server reads the header and then everything after it.
async fn send_and_read(
    header: Vec<u8>,
    cuts: &[usize],
    pause: Duration,
    body: Arc<Vec<u8>>,
) -> (Accepted, usize, [u8; 32]) {
    let (mut client, mut server) = tcp_pair().await;
    let cuts = cuts.to_vec();
    let writer = tokio::spawn(async move {
        let mut start = 0;
        for cut in cuts {
            client
                .write_all(&header[start..cut])
                .await
                .expect("write piece");
            start = cut;
            tokio::time::sleep(pause).await;
        }
        let mut rest = header[start..].to_vec();
        rest.extend_from_slice(&body);
        client.write_all(&rest).await.expect("write rest");
        client.shutdown().await.expect("shutdown");
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let accepted = proxy_header::read_header(&server, deadline)
        .await
        .expect("read_header");
    let (n, hash) = drain(&mut server).await;
    writer.await.expect("writer");
    (accepted, n, hash)
}

#[tokio::test]
async fn header_then_one_mib_arrives_intact_whole_and_split() {
    within(60, async {
        let body = Arc::new(data(MIB, 7));
        let want = sha256(&body);
        let v4 = (addr("192.0.2.7:51234"), addr("10.0.0.100:5432"));
        let v6 = (addr("[2001:db8::7]:40000"), addr("[2001:db8::100]:443"));
        let cases: Vec<(&str, Vec<u8>, SocketAddr)> = vec![
            (
                "v1 tcp4",
                proxy_header::encode(Version::V1, v4.0, v4.1),
                v4.0,
            ),
            (
                "v1 tcp6",
                proxy_header::encode(Version::V1, v6.0, v6.1),
                v6.0,
            ),
            (
                "v2 ipv4",
                proxy_header::encode(Version::V2, v4.0, v4.1),
                v4.0,
            ),
            (
                "v2 ipv6",
                proxy_header::encode(Version::V2, v6.0, v6.1),
                v6.0,
            ),
            ("v2 tlvs", v2_with_tlvs(v4.0, v4.1), v4.0),
        ];
        for (name, header, source) in cases {
            let len = header.len();
            // Whole; split mid-signature; split after the v2 fixed part or
            // mid-line; three pieces.
            let splits: [&[usize]; 4] = [&[], &[3], &[17.min(len - 1)], &[1, len - 1]];
            for cuts in splits {
                let (accepted, n, hash) = send_and_read(
                    header.clone(),
                    cuts,
                    Duration::from_millis(50),
                    body.clone(),
                )
                .await;
                assert_eq!(accepted.source, Some(source), "{name} cut at {cuts:?}");
                assert_eq!(n, MIB, "{name} cut at {cuts:?}: bytes after the header");
                assert_eq!(hash, want, "{name} cut at {cuts:?}: data after the header");
            }
            println!("{name}: {len}-byte header, 1 MiB after it intact, whole and split 3 ways");
        }
    })
    .await;
}

#[tokio::test]
async fn local_and_unknown_headers_leave_the_connection_addresses() {
    within(30, async {
        for version in [Version::V1, Version::V2] {
            let body = Arc::new(b"health check".to_vec());
            let header = proxy_header::encode_local(version);
            let (accepted, n, _) = send_and_read(header, &[], Duration::ZERO, body.clone()).await;
            assert_eq!(accepted.source, None, "{version}");
            assert_eq!(accepted.destination, None, "{version}");
            assert_eq!(n, body.len(), "{version}");
        }
    })
    .await;
}

/// read_header runs alone on its own thread and current-thread runtime, so
/// that thread's CPU clock measures the peek loop and nothing else, and a
/// loop that spun (never yielding) fails this test instead of hanging it.
#[tokio::test]
async fn waiting_for_a_split_header_does_not_spin_a_core() {
    within(30, async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = listener.local_addr().expect("addr");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = runtime.block_on(async move {
                let (server, _) = listener.accept().expect("accept");
                server.set_nonblocking(true).expect("nonblocking");
                let mut server = TcpStream::from_std(server).expect("tokio stream");
                let (cpu0, wall0) = (thread_cpu(), Instant::now());
                let deadline = Instant::now() + Duration::from_secs(5);
                let accepted = proxy_header::read_header(&server, deadline).await;
                let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
                let mut rest = [0u8; 5];
                server
                    .read_exact(&mut rest)
                    .await
                    .expect("data after the header");
                (accepted, cpu, wall, rest)
            });
            let _ = done_tx.send(result);
        });
        let mut client = TcpStream::connect(at).await.expect("connect");
        client.set_nodelay(true).expect("nodelay");
        let header = proxy_header::encode(Version::V1, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        let (first, second) = header.split_at(10);
        let process0 = process_cpu();
        client.write_all(first).await.expect("first piece");
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(second).await.expect("second piece");
        client.write_all(b"after").await.expect("data");
        let outcome = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        let process = process_cpu() - process0;
        let Ok(Ok((accepted, cpu, wall, rest))) = outcome else {
            panic!("read_header did not return once the header was complete: is it spinning?");
        };
        println!(
            "split header waited {wall:?}: read_header's thread used {cpu:?} CPU \
             (the whole test process, tests in parallel included: {process:?})"
        );
        assert_eq!(accepted.expect("header").source, Some(addr("192.0.2.7:1")));
        assert!(
            wall >= Duration::from_millis(950),
            "returned before the second piece: {wall:?}"
        );
        assert!(
            cpu < Duration::from_millis(50),
            "peek loop spun: {cpu:?} CPU in {wall:?}"
        );
        assert_eq!(&rest, b"after");
    })
    .await;
}

/// The client sends `bytes` (then keeps the connection open, or closes it).
async fn reject(bytes: &[u8], close: bool, deadline: Duration) -> (HeaderError, Duration) {
    let (mut client, server) = tcp_pair().await;
    client.write_all(bytes).await.expect("write");
    if close {
        client.shutdown().await.expect("shutdown");
    }
    let start = Instant::now();
    let result = proxy_header::read_header(&server, start + deadline).await;
    let took = start.elapsed();
    drop(client);
    match result {
        Ok(accepted) => panic!(
            "{:?} was accepted: {accepted:?}",
            bytes.escape_ascii().to_string()
        ),
        Err(err) => (err, took),
    }
}

#[tokio::test]
async fn missing_malformed_late_and_cut_headers_fail_within_the_deadline() {
    within(30, async {
        let deadline = Duration::from_millis(400);

        let (err, took) = reject(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n", false, deadline).await;
        assert!(matches!(err, HeaderError::Missing { .. }), "{err}");
        assert!(
            took < Duration::from_millis(200),
            "missing header took {took:?}"
        );
        println!("missing ({took:?}): {err}");

        let (err, took) = reject(
            b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\nSELECT 1",
            false,
            deadline,
        )
        .await;
        assert!(
            matches!(
                err,
                HeaderError::Malformed {
                    version: Version::V1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("invalid source address"), "{err}");
        assert!(
            took < Duration::from_millis(200),
            "malformed header took {took:?}"
        );
        println!("malformed ({took:?}): {err}");

        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(300, b'7');
        let (err, took) = reject(&long, false, deadline).await;
        assert!(
            err.to_string().contains("no CRLF within 107 bytes"),
            "{err}"
        );
        assert!(
            took < Duration::from_millis(200),
            "oversize line took {took:?}"
        );

        for (what, bytes) in [
            ("nothing", &b""[..]),
            ("half a header", &b"PROXY TCP4 19"[..]),
        ] {
            let (err, took) = reject(bytes, false, deadline).await;
            assert!(
                matches!(err, HeaderError::Late { received, .. } if received == bytes.len()),
                "{what}: {err}"
            );
            assert!(took >= deadline, "{what}: gave up early, after {took:?}");
            assert!(
                took < deadline + Duration::from_millis(200),
                "{what}: late by {took:?}"
            );
            assert!(err.to_string().contains("within 400ms"), "{what}: {err}");
            println!("late, {what} sent ({took:?}): {err}");
        }

        let v2 = proxy_header::encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        let (err, took) = reject(&v2[..20], true, deadline).await;
        assert!(matches!(err, HeaderError::Closed { received: 20 }), "{err}");
        assert!(
            took < Duration::from_millis(200),
            "cut header took {took:?}"
        );
        println!("closed mid-header ({took:?}): {err}");

        let (err, _) = reject(b"", true, deadline).await;
        assert!(matches!(err, HeaderError::Closed { received: 0 }), "{err}");
        assert!(
            err.to_string()
                .contains("before sending a PROXY protocol header"),
            "{err}"
        );
    })
    .await;
}

// ---------------------------------------------------------------- HAProxy

/// HAProxy `send-proxy` / `send-proxy-v2` in front of a listener that uses
/// read_header: the source is the real client's address and port, the
/// destination HAProxy's frontend, and 1 MiB after the header is intact.
#[tokio::test]
async fn haproxy_send_proxy_reaches_read_header_with_the_real_client() {
    within(60, async {
        for (directive, first_byte) in [("send-proxy", b'P'), ("send-proxy-v2", b'\r')] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let target = listener.local_addr().expect("addr");
            let haproxy = HaProxy::start(|front| {
                format!(
                    "frontend fe\n    bind {front}\n    default_backend be\n\n\
                     backend be\n    server s1 {target} {directive}\n"
                )
            })
            .await;
            let body = Arc::new(data(MIB, 11));
            let mut client = TcpStream::connect(haproxy.front)
                .await
                .expect("connect haproxy");
            let client_addr = client.local_addr().expect("client addr");
            let writer = tokio::spawn({
                let body = Arc::clone(&body);
                async move {
                    client.write_all(&body).await.expect("write");
                    client.shutdown().await.expect("shutdown");
                    client
                }
            });
            let (mut server, _) = listener.accept().await.expect("accept from haproxy");
            let mut first = [0u8; 1];
            server.peek(&mut first).await.expect("peek");
            assert_eq!(
                first[0], first_byte,
                "{directive}: header version on the wire"
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            let accepted = proxy_header::read_header(&server, deadline)
                .await
                .unwrap_or_else(|e| panic!("{directive}: {e}"));
            assert_eq!(accepted.source, Some(client_addr), "{directive}: source");
            assert_eq!(
                accepted.destination,
                Some(haproxy.front),
                "{directive}: destination"
            );
            let (n, hash) = drain(&mut server).await;
            assert_eq!(
                (n, hash),
                (MIB, sha256(&body)),
                "{directive}: data after the header"
            );
            drop(writer.await.expect("writer"));
            println!(
                "haproxy {directive}: read_header saw client {client_addr} -> {}, 1 MiB intact",
                haproxy.front
            );
        }
    })
    .await;
}

/// HAProxy health checks with `check-send-proxy`: v2 sends `LOCAL`, byte for
/// byte what `encode_local(V2)` writes, read back without addresses; v1 (in
/// HAProxy 2.6) sends the check connection's own addresses.
#[tokio::test]
async fn haproxy_health_check_headers_are_read() {
    within(60, async {
        for (directive, version) in [("send-proxy", Version::V1), ("send-proxy-v2", Version::V2)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let target = listener.local_addr().expect("addr");
            let _haproxy = HaProxy::start(|front| {
                format!(
                    "frontend fe\n    bind {front}\n    default_backend be\n\n\
                     backend be\n    server s1 {target} {directive} check check-send-proxy inter 100ms\n"
                )
            })
            .await;
            let (server, peer) = listener.accept().await.expect("health check connection");
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut raw = [0u8; 16];
            if version == Version::V2 {
                let mut filled = 0;
                while filled < raw.len() {
                    filled = server.peek(&mut raw).await.expect("peek");
                }
            }
            let accepted = proxy_header::read_header(&server, deadline)
                .await
                .unwrap_or_else(|e| panic!("{directive} check: {e}"));
            match version {
                Version::V2 => {
                    assert_eq!(raw.to_vec(), proxy_header::encode_local(Version::V2), "v2 LOCAL bytes");
                    assert_eq!(accepted, Accepted { source: None, destination: None });
                }
                Version::V1 => {
                    assert_eq!(accepted.source, Some(peer), "v1 check source");
                    assert_eq!(accepted.destination, Some(target), "v1 check destination");
                }
            }
            println!("haproxy {directive} health check: read as {accepted:?}");
        }
    })
    .await;
}

/// A client writing `encode(V1/V2, ...)` then 1 MiB to HAProxy
/// `bind ... accept-proxy`: HAProxy logs the header's client and frontend
/// addresses and forwards exactly the bytes after the header.
#[tokio::test]
async fn haproxy_accept_proxy_takes_encoded_headers() {
    within(60, async {
        let cases = [
            (Version::V1, addr("127.10.20.30:4242"), addr("127.0.0.99:443")),
            (Version::V2, addr("127.10.20.31:4243"), addr("127.0.0.98:8443")),
            (Version::V2, addr("[2001:db8::7]:4244"), addr("[2001:db8::1]:443")),
            (Version::V1, addr("[2001:db8::8]:4245"), addr("[2001:db8::1]:443")),
        ];
        for (version, source, destination) in cases {
            let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let target = backend.local_addr().expect("addr");
            let haproxy = HaProxy::start(|front| {
                format!(
                    "frontend fe\n    bind {front} accept-proxy\n    \
                     log-format \"client=%ci:%cp frontend=%fi:%fp up=%U\"\n    default_backend be\n\n\
                     backend be\n    server s1 {target}\n"
                )
            })
            .await;
            let body = Arc::new(data(MIB, 13));
            let mut client = TcpStream::connect(haproxy.front).await.expect("connect haproxy");
            let writer = tokio::spawn({
                let body = Arc::clone(&body);
                async move {
                    let mut bytes = proxy_header::encode(version, source, destination);
                    bytes.extend_from_slice(&body);
                    client.write_all(&bytes).await.expect("write");
                    client.shutdown().await.expect("shutdown");
                    client
                }
            });
            let (mut server, _) = backend.accept().await.expect("accept from haproxy");
            let (n, hash) = drain(&mut server).await;
            assert_eq!((n, hash), (MIB, sha256(&body)), "{version} {source}: forwarded data");
            drop(server);
            drop(writer.await.expect("writer"));
            let want = format!(
                "client={}:{} frontend={}:{}",
                source.ip(),
                source.port(),
                destination.ip(),
                destination.port()
            );
            let line = haproxy.wait_log(&want).await;
            println!("haproxy accept-proxy, {version} from encode: logged \"{line}\"");
        }
    })
    .await;
}

// ----------------------------------------------------------------- fdpass

fn listeners(count: usize) -> Vec<std::net::TcpListener> {
    (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect()
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    rustix::io::fcntl_getfd(fd)
        .expect("F_GETFD")
        .contains(rustix::io::FdFlags::CLOEXEC)
}

/// Accept one connection on each received listener, after the sender closed
/// its copies: the received descriptors are the listening sockets.
async fn serve_each(fds: Vec<OwnedFd>, addrs: &[SocketAddr]) {
    assert_eq!(fds.len(), addrs.len());
    for (fd, addr) in fds.into_iter().zip(addrs) {
        assert!(is_cloexec(&fd), "received descriptor is not close-on-exec");
        let std_listener = std::net::TcpListener::from(fd);
        assert_eq!(
            std_listener.local_addr().expect("addr"),
            *addr,
            "descriptor order"
        );
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = listener
            .accept()
            .await
            .expect("accept on received listener");
        client.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.expect("read");
        assert_eq!(&byte, b"x");
    }
}

/// Pass `count` listening sockets and a payload of `payload_len` bytes from
/// one task to another over a socket pair.
async fn pass_listeners(count: usize, payload_len: usize) {
    let (left, right) = UnixStream::pair().expect("socketpair");
    let sockets = listeners(count);
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let payload = Arc::new(data(payload_len, count as u64));
    let sender = tokio::spawn({
        let payload = Arc::clone(&payload);
        async move {
            let fds: Vec<_> = sockets.iter().map(|l| l.as_fd()).collect();
            fdpass::send_fds(&left, &payload, &fds)
                .await
                .expect("send_fds");
            drop(fds);
            drop(sockets);
            left
        }
    });
    let (got, fds) = fdpass::recv_fds(&right, payload_len, count)
        .await
        .expect("recv_fds");
    let _left = sender.await.expect("sender");
    assert_eq!(got.len(), payload_len, "payload length");
    assert_eq!(sha256(&got), sha256(&payload), "payload bytes");
    serve_each(fds, &addrs).await;
}

#[tokio::test]
async fn three_listeners_and_100_kib_pass_to_another_task() {
    within(30, pass_listeners(3, 100 * 1024)).await;
    println!("fdpass: 3 listeners + 100 KiB received, each accepted a connection");
}

#[tokio::test]
async fn sixty_four_listeners_and_a_payload_far_above_one_message_pass_intact() {
    within(60, pass_listeners(64, 8 * MIB)).await;
    println!("fdpass: 64 listeners + 8 MiB received, each accepted a connection");
}

#[tokio::test]
async fn frames_over_the_limits_are_errors() {
    within(30, async {
        // More descriptors than the receiver takes: an error, not a loss.
        let (left, right) = UnixStream::pair().expect("socketpair");
        let sockets = listeners(10);
        let fds: Vec<_> = sockets.iter().map(|l| l.as_fd()).collect();
        fdpass::send_fds(&left, b"state", &fds).await.expect("send");
        let err = fdpass::recv_fds(&right, 1024, 2)
            .await
            .expect_err("10 fds into 2");
        println!("10 descriptors, limit 2: {err}");
        assert!(
            err.to_string().contains("truncated") || err.to_string().contains("more than 2"),
            "{err}"
        );

        // A payload above the limit.
        let (left, right) = UnixStream::pair().expect("socketpair");
        fdpass::send_fds(&left, &[0u8; 2048], &[])
            .await
            .expect("send");
        let err = fdpass::recv_fds(&right, 1024, 4)
            .await
            .expect_err("2048 into 1024");
        assert!(err.to_string().contains("above the limit of 1024"), "{err}");

        // A peer that speaks something else.
        let (mut left, right) = UnixStream::pair().expect("socketpair");
        left.write_all(b"HELLO, WORLD!").await.expect("write");
        let err = fdpass::recv_fds(&right, 1024, 4)
            .await
            .expect_err("garbage");
        assert!(err.to_string().contains("not a descriptor frame"), "{err}");

        // The peer closes mid-frame.
        let (left, right) = UnixStream::pair().expect("socketpair");
        let send = fdpass::send_fds(&left, &[1u8; 100], &[]);
        send.await.expect("send");
        drop(left);
        let (_, none) = fdpass::recv_fds(&right, 1024, 4)
            .await
            .expect("whole frame first");
        assert!(none.is_empty());
        let err = fdpass::recv_fds(&right, 1024, 4).await.expect_err("closed");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");

        // Too many for one frame is refused before anything is sent.
        let many = listeners(MAX_FDS_PER_FRAME + 1);
        let fds: Vec<_> = many.iter().map(|l| l.as_fd()).collect();
        let (left, _right) = UnixStream::pair().expect("socketpair");
        let err = fdpass::send_fds(&left, b"", &fds)
            .await
            .expect_err("254 fds");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    })
    .await;
}

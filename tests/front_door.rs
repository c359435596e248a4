//! The front door through the real binary: `send_proxy` names the client to
//! the backend before its first byte, `accept_proxy` takes the client's
//! address from a load balancer's header (and closes a client without one),
//! and `allow` closes a client outside the list before any backend is
//! contacted; rejections count in `failoverd_rejected_total`. The header
//! parser the test backend uses is failoverd's own, which
//! `front_door_parts.rs` proves against a real HAProxy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use failoverd::proxy_header::{self, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the backend saw of one client connection (health checks, whose
/// header is `LOCAL`, are left out).
#[derive(Debug)]
struct Seen {
    source: SocketAddr,
    destination: SocketAddr,
    len: usize,
    hash: [u8; 32],
}

/// A backend that reads a PROXY header off every connection, then the rest
/// to EOF, answers with the SHA-256 of the rest and reports client
/// connections on the channel.
async fn header_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (addr, rx, _) = header_backend_counting_local().await;
    (addr, rx)
}

/// As [`header_backend`], also counting the connections that started with
/// a `LOCAL` header (failoverd's health checks).
async fn header_backend_counting_local()
-> (SocketAddr, mpsc::UnboundedReceiver<Seen>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let locals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&locals);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let Ok(header) = proxy_header::read_header(&stream, deadline).await else {
                    return;
                };
                let (Some(source), Some(destination)) = (header.source, header.destination) else {
                    // A health check's LOCAL header.
                    counted.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let (hash, len) = read_hashed(&mut stream).await;
                let _ = stream.write_all(&hash).await;
                let _ = tx.send(Seen {
                    source,
                    destination,
                    len,
                    hash,
                });
            });
        }
    });
    (addr, rx, locals)
}

/// Send `prefix` then `data` through `listen`, half-close, read the
/// backend's hash; `None` when failoverd closed the connection instead.
async fn send(listen: SocketAddr, prefix: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    let mut stream = TcpStream::connect(listen).await.expect("connect");
    let _ = stream.write_all(prefix).await;
    let _ = stream.write_all(data).await;
    let _ = stream.shutdown().await;
    let mut hash = [0u8; 32];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hash)).await {
        Ok(Ok(_)) => Some(hash),
        Ok(Err(_)) => None,
        Err(_) => panic!("neither served nor closed within 10 s"),
    }
}

fn service(layout: &Layout, backend: SocketAddr) -> Service {
    layout
        .service()
        .set("check_interval", "200ms")
        .set("check_timeout", "200ms")
        .backend("backend", backend)
}

/// failoverd in front of `backend` with `accept_proxy` and `send_proxy`,
/// plus `extra` settings.
async fn start_relaying(
    tag: &str,
    backend: SocketAddr,
    send_proxy: &str,
    extra: Table,
) -> Failoverd {
    Failoverd::start(tag, |layout| {
        layout
            .config(
                service(layout, backend)
                    .set("accept_proxy", true)
                    .set("send_proxy", send_proxy)
                    .merge(&extra),
            )
            .to_string()
    })
    .await
}

async fn rejected(proxy: &Failoverd, reason: &str) -> f64 {
    proxy
        .metrics()
        .await
        .value(
            "failoverd_rejected_total",
            &[("service", "svc"), ("reason", reason)],
        )
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_names_the_client_before_its_bytes_v1_and_v2() {
    within(60, async {
        for version in ["v1", "v2"] {
            let (backend, mut seen, locals) = header_backend_counting_local().await;
            let proxy = Failoverd::start(&format!("send-proxy-{version}"), |layout| {
                layout
                    .config(service(layout, backend).set("send_proxy", version))
                    .to_string()
            })
            .await;
            let data = random_bytes(1024 * 1024, 3);
            let mut stream = TcpStream::connect(proxy.listen()).await.expect("connect");
            let me = stream.local_addr().expect("addr");
            stream.write_all(&data).await.expect("write");
            stream.shutdown().await.expect("shutdown");
            let mut hash = [0u8; 32];
            stream.read_exact(&mut hash).await.expect("hash back");
            assert_eq!(hash, sha256(&data), "{version}: bytes after the header");
            // The harness's readiness probe came first; skip to this client.
            let got = loop {
                let got = seen.recv().await.expect("backend saw the client");
                if got.source == me {
                    break got;
                }
            };
            assert_eq!(got.source, me, "{version}: header source");
            assert_eq!(
                got.destination,
                proxy.listen(),
                "{version}: header destination"
            );
            assert_eq!(got.len, data.len());
            assert_eq!(got.hash, sha256(&data));
            // Health checks start with a LOCAL header (v1: PROXY UNKNOWN).
            eventually(Duration::from_secs(5), "a LOCAL health check", || async {
                match locals.load(Ordering::SeqCst) {
                    0 => Err(0),
                    n => Ok(n),
                }
            })
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_takes_the_client_from_the_header_and_closes_one_without() {
    within(60, async {
        let (backend, mut seen) = header_backend().await;
        let proxy = start_relaying("accept-proxy", backend, "v2", Table::new()).await;
        let listen = proxy.listen();
        let data = random_bytes(256 * 1024, 4);

        let v1 = format!(
            "PROXY TCP4 192.0.2.7 {} 40000 {}\r\n",
            listen.ip(),
            listen.port()
        );
        let hash = send(listen, v1.as_bytes(), &data).await.expect("v1 served");
        assert_eq!(hash, sha256(&data));
        let got = seen.recv().await.expect("seen");
        assert_eq!(got.source, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(got.destination, listen);

        let real: SocketAddr = "[2001:db8::7]:40001".parse().unwrap();
        let front: SocketAddr = "[2001:db8::100]:5432".parse().unwrap();
        let v2 = proxy_header::encode(Version::V2, real, front);
        assert_eq!(send(listen, &v2, &data).await, Some(sha256(&data)));
        let got = seen.recv().await.expect("seen");
        assert_eq!((got.source, got.destination), (real, front));

        assert_eq!(send(listen, b"", b"GET / HTTP/1.0\r\n\r\n").await, None);
        assert_eq!(rejected(&proxy, "proxy_header").await, 1.0);
        assert!(
            seen.try_recv().is_err(),
            "a client without header reached the backend"
        );
        // The log is read from failoverd's stderr by a thread: wait for it.
        proxy
            .wait_for_log("client rejected: bad PROXY header", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_closes_clients_outside_the_list_before_any_backend() {
    within(60, async {
        let (backend, mut seen) = header_backend().await;
        let proxy = start_relaying(
            "allow-proxy",
            backend,
            "v1",
            Table::new().set("allow", ["192.0.2.0/24", "2001:db8::7"]),
        )
        .await;
        let listen = proxy.listen();
        let data = b"hello through the front door".to_vec();
        let header = |source: &str| {
            let source: SocketAddr = source.parse().unwrap();
            proxy_header::encode(Version::V1, source, listen)
        };
        assert_eq!(
            send(listen, &header("192.0.2.9:1000"), &data).await,
            Some(sha256(&data))
        );
        assert_eq!(
            seen.recv().await.expect("seen").source.ip().to_string(),
            "192.0.2.9"
        );
        assert_eq!(
            send(listen, &header("[2001:db8::7]:1000"), &data).await,
            Some(sha256(&data))
        );
        seen.recv().await.expect("seen");
        for outside in ["198.51.100.1:1000", "[2001:db8::8]:1000"] {
            assert_eq!(
                send(listen, &header(outside), &data).await,
                None,
                "{outside}"
            );
        }
        assert_eq!(rejected(&proxy, "allow").await, 2.0);
        assert!(
            seen.try_recv().is_err(),
            "a client outside allow reached the backend"
        );
        proxy
            .wait_for_log("client rejected: not in allow", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_without_accept_proxy_judges_the_connection_address() {
    within(60, async {
        let backend = TestBackend::start("backend", Mode::Greet).await;
        let proxy = Failoverd::start("allow-direct", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .set("allow", ["10.0.0.0/8"])
                        .backend("backend", backend.addr),
                )
                .to_string()
        })
        .await;
        // The harness's readiness probe connected from 127.0.0.1 too:
        // count from once it was rejected.
        proxy
            .metrics_until(Duration::from_secs(5), "the readiness probe", |m| {
                m.value(
                    "failoverd_rejected_total",
                    &[("service", "svc"), ("reason", "allow")],
                ) == Some(1.0)
            })
            .await;
        let before = 1.0;
        let served = backend.served();
        assert!(
            who_answers(proxy.listen()).await.is_err(),
            "127.0.0.1 is outside 10/8"
        );
        assert_eq!(rejected(&proxy, "allow").await, before + 1.0);
        // Health checks still reach it; the client did not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            backend.served(),
            served,
            "the backend served a rejected client"
        );

        let out = proxy
            .reload(
                &proxy
                    .layout()
                    .config(
                        proxy
                            .layout()
                            .service()
                            .set("allow", ["127.0.0.0/8"])
                            .backend("backend", backend.addr),
                    )
                    .to_string(),
            )
            .await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(who_answers(proxy.listen()).await.unwrap(), "backend");
    })
    .await;
}

/// A header split over two sends (the second 50 ms later), then 1 MiB:
/// the client is taken from the header and every byte after it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_header_then_one_mib_arrive_intact() {
    within(60, async {
        let (backend, mut seen) = header_backend().await;
        let proxy = start_relaying("split-header", backend, "v2", Table::new()).await;
        let listen = proxy.listen();
        let data = random_bytes(1024 * 1024, 11);
        for version in [Version::V1, Version::V2] {
            let real: SocketAddr = "198.51.100.20:3333".parse().unwrap();
            let header = proxy_header::encode(version, real, listen);
            let (first, second) = header.split_at(header.len() / 2);
            let mut stream = TcpStream::connect(listen).await.expect("connect");
            stream.write_all(first).await.expect("first half");
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.write_all(second).await.expect("second half");
            stream.write_all(&data).await.expect("data");
            stream.shutdown().await.expect("shutdown");
            let mut hash = [0u8; 32];
            stream.read_exact(&mut hash).await.expect("hash");
            assert_eq!(hash, sha256(&data), "{version:?}");
            let got = seen.recv().await.expect("seen");
            assert_eq!((got.source, got.len), (real, data.len()), "{version:?}");
        }
    })
    .await;
}

/// On loopback, 127.0.0.2 is another client address: `allow` tells them
/// apart by the connection's own source address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_tells_loopback_addresses_apart() {
    within(30, async {
        let backend = TestBackend::start("backend", Mode::Greet).await;
        let proxy = Failoverd::start("allow-loopback", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .set("allow", ["127.0.0.2/32"])
                        .backend("backend", backend.addr),
                )
                .to_string()
        })
        .await;
        let from = |ip: &str| {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(format!("{ip}:0").parse().unwrap())
                .expect("bind source");
            socket
        };
        let mut allowed = from("127.0.0.2")
            .connect(proxy.listen())
            .await
            .expect("connect");
        assert_eq!(read_line(&mut allowed).await.unwrap(), "backend");
        let mut denied = from("127.0.0.1")
            .connect(proxy.listen())
            .await
            .expect("connect");
        assert!(
            read_line(&mut denied).await.is_err(),
            "127.0.0.1 was served"
        );
    })
    .await;
}

/// A real HAProxy with `send-proxy` / `send-proxy-v2` in front of failoverd
/// with `accept_proxy` (and `send_proxy = "v1"` onwards): the backend sees
/// the real client that connected to HAProxy, and 1 MiB arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_sends_headers_failoverd_accepts() {
    within(60, async {
        for directive in ["send-proxy", "send-proxy-v2"] {
            let (backend, mut seen) = header_backend().await;
            let proxy = start_relaying("behind-haproxy", backend, "v1", Table::new()).await;
            let target = proxy.listen();
            let haproxy = common::haproxy::HaProxy::start(|front| {
                format!(
                    "frontend fe\n    bind {front}\n    default_backend be\n\n\
                     backend be\n    server s1 {target} {directive}\n"
                )
            })
            .await;
            let data = random_bytes(1024 * 1024, 21);
            let mut client = TcpStream::connect(haproxy.front).await.expect("connect");
            let me = client.local_addr().expect("addr");
            client.write_all(&data).await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut hash = [0u8; 32];
            client.read_exact(&mut hash).await.expect("hash back");
            assert_eq!(hash, sha256(&data), "{directive}");
            let got = seen.recv().await.expect("seen");
            assert_eq!(got.source, me, "{directive}: the real client");
            assert_eq!(
                got.destination, haproxy.front,
                "{directive}: HAProxy's frontend"
            );
        }
    })
    .await;
}

/// failoverd with `send_proxy` in front of a real HAProxy frontend with
/// `accept-proxy`: HAProxy takes the header (it logs the client failoverd
/// named, not failoverd's own address) and the bytes pass both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failoverd_sends_headers_haproxy_accepts() {
    within(60, async {
        for version in ["v1", "v2"] {
            let echo = TestBackend::start("echo", Mode::Echo).await;
            let target = echo.addr;
            let haproxy = common::haproxy::HaProxy::start(|front| {
                format!(
                    "frontend fe\n    bind {front} accept-proxy\n    option tcplog\n    default_backend be\n\n\
                     backend be\n    server s1 {target}\n"
                )
            })
            .await;
            let front = haproxy.front;
            let proxy = Failoverd::start(&format!("to-haproxy-{version}"), |layout| {
                layout
                    .config(
                        layout
                            .service()
                            .set("send_proxy", version)
                            .set("check_interval", "1h")
                            .backend("haproxy", front),
                    )
                    .to_string()
            })
            .await;
            let mut client = TcpStream::connect(proxy.listen()).await.expect("connect");
            let me = client.local_addr().expect("addr");
            let data = random_bytes(64 * 1024, 5);
            client.write_all(&data).await.expect("write");
            let mut back = vec![0u8; data.len()];
            client.read_exact(&mut back).await.expect("echo back");
            assert_eq!(sha256(&back), sha256(&data), "{version}");
            drop(client);
            let line = haproxy.wait_log(&format!("{me} ")).await;
            assert!(line.contains("fe be/s1"), "{version}: {line}");
        }
    })
    .await;
}

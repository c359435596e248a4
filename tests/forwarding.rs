//! The data path through a real proxy on loopback: bytes intact both ways,
//! half-close, many connections, connect retry, idle timeout, backpressure.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_BYTES: usize = 64 * 1024 * 1024;

/// A backend that hashes everything it receives and, at the same time,
/// sends its own `reply`; returns the hash of what it received.
async fn hashing_backend(
    reply: Arc<Vec<u8>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<[u8; 32]>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let stream = accept_with_data(&listener).await;
        let (r, mut w) = stream.into_split();
        let sender = tokio::spawn(async move {
            w.write_all(&reply).await.expect("backend write");
            w.shutdown().await.expect("backend shutdown");
        });
        let (hash, _) = read_hashed(r).await;
        sender.await.expect("sender");
        hash
    });
    (addr, task)
}

async fn bulk_both_ways(zero_copy: bool) {
    let up = Arc::new(random_bytes(BULK_BYTES, 1));
    let down = Arc::new(random_bytes(BULK_BYTES, 2));
    let (backend, received) = hashing_backend(Arc::clone(&down)).await;
    let proxy = TestProxy::start(
        &svc(&[("primary", backend)])
            .set("zero_copy", zero_copy)
            .toml(),
    )
    .await;
    let splices_before = failoverd::forward::splice::splice_calls();
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let sender = tokio::spawn({
        let up = Arc::clone(&up);
        async move {
            w.write_all(&up).await.expect("client write");
            w.shutdown().await.expect("client shutdown");
        }
    });
    let (client_got, _) = read_hashed(r).await;
    sender.await.expect("sender");
    assert_eq!(
        received.await.expect("backend"),
        sha256(&up),
        "client -> backend bytes"
    );
    assert_eq!(client_got, sha256(&down), "backend -> client bytes");
    let splices = failoverd::forward::splice::splice_calls() - splices_before;
    if zero_copy {
        assert!(splices > 0, "the zero-copy path made no splice call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_64_mib_each_way_intact_with_splice() {
    within(120, bulk_both_ways(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_64_mib_each_way_intact_with_userspace_copy() {
    within(120, bulk_both_ways(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_half_close_on_and_delivers_the_answer() {
    within(20, async {
        // The backend answers only after it has seen the request's EOF.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut s = accept_with_data(&listener).await;
            let mut request = Vec::new();
            s.read_to_end(&mut request).await.unwrap();
            let answer = format!(
                "got {} bytes: {}",
                request.len(),
                String::from_utf8_lossy(&request)
            );
            s.write_all(answer.repeat(1000).as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            answer
        });
        let proxy = TestProxy::start(&svc(&[("primary", backend)]).toml()).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(b"hello through failoverd").await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let expected = server.await.unwrap();
        assert_eq!(answer, expected.repeat(1000).into_bytes());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_500_concurrent_connections_intact() {
    init_logging();
    within(120, async {
        let backend = TestBackend::start("primary", Mode::Echo).await;
        // The test's own clients and backend share the proxy's runtime, so
        // give connects more time than the default under this burst.
        let proxy = TestProxy::start(
            &svc(&[("primary", backend.addr)])
                .set("connect_timeout", "10s")
                .toml(),
        )
        .await;
        // Generate the payloads before the burst so no task hogs a worker.
        let payloads: Vec<(Arc<Vec<u8>>, [u8; 32])> = (0..500u64)
            .map(|i| {
                let data = random_bytes(256 * 1024, 100 + i);
                let hash = sha256(&data);
                (Arc::new(data), hash)
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (data, expected) in payloads {
            let addr = proxy.addr;
            tasks.spawn(async move { (echo_roundtrip(addr, data).await, expected) });
        }
        let mut done = 0;
        while let Some(result) = tasks.join_next().await {
            let (got, expected) = result.expect("connection task");
            assert_eq!(got, expected);
            done += 1;
        }
        assert_eq!(done, 500);
        assert_eq!(backend.served(), 500);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_the_next_backend_within_the_same_client_connection() {
    within(20, async {
        let dead = closed_port().await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        // Long check interval: only the data path's retry can save the client.
        let proxy = TestProxy::start(
            &svc(&[("primary", dead), ("backup", backup.addr)])
                .set("check_interval", "1h")
                .set("check_timeout", "1s")
                .set("passive_errors", 0)
                .toml(),
        )
        .await;
        // Let the first check round finish, whatever it says.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..5 {
            assert_eq!(who_answers(proxy.addr).await.unwrap(), "backup");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_the_client_when_every_backend_refuses_and_lives_on() {
    within(20, async {
        let (a, b) = (closed_port().await, closed_port().await);
        let proxy = TestProxy::start(
            &svc(&[("primary", a), ("backup", b)])
                .set("check_interval", "1h")
                .set("check_timeout", "1s")
                .toml(),
        )
        .await;
        for _ in 0..3 {
            let mut client = TcpStream::connect(proxy.addr).await.expect("accepted");
            let mut buf = [0u8; 16];
            let n = client.read(&mut buf).await.unwrap_or(0);
            assert_eq!(n, 0, "client must be closed");
        }
        // The proxy still serves once a backend is back.
        let mut backup = TestBackend::start("backup", Mode::Greet).await;
        let _ = &mut backup;
        let proxy2 =
            TestProxy::start(&svc(&[("primary", a), ("backup", backup.addr)]).toml()).await;
        assert_eq!(who_answers(proxy2.addr).await.unwrap(), "backup");
        // And the first proxy accepts connections still.
        assert!(TcpStream::connect(proxy.addr).await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_an_idle_connection() {
    within(20, async {
        let backend = TestBackend::start("primary", Mode::Echo).await;
        let proxy = TestProxy::start(
            &svc(&[("primary", backend.addr)])
                .set("idle_timeout", "300ms")
                .toml(),
        )
        .await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        // Traffic keeps it open past the timeout...
        for _ in 0..5 {
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            client.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // ...silence closes it.
        let started = std::time::Instant::now() - Duration::from_millis(150);
        let mut buf = [0u8; 4];
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "closed {waited:?} after the last byte"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_a_third_client_until_a_slot_frees() {
    within(20, async {
        let backend = TestBackend::start("primary", Mode::Echo).await;
        let proxy = TestProxy::start(
            &svc(&[("primary", backend.addr)])
                .set("max_connections", 2)
                .toml(),
        )
        .await;
        let mut first = TcpStream::connect(proxy.addr).await.unwrap();
        let mut second = TcpStream::connect(proxy.addr).await.unwrap();
        for c in [&mut first, &mut second] {
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
        }
        // The third completes the handshake in the backlog but is not served.
        let mut third = TcpStream::connect(proxy.addr).await.unwrap();
        let data = random_bytes(1024 * 1024, 7);
        let (mut r3, mut w3) = third.split();
        let payload = data.clone();
        let mut got = Vec::new();
        let exchange = async {
            w3.write_all(&payload).await.unwrap();
            w3.shutdown().await.unwrap();
            r3.read_to_end(&mut got).await.unwrap();
        };
        tokio::pin!(exchange);
        let early = tokio::time::timeout(Duration::from_millis(500), &mut exchange).await;
        assert!(
            early.is_err(),
            "third client served while two slots were taken"
        );
        assert_eq!(backend.served(), 2);
        drop(first);
        exchange.await;
        assert_eq!(sha256(&got), sha256(&data), "third client's bytes intact");
        assert_eq!(backend.served(), 3);
        drop(second);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_over_ipv6() {
    within(20, async {
        let backend =
            TestBackend::start_on("primary", Mode::Echo, "[::1]:0".parse().unwrap()).await;
        let proxy = TestProxy::start(
            &Service::new("v6")
                .listen("[::1]:0")
                .backend("primary", backend.addr)
                .toml(),
        )
        .await;
        assert!(proxy.addr.is_ipv6());
        let data = Arc::new(random_bytes(1024 * 1024, 6));
        assert_eq!(
            echo_roundtrip(proxy.addr, Arc::clone(&data)).await,
            sha256(&data)
        );
    })
    .await;
}

/// failoverd's own sockets towards `backend` (`ss -tnoH state established
/// dst ADDR`), one line each with its timer column.
fn sockets_towards(backend: std::net::SocketAddr) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", "dst"])
        .arg(backend.to_string())
        .output()
        .expect("run ss (Debian package iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A backend connection gets TCP keepalive once it has lived a second
/// (`net::BACKEND_KEEPALIVE_AFTER`), not at connect: short connections
/// never pay its system calls, and a long one is still probed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_keepalive_is_armed_once_a_connection_outlives_a_second() {
    within(20, async {
        let backend = TestBackend::start("b", Mode::Greet).await;
        let proxy = Launch::new()
            .start("keepalive", |layout| {
                layout
                    .config(layout.service().backend("b", backend.addr))
                    .to_string()
            })
            .await;
        let mut client = TcpStream::connect(proxy.listen()).await.expect("connect");
        assert_eq!(read_line(&mut client).await.expect("greeting"), "b");
        let early = sockets_towards(backend.addr);
        assert!(
            early.iter().all(|l| !l.contains("keepalive")),
            "keepalive armed at connect: {early:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = sockets_towards(backend.addr);
        assert!(
            later.iter().any(|l| l.contains("timer:(keepalive,")),
            "no keepalive after 1.5 s: {later:?}"
        );
        // Still forwarding.
        client.write_all(b"ping\n").await.expect("write");
        assert_eq!(read_line(&mut client).await.expect("echo"), "ping");
    })
    .await;
}

//! Forwarding tests over real loopback sockets: bulk data both ways on both
//! paths, half-close, idle timeout, cancel, resets, and the pipe pool.
//! Every test is bounded by a timeout; no fixed ports.

use std::io;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const BULK_BYTES: usize = 8 * 1024 * 1024;

/// A connected (user end, proxy end) pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

struct Harness {
    /// The test's client socket (talks to the proxy).
    client: TcpStream,
    /// The test's backend socket (the proxy talks to it).
    backend: TcpStream,
    cancel: CancellationToken,
    task: JoinHandle<io::Result<(Outcome, Transferred)>>,
}

/// Start `forward` between a client pair and a backend pair. `tokio::spawn`
/// also proves the future is `Send`.
async fn start(options: ForwardOptions) -> Harness {
    let (client, proxy_client) = pair().await;
    let (proxy_backend, backend) = pair().await;
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        let counters = ByteCounters::noop();
        forward(proxy_client, proxy_backend, options, &counters, &token).await
    });
    Harness {
        client,
        backend,
        cancel,
        task,
    }
}

fn opts(zero_copy: bool) -> ForwardOptions {
    ForwardOptions {
        zero_copy,
        idle_timeout: None,
        backend_later: None,
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    data
}

fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// Write `data` then half-close, while reading the peer's bytes to EOF.
async fn exchange(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    // Keep the write half alive until the read side saw EOF.
    let _wr = writer.await.unwrap();
    got
}

async fn bulk_both_ways(zero_copy: bool) {
    let splices_before = splice_calls();
    let h = start(opts(zero_copy)).await;
    let up = random_bytes(BULK_BYTES);
    let down = random_bytes(BULK_BYTES);
    let (up_sha, down_sha) = (sha(&up), sha(&down));
    let (at_backend, at_client) = tokio::join!(exchange(h.backend, down), exchange(h.client, up));
    assert_eq!(at_backend.len(), BULK_BYTES);
    assert_eq!(at_client.len(), BULK_BYTES);
    assert!(sha(&at_backend) == up_sha, "client -> backend bytes differ");
    assert!(
        sha(&at_client) == down_sha,
        "backend -> client bytes differ"
    );
    let (outcome, moved) = h.task.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Closed);
    if zero_copy {
        assert!(splice_calls() > splices_before, "splice(2) never ran");
    }
    let all = BULK_BYTES as u64;
    assert_eq!(
        moved,
        Transferred {
            to_backend: all,
            to_client: all
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_moves_8_mib_each_way_intact_with_splice() {
    timeout(TEST_TIMEOUT, bulk_both_ways(true)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_moves_8_mib_each_way_intact_with_copy() {
    timeout(TEST_TIMEOUT, bulk_both_ways(false)).await.unwrap();
}

/// Client sends a request and half-closes; the backend reads to EOF, then
/// replies; the client reads the whole reply to EOF.
async fn half_close(zero_copy: bool) {
    let mut h = start(opts(zero_copy)).await;
    h.client.write_all(b"GET /\r\n").await.unwrap();
    h.client.shutdown().await.unwrap();

    let mut request = Vec::new();
    h.backend.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"GET /\r\n");

    let reply = random_bytes(1024 * 1024);
    h.backend.write_all(&reply).await.unwrap();
    h.backend.shutdown().await.unwrap();

    let mut got = Vec::new();
    h.client.read_to_end(&mut got).await.unwrap();
    assert!(got == reply, "reply differs");

    let (outcome, moved) = h.task.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Closed);
    assert_eq!(moved.to_backend, 7);
    assert_eq!(moved.to_client, reply.len() as u64);
}

#[tokio::test]
async fn forward_passes_half_close_with_splice() {
    timeout(TEST_TIMEOUT, half_close(true)).await.unwrap();
}

#[tokio::test]
async fn forward_passes_half_close_with_copy() {
    timeout(TEST_TIMEOUT, half_close(false)).await.unwrap();
}

#[tokio::test]
async fn forward_ends_with_idle_timeout_when_nothing_moves() {
    let options = ForwardOptions {
        zero_copy: true,
        idle_timeout: Some(Duration::from_millis(200)),
        backend_later: None,
    };
    let h = start(options).await;
    let (outcome, moved) = timeout(TEST_TIMEOUT, h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::IdleTimeout);
    assert_eq!(moved, Transferred::default());
}

#[tokio::test]
async fn forward_idle_timeout_is_pushed_back_by_traffic() {
    let idle = Duration::from_millis(600);
    let options = ForwardOptions {
        zero_copy: true,
        idle_timeout: Some(idle),
        backend_later: None,
    };
    let mut h = start(options).await;
    let started = tokio::time::Instant::now();
    // One byte every 100 ms for well over the idle timeout.
    for _ in 0..15 {
        h.client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        h.backend.read_exact(&mut byte).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!h.task.is_finished(), "idle timeout fired despite traffic");
    let (outcome, moved) = timeout(TEST_TIMEOUT, h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::IdleTimeout);
    assert_eq!(moved.to_backend, 15);
    assert!(started.elapsed() >= Duration::from_millis(1500) + idle / 2);
}

#[tokio::test]
async fn forward_ends_when_cancelled_and_reports_totals() {
    let mut h = start(opts(true)).await;
    h.client.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    h.backend.read_exact(&mut got).await.unwrap();
    h.cancel.cancel();
    let (outcome, moved) = timeout(TEST_TIMEOUT, h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(
        moved,
        Transferred {
            to_backend: 5,
            to_client: 0
        }
    );
}

#[tokio::test]
async fn forward_with_zero_copy_really_splices() {
    let before = splice_calls();
    timeout(TEST_TIMEOUT, half_close(true)).await.unwrap();
    // Other tests splice too, so only "it went up" is meaningful.
    assert!(splice_calls() > before, "splice(2) was never called");
}

/// Reset `stream` (RST, not FIN) by closing it with SO_LINGER 0.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

async fn reset_ends_forward(zero_copy: bool, reset_backend: bool) {
    let h = start(opts(zero_copy)).await;
    let survivor = if reset_backend {
        reset(h.backend);
        h.client
    } else {
        reset(h.client);
        h.backend
    };
    let err = timeout(TEST_TIMEOUT, h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let side = if reset_backend {
        Side::Backend
    } else {
        Side::Client
    };
    assert_eq!(error_side(&err), Some(side), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    drop(survivor);
}

#[tokio::test]
async fn forward_fails_when_backend_resets_with_splice() {
    reset_ends_forward(true, true).await;
}

#[tokio::test]
async fn forward_fails_when_client_resets_with_splice() {
    reset_ends_forward(true, false).await;
}

#[tokio::test]
async fn forward_fails_when_backend_resets_with_copy() {
    reset_ends_forward(false, true).await;
}

#[tokio::test]
async fn forward_fails_when_client_resets_with_copy() {
    reset_ends_forward(false, false).await;
}

/// A direction that went idle holds no pipe: on this current-thread
/// runtime the one pipe used goes back to this thread's pool.
#[tokio::test]
async fn forward_idle_direction_returns_its_pipe_to_the_pool() {
    splice::clear_pool();
    let mut h = start(opts(true)).await;
    let data = random_bytes(512 * 1024);
    let (wrote, read) = tokio::join!(h.client.write_all(&data), async {
        let mut got = vec![0u8; data.len()];
        h.backend.read_exact(&mut got).await.map(|_| got)
    });
    wrote.unwrap();
    assert!(read.unwrap() == data);
    timeout(TEST_TIMEOUT, async {
        while pooled_pipes() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the idle direction kept its pipe");
    h.cancel.cancel();
    h.task.await.unwrap().unwrap();
}

/// A pipe grown by a bulk transfer goes back to the pool at the kernel's
/// default size, so idle pipes never hold the user's pipe budget.
#[tokio::test]
async fn pooled_pipes_are_shrunk_back_after_a_bulk_transfer() {
    splice::clear_pool();
    let grown_before = splice::pipes_grown();
    let h = start(opts(true)).await;
    let up = random_bytes(BULK_BYTES);
    let (at_backend, _) = tokio::join!(exchange(h.backend, Vec::new()), exchange(h.client, up));
    assert_eq!(at_backend.len(), BULK_BYTES);
    h.task.await.unwrap().unwrap();
    assert!(
        splice::pipes_grown() > grown_before,
        "the bulk transfer never grew a pipe"
    );
    let sizes = splice::pooled_pipe_sizes();
    assert!(!sizes.is_empty(), "no pipe went back to the pool");
    assert!(
        sizes.iter().all(|&s| s == splice::POOLED_PIPE_BYTES),
        "pooled pipe sizes {sizes:?}, want {} each",
        splice::POOLED_PIPE_BYTES
    );
}

/// The copy path too: an idle direction hands its buffer back.
#[tokio::test]
async fn forward_idle_direction_returns_its_copy_buffer_to_the_pool() {
    copy::clear_pool();
    let mut h = start(opts(false)).await;
    let data = random_bytes(512 * 1024);
    let (wrote, read) = tokio::join!(h.client.write_all(&data), async {
        let mut got = vec![0u8; data.len()];
        h.backend.read_exact(&mut got).await.map(|_| got)
    });
    wrote.unwrap();
    assert!(read.unwrap() == data);
    timeout(TEST_TIMEOUT, async {
        while copy::pooled_buffers() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the idle direction kept its buffer");
    h.cancel.cancel();
    h.task.await.unwrap().unwrap();
}

/// Rough one-way throughput, splice vs copy: `cargo test --release
/// forward_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn forward_throughput() {
    const TOTAL_BYTES: usize = 1 << 30;
    for zero_copy in [true, false] {
        let mut h = start(opts(zero_copy)).await;
        let chunk = vec![7u8; 1 << 20];
        let started = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..TOTAL_BYTES / chunk.len() {
                h.client.write_all(&chunk).await.unwrap();
            }
            h.client.shutdown().await.unwrap();
            h.client
        });
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        loop {
            let n = h.backend.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(got, TOTAL_BYTES);
        drop(writer.await.unwrap());
        drop(h.backend);
        let _ = h.task.await.unwrap();
        println!(
            "zero_copy={zero_copy}: {:.0} MiB/s",
            TOTAL_BYTES as f64 / secs / (1 << 20) as f64
        );
    }
}

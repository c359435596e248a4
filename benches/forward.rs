//! Micro-benchmarks of failoverd's hot pieces, without a proxy process:
//!
//! - `forward`: bytes through `failoverd::forward::forward` over real
//!   loopback sockets, splice(2) against the userspace copy: one-way bulk
//!   MB/s, and small-message round trips per second;
//! - `decide`: `failoverd::policy::decide` per call;
//! - `config`: `failoverd::config::parse` of `config.example.toml`.
//!
//! Run: `cargo bench --bench forward` (full) or
//! `cargo bench --bench forward -- --quick` (CI smoke, a few seconds; the
//! env var `FAILOVERD_BENCH_QUICK=1` does the same). A further argument
//! that does not start with `-` keeps only the benchmarks whose name
//! contains it, e.g. `cargo bench --bench forward -- splice`.
//!
//! A hand-rolled loop rather than criterion: the figures that matter here
//! are coarse (MB/s, ns per call) and criterion would add a heavy
//! dev-dependency tree and minutes of build time on a 2-core machine.
//! Each benchmark runs a warm-up, then N timed runs; the median is printed
//! with the min and max so noise is visible.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use failoverd::config::{self, Failback};
use failoverd::forward::{self, ByteCounters, ForwardOptions, Outcome};
use failoverd::policy::{self, BackendView, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const EXAMPLE_CONFIG: &str = include_str!("../config.example.toml");

struct Settings {
    quick: bool,
    filter: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        let mut quick = std::env::var_os("FAILOVERD_BENCH_QUICK").is_some_and(|v| v != "0");
        let mut filter = None;
        // cargo passes `--bench`; libtest-style flags we do not know are ignored.
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                a if !a.starts_with('-') => filter = Some(a.to_owned()),
                _ => {}
            }
        }
        Settings { quick, filter }
    }

    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Timed runs per benchmark.
    fn runs(&self) -> usize {
        if self.quick { 3 } else { 9 }
    }
}

/// Median, min and max of `samples` (not empty).
fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    (median, samples[0], samples[n - 1])
}

fn report(name: &str, unit: &str, samples: &mut [f64]) {
    let runs = samples.len();
    let (median, min, max) = summary(samples);
    println!(
        "{name:<44} median {median:>12.1} {unit:<8} (min {min:.1}, max {max:.1}, {runs} runs)"
    );
}

/// A connected (our end, proxy end) pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let ours = connected.expect("connect");
    let theirs = accepted.expect("accept").0;
    ours.set_nodelay(true).expect("nodelay");
    theirs.set_nodelay(true).expect("nodelay");
    (ours, theirs)
}

/// client <-> [forward] <-> backend; returns (client, backend, forward task).
async fn harness(
    zero_copy: bool,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<std::io::Result<(Outcome, forward::Transferred)>>,
) {
    let (client, proxy_client) = pair().await;
    let (proxy_backend, backend) = pair().await;
    let task = tokio::spawn(async move {
        let options = ForwardOptions {
            zero_copy,
            idle_timeout: None,
            backend_later: None,
        };
        let counters = ByteCounters::noop();
        let cancel = CancellationToken::new();
        forward::forward(proxy_client, proxy_backend, options, &counters, &cancel).await
    });
    (client, backend, task)
}

/// Push `bytes` from the client to the backend through `forward`; MB/s
/// (10^6 bytes per second) from the first write to the backend's EOF.
async fn bulk_once(zero_copy: bool, bytes: usize) -> f64 {
    let (mut client, mut backend, task) = harness(zero_copy).await;
    let chunk = vec![0x5au8; 128 * 1024];
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n]).await.expect("client write");
            left -= n;
        }
        client.shutdown().await.expect("client shutdown");
        client
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        let n = backend.read(&mut buf).await.expect("backend read");
        if n == 0 {
            break;
        }
        got += n;
    }
    let elapsed = started.elapsed();
    assert_eq!(got, bytes, "bytes lost in forward");
    drop(backend);
    drop(writer.await.expect("writer"));
    let _ = task.await.expect("forward task");
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// `rounds` request/response exchanges of `size` bytes through `forward`;
/// round trips per second.
async fn ping_pong_once(zero_copy: bool, size: usize, rounds: usize) -> f64 {
    let (mut client, mut backend, task) = harness(zero_copy).await;
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; size];
        while backend.read_exact(&mut buf).await.is_ok() {
            backend.write_all(&buf).await.expect("echo write");
        }
    });
    let msg = vec![0x42u8; size];
    let mut reply = vec![0u8; size];
    let started = Instant::now();
    for _ in 0..rounds {
        client.write_all(&msg).await.expect("write");
        client.read_exact(&mut reply).await.expect("read");
    }
    let elapsed = started.elapsed();
    client.shutdown().await.expect("shutdown");
    echo.await.expect("echo task");
    drop(client);
    let _ = task.await.expect("forward task");
    rounds as f64 / elapsed.as_secs_f64()
}

fn bench_forward(rt: &Runtime, s: &Settings) {
    let bulk_bytes = if s.quick { 64 << 20 } else { 512 << 20 };
    let rounds = if s.quick { 2_000 } else { 20_000 };
    for (mode, zero_copy) in [("splice", true), ("copy", false)] {
        let name = format!("forward/{mode}/bulk {} MiB", bulk_bytes >> 20);
        if s.wants(&name) {
            rt.block_on(bulk_once(zero_copy, bulk_bytes / 8)); // warm-up
            let mut samples: Vec<f64> = (0..s.runs())
                .map(|_| rt.block_on(bulk_once(zero_copy, bulk_bytes)))
                .collect();
            report(&name, "MB/s", &mut samples);
        }
        let name = format!("forward/{mode}/ping-pong 64 B");
        if s.wants(&name) {
            rt.block_on(ping_pong_once(zero_copy, 64, rounds / 10)); // warm-up
            let mut samples: Vec<f64> = (0..s.runs())
                .map(|_| rt.block_on(ping_pong_once(zero_copy, 64, rounds)))
                .collect();
            report(&name, "rt/s", &mut samples);
        }
    }
}

/// Nanoseconds per call of `f`, `iters` calls per sample.
fn per_call_ns(s: &Settings, iters: u32, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..iters / 10 {
        f();
    }
    (0..s.runs())
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iters {
                f();
            }
            started.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect()
}

fn bench_decide(s: &Settings) {
    let now = Instant::now();
    let up = |since: Option<Duration>| BackendView {
        up: true,
        enabled: true,
        up_since: since.map(|d| now - d),
    };
    let down = BackendView {
        up: false,
        enabled: true,
        up_since: None,
    };
    let policy = Policy {
        failback: Failback::Auto,
        failback_delay: Duration::from_secs(30),
    };
    let iters = if s.quick { 200_000 } else { 2_000_000 };
    let cases: [(&str, Vec<BackendView>, Option<usize>); 3] = [
        (
            "decide/steady (3 backends, primary active)",
            vec![up(None), up(None), up(None)],
            Some(0),
        ),
        (
            "decide/failover (primary down)",
            vec![down, up(None), up(None)],
            Some(0),
        ),
        (
            "decide/failback pending (8 backends)",
            vec![
                up(Some(Duration::from_secs(5))),
                down,
                down,
                down,
                down,
                down,
                down,
                up(None),
            ],
            Some(7),
        ),
    ];
    for (name, views, current) in cases {
        if !s.wants(name) {
            continue;
        }
        let mut samples = per_call_ns(s, iters, || {
            black_box(policy::decide(
                black_box(&views),
                black_box(current),
                black_box(policy),
                black_box(now),
            ));
        });
        report(name, "ns/call", &mut samples);
    }
}

fn bench_config(s: &Settings) {
    let name = "config/parse config.example.toml";
    if !s.wants(name) {
        return;
    }
    let path = Path::new("config.example.toml");
    config::parse(EXAMPLE_CONFIG, path).expect("config.example.toml must parse");
    let iters = if s.quick { 300 } else { 3_000 };
    let mut samples: Vec<f64> = per_call_ns(s, iters, || {
        black_box(config::parse(black_box(EXAMPLE_CONFIG), path).ok());
    })
    .into_iter()
    .map(|ns| ns / 1000.0)
    .collect();
    report(name, "us/parse", &mut samples);
}

fn main() {
    let s = Settings::from_env();
    println!(
        "failoverd micro-benchmarks ({} mode, {} runs each; median, min, max)",
        if s.quick { "quick" } else { "full" },
        s.runs()
    );
    // One thread: client, forward and backend share a core, so the figure
    // is the forwarding cost per byte rather than a race between threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    bench_forward(&rt, &s);
    bench_decide(&s);
    bench_config(&s);
}

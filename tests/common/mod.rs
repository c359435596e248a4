//! Shared test parts: backends on real loopback sockets and a proxy
//! started in-process from a TOML string.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use failoverd::config;
use failoverd::proxy::Proxy;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Log to the test's output when RUST_LOG is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Every test bounds its own time with this.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// How a test backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echo every byte back; pass EOF on.
    Echo,
    /// Send the backend's name and a newline, then echo.
    Greet,
    /// Accept and never read or write (a hung server).
    Hang,
    /// Answer each line: `PING` gets `PONG\r\n`, any other line gets the
    /// backend's name and a newline (see [`who_answers_when_asked`]).
    PingPong,
}

/// A backend on 127.0.0.1 that can be stopped (connections refused) and
/// started again on the same port.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    mode: Mode,
    task: Option<JoinHandle<()>>,
    /// Cancelled (and replaced) to close every accepted connection.
    conns: CancellationToken,
    /// Connections accepted, health checks included.
    pub accepted: Arc<AtomicUsize>,
    /// Connections that sent at least one byte (client traffic, not checks).
    pub served: Arc<AtomicUsize>,
}

impl TestBackend {
    pub async fn start(name: &str, mode: Mode) -> TestBackend {
        let listener = listen("127.0.0.1:0".parse().expect("addr")).expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let mut backend = TestBackend {
            name: name.to_string(),
            addr,
            mode,
            task: None,
            conns: CancellationToken::new(),
            accepted: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(AtomicUsize::new(0)),
        };
        backend.serve(listener);
        backend
    }

    fn serve(&mut self, listener: TcpListener) {
        let name = self.name.clone();
        let mode = self.mode;
        let accepted = Arc::clone(&self.accepted);
        let served = Arc::clone(&self.served);
        let conns = self.conns.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let name = name.clone();
                let served = Arc::clone(&served);
                let conns = conns.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_conn(stream, name, mode, served) => {}
                        _ = conns.cancelled() => {}
                    }
                });
            }
        }));
    }

    /// Stop listening and close every connection: new connects are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.conns.cancel();
        self.conns = CancellationToken::new();
    }

    /// Stop listening and return once the listening socket is closed (new
    /// connects are refused from then on); accepted connections go on.
    pub async fn stop_listening(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut last = None;
        for _ in 0..100 {
            match listen(self.addr) {
                Ok(listener) => {
                    self.serve(listener);
                    return;
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_conn(mut stream: TcpStream, name: String, mode: Mode, served: Arc<AtomicUsize>) {
    match mode {
        Mode::Hang => {
            let _ = std::future::pending::<()>().await;
        }
        Mode::Greet => {
            if stream
                .write_all(format!("{name}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            echo(stream, served).await;
        }
        Mode::Echo => echo(stream, served).await,
        Mode::PingPong => ping_pong(stream, name, served).await,
    }
}

async fn ping_pong(stream: TcpStream, name: String, served: Arc<AtomicUsize>) {
    use tokio::io::AsyncBufReadExt;
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let mut counted = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = if line.trim_end() == "PING" {
            "PONG\r\n".to_string()
        } else {
            if !counted {
                served.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            format!("{name}\n")
        };
        if w.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn echo(stream: TcpStream, served: Arc<AtomicUsize>) {
    let mut byte = [0u8; 1];
    if stream.peek(&mut byte).await.unwrap_or(0) > 0 {
        served.fetch_add(1, Ordering::Relaxed);
    }
    let (mut r, mut w) = stream.into_split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A listener with a deep accept queue, as the proxy's own: a burst of
/// hundreds of connects must not overflow a test backend's queue, or the
/// kernel resets connections the proxy already forwarded.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// A port on 127.0.0.1 where nothing listens (connects are refused).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A proxy started in-process from TOML text; `listen` may use port 0.
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
}

impl TestProxy {
    pub async fn start(toml: &str) -> TestProxy {
        let config = config::parse(toml, Path::new("test.toml")).expect("valid test config");
        let name = config.services[0].name.clone();
        let proxy = Proxy::start(config).await.expect("proxy starts");
        let addr = proxy.local_addr(&name).await.expect("service bound");
        TestProxy { proxy, addr }
    }

    pub async fn active(&self) -> Option<String> {
        self.proxy.status().await.services[0].active.clone()
    }

    /// Wait until the first service's active backend is `want`; returns how long it took.
    pub async fn wait_active(&self, want: Option<&str>, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        loop {
            if self.active().await.as_deref() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "active backend is {:?}, wanted {want:?} within {limit:?}",
                self.active().await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let proxy = Arc::clone(&self.proxy);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                proxy.shutdown(Duration::ZERO).await;
            });
        }
    }
}

/// `[[service.backend]]` tables for these backends.
pub fn backends_toml(backends: &[(&str, SocketAddr)]) -> String {
    backends
        .iter()
        .map(|(name, addr)| {
            format!("[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n")
        })
        .collect()
}

/// A one-service config listening on an ephemeral port.
pub fn service_toml(settings: &str, backends: &[(&str, SocketAddr)]) -> String {
    format!(
        "[[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n{settings}\n{}",
        backends_toml(backends)
    )
}

/// Connect to the proxy and read the greeting line: which backend answered.
pub async fn who_answers(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    read_line(&mut stream).await
}

/// For [`Mode::PingPong`] backends: connect to the proxy, send a line and
/// read the answer line, which is the name of the backend that answered.
pub async fn who_answers_when_asked(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"WHO\n").await?;
    read_line(&mut stream).await
}

/// Read one line (without its newline); EOF before it is an error.
async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the end of the line",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Send `data` through an echo path and return the SHA-256 of what came back,
/// writing and reading concurrently (both directions at full size).
pub async fn echo_roundtrip(addr: SocketAddr, data: Arc<Vec<u8>>) -> [u8; 32] {
    let stream = TcpStream::connect(addr).await.expect("connect proxy");
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn({
        let data = Arc::clone(&data);
        async move {
            w.write_all(&data).await.expect("write");
            w.shutdown().await.expect("shutdown");
        }
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n;
        hasher.update(&buf[..n]);
    }
    writer.await.expect("writer");
    assert_eq!(total, data.len(), "byte count through the proxy");
    hasher.finalize().into()
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "failoverd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! Test backends on real loopback sockets: echo, greet, hang and
//! ping-pong servers that can be stopped (refused), black-holed (connects
//! time out) and restarted on the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::net::listen;

/// How long [`TestBackend::restart`] retries binding its old port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// backend's name and a newline (see `who_answers_when_asked`).
    PingPong,
    /// Send `OK <name>` while healthy, `DOWN <name>` after
    /// [`TestBackend::set_healthy`]`(false)`, and a newline, then echo: with
    /// `check_expect = "OK"` its health checks fail while it still accepts.
    Status,
}

/// A backend on 127.0.0.1 that can be stopped (connections refused),
/// black-holed (connects time out) and started again on the same port.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    mode: Mode,
    /// The listening socket while there is one (shared with the accept task).
    listener: Option<Arc<TcpListener>>,
    task: Option<JoinHandle<()>>,
    /// Cancelled (and replaced) to close every accepted connection.
    conns: CancellationToken,
    /// Connections that fill the accept queue of a black hole, kept open.
    fillers: Vec<TcpStream>,
    /// Connections accepted, health checks included.
    pub accepted: Arc<AtomicUsize>,
    /// Connections that sent at least one byte (client traffic, not checks).
    pub served: Arc<AtomicUsize>,
    /// What a [`Mode::Status`] backend says it is.
    healthy: Arc<AtomicBool>,
}

impl TestBackend {
    /// A backend on a free port of 127.0.0.1.
    pub async fn start(name: &str, mode: Mode) -> TestBackend {
        TestBackend::start_on(name, mode, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// A backend on `addr` (`[::1]:0` for IPv6).
    pub async fn start_on(name: &str, mode: Mode, addr: SocketAddr) -> TestBackend {
        let listener =
            listen(addr).unwrap_or_else(|e| panic!("bind backend {name} on {addr}: {e}"));
        TestBackend::serving(name, mode, listener)
    }

    /// A backend on a socket the test made (in another network namespace,
    /// say); [`restart`](Self::restart) binds in the caller's namespace.
    pub fn from_listener(name: &str, mode: Mode, listener: std::net::TcpListener) -> TestBackend {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        TestBackend::serving(name, mode, listener)
    }

    fn serving(name: &str, mode: Mode, listener: TcpListener) -> TestBackend {
        let addr = listener.local_addr().expect("backend addr");
        let mut backend = TestBackend {
            name: name.to_string(),
            addr,
            mode,
            listener: None,
            task: None,
            conns: CancellationToken::new(),
            fillers: Vec::new(),
            accepted: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(AtomicUsize::new(0)),
            healthy: Arc::new(AtomicBool::new(true)),
        };
        backend.serve(listener);
        backend
    }

    /// What a [`Mode::Status`] backend greets with from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn serve(&mut self, listener: TcpListener) {
        let listener = Arc::new(listener);
        self.listener = Some(Arc::clone(&listener));
        let name = self.name.clone();
        let mode = self.mode;
        let accepted = Arc::clone(&self.accepted);
        let served = Arc::clone(&self.served);
        let healthy = Arc::clone(&self.healthy);
        let conns = self.conns.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let name = match mode {
                    // The state when it connected, as a server would say it.
                    Mode::Status if healthy.load(Ordering::SeqCst) => format!("OK {name}"),
                    Mode::Status => format!("DOWN {name}"),
                    _ => name.clone(),
                };
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
        self.listener = None;
        self.fillers.clear();
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
        self.listener = None;
    }

    /// Turn into a black hole: stop accepting (the socket stays open),
    /// shrink the accept queue to one and fill it, so the kernel drops new
    /// SYNs and connects time out. Returns once a connect timed out.
    pub async fn black_hole(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let listener = self.listener.clone().expect("a listening backend");
        // Listening again changes the backlog: 0 leaves room for a single
        // queued connection.
        socket2::SockRef::from(&*listener)
            .listen(0)
            .expect("shrink backlog");
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(self.addr))
                .await
            {
                Ok(Ok(stream)) => self.fillers.push(stream),
                Ok(Err(err)) => panic!("black hole refused a connect: {err}"),
                Err(_) => {
                    // The listener is alive but connects hang.
                    assert!(listener.local_addr().is_ok());
                    return;
                }
            }
        }
        panic!("the accept queue of {} never filled", self.addr);
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let listener = super::eventually(REBIND_TIMEOUT, &format!("rebind {addr}"), || async {
            listen(addr)
        })
        .await;
        self.serve(listener);
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
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Greet | Mode::Status => {
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
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
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

/// Accept until a connection that sends data: health checks connect and
/// close without a byte, and are skipped.
pub async fn accept_with_data(listener: &TcpListener) -> TcpStream {
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut byte = [0u8; 1];
        if stream.peek(&mut byte).await.unwrap_or(0) > 0 {
            return stream;
        }
    }
}

//! Loopback sockets as a client sees them: free and closed ports,
//! listeners, line readers, "who answers" through a proxy, echo exchanges
//! and hashed payloads. Only 127.0.0.1 / ::1, never a fixed port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long [`answered_by`] and [`echo_once`] wait for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// closed), for a server the test starts next to listen on.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// A port on 127.0.0.1 where nothing listens: connects are refused.
pub async fn closed_port() -> SocketAddr {
    free_port()
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

/// Read one line (without its newline), a byte at a time so nothing after
/// it is consumed; EOF before the newline is an error.
pub async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
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

/// Connect to the proxy and read the greeting line of a `Mode::Greet`
/// backend: which backend answered.
pub async fn who_answers(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    read_line(&mut stream).await
}

/// For `Mode::PingPong` backends: connect to the proxy, send a line and
/// read the answer line, which is the name of the backend that answered.
pub async fn who_answers_when_asked(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"WHO\n").await?;
    read_line(&mut stream).await
}

/// Connect and read a greeting within `limit`: its last word, the backend
/// that answered (a `Mode::Status` backend says "OK primary" or "DOWN
/// primary"), or what went wrong, as text (refused, reset, closed, late).
pub async fn greeted_by(addr: SocketAddr, limit: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let line = tokio::time::timeout(limit, read_line(&mut stream))
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
        .map_err(|e| format!("read: {e}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().to_string())
}

/// [`who_answers`] within [`ANSWER_TIMEOUT`]; panics if nobody does.
pub async fn answered_by(addr: SocketAddr) -> String {
    tokio::time::timeout(ANSWER_TIMEOUT, who_answers(addr))
        .await
        .unwrap_or_else(|_| panic!("no greeting through {addr} within {ANSWER_TIMEOUT:?}"))
        .expect("connection through the proxy")
}

/// Connect and read the greeting of a `Mode::Greet` backend; keep the
/// connection for more traffic.
pub async fn connect_greeted(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect proxy");
    let greeting = read_line(&mut stream).await.expect("read greeting");
    (stream, greeting)
}

/// Send `chunk` and read its echo back within [`ANSWER_TIMEOUT`]; an
/// error says what went wrong.
pub async fn echo_once(stream: &mut TcpStream, chunk: &[u8]) -> Result<(), String> {
    let exchange = async {
        stream.write_all(chunk).await?;
        let mut back = vec![0u8; chunk.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(back)) if back == chunk => Ok(()),
        Ok(Ok(_)) => Err("echo differs from what was sent".into()),
        Ok(Err(err)) => Err(format!("echo failed: {err}")),
        Err(_) => Err("echo timed out".into()),
    }
}

/// `len` bytes from a generator seeded with `seed`: the same every run.
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

/// Read to EOF; the SHA-256 of what was read and its length.
pub async fn read_hashed(mut r: impl AsyncRead + Unpin) -> ([u8; 32], usize) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (hasher.finalize().into(), total);
        }
        total += n;
        hasher.update(&buf[..n]);
    }
}

/// Send `data` through an echo path and return the SHA-256 of what came back,
/// writing and reading concurrently (both directions at full size).
pub async fn echo_roundtrip(addr: SocketAddr, data: Arc<Vec<u8>>) -> [u8; 32] {
    let stream = TcpStream::connect(addr).await.expect("connect proxy");
    let (r, mut w) = stream.into_split();
    let writer = tokio::spawn({
        let data = Arc::clone(&data);
        async move {
            w.write_all(&data).await.expect("write");
            w.shutdown().await.expect("shutdown");
        }
    });
    let (hash, total) = read_hashed(r).await;
    writer.await.expect("writer");
    assert_eq!(total, data.len(), "byte count through the proxy");
    hash
}

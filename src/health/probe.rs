//! One health check of one backend, whatever its kind: resolve, connect
//! (to `check_port` if set) within `check_timeout`, send a PROXY-protocol
//! `LOCAL` header with `send_proxy`, then the kind's exchange: for `tcp`
//! the optional `check_send` / `check_expect` (here), for `http`, `redis`
//! and `postgres` their own modules. The whole check is bounded by
//! `check_timeout`. A probe never keeps its socket.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{CheckFailure, http, postgres, redis};
use crate::config::{BackendAddress, CheckKind, MAX_DURATION, ProxyVersion, Settings};
use crate::net;
use crate::proxy_header;

/// The step of a probe that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStage {
    Resolve,
    Connect,
    /// Writing the PROXY-protocol `LOCAL` header.
    ProxyHeader,
    Send,
    Recv,
    /// The exchange of a role-aware check.
    Check(CheckKind),
}

impl fmt::Display for ProbeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeStage::Resolve => f.write_str("resolve"),
            ProbeStage::Connect => f.write_str("connect"),
            ProbeStage::ProxyHeader => f.write_str("send of the PROXY header"),
            ProbeStage::Send => f.write_str("send of check_send"),
            ProbeStage::Recv => f.write_str("wait for check_expect reply"),
            ProbeStage::Check(kind) => write!(f, "{} check", kind.as_str()),
        }
    }
}

/// Why a health check failed. `Display` is lowercase and names the fix; the
/// caller prefixes the backend (`health check of db/primary (10.0.0.11:5432): ...`).
#[derive(Debug)]
pub enum ProbeError {
    /// The hostname did not resolve (or resolved to nothing); carries the detail.
    Resolve(String),
    Connect(std::io::Error),
    /// The whole probe exceeded `check_timeout`; `stage` is where it was stuck.
    Timeout {
        stage: ProbeStage,
        after: Duration,
    },
    Send(std::io::Error),
    Recv(std::io::Error),
    /// The first bytes did not start with `check_expect` (at most
    /// [`MISMATCH_KEEP_BYTES`] kept).
    Mismatch {
        got: Vec<u8>,
    },
    /// The backend closed the connection before sending anything.
    Closed,
    /// A role-aware check answered, and the answer says no ("role is
    /// slave", "in recovery", "HTTP 503"), or its exchange failed.
    Failed(CheckFailure),
    /// This host failed, not the backend (out of fds or memory, no free
    /// local port, a local firewall): no result, see [`net::is_local_error`].
    Local(std::io::Error),
}

impl ProbeError {
    /// Sort an I/O error of a probe step: a local one is no result.
    fn io(step: fn(std::io::Error) -> ProbeError) -> impl Fn(std::io::Error) -> ProbeError {
        move |err| {
            if net::is_local_error(&err) {
                ProbeError::Local(err)
            } else {
                step(err)
            }
        }
    }

    /// True when the probe says nothing about the backend.
    pub fn is_local(&self) -> bool {
        matches!(self, ProbeError::Local(_))
    }
}

/// How many received bytes a [`ProbeError::Mismatch`] keeps for the log.
pub const MISMATCH_KEEP_BYTES: usize = 64;

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Resolve(detail) => {
                write!(f, "cannot resolve {detail}; check the hostname and DNS")
            }
            ProbeError::Connect(err) => {
                write!(f, "connect failed: {err}; is the backend listening?")
            }
            ProbeError::Timeout { stage, after } => {
                write!(f, "{stage} timed out after {after:?} (check_timeout)")
            }
            ProbeError::Send(err) => write!(f, "sending check_send failed: {err}"),
            ProbeError::Recv(err) => write!(f, "reading the check reply failed: {err}"),
            ProbeError::Mismatch { got } => write!(
                f,
                "reply does not start with check_expect: got \"{}\"",
                got.escape_ascii()
            ),
            ProbeError::Closed => f.write_str(
                "backend closed the connection without a reply; check check_send and check_expect",
            ),
            ProbeError::Failed(failure) => write!(f, "{failure}"),
            ProbeError::Local(err) => write!(
                f,
                "no result, this host failed: {err}; check open-file limits, memory, local ports and firewall"
            ),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeError::Connect(err)
            | ProbeError::Send(err)
            | ProbeError::Recv(err)
            | ProbeError::Local(err) => Some(err),
            ProbeError::Failed(failure) => Some(failure),
            _ => None,
        }
    }
}

/// One `tcp` check with `check_send` / `check_expect` (tests).
#[cfg(test)]
pub async fn probe(
    address: &BackendAddress,
    timeout: Duration,
    send: &[u8],
    expect: &[u8],
) -> Result<(), ProbeError> {
    let settings = Settings {
        check_timeout: timeout,
        check_send: send.to_vec(),
        check_expect: expect.to_vec(),
        ..Settings::default()
    };
    check(address, &settings).await
}

/// One health check of `address` as `settings` say (kind, port, PROXY
/// header, timeout), handing a good resolution to `resolved` before the
/// connect (the check loop caches it for the data path). A hostname that
/// resolves to several addresses is tried address by address, as a client
/// would.
pub async fn probe_and_resolve(
    address: &BackendAddress,
    lookup: &mut net::Lookup,
    settings: &Settings,
    resolved: impl FnOnce(&[SocketAddr]),
) -> Result<(), ProbeError> {
    let timeout = settings.check_timeout;
    // Validated timeouts are at most a year and always fit; the cap keeps
    // any other caller from panicking on the sum.
    let now = Instant::now();
    let deadline = now.checked_add(timeout.min(MAX_DURATION)).unwrap_or(now);
    let within = |stage| {
        move |_elapsed| ProbeError::Timeout {
            stage,
            after: timeout,
        }
    };

    let addrs: Vec<SocketAddr> = timeout_at(deadline, lookup.resolve(address))
        .await
        .map_err(within(ProbeStage::Resolve))?
        .map_err(|err| match net::is_resource_error(&err) {
            true => ProbeError::Local(err),
            false => ProbeError::Resolve(format!("{address}: {err}")),
        })?;
    resolved(&addrs);
    let port = settings.check_port;
    let targets = addrs
        .into_iter()
        .map(|a| port.map_or(a, |p| SocketAddr::new(a.ip(), p)));
    let mut stream = timeout_at(deadline, net::connect_first(targets))
        .await
        .map_err(within(ProbeStage::Connect))?
        .map_err(ProbeError::io(ProbeError::Connect))?;
    let header = match settings.send_proxy {
        ProxyVersion::Off => None,
        ProxyVersion::V1 => Some(proxy_header::encode_local(proxy_header::Version::V1)),
        ProxyVersion::V2 => Some(proxy_header::encode_local(proxy_header::Version::V2)),
    };
    if let Some(header) = header {
        timeout_at(deadline, stream.write_all(&header))
            .await
            .map_err(within(ProbeStage::ProxyHeader))?
            .map_err(ProbeError::io(ProbeError::Send))?;
    }
    let kind = settings.check;
    let password = settings.check_password.as_ref().map(|p| p.expose());
    let failed = |r: Result<(), CheckFailure>| r.map_err(ProbeError::Failed);
    if kind == CheckKind::Tcp {
        let (send, expect) = (&settings.check_send, &settings.check_expect);
        if !send.is_empty() {
            timeout_at(deadline, stream.write_all(send))
                .await
                .map_err(within(ProbeStage::Send))?
                .map_err(ProbeError::io(ProbeError::Send))?;
        }
        if !expect.is_empty() {
            timeout_at(deadline, read_expected(&mut stream, expect))
                .await
                .map_err(within(ProbeStage::Recv))??;
        }
        return Ok(());
    }
    let exchange = async {
        match kind {
            CheckKind::Tcp => Ok(()),
            CheckKind::Http => {
                let host = match address {
                    BackendAddress::Ip(addr) => addr.ip().to_string(),
                    BackendAddress::Host { host, .. } => host.clone(),
                };
                failed(http::check(stream, &host, &settings.check_path).await)
            }
            CheckKind::Redis => {
                failed(redis::check(stream, settings.check_user_for(), password).await)
            }
            CheckKind::Postgres => failed(
                postgres::check(
                    stream,
                    settings.check_user_for().unwrap_or("postgres"),
                    settings.check_database_or_default(),
                    password,
                )
                .await,
            ),
        }
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(within(ProbeStage::Check(kind)))?
}

/// One check of `address` as `settings` say, outside any check loop (the
/// benchmarks and the probe tests call it).
pub async fn check(address: &BackendAddress, settings: &Settings) -> Result<(), ProbeError> {
    let mut lookup = net::Lookup::default();
    probe_and_resolve(address, &mut lookup, settings, |_| {}).await
}

/// Read until `expect.len()` bytes arrived or EOF; fail as soon as the bytes
/// diverge from `expect`.
async fn read_expected(stream: &mut TcpStream, expect: &[u8]) -> Result<(), ProbeError> {
    let mut got = Vec::with_capacity(expect.len());
    let mut buf = [0u8; 512];
    while got.len() < expect.len() {
        let want = (expect.len() - got.len()).min(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(ProbeError::io(ProbeError::Recv))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !expect.starts_with(&got) {
            break;
        }
    }
    if got.starts_with(expect) {
        Ok(())
    } else if got.is_empty() {
        Err(ProbeError::Closed)
    } else {
        got.truncate(MISMATCH_KEEP_BYTES);
        Err(ProbeError::Mismatch { got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Bound on every socket test, so a bug fails instead of hanging.
    const TEST_LIMIT: Duration = Duration::from_secs(5);

    fn ip(addr: SocketAddr) -> BackendAddress {
        BackendAddress::Ip(addr)
    }

    /// A server that runs `serve` on each accepted connection.
    async fn server<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        addr
    }

    /// Answers "PONG\r\n" to "PING\r\n", anything else with "ERR\r\n".
    async fn ping_server() -> SocketAddr {
        server(|mut stream| async move {
            let mut buf = [0u8; 6];
            if stream.read_exact(&mut buf).await.is_ok() {
                let reply: &[u8] = if &buf == b"PING\r\n" {
                    b"PONG\r\n"
                } else {
                    b"ERR\r\n"
                };
                let _ = stream.write_all(reply).await;
            }
        })
        .await
    }

    async fn free_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_LIMIT, fut)
            .await
            .expect("test took too long")
    }

    const CHECK_TIMEOUT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn probe_succeeds_against_a_listener() {
        let addr = server(|_stream| async {}).await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b""))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_when_connection_refused() {
        let addr = free_port().await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b""))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("connect failed:"), "{err}");
    }

    #[tokio::test]
    async fn probe_times_out_against_a_hung_backend() {
        // Accepts and holds the connection, never answers.
        let addr = server(|stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let started = std::time::Instant::now();
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"PONG"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Timeout { stage: ProbeStage::Recv, after } if after == CHECK_TIMEOUT),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err.to_string(),
            "wait for check_expect reply timed out after 300ms (check_timeout)"
        );
    }

    #[tokio::test]
    async fn probe_accepts_expected_reply() {
        let addr = ping_server().await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"PONG"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_rejects_unexpected_reply() {
        let addr = ping_server().await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"+OK"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Mismatch { got } if !got.is_empty() && b"PONG".starts_with(got)),
            "{err:?}"
        );
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"HELLO\n", b"PONG"))
            .await
            .unwrap_err();
        // One write on loopback normally arrives whole, but a split read is legal.
        assert!(
            matches!(&err, ProbeError::Mismatch { got } if !got.is_empty() && b"ERR\r".starts_with(got)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("reply does not start with check_expect: got \"E"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn probe_reads_a_greeting_without_send() {
        let addr = server(|mut stream| async move {
            let _ = stream.write_all(b"SSH-2.0-test\r\n").await;
        })
        .await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b"SSH-2.0"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_when_backend_closes_without_reply() {
        let addr = server(|stream| async move { drop(stream) }).await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b"PONG"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Closed | ProbeError::Recv(_)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn probe_resolves_localhost() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // localhost may resolve to ::1 first; a v6 listener is not guaranteed,
        // so probe() must try every address.
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let address = BackendAddress::Host {
            host: "localhost".into(),
            port,
        };
        bounded(probe(&address, Duration::from_secs(2), b"", b""))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_on_unresolvable_host() {
        let address = BackendAddress::Host {
            host: "no-such-host.invalid".into(),
            port: 80,
        };
        // Resolution may take a while on some resolvers; give it room.
        let err = bounded(probe(&address, Duration::from_secs(4), b"", b""))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Resolve(d) if d.starts_with("no-such-host.invalid:80")),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("cannot resolve no-such-host.invalid:80"),
            "{err}"
        );
    }

    #[test]
    fn probe_errors_read_as_actionable_messages() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (
                ProbeError::Resolve("db.internal:5432: no addresses".into()),
                "cannot resolve db.internal:5432: no addresses; check the hostname and DNS",
            ),
            (
                ProbeError::Timeout {
                    stage: ProbeStage::Connect,
                    after: Duration::from_millis(500),
                },
                "connect timed out after 500ms (check_timeout)",
            ),
            (
                ProbeError::Mismatch {
                    got: b"ERR\r".to_vec(),
                },
                "reply does not start with check_expect: got \"ERR\\r\"",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let text = ProbeError::Connect(refused).to_string();
        assert!(
            text.starts_with("connect failed: ") && text.ends_with("is the backend listening?")
        );
    }
}

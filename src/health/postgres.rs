//! `check = "postgres"`: a real PostgreSQL session (trust, md5 or
//! SCRAM-SHA-256 authentication, no TLS) on a connected stream, running
//! `SELECT pg_is_in_recovery()`; passes only when it is false, so a
//! standby is down until it is promoted.
//!
//! tokio-postgres does the protocol. Its connection future is driven
//! inside this call (never spawned), so nothing outlives the check: when
//! the query is answered the client is dropped, the connection sends
//! `Terminate` and finishes. The probe runs one simple query (one round
//! trip) and nothing else. The server's messages are checked as they
//! arrive: a foreign server fails at its first byte, and no message may
//! be longer than [`MAX_MESSAGE_BYTES`].

use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls, SimpleQueryMessage};

use super::{CheckFailure, printable, starts_with_detail};

/// The query whose answer tells a primary (`f`) from a standby (`t`).
pub const QUERY: &str = "SELECT pg_is_in_recovery()";

/// Open a session as `user` on `database` (with `password` when the server
/// asks for one), run [`QUERY`], close the session.
///
/// Fails with [`CheckFailure::InRecovery`] on a standby,
/// [`CheckFailure::Auth`] with the server's message when it refuses the
/// login (`password authentication failed for user "x"`, no `pg_hba.conf`
/// entry) or wants a password and none is configured, and
/// [`CheckFailure::Server`] for other server errors (starting up, unknown
/// database).
pub async fn check(
    stream: TcpStream,
    user: &str,
    database: &str,
    password: Option<&str>,
) -> Result<(), CheckFailure> {
    let mut config = Config::new();
    config
        .user(user)
        .dbname(database)
        .application_name("failoverd")
        .ssl_mode(SslMode::Disable);
    if let Some(password) = password {
        config.password(password);
    }
    let verdict = Verdict::default();
    let stream = Guarded::new(stream, Arc::clone(&verdict));
    let result = session(&config, stream).await;
    result.map_err(|failure| explain(&verdict, failure))
}

/// Log in, query, log out.
async fn session(config: &Config, stream: Guarded) -> Result<(), CheckFailure> {
    let (client, connection) = config.connect_raw(stream, NoTls).await.map_err(classify)?;
    let mut connection = pin!(connection);

    let mut connection_done = false;
    let answer = tokio::select! {
        answer = client.simple_query(QUERY) => answer.map_err(classify),
        ended = &mut connection => {
            connection_done = true;
            Err(ended.err().map_or(CheckFailure::Closed, classify))
        }
    };
    // Dropping the only client makes the connection send Terminate and end;
    // drive it there so the server sees a polite goodbye, not a reset.
    drop(client);
    if !connection_done {
        let _ = connection.await;
    }
    in_recovery(&answer?)
}

/// `f` passes, `t` is [`CheckFailure::InRecovery`].
fn in_recovery(messages: &[SimpleQueryMessage]) -> Result<(), CheckFailure> {
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0)),
        _ => None,
    });
    match value {
        Some(Some("f")) => Ok(()),
        Some(Some("t")) => Err(CheckFailure::InRecovery),
        Some(Some(other)) => Err(CheckFailure::Malformed(format!(
            "unexpected answer to {QUERY}: \"{}\"",
            printable(other.as_bytes())
        ))),
        Some(None) => Err(CheckFailure::Malformed(format!(
            "unexpected answer to {QUERY}: NULL"
        ))),
        None => Err(CheckFailure::Malformed(format!(
            "no row in answer to {QUERY}"
        ))),
    }
}

/// The longest server message accepted. tokio-postgres would otherwise
/// reserve whatever a message header claims (up to 2 GiB) before reading it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What [`Guarded`] found wrong with the server's bytes, for [`explain`].
type Verdict = Arc<Mutex<Option<CheckFailure>>>;

/// The check's stream, with the server's bytes checked by [`Framing`] as
/// they arrive. A breach fails the read and leaves the reason in the
/// verdict.
struct Guarded {
    inner: TcpStream,
    verdict: Verdict,
    framing: Framing,
}

impl Guarded {
    fn new(inner: TcpStream, verdict: Verdict) -> Self {
        Guarded {
            inner,
            verdict,
            framing: Framing::default(),
        }
    }
}

/// The server's message framing, followed byte by byte: the first message
/// must be one a server sends after a startup message (authentication
/// request `R`, error `E`, protocol negotiation `v`, notice `N`) and no
/// message may exceed [`MAX_MESSAGE_BYTES`].
#[derive(Default)]
struct Framing {
    /// The first bytes received, for the detail of a failure.
    first: Vec<u8>,
    /// The header (tag, 4-byte length) of the next message, as far as read.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    body_left: usize,
}

impl Framing {
    /// Follow the message framing over `data`; the failure on a breach.
    fn scan(&mut self, mut data: &[u8]) -> Option<CheckFailure> {
        const FIRST_KEPT_BYTES: usize = 32;
        let keep = data
            .len()
            .min(FIRST_KEPT_BYTES.saturating_sub(self.first.len()));
        self.first.extend_from_slice(&data[..keep]);
        let first_message = self.first.len() == keep;
        if first_message && !matches!(data.first(), Some(b'R' | b'E' | b'v' | b'N') | None) {
            return Some(CheckFailure::NotProtocol {
                protocol: "a PostgreSQL server",
                detail: starts_with_detail(&self.first),
            });
        }
        while !data.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(data.len());
                self.body_left -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if !(4..=MAX_MESSAGE_BYTES).contains(&len) {
                    return Some(CheckFailure::TooLarge {
                        what: "PostgreSQL message",
                        limit_bytes: MAX_MESSAGE_BYTES,
                    });
                }
                self.body_left = len - 4;
            }
        }
        None
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(failure) = this.framing.scan(&buf.filled()[before..]) {
            let text = failure.to_string();
            *this.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, text)));
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The guard's verdict, when it has one, explains the failure better.
fn explain(verdict: &Verdict, failure: CheckFailure) -> CheckFailure {
    let found = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
    found.unwrap_or(failure)
}

/// Map a tokio-postgres error to the operator's reason.
fn classify(err: tokio_postgres::Error) -> CheckFailure {
    if let Some(db) = err.as_db_error() {
        let msg = printable(db.message().as_bytes());
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            CheckFailure::Auth(msg)
        } else {
            CheckFailure::Server(msg)
        };
    }
    if err.is_closed() {
        return CheckFailure::Closed;
    }
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    if let Some(io) =
        std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        return CheckFailure::from(std::io::Error::new(io.kind(), io.to_string()));
    }
    // tokio-postgres keeps its error kinds private; its Display names them.
    let text = err.to_string();
    let cause = cause.unwrap_or_default();
    if text.starts_with("invalid configuration") && cause == "password missing" {
        CheckFailure::Auth(
            "the server wants a password and none is configured (check_password_file)".into(),
        )
    } else if text.starts_with("authentication error") {
        CheckFailure::Auth(printable(cause.as_bytes()))
    } else if text.starts_with("unexpected message") || text.starts_with("error parsing") {
        CheckFailure::NotProtocol {
            protocol: "a PostgreSQL server",
            detail: printable(text.as_bytes()),
        }
    } else {
        CheckFailure::Malformed(printable(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Option<String> {
        let mut framing = Framing::default();
        chunks
            .iter()
            .find_map(|chunk| framing.scan(chunk))
            .map(|failure| failure.to_string())
    }

    #[test]
    fn framing_follows_messages_split_anywhere() {
        // AuthenticationOk, then ReadyForQuery, split mid-header and mid-body.
        let stream = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(scan_all(&[a, b]), None, "cut at {cut}");
        }
    }

    #[test]
    fn framing_refuses_a_foreign_server_and_oversize_messages() {
        assert_eq!(
            scan_all(&[b"HTTP/1.1 400 Bad Request\r\n"]).as_deref(),
            Some("not a PostgreSQL server: starts with \"HTTP/1.1 400 Bad Request\\r\\n\"")
        );
        let huge = [b'R', 0x10, 0, 0, 0];
        assert_eq!(
            scan_all(&[&huge[..2], &huge[2..]]).as_deref(),
            Some("PostgreSQL message larger than 65536 bytes")
        );
        assert!(scan_all(&[b"R\0\0\0\x08\0\0\0\0", b"S\0\0\0\x02"]).is_some());
    }
}

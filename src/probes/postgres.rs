//! `check = "postgres"`: a real PostgreSQL session (trust, md5 or
//! SCRAM-SHA-256 authentication, no TLS) on a connected stream, running
//! `SELECT pg_is_in_recovery()`; passes only when it is false, so a
//! standby is down until it is promoted.
//!
//! tokio-postgres does the protocol. Its connection future is driven
//! inside this call (never spawned), so nothing outlives the check: when
//! the query is answered the client is dropped, the connection sends
//! `Terminate` and finishes. The probe runs one simple query (one round
//! trip) and nothing else.

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
    let first = FirstBytes::default();
    let stream = Recording {
        inner: stream,
        first: first.clone(),
        recorded: 0,
    };
    let result = session(&config, stream).await;
    result.map_err(|failure| first.explain(failure))
}

/// Log in, query, log out.
async fn session(config: &Config, stream: Recording) -> Result<(), CheckFailure> {
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

/// How many of the server's first bytes are kept to tell a foreign server.
const FIRST_BYTES_KEPT: usize = 32;

/// The first bytes the server sent, shared with the stream that reads them.
#[derive(Clone, Default)]
struct FirstBytes(Arc<Mutex<Vec<u8>>>);

impl FirstBytes {
    fn record(&self, data: &[u8]) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = FIRST_BYTES_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// A server error stands; any other failure on a stream that did not
    /// start like a PostgreSQL reply to a startup message (authentication
    /// request `R`, error `E`, protocol negotiation `v`, notice `N`) means
    /// this is no PostgreSQL server.
    fn explain(&self, failure: CheckFailure) -> CheckFailure {
        if matches!(failure, CheckFailure::Auth(_) | CheckFailure::Server(_)) {
            return failure;
        }
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match kept.first() {
            Some(b'R' | b'E' | b'v' | b'N') | None => failure,
            Some(_) => CheckFailure::NotProtocol {
                protocol: "a PostgreSQL server",
                detail: starts_with_detail(&kept),
            },
        }
    }
}

/// The check's stream, keeping the first bytes read in [`FirstBytes`].
struct Recording {
    inner: TcpStream,
    first: FirstBytes,
    /// Bytes read so far (recording stops at [`FIRST_BYTES_KEPT`]).
    recorded: usize,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if this.recorded < FIRST_BYTES_KEPT && !new.is_empty() {
            this.first.record(new);
            this.recorded += new.len();
        }
        polled
    }
}

impl AsyncWrite for Recording {
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

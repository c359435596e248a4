//! Why a role-aware check failed, shared by the probes that speak a
//! backend's protocol over a connection the caller has already opened
//! (`http.rs`, `redis.rs`, `postgres.rs`).
//!
//! The common step is the caller's: resolving the backend, `check_port`,
//! the TCP connect, a PROXY-protocol `LOCAL` header, and bounding the whole
//! check by `check_timeout` (a probe waits as long as the server makes it;
//! its reads are bounded in size, not in time). A probe does not log, count
//! or retry; it returns `Ok(())` or a [`CheckFailure`] whose `Display` is
//! the reason an operator reads in `ctl status` and the logs.

use std::fmt;
use std::io;

/// How many characters of server-sent text a [`CheckFailure`] keeps.
pub const DETAIL_MAX_CHARS: usize = 200;

/// Why a role-aware check failed. `Display` is short and lowercase except
/// for protocol words and the server's own message, e.g. `HTTP 503`,
/// `role is slave`, `in recovery`,
/// `authentication failed: password authentication failed for user "x"`;
/// the caller prefixes the backend.
#[derive(Debug)]
pub enum CheckFailure {
    /// Writing to or reading from the backend failed (reset, broken pipe).
    Io(io::Error),
    /// The backend closed the connection before its reply was complete.
    Closed,
    /// What came back is not the protocol this check speaks: a wrong
    /// `check_port` or `check` kind. `protocol` reads "an HTTP response",
    /// "a Redis reply", "a PostgreSQL server"; `detail` shows what came.
    NotProtocol {
        protocol: &'static str,
        detail: String,
    },
    /// The reply is of the right protocol but cannot be understood.
    Malformed(String),
    /// A reply exceeded the size this check reads (`what` names it).
    TooLarge {
        what: &'static str,
        limit_bytes: usize,
    },
    /// `check = "http"`: the status was not 2xx (Patroni: 503 off the leader).
    HttpStatus(u16),
    /// `check = "redis"`: `ROLE` answered something other than `master`.
    Role(String),
    /// `check = "postgres"`: `pg_is_in_recovery()` is true (a standby).
    InRecovery,
    /// The server refused the credentials (or wants some and none are
    /// configured); carries the server's message.
    Auth(String),
    /// The server answered with an error other than authentication
    /// (starting up, unknown database, command not allowed).
    Server(String),
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckFailure::Io(err) => write!(f, "connection error: {err}"),
            CheckFailure::Closed => f.write_str("connection closed before a reply"),
            CheckFailure::NotProtocol { protocol, detail } if detail.is_empty() => {
                write!(f, "not {protocol}")
            }
            CheckFailure::NotProtocol { protocol, detail } => {
                write!(f, "not {protocol}: {detail}")
            }
            CheckFailure::Malformed(detail) => f.write_str(detail),
            CheckFailure::TooLarge { what, limit_bytes } => {
                write!(f, "{what} larger than {limit_bytes} bytes")
            }
            CheckFailure::HttpStatus(code) => write!(f, "HTTP {code}"),
            CheckFailure::Role(role) => write!(f, "role is {role}"),
            CheckFailure::InRecovery => f.write_str("in recovery"),
            CheckFailure::Auth(msg) => write!(f, "authentication failed: {msg}"),
            CheckFailure::Server(msg) => write!(f, "server error: {msg}"),
        }
    }
}

impl std::error::Error for CheckFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckFailure::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for CheckFailure {
    /// An unexpected EOF is the server closing on us; anything else is an
    /// I/O error on the check connection.
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            CheckFailure::Closed
        } else {
            CheckFailure::Io(err)
        }
    }
}

/// Server-sent bytes made safe for one log line: lossy UTF-8, control
/// characters escaped, at most [`DETAIL_MAX_CHARS`] characters.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(DETAIL_MAX_CHARS));
    for (i, c) in text.chars().enumerate() {
        if i == DETAIL_MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The first bytes a server sent, quoted, for [`CheckFailure::NotProtocol`].
pub(crate) fn starts_with_detail(bytes: &[u8]) -> String {
    const SHOWN_BYTES: usize = 32;
    let shown = &bytes[..bytes.len().min(SHOWN_BYTES)];
    format!("starts with \"{}\"", printable(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_operator_reason() {
        let cases = [
            (CheckFailure::HttpStatus(503), "HTTP 503"),
            (CheckFailure::Role("slave".into()), "role is slave"),
            (CheckFailure::InRecovery, "in recovery"),
            (CheckFailure::Closed, "connection closed before a reply"),
            (
                CheckFailure::Auth("password authentication failed for user \"x\"".into()),
                "authentication failed: password authentication failed for user \"x\"",
            ),
            (
                CheckFailure::NotProtocol {
                    protocol: "an HTTP response",
                    detail: String::new(),
                },
                "not an HTTP response",
            ),
            (
                CheckFailure::TooLarge {
                    what: "HTTP response head",
                    limit_bytes: 8192,
                },
                "HTTP response head larger than 8192 bytes",
            ),
        ];
        for (failure, want) in cases {
            assert_eq!(failure.to_string(), want);
        }
    }

    #[test]
    fn printable_escapes_controls_and_bounds_length() {
        assert_eq!(printable(b"a\r\nb\x1b"), "a\\r\\nb\\u{1b}");
        let long = vec![b'x'; DETAIL_MAX_CHARS + 50];
        let shown = printable(&long);
        assert_eq!(shown.len(), DETAIL_MAX_CHARS + 3);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn unexpected_eof_is_closed() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(matches!(CheckFailure::from(eof), CheckFailure::Closed));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(CheckFailure::from(reset), CheckFailure::Io(_)));
    }
}

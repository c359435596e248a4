//! `check = "redis"`: `AUTH [user] password` when a password is configured,
//! then `ROLE`, spoken in RESP2 by hand on a connected stream; passes only
//! when the role is `master`, so a replica (or a sentinel) is down.
//!
//! Both commands go out in one write (pipelined) and the replies are read
//! in order; a reply line or bulk string longer than [`MAX_LINE_BYTES`] is
//! refused. Only the first element of the `ROLE` reply is read. The probe
//! sends nothing else and does not keep the connection.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CheckFailure, printable, starts_with_detail};

/// The longest reply line (or bulk string) read, CRLF included.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

const PROTOCOL: &str = "a Redis reply";

/// `AUTH` (with `user` when given) if `password` is set, then `ROLE`.
///
/// Fails with [`CheckFailure::Auth`] when the server refuses the password
/// or asks for one (`NOAUTH`) that is not configured, with
/// [`CheckFailure::Role`] (`role is slave`, `role is sentinel`) off the
/// master, [`CheckFailure::Server`] for any other error reply.
pub async fn check(
    mut stream: TcpStream,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<(), CheckFailure> {
    let mut out = Vec::with_capacity(64);
    if let Some(password) = password {
        match user.filter(|u| !u.is_empty()) {
            Some(user) => command(&mut out, &["AUTH", user, password]),
            None => command(&mut out, &["AUTH", password]),
        }
    }
    command(&mut out, &["ROLE"]);
    stream.write_all(&out).await?;

    let mut replies = Replies::new(stream);
    if password.is_some() {
        match replies.next().await? {
            Reply::Simple(_) => {}
            Reply::Error(msg) => return Err(CheckFailure::Auth(msg)),
            other => return Err(unexpected("AUTH", &other)),
        }
    }
    let role = match replies.next().await? {
        Reply::Array(n) if n >= 1 => match replies.next().await? {
            Reply::Bulk(role) | Reply::Simple(role) => role,
            other => return Err(unexpected("ROLE", &other)),
        },
        Reply::Error(msg) if msg.starts_with("NOAUTH") => {
            return Err(CheckFailure::Auth(format!(
                "the server wants a password and none is configured (check_password_file): {msg}"
            )));
        }
        Reply::Error(msg) => return Err(CheckFailure::Server(msg)),
        other => return Err(unexpected("ROLE", &other)),
    };
    if role == "master" {
        Ok(())
    } else {
        Err(CheckFailure::Role(role))
    }
}

/// Append one command as a RESP array of bulk strings.
fn command(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP2 reply header (an array's elements follow as further replies).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// A bulk string; `$-1` (null) is `Null`.
    Bulk(String),
    Null,
    /// An array of this many elements (`*-1` is `Null`).
    Array(usize),
}

fn unexpected(command: &str, reply: &Reply) -> CheckFailure {
    let kind = match reply {
        Reply::Simple(_) => "a status",
        Reply::Error(_) => "an error",
        Reply::Integer(_) => "an integer",
        Reply::Bulk(_) => "a string",
        Reply::Null => "a null",
        Reply::Array(_) => "an array",
    };
    CheckFailure::Malformed(format!("unexpected reply to {command}: {kind}"))
}

/// Replies read off the stream, tolerating any split into reads.
struct Replies {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
}

impl Replies {
    fn new(stream: TcpStream) -> Self {
        Replies {
            stream,
            buf: Vec::with_capacity(256),
            pos: 0,
        }
    }

    async fn next(&mut self) -> Result<Reply, CheckFailure> {
        self.fill(1).await?;
        let kind = self.buf[self.pos];
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err(CheckFailure::NotProtocol {
                protocol: PROTOCOL,
                detail: starts_with_detail(&self.buf[self.pos..]),
            });
        }
        let line = self.line().await?;
        let body = &line[1..];
        let text = || printable(body);
        Ok(match kind {
            b'+' => Reply::Simple(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Integer(number(body)?),
            b'*' => match number(body)? {
                n if n < 0 => Reply::Null,
                n => Reply::Array(usize::try_from(n).unwrap_or(usize::MAX)),
            },
            _ => {
                let len = number(body)?;
                if len < 0 {
                    return Ok(Reply::Null);
                }
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_LINE_BYTES - 2 {
                    return Err(too_large());
                }
                self.fill(len + 2).await?;
                let data = &self.buf[self.pos..self.pos + len + 2];
                if !data.ends_with(b"\r\n") {
                    return Err(CheckFailure::Malformed(
                        "malformed Redis reply: bulk string without CRLF".into(),
                    ));
                }
                let bulk = printable(&data[..len]);
                self.pos += len + 2;
                Reply::Bulk(bulk)
            }
        })
    }

    /// Consume and return one line without its CRLF.
    async fn line(&mut self) -> Result<Vec<u8>, CheckFailure> {
        let mut scanned = self.pos;
        loop {
            if let Some(off) = self.buf[scanned..].windows(2).position(|w| w == b"\r\n") {
                let end = scanned + off;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos >= MAX_LINE_BYTES {
                return Err(too_large());
            }
            // A CR may be the last byte so far: rescan it with what follows.
            scanned = self.buf.len().saturating_sub(1).max(self.pos);
            self.read_more().await?;
        }
    }

    /// Make at least `n` unread bytes available.
    async fn fill(&mut self, n: usize) -> Result<(), CheckFailure> {
        while self.buf.len() - self.pos < n {
            self.read_more().await?;
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), CheckFailure> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(CheckFailure::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn too_large() -> CheckFailure {
    CheckFailure::TooLarge {
        what: "Redis reply line",
        limit_bytes: MAX_LINE_BYTES,
    }
}

fn number(digits: &[u8]) -> Result<i64, CheckFailure> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            CheckFailure::Malformed(format!(
                "malformed Redis reply: \"{}\" is not a number",
                printable(digits)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &["AUTH", "alice", "p w"]);
        command(&mut out, &["ROLE"]);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$3\r\np w\r\n*1\r\n$4\r\nROLE\r\n"
        );
    }
}

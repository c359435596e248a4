//! `check = "http"`: one `GET check_path` over HTTP/1.1 on a connected
//! stream; a 2xx status passes. Patroni's `/primary` (200 on the leader,
//! 503 elsewhere) is the main user.
//!
//! Only the status line and headers are read, at most [`MAX_HEAD_BYTES`];
//! the body is never waited for. No HTTP client library: the request is one
//! formatted string and the reply head a few lines. The probe does not
//! follow redirects (a 3xx fails), send a body, or keep the connection.

use std::net::Ipv6Addr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CheckFailure, printable, starts_with_detail};

/// The most bytes of response head (status line and headers) read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

const PROTOCOL: &str = "an HTTP response";

/// Send `GET path HTTP/1.1` with `Host: host` (IPv6 bracketed; `:port`
/// added from the stream's peer unless it is 80), `Connection: close` and
/// `User-Agent: failoverd`, then read the response head; a 2xx passes.
///
/// `path` should start with `/` (config validation sees to it); bytes that
/// may not appear in a request line (space, controls, non-ASCII) are
/// percent-encoded so the request stays one line.
pub async fn check(mut stream: TcpStream, host: &str, path: &str) -> Result<(), CheckFailure> {
    let port = stream.peer_addr().ok().map(|peer| peer.port());
    let request = request(host, port, path);
    stream.write_all(request.as_bytes()).await?;
    let status = read_status(&mut stream).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(CheckFailure::HttpStatus(status))
    }
}

/// The request bytes (exposed to unit tests through `check`'s behaviour).
fn request(host: &str, port: Option<u16>, path: &str) -> String {
    let mut authority = if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if let Some(port) = port.filter(|&p| p != 80) {
        authority.push_str(&format!(":{port}"));
    }
    format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: failoverd\r\nAccept: */*\r\n\r\n",
        encode_target(path)
    )
}

/// Percent-encode the bytes a request-target may not hold literally.
fn encode_target(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b <= b' ' || b >= 0x7f {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// Read response heads until a final (non-1xx) one; return its status.
async fn read_status(stream: &mut TcpStream) -> Result<u16, CheckFailure> {
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut total = 0usize;
    loop {
        if let Some(end) = head_end(&head) {
            let status = parse_status_line(&head[..end])?;
            // 1xx replies are interim; 101 (a protocol switch) is final.
            if (100..200).contains(&status) && status != 101 {
                head.drain(..end);
                continue;
            }
            return Ok(status);
        }
        if total >= MAX_HEAD_BYTES {
            return Err(CheckFailure::TooLarge {
                what: "HTTP response head",
                limit_bytes: MAX_HEAD_BYTES,
            });
        }
        let want = buf.len().min(MAX_HEAD_BYTES - total);
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(CheckFailure::Closed);
        }
        total += n;
        head.extend_from_slice(&buf[..n]);
        // Fail at once on a server that speaks something else (an SSH or
        // Redis port) instead of waiting for a blank line that never comes.
        let k = head.len().min(5);
        if head[..k] != b"HTTP/"[..k] {
            return Err(CheckFailure::NotProtocol {
                protocol: PROTOCOL,
                detail: starts_with_detail(&head),
            });
        }
    }
}

/// Length of the head including its blank line, if complete. Bare `\n`
/// line ends are accepted, as most clients do.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(head: &[u8]) -> Result<u16, CheckFailure> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let malformed = || {
        CheckFailure::Malformed(format!(
            "malformed HTTP status line \"{}\"",
            printable(line)
        ))
    };
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let valid_version = version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    if !valid_version || code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(malformed());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_one_get_with_host_and_close() {
        assert_eq!(
            request("db1.example.com", Some(8008), "/primary"),
            "GET /primary HTTP/1.1\r\nHost: db1.example.com:8008\r\nConnection: close\r\n\
             User-Agent: failoverd\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn host_brackets_ipv6_and_omits_port_80() {
        assert!(request("::1", Some(8008), "/").contains("\r\nHost: [::1]:8008\r\n"));
        assert!(request("10.0.0.1", Some(80), "/").contains("\r\nHost: 10.0.0.1\r\n"));
        assert!(request("2001:db8::1", None, "/").contains("\r\nHost: [2001:db8::1]\r\n"));
    }

    #[test]
    fn path_cannot_break_the_request_line() {
        assert!(
            request("h", None, "/a b\r\nX: y").starts_with("GET /a%20b%0D%0AX:%20y HTTP/1.1\r\n")
        );
    }

    #[test]
    fn status_lines() {
        let ok = [
            ("HTTP/1.1 200 OK", 200),
            ("HTTP/1.0 503 Service Unavailable", 503),
            ("HTTP/1.1 204", 204),
        ];
        for (line, want) in ok {
            assert_eq!(parse_status_line(line.as_bytes()).unwrap(), want, "{line}");
        }
        for bad in [
            "HTTP/1.1 20 OK",
            "HTTP/1.1 abc",
            "HTTP/11 200 OK",
            "HTTP/1.1  200",
            "HTTP/1.1 099 x",
        ] {
            let err = parse_status_line(bad.as_bytes()).unwrap_err();
            assert!(
                err.to_string().starts_with("malformed HTTP status line"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn head_end_needs_the_blank_line() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
    }
}

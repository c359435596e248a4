//! The PROXY protocol (HAProxy's, v1 text and v2 binary) at the front door.
//!
//! `encode`/`encode_local` build the header failoverd writes to a backend
//! (`send_proxy`) and to health checks; `read_header` takes the header a load
//! balancer in front writes (`accept_proxy`). The wire format itself is the
//! `ppp` crate's; this module adds the framing on a live socket: it peeks until
//! a whole header is queued, then consumes exactly the header's bytes, so
//! everything after it stays in the kernel for the zero-copy path. It must not
//! read one byte past the header, wait without a deadline, or spin while a
//! header arrives in pieces.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2};
use rustix::net::RecvFlags;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The v2 signature: the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED_BYTES: usize = 16;
/// The largest v2 header accepted (fixed part, addresses and TLVs): HAProxy's
/// default buffer size, far above any address block plus the usual TLVs.
pub const V2_MAX_HEADER_BYTES: usize = 16 * 1024;
/// What a v1 header starts with.
const V1_SIGNATURE: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included (the protocol's own limit).
pub const V1_MAX_HEADER_BYTES: usize = 107;
/// How many bytes of a non-header an error shows (for logs).
const PREVIEW_BYTES: usize = 16;

/// Which version of the PROXY protocol to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text header: `PROXY TCP4 192.0.2.7 10.0.0.100 51234 5432\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The addresses a received header carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The real client; `None` for v2 `LOCAL` and v1 `UNKNOWN` (and, as in
    /// HAProxy, for a v2 `PROXY` over a family other than TCP over IPv4/IPv6):
    /// the connection's own peer address then stands for the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` when `source` is.
    pub destination: Option<SocketAddr>,
}

/// Why a client connection's PROXY header was rejected.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The first bytes are not a PROXY protocol signature.
    #[error(
        "client sent no PROXY protocol header (first bytes \"{first_bytes}\"): connect through \
         the load balancer that writes it, or set accept_proxy = false"
    )]
    Missing {
        /// The first bytes received, escaped for a log line.
        first_bytes: String,
    },
    /// It starts like a header but is not a valid one.
    #[error("malformed PROXY protocol {version} header: {reason}")]
    Malformed {
        /// The version its signature announced.
        version: Version,
        /// What is wrong with it.
        reason: String,
    },
    /// The client closed the connection before the header was complete.
    #[error("{}", closed_message(*received))]
    Closed {
        /// Bytes queued when the close was seen.
        received: usize,
    },
    /// The header was not complete by the deadline.
    #[error(
        "no complete PROXY protocol header within {}ms ({received} bytes received): \
         the load balancer in front must send it first",
        rounded_millis(*waited)
    )]
    Late {
        /// How long `read_header` waited.
        waited: Duration,
        /// Bytes queued when it gave up.
        received: usize,
    },
    /// The socket failed.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] io::Error),
}

fn closed_message(received: usize) -> String {
    if received == 0 {
        return "client closed the connection before sending a PROXY protocol header".to_string();
    }
    format!("client closed the connection after {received} bytes of a PROXY protocol header")
}

fn rounded_millis(duration: Duration) -> u128 {
    (duration.as_micros() + 500) / 1000
}

/// The header to write to a backend before the first client byte:
/// `source` is the client, `destination` the address it connected to.
///
/// Mixed families are written as HAProxy does: as TCP over IPv6 with the IPv4
/// address mapped (`::ffff:192.0.2.7`).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("a v2 header without TLVs is at most 52 bytes, far below its 64 KiB limit"),
    }
}

/// The header a health check writes before anything else: v2 `LOCAL`, v1
/// `PROXY UNKNOWN`, so the backend takes the check as the proxy's own.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => v1::Addresses::Unknown.to_string().into_bytes(),
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("a v2 LOCAL header is 16 bytes, far below its 64 KiB limit"),
    }
}

/// Read the v1 or v2 header (detected from its first bytes) that starts
/// `stream`, complete by `deadline`.
///
/// Exactly the header's bytes are consumed: the client's first byte after it
/// is the next byte the socket yields. A header split over several segments is
/// awaited without spinning.
pub async fn read_header(stream: &TcpStream, deadline: Instant) -> Result<Accepted, HeaderError> {
    let start = Instant::now();
    let mut buf = vec![0u8; V1_MAX_HEADER_BYTES.max(V2_FIXED_BYTES)];
    let mut received = 0;
    let waiting = wait_for_header(stream, &mut buf, &mut received);
    let len = match tokio::time::timeout_at(deadline, waiting).await {
        Ok(result) => result?,
        Err(_) => {
            let waited = deadline.saturating_duration_since(start);
            return Err(HeaderError::Late { waited, received });
        }
    };
    consume(stream, &mut buf[..len]).await?;
    decode(&buf[..len])
}

/// Peek until `buf` holds a whole header; returns its length.
async fn wait_for_header(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    received: &mut usize,
) -> Result<usize, HeaderError> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // The peek runs inside try_io: when it finds the header incomplete it
        // reports WouldBlock, which clears tokio's readiness only if no new
        // event arrived since `ready` was taken. So the next `ready()` sleeps
        // until more data (or a close) comes and no arrival is lost. A plain
        // `readable()` loop would spin: a peek never clears readiness.
        match stream.try_io(Interest::READABLE, || peek_step(stream, buf, received)) {
            Ok(Peeked::Complete(len)) => return Ok(len),
            Ok(Peeked::Closed) => return Err(HeaderError::Closed { received: 0 }),
            Ok(Peeked::Rejected(err)) => return Err(err),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                closed_while_incomplete(ready, *received)?;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// A FIN stays in tokio's readiness for good: with the header still
/// incomplete it can never complete, so stop instead of peeking again.
fn closed_while_incomplete(ready: Ready, received: usize) -> Result<(), HeaderError> {
    if ready.is_read_closed() {
        return Err(HeaderError::Closed { received });
    }
    Ok(())
}

/// What one peek found (an incomplete header is WouldBlock).
enum Peeked {
    /// A whole header of this many bytes is queued.
    Complete(usize),
    /// The client closed before sending any byte.
    Closed,
    /// The queued bytes are not an acceptable header.
    Rejected(HeaderError),
}

fn peek_step(stream: &TcpStream, buf: &mut Vec<u8>, received: &mut usize) -> io::Result<Peeked> {
    loop {
        let (n, _) = rustix::net::recv(stream, &mut buf[..], RecvFlags::PEEK)?;
        if n == 0 {
            return Ok(Peeked::Closed);
        }
        *received = n;
        match frame(&buf[..n]) {
            Framing::Complete(len) => return Ok(Peeked::Complete(len)),
            Framing::NeedMore(want) if want > buf.len() => {
                // A v2 header with TLVs: grow to its announced size, bounded
                // by `frame`, and peek again at once.
                buf.resize(want, 0);
            }
            Framing::NeedMore(_) => return Err(io::ErrorKind::WouldBlock.into()),
            Framing::Rejected(err) => return Ok(Peeked::Rejected(err)),
        }
    }
}

/// Read exactly `buf.len()` bytes: the header a peek has already seen queued.
async fn consume(stream: &TcpStream, buf: &mut [u8]) -> Result<(), HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(HeaderError::Closed { received: filled }),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// What the bytes queued so far say.
#[derive(Debug)]
enum Framing {
    /// A whole header of this many bytes is there.
    Complete(usize),
    /// Not yet: at least this many bytes are needed (a size to peek with).
    NeedMore(usize),
    /// Not a header, or one too long to accept.
    Rejected(HeaderError),
}

/// Find where the header at the start of `buf` ends, without parsing it.
fn frame(buf: &[u8]) -> Framing {
    if starts_like(buf, V2_SIGNATURE) {
        return frame_v2(buf);
    }
    if starts_like(buf, V1_SIGNATURE) {
        return frame_v1(buf);
    }
    Framing::Rejected(HeaderError::Missing {
        first_bytes: preview(buf),
    })
}

/// `buf` is `signature` or a prefix of it, or starts with it.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

fn frame_v2(buf: &[u8]) -> Framing {
    if buf.len() < V2_FIXED_BYTES {
        return Framing::NeedMore(V2_FIXED_BYTES);
    }
    let announced = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_BYTES + announced;
    if total > V2_MAX_HEADER_BYTES {
        return Framing::Rejected(HeaderError::Malformed {
            version: Version::V2,
            reason: format!("{total} bytes long, above the limit of {V2_MAX_HEADER_BYTES}"),
        });
    }
    if buf.len() < total {
        return Framing::NeedMore(total);
    }
    Framing::Complete(total)
}

fn frame_v1(buf: &[u8]) -> Framing {
    let line = &buf[..buf.len().min(V1_MAX_HEADER_BYTES)];
    if let Some(newline) = line.iter().position(|&b| b == b'\n') {
        return Framing::Complete(newline + 1);
    }
    if line.len() == V1_MAX_HEADER_BYTES {
        return Framing::Rejected(HeaderError::Malformed {
            version: Version::V1,
            reason: format!("no CRLF within {V1_MAX_HEADER_BYTES} bytes"),
        });
    }
    Framing::NeedMore(V1_MAX_HEADER_BYTES)
}

/// Parse a whole header, `header` holding exactly its bytes.
fn decode(header: &[u8]) -> Result<Accepted, HeaderError> {
    if header.starts_with(V2_SIGNATURE) {
        decode_v2(header)
    } else {
        decode_v1(header)
    }
}

fn decode_v1(header: &[u8]) -> Result<Accepted, HeaderError> {
    let malformed = |reason: &str| HeaderError::Malformed {
        version: Version::V1,
        reason: reason.to_string(),
    };
    if !header.ends_with(b"\r\n") {
        return Err(malformed("it does not end with CRLF"));
    }
    let parsed = v1::Header::try_from(header).map_err(|err| match err {
        v1::BinaryParseError::InvalidUtf8(_) => malformed("not ASCII text"),
        v1::BinaryParseError::Parse(err) => malformed(v1_reason(&err)),
    })?;
    if parsed.header.len() != header.len() {
        return Err(malformed("a stray CR inside the line"));
    }
    Ok(match parsed.addresses {
        v1::Addresses::Tcp4(a) => proxied(
            IpAddr::V4(a.source_address),
            a.source_port,
            IpAddr::V4(a.destination_address),
            a.destination_port,
        ),
        v1::Addresses::Tcp6(a) => proxied(
            IpAddr::V6(a.source_address),
            a.source_port,
            IpAddr::V6(a.destination_address),
            a.destination_port,
        ),
        v1::Addresses::Unknown => LOCAL,
    })
}

fn decode_v2(header: &[u8]) -> Result<Accepted, HeaderError> {
    let parsed = v2::Header::try_from(header).map_err(|err| HeaderError::Malformed {
        version: Version::V2,
        reason: v2_reason(&err),
    })?;
    if parsed.command == v2::Command::Local || parsed.protocol != v2::Protocol::Stream {
        return Ok(LOCAL);
    }
    // TLVs (after the addresses) are skipped: failoverd needs none of them.
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => proxied(
            IpAddr::V4(a.source_address),
            a.source_port,
            IpAddr::V4(a.destination_address),
            a.destination_port,
        ),
        v2::Addresses::IPv6(a) => proxied(
            IpAddr::V6(a.source_address),
            a.source_port,
            IpAddr::V6(a.destination_address),
            a.destination_port,
        ),
        // As HAProxy: an unsupported family keeps the connection's addresses.
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => LOCAL,
    })
}

/// No addresses: the connection's own stand for the client.
const LOCAL: Accepted = Accepted {
    source: None,
    destination: None,
};

fn proxied(source: IpAddr, source_port: u16, destination: IpAddr, port: u16) -> Accepted {
    Accepted {
        source: Some(SocketAddr::new(source, source_port)),
        destination: Some(SocketAddr::new(destination, port)),
    }
}

fn v1_reason(err: &v1::ParseError) -> &'static str {
    use v1::ParseError as E;
    match err {
        E::InvalidPrefix | E::MissingPrefix | E::Partial => "it does not start with \"PROXY \"",
        E::MissingNewLine | E::InvalidSuffix => "it does not end with CRLF",
        E::MissingProtocol | E::InvalidProtocol => "protocol is not TCP4, TCP6 or UNKNOWN",
        E::MissingSourceAddress
        | E::MissingDestinationAddress
        | E::MissingSourcePort
        | E::MissingDestinationPort => {
            "too few fields (want \"PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT\")"
        }
        E::InvalidSourceAddress(_) => "invalid source address",
        E::InvalidDestinationAddress(_) => "invalid destination address",
        E::InvalidSourcePort(_) => "invalid source port",
        E::InvalidDestinationPort(_) => "invalid destination port",
        E::HeaderTooLong => "longer than 107 bytes",
    }
}

fn v2_reason(err: &v2::ParseError) -> String {
    use v2::ParseError as E;
    match err {
        E::Incomplete(_) | E::Partial(..) | E::Prefix => "truncated".to_string(),
        E::Version(v) => format!("version {} (only 2 exists)", v >> 4),
        E::Command(c) => format!("unknown command {c:#x}"),
        E::AddressFamily(a) => format!("unknown address family {:#x}", a >> 4),
        E::Protocol(p) => format!("unknown transport protocol {p:#x}"),
        E::InvalidAddresses(len, need) => {
            format!("address block of {len} bytes, the family needs {need}")
        }
        E::InvalidTLV(kind, len) => format!("TLV {kind:#x} of {len} bytes overruns the header"),
        E::Leftovers(n) => format!("{n} stray bytes after the TLVs"),
    }
}

/// The first bytes of a non-header, escaped for a log line.
fn preview(buf: &[u8]) -> String {
    let shown = &buf[..buf.len().min(PREVIEW_BYTES)];
    shown.escape_ascii().to_string()
}

/// Both addresses in one family: HAProxy maps the IPv4 one into IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    (mapped(source), mapped(destination))
}

fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Frame then decode, as `read_header` does with a socket.
    fn take(bytes: &[u8]) -> Result<(Accepted, usize), HeaderError> {
        match frame(bytes) {
            Framing::Complete(len) => decode(&bytes[..len]).map(|a| (a, len)),
            Framing::NeedMore(want) => panic!("incomplete, wants {want} bytes"),
            Framing::Rejected(err) => Err(err),
        }
    }

    fn proxied_pair(source: &str, destination: &str) -> Accepted {
        Accepted {
            source: Some(addr(source)),
            destination: Some(addr(destination)),
        }
    }

    #[test]
    fn v1_tcp4_encodes_as_the_text_line_and_parses_back() {
        let bytes = encode(
            Version::V1,
            addr("192.0.2.7:51234"),
            addr("10.0.0.100:5432"),
        );
        assert_eq!(bytes, b"PROXY TCP4 192.0.2.7 10.0.0.100 51234 5432\r\n");
        let mut with_data = bytes.clone();
        with_data.extend_from_slice(b"SELECT 1");
        let (accepted, len) = take(&with_data).unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(accepted, proxied_pair("192.0.2.7:51234", "10.0.0.100:5432"));
    }

    #[test]
    fn v1_tcp6_round_trips() {
        let (src, dst) = (addr("[2001:db8::7]:40000"), addr("[2001:db8::100]:443"));
        let bytes = encode(Version::V1, src, dst);
        assert_eq!(bytes, b"PROXY TCP6 2001:db8::7 2001:db8::100 40000 443\r\n");
        assert_eq!(
            take(&bytes).unwrap().0,
            proxied_pair("[2001:db8::7]:40000", "[2001:db8::100]:443")
        );
    }

    #[test]
    fn v2_ipv4_has_the_documented_layout_and_round_trips() {
        let bytes = encode(
            Version::V2,
            addr("192.0.2.7:51234"),
            addr("10.0.0.100:5432"),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 100]);
        want.extend_from_slice(&51234u16.to_be_bytes());
        want.extend_from_slice(&5432u16.to_be_bytes());
        assert_eq!(bytes, want);
        let (accepted, len) = take(&bytes).unwrap();
        assert_eq!(len, 28);
        assert_eq!(accepted, proxied_pair("192.0.2.7:51234", "10.0.0.100:5432"));
    }

    #[test]
    fn v2_ipv6_round_trips() {
        let bytes = encode(Version::V2, addr("[2001:db8::7]:40000"), addr("[::1]:443"));
        assert_eq!(bytes.len(), 16 + 36);
        assert_eq!(&bytes[12..14], &[0x21, 0x21]);
        assert_eq!(
            take(&bytes).unwrap().0,
            proxied_pair("[2001:db8::7]:40000", "[::1]:443")
        );
    }

    #[test]
    fn mixed_families_map_ipv4_into_ipv6_as_haproxy_does() {
        let v1 = encode(
            Version::V1,
            addr("192.0.2.7:1000"),
            addr("[2001:db8::1]:80"),
        );
        assert_eq!(v1, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1000 80\r\n");
        let v2 = encode(Version::V2, addr("[2001:db8::7]:1000"), addr("10.0.0.1:80"));
        assert_eq!(
            take(&v2).unwrap().0,
            proxied_pair("[2001:db8::7]:1000", "[::ffff:10.0.0.1]:80")
        );
    }

    #[test]
    fn local_and_unknown_carry_no_addresses() {
        let v1 = encode_local(Version::V1);
        assert_eq!(v1, b"PROXY UNKNOWN\r\n");
        assert_eq!(take(&v1).unwrap(), (LOCAL, v1.len()));
        let v2 = encode_local(Version::V2);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(v2, want);
        assert_eq!(take(&v2).unwrap(), (LOCAL, 16));
        // A receiver must ignore whatever follows UNKNOWN on the line.
        let odd = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nDATA";
        assert_eq!(take(odd).unwrap(), (LOCAL, odd.len() - 4));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_counted_in_the_header_length() {
        let mut bytes = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        let tlvs: &[u8] = &[0x02, 0, 4, b'h', b'o', b's', b't', 0x04, 0, 3, 0, 0, 0];
        bytes.extend_from_slice(tlvs);
        let len = u16::try_from(12 + tlvs.len()).unwrap();
        bytes[14..16].copy_from_slice(&len.to_be_bytes());
        let total = bytes.len();
        bytes.extend_from_slice(b"after");
        let (accepted, consumed) = take(&bytes).unwrap();
        assert_eq!(consumed, total);
        assert_eq!(accepted, proxied_pair("192.0.2.7:1", "10.0.0.1:2"));
    }

    #[test]
    fn truncated_headers_ask_for_more_bytes() {
        for whole in [
            encode(Version::V1, addr("192.0.2.7:1"), addr("10.0.0.1:2")),
            encode(Version::V2, addr("[2001:db8::7]:1"), addr("[::1]:2")),
        ] {
            for cut in 0..whole.len() {
                let framing = frame(&whole[..cut]);
                assert!(
                    matches!(framing, Framing::NeedMore(_)),
                    "cut {cut}: {framing:?}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_a_missing_header_with_a_preview() {
        let err = take(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert!(matches!(err, HeaderError::Missing { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no PROXY protocol header"), "{text}");
        assert!(text.contains("GET / HTTP/1.1\\r\\n"), "{text}");
        // A single wrong first byte is enough to tell.
        assert!(matches!(take(b"\x16"), Err(HeaderError::Missing { .. })));
    }

    #[test]
    fn malformed_v1_lines_name_the_fault() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n",
                "invalid source address",
            ),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n",
                "invalid destination port",
            ),
            (
                b"PROXY TCP5 10.0.0.1 10.0.0.2 1 2\r\n",
                "protocol is not TCP4",
            ),
            (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n", "CRLF"),
            (b"PROXY TCP4 10.0.0.1\r\n", "too few fields"),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n",
                "invalid source port",
            ),
            (
                b"PROXY TCP4 2001:db8::1 10.0.0.2 1 2\r\n",
                "invalid source address",
            ),
        ];
        for (bytes, want) in cases {
            let err = take(bytes).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    HeaderError::Malformed {
                        version: Version::V1,
                        ..
                    }
                ),
                "{text}"
            );
            assert!(
                text.contains(want),
                "{:?}: {text}",
                bytes.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn an_oversize_v1_line_is_rejected_at_107_bytes() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(200, b'1');
        let err = take(&line).unwrap_err();
        assert!(
            err.to_string().contains("no CRLF within 107 bytes"),
            "{err}"
        );
        assert!(matches!(frame(&line[..106]), Framing::NeedMore(_)));
    }

    #[test]
    fn malformed_and_oversize_v2_headers_are_rejected() {
        let mut bad_version = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        bad_version[12] = 0x11;
        let err = take(&bad_version).unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");

        let mut short_addresses = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        short_addresses[15] = 4;
        short_addresses.truncate(20);
        let err = take(&short_addresses).unwrap_err();
        assert!(
            err.to_string().contains("address block of 4 bytes"),
            "{err}"
        );

        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let err = match frame(&huge) {
            Framing::Rejected(err) => err,
            other => panic!("{other:?}"),
        };
        assert!(
            err.to_string().contains("above the limit of 16384"),
            "{err}"
        );
    }

    #[test]
    fn v2_proxy_over_unix_or_udp_keeps_the_connection_addresses() {
        let mut udp = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        udp[13] = 0x12;
        assert_eq!(take(&udp).unwrap().0, LOCAL);
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.resize(16 + 216, 0);
        assert_eq!(take(&unix).unwrap(), (LOCAL, 232));
    }
}

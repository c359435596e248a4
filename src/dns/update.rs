//! One RFC 2136 dynamic update: replace the record's RRset with one
//! address, signed with TSIG, one attempt bounded by a timeout. The message
//! and the signature come from hickory-proto; this file only moves bytes
//! (UDP, TCP when the answer is truncated) and turns the answer into an
//! error an operator can act on. It never retries: the publisher does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::config::{KeyAlgorithm, TsigKey};

/// How far apart the clocks of failoverd and the server may be (seconds);
/// 300 is what BIND and RFC 8945 use.
pub const TSIG_FUDGE_SECS: u16 = 300;

/// The largest UDP answer read; update answers are a few hundred bytes.
const UDP_BUFFER_BYTES: usize = 4096;

/// Where and what to publish: the record `name` in `zone` on `server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The authoritative server that accepts updates for the zone.
    pub server: SocketAddr,
    /// The zone, absolute (`example.com.`).
    pub zone: String,
    /// The record failoverd owns, absolute and inside `zone`.
    pub name: String,
    /// TTL of the published record; whole seconds are used.
    pub ttl: Duration,
}

/// Why an update did not take effect. `Display` names the server and says
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The zone or name is not usable (config validation should have
    /// caught it).
    #[error("dns target: {0}")]
    Target(String),
    /// Nothing answered within the timeout.
    #[error("no answer from DNS server {server} within {}", show_duration(*after))]
    Timeout { server: SocketAddr, after: Duration },
    /// A socket error talking to the server.
    #[error("DNS server {server}: {reason}")]
    Io { server: SocketAddr, reason: String },
    /// The server answered with an error RCODE (or a TSIG error).
    #[error("DNS server {server} refused the update of {name}: {rcode} ({hint})")]
    Refused {
        server: SocketAddr,
        name: String,
        /// The RFC mnemonic, with the TSIG error when there is one
        /// (`NOTAUTH/BADSIG`).
        rcode: String,
        hint: String,
    },
    /// An answer that cannot be trusted or read (bad TSIG, undecodable).
    #[error("DNS server {server}: bad answer to the update of {name}: {reason}")]
    BadResponse {
        server: SocketAddr,
        name: String,
        reason: String,
    },
}

/// Check the names of a `[service.dns]` section: both absolute, `name`
/// inside `zone`. The error says which and how to fix it.
pub fn check_names(zone: &str, name: &str) -> Result<(), String> {
    parse_names(zone, name).map(|_| ())
}

fn parse_names(zone: &str, name: &str) -> Result<(Name, Name), String> {
    let absolute = |what: &str, text: &str| -> Result<Name, String> {
        if !text.ends_with('.') {
            return Err(format!(
                "{what} \"{text}\" is not absolute (end it with \".\": \"{text}.\")"
            ));
        }
        Name::from_ascii(text)
            .map_err(|err| format!("{what} \"{text}\" is not a valid DNS name: {err}"))
    };
    let zone_name = absolute("zone", zone)?;
    let record_name = absolute("name", name)?;
    if !zone_name.zone_of(&record_name) {
        return Err(format!("name \"{name}\" is not inside zone \"{zone}\""));
    }
    Ok((zone_name, record_name))
}

/// Replace the RRset of `target.name` with `address` in one signed RFC 2136
/// UPDATE: delete the A and the AAAA RRsets, add the one record (A for
/// IPv4, AAAA for IPv6) with `target.ttl`. One attempt over UDP (TCP if the
/// answer is truncated), bounded by `timeout` as a whole. Ok only on
/// NOERROR with a valid TSIG signature from the server.
pub async fn update(
    target: &Target,
    key: &TsigKey,
    address: IpAddr,
    timeout: Duration,
) -> Result<(), UpdateError> {
    let (zone, name) = parse_names(&target.zone, &target.name).map_err(UpdateError::Target)?;
    let mut message = build_message(zone, name, address, target.ttl);
    let signer = signer(key).map_err(UpdateError::Target)?;
    let bad = |reason: String| UpdateError::BadResponse {
        server: target.server,
        name: target.name.clone(),
        reason,
    };
    let verifier = message
        .finalize(&signer, unix_now())
        .map_err(|err| UpdateError::Target(format!("cannot sign the update: {err}")))?
        .ok_or_else(|| UpdateError::Target("the signer gave no verifier".to_string()))?;
    let request = message
        .to_vec()
        .map_err(|err| UpdateError::Target(format!("cannot encode the update: {err}")))?;

    let exchange = async {
        let answer = exchange_udp(target.server, &request, message.metadata.id).await?;
        if answer.1.metadata.truncation {
            exchange_tcp(target.server, &request, message.metadata.id).await
        } else {
            Ok(answer)
        }
    };
    let (bytes, answer) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(UpdateError::Timeout {
                server: target.server,
                after: timeout,
            });
        }
        Ok(result) => result.map_err(|e| e.with_name(&target.name))?,
    };
    check_answer(target, key, &bytes, &answer, verifier).map_err(|err| match err {
        Checked::Bad(reason) => bad(reason),
        Checked::Refused(err) => err,
    })
}

fn build_message(zone: Name, name: Name, address: IpAddr, ttl: Duration) -> Message {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut zone_query = Query::query(zone, RecordType::SOA);
    zone_query.set_query_class(DNSClass::IN);
    message.add_zone(zone_query);

    let (kind, other, data) = match address {
        IpAddr::V4(v4) => (RecordType::A, RecordType::AAAA, RData::A(A(v4))),
        IpAddr::V6(v6) => (RecordType::AAAA, RecordType::A, RData::AAAA(AAAA(v6))),
    };
    // RFC 2136 2.5.2: class ANY, TTL 0, no RDATA deletes the whole RRset.
    // The other family goes too, so a switch from an IPv4 to an IPv6
    // backend leaves no stale A record.
    for delete in [other, kind] {
        let mut record = Record::update0(name.clone(), 0, delete);
        record.dns_class = DNSClass::ANY;
        message.add_update(record);
    }
    let ttl_secs = u32::try_from(ttl.as_secs()).unwrap_or(i32::MAX as u32);
    message.add_update(Record::from_rdata(name, ttl_secs, data));
    message
}

fn signer(key: &TsigKey) -> Result<TSigner, String> {
    let algorithm = match key.algorithm() {
        KeyAlgorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
        KeyAlgorithm::HmacSha384 => TsigAlgorithm::HmacSha384,
        KeyAlgorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
    };
    let name = Name::from_ascii(key.name())
        .map_err(|err| format!("key name \"{}\": {err}", key.name()))?;
    TSigner::new(key.secret().to_vec(), algorithm, name, TSIG_FUDGE_SECS)
        .map_err(|err| format!("key \"{}\": {err}", key.name()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A transport failure before the name is attached.
struct Transport {
    server: SocketAddr,
    kind: TransportKind,
}

enum TransportKind {
    Io(String),
    Bad(String),
}

impl Transport {
    fn io(server: SocketAddr, action: &str, err: &io::Error) -> Transport {
        let reason = match err.kind() {
            io::ErrorKind::ConnectionRefused => {
                format!(
                    "{action}: connection refused (is the server running and listening on this port?)"
                )
            }
            _ => format!("{action}: {err}"),
        };
        Transport {
            server,
            kind: TransportKind::Io(reason),
        }
    }

    fn with_name(self, name: &str) -> UpdateError {
        match self.kind {
            TransportKind::Io(reason) => UpdateError::Io {
                server: self.server,
                reason,
            },
            TransportKind::Bad(reason) => UpdateError::BadResponse {
                server: self.server,
                name: name.to_string(),
                reason,
            },
        }
    }
}

/// Send once over UDP and wait for the answer with our id; datagrams that
/// are not that answer (late answers, forgeries) are ignored.
async fn exchange_udp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
) -> Result<(Vec<u8>, Message), Transport> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| Transport::io(server, "bind a UDP socket", &e))?;
    socket
        .connect(server)
        .await
        .map_err(|e| Transport::io(server, "connect the UDP socket", &e))?;
    socket
        .send(request)
        .await
        .map_err(|e| Transport::io(server, "send the update", &e))?;
    let mut buffer = vec![0u8; UDP_BUFFER_BYTES];
    loop {
        let len = socket
            .recv(&mut buffer)
            .await
            .map_err(|e| Transport::io(server, "receive the answer", &e))?;
        let bytes = &buffer[..len];
        match Message::from_vec(bytes) {
            Ok(answer) if is_answer_to(&answer, id) => return Ok((bytes.to_vec(), answer)),
            Ok(_) => {
                tracing::debug!(%server, "ignored a DNS datagram that is not the answer to our update")
            }
            Err(err) => {
                tracing::debug!(%server, error = %err, "ignored an undecodable DNS datagram")
            }
        }
    }
}

/// Send once over TCP (RFC 1035 4.2.2: a two-byte length before each
/// message) and read the one answer.
async fn exchange_tcp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
) -> Result<(Vec<u8>, Message), Transport> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| Transport::io(server, "connect over TCP", &e))?;
    let len = u16::try_from(request.len()).map_err(|_| Transport {
        server,
        kind: TransportKind::Bad("the update is too large for TCP".to_string()),
    })?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| Transport::io(server, "send the update over TCP", &e))?;
    let mut prefix = [0u8; 2];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| Transport::io(server, "read the answer over TCP", &e))?;
    let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| Transport::io(server, "read the answer over TCP", &e))?;
    let bad = |reason: String| Transport {
        server,
        kind: TransportKind::Bad(reason),
    };
    let answer = Message::from_vec(&bytes).map_err(|err| bad(format!("undecodable: {err}")))?;
    if !is_answer_to(&answer, id) {
        return Err(bad(format!(
            "id {} over TCP does not match the update's id {id}",
            answer.metadata.id
        )));
    }
    Ok((bytes, answer))
}

fn is_answer_to(answer: &Message, id: u16) -> bool {
    answer.metadata.id == id
        && answer.metadata.message_type == MessageType::Response
        && answer.metadata.op_code == OpCode::Update
}

enum Checked {
    Bad(String),
    Refused(UpdateError),
}

fn check_answer(
    target: &Target,
    key: &TsigKey,
    bytes: &[u8],
    answer: &Message,
    mut verifier: TSigVerifier,
) -> Result<(), Checked> {
    let tsig_error = answer.signature.as_ref().and_then(|sig| sig.data.error);
    let rcode = answer.metadata.response_code;
    if rcode != ResponseCode::NoError || tsig_error.is_some() {
        let (rcode, hint) = explain(rcode, tsig_error, key, target);
        return Err(Checked::Refused(UpdateError::Refused {
            server: target.server,
            name: target.name.clone(),
            rcode,
            hint,
        }));
    }
    if answer.signature.is_none() {
        return Err(Checked::Bad(format!(
            "NOERROR but not signed with TSIG key \"{}\", so it cannot be trusted",
            key.name()
        )));
    }
    verifier.verify(bytes).map(|_| ()).map_err(|err| {
        Checked::Bad(format!(
            "NOERROR but its TSIG signature does not verify with key \"{}\" ({err})",
            key.name()
        ))
    })
}

/// The RFC mnemonic of an RCODE (with the TSIG error) and what to do.
fn explain(
    rcode: ResponseCode,
    tsig_error: Option<TsigError>,
    key: &TsigKey,
    target: &Target,
) -> (String, String) {
    let k = key.name();
    let zone = &target.zone;
    let name = &target.name;
    let code = mnemonic(rcode);
    let (suffix, hint) = match tsig_error {
        Some(TsigError::BadSig) => (
            "/BADSIG",
            format!(
                "TSIG key \"{k}\" not accepted: its secret differs from the server's; check the secret"
            ),
        ),
        Some(TsigError::BadKey) => (
            "/BADKEY",
            format!(
                "TSIG key \"{k}\" not accepted: the server knows no key of that name with {}; check the key name and algorithm",
                key.algorithm()
            ),
        ),
        Some(TsigError::BadTime) => (
            "/BADTIME",
            format!(
                "the clocks of this host and the server differ by more than {TSIG_FUDGE_SECS}s; synchronise them (NTP)"
            ),
        ),
        Some(TsigError::BadTrunc) => (
            "/BADTRUNC",
            "the server wants a longer MAC than it got".to_string(),
        ),
        Some(TsigError::Unknown(n)) => ("", format!("TSIG error {n} for key \"{k}\"")),
        None => (
            "",
            match rcode {
                ResponseCode::NotAuth => format!(
                    "the server is not authoritative for zone \"{zone}\" or did not accept TSIG key \"{k}\"; check the server, the zone, the key name and secret"
                ),
                ResponseCode::Refused => format!(
                    "the server does not let TSIG key \"{k}\" update {name}; check allow-update or update-policy of zone \"{zone}\" on the server"
                ),
                ResponseCode::NotZone => {
                    format!("the server does not see {name} inside zone \"{zone}\"; check the zone")
                }
                ResponseCode::ServFail => {
                    "the server failed to apply the update; see the server's log".to_string()
                }
                ResponseCode::FormErr => "the server could not parse the update".to_string(),
                ResponseCode::NotImp => "the server does not implement dynamic update".to_string(),
                _ => "unexpected answer to an update without prerequisites".to_string(),
            },
        ),
    };
    (format!("{code}{suffix}"), hint)
}

fn mnemonic(rcode: ResponseCode) -> String {
    let text = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        other => return format!("RCODE {}", u16::from(other)),
    };
    text.to_string()
}

/// `250ms`, `5s`, `1.5s`: the way the config spells durations.
pub(crate) fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_absolute_and_inside_the_zone() {
        let cases = [
            ("example.com.", "db.example.com.", None),
            ("example.com.", "example.com.", None),
            (
                "example.com",
                "db.example.com.",
                Some("zone \"example.com\" is not absolute"),
            ),
            (
                "example.com.",
                "db.example.com",
                Some("name \"db.example.com\" is not absolute"),
            ),
            (
                "example.com.",
                "db.example.org.",
                Some("is not inside zone \"example.com.\""),
            ),
            (
                "example.com.",
                "db..example.com.",
                Some("not a valid DNS name"),
            ),
        ];
        for (zone, name, want) in cases {
            let got = check_names(zone, name);
            match want {
                None => assert!(got.is_ok(), "{zone} {name}: {got:?}"),
                Some(text) => {
                    let err = got.expect_err(name);
                    assert!(err.contains(text), "{zone} {name}: {err}");
                }
            }
        }
    }

    #[test]
    fn update_deletes_both_families_and_adds_one_record() {
        let zone = Name::from_ascii("example.com.").unwrap();
        let name = Name::from_ascii("db.example.com.").unwrap();
        let address: IpAddr = "2001:db8::5".parse().unwrap();
        let message = build_message(zone, name, address, Duration::from_millis(30_900));
        assert_eq!(message.metadata.op_code, OpCode::Update);
        assert_eq!(message.queries.len(), 1);
        assert_eq!(message.queries[0].query_type(), RecordType::SOA);
        let updates = message.updates();
        assert_eq!(updates.len(), 3);
        assert_eq!(updates[0].data, RData::Update0(RecordType::A));
        assert_eq!(updates[0].dns_class, DNSClass::ANY);
        assert_eq!(updates[1].data, RData::Update0(RecordType::AAAA));
        assert_eq!(
            updates[2].data,
            RData::AAAA(AAAA("2001:db8::5".parse().unwrap()))
        );
        assert_eq!(updates[2].dns_class, DNSClass::IN);
        assert_eq!(updates[2].ttl, 30);
    }

    #[test]
    fn durations_print_as_in_the_config() {
        assert_eq!(show_duration(Duration::from_secs(5)), "5s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5s");
    }
}

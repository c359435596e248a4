//! Addresses as the config writes them: `ip:port`, `[ipv6]:port` for
//! listeners and `host:port` for backends, with errors that say what is
//! wrong ("missing port", "IPv6 address must be in brackets").

use std::fmt;
use std::net::SocketAddr;

/// Where a backend lives: a literal socket address, or a hostname that is
/// resolved again at every health check and connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    Ip(SocketAddr),
    Host { host: String, port: u16 },
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(addr) => write!(f, "{addr}"),
            BackendAddress::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Split `host:port` or `[v6]:port`. Returns the host (without brackets),
/// whether it was bracketed, and the port (1..=65535, or 0 when
/// `allow_zero`: a listener on port 0 gets one from the kernel).
pub(super) fn split_host_port(
    text: &str,
    allow_zero: bool,
) -> Result<(&str, bool, u16), &'static str> {
    if text.is_empty() {
        return Err("empty address");
    }
    let (host, port, bracketed) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing closing \"]\" after IPv6 address");
        };
        if after.is_empty() {
            return Err("missing port");
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err("expected \":port\" after \"]\"");
        };
        (host, port, true)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err("missing port");
        };
        if host.contains(':') {
            return Err("IPv6 address must be in brackets, e.g. \"[::1]:5432\"");
        }
        (host, port, false)
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if port.is_empty() {
        return Err("missing port");
    }
    match port.parse::<u16>() {
        Ok(p) if (p != 0 || allow_zero) && port.bytes().all(|b| b.is_ascii_digit()) => {
            Ok((host, bracketed, p))
        }
        _ => Err("invalid port (expected 1-65535)"),
    }
}

/// An IP socket address (`a.b.c.d:port` or `[v6]:port`), for listeners.
pub(super) fn parse_ip_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let (host, bracketed, port) = split_host_port(text, true).map_err(str::to_string)?;
    let ip: std::net::IpAddr = if bracketed {
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address".to_string())?
            .into()
    } else if looks_like_ipv4(host) {
        host.parse::<std::net::Ipv4Addr>()
            .map_err(|_| "invalid IPv4 address".to_string())?
            .into()
    } else {
        return Err("must be an IP address and port, not a hostname".to_string());
    };
    Ok(SocketAddr::new(ip, port))
}

/// `ip:port`, `[v6]:port` or `hostname:port`.
pub(super) fn parse_backend_address(text: &str) -> Result<BackendAddress, String> {
    let (host, bracketed, port) = split_host_port(text, false).map_err(str::to_string)?;
    if bracketed || looks_like_ipv4(host) {
        return parse_ip_socket_addr(text).map(BackendAddress::Ip);
    }
    if !is_valid_hostname(host) {
        return Err("invalid hostname (letters, digits, '-' and '.' only)".to_string());
    }
    Ok(BackendAddress::Host {
        host: host.to_string(),
        port,
    })
}

fn looks_like_ipv4(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// RFC 1123 hostname: dot-separated labels of letters, digits and hyphens,
/// no label empty, longer than 63 or starting/ending with '-'. One trailing
/// dot (fully qualified) is allowed.
pub(super) fn is_valid_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

//! The per-service client allow-list (`allow = ["10.0.0.0/8", "192.0.2.7"]`).
//!
//! Built once from the config strings, then asked once per accepted client
//! (after the PROXY header, with `accept_proxy`), before any backend is
//! contacted. The check allocates nothing and takes no lock; this module only
//! answers "allowed or not" and must not log, count or close anything itself.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The networks a service accepts clients from; empty means everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl AllowList {
    /// Parse `allow` entries: an IPv4 or IPv6 address (a single host) or a
    /// CIDR (`10.0.0.0/8`, `2001:db8::/32`; host bits may be set). The error
    /// names the first bad entry and what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for entry in entries {
            match parse_entry(entry) {
                Ok(IpNet::V4(net)) => list.v4.push(net),
                Ok(IpNet::V6(net)) => list.v6.push(net),
                Err(why) => return Err(format!("allow entry {entry:?}: {why}")),
            }
        }
        Ok(list)
    }

    /// Whether `ip` may connect: always with an empty list. An IPv4-mapped
    /// IPv6 client (`::ffff:192.0.2.7`, a dual-stack listener's view of an
    /// IPv4 client) is matched against the IPv4 entries too.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.is_empty() {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => self.v4.iter().any(|net| net.contains(&v4)),
            IpAddr::V6(v6) => {
                let as_v4 = v6.to_ipv4_mapped();
                as_v4.is_some_and(|v4| self.v4.iter().any(|net| net.contains(&v4)))
                    || self.v6.iter().any(|net| net.contains(&v6))
            }
        }
    }

    /// No entries: every client is allowed.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// How many entries the list holds.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The networks, IPv4 first, as the summary shows them.
    pub fn networks(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.v4.iter().map(|n| IpNet::V4(*n));
        v4.chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }
}

/// One entry: `ADDRESS` or `ADDRESS/PREFIX`.
fn parse_entry(entry: &str) -> Result<IpNet, &'static str> {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (entry, None),
    };
    let Ok(ip) = address.parse::<IpAddr>() else {
        return Err(match prefix {
            Some(_) => "invalid address before the \"/\" (want an IPv4 or IPv6 address)",
            None => {
                "not an IP address or CIDR (want \"192.0.2.7\", \"10.0.0.0/8\" or \"2001:db8::/32\")"
            }
        });
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(digits) => parse_prefix(digits)?,
    };
    IpNet::new(ip, len)
        .map(|net| net.trunc())
        .map_err(|_| "invalid prefix length")
}

/// Decimal digits only: `u8::from_str` would also take "+8".
fn parse_prefix(digits: &str) -> Result<u8, &'static str> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid prefix length");
    }
    digits.parse().map_err(|_| "invalid prefix length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        AllowList::parse(&entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn error(entry: &str) -> String {
        AllowList::parse(&[entry.to_string()]).unwrap_err()
    }

    #[test]
    fn an_empty_list_allows_everyone() {
        let empty = list(&[]);
        assert!(empty.is_empty());
        assert!(empty.allows(ip("203.0.113.9")));
        assert!(empty.allows(ip("2001:db8::1")));
    }

    #[test]
    fn cidrs_and_plain_addresses_match_as_written() {
        let allow = list(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        assert_eq!(allow.len(), 4);
        let cases = [
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8::1", true),
            ("2001:db8:ffff:ffff::1", true),
            ("2001:db9::1", false),
            ("::1", true),
            ("::2", false),
        ];
        for (addr, want) in cases {
            assert_eq!(allow.allows(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn ipv4_mapped_clients_are_matched_as_ipv4() {
        let allow = list(&["192.0.2.0/24"]);
        assert!(allow.allows(ip("::ffff:192.0.2.7")));
        assert!(!allow.allows(ip("::ffff:198.51.100.7")));
        // An IPv6 entry still sees the mapped form.
        let v6 = list(&["::ffff:0:0/96"]);
        assert!(v6.allows(ip("::ffff:198.51.100.7")));
        assert!(!v6.allows(ip("198.51.100.7")));
    }

    #[test]
    fn host_bits_in_a_cidr_are_ignored() {
        let allow = list(&["10.1.2.3/16", "0.0.0.0/0"]);
        assert!(allow.allows(ip("10.1.200.1")));
        let only_v4 = list(&["0.0.0.0/0"]);
        assert!(only_v4.allows(ip("8.8.8.8")));
        assert!(!only_v4.allows(ip("2001:db8::1")));
    }

    #[test]
    fn bad_entries_are_named_with_the_fault() {
        assert_eq!(
            error("10.0.0.0/33"),
            "allow entry \"10.0.0.0/33\": invalid prefix length"
        );
        assert_eq!(
            error("::/129"),
            "allow entry \"::/129\": invalid prefix length"
        );
        assert_eq!(
            error("10.0.0.0/+8"),
            "allow entry \"10.0.0.0/+8\": invalid prefix length"
        );
        assert_eq!(
            error("10.0.0.0/"),
            "allow entry \"10.0.0.0/\": invalid prefix length"
        );
        assert!(error("10.0.0/8").contains("invalid address before the \"/\""));
        assert!(error("db.example.com").contains("not an IP address or CIDR"));
        assert!(error("").starts_with("allow entry \"\": not an IP address"));
        assert!(error("[::1]").contains("not an IP address"));
        let mixed = vec!["10.0.0.0/8".to_string(), "300.1.1.1".to_string()];
        assert!(
            AllowList::parse(&mixed)
                .unwrap_err()
                .starts_with("allow entry \"300.1.1.1\"")
        );
    }
}

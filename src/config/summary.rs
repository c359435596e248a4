//! The one-screen summary `failoverd check` prints: services, listeners and
//! backends in priority order, with the effective settings that matter.

use std::fmt::{self, Write as _};

use super::{CheckKind, Config, Failback, OnLost, OnSwitch, ProxyVersion, format_duration};

impl Config {
    /// The one-screen summary printed by `failoverd check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "config {}: valid", self.path.display())?;
        let admin = &self.admin;
        let metrics = match admin.metrics {
            Some(addr) => format!("http://{addr}/metrics"),
            None => "off".to_string(),
        };
        let socket = match &admin.socket {
            Some(p) => p.display().to_string(),
            None => "off".to_string(),
        };
        writeln!(
            out,
            "admin: metrics {metrics}, socket {socket}, shutdown_timeout {}",
            format_duration(admin.shutdown_timeout)
        )?;
        if let Some(c) = &self.cluster {
            let on_lost = match c.on_lost {
                OnLost::Close => "close",
                OnLost::Keep => "keep",
            };
            writeln!(
                out,
                "cluster: member \"{}\", prefix {}, ttl {}, on_lost {on_lost}, etcd {}",
                c.name,
                c.prefix,
                format_duration(c.ttl),
                c.etcd.join(", ")
            )?;
        }
        for svc in &self.services {
            self.write_service(out, svc)?;
        }
        Ok(())
    }

    fn write_service(&self, out: &mut String, svc: &super::ServiceConfig) -> fmt::Result {
        let s = &svc.settings;
        writeln!(out)?;
        let freebind = if svc.freebind { " (freebind)" } else { "" };
        match svc.listen {
            Some(listen) => writeln!(out, "service \"{}\" listen {listen}{freebind}", svc.name)?,
            None => writeln!(out, "service \"{}\" (DNS only, no listener)", svc.name)?,
        }
        for (i, b) in svc.backends.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "backup" };
            let publish = match (&svc.dns, b.publish) {
                (Some(_), Some(ip)) => format!(", publishes {ip}"),
                _ => String::new(),
            };
            writeln!(
                out,
                "  {}. {} {} ({role}{publish})",
                i + 1,
                b.name,
                b.address
            )?;
        }
        writeln!(
            out,
            "  connect_timeout {}, idle_timeout {}, max_connections {}, zero_copy {}",
            format_duration(s.connect_timeout),
            s.idle_timeout.map_or("never".to_string(), format_duration),
            if s.max_connections == 0 {
                "unlimited".to_string()
            } else {
                s.max_connections.to_string()
            },
            if s.zero_copy { "on" } else { "off" },
        )?;
        let passive = if s.passive_errors == 0 {
            "off".to_string()
        } else {
            s.passive_errors.to_string()
        };
        let port = s
            .check_port
            .map_or(String::new(), |p| format!(" on port {p}"));
        let what = match s.check {
            CheckKind::Tcp => String::new(),
            CheckKind::Http => format!(" GET {}", s.check_path),
            CheckKind::Redis => " ROLE master".to_string(),
            CheckKind::Postgres => format!(
                " as {}@{}",
                s.check_user_for().unwrap_or("postgres"),
                s.check_database_or_default()
            ),
        };
        writeln!(
            out,
            "  check {}{what}{port}, check_interval {}, check_timeout {}, fall {}, rise {}, passive_errors {passive}",
            s.check.as_str(),
            format_duration(s.check_interval),
            format_duration(s.check_timeout),
            s.fall,
            s.rise,
        )?;
        if !s.check_send.is_empty() || !s.check_expect.is_empty() {
            writeln!(
                out,
                "  check_send \"{}\", check_expect \"{}\"",
                s.check_send.escape_ascii(),
                s.check_expect.escape_ascii()
            )?;
        }
        let failback = match s.failback {
            Failback::Auto => "auto",
            Failback::Manual => "manual",
        };
        let on_switch = match s.on_switch {
            OnSwitch::Close => "close",
            OnSwitch::Keep => "keep",
        };
        writeln!(
            out,
            "  failback {failback}, failback_delay {}, on_switch {on_switch}, hold_timeout {}",
            format_duration(s.failback_delay),
            s.hold_timeout.map_or("off".to_string(), format_duration),
        )?;
        if s.send_proxy != ProxyVersion::Off || s.accept_proxy || !s.allow.is_empty() {
            let allow = if s.allow.is_empty() {
                "all".to_string()
            } else {
                s.allow
                    .networks()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                out,
                "  send_proxy {}, accept_proxy {}, allow {allow}",
                s.send_proxy.as_str(),
                if s.accept_proxy { "yes" } else { "no" },
            )?;
        }
        if !s.notify.is_empty() {
            writeln!(out, "  notify {:?}", s.notify)?;
        }
        if let Some(dns) = &svc.dns {
            writeln!(
                out,
                "  dns {} in {} via {}, ttl {}, key \"{}\" ({})",
                dns.name,
                dns.zone,
                dns.server,
                format_duration(dns.ttl),
                dns.tsig_key.name(),
                dns.tsig_key.algorithm().as_str(),
            )?;
        }
        Ok(())
    }
}

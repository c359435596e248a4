//! Validation: the raw model -> [`Config`], one rule of SPEC.md at a time.
//! Errors are the message after `FILE: ` and name the key by its path
//! (`defaults.check_timeout: ...`, `service "db": backend "b": ...`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::address::{
    is_valid_hostname, parse_backend_address, parse_ip_socket_addr, split_host_port,
};
use super::raw::{RawAdmin, RawBackend, RawCluster, RawConfig, RawDns, RawService, RawSettings};
use super::{
    Admin, AllowList, BackendAddress, BackendConfig, CheckKind, ClusterConfig, Config, DnsConfig,
    Failback, MAX_CONNECTIONS_LIMIT, OnLost, OnSwitch, ProxyVersion, Secret, ServiceConfig,
    Settings, format_duration, load_key_file, parse_duration,
};

/// The shortest lease `[cluster] ttl` and the shortest DNS `ttl` may be.
const MIN_TTL: Duration = Duration::from_secs(1);

pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, String> {
    let admin = validate_admin(raw.admin)?;
    let cluster = raw.cluster.map(validate_cluster).transpose()?;

    let mut base = Settings::default();
    if let Some(defaults) = &raw.defaults {
        apply_settings(&mut base, defaults, "defaults.")?;
        check_combination(&base, "defaults: ")?;
    }

    if raw.service.is_empty() {
        return Err("no [[service]] defined; at least one is required".to_string());
    }
    let mut services: Vec<ServiceConfig> = Vec::with_capacity(raw.service.len());
    for (index, rs) in raw.service.iter().enumerate() {
        let service = validate_service(rs, index, &base)?;
        if let Some(other) = services.iter().find(|s| s.name == service.name) {
            return Err(format!(
                "service \"{}\": duplicate service name (service names must be unique)",
                other.name
            ));
        }
        if let Some(listen) = service.listen
            && let Some(other) = services.iter().find(|s| s.listen == Some(listen))
        {
            return Err(format!(
                "service \"{}\": listen \"{listen}\": already used by service \"{}\"",
                service.name, other.name
            ));
        }
        services.push(service);
    }

    Ok(Config {
        path: path.to_path_buf(),
        admin,
        cluster,
        services,
    })
}

fn validate_admin(raw: Option<RawAdmin>) -> Result<Admin, String> {
    let mut admin = Admin {
        metrics: None,
        socket: None,
        shutdown_timeout: Duration::from_secs(30),
    };
    let Some(raw) = raw else {
        return Ok(admin);
    };
    if let Some(metrics) = &raw.metrics {
        admin.metrics = Some(
            parse_ip_socket_addr(metrics)
                .map_err(|why| format!("admin.metrics \"{metrics}\": {why}"))?,
        );
    }
    if let Some(socket) = raw.socket {
        if socket.is_empty() {
            return Err(
                "admin.socket: must not be empty (omit the key for no control socket)".to_string(),
            );
        }
        admin.socket = Some(PathBuf::from(socket));
    }
    if let Some(timeout) = &raw.shutdown_timeout {
        admin.shutdown_timeout =
            parse_duration(timeout).map_err(|e| format!("admin.shutdown_timeout: {e}"))?;
    }
    Ok(admin)
}

fn validate_cluster(raw: RawCluster) -> Result<ClusterConfig, String> {
    let etcd = raw.etcd.unwrap_or_default();
    if etcd.is_empty() {
        return Err("cluster.etcd: at least one etcd endpoint is required, e.g. [\"http://10.0.0.21:2379\"]".to_string());
    }
    for url in &etcd {
        check_etcd_url(url).map_err(|why| format!("cluster.etcd \"{url}\": {why}"))?;
    }
    let name = match raw.name {
        Some(name) => name,
        None => host_name().ok_or(
            "cluster.name: not set and the host name cannot be read; set cluster.name".to_string(),
        )?,
    };
    if !is_valid_name(&name) {
        return Err(format!(
            "cluster.name \"{name}\": invalid name, must match [a-zA-Z0-9_.-]+"
        ));
    }
    let prefix = raw.prefix.unwrap_or_else(|| "/failoverd".to_string());
    let trimmed = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || trimmed.is_empty() {
        return Err(format!(
            "cluster.prefix \"{prefix}\": must start with \"/\" and name a key prefix, e.g. \"/failoverd\""
        ));
    }
    let ttl = match &raw.ttl {
        Some(ttl) => parse_duration(ttl).map_err(|e| format!("cluster.ttl: {e}"))?,
        None => Duration::from_secs(3),
    };
    if ttl < MIN_TTL {
        return Err(format!(
            "cluster.ttl: must be at least 1s, got \"{}\"",
            format_duration(ttl)
        ));
    }
    let on_lost = match raw.on_lost.as_deref() {
        None | Some("close") => OnLost::Close,
        Some("keep") => OnLost::Keep,
        Some(v) => {
            return Err(format!(
                "cluster.on_lost: invalid value \"{v}\", expected \"close\" or \"keep\""
            ));
        }
    };
    Ok(ClusterConfig {
        etcd,
        name,
        prefix: trimmed.to_string(),
        ttl,
        on_lost,
    })
}

/// `http://host:port` or `https://host:port`, nothing after the port.
fn check_etcd_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, bracketed, _) =
        split_host_port(rest, false).map_err(|why| format!("{why} (expected http://host:port)"))?;
    let valid = if bracketed {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || is_valid_hostname(host)
    };
    if valid {
        Ok(())
    } else {
        Err("invalid host (expected http://host:port)".to_string())
    }
}

/// The kernel's host name, the default member name.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn validate_service(
    rs: &RawService,
    index: usize,
    base: &Settings,
) -> Result<ServiceConfig, String> {
    let number = index + 1;
    let name = match rs.name.as_deref() {
        None => return Err(format!("service #{number}: missing key \"name\"")),
        Some("") => return Err(format!("service #{number}: name is empty")),
        Some(name) => name,
    };
    if !is_valid_name(name) {
        return Err(format!(
            "service \"{name}\": invalid name, must match [a-zA-Z0-9_.-]+"
        ));
    }
    let prefix = format!("service \"{name}\": ");

    let listen = rs
        .listen
        .as_deref()
        .map(|listen| {
            parse_ip_socket_addr(listen)
                .map_err(|why| format!("{prefix}listen \"{listen}\": {why}"))
        })
        .transpose()?;
    let dns = rs
        .dns
        .as_ref()
        .map(|d| validate_dns(d, &prefix))
        .transpose()?;
    if listen.is_none() && dns.is_none() {
        return Err(format!(
            "{prefix}missing key \"listen\" (only a service with [service.dns] may have none)"
        ));
    }

    let mut settings = base.clone();
    apply_settings(&mut settings, &rs.overrides(), &prefix)?;
    // Effective values; [defaults] alone was checked above, so a failure
    // here involves this service's own keys.
    check_combination(&settings, &prefix)?;

    if rs.backend.is_empty() {
        return Err(format!(
            "{prefix}no [[service.backend]] defined; at least one is required"
        ));
    }
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(rs.backend.len());
    for (bi, rb) in rs.backend.iter().enumerate() {
        let backend = validate_backend(rb, bi + 1, &prefix, dns.is_some())?;
        if let Some(first) = backends.iter().position(|b| b.name == backend.name) {
            return Err(format!(
                "{prefix}backend \"{}\": duplicate backend name (backends #{} and #{})",
                backend.name,
                first + 1,
                bi + 1
            ));
        }
        backends.push(backend);
    }

    Ok(ServiceConfig {
        name: name.to_string(),
        listen,
        freebind: rs.freebind,
        settings,
        backends,
        dns,
    })
}

fn validate_backend(
    rb: &RawBackend,
    number: usize,
    prefix: &str,
    has_dns: bool,
) -> Result<BackendConfig, String> {
    let name = match rb.name.as_deref() {
        None => return Err(format!("{prefix}backend #{number}: missing key \"name\"")),
        Some("") => return Err(format!("{prefix}backend #{number}: name is empty")),
        Some(n) => n,
    };
    let at = format!("{prefix}backend \"{name}\": ");
    let address = match rb.address.as_deref() {
        None => return Err(format!("{at}missing key \"address\"")),
        Some(a) => parse_backend_address(a).map_err(|why| format!("{at}address \"{a}\": {why}"))?,
    };
    let publish = match rb.publish.as_deref() {
        Some(p) => Some(
            p.parse::<IpAddr>()
                .map_err(|_| format!("{at}publish \"{p}\": must be an IP address"))?,
        ),
        None => match &address {
            BackendAddress::Ip(addr) => Some(addr.ip()),
            BackendAddress::Host { host, .. } if has_dns => {
                return Err(format!(
                    "{at}publish: required when the service has [service.dns] and the address is a hostname (\"{host}\"); set the IP address to publish"
                ));
            }
            BackendAddress::Host { .. } => None,
        },
    };
    Ok(BackendConfig {
        name: name.to_string(),
        address,
        publish,
    })
}

fn validate_dns(raw: &RawDns, prefix: &str) -> Result<DnsConfig, String> {
    let at = format!("{prefix}dns.");
    let missing = |key: &str| format!("{at}{key}: missing (required in [service.dns])");
    let server = raw.server.as_deref().ok_or_else(|| missing("server"))?;
    let server =
        parse_ip_socket_addr(server).map_err(|why| format!("{at}server \"{server}\": {why}"))?;
    if server.port() == 0 {
        return Err(format!(
            "{at}server \"{server}\": port 0 is not a DNS server port"
        ));
    }
    let zone = raw.zone.as_deref().ok_or_else(|| missing("zone"))?;
    check_absolute_name(zone).map_err(|why| format!("{at}zone \"{zone}\": {why}"))?;
    let name = raw.name.as_deref().ok_or_else(|| missing("name"))?;
    check_absolute_name(name).map_err(|why| format!("{at}name \"{name}\": {why}"))?;
    if !is_inside_zone(name, zone) {
        return Err(format!(
            "{at}name \"{name}\": not inside zone \"{zone}\" (the name must end in the zone)"
        ));
    }
    let ttl = raw.ttl.as_deref().ok_or_else(|| missing("ttl"))?;
    let ttl = parse_duration(ttl).map_err(|e| format!("{at}ttl: {e}"))?;
    if ttl < MIN_TTL {
        return Err(format!(
            "{at}ttl: must be at least 1s, got \"{}\"",
            format_duration(ttl)
        ));
    }
    let key_file = raw.tsig_key.as_deref().ok_or_else(|| missing("tsig_key"))?;
    let tsig_key = load_key_file(Path::new(key_file))
        .map_err(|e| format!("{at}tsig_key \"{key_file}\": {e}"))?;
    Ok(DnsConfig {
        server,
        zone: zone.to_ascii_lowercase(),
        name: name.to_ascii_lowercase(),
        ttl,
        tsig_key_file: PathBuf::from(key_file),
        tsig_key,
    })
}

/// An absolute DNS name: labels of letters, digits, `-` and `_`, ending in `.`.
fn check_absolute_name(name: &str) -> Result<(), &'static str> {
    let Some(relative) = name.strip_suffix('.') else {
        return Err("must be an absolute name ending in \".\"");
    };
    if relative.is_empty() {
        return Err("the root zone cannot be updated here");
    }
    let valid = relative.len() <= 253
        && relative.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err("invalid DNS name (labels of letters, digits, '-' and '_', at most 63 characters)")
    }
}

fn is_inside_zone(name: &str, zone: &str) -> bool {
    let (name, zone) = (name.to_ascii_lowercase(), zone.to_ascii_lowercase());
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// Apply the keys present in `raw` on top of `s`. `prefix` starts every key
/// path: `"defaults."` or `"service \"db\": "`.
fn apply_settings(s: &mut Settings, raw: &RawSettings, prefix: &str) -> Result<(), String> {
    let duration = |key: &str, value: &Option<String>| -> Result<Option<Duration>, String> {
        value
            .as_deref()
            .map(|v| parse_duration(v).map_err(|e| format!("{prefix}{key}: {e}")))
            .transpose()
    };
    let positive = |key: &str, value: &Option<String>| -> Result<Option<Duration>, String> {
        match duration(key, value)? {
            Some(d) if d.is_zero() => Err(format!(
                "{prefix}{key}: must be greater than 0s, got \"{}\"",
                value.as_deref().unwrap_or_default()
            )),
            d => Ok(d),
        }
    };
    let at_least_one = |key: &str, value: Option<u32>| -> Result<Option<u32>, String> {
        match value {
            Some(0) => Err(format!("{prefix}{key}: must be at least 1, got 0")),
            v => Ok(v),
        }
    };
    let one_of = |key: &str, value: &str, allowed: &[&str]| -> String {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "{prefix}{key}: invalid value \"{value}\", expected {}",
            list.join(" or ")
        )
    };

    if let Some(d) = positive("connect_timeout", &raw.connect_timeout)? {
        s.connect_timeout = d;
    }
    if let Some(d) = duration("idle_timeout", &raw.idle_timeout)? {
        s.idle_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = positive("check_interval", &raw.check_interval)? {
        s.check_interval = d;
    }
    if let Some(d) = positive("check_timeout", &raw.check_timeout)? {
        s.check_timeout = d;
    }
    if let Some(n) = at_least_one("fall", raw.fall)? {
        s.fall = n;
    }
    if let Some(n) = at_least_one("rise", raw.rise)? {
        s.rise = n;
    }
    if let Some(n) = raw.passive_errors {
        s.passive_errors = n;
    }
    if let Some(v) = raw.failback.as_deref() {
        s.failback = match v {
            "auto" => Failback::Auto,
            "manual" => Failback::Manual,
            _ => return Err(one_of("failback", v, &["auto", "manual"])),
        };
    }
    if let Some(d) = duration("failback_delay", &raw.failback_delay)? {
        s.failback_delay = d;
    }
    if let Some(v) = raw.on_switch.as_deref() {
        s.on_switch = match v {
            "close" => OnSwitch::Close,
            "keep" => OnSwitch::Keep,
            _ => return Err(one_of("on_switch", v, &["close", "keep"])),
        };
    }
    if let Some(n) = raw.max_connections {
        s.max_connections = usize::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_CONNECTIONS_LIMIT)
            .ok_or_else(|| {
                format!(
                    "{prefix}max_connections: {n} is too large (at most 1000000; 0 = unlimited)"
                )
            })?;
    }
    if let Some(b) = raw.zero_copy {
        s.zero_copy = b;
    }
    if let Some(v) = &raw.check_send {
        s.check_send = v.as_bytes().to_vec();
    }
    if let Some(v) = &raw.check_expect {
        s.check_expect = v.as_bytes().to_vec();
    }
    if let Some(v) = &raw.notify {
        if v.first().is_some_and(|cmd| cmd.is_empty()) {
            return Err(format!(
                "{prefix}notify: the first element (the command) is empty"
            ));
        }
        s.notify = v.clone();
    }
    if let Some(v) = raw.check.as_deref() {
        s.check = match v {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            "redis" => CheckKind::Redis,
            "postgres" => CheckKind::Postgres,
            _ => return Err(one_of("check", v, &["tcp", "http", "redis", "postgres"])),
        };
    }
    if let Some(port) = raw.check_port {
        let port = u16::try_from(port).map_err(|_| {
            format!(
                "{prefix}check_port: {port} is out of range (0-65535; 0 = the backend's own port)"
            )
        })?;
        s.check_port = (port != 0).then_some(port);
    }
    if let Some(path) = &raw.check_path {
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "{prefix}check_path \"{}\": must start with \"/\" and contain no spaces, e.g. \"/primary\"",
                path.escape_debug()
            ));
        }
        s.check_path = path.clone();
    }
    if let Some(user) = &raw.check_user {
        s.check_user = user.clone();
    }
    if let Some(db) = &raw.check_database {
        s.check_database = db.clone();
    }
    if let Some(file) = &raw.check_password_file {
        s.check_password = if file.is_empty() {
            None
        } else {
            Some(
                read_password(Path::new(file))
                    .map_err(|why| format!("{prefix}check_password_file \"{file}\": {why}"))?,
            )
        };
    }
    if let Some(d) = duration("hold_timeout", &raw.hold_timeout)? {
        s.hold_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(v) = raw.send_proxy.as_deref() {
        s.send_proxy = match v {
            "off" => ProxyVersion::Off,
            "v1" => ProxyVersion::V1,
            "v2" => ProxyVersion::V2,
            _ => return Err(one_of("send_proxy", v, &["off", "v1", "v2"])),
        };
    }
    if let Some(b) = raw.accept_proxy {
        s.accept_proxy = b;
    }
    if let Some(entries) = &raw.allow {
        s.allow = AllowList::parse(entries).map_err(|why| format!("{prefix}{why}"))?;
    }
    Ok(())
}

/// The first line of a password file, without its line ending.
fn read_password(path: &Path) -> Result<Secret, String> {
    let text = super::read_small_file(path, super::SECRET_FILE_MAX_BYTES)
        .map_err(|e| format!("cannot read: {e}"))?;
    let line = text.lines().next().unwrap_or("");
    Ok(Secret::new(line.trim_end_matches('\r').to_string()))
}

/// Rules over several keys, on effective settings.
fn check_combination(s: &Settings, prefix: &str) -> Result<(), String> {
    if s.check_timeout > s.check_interval {
        return Err(format!(
            "{prefix}check_timeout ({}) must not exceed check_interval ({})",
            format_duration(s.check_timeout),
            format_duration(s.check_interval)
        ));
    }
    if s.check != CheckKind::Tcp {
        for (key, value) in [
            ("check_send", &s.check_send),
            ("check_expect", &s.check_expect),
        ] {
            if !value.is_empty() {
                return Err(format!(
                    "{prefix}{key}: only with check = \"tcp\" (check is \"{}\")",
                    s.check.as_str()
                ));
            }
        }
    }
    Ok(())
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

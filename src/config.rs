//! Config model: TOML on disk -> validated [`Config`] in memory.
//!
//! Parsing happens in two steps: serde turns the text into raw structs
//! (`deny_unknown_fields`, so typos fail), then `validate` checks the rules
//! of SPEC.md and resolves `[defaults]` into effective per-service
//! [`Settings`]. Nothing here touches the network or the running proxy.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A fully validated config: every service carries its effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (used in messages and for reload).
    pub path: PathBuf,
    pub admin: Admin,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Prometheus scrape address; `None` = no metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Control socket path; `None` = no control socket.
    pub socket: Option<PathBuf>,
    /// SIGTERM drain deadline. Default 30s.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub freebind: bool,
    pub settings: Settings,
    /// Priority order: index 0 is the primary.
    pub backends: Vec<BackendConfig>,
}

/// Effective per-service settings (`[defaults]` overridden by the service).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// `None` when configured as "0s" (never).
    pub idle_timeout: Option<Duration>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    /// 0 = passive detection off.
    pub passive_errors: u32,
    pub failback: Failback,
    pub failback_delay: Duration,
    pub on_switch: OnSwitch,
    /// 0 = unlimited.
    pub max_connections: usize,
    pub zero_copy: bool,
    /// Bytes sent after a check connects; empty = none.
    pub check_send: Vec<u8>,
    /// Required prefix of the reply; empty = connect alone suffices.
    pub check_expect: Vec<u8>,
    /// Command and args run on every switch; empty = none.
    pub notify: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Some(Duration::from_secs(3600)),
            check_interval: Duration::from_millis(500),
            check_timeout: Duration::from_millis(500),
            fall: 3,
            rise: 2,
            passive_errors: 3,
            failback: Failback::Auto,
            failback_delay: Duration::ZERO,
            on_switch: OnSwitch::Close,
            max_connections: 0,
            zero_copy: true,
            check_send: Vec::new(),
            check_expect: Vec::new(),
            notify: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSwitch {
    Close,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub address: BackendAddress,
}

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

/// A config that cannot be used. `Display` gives the whole message, starting
/// with the file name, e.g.
/// `failoverd.toml: service "db": backend "standby": address "10.0.0.12": missing port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the file, as given by the user.
    pub file: String,
    /// Everything after `FILE: `.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(path, format!("cannot read config: {e}")))?;
    parse(&text, path)
}

/// Parse and validate `text` as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| config_error(path, toml_message(text, &e)))?;
    validate(raw, path).map_err(|message| config_error(path, message))
}

/// Parse a duration with a unit: "250ms", "2s", "1m", "1h".
///
/// The number may have a decimal fraction ("1.5s"); it may not be negative
/// and the unit is required. The error names the bad value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration \"{text}\": {why}");
    if text.is_empty() {
        return Err(bad(
            "empty (expected e.g. \"500ms\", \"2s\", \"1m\", \"1h\")",
        ));
    }
    if text.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(bad("missing number (expected e.g. \"500ms\", \"2s\")"));
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "" => return Err(bad("missing unit (use ms, s, m or h)")),
        _ => return Err(bad(&format!("unknown unit \"{unit}\" (use ms, s, m or h)"))),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad("malformed number"));
    }
    if fraction.len() > 9 {
        return Err(bad("too many decimal places"));
    }
    let too_large = || bad("too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| bad("malformed number"))?;
        let scale = 10u128.pow(fraction.len() as u32);
        nanos = nanos
            .checked_add(digits * unit_nanos / scale)
            .ok_or_else(too_large)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is < 1e9, so it fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Format a duration the way the config file writes it: "0s", "250ms",
/// "2s", "1m", "1h"; the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000 * MS;
    const M: u128 = 60 * S;
    const H: u128 = 60 * M;
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(H) {
        format!("{}h", nanos / H)
    } else if nanos.is_multiple_of(M) {
        format!("{}m", nanos / M)
    } else if nanos.is_multiple_of(S) {
        format!("{}s", nanos / S)
    } else if nanos.is_multiple_of(MS) {
        format!("{}ms", nanos / MS)
    } else {
        format!("{d:?}")
    }
}

impl Config {
    /// The one-screen summary printed by `failoverd check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        use std::fmt::Write as _;
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
        for svc in &self.services {
            let s = &svc.settings;
            writeln!(out)?;
            let freebind = if svc.freebind { " (freebind)" } else { "" };
            writeln!(
                out,
                "service \"{}\" listen {}{freebind}",
                svc.name, svc.listen
            )?;
            for (i, b) in svc.backends.iter().enumerate() {
                let role = if i == 0 { "primary" } else { "backup" };
                writeln!(out, "  {}. {} {} ({role})", i + 1, b.name, b.address)?;
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
            writeln!(
                out,
                "  check_interval {}, check_timeout {}, fall {}, rise {}, passive_errors {passive}",
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
                "  failback {failback}, failback_delay {}, on_switch {on_switch}",
                format_duration(s.failback_delay)
            )?;
            if !s.notify.is_empty() {
                writeln!(out, "  notify {:?}", s.notify)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Raw serde model: what the file may contain, before any checking.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin: Option<RawAdmin>,
    defaults: Option<RawSettings>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    metrics: Option<String>,
    socket: Option<String>,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Option<String>,
    address: Option<String>,
}

/// Defines `RawSettings` (the `[defaults]` table) and `RawService`, which
/// accepts the same keys as overrides, from one list of setting keys.
macro_rules! raw_settings {
    ($($key:ident: $ty:ty),* $(,)?) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawSettings {
            $($key: Option<$ty>,)*
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawService {
            name: Option<String>,
            listen: Option<String>,
            #[serde(default)]
            freebind: bool,
            #[serde(default)]
            backend: Vec<RawBackend>,
            $($key: Option<$ty>,)*
        }

        impl RawService {
            /// The setting keys this service overrides.
            fn overrides(&self) -> RawSettings {
                RawSettings {
                    $($key: self.$key.clone(),)*
                }
            }
        }
    };
}

raw_settings! {
    connect_timeout: String,
    idle_timeout: String,
    check_interval: String,
    check_timeout: String,
    fall: u32,
    rise: u32,
    passive_errors: u32,
    failback: String,
    failback_delay: String,
    on_switch: String,
    max_connections: usize,
    zero_copy: bool,
    check_send: String,
    check_expect: String,
    notify: Vec<String>,
}

// ---------------------------------------------------------------------------
// Validation: raw model -> Config. Errors are the message after `FILE: `.

fn config_error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        message,
    }
}

/// One-line rendering of a toml error: `line N, column C: SOURCE LINE: message`.
fn toml_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    let Some(span) = err.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("").trim();
    if line_text.is_empty() {
        return format!("line {line_no}, column {column}: {message}");
    }
    let mut shown: String = line_text.chars().take(80).collect();
    if shown.len() < line_text.len() {
        shown.push_str("...");
    }
    format!("line {line_no}, column {column}: {shown}: {message}")
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, String> {
    let admin = validate_admin(raw.admin)?;

    let mut base = Settings::default();
    if let Some(defaults) = &raw.defaults {
        apply_settings(&mut base, defaults, "defaults.")?;
        check_timing(&base, "defaults: ")?;
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
        if let Some(other) = services.iter().find(|s| s.listen == service.listen) {
            return Err(format!(
                "service \"{}\": listen \"{}\": already used by service \"{}\"",
                service.name, service.listen, other.name
            ));
        }
        services.push(service);
    }

    Ok(Config {
        path: path.to_path_buf(),
        admin,
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
    if !is_valid_service_name(name) {
        return Err(format!(
            "service \"{name}\": invalid name, must match [a-zA-Z0-9_.-]+"
        ));
    }
    let prefix = format!("service \"{name}\": ");

    let listen = match rs.listen.as_deref() {
        None => return Err(format!("{prefix}missing key \"listen\"")),
        Some(listen) => parse_ip_socket_addr(listen)
            .map_err(|why| format!("{prefix}listen \"{listen}\": {why}"))?,
    };

    let mut settings = base.clone();
    apply_settings(&mut settings, &rs.overrides(), &prefix)?;
    // Effective values; [defaults] alone was checked above, so a failure
    // here involves this service's own check_interval or check_timeout.
    check_timing(&settings, &prefix)?;

    if rs.backend.is_empty() {
        return Err(format!(
            "{prefix}no [[service.backend]] defined; at least one is required"
        ));
    }
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(rs.backend.len());
    for (bi, rb) in rs.backend.iter().enumerate() {
        let bnum = bi + 1;
        let bname = match rb.name.as_deref() {
            None => return Err(format!("{prefix}backend #{bnum}: missing key \"name\"")),
            Some("") => return Err(format!("{prefix}backend #{bnum}: name is empty")),
            Some(n) => n,
        };
        let address = match rb.address.as_deref() {
            None => {
                return Err(format!(
                    "{prefix}backend \"{bname}\": missing key \"address\""
                ));
            }
            Some(a) => parse_backend_address(a)
                .map_err(|why| format!("{prefix}backend \"{bname}\": address \"{a}\": {why}"))?,
        };
        if let Some(first) = backends.iter().position(|b| b.name == bname) {
            return Err(format!(
                "{prefix}backend \"{bname}\": duplicate backend name (backends #{} and #{bnum})",
                first + 1
            ));
        }
        backends.push(BackendConfig {
            name: bname.to_string(),
            address,
        });
    }

    Ok(ServiceConfig {
        name: name.to_string(),
        listen,
        freebind: rs.freebind,
        settings,
        backends,
    })
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

    if let Some(d) = positive("connect_timeout", &raw.connect_timeout)? {
        s.connect_timeout = d;
    }
    if let Some(d) = duration("idle_timeout", &raw.idle_timeout)? {
        s.idle_timeout = if d.is_zero() { None } else { Some(d) };
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
            _ => {
                return Err(format!(
                    "{prefix}failback: invalid value \"{v}\", expected \"auto\" or \"manual\""
                ));
            }
        };
    }
    if let Some(d) = duration("failback_delay", &raw.failback_delay)? {
        s.failback_delay = d;
    }
    if let Some(v) = raw.on_switch.as_deref() {
        s.on_switch = match v {
            "close" => OnSwitch::Close,
            "keep" => OnSwitch::Keep,
            _ => {
                return Err(format!(
                    "{prefix}on_switch: invalid value \"{v}\", expected \"close\" or \"keep\""
                ));
            }
        };
    }
    if let Some(n) = raw.max_connections {
        s.max_connections = n;
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
    Ok(())
}

/// `check_timeout` <= `check_interval` on effective settings.
fn check_timing(s: &Settings, prefix: &str) -> Result<(), String> {
    if s.check_timeout > s.check_interval {
        return Err(format!(
            "{prefix}check_timeout ({}) must not exceed check_interval ({})",
            format_duration(s.check_timeout),
            format_duration(s.check_interval)
        ));
    }
    Ok(())
}

fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Split `host:port` or `[v6]:port`. Returns the host (without brackets),
/// whether it was bracketed, and the port (1..=65535, or 0 when
/// `allow_zero`: a listener on port 0 gets one from the kernel).
fn split_host_port(text: &str, allow_zero: bool) -> Result<(&str, bool, u16), &'static str> {
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
fn parse_ip_socket_addr(text: &str) -> Result<SocketAddr, String> {
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
fn parse_backend_address(text: &str) -> Result<BackendAddress, String> {
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
fn is_valid_hostname(host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "failoverd.toml";

    fn ok(text: &str) -> Config {
        match parse(text, Path::new(FILE)) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    /// Parse `text`, expect an error, check it starts with the file name and
    /// return the whole message.
    fn err(text: &str) -> String {
        match parse(text, Path::new(FILE)) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => {
                assert_eq!(e.file, FILE);
                let shown = e.to_string();
                assert!(shown.starts_with("failoverd.toml: "), "{shown}");
                assert!(!shown.contains('\n'), "one line: {shown}");
                shown
            }
        }
    }

    fn assert_contains(message: &str, needles: &[&str]) {
        for needle in needles {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    /// A minimal valid service with `extra` lines in the service table.
    fn service(extra: &str) -> String {
        format!(
            "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n{extra}\n\
             [[service.backend]]\nname = \"primary\"\naddress = \"10.0.0.11:5432\"\n"
        )
    }

    /// A valid config with one service whose backends are given as
    /// (name, address) pairs.
    fn with_backends(backends: &[(&str, &str)]) -> String {
        let mut text = "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n".to_string();
        for (name, address) in backends {
            text.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{address}\"\n"
            ));
        }
        text
    }

    const FULL: &str = r#"
[admin]
metrics = "127.0.0.1:9898"
socket = "/run/failoverd/failoverd.sock"
shutdown_timeout = "10s"

[defaults]
connect_timeout = "2s"
idle_timeout = "30m"
check_interval = "1s"
check_timeout = "750ms"
fall = 4
rise = 3
passive_errors = 0
failback = "manual"
failback_delay = "5s"
on_switch = "keep"
max_connections = 100
zero_copy = false
check_send = "PING\r\n"
check_expect = "+PONG"
notify = ["/bin/notify", "--x"]

[[service]]
name = "db"
listen = "10.0.0.100:5432"
freebind = true

  [[service.backend]]
  name = "primary"
  address = "10.0.0.11:5432"

  [[service.backend]]
  name = "standby"
  address = "10.0.0.12:5432"
"#;

    #[test]
    fn parses_a_full_config() {
        let c = ok(FULL);
        assert_eq!(c.path, PathBuf::from(FILE));
        assert_eq!(
            c.admin,
            Admin {
                metrics: Some("127.0.0.1:9898".parse().unwrap()),
                socket: Some(PathBuf::from("/run/failoverd/failoverd.sock")),
                shutdown_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(s.name, "db");
        assert_eq!(s.listen, "10.0.0.100:5432".parse::<SocketAddr>().unwrap());
        assert!(s.freebind);
        assert_eq!(
            s.settings,
            Settings {
                connect_timeout: Duration::from_secs(2),
                idle_timeout: Some(Duration::from_secs(1800)),
                check_interval: Duration::from_secs(1),
                check_timeout: Duration::from_millis(750),
                fall: 4,
                rise: 3,
                passive_errors: 0,
                failback: Failback::Manual,
                failback_delay: Duration::from_secs(5),
                on_switch: OnSwitch::Keep,
                max_connections: 100,
                zero_copy: false,
                check_send: b"PING\r\n".to_vec(),
                check_expect: b"+PONG".to_vec(),
                notify: vec!["/bin/notify".to_string(), "--x".to_string()],
            }
        );
        let names: Vec<_> = s.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["primary", "standby"]);
        assert_eq!(
            s.backends[1].address,
            BackendAddress::Ip("10.0.0.12:5432".parse().unwrap())
        );
    }

    #[test]
    fn minimal_config_uses_built_in_defaults() {
        let c = ok(&service(""));
        assert_eq!(c.services[0].settings, Settings::default());
        assert!(!c.services[0].freebind);
        assert_eq!(
            c.admin,
            Admin {
                metrics: None,
                socket: None,
                shutdown_timeout: Duration::from_secs(30),
            }
        );
    }

    #[test]
    fn services_inherit_defaults_and_override_them() {
        let text = r#"
[defaults]
fall = 5
check_interval = "2s"
on_switch = "keep"

[[service]]
name = "a"
listen = "127.0.0.1:1000"
  [[service.backend]]
  name = "x"
  address = "127.0.0.1:2000"

[[service]]
name = "b"
listen = "127.0.0.1:1001"
fall = 1
on_switch = "close"
rise = 7
  [[service.backend]]
  name = "x"
  address = "127.0.0.1:2001"
"#;
        let c = ok(text);
        let a = &c.services[0].settings;
        let b = &c.services[1].settings;
        assert_eq!((a.fall, a.rise, a.on_switch), (5, 2, OnSwitch::Keep));
        assert_eq!((b.fall, b.rise, b.on_switch), (1, 7, OnSwitch::Close));
        // Inherited by both, not overridden by b.
        assert_eq!(a.check_interval, Duration::from_secs(2));
        assert_eq!(b.check_interval, Duration::from_secs(2));
        // Untouched keys keep the built-in default.
        assert_eq!(b.connect_timeout, Settings::default().connect_timeout);
    }

    #[test]
    fn idle_timeout_zero_means_never() {
        let c = ok(&service("idle_timeout = \"0s\""));
        assert_eq!(c.services[0].settings.idle_timeout, None);
        let c = ok(&service("idle_timeout = \"90s\""));
        assert_eq!(
            c.services[0].settings.idle_timeout,
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn duration_parsing_table() {
        let good = [
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25m", Duration::from_secs(15)),
            ("90s", Duration::from_secs(90)),
        ];
        for (text, want) in good {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        let bad = [
            ("5", "missing unit"),
            ("-1s", "negative"),
            ("5d", "unknown unit \"d\""),
            ("5 s", "unknown unit"),
            ("s", "missing number"),
            ("", "empty"),
            ("1.s", "malformed"),
            (".5s", "malformed"),
            ("1.2.3s", "malformed"),
            ("99999999999999999999999h", "too large"),
        ];
        for (text, why) in bad {
            let e = parse_duration(text).expect_err(text);
            assert_contains(&e, &[&format!("\"{text}\""), why]);
        }
    }

    #[test]
    fn format_duration_round_trips() {
        for text in ["0s", "250ms", "1500ms", "2s", "90s", "1m", "1h", "25h"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    // --- one test per validation rule ---

    #[test]
    fn rejects_config_without_services() {
        let e = err("[admin]\nmetrics = \"127.0.0.1:9898\"\n");
        assert_contains(&e, &["[[service]]", "at least one"]);
    }

    #[test]
    fn rejects_invalid_service_name() {
        let text = service("").replace("name = \"db\"", "name = \"my db\"");
        let e = err(&text);
        assert_contains(&e, &["service \"my db\"", "[a-zA-Z0-9_.-]+"]);
    }

    #[test]
    fn rejects_empty_service_name() {
        let text = service("").replace("name = \"db\"", "name = \"\"");
        assert_contains(&err(&text), &["service #1", "name is empty"]);
    }

    #[test]
    fn rejects_missing_listen() {
        let text = service("").replace("listen = \"10.0.0.100:5432\"", "");
        assert_contains(&err(&text), &["service \"db\"", "\"listen\""]);
    }

    #[test]
    fn rejects_duplicate_service_names() {
        let text = format!(
            "{}{}",
            service(""),
            service("").replace("10.0.0.100:5432", "10.0.0.100:5433")
        );
        assert_contains(&err(&text), &["service \"db\"", "duplicate service name"]);
    }

    #[test]
    fn rejects_duplicate_listen_addresses() {
        let text = format!(
            "{}{}",
            service(""),
            service("").replace("name = \"db\"", "name = \"db2\"")
        );
        assert_contains(
            &err(&text),
            &[
                "service \"db2\": listen \"10.0.0.100:5432\"",
                "already used by service \"db\"",
            ],
        );
    }

    #[test]
    fn rejects_hostname_as_listen_address() {
        let text = service("").replace("10.0.0.100:5432", "proxy.local:5432");
        assert_contains(
            &err(&text),
            &["service \"db\": listen \"proxy.local:5432\"", "IP address"],
        );
    }

    #[test]
    fn rejects_listen_without_port() {
        let text = service("").replace("10.0.0.100:5432", "10.0.0.100");
        assert_eq!(
            err(&text),
            "failoverd.toml: service \"db\": listen \"10.0.0.100\": missing port"
        );
    }

    #[test]
    fn rejects_service_without_backends() {
        let text = "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n";
        assert_contains(&err(text), &["service \"db\"", "[[service.backend]]"]);
    }

    #[test]
    fn rejects_duplicate_backend_names() {
        let text = with_backends(&[("primary", "10.0.0.11:5432"), ("primary", "10.0.0.12:5432")]);
        assert_contains(
            &err(&text),
            &[
                "service \"db\": backend \"primary\"",
                "duplicate backend name",
            ],
        );
    }

    #[test]
    fn rejects_empty_backend_name() {
        let text = with_backends(&[("primary", "10.0.0.11:5432"), ("", "10.0.0.12:5432")]);
        assert_contains(
            &err(&text),
            &["service \"db\": backend #2", "name is empty"],
        );
    }

    #[test]
    fn rejects_backend_address_without_port() {
        let text = with_backends(&[("primary", "10.0.0.11:5432"), ("standby", "10.0.0.12")]);
        assert_eq!(
            err(&text),
            "failoverd.toml: service \"db\": backend \"standby\": address \"10.0.0.12\": missing port"
        );
    }

    #[test]
    fn rejects_backend_address_with_invalid_port() {
        for bad in [
            "10.0.0.11:0",
            "10.0.0.11:65536",
            "10.0.0.11:pg",
            "db.local:+5",
        ] {
            let text = with_backends(&[("primary", bad)]);
            assert_contains(
                &err(&text),
                &[&format!("address \"{bad}\""), "invalid port"],
            );
        }
    }

    #[test]
    fn rejects_malformed_backend_addresses() {
        let cases = [
            ("10.0.0.300:5432", "invalid IPv4 address"),
            ("[fd00::zz]:5432", "invalid IPv6 address"),
            ("fd00::1:5432", "brackets"),
            ("[fd00::1]", "missing port"),
            ("db_1.local:5432", "invalid hostname"),
            ("-db.local:5432", "invalid hostname"),
            (":5432", "missing host"),
        ];
        for (bad, why) in cases {
            let text = with_backends(&[("primary", bad)]);
            assert_contains(
                &err(&text),
                &[&format!("backend \"primary\": address \"{bad}\""), why],
            );
        }
    }

    #[test]
    fn rejects_check_timeout_above_check_interval() {
        let text = service("check_interval = \"1s\"\ncheck_timeout = \"2s\"");
        assert_contains(
            &err(&text),
            &[
                "service \"db\"",
                "check_timeout (2s)",
                "check_interval (1s)",
            ],
        );
    }

    #[test]
    fn rejects_check_timeout_above_check_interval_in_defaults() {
        let text = format!("[defaults]\ncheck_timeout = \"1s\"\n{}", service(""));
        assert_contains(
            &err(&text),
            &["defaults", "check_timeout (1s)", "check_interval (500ms)"],
        );
    }

    #[test]
    fn rejects_zero_fall() {
        let text = service("fall = 0");
        assert_contains(&err(&text), &["service \"db\": fall", "at least 1"]);
    }

    #[test]
    fn rejects_zero_rise_in_defaults() {
        let text = format!("[defaults]\nrise = 0\n{}", service(""));
        assert_contains(&err(&text), &["defaults.rise", "at least 1"]);
    }

    #[test]
    fn rejects_negative_integers() {
        let e = err(&service("passive_errors = -1"));
        assert_contains(&e, &["line 4", "passive_errors = -1", "-1"]);
        let e = err(&service("max_connections = -5"));
        assert_contains(&e, &["line 4", "max_connections = -5"]);
    }

    #[test]
    fn rejects_duration_without_unit() {
        let text = format!("[defaults]\ncheck_timeout = \"5\"\n{}", service(""));
        assert_eq!(
            err(&text),
            "failoverd.toml: defaults.check_timeout: invalid duration \"5\": \
             missing unit (use ms, s, m or h)"
        );
    }

    #[test]
    fn rejects_bad_durations_naming_the_key() {
        let e = err(&service("connect_timeout = \"3x\""));
        assert_contains(
            &e,
            &["service \"db\": connect_timeout", "\"3x\"", "unknown unit"],
        );
        let e = err(&format!(
            "[admin]\nshutdown_timeout = \"-1s\"\n{}",
            service("")
        ));
        assert_contains(&e, &["admin.shutdown_timeout", "\"-1s\"", "negative"]);
        let e = err(&service("failback_delay = \"soon\""));
        assert_contains(&e, &["service \"db\": failback_delay", "\"soon\""]);
    }

    #[test]
    fn rejects_zero_check_interval() {
        let e = err(&service("check_interval = \"0s\""));
        assert_contains(&e, &["service \"db\": check_interval", "greater than 0s"]);
    }

    #[test]
    fn rejects_unknown_failback_value() {
        let e = err(&service("failback = \"sometimes\""));
        assert_contains(
            &e,
            &["service \"db\": failback", "\"sometimes\"", "\"manual\""],
        );
    }

    #[test]
    fn rejects_unknown_on_switch_value() {
        let e = err(&format!(
            "[defaults]\non_switch = \"drain\"\n{}",
            service("")
        ));
        assert_contains(&e, &["defaults.on_switch", "\"drain\"", "\"keep\""]);
    }

    #[test]
    fn rejects_notify_with_empty_command() {
        let e = err(&service("notify = [\"\", \"arg\"]"));
        assert_contains(&e, &["service \"db\": notify", "empty"]);
    }

    #[test]
    fn accepts_empty_notify() {
        let c = ok(&service("notify = []"));
        assert!(c.services[0].settings.notify.is_empty());
    }

    #[test]
    fn rejects_metrics_address_that_is_not_an_ip_socket_address() {
        let e = err(&format!(
            "[admin]\nmetrics = \"localhost:9898\"\n{}",
            service("")
        ));
        assert_contains(&e, &["admin.metrics \"localhost:9898\"", "IP address"]);
    }

    #[test]
    fn rejects_empty_admin_socket() {
        let e = err(&format!("[admin]\nsocket = \"\"\n{}", service("")));
        assert_contains(&e, &["admin.socket", "empty"]);
    }

    // --- TOML types, syntax and unknown keys ---

    #[test]
    fn rejects_wrong_type_with_line_number() {
        let e = err(&service("fall = \"3\""));
        assert_contains(&e, &["line 4", "fall = \"3\"", "invalid type", "u32"]);
    }

    #[test]
    fn rejects_string_for_bool_and_int_for_duration() {
        assert_contains(
            &err(&service("freebind = \"yes\"")),
            &["line 4", "freebind"],
        );
        assert_contains(
            &err(&service("check_interval = 5")),
            &["line 4", "check_interval"],
        );
    }

    #[test]
    fn rejects_toml_syntax_errors_with_line_number() {
        let e = err("[[service]]\nname = \"db\nlisten = 1\n");
        assert_contains(&e, &["line 2"]);
    }

    #[test]
    fn rejects_unknown_top_level_key() {
        let text = format!("{}[[services]]\nname = \"x\"\n", service(""));
        assert_contains(&err(&text), &["line 8", "services", "unknown field"]);
    }

    #[test]
    fn rejects_unknown_key_in_admin() {
        let text = format!("[admin]\nmetric = \"127.0.0.1:1\"\n{}", service(""));
        assert_contains(&err(&text), &["line 2", "metric", "unknown field"]);
    }

    #[test]
    fn rejects_unknown_key_in_defaults() {
        let text = format!("[defaults]\nfal = 3\n{}", service(""));
        assert_contains(&err(&text), &["line 2", "`fal`", "unknown field"]);
    }

    #[test]
    fn rejects_unknown_key_in_service() {
        let e = err(&service("chek_interval = \"1s\""));
        assert_contains(&e, &["line 4", "chek_interval", "unknown field"]);
    }

    #[test]
    fn rejects_unknown_key_in_backend() {
        let text = format!("{}weight = 10\n", service(""));
        assert_contains(&err(&text), &["line 8", "weight", "unknown field"]);
    }

    // --- address forms ---

    #[test]
    fn accepts_ipv6_listen_and_backend() {
        let text =
            with_backends(&[("v6", "[fd00::11]:5432")]).replace("10.0.0.100:5432", "[::1]:15432");
        let c = ok(&text);
        let s = &c.services[0];
        assert_eq!(s.listen, "[::1]:15432".parse::<SocketAddr>().unwrap());
        assert_eq!(
            s.backends[0].address,
            BackendAddress::Ip("[fd00::11]:5432".parse().unwrap())
        );
        assert_eq!(s.backends[0].address.to_string(), "[fd00::11]:5432");
    }

    #[test]
    fn accepts_hostname_backend() {
        let c = ok(&with_backends(&[("dns", "db-1.example.internal:5432")]));
        assert_eq!(
            c.services[0].backends[0].address,
            BackendAddress::Host {
                host: "db-1.example.internal".to_string(),
                port: 5432
            }
        );
        let c = ok(&with_backends(&[("dns", "localhost:6379")]));
        assert_eq!(
            c.services[0].backends[0].address.to_string(),
            "localhost:6379"
        );
    }

    // --- files ---

    #[test]
    fn load_reports_missing_file() {
        let e = load(Path::new("/nonexistent/failoverd.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/failoverd.toml");
        let shown = e.to_string();
        assert!(
            shown.starts_with("/nonexistent/failoverd.toml: cannot read config: "),
            "{shown}"
        );
    }

    #[test]
    fn error_starts_with_the_path_as_given() {
        let e = parse("", Path::new("conf/x.toml")).unwrap_err();
        assert!(e.to_string().starts_with("conf/x.toml: "), "{e}");
    }

    #[test]
    fn example_config_is_valid() {
        let c = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config.example.toml"
        )))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.admin.metrics, Some("127.0.0.1:9898".parse().unwrap()));
        assert_eq!(
            c.admin.socket,
            Some(PathBuf::from("/run/failoverd/failoverd.sock"))
        );
        let services: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["db", "web"]);
        let db = &c.services[0];
        assert!(db.freebind);
        assert_eq!(db.listen, "10.0.0.100:5432".parse::<SocketAddr>().unwrap());
        let order: Vec<_> = db.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(order, ["primary", "standby", "dr"]);
        let web = &c.services[1];
        assert_eq!(
            web.settings.check_send,
            b"GET /healthz HTTP/1.0\r\nHost: web\r\n\r\n"
        );
        assert_eq!(web.settings.check_expect, b"HTTP/1.1 200");
    }

    #[test]
    fn summary_lists_backends_in_priority_order_and_timings() {
        let c = ok(FULL);
        let s = c.summary();
        assert_contains(
            &s,
            &[
                "service \"db\" listen 10.0.0.100:5432 (freebind)",
                "1. primary 10.0.0.11:5432 (primary)",
                "2. standby 10.0.0.12:5432 (backup)",
                "connect_timeout 2s",
                "idle_timeout 30m",
                "check_interval 1s, check_timeout 750ms, fall 4, rise 3, passive_errors off",
                "failback manual, failback_delay 5s, on_switch keep",
                "max_connections 100",
                "zero_copy off",
                "metrics http://127.0.0.1:9898/metrics",
                "socket /run/failoverd/failoverd.sock",
                "shutdown_timeout 10s",
                "check_send \"PING\\r\\n\"",
            ],
        );
        let primary = s.find("1. primary").unwrap();
        let standby = s.find("2. standby").unwrap();
        assert!(primary < standby);
    }
}

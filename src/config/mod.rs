//! Config model: TOML on disk -> validated [`Config`] in memory.
//!
//! Parsing happens in two steps: serde turns the text into raw structs
//! (`raw.rs`, `deny_unknown_fields`, so typos fail), then `validate.rs`
//! checks the rules of SPEC.md and resolves `[defaults]` into effective
//! per-service [`Settings`]. Durations and addresses have their own small
//! parsers (`duration.rs`, `address.rs`); `summary.rs` renders what
//! `failoverd check` prints. Nothing here touches the network or the running
//! proxy; the only files read besides the config are the ones it names
//! (password and TSIG key files), so that a config that validates never
//! fails later for want of them.

mod address;
mod allow;
mod duration;
mod raw;
mod summary;
mod tsig;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use address::BackendAddress;
pub use allow::AllowList;
pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use tsig::{KeyAlgorithm, TsigKey, load_key_file, parse_key};

/// The most `max_connections` may be (SPEC.md: Validation).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// A fully validated config: every service carries its effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (used in messages and for reload).
    pub path: PathBuf,
    pub admin: Admin,
    /// `[cluster]`: decide together with other instances through etcd.
    pub cluster: Option<ClusterConfig>,
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

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd v3 endpoints, `http://host:port` or `https://host:port`.
    pub etcd: Vec<String>,
    /// This instance's member name (default: the host name).
    pub name: String,
    /// Key prefix shared by the instances of one cluster, without a trailing `/`.
    pub prefix: String,
    /// Lease time to live.
    pub ttl: Duration,
    pub on_lost: OnLost,
}

/// What an instance that lost etcd for longer than `ttl` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// Stop accepting and close connections until it is a member again.
    Close,
    /// Keep forwarding to the last agreed backend.
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// `None` for a DNS-only service (monitor and publish).
    pub listen: Option<SocketAddr>,
    pub freebind: bool,
    pub settings: Settings,
    /// Priority order: index 0 is the primary.
    pub backends: Vec<BackendConfig>,
    /// `[service.dns]`: publish the active backend in DNS.
    pub dns: Option<DnsConfig>,
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
    /// 0 = unlimited; at most [`MAX_CONNECTIONS_LIMIT`].
    pub max_connections: usize,
    pub zero_copy: bool,
    /// Bytes sent after a check connects; empty = none (`check = "tcp"` only).
    pub check_send: Vec<u8>,
    /// Required prefix of the reply; empty = connect alone suffices.
    pub check_expect: Vec<u8>,
    /// Command and args run on every switch; empty = none.
    pub notify: Vec<String>,
    pub check: CheckKind,
    /// Probe this port instead of the backend's traffic port; `None` = same port.
    pub check_port: Option<u16>,
    /// `check = "http"`: the path of the GET (starts with `/`).
    pub check_path: String,
    /// `check = "redis"`: ACL user (empty = none); `"postgres"`: role
    /// (empty = `postgres`). See [`Settings::check_user_for`].
    pub check_user: String,
    /// `check = "postgres"`: database (empty = `postgres`).
    pub check_database: String,
    /// The first line of `check_password_file`, read at load and at every
    /// reload (so a rotated password is picked up by SIGHUP).
    pub check_password: Option<Secret>,
    /// `None` = do not hold: close a client no backend can take at once.
    pub hold_timeout: Option<Duration>,
    pub send_proxy: ProxyVersion,
    pub accept_proxy: bool,
    /// Allowed client networks; empty = everyone.
    pub allow: AllowList,
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
            check: CheckKind::Tcp,
            check_port: None,
            check_path: "/".to_string(),
            check_user: String::new(),
            check_database: String::new(),
            check_password: None,
            hold_timeout: None,
            send_proxy: ProxyVersion::Off,
            accept_proxy: false,
            allow: AllowList::default(),
        }
    }
}

impl Settings {
    /// The user a role check logs in as: `check_user`, or `postgres` for a
    /// PostgreSQL check without one; `None` = no user (Redis `AUTH password`).
    pub fn check_user_for(&self) -> Option<&str> {
        match (self.check, self.check_user.as_str()) {
            (CheckKind::Postgres, "") => Some("postgres"),
            (_, "") => None,
            (_, user) => Some(user),
        }
    }

    /// The database a PostgreSQL check connects to.
    pub fn check_database_or_default(&self) -> &str {
        if self.check_database.is_empty() {
            "postgres"
        } else {
            &self.check_database
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

/// The kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect, then `check_send` / `check_expect` if set.
    Tcp,
    /// `GET check_path`; a 2xx status passes.
    Http,
    /// `ROLE`; passes only as `master`.
    Redis,
    /// `SELECT pg_is_in_recovery()`; passes only on a writable primary.
    Postgres,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Redis => "redis",
            CheckKind::Postgres => "postgres",
        }
    }

    /// A role-aware check: a backend failing it accepts connections but
    /// must not take traffic, so it is never a last-resort try, and it takes
    /// no traffic until its first check passed (SPEC.md: Start-up).
    pub fn is_role_aware(self) -> bool {
        self != CheckKind::Tcp
    }
}

/// PROXY protocol version written to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    Off,
    V1,
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::Off => "off",
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub address: BackendAddress,
    /// The address `[service.dns]` publishes for this backend: `publish`,
    /// else the IP of `address`. `None` only for a hostname backend of a
    /// service without DNS.
    pub publish: Option<IpAddr>,
}

/// `[service.dns]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// The authoritative server that accepts updates for the zone.
    pub server: SocketAddr,
    /// Absolute zone name, ending in `.`.
    pub zone: String,
    /// Absolute record name inside `zone`.
    pub name: String,
    pub ttl: Duration,
    /// Where the key was read from (for the summary).
    pub tsig_key_file: PathBuf,
    pub tsig_key: TsigKey,
}

/// A secret read from a file: compared and cloned like a string, never
/// printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
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

/// The largest config file failoverd reads.
pub const CONFIG_MAX_BYTES: u64 = 16 << 20;

/// The largest password or key file a config may name.
pub const SECRET_FILE_MAX_BYTES: u64 = 64 << 10;

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_small_file(path, CONFIG_MAX_BYTES)
        .map_err(|e| config_error(path, format!("cannot read config: {e}")))?;
    parse(&text, path)
}

/// Read a regular text file of at most `limit` bytes. A device, a FIFO or
/// a huge file is refused instead of read forever (`/dev/zero` never ends).
pub(crate) fn read_small_file(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::IsADirectory, "is a directory"));
    }
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// Parse and validate `text` as if read from `path`. Relative file names
/// in the config (`check_password_file`, `tsig_key`) are taken relative to
/// the working directory, as the operator typed them.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| config_error(path, toml_message(text, &e)))?;
    validate::validate(raw, path).map_err(|message| config_error(path, message))
}

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

#[cfg(test)]
mod tests;

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
    todo!()
}

/// Parse and validate `text` as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    todo!()
}

/// Parse a duration with a unit: "250ms", "2s", "1m", "1h".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    todo!()
}

impl Config {
    /// The one-screen summary printed by `failoverd check`.
    pub fn summary(&self) -> String {
        todo!()
    }
}

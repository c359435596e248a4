//! Config builders that render TOML text, so tests say what they set
//! instead of concatenating strings. Values are quoted and escaped by the
//! `toml` crate; [`Value::raw`] and the `raw` methods write text as is
//! (wrong types, broken syntax, keys the builders do not know).
//!
//! ```text
//! ConfigToml::new()
//!     .set_admin("metrics", "127.0.0.1:9898")
//!     .service(svc(&[("primary", a), ("backup", b)]).set("check_interval", "100ms"))
//!     .to_string()
//! ```

use std::fmt;
use std::net::SocketAddr;

/// One TOML value as the builders write it.
#[derive(Clone, Debug, PartialEq)]
pub struct Value(String);

impl Value {
    /// Text written as is, e.g. `Value::raw("5")` for a number where a
    /// string belongs.
    pub fn raw(text: &str) -> Value {
        Value(text.to_string())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn toml_value(value: impl Into<toml::Value>) -> Value {
    Value(value.into().to_string())
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        toml_value(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        toml_value(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        toml_value(b)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        toml_value(n)
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Value {
        toml_value(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Value {
        toml_value(n)
    }
}

impl From<u64> for Value {
    /// Written as digits, also above `i64::MAX` (which TOML rejects).
    fn from(n: u64) -> Value {
        Value(n.to_string())
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value(n.to_string())
    }
}

impl From<SocketAddr> for Value {
    fn from(addr: SocketAddr) -> Value {
        toml_value(addr.to_string())
    }
}

impl From<&std::path::Path> for Value {
    fn from(path: &std::path::Path) -> Value {
        toml_value(path.display().to_string())
    }
}

impl From<&std::path::PathBuf> for Value {
    fn from(path: &std::path::PathBuf) -> Value {
        Value::from(path.as_path())
    }
}

impl From<&[&str]> for Value {
    fn from(items: &[&str]) -> Value {
        toml_value(items.to_vec())
    }
}

impl<const N: usize> From<[&str; N]> for Value {
    fn from(items: [&str; N]) -> Value {
        toml_value(items.to_vec())
    }
}

impl From<Vec<String>> for Value {
    fn from(items: Vec<String>) -> Value {
        toml_value(items)
    }
}

/// The body of one TOML table: `key = value` lines in the order first set
/// (setting a key again replaces its value), then raw lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    entries: Vec<(String, Value)>,
    raw: Vec<String>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// `key = value`, replacing an earlier value of `key`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Table {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
        self
    }

    /// Drop `key` if it was set.
    pub fn unset(mut self, key: &str) -> Table {
        self.entries.retain(|(k, _)| k != key);
        self
    }

    /// Every entry and raw line of `other`, after this table's (its
    /// values win).
    pub fn merge(mut self, other: &Table) -> Table {
        for (key, value) in &other.entries {
            self = self.set(key, value.clone());
        }
        self.raw.extend(other.raw.iter().cloned());
        self
    }

    /// Text written as is inside the table (one or more lines).
    pub fn raw(mut self, text: &str) -> Table {
        self.raw.push(text.to_string());
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.entries {
            writeln!(f, "{key} = {value}")?;
        }
        for raw in &self.raw {
            writeln!(f, "{raw}")?;
        }
        Ok(())
    }
}

/// One `[[service]]` with its `[[service.backend]]`s and optional
/// `[service.dns]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    table: Table,
    backends: Vec<Table>,
    dns: Option<Table>,
}

impl Service {
    /// A service listening on `127.0.0.1:0` (the in-process proxy reports
    /// the port it got).
    pub fn new(name: &str) -> Service {
        Service {
            table: Table::new().set("name", name).set("listen", "127.0.0.1:0"),
            backends: Vec::new(),
            dns: None,
        }
    }

    pub fn listen(self, addr: impl fmt::Display) -> Service {
        self.set("listen", addr.to_string())
    }

    /// No `listen` key (a DNS-only service).
    pub fn no_listen(mut self) -> Service {
        self.table = self.table.unset("listen");
        self
    }

    /// A setting of the service (any `[defaults]` key, `freebind`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Service {
        self.table = self.table.set(key, value);
        self
    }

    /// Every setting of `settings` (a shared set, such as fast checks).
    pub fn merge(mut self, settings: &Table) -> Service {
        self.table = self.table.merge(settings);
        self
    }

    /// Text written as is in the `[[service]]` table.
    pub fn raw(mut self, text: &str) -> Service {
        self.table = self.table.raw(text);
        self
    }

    /// A `[[service.backend]]` with this name and address, after the others.
    pub fn backend(self, name: &str, address: impl fmt::Display) -> Service {
        self.backend_table(
            Table::new()
                .set("name", name)
                .set("address", address.to_string()),
        )
    }

    /// A `[[service.backend]]` with any keys (`publish`, or a wrong one).
    pub fn backend_table(mut self, backend: Table) -> Service {
        self.backends.push(backend);
        self
    }

    /// One backend per `(name, address)`, in priority order.
    pub fn backends(self, backends: &[(&str, SocketAddr)]) -> Service {
        backends
            .iter()
            .fold(self, |service, (name, addr)| service.backend(name, addr))
    }

    /// `[service.dns]`.
    pub fn dns(mut self, dns: Table) -> Service {
        self.dns = Some(dns);
        self
    }

    /// A whole config holding this service alone.
    pub fn toml(&self) -> String {
        ConfigToml::new().service(self.clone()).to_string()
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[service]]")?;
        self.table.write(f)?;
        for backend in &self.backends {
            writeln!(f, "\n[[service.backend]]")?;
            backend.write(f)?;
        }
        if let Some(dns) = &self.dns {
            writeln!(f, "\n[service.dns]")?;
            dns.write(f)?;
        }
        Ok(())
    }
}

/// The service most tests use: "svc" on `127.0.0.1:0` with these backends.
pub fn svc(backends: &[(&str, SocketAddr)]) -> Service {
    Service::new("svc").backends(backends)
}

/// A whole config file; `Display` renders the TOML text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigToml {
    admin: Option<Table>,
    defaults: Option<Table>,
    cluster: Option<Table>,
    services: Vec<Service>,
    raw: Vec<String>,
}

impl ConfigToml {
    pub fn new() -> ConfigToml {
        ConfigToml::default()
    }

    /// `[admin]`, replacing an earlier one.
    pub fn admin(mut self, admin: Table) -> ConfigToml {
        self.admin = Some(admin);
        self
    }

    /// One key of `[admin]` (the table is created if absent).
    pub fn set_admin(mut self, key: &str, value: impl Into<Value>) -> ConfigToml {
        self.admin = Some(self.admin.unwrap_or_default().set(key, value));
        self
    }

    /// `[defaults]`, replacing an earlier one.
    pub fn defaults(mut self, defaults: Table) -> ConfigToml {
        self.defaults = Some(defaults);
        self
    }

    /// One key of `[defaults]` (the table is created if absent).
    pub fn set_default(mut self, key: &str, value: impl Into<Value>) -> ConfigToml {
        self.defaults = Some(self.defaults.unwrap_or_default().set(key, value));
        self
    }

    /// `[cluster]`, replacing an earlier one.
    pub fn cluster(mut self, cluster: Table) -> ConfigToml {
        self.cluster = Some(cluster);
        self
    }

    /// A `[[service]]`, after the others.
    pub fn service(mut self, service: Service) -> ConfigToml {
        self.services.push(service);
        self
    }

    /// Text written as is at the end of the file: start it with a table
    /// header, or its keys land in the last table above.
    pub fn raw(mut self, text: &str) -> ConfigToml {
        self.raw.push(text.to_string());
        self
    }
}

impl fmt::Display for ConfigToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables = [
            ("admin", &self.admin),
            ("defaults", &self.defaults),
            ("cluster", &self.cluster),
        ];
        for (name, table) in tables {
            if let Some(table) = table {
                writeln!(f, "[{name}]")?;
                table.write(f)?;
                writeln!(f)?;
            }
        }
        for service in &self.services {
            service.write(f)?;
            writeln!(f)?;
        }
        for raw in &self.raw {
            writeln!(f, "{raw}")?;
        }
        Ok(())
    }
}

/// A TOML basic string holding `s` (for raw lines that need one).
pub fn toml_str(s: &str) -> String {
    toml::Value::from(s).to_string()
}

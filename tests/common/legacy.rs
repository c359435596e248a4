//! String-built configs of the old harness, kept until every test file
//! uses the builders of `config.rs`.

use std::net::SocketAddr;

/// `[[service.backend]]` tables for these backends.
pub fn backends_toml(backends: &[(&str, SocketAddr)]) -> String {
    backends
        .iter()
        .map(|(name, addr)| {
            format!("[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n")
        })
        .collect()
}

/// A one-service config listening on an ephemeral port.
pub fn service_toml(settings: &str, backends: &[(&str, SocketAddr)]) -> String {
    format!(
        "[[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n{settings}\n{}",
        backends_toml(backends)
    )
}

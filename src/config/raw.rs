//! The raw serde model: what the file may contain, before any checking.
//! Every table denies unknown keys, so a typo fails loudly; every value is
//! optional here so that `validate.rs` can name the missing key itself.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub admin: Option<RawAdmin>,
    pub defaults: Option<RawSettings>,
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub metrics: Option<String>,
    pub socket: Option<String>,
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub etcd: Option<Vec<String>>,
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub ttl: Option<String>,
    pub on_lost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Option<String>,
    pub address: Option<String>,
    pub publish: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub server: Option<String>,
    pub zone: Option<String>,
    pub name: Option<String>,
    pub ttl: Option<String>,
    pub tsig_key: Option<String>,
}

/// Defines `RawSettings` (the `[defaults]` table) and `RawService`, which
/// accepts the same keys as overrides, from one list of setting keys.
macro_rules! raw_settings {
    ($($key:ident: $ty:ty),* $(,)?) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawSettings {
            $(pub $key: Option<$ty>,)*
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawService {
            pub name: Option<String>,
            pub listen: Option<String>,
            #[serde(default)]
            pub freebind: bool,
            #[serde(default)]
            pub backend: Vec<RawBackend>,
            pub dns: Option<RawDns>,
            $(pub $key: Option<$ty>,)*
        }

        impl RawService {
            /// The setting keys this service overrides.
            pub fn overrides(&self) -> RawSettings {
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
    max_connections: u64,
    zero_copy: bool,
    check_send: String,
    check_expect: String,
    notify: Vec<String>,
    check: String,
    check_port: i64,
    check_path: String,
    check_user: String,
    check_database: String,
    check_password_file: String,
    hold_timeout: String,
    send_proxy: String,
    accept_proxy: bool,
    allow: Vec<String>,
}

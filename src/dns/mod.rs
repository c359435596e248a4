//! DNS failover: publish the active backend's address in one DNS record by
//! RFC 2136 dynamic update, signed with TSIG (`[service.dns]`).
//!
//! - `key`       BIND key files (`tsig-keygen` output) -> [`TsigKey`]
//! - `update`    one signed UPDATE to the authoritative server: [`update`]
//! - `publisher` the per-service task that follows the decided backend,
//!   retries with back-off and reports [`DnsStatus`]
//!
//! This module never decides which backend is active: it is told through a
//! `watch` channel, and it knows nothing of the config file or the engine.

mod key;
mod publisher;
mod update;

pub use key::{KeyAlgorithm, TsigKey, load_key_file, parse_key};
pub use publisher::{
    DnsStatus, Publish, PublisherConfig, PublisherHandle, RETRY_FIRST_DELAY, RETRY_MAX_DELAY,
    UPDATE_TIMEOUT, spawn_publisher,
};
pub use update::{TSIG_FUDGE_SECS, Target, UpdateError, check_names, update};

/// Counter: DNS updates by result (`ok` | `error`), label `service`.
pub const DNS_UPDATES_TOTAL: &str = "failoverd_dns_updates_total";
/// Gauge 0/1: the backend whose address the record holds, labels
/// `service`, `backend`.
pub const DNS_PUBLISHED: &str = "failoverd_dns_published";

/// Register the help texts of the DNS metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(DNS_UPDATES_TOTAL, "DNS updates sent, by result.");
    metrics::describe_gauge!(
        DNS_PUBLISHED,
        "1 for the backend whose address the DNS record holds."
    );
}

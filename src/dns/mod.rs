//! DNS failover: publish the active backend's address in one DNS record by
//! RFC 2136 dynamic update, signed with TSIG (`[service.dns]`).
//!
//! - `update`    one signed UPDATE to the authoritative server: [`update`]
//! - `publisher` the per-service task that follows the decided backend,
//!   retries with back-off and reports [`DnsStatus`]
//!
//! This module never decides which backend is active: it is told through a
//! `watch` channel, and it knows nothing of the engine. Keys are read with
//! the config (`config::TsigKey`).

mod publisher;
mod update;

pub use publisher::{
    DnsStatus, Publish, PublisherConfig, PublisherHandle, RETRY_FIRST_DELAY, RETRY_MAX_DELAY,
    UPDATE_TIMEOUT, spawn_publisher,
};
pub use update::{TSIG_FUDGE_SECS, Target, UpdateError, check_names, update};

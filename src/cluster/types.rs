//! The types the cluster and the engine exchange: what the engine passes in
//! (the services it runs, its own view of their backends) and what it gets
//! back (the agreed backend, the switches the decider made, the status for
//! `ctl status`). Plain data: no I/O, no etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Failback, ServiceConfig};
use crate::policy::SwitchReason;

/// One service as the cluster sees it: its name, its backends by name in
/// priority order, and the failback policy the decider applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// Backend names, priority order (index 0 is the primary).
    pub backends: Vec<String>,
    pub failback: Failback,
    pub failback_delay: Duration,
}

impl ServiceSpec {
    /// The spec of a configured service.
    pub fn from_config(service: &ServiceConfig) -> ServiceSpec {
        ServiceSpec {
            name: service.name.clone(),
            backends: service.backends.iter().map(|b| b.name.clone()).collect(),
            failback: service.settings.failback,
            failback_delay: service.settings.failback_delay,
        }
    }
}

/// What this instance sees of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Up by this instance's checks and passive detection.
    Up,
    Down,
    /// No opinion yet (e.g. no check has settled since start-up): this
    /// instance does not vote on the backend.
    Unknown,
}

impl From<bool> for Seen {
    fn from(up: bool) -> Seen {
        if up { Seen::Up } else { Seen::Down }
    }
}

/// This instance's own view of every backend, per service name, in the
/// order of the service's [`ServiceSpec::backends`]. A service or backend
/// missing here counts as [`Seen::Unknown`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalView {
    pub services: BTreeMap<String, Vec<Seen>>,
}

/// The agreed state of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// Grows with every change the decider makes.
    pub generation: u64,
    /// The backend new connections go to; `None`: no backend, hold new
    /// clients (nothing is up, or the first step of a switch). Always a
    /// backend of this instance's own spec of the service.
    pub active: Option<String>,
}

/// One completed switch, reported by the decider only, once per switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchEvent {
    pub service: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: SwitchReason,
    /// The generation of the state that completed the switch
    /// (`FAILOVERD_GENERATION`).
    pub generation: u64,
}

/// The `cluster` object of `ctl status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This instance's member name.
    pub name: String,
    /// This instance is a member: its lease renewal was confirmed within ttl.
    pub connected: bool,
    /// The decider's name, as last seen.
    pub decider: Option<String>,
    /// Member names, sorted, as last seen.
    pub members: Vec<String>,
}

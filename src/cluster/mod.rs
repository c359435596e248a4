//! Cluster mode: several failoverd instances that share `[cluster] etcd`
//! and `prefix` decide each service's active backend as one (SPEC.md,
//! Behaviour: Cluster).
//!
//! Every instance is a *member*: it holds an etcd lease of `ttl` and keeps
//! its record (its own view of every backend, the generation it applied)
//! under it. One member, elected with a create-if-absent transaction, is
//! the *decider*: it combines the views (a backend is down when more than
//! half of the members see it down), applies the failover policy to that
//! view and writes the agreed state, switching in two steps ("no backend"
//! until every member acknowledged, then the new backend). Every member,
//! the decider included, follows the agreed state.
//!
//! The engine talks to the cluster through [`ClusterHandle`]: it feeds its
//! view through a `watch` of [`LocalView`], applies each [`Agreed`] change
//! and then calls [`ClusterHandle::applied`]. This module never touches
//! client connections or the data path; the etcd client underneath knows
//! nothing of these keys.
//!
//! Files: `types` (the interface types), `keys` and `records` (the key
//! layout and the JSON under it), `mirror` (the member's copy of the
//! keys), `decider` (the pure decision), `lease` (timings, renewal),
//! `session` (join, the loop, rejoin), `follow` (the record, publishing the mirror), `tenure` (election and the
//! decider's conditioned writes), `handle` (start, stop, the handle).
pub mod etcd;

mod decider;
mod follow;
mod handle;
mod keys;
mod lease;
mod mirror;
mod records;
mod session;
mod tenure;
mod types;

pub use handle::{Cluster, ClusterHandle, start};
pub use types::{Agreed, ClusterStatus, LocalView, Seen, ServiceSpec, SwitchEvent};

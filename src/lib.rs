//! failoverd: a layer-4 TCP failover proxy for Linux.
//!
//! Every client connection is forwarded byte for byte to its service's
//! active backend; health checks and failed connects on live traffic move
//! the active pointer between the primary and its ordered backups.
//!
//! Layout, in pipeline order:
//! - `config`   TOML -> validated [`config::Config`]
//! - `listener` bind with socket2, accept loop, `max_connections`
//! - `conn`     one connection: pick, connect (retry the next), forward
//! - `forward`  splice(2) through a pipe, or userspace copy
//! - `backend`  backends, the snapshot and its `ArcSwap` active pointer
//! - `engine`   per-service failover engine: the snapshot's only writer
//! - `health`   active checks and rise/fall
//! - `probes`   role-aware checks: http, redis, postgres
//! - `decide`   the pure decision function
//! - `notify`   the switch hook command
//! - `proxy`    the running whole: start, reload, status, shutdown
//! - `workers`  one single-threaded runtime per core for the data path
//! - `ratelimit` one log line a second for errors that come in floods
//! - `metrics`  metric names
//! - `demo`     `failoverd demo`: built-in backends, traffic, failover report
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod conn;
pub mod control;
pub mod decide;
pub mod demo;
pub mod engine;
pub mod forward;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod probes;
pub mod proxy;
pub mod ratelimit;
pub mod workers;

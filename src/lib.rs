//! failoverd: a layer-4 TCP failover proxy for Linux.
//!
//! Every client connection is forwarded byte for byte to its service's
//! active backend; health checks and failed connects on live traffic move
//! the active pointer between the primary and its ordered backups.
//!
//! The crate is layered: a module imports only modules of a lower layer,
//! so it reads bottom to top and no two modules import each other.
//!
//! ```text
//! layer 0  conncap      a cap on admin connections (the oldest is evicted)
//! layer 1  config/      model, raw serde, validate, durations, addresses, allow-list, TSIG keys, summary
//!          metrics      every metric name as a const, the recorder, /metrics
//!          ratelimit    one log line a second for error floods
//! layer 2  policy       pure: rise/fall hysteresis and the decision, `now` passed in
//!          net          socket helpers: bind, probe, resolve, connect, options, error classes
//!          accept       a listener's readiness and non-blocking accept (its one unsafe)
//!          limit        max_connections: open connections against a resizable maximum
//!          forward/     splice (the only unsafe for the data path), copy, forward()
//!          notify       the switch hook command
//!          proxy_header PROXY protocol v1/v2: encode, and read exactly the header
//!          fdpass       listening sockets over a Unix socket (SCM_RIGHTS), for takeover
//!          sdnotify     systemd's READY=1 / MAINPID= datagram
//!          dns/         the RFC 2136 publisher (updates signed with TSIG)
//! layer 3  service      Backend, Snapshot, Service (the ArcSwap), hold, engine events
//!          cluster/     etcd v3 over its JSON gateway; the member and the decider
//! layer 4  health/      the check loop and one probe per check kind (tcp, http, redis, postgres)
//!          conn         one client connection: choose, connect (retry the next), hold, forward
//! layer 5  engine       per-service failover engine, the only writer of a snapshot
//!          listener     accept loops
//! layer 6  proxy        the running whole: start, reload, takeover, status, shutdown
//!          workers      one single-threaded runtime per core for the data path
//! layer 7  control      signals, control socket, ctl client
//!          demo/        `failoverd demo`
//! ```
//!
//! Modules are private unless the binary, the integration tests or the
//! benchmarks need them.
#![deny(unsafe_code)]

mod accept;
pub mod cluster;
pub mod config;
mod conn;
mod conncap;
pub mod control;
pub mod demo;
pub mod dns;
mod engine;
pub mod fdpass;
pub mod forward;
pub mod health;
mod limit;
mod listener;
pub mod metrics;
mod net;
mod notify;
pub mod policy;
pub mod proxy;
pub mod proxy_header;
mod ratelimit;
pub mod sdnotify;
mod service;
pub mod workers;
// The front door: PROXY protocol, allow-list, descriptor passing for takeover.

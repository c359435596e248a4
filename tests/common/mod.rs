//! The one test harness of the integration tests: the real binary
//! ([`Failoverd`], [`run_failoverd`]), the in-process proxy
//! ([`TestProxy`]), config builders ([`ConfigToml`], [`Service`],
//! [`Table`]), loopback ports, line readers and test backends, a
//! Prometheus reader ([`Scrape`]) and one bounded wait ([`eventually`]).
//!
//! Every child process and temp dir is cleaned up in `Drop`, so a failing
//! test leaks nothing; every wait has a deadline. Real servers (Redis,
//! PostgreSQL, etcd, BIND) get a module each here, beside these, and
//! network faults (namespaces, black-holed ports) one: `netfault`.
//!
//! Each test crate compiles the whole harness and uses a part of it (and
//! of the re-exports below).
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod bind;
pub mod config;
pub mod etcd;
pub mod haproxy;
pub mod net;
pub mod netfault;
pub mod postgres;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod redis;
pub mod server;
pub mod tempdir;
pub mod wait;

pub use backend::{Mode, TestBackend, accept_with_data};
pub use config::{ConfigToml, Service, Table, Value, svc, toml_str};
pub use net::{
    answered_by, closed_port, connect_greeted, echo_once, echo_roundtrip, free_port, greeted_by,
    listen, random_bytes, read_hashed, read_line, sha256, who_answers, who_answers_when_asked,
};
pub use process::{Failoverd, Launch, Layout, Output, Signal, failoverd_bin, run_failoverd};
pub use prom::{Sample, Scrape, scrape};
pub use proxy::{TestProxy, init_logging, spawn_proxy};
pub use tempdir::{TempDir, write_atomically};
pub use wait::{Probe, eventually, within};

//! failoverd: a layer-4 TCP failover proxy for Linux.
#![deny(unsafe_code)]

pub mod config;
pub mod forward;

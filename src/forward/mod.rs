//! Moving bytes between an accepted client and its backend, both ways,
//! until both directions are closed.
//!
//! `forward` uses splice(2) through a pipe on Linux (see `splice.rs`, the
//! only module with `unsafe`) and a userspace copy otherwise (`copy.rs`).
//! It must not pick backends, count connections or log per chunk.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How one connection is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions {
    /// Use splice(2) when the kernel supports it.
    pub zero_copy: bool,
    /// Close when neither direction moved a byte for this long.
    pub idle_timeout: Option<Duration>,
}

/// Byte counters, bumped after every splice/copy call.
#[derive(Clone)]
pub struct ByteCounters {
    pub to_backend: metrics::Counter,
    pub to_client: metrics::Counter,
}

impl ByteCounters {
    /// Counters that count nothing (tests, benches).
    pub fn noop() -> Self {
        ByteCounters {
            to_backend: metrics::Counter::noop(),
            to_client: metrics::Counter::noop(),
        }
    }
}

/// Why forwarding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions saw EOF and passed it on.
    Closed,
    /// `idle_timeout` passed with no byte moved.
    IdleTimeout,
    /// The cancel token fired (switch with `on_switch = "close"`, shutdown).
    Cancelled,
}

/// Totals for one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Forward both directions until both are closed, the idle timeout fires,
/// or `cancel` is cancelled. An I/O error on either side (reset) ends both.
pub async fn forward(
    client: TcpStream,
    backend: TcpStream,
    options: ForwardOptions,
    counters: &ByteCounters,
    cancel: &CancellationToken,
) -> std::io::Result<(Outcome, Transferred)> {
    todo!()
}

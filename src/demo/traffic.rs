//! The demo's client side: one short connection through the proxy that
//! reads the greeting to learn which backend answered, and the tally of
//! outcomes.
//!
//! The greeting comes from the network, so it is bounded in size and
//! anything unexpected counts as a failure, never a panic.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;

/// A client gives up when connect plus greeting take longer than this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest greeting read: a backend name and a newline fit easily.
const GREETING_MAX_BYTES: u64 = 64;

/// The two built-in backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Backup,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Backup => "backup",
        }
    }

    fn from_name(name: &str) -> Option<Side> {
        [Side::Primary, Side::Backup]
            .into_iter()
            .find(|side| side.name() == name)
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one client connection saw.
#[derive(Debug)]
pub enum Outcome {
    /// The greeting named this backend.
    Served(Side),
    /// Failed connect, no greeting, or a greeting nobody sends.
    Failed(String),
}

/// Connect through the proxy and read the greeting, within
/// [`CLIENT_TIMEOUT`].
pub async fn probe(proxy: SocketAddr) -> Outcome {
    match tokio::time::timeout(CLIENT_TIMEOUT, greeting(proxy)).await {
        Ok(Ok(line)) => match Side::from_name(line.trim_end()) {
            Some(side) => Outcome::Served(side),
            None => Outcome::Failed(format!("unexpected greeting {line:?}")),
        },
        Ok(Err(err)) => Outcome::Failed(err.to_string()),
        Err(_) => Outcome::Failed(format!(
            "no greeting within {}s",
            CLIENT_TIMEOUT.as_secs_f64()
        )),
    }
}

async fn greeting(proxy: SocketAddr) -> io::Result<String> {
    let stream = TcpStream::connect(proxy)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("connect to proxy {proxy}: {err}")))?;
    let mut line = String::new();
    BufReader::new(stream.take(GREETING_MAX_BYTES))
        .read_line(&mut line)
        .await?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the greeting",
        ));
    }
    Ok(line)
}

/// Client connections so far, by outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub primary: u64,
    pub backup: u64,
    pub failed: u64,
}

impl Tally {
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Served(Side::Primary) => self.primary += 1,
            Outcome::Served(Side::Backup) => self.backup += 1,
            Outcome::Failed(_) => self.failed += 1,
        }
    }

    pub fn served(&self, side: Side) -> u64 {
        match side {
            Side::Primary => self.primary,
            Side::Backup => self.backup,
        }
    }
}

//! One fuzz case: parse and validate a config text (which must never
//! panic), and for a config that validates, start the in-process proxy on
//! it and forward one connection (which must not panic either, nor fail to
//! start, nor hang).
//!
//! Before the start, the config is pointed at loopback only: every listen
//! address becomes `127.0.0.1:0`, every backend a local echo server (every
//! second one a closed port, to exercise the retry), a `check_port` the
//! echo server; `notify`, `[service.dns]`, `[cluster]` and `[admin]`
//! listeners are dropped, so a case runs no command and sends nothing off
//! the machine. Every other setting (durations, limits, checks, PROXY
//! protocol, allow-list) stays as generated.
//!
//! Shared by `tests/fuzz_config.rs` and the cargo-fuzz targets in `fuzz/`
//! (which include this file by path): it depends on failoverd and tokio only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use failoverd::config::{self, BackendAddress, Config};
use failoverd::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the client waits for the echo (a config may hold it for up to
/// a year with `hold_timeout`; that is not a defect, so it is cut short).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long start, exchange and shutdown may take together before the
/// case counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a case came to (a panic is not among them: it propagates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Parsing or validation said no (with a message).
    Rejected,
    /// Valid; not started (not sampled).
    Valid,
    /// Valid, started, forwarded one connection: the echo came back.
    Forwarded,
    /// Valid and started; the connection was closed, refused or held
    /// (allow-list, every backend down, `hold_timeout`): no defect.
    NotForwarded,
}

/// Parse and validate `text`; if it validates and `start` is set, run it
/// (see the module doc). `Err` is a defect that is not a panic: a valid
/// config that cannot start, a shutdown that hangs.
pub fn check(text: &str, start: bool) -> Result<Outcome, String> {
    let Ok(config) = config::parse(text, Path::new("fuzz.toml")) else {
        return Ok(Outcome::Rejected);
    };
    if !start {
        return Ok(Outcome::Valid);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    runtime.block_on(async {
        tokio::time::timeout(CASE_TIMEOUT, run(config))
            .await
            .map_err(|_| format!("start, one connection and shutdown took over {CASE_TIMEOUT:?}"))?
    })
}

async fn run(mut config: Config) -> Result<Outcome, String> {
    let echo = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("echo backend: {e}"))?;
    let echo_addr = echo
        .local_addr()
        .map_err(|e| format!("echo backend: {e}"))?;
    let closed = {
        let probe = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("closed port: {e}"))?;
        probe
            .local_addr()
            .map_err(|e| format!("closed port: {e}"))?
    };
    tokio::spawn(serve_echo(echo));
    loopback_only(&mut config, echo_addr, closed);
    let accept_proxy = config.services[0].settings.accept_proxy;
    let first = config.services[0].name.clone();

    let proxy = Proxy::start(config)
        .await
        .map_err(|e| format!("a valid config did not start: {e}"))?;
    let outcome = match proxy.local_addr(&first).await {
        Some(addr) => exchange(addr, accept_proxy).await,
        None => Outcome::NotForwarded,
    };
    proxy.shutdown(Duration::ZERO).await;
    Ok(outcome)
}

/// Point `config` at loopback and drop what would run commands or reach
/// other machines.
fn loopback_only(config: &mut Config, echo: SocketAddr, closed: SocketAddr) {
    config.cluster = None;
    config.admin.metrics = None;
    config.admin.socket = None;
    for service in &mut config.services {
        service.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        service.dns = None;
        service.settings.notify.clear();
        if service.settings.check_port.is_some() {
            service.settings.check_port = Some(echo.port());
        }
        for (i, backend) in service.backends.iter_mut().enumerate() {
            let to = if i % 2 == 0 { echo } else { closed };
            backend.address = BackendAddress::Ip(to);
        }
    }
}

/// One client connection: a PROXY header if the service wants one, a
/// line, and its echo.
async fn exchange(addr: SocketAddr, accept_proxy: bool) -> Outcome {
    let talk = async {
        let mut stream = TcpStream::connect(addr).await?;
        if accept_proxy {
            stream
                .write_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 5432\r\n")
                .await?;
        }
        let line = b"fuzz\n";
        stream.write_all(line).await?;
        let mut back = vec![0u8; line.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == line)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, talk).await {
        Ok(Ok(true)) => Outcome::Forwarded,
        _ => Outcome::NotForwarded,
    }
}

async fn serve_echo(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

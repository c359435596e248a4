//! How an operator steers a running failoverd.
//!
//! Signals: SIGHUP re-reads the config file (an invalid file changes
//! nothing); SIGTERM and SIGINT stop accepting, drain for
//! `admin.shutdown_timeout`, close the rest and end `run` (exit 0).
//!
//! The control socket (`admin.socket`, mode 0600) speaks one JSON object per
//! line each way: `{"cmd":"status"}`, `{"cmd":"disable","service":S,
//! "backend":B}`, `{"cmd":"enable",...}`, `{"cmd":"reload"}`; the answer is
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`. `failoverd ctl` is the
//! client. This module does no forwarding and makes no failover decision.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config;
use crate::metrics as m;
use crate::proxy::{Proxy, Status};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Disable { service: String, backend: String },
    Enable { service: String, backend: String },
    Reload,
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            status: None,
        }
    }

    fn error(message: String) -> Self {
        Response {
            ok: false,
            error: Some(message),
            status: None,
        }
    }
}

/// Re-read the config file and apply it; on any error keep the running
/// config. Counted in `failoverd_config_reloads_total`.
pub async fn reload(proxy: &Proxy) -> Result<(), String> {
    let current = proxy.config().await;
    let result = match config::load(&current.path) {
        Ok(next) => {
            if next.admin != current.admin {
                warn!("the [admin] section changed; it takes effect at the next restart");
            }
            proxy.reload(next).await.map_err(|e| e.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => label).increment(1);
    metrics::gauge!(m::CONFIG_LAST_RELOAD_SUCCESSFUL).set(if result.is_ok() { 1.0 } else { 0.0 });
    match &result {
        Ok(()) => info!(file = %current.path.display(), "config reloaded"),
        Err(err) => warn!(error = %err, "config reload rejected, keeping the running config"),
    }
    result
}

/// The signals failoverd handles, installed before anything is bound so a
/// SIGHUP or SIGTERM during start-up is not lost (or fatal).
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Wait for signals: SIGHUP reloads; SIGTERM/SIGINT drains and returns.
pub async fn run_signals(
    mut signals: Signals,
    proxy: Arc<Proxy>,
    shutdown_timeout: std::time::Duration,
) {
    loop {
        tokio::select! {
            _ = signals.hup.recv() => { let _ = reload(&proxy).await; }
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    info!(
        open = proxy.open_connections(),
        "shutting down: no new connections, draining"
    );
    let forced = proxy.shutdown(shutdown_timeout).await;
    info!(closed_by_force = forced, "shutdown complete");
}

/// Create the control socket: a stale file from a crashed run is replaced,
/// a live socket is not stolen.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by a running failoverd",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve the control socket until `stop`, then remove the file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, Arc::clone(&proxy)));
            }
            Err(err) => {
                warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, proxy: Arc<Proxy>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => execute(&proxy, request).await,
            Err(err) => Response::error(format!("bad request: {err}")),
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn execute(proxy: &Proxy, request: Request) -> Response {
    match request {
        Request::Status => Response {
            status: Some(proxy.status().await),
            ..Response::ok()
        },
        Request::Disable { service, backend } => {
            set_enabled(proxy, &service, &backend, false).await
        }
        Request::Enable { service, backend } => set_enabled(proxy, &service, &backend, true).await,
        Request::Reload => match reload(proxy).await {
            Ok(()) => Response::ok(),
            Err(err) => Response::error(err),
        },
    }
}

async fn set_enabled(proxy: &Proxy, service: &str, backend: &str, enabled: bool) -> Response {
    match proxy.set_enabled(service, backend, enabled).await {
        Ok(()) => Response::ok(),
        Err(err) => Response::error(err),
    }
}

/// The client side: send one request, read one answer.
pub async fn request(path: &Path, request: &Request) -> io::Result<Response> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach control socket {}: {e}", path.display()),
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines.next_line().await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control socket closed without an answer",
        )
    })?;
    serde_json::from_str(&answer).map_err(io::Error::other)
}

/// `ctl status` as a table.
pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    for service in &status.services {
        out.push_str(&format!(
            "service {}  listen {}  active {}\n",
            service.name,
            service.listen.as_deref().unwrap_or("-"),
            service.active.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!(
            "  {:<3} {:<16} {:<28} {:<5} {:<9} {:>8} {:>6}\n",
            "", "BACKEND", "ADDRESS", "STATE", "ENABLED", "FAILURES", "CONNS"
        ));
        if let Some(dns) = &service.dns {
            let published = match (&dns.published, &dns.backend) {
                (Some(ip), Some(backend)) => format!("{ip} ({backend})"),
                (Some(ip), None) => ip.to_string(),
                (None, _) => "nothing yet".to_string(),
            };
            out.push_str(&format!("  dns {} -> {published}", dns.name));
            if let Some(err) = &dns.error {
                out.push_str(&format!("  last error: {err}"));
            }
            out.push('\n');
        }
        for b in &service.backends {
            out.push_str(&format!(
                "  {:<3} {:<16} {:<28} {:<5} {:<9} {:>8} {:>6}\n",
                if b.active { "*" } else { "" },
                b.name,
                b.address,
                b.state,
                if b.enabled { "yes" } else { "disabled" },
                b.consecutive_failures,
                b.connections
            ));
        }
    }
    out
}

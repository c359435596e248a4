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
//! client. Lines, idle time, open connections and `ctl`'s wait are bounded
//! (`CONTROL_*`, [`CTL_TIMEOUT`]). This module does no forwarding and makes no failover decision.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config;
use crate::conncap::{Admitted, ConnectionCap};
use crate::fdpass;
use crate::metrics as m;
use crate::proxy::{Proxy, Status};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Disable {
        service: String,
        backend: String,
    },
    Enable {
        service: String,
        backend: String,
    },
    Reload,
    /// `run --takeover`: hand the listening sockets and the health state
    /// over this connection (`fdpass` frame), wait for `ready`, then retire.
    Takeover,
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
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Wait for signals: SIGHUP reloads; SIGUSR2 starts the binary at this
/// process's path again with `--takeover` (the upgrade: it takes the
/// sockets over and this process retires); SIGTERM/SIGINT drains and returns.
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
            _ = signals.usr2.recv() => start_successor(),
            _ = proxy.retired().cancelled() => break,
        }
    }
    info!(
        open = proxy.open_connections(),
        "shutting down: no new connections, draining"
    );
    let forced = proxy.shutdown(shutdown_timeout).await;
    info!(closed_by_force = forced, "shutdown complete");
}

/// SIGUSR2: run the binary found at this process's `argv[0]` (the new
/// one, after an upgrade replaced the file) with this process's arguments
/// plus `--takeover`. Its output goes where this process's goes; its exit
/// is reaped and logged.
fn start_successor() {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        warn!("SIGUSR2: no argv[0] to start again");
        return;
    };
    let mut args: Vec<_> = args.collect();
    if !args.iter().any(|a| a == "--takeover") {
        args.push("--takeover".into());
    }
    info!(program = %program.to_string_lossy(), "SIGUSR2: starting the successor with --takeover");
    match tokio::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => warn!(%status, "the successor started by SIGUSR2 exited"),
                    Err(err) => warn!(error = %err, "waiting for the successor failed"),
                }
            });
        }
        Err(err) => warn!(error = %err, "SIGUSR2: cannot start the successor"),
    }
}

/// Longest request line the control socket reads; a longer one is
/// answered with an error and the connection closed.
pub const CONTROL_MAX_LINE_BYTES: usize = 64 * 1024;

/// A control connection that sends no complete line for this long is
/// closed (`ctl` sends its request at once).
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open control connections at most; a new one closes the oldest idle one.
pub const CONTROL_MAX_CONNECTIONS: usize = 16;

/// How long `ctl` waits for the running instance to answer.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket's mode: owner only.
const SOCKET_MODE: u32 = 0o600;

/// Create the control socket, mode 0600 from the moment it exists: a stale
/// socket from a crashed run is replaced, a live one is not stolen, and a
/// path that is not a socket is never removed.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or set admin.socket to another path",
                    path.display()
                ),
            ));
        }
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
    let listener = bind_private(path)?;
    UnixListener::from_std(listener)
}

/// Bind a Unix socket whose file is created with [`SOCKET_MODE`] (minus
/// the umask): Linux gives the new file the mode of the socket itself, so
/// the socket is fchmod-ed before bind and the file is never open to
/// others, not even for a moment (a chmod after bind would leave a window,
/// and changing the process-wide umask would race other threads).
fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::fd::OwnedFd;
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    // fchmod(2) through File, which needs no unsafe code.
    let file = std::fs::File::from(OwnedFd::from(socket));
    file.set_permissions(std::fs::Permissions::from_mode(SOCKET_MODE))?;
    let socket = Socket::from(OwnedFd::from(file));
    socket.bind(&SockAddr::unix(path)?)?;
    // Belt and braces on systems that ignore the socket's mode at bind.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serve the control socket until `stop`, then remove the file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    let mut cap = ConnectionCap::new(CONTROL_MAX_CONNECTIONS);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
            // Taken over: the file is the new process's now.
            _ = proxy.retired().cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let admitted = cap.admit();
                tokio::spawn(answer(stream, Arc::clone(&proxy), admitted));
            }
            Err(err) => {
                warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Why a control connection stopped reading.
enum LineEnd {
    Line(Vec<u8>),
    Closed,
    TooLong,
}

/// Answer requests, one line each, until the client closes, idles for
/// [`CONTROL_IDLE_TIMEOUT`], sends a line past [`CONTROL_MAX_LINE_BYTES`],
/// or a newer connection evicts this one while it waits for a line (a
/// request being executed always finishes).
async fn answer(stream: UnixStream, proxy: Arc<Proxy>, admitted: Admitted) {
    let _done = admitted.done;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = tokio::select! {
            line = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, read_line(&mut reader)) => line,
            _ = admitted.evicted.cancelled() => return,
        };
        // `last`: answer, then close (the rest of the line is not read).
        let (response, last) = match line {
            Err(_) | Ok(Ok(LineEnd::Closed)) | Ok(Err(_)) => return,
            Ok(Ok(LineEnd::TooLong)) => (
                Response::error(format!(
                    "request line longer than {} KiB; send one JSON object per line",
                    CONTROL_MAX_LINE_BYTES / 1024
                )),
                true,
            ),
            Ok(Ok(LineEnd::Line(line))) => match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Takeover) => {
                    if let Ok(stream) = reader.into_inner().reunite(write) {
                        hand_over(stream, &proxy).await;
                    }
                    return;
                }
                Ok(request) => (execute(&proxy, request).await, false),
                Err(err) => (Response::error(format!("bad request: {err}")), false),
            },
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        let written =
            tokio::time::timeout(CONTROL_IDLE_TIMEOUT, write.write_all(text.as_bytes())).await;
        if last || !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// Read one line of at most [`CONTROL_MAX_LINE_BYTES`].
async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> io::Result<LineEnd> {
    let mut line = Vec::new();
    let limit = CONTROL_MAX_LINE_BYTES as u64 + 1;
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(LineEnd::Closed);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(LineEnd::Line(line));
    }
    if line.len() > CONTROL_MAX_LINE_BYTES {
        Ok(LineEnd::TooLong)
    } else {
        // EOF inside a line: take what came, as a line.
        Ok(LineEnd::Line(line))
    }
}

/// How long the old process waits for the new one to say it accepts.
pub const TAKEOVER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest takeover payload the new process reads.
const TAKEOVER_MAX_PAYLOAD: usize = 1024 * 1024;

/// The old side of a takeover: send every listening socket and the state,
/// wait until the new process accepts on them, then remove the control
/// socket file (the new process binds its own) and retire: stop
/// accepting, drain as on SIGTERM, exit 0. If the new process goes away
/// first, nothing changes here.
async fn hand_over(mut stream: UnixStream, proxy: &Proxy) {
    let config = proxy.config().await;
    if config.cluster.is_some() {
        let _ = stream
            .write_all(b"{\"ok\":false,\"error\":\"takeover is not available in cluster mode\"}\n")
            .await;
        return;
    }
    let (handover, fds) = proxy.handover().await;
    let payload = match serde_json::to_vec(&handover) {
        Ok(payload) => payload,
        Err(err) => {
            warn!(error = %err, "takeover: cannot encode the state");
            return;
        }
    };
    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
    if let Err(err) = fdpass::send_fds(&stream, &payload, &borrowed).await {
        warn!(error = %err, "takeover: cannot hand the sockets over; serving on");
        return;
    }
    let sockets = borrowed.len();
    drop(borrowed);
    drop(fds);
    info!(
        sockets,
        "takeover: sockets and state handed over, waiting for the new process"
    );
    let mut line = Vec::new();
    let ready = tokio::time::timeout(TAKEOVER_READY_TIMEOUT, async {
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            match stream.read(&mut byte).await {
                Ok(1) if byte[0] == b'\n' => return line == b"ready",
                Ok(1) => line.push(byte[0]),
                _ => return false,
            }
        }
        false
    })
    .await;
    if !matches!(ready, Ok(true)) {
        warn!("takeover: the new process did not take over; serving on");
        return;
    }
    if let Some(path) = &config.admin.socket {
        let _ = std::fs::remove_file(path);
    }
    proxy.retire();
    info!("taken over by a new process: no new connections here, draining");
    let _ = stream.write_all(b"{\"ok\":true}\n").await;
}

/// The new side of a takeover, step 1: ask the instance on `path` for its
/// sockets and state. `None` when nothing runs there (no socket file, or
/// nobody listening on it).
pub async fn take_over(path: &Path) -> io::Result<Option<(crate::proxy::Inherited, UnixStream)>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    stream.write_all(b"{\"cmd\":\"takeover\"}\n").await?;
    let (payload, fds) = tokio::time::timeout(
        CTL_TIMEOUT,
        fdpass::recv_fds(&stream, TAKEOVER_MAX_PAYLOAD, fdpass::MAX_FDS_PER_FRAME),
    )
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the running instance did not hand over its sockets within 10 s",
        )
    })??;
    let handover: crate::proxy::Handover = serde_json::from_slice(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("takeover state: {e}")))?;
    let wanted =
        handover.services.iter().map(|s| s.sockets).sum::<usize>() + usize::from(handover.metrics);
    if wanted != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "takeover: {} sockets announced, {} received",
                wanted,
                fds.len()
            ),
        ));
    }
    let mut fds = fds.into_iter().map(std::net::TcpListener::from);
    let mut inherited = crate::proxy::Inherited::default();
    for service in handover.services {
        let sockets: Vec<_> = fds.by_ref().take(service.sockets).collect();
        inherited.services.push((service, sockets));
    }
    inherited.metrics = fds.next();
    Ok(Some((inherited, stream)))
}

/// The new side of a takeover, step 2: this process accepts on the
/// sockets now; tell the old one, and wait until it has retired and
/// removed its control socket file.
pub async fn finish_takeover(mut stream: UnixStream) -> io::Result<()> {
    stream.write_all(b"ready\n").await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(CTL_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the old instance did not confirm the takeover",
            )
        })??;
    match serde_json::from_str::<Response>(line.trim()) {
        Ok(r) if r.ok => Ok(()),
        Ok(r) => Err(io::Error::other(
            r.error.unwrap_or_else(|| "refused".into()),
        )),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("takeover answer: {e}"),
        )),
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
        Request::Takeover => Response::error("takeover is answered on its own connection".into()),
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

/// The client side: send one request, read one answer, within
/// [`CTL_TIMEOUT`].
pub async fn request(path: &Path, request: &Request) -> io::Result<Response> {
    tokio::time::timeout(CTL_TIMEOUT, exchange(path, request))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer from control socket {} within {}s; is failoverd stuck?",
                    path.display(),
                    CTL_TIMEOUT.as_secs()
                ),
            )
        })?
}

async fn exchange(path: &Path, request: &Request) -> io::Result<Response> {
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
    if let Some(c) = &status.cluster {
        out.push_str(&format!(
            "cluster member {}  {}  decider {}  members {}\n",
            c.name,
            if c.connected {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            c.decider.as_deref().unwrap_or("-"),
            c.members.join(",")
        ));
    }
    for service in &status.services {
        out.push_str(&format!(
            "service {}  listen {}  active {}",
            service.name,
            service.listen.as_deref().unwrap_or("-"),
            service.active.as_deref().unwrap_or("-")
        ));
        if let Some(generation) = service.generation {
            out.push_str(&format!("  generation {generation}"));
        }
        out.push('\n');
        out.push_str(&format!(
            "  {:<3} {:<16} {:<28} {:<5} {:<9} {:>8} {:>6}\n",
            "", "BACKEND", "ADDRESS", "STATE", "ENABLED", "FAILURES", "CONNS"
        ));
        if let Some(held) = service.held {
            out.push_str(&format!("  held clients {held}\n"));
        }
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
            if let Some(err) = &b.last_check_error {
                out.push_str(&format!("        last check failed: {err}\n"));
            }
        }
    }
    out
}

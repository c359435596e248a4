//! One client connection: choose a backend, connect (trying the next one on
//! failure), then hand both sockets to `forward`.
//!
//! Only backend-side connect failures feed passive detection; client-side
//! errors never count against a backend.
//!
//! Under `on_switch = "close"` no connection may outlive a switch away from
//! its backend. So a connection registers on a backend (takes its close
//! token) *before* it checks that the snapshot it chose from is still
//! current, and chooses again if a switch slipped in (`Service::register`).
//! A connection whose connect fell back to a backend that is not the
//! active one (the active one refused or timed out, yet is not down) is
//! tied to the active backend's health: it is closed as soon as the active
//! backend proves to serve again, at its next passing check or its next
//! client connect, or kept if a switch makes its backend the active one.
//! A database thus takes writes on two servers at most until the primary
//! is seen serving again, never for the rest of a long session.
//!
//! At the front door, before any backend is contacted: with `accept_proxy`
//! the PROXY header a load balancer wrote is read (exactly its bytes, by
//! `connect_timeout`) and its source becomes the client's address; with
//! `allow`, a client outside the list is closed. Both count in
//! `failoverd_rejected_total`. With `send_proxy` the backend gets a header
//! naming that client before its first byte.
//!
//! With `hold_timeout`, a client no backend can take is held instead of
//! closed (SPEC.md: Hold): nothing is read from it, so the bytes it sends
//! meanwhile wait in its socket and are forwarded intact once a backend
//! takes it. It tries again whenever the engine reports a change, and at
//! least every `check_interval`, until `hold_timeout` passes or the proxy
//! shuts down. It keeps its `max_connections` slot while held.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{OnSwitch, ProxyVersion, Settings};
use crate::forward::{self, ForwardOptions};
use crate::limit::Slot;
use crate::net;
use crate::proxy_header;
use crate::ratelimit::LogLimit;
use crate::service::{Backend, Mode, Service, Snapshot};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many times a connection chooses again because a switch replaced
/// the snapshot between its choice and its registration; the last round
/// goes ahead regardless (a switch closes it, or it is a fallback).
const CHOOSE_ROUNDS: u32 = 3;

/// A backend connection ready to forward.
struct Connected {
    backend: Arc<Backend>,
    upstream: TcpStream,
    /// Taken before the connect, so a switch during it still closes this.
    close: CancellationToken,
}

enum Attempt {
    Connected(Connected),
    /// A switch or reload replaced the snapshot: choose again.
    Switched,
    /// Every backend failed (or a local resource error stopped the tries).
    Failed,
}

/// Who a client is: its address (the PROXY header's source with
/// `accept_proxy`) and, when the header named it, the address it connected
/// to (otherwise read from the socket, and only if `send_proxy` needs it).
#[derive(Clone, Copy, Debug)]
struct Client {
    source: SocketAddr,
    destination: Option<SocketAddr>,
}

/// Serve one accepted client. `_slot` holds its `max_connections` slot.
pub async fn handle(client: TcpStream, peer: SocketAddr, service: Arc<Service>, _slot: Slot) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let first = service.snapshot();
    if first.mode == Mode::Refusing {
        // Cut off from the cluster (on_lost = "close"): reset at once.
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
        service.client_failures.increment(1);
        return;
    }
    // TCP_NODELAY and keepalive came from the listener (see `net::bind_std`).
    let Some(who) = front_door(&client, peer, &service, &first.settings, id).await else {
        return;
    };
    drop(first);
    let peer = who.source;
    let connected = match choose(&service, id).await {
        Some(connected) => Some(connected),
        None => hold(&service, id, peer).await,
    };
    let Some((
        snapshot,
        Connected {
            backend,
            mut upstream,
            close,
        },
    )) = connected
    else {
        service.client_failures.increment(1);
        if let Some(suppressed) = service.client_failure_log.check() {
            warn!(service = %service.name, id, %peer, suppressed, "every backend failed, closing client");
        }
        return;
    };
    let settings = &snapshot.settings;
    if let Err(err) = send_header(&mut upstream, &client, settings, who).await {
        debug!(service = %service.name, id, %peer, backend = %backend.name, error = %err, "writing the PROXY header to the backend failed");
        return;
    }
    if settings.on_switch == OnSwitch::Close {
        // Against the snapshot of now, after the connect: a switch to this
        // backend meanwhile makes it no fallback.
        if service.is_active(&backend) {
            service.confirm_active(&backend);
        } else {
            service.note_fallback();
        }
    }
    let options = ForwardOptions {
        zero_copy: settings.zero_copy,
        idle_timeout: settings.idle_timeout,
        backend_later: Some((net::BACKEND_KEEPALIVE_AFTER, net::backend_keepalive)),
    };
    let _guard = backend.open_connection();
    let started = Instant::now();
    let result = forward::forward(client, upstream, options, &backend.metrics.bytes, &close).await;
    log_end(&service, &backend, id, peer, started, result);
}

/// `accept_proxy` and `allow` (SPEC.md: PROXY protocol, Allow-list): who
/// the client is, or `None` when it was closed here (counted and logged).
/// Without either setting it costs nothing.
async fn front_door(
    client: &TcpStream,
    peer: SocketAddr,
    service: &Service,
    settings: &Settings,
    id: u64,
) -> Option<Client> {
    let mut who = Client {
        source: peer,
        destination: None,
    };
    let rejected = &service.rejected;
    if settings.accept_proxy {
        let deadline = tokio::time::Instant::now()
            .checked_add(settings.connect_timeout)
            .unwrap_or_else(far_future);
        match proxy_header::read_header(client, deadline).await {
            Ok(header) => {
                if let (Some(source), Some(destination)) = (header.source, header.destination) {
                    who = Client {
                        source,
                        destination: Some(destination),
                    };
                }
            }
            Err(proxy_header::HeaderError::Closed { received: 0 }) => {
                // A TCP health check of this port (keepalived, a load
                // balancer) connects and closes: nothing to reject.
                debug!(service = %service.name, id, %peer, "client closed before sending anything");
                return None;
            }
            Err(err) => {
                rejected.proxy_header.increment(1);
                if let Some(suppressed) = rejected.log.check() {
                    warn!(service = %service.name, id, %peer, error = %err, suppressed, "client rejected: bad PROXY header");
                }
                return None;
            }
        }
    }
    if !settings.allow.is_empty() && !settings.allow.allows(who.source.ip()) {
        rejected.allow.increment(1);
        if let Some(suppressed) = rejected.log.check() {
            warn!(service = %service.name, id, client = %who.source, %peer, suppressed, "client rejected: not in allow");
        }
        return None;
    }
    Some(who)
}

/// A deadline that never comes (an Instant cannot hold "now + a year"
/// on every platform; validation bounds durations, this is the fallback).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400)
}

/// `send_proxy`: the header naming `who`, written before any client byte,
/// within `connect_timeout`. The address the client connected to comes
/// from its own header, else from the client socket.
async fn send_header(
    upstream: &mut TcpStream,
    client: &TcpStream,
    settings: &Settings,
    who: Client,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let version = match settings.send_proxy {
        ProxyVersion::Off => return Ok(()),
        ProxyVersion::V1 => proxy_header::Version::V1,
        ProxyVersion::V2 => proxy_header::Version::V2,
    };
    let destination = match who.destination {
        Some(destination) => destination,
        None => client.local_addr()?,
    };
    let header = proxy_header::encode(version, who.source, destination);
    match tokio::time::timeout(settings.connect_timeout, upstream.write_all(&header)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the backend took no PROXY header within connect_timeout",
        )),
    }
}

/// Choose a backend and connect: the current snapshot's backends in
/// order, again from a new snapshot if a switch replaced it meanwhile.
async fn choose(service: &Service, id: u64) -> Option<(Arc<Snapshot>, Connected)> {
    let mut snapshot = service.snapshot();
    let mut round = 1;
    loop {
        // In cluster mode a connection never goes ahead on a replaced
        // snapshot: the switch's first step must find it (SPEC.md: Cluster).
        let cluster = snapshot.mode.is_cluster();
        match connect(service, &snapshot, id, cluster || round < CHOOSE_ROUNDS).await {
            Attempt::Connected(connected) => return Some((snapshot, connected)),
            Attempt::Switched if cluster && round >= CHOOSE_ROUNDS => return None,
            Attempt::Switched => {
                round += 1;
                snapshot = service.snapshot();
            }
            Attempt::Failed => return None,
        }
    }
}

/// No backend took the client: hold it (when `hold_timeout` is set) and
/// try again at every change the engine reports and at least every
/// `check_interval`, until a backend takes it, `hold_timeout` passes or
/// the proxy shuts down. `None`: closed unserved (counted by the caller).
async fn hold(service: &Service, id: u64, peer: SocketAddr) -> Option<(Arc<Snapshot>, Connected)> {
    let hold = &service.hold;
    let timeout = service.snapshot().settings.hold_timeout?;
    if hold.closing().is_cancelled() {
        return None;
    }
    let started = tokio::time::Instant::now();
    // A deadline past what an Instant holds never comes.
    let deadline = started.checked_add(timeout);
    let _held = hold.enter();
    let mut changes = hold.subscribe();
    debug!(service = %service.name, id, %peer, "no backend can take the client, holding it");
    loop {
        let retry = service.snapshot().settings.check_interval;
        let woken = tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            () = tokio::time::sleep(retry) => true,
            () = sleep_until_or_never(deadline) => false,
            () = hold.closing().cancelled() => return None,
        };
        if !woken {
            break;
        }
        changes.borrow_and_update();
        if service.snapshot().mode == Mode::Refusing {
            // Cut off from the cluster: the held client is refused too.
            return None;
        }
        if let Some(connected) = choose(service, id).await {
            hold.served.increment(1);
            let waited_ms = started.elapsed().as_millis() as u64;
            debug!(service = %service.name, id, %peer, waited_ms, "held client served");
            return Some(connected);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    hold.timed_out.increment(1);
    debug!(service = %service.name, id, %peer, "hold_timeout passed, closing the held client");
    None
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Try the backends of `snapshot` in order. With `verify`, return
/// [`Attempt::Switched`] when a switch replaced `snapshot` before a
/// connection registered on its backend.
async fn connect(service: &Service, snapshot: &Arc<Snapshot>, id: u64, verify: bool) -> Attempt {
    let settings = &snapshot.settings;
    for backend in snapshot.connect_order() {
        let close = match service.register(snapshot, backend) {
            Some(close) => close,
            None if verify => return Attempt::Switched,
            None => backend.close_token(),
        };
        match net::connect(backend.addresses(), settings.connect_timeout).await {
            Ok(_) if snapshot.mode.is_cluster() && close.is_cancelled() => {
                // The first step of a cluster switch closed this backend's
                // connections while this one was being made: drop it.
                return Attempt::Switched;
            }
            Ok(upstream) => {
                backend.record_connect_ok();
                if let Err(err) = net::tune(&upstream) {
                    debug!(service = %service.name, id, error = %err, "backend socket options failed");
                }
                return Attempt::Connected(Connected {
                    backend: Arc::clone(backend),
                    upstream,
                    close,
                });
            }
            Err(err) if net::is_resource_error(&err) => {
                // Out of fds or memory here: not the backend's fault, and
                // the next backend would fail the same way.
                static LIMIT: LogLimit = LogLimit::new();
                if let Some(suppressed) = LIMIT.check() {
                    warn!(service = %service.name, id, error = %err, suppressed, "no resources to connect, closing client");
                }
                return Attempt::Failed;
            }
            Err(err) if net::is_local_error(&err) => {
                // No free local port, or a local firewall: this host's
                // fault, never counted against the backend; the next
                // backend may still be reachable.
                static LIMIT: LogLimit = LogLimit::new();
                if let Some(suppressed) = LIMIT.check() {
                    warn!(
                        service = %service.name, id, backend = %backend.name,
                        address = %backend.address, error = %err, suppressed,
                        "local error connecting to backend, not counted against it"
                    );
                }
            }
            Err(err) => {
                if let Some(suppressed) = backend.connect_error_log.check() {
                    warn!(
                        service = %service.name, id, backend = %backend.name,
                        address = %backend.address, error = %err, suppressed,
                        "backend connect failed"
                    );
                }
                service.report_connect_error(backend, settings.passive_errors);
            }
        }
    }
    Attempt::Failed
}

fn log_end(
    service: &Service,
    backend: &Backend,
    id: u64,
    peer: SocketAddr,
    started: Instant,
    result: io::Result<(forward::Outcome, forward::Transferred)>,
) {
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((outcome, bytes)) => debug!(
            service = %service.name, id, %peer, backend = %backend.name,
            to_backend = bytes.to_backend, to_client = bytes.to_client, ms,
            outcome = ?outcome, "connection closed"
        ),
        Err(err) => debug!(
            service = %service.name, id, %peer, backend = %backend.name, ms,
            error = %err, "connection ended by error"
        ),
    }
}

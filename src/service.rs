//! The state of a running service, shared by everything above it: its
//! backends, the snapshot the data path reads, the `max_connections` limit
//! and the events the failover engine consumes.
//!
//! A [`Service`] holds one [`ArcSwap`] of an immutable [`Snapshot`]: the
//! effective settings, the backends in priority order and the index of the
//! active one. The failover engine (`engine.rs`) is the only writer; a
//! connection loads the snapshot once and keeps it for its life. Per-backend
//! health flags are atomics so the data path can order its connect attempts
//! without a lock. This module decides nothing and does no I/O.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BackendAddress, BackendConfig, ServiceConfig, Settings};
use crate::forward::ByteCounters;
use crate::limit::Limit;
use crate::metrics as m;
use crate::policy::{Hysteresis, SwitchReason};
use crate::ratelimit::LogLimit;

/// One backend of one service. Shared by every snapshot that contains it, so
/// a reload that keeps a backend (same name and address) keeps its state.
pub struct Backend {
    pub service: String,
    pub name: String,
    pub address: BackendAddress,
    /// The address `[service.dns]` publishes while this backend is active;
    /// a reload may change it without touching the backend's health.
    publish: ArcSwapOption<IpAddr>,
    /// Where connects go: the literal address, or the last good resolution
    /// of the hostname, refreshed by the check loop. The data path never
    /// resolves a name (a DNS outage must not fail a healthy backend).
    addresses: ArcSwap<Vec<SocketAddr>>,
    /// Wakes connects waiting for a hostname's first resolution.
    resolved: Notify,
    /// Why the last health check failed, for `ctl status`; `None` after a pass.
    last_check_error: ArcSwapOption<String>,
    up: AtomicBool,
    enabled: AtomicBool,
    /// Consecutive failed connects on live traffic.
    passive_errors: AtomicU32,
    /// Open client connections on this backend.
    connections: AtomicU64,
    /// Failed connects on live traffic are logged at most once a second.
    pub connect_error_log: LogLimit,
    /// Cancelled (and replaced) to close every connection on this backend.
    close: ArcSwap<CancellationToken>,
    /// Parent of every `close` token: cancelled when a shutdown closes
    /// whatever is still open.
    force_close: CancellationToken,
    /// Health bookkeeping only the engine touches (uncontended).
    pub(crate) health: Mutex<Health>,
    pub metrics: BackendMetrics,
}

/// Health bookkeeping owned by the failover engine.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    pub hysteresis: Hysteresis,
    /// When the backend last became up (start-up counts).
    pub up_since: Option<Instant>,
    /// When the up/down state last changed.
    pub last_change: Instant,
    /// Why it went down: [`SwitchReason::HealthCheck`] or [`SwitchReason::Passive`].
    pub down_reason: SwitchReason,
    /// A health check has passed since this backend was created. Only then
    /// may DNS name it: a backend that is up by assumption at start-up may
    /// be dead, and resolvers would cache its address for the whole TTL.
    pub passed_a_check: bool,
    /// A check or passive detection has given a result since this backend
    /// was created: only then does it vote in a cluster (before, its state
    /// is an assumption).
    pub has_result: bool,
}

/// Metric handles resolved once per backend.
pub struct BackendMetrics {
    pub connections_total: Counter,
    pub connections_active: Gauge,
    pub connect_errors: Counter,
    pub bytes: ByteCounters,
    pub up: Gauge,
    pub active: Gauge,
    pub checks_ok: Counter,
    pub checks_fail: Counter,
    pub check_duration: Histogram,
    pub last_check: Gauge,
}

impl BackendMetrics {
    fn new(service: &str, backend: &str) -> Self {
        let labels = [
            ("service", service.to_string()),
            ("backend", backend.to_string()),
        ];
        let with = |key: &'static str, value: &'static str| {
            let mut l = labels.to_vec();
            l.push((key, value.to_string()));
            l
        };
        BackendMetrics {
            connections_total: metrics::counter!(m::CONNECTIONS_TOTAL, &labels),
            connections_active: metrics::gauge!(m::CONNECTIONS_ACTIVE, &labels),
            connect_errors: metrics::counter!(m::CONNECT_ERRORS_TOTAL, &labels),
            bytes: ByteCounters {
                to_backend: metrics::counter!(m::BYTES_TOTAL, &with("direction", "to_backend")),
                to_client: metrics::counter!(m::BYTES_TOTAL, &with("direction", "to_client")),
            },
            up: metrics::gauge!(m::BACKEND_UP, &labels),
            active: metrics::gauge!(m::BACKEND_ACTIVE, &labels),
            checks_ok: metrics::counter!(m::HEALTH_CHECKS_TOTAL, &with("result", "ok")),
            checks_fail: metrics::counter!(m::HEALTH_CHECKS_TOTAL, &with("result", "fail")),
            check_duration: metrics::histogram!(m::HEALTH_CHECK_DURATION_SECONDS, &labels),
            last_check: metrics::gauge!(m::LAST_HEALTH_CHECK_TIMESTAMP_SECONDS, &labels),
        }
    }
}

impl Backend {
    /// A new backend starts up and enabled (SPEC.md: Start-up), except
    /// with a role-aware check (`role_aware`): then it starts down and is
    /// up at its first passing check.
    pub fn new(
        service: &str,
        config: &BackendConfig,
        force_close: &CancellationToken,
        role_aware: bool,
    ) -> Self {
        let name = config.name.as_str();
        let metrics = BackendMetrics::new(service, name);
        metrics.up.set(if role_aware { 0.0 } else { 1.0 });
        let now = Instant::now();
        let hysteresis = if role_aware {
            Hysteresis::new_awaiting_first_check()
        } else {
            Hysteresis::new_up()
        };
        let addresses = match &config.address {
            BackendAddress::Ip(addr) => vec![*addr],
            BackendAddress::Host { .. } => Vec::new(),
        };
        Backend {
            service: service.to_string(),
            name: name.to_string(),
            address: config.address.clone(),
            publish: ArcSwapOption::from(config.publish.map(Arc::new)),
            addresses: ArcSwap::from_pointee(addresses),
            resolved: Notify::new(),
            last_check_error: ArcSwapOption::empty(),
            up: AtomicBool::new(hysteresis.up),
            enabled: AtomicBool::new(true),
            passive_errors: AtomicU32::new(0),
            connections: AtomicU64::new(0),
            connect_error_log: LogLimit::new(),
            close: ArcSwap::from_pointee(force_close.child_token()),
            force_close: force_close.clone(),
            health: Mutex::new(Health {
                hysteresis,
                up_since: (!role_aware).then_some(now),
                last_change: now,
                down_reason: SwitchReason::HealthCheck,
                passed_a_check: false,
                has_result: false,
            }),
            metrics,
        }
    }

    /// This backend's health as a takeover hands it to the next process.
    pub fn handed(&self) -> HandedBackend {
        let (passed_a_check, has_result) = self
            .health
            .lock()
            .map(|h| (h.passed_a_check, h.has_result))
            .unwrap_or((false, false));
        HandedBackend {
            name: self.name.clone(),
            address: self.address.to_string(),
            up: self.is_up(),
            enabled: self.is_enabled(),
            passed_a_check,
            has_result,
        }
    }

    /// Take the health the previous process handed over (`run --takeover`):
    /// up or down as it saw it, so an upgrade causes no failover. Rise and
    /// fall count from here.
    pub fn restore(&self, handed: &HandedBackend) {
        if let Ok(mut health) = self.health.lock() {
            health.hysteresis = if handed.up {
                Hysteresis::new_up()
            } else {
                Hysteresis {
                    up: false,
                    consecutive_ok: 0,
                    consecutive_fail: 0,
                    awaiting_first: false,
                }
            };
            health.up_since = handed.up.then(Instant::now);
            health.passed_a_check = handed.passed_a_check;
            health.has_result = handed.has_result;
        }
        self.set_up(handed.up);
        self.set_enabled(handed.enabled);
    }

    /// Why the last health check failed; `None` once one passed.
    pub fn last_check_error(&self) -> Option<String> {
        self.last_check_error.load().as_deref().cloned()
    }

    pub fn set_last_check_error(&self, error: Option<String>) {
        // Checks mostly pass: do not swap an empty slot for an empty one.
        if error.is_some() || self.last_check_error.load().is_some() {
            self.last_check_error.store(error.map(Arc::new));
        }
    }

    /// The address DNS publishes for this backend, if any.
    pub fn publish(&self) -> Option<IpAddr> {
        self.publish.load().as_deref().copied()
    }

    pub fn set_publish(&self, publish: Option<IpAddr>) {
        self.publish.store(publish.map(Arc::new));
    }

    /// The addresses to connect to; for a hostname not resolved yet, waits
    /// for its check loop's first resolution (callers bound the wait).
    pub async fn addresses(&self) -> Arc<Vec<SocketAddr>> {
        // The common case takes no lock (registering a waiter would).
        let current = self.addresses.load_full();
        if !current.is_empty() {
            return current;
        }
        loop {
            let resolved = self.resolved.notified();
            tokio::pin!(resolved);
            // Registered before looking, so a store in between is not missed.
            resolved.as_mut().enable();
            let current = self.addresses.load_full();
            if !current.is_empty() {
                return current;
            }
            resolved.await;
        }
    }

    /// Store a good resolution of the hostname (the check loop does). An
    /// empty one is ignored: the last good addresses stay in use.
    pub fn set_addresses(&self, addrs: &[SocketAddr]) {
        if addrs.is_empty() || **self.addresses.load() == addrs {
            return;
        }
        self.addresses.store(Arc::new(addrs.to_vec()));
        self.resolved.notify_waiters();
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The token a new connection to this backend watches; take it before
    /// connecting so a switch during the connect still closes it.
    pub fn close_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.close.load())
    }

    /// Close every connection on this backend (switch with `on_switch = "close"`).
    pub fn close_connections(&self) {
        let old = self.close.swap(Arc::new(self.force_close.child_token()));
        old.cancel();
    }

    /// Record a failed connect on live traffic; returns the consecutive count.
    pub fn record_connect_error(&self) -> u32 {
        self.metrics.connect_errors.increment(1);
        self.passive_errors.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Record a successful connect: the consecutive count starts over.
    pub fn record_connect_ok(&self) {
        // Read first: most connects succeed and the count is already 0, so
        // the cache line stays shared between cores.
        if self.passive_errors.load(Ordering::Relaxed) != 0 {
            self.passive_errors.store(0, Ordering::Relaxed);
        }
    }

    pub fn passive_errors(&self) -> u32 {
        self.passive_errors.load(Ordering::Relaxed)
    }

    /// Reset the passive count (the engine does this when it marks the backend down or up).
    pub fn reset_passive_errors(&self) {
        self.passive_errors.store(0, Ordering::Relaxed);
    }

    /// Consecutive failures as shown by `ctl status`: failed checks, or
    /// failed connects on live traffic, whichever run is longer.
    pub fn consecutive_failures(&self) -> u32 {
        let checks = self
            .health
            .lock()
            .map(|e| e.hysteresis.consecutive_fail)
            .unwrap_or(0);
        checks.max(self.passive_errors())
    }

    /// Count one open connection until the guard drops.
    pub fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_total.increment(1);
        self.metrics.connections_active.increment(1.0);
        ConnectionGuard(Arc::clone(self))
    }
}

/// Decrements the backend's open-connection count on drop.
pub struct ConnectionGuard(Arc<Backend>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections_active.decrement(1.0);
    }
}

/// One backend's health, as `run --takeover` carries it to the next
/// process (matched there by name and address).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedBackend {
    pub name: String,
    pub address: String,
    pub up: bool,
    pub enabled: bool,
    pub passed_a_check: bool,
    pub has_result: bool,
}

/// One service's state, as `run --takeover` carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedService {
    pub name: String,
    /// The bound listen address of the sockets that come with it.
    pub listen: Option<std::net::SocketAddr>,
    /// How many of the frame's descriptors are this service's sockets.
    pub sockets: usize,
    pub active: Option<String>,
    pub backends: Vec<HandedBackend>,
}

/// What the data path needs, swapped whole by the engine.
pub struct Snapshot {
    pub settings: Arc<Settings>,
    /// Priority order: index 0 is the primary.
    pub backends: Vec<Arc<Backend>>,
    /// Index into `backends` of the active backend; `None` when none is up.
    pub active: Option<usize>,
    /// Who chose `active`: this instance alone, or the cluster.
    pub mode: Mode,
}

/// How the active backend is chosen (SPEC.md: Cluster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// This instance decides alone, and a failed connect tries the others.
    #[default]
    Alone,
    /// A cluster member: `active` is the agreed backend of `generation`
    /// (`None`: hold new clients) and no other backend is ever tried.
    Agreed { generation: u64 },
    /// A cluster member cut off from etcd for longer than `ttl` with
    /// `on_lost = "close"`: every client is refused.
    Refusing,
}

impl Mode {
    pub fn is_cluster(self) -> bool {
        self != Mode::Alone
    }
}

impl Snapshot {
    pub fn active_backend(&self) -> Option<&Arc<Backend>> {
        self.active.and_then(|i| self.backends.get(i))
    }

    /// The order in which a new connection tries backends (SPEC.md: Choosing
    /// a backend): the active one, then the other up ones in priority order,
    /// then the down ones — but never a down one whose role-aware check
    /// failed (a standby accepts connections and must not take the
    /// traffic). Disabled backends are never tried.
    ///
    /// In cluster mode only the agreed backend is tried, and none while
    /// refusing (SPEC.md: Cluster).
    pub fn connect_order(&self) -> impl Iterator<Item = &Arc<Backend>> {
        let active = self.active;
        let alone = self.mode == Mode::Alone;
        let last_resort = alone && !self.settings.check.is_role_aware();
        let first = match self.mode {
            Mode::Alone => self.active_backend().filter(|b| b.is_enabled()),
            // Maintenance is cluster-wide: the decider has applied it.
            Mode::Agreed { .. } => self.active_backend(),
            Mode::Refusing => None,
        };
        let others = |want_up: bool| {
            self.backends
                .iter()
                .enumerate()
                .filter(move |(i, b)| {
                    alone && Some(*i) != active && b.is_enabled() && b.is_up() == want_up
                })
                .map(|(_, b)| b)
        };
        let down = others(false).filter(move |_| last_resort);
        first.into_iter().chain(others(true)).chain(down)
    }
}

/// One service as the listener and the data path see it.
pub struct Service {
    pub name: String,
    /// The snapshot new connections use; only the engine stores into it.
    pub current: ArcSwap<Snapshot>,
    pub client_failures: Counter,
    /// "every backend failed" is logged at most once a second.
    pub client_failure_log: LogLimit,
    /// `max_connections`; a reload resizes it in place.
    pub limit: Arc<Limit>,
    /// Set when a connection fell back to a backend that is not the active
    /// one under `on_switch = "close"`; the engine clears it when it closes
    /// such connections (see [`Service::note_fallback`]).
    pub fallbacks: AtomicBool,
    /// Client connections waiting for a backend (`hold_timeout`).
    pub hold: Hold,
    /// Clients closed at the front door (`allow`, `accept_proxy`).
    pub rejected: Rejected,
    pub(crate) events: mpsc::UnboundedSender<Event>,
}

/// Clients closed before any backend was contacted, by reason
/// (`failoverd_rejected_total`), and their rate-limited log.
pub struct Rejected {
    pub allow: Counter,
    pub proxy_header: Counter,
    /// One "rejected" line a second at most, whatever the reason.
    pub log: LogLimit,
}

impl Rejected {
    pub fn new(service: &str) -> Rejected {
        let with = |reason: &'static str| metrics::counter!(m::REJECTED_TOTAL, "service" => service.to_string(), "reason" => reason);
        Rejected {
            allow: with("allow"),
            proxy_header: with("proxy_header"),
            log: LogLimit::new(),
        }
    }
}

/// Where held client connections wait (SPEC.md: Hold): the engine wakes
/// them whenever the snapshot changes or a backend comes up, so they try
/// again at once; a shutdown closes them.
pub struct Hold {
    /// Bumped by the engine on every change a held client may care about.
    changed: watch::Sender<u64>,
    /// Cancelled at shutdown: held clients are closed, not drained.
    closing: CancellationToken,
    held: AtomicU64,
    gauge: Gauge,
    pub served: Counter,
    pub timed_out: Counter,
}

impl Hold {
    pub fn new(service: &str) -> Hold {
        let with = |result: &'static str| metrics::counter!(m::HELD_TOTAL, "service" => service.to_string(), "result" => result);
        Hold {
            changed: watch::channel(0).0,
            closing: CancellationToken::new(),
            held: AtomicU64::new(0),
            gauge: metrics::gauge!(m::CONNECTIONS_HELD, "service" => service.to_string()),
            served: with("served"),
            timed_out: with("timeout"),
        }
    }

    /// Wake every held client: try the backends again now.
    pub fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes after the next [`Hold::wake`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Cancelled when the proxy shuts down.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Close every held client and refuse to hold new ones (shutdown).
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Client connections held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Count one held client until the guard drops.
    pub fn enter(&self) -> HeldGuard<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
        HeldGuard(self)
    }
}

/// One held client, counted in `failoverd_connections_held` while it lives.
pub struct HeldGuard<'a>(&'a Hold);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

impl Service {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether `snapshot` is still the one new connections use.
    pub fn is_current(&self, snapshot: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(&self.current.load(), snapshot)
    }

    /// Whether `backend` is the active backend now.
    pub fn is_active(&self, backend: &Arc<Backend>) -> bool {
        self.current
            .load()
            .active_backend()
            .is_some_and(|a| Arc::ptr_eq(a, backend))
    }

    /// The close token for a connection to `backend`, chosen from
    /// `chosen`; `None` when a switch or reload replaced that snapshot in
    /// the meantime (choose again). The engine stores a new snapshot
    /// *before* it closes connections, so either this token is one that
    /// switch cancels, or the check here sees the new snapshot: no switch
    /// slips between choosing a backend and registering on it.
    pub fn register(&self, chosen: &Arc<Snapshot>, backend: &Backend) -> Option<CancellationToken> {
        let token = backend.close_token();
        self.is_current(chosen).then_some(token)
    }

    /// A connection now runs on a backend that is not the active one (its
    /// connect fell back, or none is active) under `on_switch = "close"`:
    /// the engine closes it as soon as the active backend proves to serve
    /// (its next passing check, or its next client connect), so two
    /// backends never take writes for longer than that.
    pub fn note_fallback(&self) {
        self.fallbacks.store(true, Ordering::SeqCst);
    }

    /// A client connect to the active backend succeeded: if connections
    /// fell back elsewhere meanwhile, ask the engine to close them. One
    /// relaxed load when there are none.
    pub fn confirm_active(&self, backend: &Arc<Backend>) {
        if self.fallbacks.load(Ordering::Relaxed) {
            let _ = self.events.send(Event::ActiveServes(Arc::clone(backend)));
        }
    }

    /// The data path's hook for a failed connect (passive detection).
    pub fn report_connect_error(&self, backend: &Arc<Backend>, threshold: u32) {
        let count = backend.record_connect_error();
        if threshold > 0 && count >= threshold && backend.is_up() {
            // The engine may be gone during shutdown; nothing to do then.
            let _ = self.events.send(Event::PassiveDown(Arc::clone(backend)));
        }
    }
}

/// Messages to a service's engine.
pub enum Event {
    /// One active check finished.
    Check { backend: Arc<Backend>, ok: bool },
    /// `passive_errors` consecutive failed connects on live traffic.
    PassiveDown(Arc<Backend>),
    /// A client connect to this (active) backend succeeded while
    /// connections that fell back to other backends are open.
    ActiveServes(Arc<Backend>),
    /// `ctl enable` / `ctl disable`; replies false for an unknown backend.
    SetEnabled {
        backend: String,
        enabled: bool,
        reply: oneshot::Sender<bool>,
    },
    /// Cluster mode, on the decider only: the cluster completed a switch
    /// of this service (count it, log it, run `notify` once for all).
    ClusterSwitched {
        from: Option<String>,
        to: Option<String>,
        reason: SwitchReason,
        generation: u64,
    },
    /// Apply a new config of this service (same name).
    Reload {
        config: Box<ServiceConfig>,
        reply: oneshot::Sender<()>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(states: &[(bool, bool)], active: Option<usize>) -> Snapshot {
        let root = CancellationToken::new();
        let backends = states
            .iter()
            .enumerate()
            .map(|(i, &(up, enabled))| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                let config = BackendConfig {
                    name: format!("b{i}"),
                    address: BackendAddress::Ip(addr),
                    publish: None,
                };
                let b = Backend::new("svc", &config, &root, false);
                b.set_up(up);
                b.set_enabled(enabled);
                Arc::new(b)
            })
            .collect();
        Snapshot {
            settings: Arc::new(Settings::default()),
            backends,
            active,
            mode: Mode::Alone,
        }
    }

    fn service(snapshot: Snapshot) -> Service {
        let (events, _) = mpsc::unbounded_channel();
        Service {
            name: "svc".into(),
            current: ArcSwap::from_pointee(snapshot),
            client_failures: Counter::noop(),
            client_failure_log: LogLimit::new(),
            limit: Limit::new(0),
            fallbacks: AtomicBool::new(false),
            hold: Hold::new("svc"),
            rejected: Rejected::new("svc"),
            events,
        }
    }

    /// What the engine does at a switch, in its order: store the new
    /// snapshot, then close the connections on the other backends.
    fn switch_to(service: &Service, active: usize) {
        let old = service.snapshot();
        service.current.store(Arc::new(Snapshot {
            settings: Arc::clone(&old.settings),
            backends: old.backends.clone(),
            active: Some(active),
            mode: Mode::Alone,
        }));
        for (i, b) in old.backends.iter().enumerate() {
            if i != active {
                b.close_connections();
            }
        }
    }

    #[test]
    fn no_switch_slips_between_choosing_and_registering() {
        let svc = service(snapshot(&[(true, true), (true, true)], Some(0)));
        // Registered, then the switch: the switch cancels the token.
        let chosen = svc.snapshot();
        let token = svc
            .register(&chosen, &chosen.backends[0])
            .expect("no switch yet");
        switch_to(&svc, 1);
        assert!(token.is_cancelled(), "a switch away from b0 closes it");
        // Chosen, then the switch, then registering: told to choose again.
        let chosen = svc.snapshot();
        switch_to(&svc, 0);
        assert!(svc.register(&chosen, &chosen.backends[1]).is_none());
        // Mid-switch (snapshot stored, tokens not yet swapped): choose again.
        let chosen = svc.snapshot();
        let old = svc.snapshot();
        svc.current.store(Arc::new(Snapshot {
            settings: Arc::clone(&old.settings),
            backends: old.backends.clone(),
            active: Some(1),
            mode: Mode::Alone,
        }));
        assert!(svc.register(&chosen, &chosen.backends[0]).is_none());
    }

    #[test]
    fn is_active_follows_the_current_snapshot() {
        let svc = service(snapshot(&[(true, true), (true, true)], Some(0)));
        let backends = svc.snapshot().backends.clone();
        assert!(svc.is_active(&backends[0]) && !svc.is_active(&backends[1]));
        switch_to(&svc, 1);
        assert!(!svc.is_active(&backends[0]) && svc.is_active(&backends[1]));
    }

    fn order(s: &Snapshot) -> Vec<String> {
        s.connect_order().map(|b| b.name.clone()).collect()
    }

    #[test]
    fn connect_order_is_active_then_up_then_down_and_never_disabled() {
        type Case<'a> = (&'a [(bool, bool)], Option<usize>, &'a [&'a str]);
        let cases: &[Case] = &[
            (&[(true, true), (true, true)], Some(0), &["b0", "b1"]),
            (
                &[(false, true), (true, true), (true, true)],
                Some(1),
                &["b1", "b2", "b0"],
            ),
            (
                &[(true, true), (true, true), (false, true)],
                Some(1),
                &["b1", "b0", "b2"],
            ),
            (&[(false, true), (false, true)], None, &["b0", "b1"]),
            (&[(true, false), (true, true)], Some(1), &["b1"]),
            (&[(true, false), (false, false)], None, &[]),
        ];
        for (states, active, want) in cases {
            assert_eq!(
                order(&snapshot(states, *active)),
                *want,
                "states {states:?} active {active:?}"
            );
        }
    }

    #[test]
    fn a_down_backend_with_a_role_aware_check_is_never_a_last_resort() {
        use crate::config::CheckKind;
        for (kind, want) in [
            (CheckKind::Tcp, &["b1", "b0", "b2"][..]),
            (CheckKind::Redis, &["b1"][..]),
            (CheckKind::Postgres, &["b1"][..]),
            (CheckKind::Http, &["b1"][..]),
        ] {
            let mut s = snapshot(&[(false, true), (true, true), (false, true)], Some(1));
            s.settings = Arc::new(Settings {
                check: kind,
                ..Settings::default()
            });
            assert_eq!(order(&s), want, "check = {}", kind.as_str());
        }
        let mut s = snapshot(&[(false, true), (false, true)], None);
        s.settings = Arc::new(Settings {
            check: CheckKind::Postgres,
            ..Settings::default()
        });
        assert!(order(&s).is_empty(), "no writable backend: none is tried");
    }

    #[test]
    fn close_connections_cancels_old_tokens_only() {
        let s = snapshot(&[(true, true)], Some(0));
        let b = &s.backends[0];
        let old = b.close_token();
        b.close_connections();
        assert!(old.is_cancelled());
        assert!(!b.close_token().is_cancelled());
    }

    #[tokio::test]
    async fn a_hostname_backend_waits_for_its_first_resolution_and_keeps_the_last_good_one() {
        let root = CancellationToken::new();
        let config = BackendConfig {
            name: "b".into(),
            address: BackendAddress::Host {
                host: "db.internal".into(),
                port: 5432,
            },
            publish: None,
        };
        let b = Arc::new(Backend::new("svc", &config, &root, false));
        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.addresses().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing resolved yet");
        let first: SocketAddr = "10.0.0.7:5432".parse().unwrap();
        b.set_addresses(&[first]);
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*got, vec![first]);
        b.set_addresses(&[]);
        assert_eq!(
            *b.addresses().await,
            vec![first],
            "a failed lookup keeps the last"
        );
    }

    #[test]
    fn passive_errors_count_until_a_good_connect() {
        let s = snapshot(&[(true, true)], Some(0));
        let b = &s.backends[0];
        assert_eq!(b.record_connect_error(), 1);
        assert_eq!(b.record_connect_error(), 2);
        b.record_connect_ok();
        assert_eq!(b.passive_errors(), 0);
        assert_eq!(b.record_connect_error(), 1);
    }
}

//! The failover engine: one task per service, the only writer of its
//! snapshot.
//!
//! It owns the service's health-check tasks, receives their results, the
//! data path's passive connect errors, `ctl enable/disable` and reloads as
//! [`Event`]s, applies rise/fall and asks the pure decision function (both
//! in `policy.rs`) which backend is active, and on a change swaps the
//! pointer, logs, counts, closes connections on the other backends
//! (`on_switch = "close"`) and runs `notify`. It never touches client bytes.
//!
//! In cluster mode (SPEC.md: Cluster) the engine decides nothing: it
//! shares its view of the backends with the member, follows the agreed
//! state (swap the pointer, close connections per `on_switch`, then
//! acknowledge the generation), refuses clients when cut off from etcd
//! under `on_lost = "close"`, and on the decider runs `notify` once per
//! cluster switch and publishes DNS.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::{ClusterHandle, LocalView, Seen};
use crate::config::{OnLost, OnSwitch, ServiceConfig, Settings};
use crate::dns::Publish;
use crate::health;
use crate::limit::Limit;
use crate::metrics as m;
use crate::notify;
use crate::policy::{self, BackendView, Cause, Policy, SwitchReason};
use crate::ratelimit::LogLimit;
use crate::service::{
    Backend, Event, HandedService, Health, Hold, Mode, Rejected, Service, Snapshot,
};

/// A running engine: the service it steers and how to stop it.
pub struct EngineHandle {
    pub service: Arc<Service>,
    stop: CancellationToken,
}

impl EngineHandle {
    /// Ask the engine something and wait for its answer (None if it stopped).
    pub async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.service.events.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What an engine in cluster mode talks to.
#[derive(Clone)]
pub struct ClusterLink {
    pub handle: ClusterHandle,
    /// This instance's view of every service's backends, shared by the
    /// engines and read by the member.
    pub local: watch::Sender<LocalView>,
    pub on_lost: OnLost,
}

/// The cluster's state as one engine watches it.
struct ClusterWatches {
    agreed: watch::Receiver<Option<crate::cluster::Agreed>>,
    connected: watch::Receiver<bool>,
    decider: watch::Receiver<bool>,
}

/// Build a service from its config and start its engine and checks.
/// `force_close` is the parent of every connection's close token (shutdown).
/// `dns` receives the address to publish after every change of the active
/// backend (the DNS publisher follows it).
/// With `cluster`, the engine follows the cluster (see the module doc)
/// and new clients are held until a state is agreed. With `handed` (a
/// takeover), backends of the same name and address keep the health the
/// previous process saw, and its active backend stays active.
pub fn start(
    config: &ServiceConfig,
    force_close: &CancellationToken,
    dns: watch::Sender<Option<Publish>>,
    cluster: Option<ClusterLink>,
    handed: Option<&HandedService>,
) -> EngineHandle {
    let backends: Vec<Arc<Backend>> = config
        .backends
        .iter()
        .map(|b| {
            Arc::new(Backend::new(
                &config.name,
                b,
                force_close,
                config.settings.check.is_role_aware(),
            ))
        })
        .collect();
    let mut handed_active = None;
    if let Some(handed) = handed {
        for b in &backends {
            let address = b.address.to_string();
            if let Some(h) = handed
                .backends
                .iter()
                .find(|h| h.name == b.name && h.address == address)
            {
                b.restore(h);
            }
        }
        handed_active = handed
            .active
            .as_ref()
            .and_then(|name| backends.iter().position(|b| &b.name == name))
            .filter(|&i| backends[i].is_up() && backends[i].is_enabled());
    }
    let views = views(&backends);
    let (active, mode) = match cluster {
        None => (
            handed_active.or_else(|| policy::initial(&views)),
            Mode::Alone,
        ),
        Some(_) => (None, Mode::Agreed { generation: 0 }),
    };
    set_active_gauges(&backends, active);
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Arc::new(Service {
        name: config.name.clone(),
        current: ArcSwap::from_pointee(Snapshot {
            settings: Arc::new(config.settings.clone()),
            backends,
            active,
            mode,
        }),
        client_failures: metrics::counter!(m::CLIENT_FAILURES_TOTAL, "service" => config.name.clone()),
        client_failure_log: LogLimit::new(),
        limit: Limit::new(config.settings.max_connections),
        fallbacks: AtomicBool::new(false),
        hold: Hold::new(&config.name),
        rejected: Rejected::new(&config.name),
        events: tx,
    });
    let stop = CancellationToken::new();
    let watches = cluster.as_ref().and_then(|link| {
        Some(ClusterWatches {
            agreed: link.handle.agreed(&config.name)?,
            connected: link.handle.connected(),
            decider: link.handle.is_decider(),
        })
    });
    let engine = Engine {
        service: Arc::clone(&service),
        events: rx,
        force_close: force_close.clone(),
        checks: stop.child_token(),
        stop: stop.clone(),
        chosen: Cell::new(active.is_some()),
        dns,
        notifier: notify::Notifier::start(notify::NOTIFY_TIME_LIMIT),
        cluster,
        watches,
    };
    engine.share_view(&engine.service.snapshot());
    engine.publish_dns();
    engine.spawn_checks();
    tokio::spawn(engine.run());
    EngineHandle { service, stop }
}

struct Engine {
    service: Arc<Service>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Parent of the close tokens of backends a reload adds.
    force_close: CancellationToken,
    /// Cancelled to stop the current set of check tasks (reload, stop).
    checks: CancellationToken,
    stop: CancellationToken,
    /// An active backend has been chosen since start-up. Backends with a
    /// role-aware check start down, and the first choice after their first
    /// checks is not a switch (SPEC.md: Failover).
    chosen: Cell<bool>,
    /// What DNS should hold: the active backend's `publish` address.
    dns: watch::Sender<Option<Publish>>,
    /// Runs `notify` for this service, one run at a time.
    notifier: notify::Notifier,
    /// Cluster mode: the member this engine follows.
    cluster: Option<ClusterLink>,
    /// Cluster mode: what it watches (`None` once the member is gone).
    watches: Option<ClusterWatches>,
}

impl Engine {
    async fn run(mut self) {
        let mut recheck: Option<Instant> = None;
        loop {
            let wake = tokio::select! {
                event = self.events.recv() => Wake::Event(event),
                _ = wait_until(recheck) => Wake::Event(None),
                alive = cluster_change(self.watches.as_mut()) => Wake::Cluster(alive),
                _ = self.stop.cancelled() => break,
            };
            recheck = match wake {
                Wake::Event(Some(event)) => self.handle(event),
                Wake::Event(None) => self.evaluate(None),
                Wake::Cluster(alive) => {
                    if !alive {
                        // The member is gone (shutdown): keep the last state.
                        self.watches = None;
                    }
                    self.follow();
                    recheck
                }
            };
        }
        self.checks.cancel();
    }

    fn handle(&mut self, event: Event) -> Option<Instant> {
        match event {
            Event::Check { backend, ok } => {
                let first_pass = self.contains(&backend) && self.record_check(&backend, ok);
                let next = self.evaluate(None);
                if first_pass {
                    // The active backend may only now be fit for DNS.
                    self.publish_dns();
                }
                if ok {
                    self.close_fallbacks(&backend);
                }
                next
            }
            Event::ActiveServes(backend) => {
                self.close_fallbacks(&backend);
                self.evaluate(None)
            }
            Event::PassiveDown(backend) => {
                if self.contains(&backend) {
                    self.mark_passive_down(&backend);
                }
                self.evaluate(None)
            }
            Event::SetEnabled {
                backend,
                enabled,
                reply,
            } => {
                let snapshot = self.service.snapshot();
                let found = snapshot.backends.iter().find(|b| b.name == backend);
                let known = found.is_some();
                if let Some(b) = found {
                    if b.is_enabled() != enabled {
                        info!(service = %self.service.name, backend = %b.name, enabled, "backend maintenance state changed");
                    }
                    b.set_enabled(enabled);
                }
                let next = self.evaluate(None);
                // Reply once the switch (if any) is applied, so `ctl disable`
                // returns with traffic already moved.
                let _ = reply.send(known);
                next
            }
            Event::ClusterSwitched {
                from,
                to,
                reason,
                generation,
            } => {
                self.cluster_switched(from, to, reason, generation);
                None
            }
            Event::Reload { config, reply } => {
                let next = self.reload(*config);
                let _ = reply.send(());
                next
            }
        }
    }

    fn contains(&self, backend: &Arc<Backend>) -> bool {
        self.service
            .snapshot()
            .backends
            .iter()
            .any(|b| Arc::ptr_eq(b, backend))
    }

    /// Apply one check result; true when it is the backend's first pass.
    fn record_check(&self, backend: &Backend, ok: bool) -> bool {
        let settings = Arc::clone(&self.service.snapshot().settings);
        let Ok(mut health) = backend.health.lock() else {
            return false;
        };
        let first_pass = ok && !health.passed_a_check;
        health.passed_a_check |= ok;
        health.has_result = true;
        if let Some(up) = health.hysteresis.record(ok, settings.rise, settings.fall) {
            self.flip(backend, health, up, SwitchReason::HealthCheck);
        }
        first_pass
    }

    fn mark_passive_down(&self, backend: &Backend) {
        let Ok(mut health) = backend.health.lock() else {
            return;
        };
        health.has_result = true;
        if health.hysteresis.force_down() {
            self.flip(backend, health, false, SwitchReason::Passive);
        }
    }

    /// `backend` just proved to serve (a passing check, a client connect):
    /// if it is the active one, close the connections that fell back to
    /// other backends (`on_switch = "close"`, see `Service::note_fallback`).
    fn close_fallbacks(&self, backend: &Arc<Backend>) {
        let snapshot = self.service.snapshot();
        let active = snapshot.active_backend();
        if !active.is_some_and(|a| Arc::ptr_eq(a, backend))
            || snapshot.settings.on_switch != OnSwitch::Close
            || !self.service.fallbacks.swap(false, Ordering::SeqCst)
        {
            return;
        }
        let mut closed = 0;
        for b in snapshot
            .backends
            .iter()
            .filter(|b| !Arc::ptr_eq(b, backend))
        {
            closed += b.connections();
            b.close_connections();
        }
        info!(
            service = %self.service.name, active = %backend.name, closed,
            "closed connections that fell back to a backend other than the active one"
        );
    }

    /// Publish an up/down change that rise/fall or passive detection made.
    /// Either way the run of failed connects on live traffic starts over.
    fn flip(
        &self,
        backend: &Backend,
        mut health: MutexGuard<'_, Health>,
        up: bool,
        reason: SwitchReason,
    ) {
        let now = Instant::now();
        health.last_change = now;
        health.up_since = up.then_some(now);
        if !up {
            health.down_reason = reason;
        }
        drop(health);
        backend.set_up(up);
        backend.reset_passive_errors();
        if up {
            // A held client may now connect, even with no switch (a
            // last-resort try of a recovered backend).
            self.service.hold.wake();
        }
        let error = (!up && reason == SwitchReason::HealthCheck)
            .then(|| backend.last_check_error())
            .flatten()
            .unwrap_or_default();
        info!(
            service = %self.service.name, backend = %backend.name,
            state = if up { "up" } else { "down" }, %reason, error,
            "backend state changed"
        );
    }

    /// Run the decision and switch if it changed; returns when to look again.
    /// `forced_reason` overrides the reason (reload).
    fn evaluate(&self, forced_reason: Option<SwitchReason>) -> Option<Instant> {
        let snapshot = self.service.snapshot();
        let from = snapshot.active_backend().map(|b| b.name.clone());
        self.evaluate_from(&snapshot, from, forced_reason)
    }

    /// As `evaluate`, with the name of the backend traffic goes to now
    /// (after a reload it may no longer be in the snapshot).
    fn evaluate_from(
        &self,
        snapshot: &Snapshot,
        from: Option<String>,
        forced_reason: Option<SwitchReason>,
    ) -> Option<Instant> {
        if self.cluster.is_some() {
            // The decider decides; this instance only votes.
            self.share_view(snapshot);
            return None;
        }
        let views = views(&snapshot.backends);
        let policy = Policy {
            failback: snapshot.settings.failback,
            failback_delay: snapshot.settings.failback_delay,
        };
        let decision = policy::decide(&views, snapshot.active, policy, Instant::now());
        let to = decision
            .active
            .and_then(|i| snapshot.backends.get(i))
            .map(|b| b.name.clone());
        if decision.active != snapshot.active || from != to {
            if !self.chosen.get() && from.is_none() {
                self.choose_first(snapshot, decision.active, to);
            } else {
                let reason = forced_reason.unwrap_or_else(|| reason(snapshot, decision.cause));
                self.switch(snapshot, decision.active, from, to, reason);
            }
        }
        decision.recheck_at
    }

    /// The first active backend since start-up: no switch, no notify.
    fn choose_first(&self, old: &Snapshot, active: Option<usize>, to: Option<String>) {
        self.publish(old, active);
        if let Some(to) = to {
            self.chosen.set(true);
            info!(service = %self.service.name, backend = %to, "first active backend chosen");
        }
    }

    /// Store a snapshot with a new active backend and update the gauges.
    fn publish(&self, old: &Snapshot, active: Option<usize>) {
        self.store(old, active, old.mode);
        self.publish_dns();
    }

    /// Tell the DNS publisher the active backend's address (`None`: no
    /// backend up, the record stays as it is). A backend that has not
    /// passed a check yet is not named: at start-up every backend is up by
    /// assumption, and a dead primary must not go into resolvers' caches.
    fn publish_dns(&self) {
        if let Some(link) = &self.cluster
            && !*link.handle.is_decider().borrow()
        {
            // In cluster mode only the decider publishes.
            return;
        }
        let snapshot = self.service.snapshot();
        let checked = |b: &&Arc<Backend>| b.health.lock().is_ok_and(|h| h.passed_a_check);
        let publish = snapshot.active_backend().filter(checked).and_then(|b| {
            b.publish().map(|address| Publish {
                backend: b.name.clone(),
                address,
            })
        });
        self.dns.send_if_modified(|current| {
            let changed = *current != publish;
            *current = publish;
            changed
        });
    }

    fn switch(
        &self,
        old: &Snapshot,
        active: Option<usize>,
        from: Option<String>,
        to: Option<String>,
        reason: SwitchReason,
    ) {
        self.publish(old, active);
        self.chosen.set(true);
        let (backends, settings) = (&old.backends, &old.settings);
        if settings.on_switch == OnSwitch::Close {
            // Every connection off the new active backend closes here,
            // fallen-back ones included.
            self.service.fallbacks.store(false, Ordering::SeqCst);
            close_all_but(backends, active);
        }
        self.announce(settings, from, to, reason, None);
    }

    /// A switch made (alone) or completed (cluster, on the decider): count
    /// it, log it and hand it to `notify`, with the cluster's generation.
    fn announce(
        &self,
        settings: &Settings,
        from: Option<String>,
        to: Option<String>,
        reason: SwitchReason,
        generation: Option<u64>,
    ) {
        let name = &self.service.name;
        metrics::counter!(
            m::SWITCHES_TOTAL,
            "service" => name.clone(),
            "from" => from.clone().unwrap_or_default(),
            "to" => to.clone().unwrap_or_default(),
            "reason" => reason.as_str(),
        )
        .increment(1);
        let (f, t) = (from.as_deref().unwrap_or(""), to.as_deref().unwrap_or(""));
        match generation {
            Some(generation) => {
                info!(service = %name, from = f, to = t, %reason, generation, "active backend switched")
            }
            None => info!(service = %name, from = f, to = t, %reason, "active backend switched"),
        }
        if !settings.notify.is_empty() {
            self.notifier.notify(notify::Switch {
                command: settings.notify.clone(),
                service: name.clone(),
                from,
                to,
                reason: reason.as_str().to_owned(),
                generation,
            });
        }
    }

    /// Apply a new config of this service: keep backends with the same name
    /// and address (and their health), restart checks with the new timings,
    /// then decide again (a change is a switch with reason `reload`).
    fn reload(&mut self, config: ServiceConfig) -> Option<Instant> {
        let old = self.service.snapshot();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                old.backends
                    .iter()
                    .find(|o| o.name == b.name && o.address == b.address)
                    .inspect(|kept| kept.set_publish(b.publish))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend::new(
                            &config.name,
                            b,
                            &self.force_close,
                            config.settings.check.is_role_aware(),
                        ))
                    })
            })
            .collect();
        let current = old
            .active_backend()
            .and_then(|a| backends.iter().position(|b| Arc::ptr_eq(a, b)));
        // In place: accept loops waiting for a slot see the new size.
        let max_connections = config.settings.max_connections;
        if old.settings.max_connections != max_connections {
            self.service.limit.resize(max_connections);
            info!(
                service = %self.service.name, max_connections,
                open = self.service.limit.open(), "max_connections changed"
            );
        }
        let next = Arc::new(Snapshot {
            settings: Arc::new(config.settings),
            backends,
            active: current,
            mode: old.mode,
        });
        set_active_gauges(&next.backends, current);
        self.service.current.store(Arc::clone(&next));
        self.service.hold.wake();
        self.checks.cancel();
        self.checks = self.stop.child_token();
        self.spawn_checks();
        let from = old.active_backend().map(|b| b.name.clone());
        let recheck = self.evaluate_from(&next, from, Some(SwitchReason::Reload));
        // A reload may change a backend's `publish` without a switch.
        self.publish_dns();
        // Connections on removed backends drain, unless the active backend
        // changed under `on_switch = "close"`.
        let now = self.service.snapshot();
        let changed = match (old.active_backend(), now.active_backend()) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (a, b) => a.is_some() != b.is_some(),
        };
        if changed && now.settings.on_switch == OnSwitch::Close {
            for b in old.backends.iter() {
                if !now.backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                    b.close_connections();
                }
            }
        }
        for b in old.backends.iter() {
            if !now.backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                b.metrics.active.set(0.0);
            }
        }
        // The agreed backend, by name, among the new backends.
        self.follow();
        recheck
    }

    /// Cluster mode: hand this instance's view of the backends to the
    /// member. A backend without a check result yet does not vote.
    fn share_view(&self, snapshot: &Snapshot) {
        let Some(link) = &self.cluster else {
            return;
        };
        let seen: Vec<Seen> = snapshot
            .backends
            .iter()
            .map(|b| {
                if b.health.lock().is_ok_and(|h| h.has_result) {
                    Seen::from(b.is_up())
                } else {
                    Seen::Unknown
                }
            })
            .collect();
        let name = &self.service.name;
        link.local.send_if_modified(|view| {
            if view.services.get(name) == Some(&seen) {
                return false;
            }
            view.services.insert(name.clone(), seen);
            true
        });
    }

    /// Cluster mode: apply what the cluster says. Cut off from etcd under
    /// `on_lost = "close"`: refuse clients and close every connection.
    /// Otherwise: the agreed backend becomes the active one (connections
    /// elsewhere closed under `on_switch = "close"`), then the generation
    /// is acknowledged, so the decider's second step waits for this.
    fn follow(&mut self) {
        let (Some(link), Some(watches)) = (self.cluster.clone(), self.watches.as_mut()) else {
            return;
        };
        let connected = *watches.connected.borrow_and_update();
        watches.decider.borrow_and_update();
        let agreed = watches.agreed.borrow_and_update().clone();
        let snapshot = self.service.snapshot();
        let name = self.service.name.clone();
        if !connected && link.on_lost == OnLost::Close {
            if snapshot.mode != Mode::Refusing {
                tracing::warn!(
                    service = %name,
                    "cut off from the cluster for longer than ttl: refusing clients and closing connections (on_lost = \"close\")"
                );
                self.store(&snapshot, None, Mode::Refusing);
                close_all_but(&snapshot.backends, None);
            }
            return;
        }
        let Some(agreed) = agreed else {
            // Nothing agreed yet: clients are held.
            return;
        };
        let active = agreed
            .active
            .as_ref()
            .and_then(|a| snapshot.backends.iter().position(|b| &b.name == a));
        let mode = Mode::Agreed {
            generation: agreed.generation,
        };
        if snapshot.mode == Mode::Refusing {
            info!(service = %name, generation = agreed.generation, "member of the cluster again, following the agreed backend");
        }
        if snapshot.mode != mode || snapshot.active != active {
            let from = snapshot.active_backend().map(|b| b.name.clone());
            self.store(&snapshot, active, mode);
            if snapshot.active != active {
                info!(
                    service = %name,
                    from = from.as_deref().unwrap_or(""),
                    to = agreed.active.as_deref().unwrap_or(""),
                    generation = agreed.generation,
                    "agreed backend applied"
                );
                if snapshot.settings.on_switch == OnSwitch::Close {
                    close_all_but(&snapshot.backends, active);
                }
            }
        }
        self.publish_dns();
        link.handle.applied(&name, agreed.generation);
    }

    /// Store a snapshot with this active backend and mode; wake held clients.
    fn store(&self, old: &Snapshot, active: Option<usize>, mode: Mode) {
        self.service.current.store(Arc::new(Snapshot {
            settings: Arc::clone(&old.settings),
            backends: old.backends.clone(),
            active,
            mode,
        }));
        set_active_gauges(&old.backends, active);
        self.service.hold.wake();
    }

    /// Cluster mode, on the decider: a switch the cluster completed. Counted,
    /// logged and passed to `notify` here, once for every instance.
    fn cluster_switched(
        &self,
        from: Option<String>,
        to: Option<String>,
        reason: SwitchReason,
        generation: u64,
    ) {
        let settings = Arc::clone(&self.service.snapshot().settings);
        self.announce(&settings, from, to, reason, Some(generation));
    }

    fn spawn_checks(&self) {
        let snapshot = self.service.snapshot();
        for (i, backend) in snapshot.backends.iter().enumerate() {
            tokio::spawn(health::check_loop(
                Arc::clone(backend),
                Arc::clone(&snapshot.settings),
                self.service.events.clone(),
                self.checks.clone(),
                i as u64,
            ));
        }
    }
}

/// What woke the engine.
enum Wake {
    /// An event, or `None`: the recheck time came.
    Event(Option<Event>),
    /// The cluster's state changed; `false`: the member is gone.
    Cluster(bool),
}

/// Wait for any change of the cluster's state; `false` when the member
/// stopped. Never returns without `watches`.
async fn cluster_change(watches: Option<&mut ClusterWatches>) -> bool {
    let Some(w) = watches else {
        return std::future::pending().await;
    };
    tokio::select! {
        r = w.agreed.changed() => r.is_ok(),
        r = w.connected.changed() => r.is_ok(),
        r = w.decider.changed() => r.is_ok(),
    }
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn views(backends: &[Arc<Backend>]) -> Vec<BackendView> {
    backends
        .iter()
        .map(|b| BackendView {
            up: b.is_up(),
            enabled: b.is_enabled(),
            up_since: b.health.lock().ok().and_then(|h| h.up_since),
        })
        .collect()
}

/// Close the connections on every backend but the one at `active`.
fn close_all_but(backends: &[Arc<Backend>], active: Option<usize>) {
    for (i, b) in backends.iter().enumerate() {
        if Some(i) != active {
            b.close_connections();
        }
    }
}

fn set_active_gauges(backends: &[Arc<Backend>], active: Option<usize>) {
    for (i, b) in backends.iter().enumerate() {
        b.metrics
            .active
            .set(if Some(i) == active { 1.0 } else { 0.0 });
    }
}

/// The reason for a decision's cause.
fn reason(old: &Snapshot, cause: Option<Cause>) -> SwitchReason {
    let down_reason = old
        .active_backend()
        .and_then(|b| b.health.lock().ok().map(|h| h.down_reason))
        .unwrap_or(SwitchReason::HealthCheck);
    cause.map_or(SwitchReason::HealthCheck, |c| {
        SwitchReason::for_cause(c, down_reason)
    })
}

//! The failover engine: one task per service, the only writer of its
//! snapshot.
//!
//! It owns the service's health-check tasks, receives their results, the
//! data path's passive connect errors, `ctl enable/disable` and reloads as
//! [`Event`]s, applies rise/fall (`health.rs`), asks the pure decision
//! function (`decide.rs`) which backend is active, and on a change swaps the
//! pointer, logs, counts, closes connections on the other backends
//! (`on_switch = "close"`) and runs `notify`. It never touches client bytes.

use std::sync::{Arc, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::{Backend, EngineState, Service, Snapshot};
use crate::config::{OnSwitch, ServiceConfig, Settings};
use crate::decide::{self, BackendView, Cause, Policy};
use crate::health;
use crate::listener::Limit;
use crate::metrics as m;
use crate::notify;
use crate::ratelimit::LogLimit;

/// Messages to a service's engine.
pub enum Event {
    /// One active check finished.
    Check { backend: Arc<Backend>, ok: bool },
    /// `passive_errors` consecutive failed connects on live traffic.
    PassiveDown(Arc<Backend>),
    /// `ctl enable` / `ctl disable`; replies false for an unknown backend.
    SetEnabled {
        backend: String,
        enabled: bool,
        reply: oneshot::Sender<bool>,
    },
    /// Apply a new config of this service (same name).
    Reload {
        config: Box<ServiceConfig>,
        reply: oneshot::Sender<()>,
    },
}

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

/// Build a service from its config and start its engine and checks.
/// `root` is the parent of every connection's close token (shutdown).
pub fn start(config: &ServiceConfig, root: &CancellationToken) -> EngineHandle {
    let backends: Vec<Arc<Backend>> = config
        .backends
        .iter()
        .map(|b| Arc::new(Backend::new(&config.name, &b.name, b.address.clone(), root)))
        .collect();
    let views = views(&backends);
    let active = decide::initial(&views);
    set_active_gauges(&backends, active);
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Arc::new(Service {
        name: config.name.clone(),
        state: ArcSwap::from_pointee(Snapshot {
            settings: Arc::new(config.settings.clone()),
            backends,
            active,
        }),
        client_failures: metrics::counter!(m::CLIENT_FAILURES_TOTAL, "service" => config.name.clone()),
        client_failure_log: LogLimit::new(),
        limit: ArcSwap::from_pointee(Limit::new(config.settings.max_connections)),
        events: tx,
    });
    let stop = CancellationToken::new();
    let engine = Engine {
        service: Arc::clone(&service),
        events: rx,
        root: root.clone(),
        checks: stop.child_token(),
        stop: stop.clone(),
    };
    engine.spawn_checks();
    tokio::spawn(engine.run());
    EngineHandle { service, stop }
}

struct Engine {
    service: Arc<Service>,
    events: mpsc::UnboundedReceiver<Event>,
    root: CancellationToken,
    /// Cancelled to stop the current set of check tasks (reload, stop).
    checks: CancellationToken,
    stop: CancellationToken,
}

impl Engine {
    async fn run(mut self) {
        let mut recheck: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                _ = wait_until(recheck) => None,
                _ = self.stop.cancelled() => break,
            };
            recheck = match event {
                Some(event) => self.handle(event),
                None => self.evaluate(None),
            };
        }
        self.checks.cancel();
    }

    fn handle(&mut self, event: Event) -> Option<Instant> {
        match event {
            Event::Check { backend, ok } => {
                if self.contains(&backend) {
                    self.record_check(&backend, ok);
                }
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

    fn record_check(&self, backend: &Backend, ok: bool) {
        let settings = Arc::clone(&self.service.snapshot().settings);
        let Ok(mut state) = backend.engine.lock() else {
            return;
        };
        if let Some(up) = state.hysteresis.record(ok, settings.rise, settings.fall) {
            self.flip(backend, state, up, "health_check");
        }
    }

    fn mark_passive_down(&self, backend: &Backend) {
        let Ok(mut state) = backend.engine.lock() else {
            return;
        };
        if state.hysteresis.force_down() {
            self.flip(backend, state, false, "passive");
        }
    }

    /// Publish an up/down change that rise/fall or passive detection made.
    /// Either way the run of failed connects on live traffic starts over.
    fn flip(
        &self,
        backend: &Backend,
        mut state: MutexGuard<'_, EngineState>,
        up: bool,
        reason: &'static str,
    ) {
        let now = Instant::now();
        state.last_change = now;
        state.up_since = up.then_some(now);
        if !up {
            state.down_reason = reason;
        }
        drop(state);
        backend.set_up(up);
        backend.reset_passive_errors();
        info!(
            service = %self.service.name, backend = %backend.name,
            state = if up { "up" } else { "down" }, reason,
            "backend state changed"
        );
    }

    /// Run the decision and switch if it changed; returns when to look again.
    /// `forced_reason` overrides the reason (reload).
    fn evaluate(&self, forced_reason: Option<&'static str>) -> Option<Instant> {
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
        forced_reason: Option<&'static str>,
    ) -> Option<Instant> {
        let views = views(&snapshot.backends);
        let policy = Policy {
            failback: snapshot.settings.failback,
            failback_delay: snapshot.settings.failback_delay,
        };
        let decision = decide::decide(&views, snapshot.active, policy, Instant::now());
        let to = decision
            .active
            .and_then(|i| snapshot.backends.get(i))
            .map(|b| b.name.clone());
        if decision.active != snapshot.active || from != to {
            let reason = forced_reason.unwrap_or_else(|| reason(snapshot, decision.cause));
            self.switch(snapshot, decision.active, from, to, reason);
        }
        decision.recheck_at
    }

    fn switch(
        &self,
        old: &Snapshot,
        active: Option<usize>,
        from: Option<String>,
        to: Option<String>,
        reason: &'static str,
    ) {
        let backends = old.backends.clone();
        let settings = Arc::clone(&old.settings);
        self.service.state.store(Arc::new(Snapshot {
            settings: Arc::clone(&settings),
            backends: backends.clone(),
            active,
        }));
        set_active_gauges(&backends, active);
        metrics::counter!(
            m::SWITCHES_TOTAL,
            "service" => self.service.name.clone(),
            "from" => from.clone().unwrap_or_default(),
            "to" => to.clone().unwrap_or_default(),
            "reason" => reason,
        )
        .increment(1);
        info!(
            service = %self.service.name,
            from = from.as_deref().unwrap_or(""),
            to = to.as_deref().unwrap_or(""),
            reason,
            "active backend switched"
        );
        if settings.on_switch == OnSwitch::Close {
            for (i, b) in backends.iter().enumerate() {
                if Some(i) != active {
                    b.close_connections();
                }
            }
        }
        if !settings.notify.is_empty() {
            notify::spawn_notify(
                &settings.notify,
                &self.service.name,
                from.as_deref(),
                to.as_deref(),
                reason,
                notify::NOTIFY_TIME_LIMIT,
            );
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
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend::new(
                            &config.name,
                            &b.name,
                            b.address.clone(),
                            &self.root,
                        ))
                    })
            })
            .collect();
        let current = old
            .active_backend()
            .and_then(|a| backends.iter().position(|b| Arc::ptr_eq(a, b)));
        if old.settings.max_connections != config.settings.max_connections {
            self.service
                .limit
                .store(Arc::new(Limit::new(config.settings.max_connections)));
        }
        let next = Arc::new(Snapshot {
            settings: Arc::new(config.settings),
            backends,
            active: current,
        });
        set_active_gauges(&next.backends, current);
        self.service.state.store(Arc::clone(&next));
        self.checks.cancel();
        self.checks = self.stop.child_token();
        self.spawn_checks();
        let from = old.active_backend().map(|b| b.name.clone());
        let recheck = self.evaluate_from(&next, from, Some("reload"));
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
        recheck
    }

    fn spawn_checks(&self) {
        let snapshot = self.service.snapshot();
        for (i, backend) in snapshot.backends.iter().enumerate() {
            tokio::spawn(check_loop(
                Arc::clone(backend),
                Arc::clone(&snapshot.settings),
                self.service.events.clone(),
                self.checks.clone(),
                i as u64,
            ));
        }
    }
}

/// One backend's active checks: the first at once, then every
/// `check_interval` with a little jitter, until `stop`.
async fn check_loop(
    backend: Arc<Backend>,
    settings: Arc<Settings>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    seed: u64,
) {
    let mut round: u64 = 0;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            result = health::probe(&backend.address, settings.check_timeout, &settings.check_send, &settings.check_expect) => result,
            _ = stop.cancelled() => return,
        };
        let ok = result.is_ok();
        let metrics = &backend.metrics;
        metrics
            .check_duration
            .record(started.elapsed().as_secs_f64());
        if ok {
            metrics.checks_ok.increment(1);
        } else {
            metrics.checks_fail.increment(1);
        }
        if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
            metrics.last_check.set(now.as_secs_f64());
        }
        if let Err(err) = &result {
            tracing::debug!(service = %backend.service, backend = %backend.name, error = %err, "health check failed");
        }
        if events
            .send(Event::Check {
                backend: Arc::clone(&backend),
                ok,
            })
            .is_err()
        {
            return;
        }
        round += 1;
        let next =
            started + health::jittered(settings.check_interval, seed.wrapping_mul(7919) ^ round);
        tokio::select! {
            _ = sleep_until(next.into()) => {}
            _ = stop.cancelled() => return,
        }
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
            up_since: b.engine.lock().ok().and_then(|s| s.up_since),
        })
        .collect()
}

fn set_active_gauges(backends: &[Arc<Backend>], active: Option<usize>) {
    for (i, b) in backends.iter().enumerate() {
        b.metrics
            .active
            .set(if Some(i) == active { 1.0 } else { 0.0 });
    }
}

/// The SPEC.md reason for a decision's cause.
fn reason(old: &Snapshot, cause: Option<Cause>) -> &'static str {
    match cause {
        Some(Cause::ActiveDown) => old
            .active_backend()
            .and_then(|b| b.engine.lock().ok().map(|s| s.down_reason))
            .unwrap_or("health_check"),
        Some(Cause::ActiveDisabled) => "disabled",
        Some(Cause::Failback) => "failback",
        Some(Cause::Recovered) | None => "health_check",
        Some(Cause::Other) => "reload",
    }
}

//! The running proxy: every service's listener, accept loop and engine, and
//! the operations on them as a whole (start, reload, status, maintenance,
//! shutdown).
//!
//! Signals and the control socket (`control.rs`) call into [`Proxy`]; tests
//! drive it directly. It does not parse config files or forward bytes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::cluster::{self, Cluster, ClusterStatus, LocalView, ServiceSpec, SwitchEvent};
use crate::config::{Config, ServiceConfig};
use crate::dns::{self, DnsStatus, Publish, PublisherHandle};
use crate::engine::{self, ClusterLink, EngineHandle};
use crate::listener;
use crate::net;
use crate::service::{Event, HandedService, Mode};

/// A start-up failure other than a bad config (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("service \"{service}\": cannot listen on {address}: {cause}")]
pub struct BindError {
    pub service: String,
    pub address: SocketAddr,
    /// In the message already, so not a `source` (the chain would repeat it).
    pub cause: io::Error,
}

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("[cluster]: cannot start the member: {0}")]
    Cluster(String),
}

struct Running {
    config: ServiceConfig,
    /// The address actually bound (port 0 resolved); `None` for a DNS-only service.
    bound: Option<SocketAddr>,
    engine: EngineHandle,
    /// Stops this service's accept loop (and so closes its listener).
    stop_accept: CancellationToken,
    /// What the engine wants DNS to hold; a publisher follows it.
    dns_decisions: watch::Receiver<Option<Publish>>,
    /// The DNS publisher, with `[service.dns]`.
    dns: Option<PublisherHandle>,
    /// Duplicates of the listening sockets the accept loops own, for a
    /// takeover to hand over (closed with the listener).
    listen_fds: Vec<std::net::TcpListener>,
}

/// What a takeover received from the previous process: per service its
/// state and its listening sockets, and the metrics listener.
#[derive(Debug, Default)]
pub struct Inherited {
    pub services: Vec<(HandedService, Vec<std::net::TcpListener>)>,
    pub metrics: Option<std::net::TcpListener>,
}

/// The payload of the takeover frame; the descriptors follow in this
/// order: every service's sockets, then the metrics listener if `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Handover {
    pub services: Vec<HandedService>,
    pub metrics: bool,
}

impl Inherited {
    /// The handed state and sockets of `service` if its listen address is
    /// the one they are bound to.
    fn take(&mut self, service: &ServiceConfig) -> Option<(HandedService, Option<Sockets>)> {
        let pos = self
            .services
            .iter()
            .position(|(h, _)| h.name == service.name)?;
        let (handed, sockets) = self.services.swap_remove(pos);
        let same = match (service.listen, handed.listen) {
            (Some(want), Some(have)) => {
                want == have || (want.port() == 0 && want.ip() == have.ip())
            }
            _ => false,
        };
        let sockets = match (same, handed.listen) {
            (true, Some(addr)) if !sockets.is_empty() => Some(Sockets { addr, sockets }),
            _ => None,
        };
        Some((handed, sockets))
    }
}

struct State {
    config: Config,
    services: Vec<Running>,
}

/// A running failoverd.
pub struct Proxy {
    state: Mutex<State>,
    /// Every connection task, for draining at shutdown.
    connections: TaskTracker,
    /// Parent of every connection's close token: cancelled when the drain
    /// deadline passes.
    force_close: CancellationToken,
    /// Stops every accept loop.
    stop_accept: CancellationToken,
    /// Runtimes that run accept loops and connections, one per core.
    workers: Vec<Handle>,
    /// Cluster mode: what every engine follows.
    cluster: Option<ClusterLink>,
    /// Cluster mode: the member itself, stopped (lease revoked) at shutdown.
    member: std::sync::Mutex<Option<Cluster>>,
    /// Cancelled when a takeover completed: this process stops accepting
    /// and drains as on SIGTERM.
    retire: CancellationToken,
    /// A duplicate of the metrics listener, for a takeover to hand over.
    metrics_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl Proxy {
    /// Bind every listener, start engines and accept loops, all on the
    /// current runtime (tests, the demo).
    pub async fn start(config: Config) -> Result<Arc<Proxy>, StartError> {
        Proxy::start_on(config, vec![Handle::current()]).await
    }

    /// As [`Proxy::start`], with one accept loop per worker runtime, each on
    /// its own `SO_REUSEPORT` socket, so a connection lives on the worker
    /// that accepted it. Engines and checks run on the calling runtime.
    pub async fn start_on(config: Config, workers: Vec<Handle>) -> Result<Arc<Proxy>, StartError> {
        Proxy::start_inheriting(config, workers, Inherited::default()).await
    }

    /// As [`Proxy::start_on`], taking over the listening sockets and the
    /// health state a previous process handed over (`run --takeover`):
    /// services whose listen address is unchanged accept on the very
    /// sockets it used, so no client connect is refused in between.
    pub async fn start_inheriting(
        config: Config,
        workers: Vec<Handle>,
        mut inherited: Inherited,
    ) -> Result<Arc<Proxy>, StartError> {
        let mut proxy = Proxy {
            state: Mutex::new(State {
                config: config.clone(),
                services: Vec::new(),
            }),
            connections: TaskTracker::new(),
            force_close: CancellationToken::new(),
            stop_accept: CancellationToken::new(),
            workers,
            cluster: None,
            member: std::sync::Mutex::new(None),
            retire: CancellationToken::new(),
            metrics_listener: std::sync::Mutex::new(None),
        };
        let handed: Vec<Option<(HandedService, Option<Sockets>)>> =
            config.services.iter().map(|s| inherited.take(s)).collect();
        // Before any socket of ours exists, so only another process can
        // hold these addresses (SPEC.md: a second instance exits 1); an
        // inherited socket is ours.
        for (service, handed) in config.services.iter().zip(&handed) {
            if !matches!(handed, Some((_, Some(_)))) {
                probe(service)?;
            }
        }
        // Bind everything before starting anything: a failure leaves
        // nothing running.
        let mut sockets = Vec::with_capacity(config.services.len());
        let mut states = Vec::with_capacity(config.services.len());
        for (service, handed) in config.services.iter().zip(handed) {
            match handed {
                Some((state, Some(inherited))) => {
                    sockets.push(Some(inherited));
                    states.push(Some(state));
                }
                other => {
                    sockets.push(proxy.bind(service)?);
                    states.push(other.map(|(state, _)| state));
                }
            }
        }
        let mut switches = None;
        if let Some(cluster_config) = &config.cluster {
            let (local, view) = watch::channel(LocalView::default());
            let (member, events) = cluster::start(cluster_config, specs(&config), view)
                .map_err(|e| StartError::Cluster(e.to_string()))?;
            proxy.cluster = Some(ClusterLink {
                handle: member.handle(),
                local,
                on_lost: cluster_config.on_lost,
            });
            *proxy.member.lock().unwrap_or_else(|e| e.into_inner()) = Some(member);
            switches = Some(events);
        }
        let services = config
            .services
            .iter()
            .zip(sockets)
            .zip(states)
            .map(|((service, sockets), state)| {
                proxy.start_service(service, sockets, state.as_ref())
            })
            .collect();
        proxy.state.lock().await.services = services;
        let proxy = Arc::new(proxy);
        if let Some(events) = switches {
            tokio::spawn(route_switches(Arc::downgrade(&proxy), events));
        }
        Ok(proxy)
    }

    /// The bound listen address of a service (tests use port 0).
    pub async fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        let state = self.state.lock().await;
        state
            .services
            .iter()
            .find(|s| s.config.name == service)
            .and_then(|s| s.bound)
    }

    /// The config in force.
    pub async fn config(&self) -> Config {
        self.state.lock().await.config.clone()
    }

    /// Apply a validated config (SPEC.md: SIGHUP). Services are matched by
    /// name and keep their engine (health state, connections); an unchanged
    /// listen address keeps its socket, a moved one gets new sockets. If a
    /// new address cannot be bound, nothing changes.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let mut state = self.state.lock().await;
        if config.cluster.is_some() != state.config.cluster.is_some() {
            return Err(ReloadError::Cluster);
        }
        if config.cluster != state.config.cluster {
            tracing::warn!("the [cluster] section changed; it takes effect at the next restart");
        }
        // Bind every new or moved listener before starting anything: on a
        // failure the sockets bound so far close and nothing changes.
        let mut fresh: HashMap<String, Option<Sockets>> = HashMap::new();
        for service in &config.services {
            let keep = state.services.iter().any(|r| {
                r.config.name == service.name
                    && r.config.listen == service.listen
                    && r.config.freebind == service.freebind
            });
            if !keep {
                // An address one of our own listeners covers cannot be
                // another instance's (it would have failed this probe).
                let ours = |r: &Running| {
                    r.bound
                        .zip(service.listen)
                        .is_some_and(|(a, b)| overlaps(a, b))
                };
                if !state.services.iter().any(ours) {
                    probe(service)?;
                }
                fresh.insert(service.name.clone(), self.bind(service)?);
            }
        }
        // Every bind succeeded: from here on nothing fails.
        let mut old: Vec<Running> = std::mem::take(&mut state.services);
        let mut next = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let Some(pos) = old.iter().position(|r| r.config.name == service.name) else {
                let sockets = fresh.remove(&service.name).flatten();
                next.push(self.start_service(service, sockets, None));
                continue;
            };
            // A service keeps its engine, so its health state and the close
            // tokens of its connections, even when its listener moves.
            let mut running = old.swap_remove(pos);
            running
                .engine
                .request(|reply| Event::Reload {
                    config: Box::new(service.clone()),
                    reply,
                })
                .await;
            if let Some(sockets) = fresh.remove(&service.name) {
                self.move_listener(&mut running, service, sockets);
            }
            if running.config.dns != service.dns {
                // Dropping the old publisher stops it.
                running.dns = start_publisher(service, &running.dns_decisions);
            }
            running.config = service.clone();
            next.push(running);
        }
        // Services removed: close the listener; their established
        // connections drain on their own.
        for gone in old {
            if let Some(listen) = gone.bound {
                info!(service = %gone.config.name, %listen, "listener closed by reload");
            }
            gone.stop_accept.cancel();
        }
        state.services = next;
        if let Some(link) = &self.cluster {
            link.handle.update_services(specs(&config));
        }
        state.config = config;
        Ok(())
    }

    /// `ctl enable` / `ctl disable`. Errors name what was not found.
    pub async fn set_enabled(
        &self,
        service: &str,
        backend: &str,
        enabled: bool,
    ) -> Result<(), String> {
        let state = self.state.lock().await;
        let running = state
            .services
            .iter()
            .find(|s| s.config.name == service)
            .ok_or_else(|| format!("unknown service \"{service}\""))?;
        if let Some(link) = &self.cluster {
            // Cluster-wide: the decider applies it (SPEC.md: Cluster).
            let handle = link.handle.clone();
            drop(state);
            return handle.set_maintenance(service, backend, !enabled).await;
        }
        let found = running
            .engine
            .request(|reply| Event::SetEnabled {
                backend: backend.to_string(),
                enabled,
                reply,
            })
            .await
            .unwrap_or(false);
        if found {
            Ok(())
        } else {
            Err(format!(
                "service \"{service}\": unknown backend \"{backend}\""
            ))
        }
    }

    /// The state `ctl status` shows.
    pub async fn status(&self) -> Status {
        let state = self.state.lock().await;
        let cluster = self.cluster.as_ref().map(|link| &link.handle);
        let services = state
            .services
            .iter()
            .map(|running| {
                let snapshot = running.engine.service.snapshot();
                let active = snapshot.active_backend().map(|b| b.name.clone());
                let disabled = cluster.map(|c| c.disabled(&running.config.name));
                let backends = snapshot
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendStatus {
                        name: b.name.clone(),
                        address: b.address.to_string(),
                        state: if b.is_up() { "up" } else { "down" }.to_string(),
                        enabled: match &disabled {
                            Some(disabled) => !disabled.contains(&b.name),
                            None => b.is_enabled(),
                        },
                        active: snapshot.active == Some(i),
                        consecutive_failures: b.consecutive_failures(),
                        connections: b.connections(),
                        last_check_error: b.last_check_error(),
                    })
                    .collect();
                let service = &running.engine.service;
                ServiceStatus {
                    held: snapshot.settings.hold_timeout.map(|_| service.hold.held()),
                    dns: running.dns.as_ref().map(PublisherHandle::status),
                    generation: match snapshot.mode {
                        Mode::Agreed { generation } => Some(generation),
                        Mode::Alone | Mode::Refusing => None,
                    },
                    name: running.config.name.clone(),
                    listen: running.bound.map(|b| b.to_string()),
                    active,
                    backends,
                }
            })
            .collect();
        Status {
            cluster: cluster.map(|c| c.status()),
            services,
        }
    }

    /// Graceful shutdown: stop accepting (new connects are refused at once),
    /// wait up to `timeout` for open connections, then close the rest.
    /// Returns how many were closed by force.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        // Every service's accept loop watches a child of this token.
        self.stop_accept.cancel();
        // Held clients have no backend to finish with: close them now. The
        // sockets kept for a takeover close too, so new connects are refused.
        for running in self.state.lock().await.services.iter_mut() {
            running.engine.service.hold.close_all();
            running.listen_fds.clear();
        }
        self.connections.close();
        let drained = tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_ok();
        let forced = if drained {
            0
        } else {
            let open = self.connections.len();
            self.force_close.cancel();
            self.connections.wait().await;
            open
        };
        for running in &self.state.lock().await.services {
            running.engine.stop();
        }
        // Leave the cluster: revoking the lease lets the others move on at once.
        let member = self.member.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(member) = member {
            member.stop().await;
        }
        forced
    }

    /// Open client connections across all services.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// What a takeover hands to the next process: every listening socket
    /// (duplicates; this process keeps serving until [`Proxy::retire`]) and
    /// the state of every service.
    pub async fn handover(&self) -> (Handover, Vec<std::net::TcpListener>) {
        let state = self.state.lock().await;
        let mut services = Vec::new();
        let mut fds = Vec::new();
        for running in &state.services {
            let snapshot = running.engine.service.snapshot();
            let dups: Vec<std::net::TcpListener> = running
                .listen_fds
                .iter()
                .filter_map(|s| s.try_clone().ok())
                .collect();
            services.push(HandedService {
                name: running.config.name.clone(),
                listen: running.bound,
                sockets: dups.len(),
                active: snapshot.active_backend().map(|b| b.name.clone()),
                backends: snapshot.backends.iter().map(|b| b.handed()).collect(),
            });
            fds.extend(dups);
        }
        let metrics = self
            .metrics_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|l| l.try_clone().ok());
        let handover = Handover {
            services,
            metrics: metrics.is_some(),
        };
        fds.extend(metrics);
        (handover, fds)
    }

    /// Keep a duplicate of the metrics listener, so a takeover hands it on.
    pub fn keep_metrics_listener(&self, listener: std::net::TcpListener) {
        *self
            .metrics_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    /// A takeover completed: stop accepting and drain (`run` then exits 0).
    pub fn retire(&self) {
        self.retire.cancel();
    }

    /// Cancelled once this process handed over to another.
    pub fn retired(&self) -> &CancellationToken {
        &self.retire
    }
}

/// A service's listening sockets, one per worker: bound and listening
/// (the kernel queues clients), not accepting yet.
struct Sockets {
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

impl Proxy {
    /// Bind a service's sockets, one per worker; `None` for a service
    /// without `listen`. Starts nothing.
    fn bind(&self, config: &ServiceConfig) -> Result<Option<Sockets>, BindError> {
        let Some(listen) = config.listen else {
            return Ok(None);
        };
        let bind_error = |cause| BindError {
            service: config.name.clone(),
            address: listen,
            cause,
        };
        let reuseport = self.workers.len() > 1;
        let first = net::bind_std(listen, config.freebind, reuseport).map_err(bind_error)?;
        // With port 0 the others must join the port the kernel picked.
        let addr = first.local_addr().map_err(bind_error)?;
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(net::bind_std(addr, config.freebind, true).map_err(bind_error)?);
        }
        Ok(Some(Sockets { addr, sockets }))
    }

    /// Start a service's engine on this runtime and, on its bound sockets,
    /// its accept loops on the workers.
    fn start_service(
        &self,
        config: &ServiceConfig,
        sockets: Option<Sockets>,
        handed: Option<&HandedService>,
    ) -> Running {
        let (decided, dns_decisions) = watch::channel(None);
        let engine = engine::start(
            config,
            &self.force_close,
            decided,
            self.cluster.clone(),
            handed,
        );
        let dns = start_publisher(config, &dns_decisions);
        let stop_accept = self.stop_accept.child_token();
        let mut listen_fds = Vec::new();
        let bound = match sockets {
            Some(sockets) => {
                Some(self.accept_on(config, sockets, &engine, &stop_accept, &mut listen_fds))
            }
            None => {
                // DNS failover only: checks and the engine, no listener.
                info!(service = %config.name, "monitoring only (no listen address)");
                None
            }
        };
        Running {
            config: config.clone(),
            bound,
            engine,
            stop_accept,
            dns_decisions,
            dns,
            listen_fds,
        }
    }

    /// Swap a running service's listener for `sockets` (None: it listens
    /// no more): the new accept loops start, then the old ones stop.
    /// Established connections are not touched.
    fn move_listener(
        &self,
        running: &mut Running,
        config: &ServiceConfig,
        sockets: Option<Sockets>,
    ) {
        let stop = self.stop_accept.child_token();
        let mut listen_fds = Vec::new();
        let bound =
            sockets.map(|s| self.accept_on(config, s, &running.engine, &stop, &mut listen_fds));
        running.listen_fds = listen_fds;
        running.stop_accept.cancel();
        running.stop_accept = stop;
        if let Some(listen) = running.bound {
            info!(service = %config.name, %listen, "listener closed by reload");
        }
        running.bound = bound;
    }

    /// One accept loop per socket, spread over the workers, until `stop`
    /// fires; a duplicate of each socket goes into `keep` (for a takeover).
    fn accept_on(
        &self,
        config: &ServiceConfig,
        sockets: Sockets,
        engine: &EngineHandle,
        stop: &CancellationToken,
        keep: &mut Vec<std::net::TcpListener>,
    ) -> SocketAddr {
        for (i, socket) in sockets.sockets.into_iter().enumerate() {
            match socket.try_clone() {
                Ok(dup) => keep.push(dup),
                Err(err) => {
                    tracing::warn!(service = %config.name, error = %err, "cannot keep a listening socket for a takeover")
                }
            }
            let worker = &self.workers[i % self.workers.len()];
            worker.spawn(listener::accept_loop(
                socket,
                Arc::clone(&engine.service),
                stop.clone(),
                self.connections.clone(),
            ));
        }
        info!(service = %config.name, listen = %sockets.addr, workers = self.workers.len(), "listening");
        sockets.addr
    }
}

/// Why a reload was not applied (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("[cluster] can be added or removed only by a restart")]
    Cluster,
}

/// The services as the cluster sees them.
fn specs(config: &Config) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(ServiceSpec::from_config)
        .collect()
}

/// Hand each switch the cluster completed (this instance is the decider)
/// to its service's engine, which counts it and runs `notify`.
async fn route_switches(
    proxy: std::sync::Weak<Proxy>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<SwitchEvent>,
) {
    while let Some(event) = events.recv().await {
        let Some(proxy) = proxy.upgrade() else {
            return;
        };
        let state = proxy.state.lock().await;
        if let Some(running) = state
            .services
            .iter()
            .find(|r| r.config.name == event.service)
        {
            let _ = running.engine.service.events.send(Event::ClusterSwitched {
                from: event.from,
                to: event.to,
                reason: event.reason,
                generation: event.generation,
            });
        }
    }
}

/// Refuse a listen address another process serves (see `net::probe_unused`).
fn probe(config: &ServiceConfig) -> Result<(), BindError> {
    let Some(listen) = config.listen else {
        return Ok(());
    };
    net::probe_unused(listen, config.freebind).map_err(|cause| BindError {
        service: config.name.clone(),
        address: listen,
        cause,
    })
}

/// Whether two listen addresses compete for the same connections: same
/// family and port, and the same IP or a wildcard on either side.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Start the DNS publisher of a service with `[service.dns]`.
fn start_publisher(
    config: &ServiceConfig,
    decisions: &watch::Receiver<Option<Publish>>,
) -> Option<PublisherHandle> {
    let dns = config.dns.as_ref()?;
    let publisher = dns::PublisherConfig {
        service: config.name.clone(),
        target: dns::Target {
            server: dns.server,
            zone: dns.zone.clone(),
            name: dns.name.clone(),
            ttl: dns.ttl,
        },
        key: dns.tsig_key.clone(),
        backends: config.backends.iter().map(|b| b.name.clone()).collect(),
        timeout: dns::UPDATE_TIMEOUT,
    };
    Some(dns::spawn_publisher(publisher, decisions.clone()))
}

/// `ctl status --json`, as in SPEC.md.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// With `[cluster]`: this member, the decider and the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    /// `None` for a DNS-only service.
    pub listen: Option<String>,
    pub active: Option<String>,
    pub backends: Vec<BackendStatus>,
    /// With `hold_timeout`: client connections held now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// With `[service.dns]`: what the record holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,
    /// With `[cluster]`: the generation of the agreed backend applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub state: String,
    pub enabled: bool,
    pub active: bool,
    pub consecutive_failures: u32,
    pub connections: u64,
    /// Why the last health check failed ("role is slave", "HTTP 503");
    /// absent once a check passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_error: Option<String>,
}

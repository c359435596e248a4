//! What the rest of failoverd holds: [`Cluster`] owns the member task
//! (dropping it ends the task without revoking, [`Cluster::stop`] leaves
//! properly), [`ClusterHandle`] is the cheap, clonable side the engines,
//! the control socket and the reload path use. Neither decides anything;
//! the task in `session.rs` does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::etcd::{Client, EtcdError};
use super::keys::Keys;
use super::lease::Timing;
use super::session::{self, Task};
use super::types::{Agreed, ClusterStatus, LocalView, ServiceSpec, SwitchEvent};
use crate::config::ClusterConfig;
use crate::metrics as m;

/// Tries of a maintenance write whose answer was lost.
const MAINTENANCE_ATTEMPTS: usize = 3;

/// State shared by the handles and the member task.
pub(super) struct Inner {
    pub name: String,
    pub keys: Keys,
    pub client: Client,
    pub timing: Timing,
    pub specs: watch::Sender<Vec<ServiceSpec>>,
    pub agreed: Mutex<BTreeMap<String, watch::Sender<Option<Agreed>>>>,
    acked: Mutex<BTreeMap<String, u64>>,
    pub ack_notify: Notify,
    pub connected: watch::Sender<bool>,
    pub decider: watch::Sender<bool>,
    pub status: watch::Sender<ClusterStatus>,
    pub maintenance: watch::Sender<BTreeSet<(String, String)>>,
}

impl Inner {
    /// The generation each service's engine applied last.
    pub fn acked(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No longer a member (or no longer running): not connected, not the
    /// decider.
    pub fn set_lost(&self) {
        self.connected.send_replace(false);
        self.decider.send_replace(false);
        self.status
            .send_if_modified(|s| std::mem::replace(&mut s.connected, false));
        metrics::gauge!(m::CLUSTER_CONNECTED).set(0.0);
        metrics::gauge!(m::CLUSTER_DECIDER).set(0.0);
    }

    pub fn agreed_senders(
        &self,
    ) -> MutexGuard<'_, BTreeMap<String, watch::Sender<Option<Agreed>>>> {
        self.agreed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Start this instance's cluster member: it joins in the background (and
/// again whenever it loses etcd for longer than ttl). Must be called in a
/// tokio runtime. `local` carries the engine's own view of the backends;
/// the receiver of [`SwitchEvent`]s gets the switches this instance makes
/// as the decider (run `notify`, count them, publish DNS).
///
/// Fails only when the etcd client cannot be set up (a bad endpoint URL,
/// TLS); etcd being unreachable is not an error here: the member keeps
/// trying and [`ClusterHandle::connected`] stays false meanwhile.
pub fn start(
    config: &ClusterConfig,
    services: Vec<ServiceSpec>,
    local: watch::Receiver<LocalView>,
) -> Result<(Cluster, mpsc::UnboundedReceiver<SwitchEvent>), EtcdError> {
    let timing = Timing::for_ttl(config.ttl);
    let client = Client::new(&config.etcd, timing.request_timeout)?.with_watch_idle(timing.ttl);
    let agreed = services
        .iter()
        .map(|s| (s.name.clone(), watch::channel(None).0))
        .collect();
    let inner = Arc::new(Inner {
        name: config.name.clone(),
        keys: Keys::new(&config.prefix),
        client,
        timing,
        specs: watch::channel(services).0,
        agreed: Mutex::new(agreed),
        acked: Mutex::new(BTreeMap::new()),
        ack_notify: Notify::new(),
        connected: watch::channel(false).0,
        decider: watch::channel(false).0,
        status: watch::channel(ClusterStatus {
            name: config.name.clone(),
            ..ClusterStatus::default()
        })
        .0,
        maintenance: watch::channel(BTreeSet::new()).0,
    });
    let (switches, switch_rx) = mpsc::unbounded_channel();
    let (stop, cancel) = (CancellationToken::new(), CancellationToken::new());
    let task = Task {
        inner: Arc::clone(&inner),
        local,
        switches,
        stop: stop.clone(),
        cancel: cancel.clone(),
    };
    let span = tracing::info_span!("cluster", member = %config.name);
    let task = tokio::spawn(session::run(task).instrument(span));
    let cluster = Cluster {
        handle: ClusterHandle { inner },
        stop,
        cancel,
        task: Some(task),
    };
    Ok((cluster, switch_rx))
}

/// The running member. Dropping it ends the member at once *without*
/// revoking its lease (the others see it gone after ttl, as after a
/// crash); [`Cluster::stop`] revokes it, so they see it leave at once.
pub struct Cluster {
    handle: ClusterHandle,
    stop: CancellationToken,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Cluster {
    /// A clonable handle for engines, the control socket and reloads.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Leave the cluster: revoke the lease (the member record and, on the
    /// decider, the decider key go at once) and end the task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let timing = self.handle.inner.timing;
            let endpoints = self.handle.inner.client.endpoints().len() as u32;
            // A join or write in flight, then one revoke per lease.
            let limit = timing.request_timeout * endpoints.max(1) * 4 + Duration::from_secs(1);
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(?limit, "cluster member did not stop in time");
            }
        }
    }
}

impl std::ops::Deref for Cluster {
    type Target = ClusterHandle;

    fn deref(&self) -> &ClusterHandle {
        &self.handle
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.handle.inner.set_lost();
    }
}

/// The cluster as the engines and the control socket use it.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

impl ClusterHandle {
    /// This instance's member name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The agreed state of `service` (`None`: not a service of this
    /// instance). The value is `None` until a state is agreed: hold new
    /// clients meanwhile.
    pub fn agreed(&self, service: &str) -> Option<watch::Receiver<Option<Agreed>>> {
        self.inner
            .agreed_senders()
            .get(service)
            .map(watch::Sender::subscribe)
    }

    /// The engine has applied `generation` of `service` (pointer swapped,
    /// connections closed per `on_switch`): acknowledge it in the member
    /// record. Older generations than one already acknowledged are ignored.
    pub fn applied(&self, service: &str, generation: u64) {
        let mut acked = self.inner.acked();
        let entry = acked.entry(service.to_string()).or_insert(0);
        if generation > *entry {
            *entry = generation;
            drop(acked);
            self.inner.ack_notify.notify_one();
        }
    }

    /// `true` while this instance is a member: its last lease renewal that
    /// etcd confirmed was sent less than ttl ago.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// `true` while this instance is the decider.
    pub fn is_decider(&self) -> watch::Receiver<bool> {
        self.inner.decider.subscribe()
    }

    /// The `cluster` object of `ctl status --json`.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status.borrow().clone()
    }

    /// The backends of `service` under cluster-wide maintenance.
    pub fn disabled(&self, service: &str) -> BTreeSet<String> {
        self.inner
            .maintenance
            .borrow()
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// `ctl disable` (`disabled = true`) / `ctl enable` of a backend,
    /// cluster-wide: stored in etcd, so every member and any later decider
    /// see it. Returns once etcd has it; the switch follows from the decider.
    pub async fn set_maintenance(
        &self,
        service: &str,
        backend: &str,
        disabled: bool,
    ) -> Result<(), String> {
        self.check_backend(service, backend)?;
        let inner = &self.inner;
        let key = inner.keys.maintenance(service, backend);
        let verb = if disabled { "disable" } else { "enable" };
        let failed = |e: &EtcdError| {
            format!("cluster-wide {verb} of service \"{service}\" backend \"{backend}\": {e}")
        };
        for _ in 0..MAINTENANCE_ATTEMPTS {
            let written = if disabled {
                inner
                    .client
                    .put(&key, inner.name.as_bytes(), None)
                    .await
                    .map(drop)
            } else {
                inner.client.delete(&key).await.map(drop)
            };
            match written {
                Ok(()) => return Ok(()),
                Err(EtcdError::Uncertain { .. }) => {
                    // Putting or deleting again is harmless; see whether it is needed.
                    let (kv, _) = inner.client.get(&key).await.map_err(|e| failed(&e))?;
                    if kv.is_some() == disabled {
                        return Ok(());
                    }
                }
                Err(e) => return Err(failed(&e)),
            }
        }
        Err(format!(
            "cluster-wide {verb} of service \"{service}\" backend \"{backend}\": etcd did not confirm the write after {MAINTENANCE_ATTEMPTS} tries; check etcd and try again"
        ))
    }

    fn check_backend(&self, service: &str, backend: &str) -> Result<(), String> {
        let specs = self.inner.specs.borrow();
        let spec = specs
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| format!("unknown service \"{service}\""))?;
        if !spec.backends.iter().any(|b| b == backend) {
            return Err(format!(
                "service \"{service}\": unknown backend \"{backend}\""
            ));
        }
        Ok(())
    }

    /// A reload: the services (and their backends, failback settings) now
    /// configured. New services get an agreed-state channel, removed ones
    /// lose theirs; a switch the decider makes right after is a `reload`.
    pub fn update_services(&self, services: Vec<ServiceSpec>) {
        {
            let mut agreed = self.inner.agreed_senders();
            agreed.retain(|name, _| services.iter().any(|s| &s.name == name));
            for spec in &services {
                agreed
                    .entry(spec.name.clone())
                    .or_insert_with(|| watch::channel(None).0);
            }
        }
        self.inner.specs.send_replace(services);
    }
}

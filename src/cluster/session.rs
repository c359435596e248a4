//! One member's life in the cluster: join (lease, record, read, watch),
//! the loop that follows the cluster (mirror the keys; on every change
//! write the member record and publish, as in `follow.rs`; campaign and
//! decide, as in `tenure.rs`), and leave or get lost, then join again with
//! a new lease. It never touches client connections: the engine acts on
//! what it publishes.
//!
//! Ordering that the no-overlap argument rests on: a joining member writes
//! its record *before* it reads the agreed state. So a member the decider
//! does not see yet when it publishes the second step of a switch joined
//! after the first step was written, and read that first step (or later).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::decider::Decider;
use super::etcd::{EtcdError, Event, LeaseId, Watch};
use super::handle::Inner;
use super::lease::{self, AbortOnDrop, Expired, LeaseState, REJOIN_FIRST_DELAY};
use super::mirror::Mirror;
use super::records::StateRecord;
use super::types::{LocalView, ServiceSpec, SwitchEvent};
use crate::metrics as m;

/// Far enough to mean "no timer".
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the member task runs with.
pub(super) struct Task {
    pub inner: Arc<Inner>,
    pub local: watch::Receiver<LocalView>,
    pub switches: mpsc::UnboundedSender<SwitchEvent>,
    /// `Cluster::stop`: revoke the lease and end.
    pub stop: CancellationToken,
    /// `Cluster` dropped: end without revoking (the lease expires).
    pub cancel: CancellationToken,
}

/// Why a session ended.
pub(super) enum End {
    Cancelled,
    Stop,
    Lost(String),
}

/// The decider's tenure: the decider key's create revision identifies it.
pub(super) struct Role {
    pub create_revision: i64,
    pub decider: Decider,
}

/// A state write whose outcome is not known yet (the answer was lost):
/// confirmed when the mirror shows it.
pub(super) struct Unconfirmed {
    pub service: String,
    pub record: StateRecord,
    pub completes: Option<SwitchEvent>,
}

/// One lease's worth of membership.
pub(super) struct Session<'a> {
    pub task: &'a Task,
    pub lease: LeaseId,
    pub lease_rx: watch::Receiver<LeaseState>,
    /// Set by the renewal task when the lease is lost: from then on no
    /// flag may say "member" or "decider" again in this session.
    pub expired: Expired,
    pub _renewal: AbortOnDrop,
    /// Not a member from this moment on (last confirmed send + `lost_after`).
    pub deadline: Instant,
    pub mirror: Mirror,
    pub watch: Option<Watch>,
    pub resync_at: Instant,
    pub specs: watch::Receiver<Vec<ServiceSpec>>,
    pub local: watch::Receiver<LocalView>,
    pub local_open: bool,
    pub record_dirty: bool,
    pub record_retry_at: Instant,
    pub last_record: Option<Vec<u8>>,
    pub record_failing: bool,
    pub role: Option<Role>,
    pub campaign_at: Instant,
    pub decide_at: Instant,
    pub recheck_at: Option<Instant>,
    pub unconfirmed: Vec<Unconfirmed>,
    /// The waiting set last logged, per service.
    pub waiting_logged: BTreeMap<String, (u64, Vec<String>)>,
}

/// The member task: join, run, and join again until stopped.
pub(super) async fn run(task: Task) {
    let mut stale: Vec<LeaseId> = Vec::new();
    let mut delay = REJOIN_FIRST_DELAY;
    let mut failing = false;
    loop {
        let joined = tokio::select! {
            biased;
            _ = task.cancel.cancelled() => break,
            _ = task.stop.cancelled() => {
                leave(&task, &stale).await;
                break;
            }
            joined = Session::join(&task, &mut stale) => joined,
        };
        let mut session = match joined {
            Ok(session) => session,
            Err(e) => {
                if std::mem::replace(&mut failing, true) {
                    debug!(error = %e, retry_in = ?delay, "cannot join the cluster yet");
                } else {
                    warn!(error = %e, "cannot join the cluster; retrying");
                }
                tokio::select! {
                    biased;
                    _ = task.cancel.cancelled() => break,
                    _ = task.stop.cancelled() => {
                        leave(&task, &stale).await;
                        break;
                    }
                    _ = sleep(delay) => {}
                }
                delay = (delay * 2).min(task.inner.timing.rejoin_max_delay);
                continue;
            }
        };
        (delay, failing) = (REJOIN_FIRST_DELAY, false);
        let end = session.run().await;
        let lease = session.lease;
        drop(session);
        task.inner.set_lost();
        match end {
            End::Cancelled => break,
            End::Stop => {
                stale.push(lease);
                leave(&task, &stale).await;
                info!("left the cluster");
                break;
            }
            End::Lost(why) => {
                warn!(reason = %why, "no longer a cluster member; joining again with a new lease");
                stale.push(lease);
            }
        }
    }
    task.inner.set_lost();
}

/// Revoke every lease this member may still hold (its keys go at once).
async fn leave(task: &Task, leases: &[LeaseId]) {
    for lease in leases {
        if let Err(e) = task.inner.client.revoke(*lease).await {
            warn!(%lease, error = %e, "cannot revoke the lease; it expires after ttl");
        }
    }
}

impl<'a> Session<'a> {
    /// Grant a lease, drop what a lost session left behind, write the
    /// member record, read the prefix and watch it.
    async fn join(task: &'a Task, stale: &mut Vec<LeaseId>) -> Result<Session<'a>, EtcdError> {
        let inner = &task.inner;
        let sent = Instant::now();
        let lease = inner.client.grant(inner.timing.ttl).await?;
        stale.push(lease.id);
        debug!(lease = %lease.id, granted = ?lease.ttl, "etcd lease granted");
        let on_lost = {
            let inner = Arc::clone(inner);
            move || inner.set_lost()
        };
        let (lease_rx, expired, renewal) =
            lease::keep_alive(inner.client.clone(), lease.id, inner.timing, sent, on_lost);
        // Revoked before the new record is written: a late write of the
        // lost session then fails instead of outliving this record.
        while let Some(&old) = stale.iter().find(|l| **l != lease.id) {
            inner.client.revoke(old).await?;
            stale.retain(|l| *l != old);
        }
        let now = Instant::now();
        let mut session = Session {
            task,
            lease: lease.id,
            lease_rx,
            expired,
            _renewal: renewal,
            deadline: sent + inner.timing.lost_after,
            mirror: Mirror::load(&inner.keys, &[], 0),
            watch: None,
            resync_at: now,
            specs: inner.specs.subscribe(),
            local: task.local.clone(),
            local_open: true,
            record_dirty: true,
            record_retry_at: now,
            last_record: None,
            record_failing: false,
            role: None,
            campaign_at: now,
            decide_at: now,
            recheck_at: None,
            unconfirmed: Vec::new(),
            waiting_logged: BTreeMap::new(),
        };
        let record = session.record();
        inner
            .client
            .put(&inner.keys.member(&inner.name), &record, Some(lease.id))
            .await?;
        session.last_record = Some(record);
        session.record_dirty = false;
        let (kvs, revision) = inner.client.get_prefix(inner.keys.root()).await?;
        session.mirror = Mirror::load(&inner.keys, &kvs, revision);
        session.watch = Some(
            inner
                .client
                .watch_prefix(inner.keys.root(), revision + 1)
                .await?,
        );
        stale.retain(|l| *l != lease.id);
        Ok(session)
    }

    /// Follow the cluster until the lease is lost or the member stops.
    async fn run(&mut self) -> End {
        if Instant::now() >= self.deadline {
            return End::Lost("joining took longer than ttl".into());
        }
        if !self.raise(&self.task.inner.connected) {
            return End::Lost("the lease expired while joining".into());
        }
        metrics::gauge!(m::CLUSTER_CONNECTED).set(1.0);
        info!(lease = %self.lease, members = self.mirror.members.len(), "joined the cluster");
        loop {
            if let Some(end) = self.work().await {
                return end;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = self.task.cancel.cancelled() => return End::Cancelled,
                _ = self.task.stop.cancelled() => return End::Stop,
                _ = sleep_until(self.deadline) => {
                    let timing = self.task.inner.timing;
                    return End::Lost(format!(
                        "no lease renewal confirmed by etcd for {:?} (ttl {:?} less a margin)",
                        timing.lost_after, timing.ttl
                    ));
                }
                changed = self.lease_rx.changed() => {
                    let state = *self.lease_rx.borrow_and_update();
                    if changed.is_err() || state.gone {
                        return End::Lost("etcd no longer has the lease".into());
                    }
                    self.deadline = state.confirmed + self.task.inner.timing.lost_after;
                }
                batch = next_batch(&mut self.watch) => self.on_watch(batch),
                changed = self.local.changed(), if self.local_open => match changed {
                    Ok(()) => self.record_dirty = true,
                    Err(_) => self.local_open = false,
                },
                _ = self.task.inner.ack_notify.notified() => self.record_dirty = true,
                _ = self.specs.changed() => self.record_dirty = true,
                _ = sleep_until(wake) => {}
            }
        }
    }

    /// Everything a wake-up may call for, in order.
    async fn work(&mut self) -> Option<End> {
        let now = Instant::now();
        if self.watch.is_none() && self.resync_at <= now {
            self.resync().await;
        }
        self.after_mirror_change();
        if self.record_dirty
            && self.record_retry_at <= now
            && let Some(end) = self.write_record().await
        {
            return Some(end);
        }
        if self.watch.is_some()
            && let Some(end) = self.lead().await
        {
            return Some(end);
        }
        self.after_mirror_change();
        None
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + NEVER;
        let mut consider = |at: Instant| wake = wake.min(at);
        if self.watch.is_none() {
            consider(self.resync_at);
        }
        if self.record_dirty {
            consider(self.record_retry_at);
        }
        if self.mirror.decider.is_none() {
            consider(self.campaign_at);
        }
        if self.role.is_some() {
            consider(self.decide_at);
            if let Some(at) = self.recheck_at {
                consider(at);
            }
        }
        wake
    }

    /// Set `flag` to true unless the lease is lost; the renewal task
    /// lowers it under the same lock, so it never stays up after a loss.
    pub fn raise(&self, flag: &watch::Sender<bool>) -> bool {
        let expired = &self.expired;
        flag.send_if_modified(|up| {
            if expired.load(Ordering::SeqCst) {
                false
            } else {
                *up = true;
                true
            }
        });
        *flag.borrow()
    }

    /// Not yet past the deadline: this member may still write as one.
    pub fn is_member_now(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Pause after a failed call.
    pub fn retry_at(&self) -> Instant {
        Instant::now() + self.task.inner.timing.retry_pause
    }

    fn on_watch(&mut self, batch: Result<Vec<Event>, EtcdError>) {
        match batch {
            Ok(events) => {
                trace!(
                    events = events.len(),
                    revision = self.mirror.revision,
                    "etcd watch events"
                );
                self.mirror.apply(&events)
            }
            Err(e @ EtcdError::Compacted { .. }) => {
                info!(error = %e, "etcd compacted past the watch; reading the keys again");
                self.watch = None;
                self.resync_at = Instant::now();
            }
            Err(e) => {
                warn!(error = %e, "etcd watch failed; reading the keys again");
                self.watch = None;
                self.resync_at = self.retry_at();
            }
        }
    }

    /// Read the whole prefix again and watch from there.
    async fn resync(&mut self) {
        let inner = &self.task.inner;
        let (kvs, revision) = match inner.client.get_prefix(inner.keys.root()).await {
            Ok(read) => read,
            Err(e) => {
                debug!(error = %e, "cannot read the cluster keys");
                self.resync_at = self.retry_at();
                return;
            }
        };
        self.mirror = Mirror::load(&inner.keys, &kvs, revision);
        match inner
            .client
            .watch_prefix(inner.keys.root(), revision + 1)
            .await
        {
            Ok(watch) => self.watch = Some(watch),
            Err(e) => {
                debug!(error = %e, "cannot watch the cluster keys");
                self.resync_at = self.retry_at();
            }
        }
    }
}

/// The next batch of the watch; never resolves while there is none.
async fn next_batch(watch: &mut Option<Watch>) -> Result<Vec<Event>, EtcdError> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

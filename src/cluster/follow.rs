//! A member following the cluster: its own record (view and
//! acknowledgements) written when it changes, and the mirror published to
//! the rest of failoverd: the agreed state per service, the status, the
//! maintenance flags, the metrics. Writes only the member's own record.

use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::records::{self, MemberRecord, MemberService, StateRecord};
use super::session::{End, Session};
use super::types::{Agreed, ClusterStatus, Seen, ServiceSpec};
use crate::metrics as m;

impl Session<'_> {
    /// This member's record as JSON: its view and acknowledgements.
    pub(super) fn record(&mut self) -> Vec<u8> {
        let inner = &self.task.inner;
        let local = self.local.borrow_and_update();
        let specs = self.specs.borrow_and_update();
        let acked = inner.acked();
        let services = specs
            .iter()
            .map(|spec| {
                let seen = local.services.get(&spec.name);
                let backends = spec
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let up = match seen.and_then(|v| v.get(i)) {
                            Some(Seen::Up) => Some(true),
                            Some(Seen::Down) => Some(false),
                            Some(Seen::Unknown) | None => None,
                        };
                        (name.clone(), up)
                    })
                    .collect();
                let service = MemberService {
                    backends,
                    acked: acked.get(&spec.name).copied().unwrap_or(0),
                };
                (spec.name.clone(), service)
            })
            .collect();
        records::encode(&MemberRecord {
            name: inner.name.clone(),
            services,
        })
    }

    /// Write the record if it changed; `Some` when the lease is gone.
    pub(super) async fn write_record(&mut self) -> Option<End> {
        let record = self.record();
        if self.last_record.as_ref() == Some(&record) {
            self.record_dirty = false;
            return None;
        }
        let inner = &self.task.inner;
        let key = inner.keys.member(&inner.name);
        let started = Instant::now();
        match inner.client.put(&key, &record, Some(self.lease)).await {
            Ok(_) => {
                trace!(took = ?started.elapsed(), "member record written");
                self.last_record = Some(record);
                self.record_dirty = false;
                self.record_failing = false;
                None
            }
            Err(e) if e.is_lease_not_found() => {
                Some(End::Lost("etcd no longer has the lease".into()))
            }
            Err(e) => {
                if std::mem::replace(&mut self.record_failing, true) {
                    debug!(error = %e, "cannot write the member record; retrying");
                } else {
                    warn!(error = %e, "cannot write the member record; retrying");
                }
                self.last_record = None;
                self.record_retry_at = self.retry_at();
                None
            }
        }
    }

    /// Bring the engine, the status and the metrics up to the mirror.
    pub(super) fn after_mirror_change(&mut self) {
        self.confirm_unconfirmed();
        self.check_role();
        self.publish_agreed();
        self.publish_status();
        self.publish_maintenance();
    }

    fn publish_agreed(&self) {
        let inner = &self.task.inner;
        let specs = self.specs.borrow();
        let senders = inner.agreed_senders();
        for spec in specs.iter() {
            let Some(tx) = senders.get(&spec.name) else {
                continue;
            };
            let state = match self.mirror.states.get(&spec.name) {
                None => None,
                // Unreadable: keep following the last readable state.
                Some(entry) => match &entry.value {
                    None => continue,
                    Some(state) => Some(state),
                },
            };
            let agreed = state.map(|s| agreed_for(spec, s));
            let changed = tx.send_if_modified(|current| {
                let changed = *current != agreed;
                if changed {
                    current.clone_from(&agreed);
                }
                changed
            });
            let (Some(a), Some(state), true) = (&agreed, state, changed) else {
                continue;
            };
            if a.active != state.active {
                warn!(
                    service = %spec.name, backend = state.active.as_deref().unwrap_or(""),
                    generation = a.generation,
                    "the agreed backend is not in this instance's config; holding new clients"
                );
            }
            info!(
                service = %spec.name, generation = a.generation,
                active = a.active.as_deref().unwrap_or(""),
                "generation agreed"
            );
            metrics::gauge!(m::CLUSTER_GENERATION, "service" => spec.name.clone())
                .set(a.generation as f64);
        }
    }

    fn publish_status(&self) {
        let inner = &self.task.inner;
        let status = ClusterStatus {
            name: inner.name.clone(),
            connected: *inner.connected.borrow(),
            decider: self.mirror.decider.as_ref().map(|d| d.name.clone()),
            members: self.mirror.member_names(),
        };
        let before = inner.status.borrow().clone();
        if before == status {
            return;
        }
        inner.status.send_replace(status.clone());
        if before.members != status.members {
            for name in status
                .members
                .iter()
                .filter(|n| !before.members.contains(n))
            {
                info!(member = %name, "member joined");
            }
            for name in before
                .members
                .iter()
                .filter(|n| !status.members.contains(n))
            {
                info!(member = %name, "member left");
            }
            metrics::gauge!(m::CLUSTER_MEMBERS).set(status.members.len() as f64);
        }
        if before.decider != status.decider
            && let Some(name) = &status.decider
        {
            info!(decider = %name, "decider elected");
        }
    }

    fn publish_maintenance(&self) {
        self.task.inner.maintenance.send_if_modified(|current| {
            let changed = *current != self.mirror.maintenance;
            if changed {
                current.clone_from(&self.mirror.maintenance);
            }
            changed
        });
    }
}

/// The agreed state as this instance's engine applies it: an agreed
/// backend its own config lacks means no backend here.
fn agreed_for(spec: &ServiceSpec, state: &StateRecord) -> Agreed {
    Agreed {
        generation: state.generation,
        active: state
            .active
            .clone()
            .filter(|name| spec.backends.contains(name)),
    }
}

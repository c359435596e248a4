//! The decider's side of a session: the election (a create-if-absent
//! transaction on `P/decider` under the member's lease), and the writes of
//! the agreed state, each a transaction conditioned on this tenure still
//! holding the decider key and on the state being the one the decision was
//! made from, so a deposed decider never writes and no state is overwritten
//! unseen. A write whose answer was lost ([`EtcdError::Uncertain`]) is read
//! back: the mirror then shows whether it was applied.

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decider::{Decider, Waiting, Write};
use super::etcd::{Compare, CompareOp, EtcdError, KeyValue, Op, OpResponse, Txn};
use super::records::{self, StateRecord};
use super::session::{End, Role, Session, Unconfirmed};
use super::types::SwitchEvent;
use crate::metrics as m;

/// Steps (decide, write, decide again) per wake-up at most: a write that
/// keeps losing races waits for the next event instead of spinning.
const DECIDE_ROUNDS: usize = 4;

impl Session<'_> {
    /// Campaign when there is no decider; decide when this is it.
    pub(super) async fn lead(&mut self) -> Option<End> {
        if !self.is_member_now() {
            return None;
        }
        if self.mirror.decider.is_none()
            && self.campaign_at <= Instant::now()
            && let Some(end) = self.campaign().await
        {
            return Some(end);
        }
        if self.role.is_some() && self.decide_at <= Instant::now() {
            self.decide().await;
        }
        None
    }

    async fn campaign(&mut self) -> Option<End> {
        let inner = &self.task.inner;
        let key = inner.keys.decider();
        let name = inner.name.as_bytes();
        let txn = Txn::new()
            .when([Compare::create_revision(&key, CompareOp::Equal, 0)])
            .and_then([Op::put(&key, name, Some(self.lease))])
            .or_else([Op::get(&key)]);
        match inner.client.txn(&txn).await {
            Ok(r) if r.succeeded => self.mirror.put(&KeyValue {
                key,
                value: name.to_vec(),
                create_revision: r.revision,
                mod_revision: r.revision,
                version: 1,
                lease: Some(self.lease),
            }),
            Ok(r) => self.observe(&[key], &r.responses, r.revision),
            Err(e) if e.is_lease_not_found() => {
                return Some(End::Lost("etcd no longer has the lease".into()));
            }
            Err(e @ EtcdError::Uncertain { .. }) => {
                debug!(error = %e, "decider election answer lost; reading the key");
                if !self.reread(&[key]).await {
                    self.campaign_at = self.retry_at();
                }
            }
            Err(e) => {
                debug!(error = %e, "decider election failed; retrying");
                self.campaign_at = self.retry_at();
            }
        }
        self.check_role();
        None
    }

    /// Follow the mirror's decider key: become the decider when it holds
    /// this lease, stop being it when it no longer does.
    pub(super) fn check_role(&mut self) {
        let mine = self
            .mirror
            .decider
            .as_ref()
            .filter(|d| d.lease == Some(self.lease))
            .map(|d| d.create_revision);
        let current = self.role.as_ref().map(|r| r.create_revision);
        if current == mine {
            return;
        }
        let inner = &self.task.inner;
        if current.is_some() {
            info!("no longer the decider");
            self.role = None;
            self.recheck_at = None;
            self.waiting_logged.clear();
        }
        if let Some(create_revision) = mine {
            info!(members = self.mirror.members.len(), "became the decider");
            self.role = Some(Role {
                create_revision,
                decider: Decider::new(&inner.name),
            });
            self.decide_at = Instant::now();
        }
        let decider = if self.role.is_some() {
            self.raise(&inner.decider)
        } else {
            inner.decider.send_replace(false);
            false
        };
        metrics::gauge!(m::CLUSTER_DECIDER).set(if decider { 1.0 } else { 0.0 });
    }

    async fn decide(&mut self) {
        for _ in 0..DECIDE_ROUNDS {
            let specs = self.specs.borrow().clone();
            let Some(role) = self.role.as_mut() else {
                return;
            };
            let step = role
                .decider
                .step(&self.mirror, &specs, std::time::Instant::now());
            self.recheck_at = step.recheck_at.map(Instant::from_std);
            self.log_waiting(&step.waiting);
            if step.writes.is_empty() {
                return;
            }
            for write in step.writes {
                if !self.is_member_now() || self.role.is_none() {
                    return;
                }
                if !self.write_state(write).await {
                    self.decide_at = self.retry_at();
                    return;
                }
            }
        }
    }

    /// One conditioned write; `false` when etcd could not be asked.
    async fn write_state(&mut self, write: Write) -> bool {
        let Some(role) = &self.role else {
            return true;
        };
        let inner = &self.task.inner;
        let key = inner.keys.state(&write.service);
        let decider_key = inner.keys.decider();
        let value = records::encode(&write.record);
        let txn = Txn::new()
            .when([
                Compare::create_revision(&decider_key, CompareOp::Equal, role.create_revision),
                Compare::mod_revision(&key, CompareOp::Equal, write.replaces),
            ])
            .and_then([Op::put(&key, &value, None)])
            .or_else([Op::get(&decider_key), Op::get(&key)]);
        match inner.client.txn(&txn).await {
            Ok(r) if r.succeeded => {
                self.mirror.put(&KeyValue {
                    key,
                    value,
                    create_revision: r.revision,
                    mod_revision: r.revision,
                    version: 0,
                    lease: None,
                });
                self.confirmed(&write.service, &write.record, write.completes);
                true
            }
            Ok(r) => {
                debug!(service = %write.service, "agreed state changed under the decider; reading again");
                self.observe(&[decider_key, key], &r.responses, r.revision);
                self.check_role();
                true
            }
            Err(e @ EtcdError::Uncertain { .. }) => {
                warn!(service = %write.service, generation = write.record.generation, error = %e,
                    "agreed-state write may or may not have been applied; reading it back");
                self.unconfirmed.push(Unconfirmed {
                    service: write.service,
                    record: write.record,
                    completes: write.completes,
                });
                let read = self.reread(&[decider_key, key]).await;
                self.after_mirror_change();
                read
            }
            Err(e) => {
                warn!(service = %write.service, error = %e, "cannot write the agreed state; retrying");
                false
            }
        }
    }

    /// A write of this member is known to be applied.
    fn confirmed(&self, service: &str, record: &StateRecord, completes: Option<SwitchEvent>) {
        if let Some(target) = &record.target {
            info!(
                service, generation = record.generation,
                from = record.from.as_deref().unwrap_or(""), to = %target,
                "switch step 1 of 2: no backend until every member has let go of the old one"
            );
        }
        if let Some(event) = completes {
            info!(
                service, generation = event.generation,
                from = event.from.as_deref().unwrap_or(""),
                to = event.to.as_deref().unwrap_or(""),
                reason = %event.reason,
                "active backend switched"
            );
            let _ = self.task.switches.send(event);
        }
    }

    /// Confirm (or drop, when superseded) writes whose answer was lost.
    pub(super) fn confirm_unconfirmed(&mut self) {
        let mut i = 0;
        while i < self.unconfirmed.len() {
            let u = &self.unconfirmed[i];
            let stored = self
                .mirror
                .states
                .get(&u.service)
                .and_then(|e| e.value.as_ref());
            match stored {
                Some(s) if *s == u.record => {
                    let u = self.unconfirmed.remove(i);
                    self.confirmed(&u.service, &u.record, u.completes);
                }
                Some(s) if s.generation >= u.record.generation => {
                    debug!(service = %u.service, generation = u.record.generation, "agreed-state write was not applied");
                    self.unconfirmed.remove(i);
                }
                _ => i += 1,
            }
        }
    }

    /// Put the single-key reads of a failed transaction into the mirror.
    fn observe(&mut self, keys: &[Vec<u8>], responses: &[OpResponse], revision: i64) {
        for (key, response) in keys.iter().zip(responses) {
            if let OpResponse::Range(kvs) = response {
                self.mirror.observe(key, kvs.first(), revision);
            }
        }
    }

    /// Read `keys` again into the mirror; `false` if etcd did not answer.
    async fn reread(&mut self, keys: &[Vec<u8>]) -> bool {
        for key in keys {
            match self.task.inner.client.get(key).await {
                Ok((kv, revision)) => self.mirror.observe(key, kv.as_ref(), revision),
                Err(e) => {
                    debug!(error = %e, "cannot read back after an uncertain write");
                    return false;
                }
            }
        }
        true
    }

    /// Log a switch that waits: at info when it starts waiting, at
    /// debug as acknowledgements come in.
    fn log_waiting(&mut self, waiting: &[Waiting]) {
        self.waiting_logged
            .retain(|service, _| waiting.iter().any(|w| &w.service == service));
        for w in waiting {
            let now = (w.generation, w.members.clone());
            match self.waiting_logged.get(&w.service) {
                Some(logged) if *logged == now => continue,
                Some((generation, _)) if *generation == w.generation => debug!(
                    service = %w.service, generation = w.generation, members = ?w.members,
                    "switch step 2 of 2 still waits for these members"
                ),
                _ => info!(
                    service = %w.service, generation = w.generation, members = ?w.members,
                    "switch step 2 of 2 waits for these members to acknowledge"
                ),
            }
            self.waiting_logged.insert(w.service.clone(), now);
        }
    }
}

//! The decider's choice, pure: from this member's mirror of the cluster
//! (every member's view and acknowledgement, maintenance flags, the agreed
//! state) to the agreed-state writes to make. It combines the members'
//! views (a backend is down for the cluster when more than half of the
//! members that report it see it down), applies `policy::decide` to that
//! combined view, and runs the two-step switch. No I/O, no clock reads
//! (`now` is passed in), no logging: the session writes, logs and reports.
//!
//! A switch from A to B is two writes: first `{active: null, target: B,
//! from: A}` (members stop sending to A and acknowledge), then, once every
//! member that runs the service has acknowledged that generation (a
//! member whose lease expired is no longer in the mirror) and the mirror
//! has caught up with the first write, `{active: B}`. The target is
//! decided again at the second write, so a change while draining is
//! followed. Every write gets a generation above both the stored one and
//! every member's acknowledgement.

use std::collections::HashMap;
use std::time::Instant;

use super::mirror::Mirror;
use super::records::StateRecord;
use super::types::{ServiceSpec, SwitchEvent};
use crate::policy::{self, BackendView, Cause, Policy, SwitchReason};

/// One agreed-state write the decider wants made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Write {
    pub service: String,
    pub record: StateRecord,
    /// The mod revision of the state key this write replaces (0: absent):
    /// the write is conditioned on it, so it never overwrites a state this
    /// member has not seen.
    pub replaces: i64,
    /// The switch this write completes (the decider reports it once).
    pub completes: Option<SwitchEvent>,
}

/// A service whose switch waits for acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Waiting {
    pub service: String,
    pub generation: u64,
    /// Members that have not acknowledged it yet (empty: the mirror has
    /// not caught up with the first write yet).
    pub members: Vec<String>,
}

/// What one step decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Step {
    pub writes: Vec<Write>,
    pub waiting: Vec<Waiting>,
    /// Step again at this moment even if nothing changes (a pending
    /// `failback_delay`).
    pub recheck_at: Option<Instant>,
}

/// The decider's memory between steps: when each backend's combined view
/// turned up (for `failback_delay`), counted from when this member became
/// the decider at the earliest, so taking over never makes a failback due;
/// and each service's spec at the last step, so a switch a changed spec
/// causes is one with reason `reload`.
#[derive(Debug)]
pub(super) struct Decider {
    me: String,
    up_since: HashMap<(String, String), Instant>,
    specs: HashMap<String, ServiceSpec>,
}

impl Decider {
    /// A new tenure of member `me`.
    pub fn new(me: &str) -> Decider {
        Decider {
            me: me.to_string(),
            up_since: HashMap::new(),
            specs: HashMap::new(),
        }
    }

    /// Decide every service of `specs` against `mirror` at `now`.
    pub fn step(&mut self, mirror: &Mirror, specs: &[ServiceSpec], now: Instant) -> Step {
        self.up_since.retain(|(service, backend), _| {
            specs
                .iter()
                .any(|s| &s.name == service && s.backends.contains(backend))
        });
        let mut step = Step::default();
        let previous = std::mem::take(&mut self.specs);
        for spec in specs {
            self.specs.insert(spec.name.clone(), spec.clone());
            let reload = previous.get(&spec.name).is_some_and(|p| p != spec);
            let views = self.views(spec, mirror, now);
            let service = Service {
                spec,
                views: &views,
                policy: Policy {
                    failback: spec.failback,
                    failback_delay: spec.failback_delay,
                },
                mirror,
                me: &self.me,
                now,
            };
            let entry = mirror.states.get(&spec.name);
            let replaces = entry.map_or(0, |e| e.mod_revision);
            let (record, recheck) = match entry.and_then(|e| e.value.as_ref()) {
                None => (Some(service.first()), None),
                Some(state) if state.is_draining() => match service.drain(state, replaces) {
                    Drain::Write(record, recheck) => (Some(record), recheck),
                    Drain::Wait(waiting, recheck) => {
                        step.waiting.push(waiting);
                        (None, recheck)
                    }
                },
                Some(state) => service.steady(state, reload),
            };
            step.recheck_at = earliest(step.recheck_at, recheck);
            if let Some((record, completes)) = record {
                step.writes.push(Write {
                    service: spec.name.clone(),
                    record,
                    replaces,
                    completes,
                });
            }
        }
        step
    }

    /// The combined view of each backend of `spec`, in spec order.
    fn views(&mut self, spec: &ServiceSpec, mirror: &Mirror, now: Instant) -> Vec<BackendView> {
        spec.backends
            .iter()
            .map(|backend| {
                let (mut down, mut voters) = (0usize, 0usize);
                for member in mirror.members.values() {
                    let seen = member
                        .value
                        .as_ref()
                        .and_then(|r| r.services.get(&spec.name))
                        .and_then(|s| s.backends.get(backend).copied().flatten());
                    if let Some(up) = seen {
                        voters += 1;
                        down += usize::from(!up);
                    }
                }
                let up = 2 * down <= voters;
                let key = (spec.name.clone(), backend.clone());
                let up_since = if up {
                    Some(*self.up_since.entry(key).or_insert(now))
                } else {
                    self.up_since.remove(&key);
                    None
                };
                BackendView {
                    up,
                    enabled: !mirror.is_disabled(&spec.name, backend),
                    up_since,
                }
            })
            .collect()
    }
}

type Planned = (StateRecord, Option<SwitchEvent>);

enum Drain {
    Write(Planned, Option<Instant>),
    Wait(Waiting, Option<Instant>),
}

/// One service's decision inputs.
struct Service<'a> {
    spec: &'a ServiceSpec,
    views: &'a [BackendView],
    policy: Policy,
    mirror: &'a Mirror,
    me: &'a str,
    now: Instant,
}

impl Service<'_> {
    fn index(&self, name: Option<&str>) -> Option<usize> {
        name.and_then(|n| self.spec.backends.iter().position(|b| b == n))
    }

    fn name(&self, index: Option<usize>) -> Option<String> {
        index.and_then(|i| self.spec.backends.get(i).cloned())
    }

    /// Above the stored generation and every member's acknowledgement
    /// (the state may have been deleted and the members remember more).
    fn next_generation(&self) -> u64 {
        let stored = self
            .mirror
            .states
            .get(&self.spec.name)
            .and_then(|e| e.value.as_ref())
            .map_or(0, |s| s.generation);
        let acked = self
            .mirror
            .members
            .values()
            .filter_map(|m| m.value.as_ref()?.services.get(&self.spec.name))
            .map(|s| s.acked)
            .max()
            .unwrap_or(0);
        stored.max(acked).saturating_add(1)
    }

    fn record(&self, active: Option<String>, target: Option<String>) -> StateRecord {
        StateRecord {
            generation: self.next_generation(),
            active,
            target,
            from: None,
            reason: None,
            chosen: false,
            decider: self.me.to_string(),
        }
    }

    fn event(&self, record: &StateRecord, reason: SwitchReason) -> SwitchEvent {
        SwitchEvent {
            service: self.spec.name.clone(),
            from: record.from.clone(),
            to: record.active.clone(),
            reason,
            generation: record.generation,
        }
    }

    /// No state yet: the first choice, which is not a switch.
    fn first(&self) -> Planned {
        let active = self.name(policy::initial(self.views));
        let chosen = active.is_some();
        let record = StateRecord {
            chosen,
            ..self.record(active, None)
        };
        (record, None)
    }

    /// A settled state (`active` a backend or none): start a switch when
    /// the decision differs.
    fn steady(&self, state: &StateRecord, reload: bool) -> (Option<Planned>, Option<Instant>) {
        let current = self.index(state.active.as_deref());
        let decision = policy::decide(self.views, current, self.policy, self.now);
        let to = self.name(decision.active);
        if to == state.active {
            return (None, decision.recheck_at);
        }
        // The agreed backend is not in this decider's config: a reload.
        let removed = state.active.is_some() && current.is_none();
        let reason = if reload || removed {
            SwitchReason::Reload
        } else {
            let cause = decision.cause.unwrap_or(Cause::ActiveDown);
            SwitchReason::for_cause(cause, SwitchReason::HealthCheck)
        };
        let mut record = StateRecord {
            from: state.active.clone(),
            reason: Some(reason.as_str().to_string()),
            chosen: state.chosen || to.is_some(),
            ..self.record(None, None)
        };
        let completes = match (&state.active, to) {
            // From one backend to another: drain first.
            (Some(_), Some(to)) => {
                record.target = Some(to);
                None
            }
            (Some(_), None) => Some(self.event(&record, reason)),
            (None, to) => {
                record.active = to;
                // A backend agreed for the first time is not a switch.
                state.chosen.then(|| self.event(&record, reason))
            }
        };
        (Some((record, completes)), decision.recheck_at)
    }

    /// The first step of a switch is agreed: publish the (newly decided)
    /// target once every member has acknowledged it.
    fn drain(&self, state: &StateRecord, state_revision: i64) -> Drain {
        let target = self.index(state.target.as_deref());
        let decision = policy::decide(self.views, target, self.policy, self.now);
        let to = self.name(decision.active);
        let reason = state.switch_reason();
        let record = StateRecord {
            from: state.from.clone(),
            reason: state.reason.clone(),
            chosen: true,
            ..self.record(to.clone(), None)
        };
        if to.is_some() {
            let pending = self.not_acked(state.generation);
            if !pending.is_empty() || self.mirror.revision < state_revision {
                let waiting = Waiting {
                    service: self.spec.name.clone(),
                    generation: state.generation,
                    members: pending,
                };
                return Drain::Wait(waiting, decision.recheck_at);
            }
        }
        // Back to where it started (it recovered while draining): no switch.
        let completes = (record.from != to).then(|| self.event(&record, reason));
        Drain::Write((record, completes), decision.recheck_at)
    }

    /// Members running this service that have not acknowledged
    /// `generation`; an unreadable record counts as not acknowledged.
    fn not_acked(&self, generation: u64) -> Vec<String> {
        self.mirror
            .members
            .iter()
            .filter(|(_, m)| match &m.value {
                None => true,
                Some(r) => r
                    .services
                    .get(&self.spec.name)
                    .is_some_and(|s| s.acked < generation),
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;

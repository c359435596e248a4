//! The failover decision: given every backend's health and maintenance state,
//! which backend of a service should be active right now.
//!
//! This is the single place that encodes the choice rules of SPEC.md
//! (priority order, failback `auto`/`manual`, `failback_delay`, disabled
//! backends). It is pure: no I/O, no clock reads (`now` is passed in), no
//! logging, no metrics. Callers turn a [`Decision`] into a pointer swap, a log
//! line, a metric and a notify run; they map [`Cause`] to a SPEC.md reason.

use std::time::{Duration, Instant};

use crate::config::Failback;

/// What the decision needs to know about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    /// Health state (after rise/fall hysteresis and passive detection).
    pub up: bool,
    /// `false` while disabled with `ctl disable`.
    pub enabled: bool,
    /// When it last became up (None if down). An up backend with `None` is
    /// treated as up for long enough: its `failback_delay` has passed.
    pub up_since: Option<Instant>,
}

impl BackendView {
    /// Up and enabled: the only backends that may become active.
    pub fn is_candidate(&self) -> bool {
        self.up && self.enabled
    }
}

/// The per-service settings the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failback: Failback,
    pub failback_delay: Duration,
}

/// Why the active backend changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// current active is down
    ActiveDown,
    /// current active was disabled
    ActiveDisabled,
    /// a higher-priority backend recovered / was re-enabled and (auto) its failback_delay passed
    Failback,
    /// there was no active backend and one came up
    Recovered,
    /// the current one vanished (index out of range, e.g. after reload) or other
    Other,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The backend that should be active; `None` when no backend is up and enabled.
    pub active: Option<usize>,
    /// Some when active != current
    pub cause: Option<Cause>,
    /// when decide() should be called again even if nothing else changes (a pending failback_delay expiring)
    pub recheck_at: Option<Instant>,
}

/// Decide which backend should be active.
///
/// Candidates are backends that are up and enabled; index order is priority.
/// If `current` is not a candidate (or `None`), the first candidate takes
/// over at once, without waiting for `failback_delay`: continuity comes
/// first. If `current` is a candidate, `manual` stays; `auto` moves to the
/// first higher-priority candidate whose `failback_delay` has passed, and
/// reports in `recheck_at` the earliest moment a still-waiting
/// higher-priority candidate becomes eligible.
pub fn decide(
    backends: &[BackendView],
    current: Option<usize>,
    policy: Policy,
    now: Instant,
) -> Decision {
    let first_candidate = backends.iter().position(BackendView::is_candidate);

    let current_view = current.and_then(|index| backends.get(index).map(|view| (index, view)));
    let active = match current_view {
        Some((index, view)) if view.is_candidate() => {
            choose_while_healthy(backends, index, policy, now)
        }
        _ => first_candidate,
    };

    let cause = if active == current {
        None
    } else {
        Some(match current_view {
            None if current.is_none() => Cause::Recovered,
            None => Cause::Other,
            Some((_, view)) if !view.up => Cause::ActiveDown,
            Some((_, view)) if !view.enabled => Cause::ActiveDisabled,
            Some(_) => Cause::Failback,
        })
    };

    let recheck_at = match (policy.failback, active) {
        (Failback::Auto, Some(active)) => earliest_pending(&backends[..active], policy, now),
        _ => None,
    };

    Decision {
        active,
        cause,
        recheck_at,
    }
}

/// The first choice at start-up (not a switch): first enabled backend (all
/// start up), or None. A backend already known to be down is skipped.
pub fn initial(backends: &[BackendView]) -> Option<usize> {
    backends.iter().position(BackendView::is_candidate)
}

/// `current` is a healthy candidate: stay, or (auto) fail back to the first
/// higher-priority candidate that has been up for `failback_delay`.
fn choose_while_healthy(
    backends: &[BackendView],
    current: usize,
    policy: Policy,
    now: Instant,
) -> Option<usize> {
    if policy.failback == Failback::Manual {
        return Some(current);
    }
    let eligible = backends[..current].iter().position(|view| {
        view.is_candidate()
            && eligible_at(view, policy.failback_delay, now).is_some_and(|at| at <= now)
    });
    Some(eligible.unwrap_or(current))
}

/// When a candidate's `failback_delay` has passed (`now` if it has no
/// `up_since`); `None` if never (the sum overflows `Instant`).
fn eligible_at(view: &BackendView, delay: Duration, now: Instant) -> Option<Instant> {
    match view.up_since {
        Some(since) => since.checked_add(delay),
        None => Some(now),
    }
}

/// The earliest moment one of `higher` (candidates with a pending
/// `failback_delay`) becomes eligible.
fn earliest_pending(higher: &[BackendView], policy: Policy, now: Instant) -> Option<Instant> {
    higher
        .iter()
        .filter(|view| view.is_candidate())
        .filter_map(|view| eligible_at(view, policy.failback_delay, now))
        .filter(|at| *at > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_SECS: u64 = 100;

    struct Case {
        name: &'static str,
        backends: Vec<BackendView>,
        current: Option<usize>,
        failback: Failback,
        delay_secs: u64,
        active: Option<usize>,
        cause: Option<Cause>,
        /// Seconds after the base instant.
        recheck_secs: Option<u64>,
    }

    /// Up and enabled since `secs` after the base instant.
    fn up(secs: u64) -> BackendView {
        BackendView {
            up: true,
            enabled: true,
            up_since: Some(base() + Duration::from_secs(secs)),
        }
    }

    fn down() -> BackendView {
        BackendView {
            up: false,
            enabled: true,
            up_since: None,
        }
    }

    fn disabled(view: BackendView) -> BackendView {
        BackendView {
            enabled: false,
            ..view
        }
    }

    /// One fixed base instant for the whole test binary, so helpers agree.
    fn base() -> Instant {
        use std::sync::OnceLock;
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn case(name: &'static str, backends: Vec<BackendView>, current: Option<usize>) -> Case {
        Case {
            name,
            backends,
            current,
            failback: Failback::Auto,
            delay_secs: 0,
            active: None,
            cause: None,
            recheck_secs: None,
        }
    }

    impl Case {
        fn manual(mut self) -> Self {
            self.failback = Failback::Manual;
            self
        }
        fn delay(mut self, secs: u64) -> Self {
            self.delay_secs = secs;
            self
        }
        fn expect(mut self, active: Option<usize>, cause: Option<Cause>) -> Self {
            self.active = active;
            self.cause = cause;
            self
        }
        fn recheck(mut self, secs: u64) -> Self {
            self.recheck_secs = Some(secs);
            self
        }
    }

    fn cases() -> Vec<Case> {
        use Cause::*;
        vec![
            case("healthy primary stays", vec![up(0), up(0)], Some(0)).expect(Some(0), None),
            case(
                "primary down -> first backup",
                vec![down(), up(0), up(0)],
                Some(0),
            )
            .expect(Some(1), Some(ActiveDown)),
            case(
                "primary and first backup down -> second backup",
                vec![down(), down(), up(0)],
                Some(0),
            )
            .expect(Some(2), Some(ActiveDown)),
            case(
                "first backup fails while active -> second backup",
                vec![down(), down(), up(0)],
                Some(1),
            )
            .expect(Some(2), Some(ActiveDown)),
            case("all down -> none", vec![down(), down()], Some(0)).expect(None, Some(ActiveDown)),
            case(
                "all down and no active -> no change",
                vec![down(), down()],
                None,
            )
            .expect(None, None),
            case("one backend up stays", vec![up(0)], Some(0)).expect(Some(0), None),
            case("one backend down -> none", vec![down()], Some(0)).expect(None, Some(ActiveDown)),
            case("no backends -> none", vec![], None).expect(None, None),
            case(
                "disable active -> next",
                vec![disabled(up(0)), up(0)],
                Some(0),
            )
            .expect(Some(1), Some(ActiveDisabled)),
            case(
                "disabled and down active counts as down",
                vec![disabled(down()), up(0)],
                Some(0),
            )
            .expect(Some(1), Some(ActiveDown)),
            case(
                "enable primary -> failback (auto)",
                vec![up(0), up(0)],
                Some(1),
            )
            .expect(Some(0), Some(Failback)),
            case(
                "auto: recovered primary -> failback",
                vec![up(90), up(0)],
                Some(1),
            )
            .expect(Some(0), Some(Failback)),
            case(
                "manual stays on backup while it is up",
                vec![up(0), up(0)],
                Some(1),
            )
            .manual()
            .expect(Some(1), None),
            case(
                "manual moves when backup fails",
                vec![up(0), down()],
                Some(1),
            )
            .manual()
            .expect(Some(0), Some(ActiveDown)),
            case(
                "manual moves to the first candidate, not the next index",
                vec![up(0), up(0), down()],
                Some(2),
            )
            .manual()
            .expect(Some(0), Some(ActiveDown)),
            case(
                "failback_delay not yet passed -> stay",
                vec![up(95), up(0)],
                Some(1),
            )
            .delay(10)
            .expect(Some(1), None)
            .recheck(105),
            case(
                "failback_delay passed -> failback",
                vec![up(85), up(0)],
                Some(1),
            )
            .delay(10)
            .expect(Some(0), Some(Failback)),
            case(
                "failback_delay exactly passed -> failback",
                vec![up(90), up(0)],
                Some(1),
            )
            .delay(10)
            .expect(Some(0), Some(Failback)),
            case(
                "pending primary, eligible second -> move to second, recheck for primary",
                vec![up(98), up(50), up(0)],
                Some(2),
            )
            .delay(10)
            .expect(Some(1), Some(Failback))
            .recheck(108),
            case(
                "recheck is the earliest pending expiry",
                vec![up(97), up(93), up(0)],
                Some(2),
            )
            .delay(10)
            .expect(Some(2), None)
            .recheck(103),
            case(
                "active down ignores failback_delay",
                vec![up(99), down()],
                Some(1),
            )
            .delay(60)
            .expect(Some(0), Some(ActiveDown)),
            case(
                "disabled primary never chosen even if up",
                vec![disabled(up(0)), up(0)],
                Some(1),
            )
            .expect(Some(1), None),
            case(
                "disabled primary never chosen when nothing is active",
                vec![disabled(up(0)), up(0)],
                None,
            )
            .expect(Some(1), Some(Recovered)),
            case(
                "current none and backend recovers -> recovered",
                vec![down(), up(99)],
                None,
            )
            .delay(60)
            .expect(Some(1), Some(Recovered)),
            case("current out of range -> other", vec![up(0), up(0)], Some(5))
                .expect(Some(0), Some(Other)),
            case(
                "current out of range and nothing up -> other",
                vec![down()],
                Some(3),
            )
            .expect(None, Some(Other)),
            case(
                "up without up_since counts as up long enough",
                vec![
                    BackendView {
                        up: true,
                        enabled: true,
                        up_since: None,
                    },
                    up(0),
                ],
                Some(1),
            )
            .delay(3600)
            .expect(Some(0), Some(Failback)),
        ]
    }

    #[test]
    fn decide_follows_the_failover_table() {
        let now = base() + Duration::from_secs(NOW_SECS);
        let cases = cases();
        assert!(!cases.is_empty());
        for case in cases {
            let policy = Policy {
                failback: case.failback,
                failback_delay: Duration::from_secs(case.delay_secs),
            };
            let got = decide(&case.backends, case.current, policy, now);
            let want = Decision {
                active: case.active,
                cause: case.cause,
                recheck_at: case.recheck_secs.map(|s| base() + Duration::from_secs(s)),
            };
            assert_eq!(got, want, "case: {}", case.name);
        }
    }

    #[test]
    fn recheck_at_leads_to_failback() {
        let policy = Policy {
            failback: Failback::Auto,
            failback_delay: Duration::from_secs(10),
        };
        let backends = [up(95), up(0)];
        let first = decide(
            &backends,
            Some(1),
            policy,
            base() + Duration::from_secs(100),
        );
        let recheck = first
            .recheck_at
            .expect("a pending failback sets recheck_at");
        let second = decide(&backends, Some(1), policy, recheck);
        assert_eq!(second.active, Some(0));
        assert_eq!(second.cause, Some(Cause::Failback));
        assert_eq!(second.recheck_at, None);
    }

    #[test]
    fn initial_picks_first_enabled_backend() {
        assert_eq!(initial(&[up(0), up(0)]), Some(0));
        assert_eq!(initial(&[disabled(up(0)), up(0)]), Some(1));
        assert_eq!(initial(&[disabled(up(0))]), None);
        assert_eq!(initial(&[]), None);
    }
}

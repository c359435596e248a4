//! The failover policy, pure: the rise/fall hysteresis that turns a stream
//! of check results into up/down, and the decision of which backend of a
//! service should be active right now.
//!
//! This is the single place that encodes the choice rules of SPEC.md
//! (priority order, failback `auto`/`manual`, `failback_delay`, disabled
//! backends). No I/O, no clock reads (`now` is passed in), no logging, no
//! metrics. Callers turn a [`Decision`] into a pointer swap, a log line, a
//! metric and a notify run; they map [`Cause`] to a switch reason.

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
    /// the current one is no longer in the list (a reload removed it)
    Removed,
}

/// Why the active backend changed, as SPEC.md names it in logs, metrics
/// and `FAILOVERD_REASON`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The active backend failed its health checks.
    HealthCheck,
    /// Failed connects on live traffic.
    Passive,
    /// Return to a recovered or re-enabled higher-priority backend.
    Failback,
    /// `ctl disable` of the active backend.
    Disabled,
    /// A reload changed the choice.
    Reload,
}

impl SwitchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::HealthCheck => "health_check",
            SwitchReason::Passive => "passive",
            SwitchReason::Failback => "failback",
            SwitchReason::Disabled => "disabled",
            SwitchReason::Reload => "reload",
        }
    }

    /// The reason for a decision's cause; `down_reason` is why the old
    /// active backend went down (health check or passive).
    pub fn for_cause(cause: Cause, down_reason: SwitchReason) -> SwitchReason {
        match cause {
            Cause::ActiveDown => down_reason,
            Cause::ActiveDisabled => SwitchReason::Disabled,
            Cause::Failback => SwitchReason::Failback,
            Cause::Recovered => SwitchReason::HealthCheck,
            Cause::Removed => SwitchReason::Reload,
        }
    }
}

impl std::fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
            None => Cause::Removed,
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

/// Rise/fall hysteresis for one backend: `fall` consecutive failed checks turn
/// it down, `rise` consecutive good checks turn it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    /// Length of the current run of good checks (0 after a failure).
    pub consecutive_ok: u32,
    /// Length of the current run of failed checks (0 after a success); keeps
    /// counting while down, for `ctl status`.
    pub consecutive_fail: u32,
    /// No check has finished yet on a backend that started down (a
    /// role-aware check): the first good check brings it up at once.
    pub awaiting_first: bool,
}

impl Hysteresis {
    /// The start-up state: backends start up (SPEC.md: Start-up).
    pub fn new_up() -> Self {
        Hysteresis {
            up: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
            awaiting_first: false,
        }
    }

    /// The start-up state of a backend with a role-aware check: down, and
    /// up at its first passing check (a standby must never take traffic
    /// before a check said it may). After a failed first check it needs
    /// `rise` good checks, as any down backend.
    pub fn new_awaiting_first_check() -> Self {
        Hysteresis {
            up: false,
            consecutive_ok: 0,
            consecutive_fail: 0,
            awaiting_first: true,
        }
    }

    /// Record one check result; returns Some(new_up) when the state flips.
    ///
    /// `rise` and `fall` of 0 are treated as 1 (validation rejects them).
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let first = std::mem::take(&mut self.awaiting_first);
        if ok && first {
            self.consecutive_ok = 1;
            self.consecutive_fail = 0;
            self.up = true;
            return Some(true);
        }
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
            if !self.up && self.consecutive_ok >= rise.max(1) {
                self.up = true;
                return Some(true);
            }
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
            if self.up && self.consecutive_fail >= fall.max(1) {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// Force down (passive detection), resetting counters; returns true if it flipped.
    ///
    /// Coming back up then takes `rise` good checks, as after any fall.
    pub fn force_down(&mut self) -> bool {
        let flipped = self.up;
        self.up = false;
        self.consecutive_ok = 0;
        self.consecutive_fail = 0;
        self.awaiting_first = false;
        flipped
    }
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
                .expect(Some(0), Some(Removed)),
            case(
                "current out of range and nothing up -> other",
                vec![down()],
                Some(3),
            )
            .expect(None, Some(Removed)),
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

    /// Feed `results` into a fresh up state; return the flips seen.
    fn flips(start_up: bool, results: &[bool], rise: u32, fall: u32) -> Vec<(usize, bool)> {
        let mut h = Hysteresis::new_up();
        if !start_up {
            h.force_down();
        }
        results
            .iter()
            .enumerate()
            .filter_map(|(i, ok)| h.record(*ok, rise, fall).map(|up| (i, up)))
            .collect()
    }

    #[test]
    fn hysteresis_follows_rise_fall_table() {
        struct Case {
            name: &'static str,
            start_up: bool,
            results: &'static str,
            rise: u32,
            fall: u32,
            want: Vec<(usize, bool)>,
        }
        let cases = [
            Case {
                name: "fall failures turn up -> down",
                start_up: true,
                results: "xxx",
                rise: 2,
                fall: 3,
                want: vec![(2, false)],
            },
            Case {
                name: "fewer than fall failures stay up",
                start_up: true,
                results: "xxoxxoxx",
                rise: 2,
                fall: 3,
                want: vec![],
            },
            Case {
                name: "rise successes turn down -> up",
                start_up: false,
                results: "oo",
                rise: 2,
                fall: 3,
                want: vec![(1, true)],
            },
            Case {
                name: "a failure resets the rise run",
                start_up: false,
                results: "oxoxoo",
                rise: 2,
                fall: 3,
                want: vec![(5, true)],
            },
            Case {
                name: "fall=1 rise=1 flips on every change",
                start_up: true,
                results: "xoxo",
                rise: 1,
                fall: 1,
                want: vec![(0, false), (1, true), (2, false), (3, true)],
            },
            Case {
                name: "flapping every check never flips with rise,fall >= 2",
                start_up: true,
                results: "xoxoxoxoxoxoxoxoxoxo",
                rise: 2,
                fall: 2,
                want: vec![],
            },
            Case {
                name: "flapping every check while down never flips",
                start_up: false,
                results: "oxoxoxoxoxoxoxoxoxox",
                rise: 2,
                fall: 2,
                want: vec![],
            },
            Case {
                name: "successes while up do not flip",
                start_up: true,
                results: "oooo",
                rise: 2,
                fall: 3,
                want: vec![],
            },
            Case {
                name: "zero thresholds act as one",
                start_up: true,
                results: "xo",
                rise: 0,
                fall: 0,
                want: vec![(0, false), (1, true)],
            },
        ];
        for case in cases {
            let results: Vec<bool> = case.results.chars().map(|c| c == 'o').collect();
            assert_eq!(
                flips(case.start_up, &results, case.rise, case.fall),
                case.want,
                "case: {}",
                case.name
            );
        }
    }

    #[test]
    fn failures_keep_counting_while_down() {
        let mut h = Hysteresis::new_up();
        for _ in 0..5 {
            h.record(false, 2, 3);
        }
        assert!(!h.up);
        assert_eq!(h.consecutive_fail, 5);
        assert_eq!(h.consecutive_ok, 0);
    }

    #[test]
    fn force_down_flips_once_and_resets_counters() {
        let mut h = Hysteresis::new_up();
        h.record(false, 2, 3);
        assert!(h.force_down());
        assert_eq!(
            h,
            Hysteresis {
                up: false,
                consecutive_ok: 0,
                consecutive_fail: 0,
                awaiting_first: false,
            }
        );
        assert!(!h.force_down());
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }

    #[test]
    fn a_backend_awaiting_its_first_check_is_up_at_the_first_pass_only() {
        let mut h = Hysteresis::new_awaiting_first_check();
        assert!(!h.up);
        assert_eq!(h.record(true, 3, 3), Some(true), "first pass: up at once");
        let mut h = Hysteresis::new_awaiting_first_check();
        assert_eq!(h.record(false, 3, 3), None, "already down: no flip");
        assert_eq!(h.record(true, 3, 3), None, "then rise applies");
        assert_eq!(h.record(true, 3, 3), None);
        assert_eq!(h.record(true, 3, 3), Some(true));
    }

    /// Drive a primary through `pattern` repeated `cycles` times, with a
    /// healthy backup, and count health flips and switches made by `decide`.
    fn simulate(pattern: &[bool], cycles: usize, rise: u32, fall: u32) -> (usize, usize, usize) {
        let start = std::time::Instant::now();
        let policy = Policy {
            failback: Failback::Auto,
            failback_delay: Duration::ZERO,
        };
        let mut primary = Hysteresis::new_up();
        let mut up_since = Some(start);
        let backup = BackendView {
            up: true,
            enabled: true,
            up_since: Some(start),
        };
        let mut active = Some(0);
        let (mut downs, mut ups, mut switches) = (0, 0, 0);
        let mut now = start;
        for ok in pattern.iter().cycle().take(pattern.len() * cycles) {
            now += Duration::from_millis(500);
            match primary.record(*ok, rise, fall) {
                Some(true) => {
                    ups += 1;
                    up_since = Some(now);
                }
                Some(false) => {
                    downs += 1;
                    up_since = None;
                }
                None => {}
            }
            let view = BackendView {
                up: primary.up,
                enabled: true,
                up_since,
            };
            let decision = decide(&[view, backup], active, policy, now);
            if decision.cause.is_some() {
                switches += 1;
                active = decision.active;
            }
        }
        (downs, ups, switches)
    }

    #[test]
    fn full_fall_rise_cycles_switch_once_each_way() {
        let (rise, fall) = (2, 3);
        let mut pattern = vec![false; fall as usize];
        pattern.extend(vec![true; rise as usize]);
        let cycles = 7;
        let (downs, ups, switches) = simulate(&pattern, cycles, rise, fall);
        assert_eq!(downs, cycles);
        assert_eq!(ups, cycles);
        // One failover and one failback per cycle, never more.
        assert_eq!(switches, 2 * cycles);
    }

    #[test]
    fn flapping_backend_never_causes_a_switch() {
        let (downs, ups, switches) = simulate(&[false, true], 50, 2, 2);
        assert_eq!((downs, ups, switches), (0, 0, 0));
    }
}

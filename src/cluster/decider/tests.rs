use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::cluster::etcd::KeyValue;
use crate::cluster::keys::Keys;
use crate::cluster::records::{MemberRecord, MemberService, encode};
use crate::config::Failback;

const P: &str = "primary";
const B: &str = "backup";

fn spec(failback: Failback, delay_secs: u64) -> ServiceSpec {
    ServiceSpec {
        name: "db".into(),
        backends: vec![P.into(), B.into()],
        failback,
        failback_delay: Duration::from_secs(delay_secs),
    }
}

/// A cluster as one member's mirror would hold it, built key by key.
struct World {
    keys: Keys,
    kvs: Vec<KeyValue>,
    revision: i64,
}

impl World {
    fn new() -> World {
        World {
            keys: Keys::new("/f"),
            kvs: Vec::new(),
            revision: 1,
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.revision += 1;
        self.kvs.retain(|kv| kv.key != key);
        self.kvs.push(KeyValue {
            key,
            value,
            create_revision: self.revision,
            mod_revision: self.revision,
            version: 1,
            lease: None,
        });
    }

    /// Member `name` sees the primary and the backup as given; `acked`.
    fn member(&mut self, name: &str, primary: Option<bool>, backup: Option<bool>, acked: u64) {
        let record = MemberRecord {
            name: name.into(),
            services: BTreeMap::from([(
                "db".to_string(),
                MemberService {
                    backends: BTreeMap::from([(P.into(), primary), (B.into(), backup)]),
                    acked,
                },
            )]),
        };
        self.put(self.keys.member(name), encode(&record));
    }

    fn state(&mut self, record: &StateRecord) {
        self.put(self.keys.state("db"), encode(record));
    }

    fn disable(&mut self, backend: &str) {
        self.put(self.keys.maintenance("db", backend), b"px1".to_vec());
    }

    fn mirror(&self) -> Mirror {
        Mirror::load(&self.keys, &self.kvs, self.revision)
    }
}

fn state(generation: u64, active: Option<&str>) -> StateRecord {
    StateRecord {
        generation,
        active: active.map(str::to_string),
        chosen: true,
        decider: "px1".into(),
        ..StateRecord::default()
    }
}

fn draining(generation: u64, from: &str, target: &str) -> StateRecord {
    StateRecord {
        generation,
        active: None,
        target: Some(target.into()),
        from: Some(from.into()),
        reason: Some("health_check".into()),
        chosen: true,
        decider: "px1".into(),
    }
}

/// Three members with the same view of both backends, all acked `acked`.
fn three(primary: bool, acked: u64) -> World {
    let mut w = World::new();
    for name in ["px1", "px2", "px3"] {
        w.member(name, Some(primary), Some(true), acked);
    }
    w
}

fn step(w: &World, spec: &ServiceSpec) -> Step {
    Decider::new("px1").step(&w.mirror(), std::slice::from_ref(spec), Instant::now())
}

#[test]
fn the_first_state_is_the_first_candidate_and_no_switch() {
    let s = step(&three(true, 0), &spec(Failback::Auto, 0));
    assert_eq!(s.writes.len(), 1);
    let w = &s.writes[0];
    assert_eq!(
        (w.record.generation, w.record.active.as_deref()),
        (1, Some(P))
    );
    assert!(w.record.chosen);
    assert_eq!((w.replaces, &w.completes), (0, &None));
}

#[test]
fn a_state_agreeing_with_the_combined_view_is_left_alone() {
    let mut w = three(true, 4);
    w.state(&state(4, Some(P)));
    assert_eq!(step(&w, &spec(Failback::Auto, 0)), Step::default());
}

#[test]
fn more_than_half_of_the_members_must_see_a_backend_down() {
    let sp = spec(Failback::Auto, 0);
    let mut w = three(true, 4);
    w.state(&state(4, Some(P)));
    w.member("px1", Some(false), Some(true), 4);
    assert!(step(&w, &sp).writes.is_empty(), "one of three: no switch");
    w.member("px2", Some(false), Some(true), 4);
    let s = step(&w, &sp);
    assert_eq!(s.writes.len(), 1, "two of three: switch");
    let r = &s.writes[0].record;
    assert_eq!(
        r,
        &StateRecord {
            generation: 5,
            ..draining(5, P, B)
        }
    );
    assert_eq!(
        s.writes[0].completes, None,
        "the first step completes nothing"
    );
}

#[test]
fn members_without_an_opinion_do_not_vote() {
    let sp = spec(Failback::Auto, 0);
    let mut w = World::new();
    w.member("px1", Some(false), Some(true), 4);
    w.member("px2", None, Some(true), 4);
    w.state(&state(4, Some(P)));
    assert_eq!(step(&w, &sp).writes[0].record.target.as_deref(), Some(B));
    // Two of four voters down is not more than half.
    for name in ["px2", "px3", "px4"] {
        w.member(name, Some(name != "px2"), Some(true), 4);
    }
    w.member("px2", Some(false), Some(true), 4);
    let s = step(&w, &sp);
    assert_eq!(s.writes.len(), 0, "{s:?}");
}

#[test]
fn the_second_step_waits_for_every_acknowledgement() {
    let sp = spec(Failback::Auto, 0);
    let mut w = three(false, 4);
    w.state(&draining(5, P, B));
    let s = step(&w, &sp);
    assert!(s.writes.is_empty());
    assert_eq!(
        s.waiting,
        vec![Waiting {
            service: "db".into(),
            generation: 5,
            members: vec!["px1".into(), "px2".into(), "px3".into()]
        }]
    );
    w.member("px1", Some(false), Some(true), 5);
    w.member("px2", Some(false), Some(true), 5);
    assert_eq!(step(&w, &sp).waiting[0].members, vec!["px3".to_string()]);
    // px3's lease expired: its record is gone, it no longer counts.
    w.kvs.retain(|kv| kv.key != w.keys.member("px3"));
    let s = step(&w, &sp);
    assert_eq!(s.writes.len(), 1, "{s:?}");
    let write = &s.writes[0];
    assert_eq!(write.record.generation, 6);
    assert_eq!(write.record.active.as_deref(), Some(B));
    assert_eq!(write.record.from.as_deref(), Some(P));
    assert_eq!(
        write.completes,
        Some(SwitchEvent {
            service: "db".into(),
            from: Some(P.into()),
            to: Some(B.into()),
            reason: SwitchReason::HealthCheck,
            generation: 6
        })
    );
}

#[test]
fn the_second_step_waits_for_the_mirror_to_catch_up_with_the_first() {
    let sp = spec(Failback::Auto, 0);
    let w = {
        let mut w = three(false, 5);
        w.state(&draining(5, P, B));
        w
    };
    let mut m = w.mirror();
    m.revision -= 1;
    let s = Decider::new("px1").step(&m, std::slice::from_ref(&sp), Instant::now());
    assert!(s.writes.is_empty());
    assert_eq!(s.waiting[0].members, Vec::<String>::new());
}

#[test]
fn unreadable_members_block_and_members_without_the_service_do_not() {
    let sp = spec(Failback::Auto, 0);
    let mut w = three(false, 5);
    w.state(&draining(5, P, B));
    w.put(
        w.keys.member("px4"),
        br#"{"name":"px4","services":{}}"#.to_vec(),
    );
    assert_eq!(step(&w, &sp).writes.len(), 1);
    w.put(w.keys.member("px5"), b"garbage".to_vec());
    assert_eq!(step(&w, &sp).waiting[0].members, vec!["px5".to_string()]);
}

#[test]
fn the_target_is_decided_again_at_the_second_step() {
    let sp = spec(Failback::Auto, 0);
    // The backup went down too while draining: no backend at all.
    let mut w = World::new();
    for name in ["px1", "px2"] {
        w.member(name, Some(false), Some(false), 4);
    }
    w.state(&draining(5, P, B));
    let s = step(&w, &sp);
    assert_eq!(s.writes.len(), 1, "no need to wait to publish no backend");
    let write = &s.writes[0];
    assert_eq!(
        (
            write.record.active.as_deref(),
            write.record.target.as_deref()
        ),
        (None, None)
    );
    assert_eq!(write.completes.as_ref().map(|e| e.to.clone()), Some(None));
    // The primary came back while draining: back to it, which is no switch.
    let mut w = three(true, 5);
    w.member("px1", Some(true), Some(false), 5);
    w.member("px2", Some(true), Some(false), 5);
    w.state(&draining(5, P, B));
    let s = step(&w, &sp);
    assert_eq!(s.writes[0].record.active.as_deref(), Some(P));
    assert_eq!(s.writes[0].completes, None);
}

#[test]
fn maintenance_switches_with_reason_disabled_and_enable_fails_back() {
    let sp = spec(Failback::Auto, 0);
    let mut w = three(true, 4);
    w.state(&state(4, Some(P)));
    w.disable(P);
    let s = step(&w, &sp);
    assert_eq!(s.writes[0].record.target.as_deref(), Some(B));
    assert_eq!(s.writes[0].record.reason.as_deref(), Some("disabled"));
    let mut w = three(true, 4);
    w.state(&state(4, Some(B)));
    let s = step(&w, &sp);
    assert_eq!(s.writes[0].record.target.as_deref(), Some(P));
    assert_eq!(s.writes[0].record.reason.as_deref(), Some("failback"));
}

#[test]
fn failback_waits_for_the_delay_from_when_the_decider_saw_it_up() {
    let sp = spec(Failback::Auto, 10);
    let mut w = three(true, 4);
    w.state(&state(4, Some(B)));
    let mut d = Decider::new("px2");
    let t0 = Instant::now();
    let s = d.step(&w.mirror(), std::slice::from_ref(&sp), t0);
    assert!(
        s.writes.is_empty(),
        "a new decider never fails back at once"
    );
    assert_eq!(s.recheck_at, Some(t0 + Duration::from_secs(10)));
    let s = d.step(
        &w.mirror(),
        std::slice::from_ref(&sp),
        t0 + Duration::from_secs(9),
    );
    assert!(s.writes.is_empty());
    let s = d.step(
        &w.mirror(),
        std::slice::from_ref(&sp),
        t0 + Duration::from_secs(10),
    );
    assert_eq!(s.writes[0].record.target.as_deref(), Some(P));
    // Down in the combined view again: the delay starts over.
    let mut down = three(false, 4);
    down.state(&state(4, Some(B)));
    d.step(
        &down.mirror(),
        std::slice::from_ref(&sp),
        t0 + Duration::from_secs(11),
    );
    let s = d.step(
        &w.mirror(),
        std::slice::from_ref(&sp),
        t0 + Duration::from_secs(12),
    );
    assert_eq!(s.recheck_at, Some(t0 + Duration::from_secs(22)));
    // Manual: never.
    let s = Decider::new("px2").step(
        &w.mirror(),
        &[spec(Failback::Manual, 0)],
        t0 + Duration::from_secs(100),
    );
    assert_eq!(s, Step::default());
}

#[test]
fn generations_grow_past_every_acknowledgement() {
    let sp = spec(Failback::Auto, 0);
    // The state key was deleted; the members remember generation 9.
    let s = step(&three(true, 9), &sp);
    assert_eq!(s.writes[0].record.generation, 10);
}

#[test]
fn all_down_is_a_switch_to_no_backend_and_recovery_a_switch_back() {
    let sp = spec(Failback::Auto, 0);
    let mut w = World::new();
    w.member("px1", Some(false), Some(false), 4);
    w.state(&state(4, Some(P)));
    let s = step(&w, &sp);
    let e = s.writes[0].completes.clone().unwrap();
    assert_eq!((e.from.as_deref(), e.to.as_deref()), (Some(P), None));
    let mut w = World::new();
    w.member("px1", Some(false), Some(true), 5);
    w.state(&state(5, None));
    let s = step(&w, &sp);
    let e = s.writes[0].completes.clone().unwrap();
    assert_eq!(
        (e.from.as_deref(), e.to.as_deref(), e.generation),
        (None, Some(B), 6)
    );
    // Never chosen before (all down from the start): not a switch.
    let mut w = World::new();
    w.member("px1", Some(false), Some(true), 1);
    w.state(&StateRecord {
        chosen: false,
        ..state(1, None)
    });
    let s = step(&w, &sp);
    assert_eq!(s.writes[0].record.active.as_deref(), Some(B));
    assert_eq!(s.writes[0].completes, None);
}

#[test]
fn a_reload_names_the_reason() {
    let mut sp = spec(Failback::Auto, 0);
    let mut w = three(true, 4);
    w.state(&state(4, Some(P)));
    sp.backends.reverse();
    let mut d = Decider::new("px1");
    let before = spec(Failback::Manual, 0);
    assert!(
        d.step(&w.mirror(), std::slice::from_ref(&before), Instant::now())
            .writes
            .is_empty()
    );
    let s = d.step(&w.mirror(), std::slice::from_ref(&sp), Instant::now());
    assert_eq!(s.writes[0].record.reason.as_deref(), Some("reload"));
    // Only the service whose spec changed: the same spec again is no reload.
    let mut d = Decider::new("px1");
    d.step(&w.mirror(), std::slice::from_ref(&sp), Instant::now());
    let mut down = World::new();
    for name in ["px1", "px2", "px3"] {
        down.member(name, Some(true), Some(false), 4);
    }
    down.state(&state(4, Some(B)));
    let s = d.step(&down.mirror(), std::slice::from_ref(&sp), Instant::now());
    assert_eq!(s.writes[0].record.reason.as_deref(), Some("health_check"));
    // The agreed backend is gone from the config.
    let sp = ServiceSpec {
        backends: vec![B.into()],
        ..spec(Failback::Auto, 0)
    };
    let s = Decider::new("px1").step(&w.mirror(), std::slice::from_ref(&sp), Instant::now());
    assert_eq!(s.writes[0].record.reason.as_deref(), Some("reload"));
    assert_eq!(s.writes[0].record.target.as_deref(), Some(B));
}

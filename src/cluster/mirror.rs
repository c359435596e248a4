//! This member's copy of the cluster's keys, built from one read of the
//! prefix and kept current by the watch and by the results of its own
//! writes. Each key remembers the revision it is known at, so an older
//! value (a watch event behind a write this member already applied) never
//! replaces a newer one. Pure bookkeeping: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::etcd::{Event, EventKind, KeyValue, LeaseId};
use super::keys::{Key, Keys};
use super::records::{self, MemberRecord, StateRecord};

/// A decoded value with its etcd metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<T> {
    pub mod_revision: i64,
    pub lease: Option<LeaseId>,
    /// `None` when the stored bytes could not be read.
    pub value: Option<T>,
}

/// `P/decider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeciderKey {
    pub name: String,
    /// Identifies one tenure: every agreed-state write compares it.
    pub create_revision: i64,
    pub lease: Option<LeaseId>,
}

#[derive(Debug, Clone)]
pub(super) struct Mirror {
    keys: Keys,
    /// Every watch event up to this revision has been applied (or the
    /// whole prefix was read at it).
    pub revision: i64,
    pub members: BTreeMap<String, Entry<MemberRecord>>,
    pub decider: Option<DeciderKey>,
    pub states: BTreeMap<String, Entry<StateRecord>>,
    /// (service, backend) pairs under maintenance.
    pub maintenance: BTreeSet<(String, String)>,
    /// The revision each key is known at, deleted keys included.
    known: HashMap<Vec<u8>, i64>,
}

impl Mirror {
    /// The prefix as read at `revision`.
    pub fn load(keys: &Keys, kvs: &[KeyValue], revision: i64) -> Mirror {
        let mut mirror = Mirror {
            keys: keys.clone(),
            revision,
            members: BTreeMap::new(),
            decider: None,
            states: BTreeMap::new(),
            maintenance: BTreeSet::new(),
            known: HashMap::new(),
        };
        for kv in kvs {
            mirror.put(kv);
        }
        mirror
    }

    /// Watch events, in revision order.
    pub fn apply(&mut self, events: &[Event]) {
        for event in events {
            match event.kind {
                EventKind::Put => self.put(&event.kv),
                EventKind::Delete => self.delete(&event.kv.key, event.kv.mod_revision),
            }
            self.revision = self.revision.max(event.kv.mod_revision);
        }
    }

    /// The answer to a read of one key at `read_revision` (`None`: absent).
    pub fn observe(&mut self, key: &[u8], kv: Option<&KeyValue>, read_revision: i64) {
        match kv {
            Some(kv) => self.put(kv),
            None => self.delete(key, read_revision),
        }
    }

    /// A key written (by the watch, a read, or this member's own write).
    pub fn put(&mut self, kv: &KeyValue) {
        if !self.newer(&kv.key, kv.mod_revision) {
            return;
        }
        let Some(key) = self.keys.parse(&kv.key) else {
            return;
        };
        match key {
            Key::Member(name) => {
                self.members.insert(name, entry(kv));
            }
            Key::State(service) => {
                self.states.insert(service, entry(kv));
            }
            Key::Decider => {
                self.decider = Some(DeciderKey {
                    name: String::from_utf8_lossy(&kv.value).into_owned(),
                    create_revision: kv.create_revision,
                    lease: kv.lease,
                });
            }
            Key::Maintenance { service, backend } => {
                self.maintenance.insert((service, backend));
            }
        }
    }

    fn delete(&mut self, raw: &[u8], revision: i64) {
        if !self.newer(raw, revision) {
            return;
        }
        match self.keys.parse(raw) {
            Some(Key::Member(name)) => {
                self.members.remove(&name);
            }
            Some(Key::State(service)) => {
                self.states.remove(&service);
            }
            Some(Key::Decider) => self.decider = None,
            Some(Key::Maintenance { service, backend }) => {
                self.maintenance.remove(&(service, backend));
            }
            None => {}
        }
    }

    /// Records `revision` for `key` if it is newer than what is known.
    fn newer(&mut self, key: &[u8], revision: i64) -> bool {
        match self.known.get_mut(key) {
            Some(known) if *known >= revision => false,
            Some(known) => {
                *known = revision;
                true
            }
            None => {
                self.known.insert(key.to_vec(), revision);
                true
            }
        }
    }

    /// Member names, sorted.
    pub fn member_names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn is_disabled(&self, service: &str, backend: &str) -> bool {
        self.maintenance
            .contains(&(service.to_string(), backend.to_string()))
    }
}

fn entry<T: for<'a> serde::Deserialize<'a>>(kv: &KeyValue) -> Entry<T> {
    Entry {
        mod_revision: kv.mod_revision,
        lease: kv.lease,
        value: records::decode(&kv.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &[u8], value: &[u8], revision: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    }

    fn put(key: &[u8], value: &[u8], revision: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(key, value, revision),
        }
    }

    fn delete(key: &[u8], revision: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: revision,
                ..KeyValue::default()
            },
        }
    }

    #[test]
    fn keys_land_in_their_places_and_deletes_remove_them() {
        let keys = Keys::new("/f");
        let mut m = Mirror::load(&keys, &[kv(b"/f/decider", b"px1", 2)], 2);
        assert_eq!(m.decider.as_ref().map(|d| d.name.as_str()), Some("px1"));
        m.apply(&[
            put(b"/f/members/px1", br#"{"name":"px1"}"#, 3),
            put(b"/f/state/db", br#"{"generation":4}"#, 4),
            put(b"/f/maintenance/db/primary", b"px1", 5),
            put(b"/f/members/px2", b"garbage", 6),
            put(b"/f/elsewhere", b"x", 7),
        ]);
        assert_eq!(m.revision, 7);
        assert_eq!(m.member_names(), ["px1", "px2"]);
        assert_eq!(m.members["px2"].value, None, "unreadable, but present");
        assert_eq!(m.states["db"].value.as_ref().map(|s| s.generation), Some(4));
        assert!(m.is_disabled("db", "primary"));
        m.apply(&[
            delete(b"/f/maintenance/db/primary", 8),
            delete(b"/f/decider", 9),
            delete(b"/f/members/px2", 10),
        ]);
        assert!(!m.is_disabled("db", "primary"));
        assert_eq!(m.decider, None);
        assert_eq!(m.member_names(), ["px1"]);
    }

    #[test]
    fn an_older_value_never_replaces_a_newer_one() {
        let keys = Keys::new("/f");
        let mut m = Mirror::load(&keys, &[], 10);
        // This member's own write, applied at once at revision 12 ...
        m.put(&kv(b"/f/state/db", br#"{"generation":2}"#, 12));
        // ... then the watch catches up with an older write and its echo.
        m.apply(&[put(b"/f/state/db", br#"{"generation":1}"#, 11)]);
        assert_eq!(m.states["db"].value.as_ref().map(|s| s.generation), Some(2));
        m.apply(&[put(b"/f/state/db", br#"{"generation":2}"#, 12)]);
        // A read saw the key gone at 20; a late put from 15 is older.
        m.observe(b"/f/state/db", None, 20);
        m.apply(&[put(b"/f/state/db", br#"{"generation":3}"#, 15)]);
        assert!(!m.states.contains_key("db"));
        m.apply(&[put(b"/f/state/db", br#"{"generation":4}"#, 21)]);
        assert_eq!(m.states["db"].value.as_ref().map(|s| s.generation), Some(4));
    }
}

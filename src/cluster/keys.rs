//! The etcd key layout of a cluster, all under `[cluster] prefix`:
//!
//! ```text
//! P/members/<name>                  a member's record, under its lease
//! P/decider                         the decider's name, under its lease
//! P/state/<service>                 the agreed state, written by the decider only
//! P/maintenance/<service>/<backend> present = disabled (ctl disable)
//! ```
//!
//! Only building and recognising keys: no reads, no writes.

/// The keys of one cluster prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    /// The prefix with one trailing `/`: everything the cluster owns.
    root: String,
}

/// A key of the layout, recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key {
    Member(String),
    Decider,
    State(String),
    Maintenance { service: String, backend: String },
}

impl Keys {
    /// Keys under `prefix` (`/failoverd`; a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    /// The prefix every key of the cluster starts with (the watch range).
    pub fn root(&self) -> &[u8] {
        self.root.as_bytes()
    }

    pub fn member(&self, name: &str) -> Vec<u8> {
        format!("{}members/{name}", self.root).into_bytes()
    }

    pub fn decider(&self) -> Vec<u8> {
        format!("{}decider", self.root).into_bytes()
    }

    pub fn state(&self, service: &str) -> Vec<u8> {
        format!("{}state/{service}", self.root).into_bytes()
    }

    pub fn maintenance(&self, service: &str, backend: &str) -> Vec<u8> {
        format!("{}maintenance/{service}/{backend}", self.root).into_bytes()
    }

    /// What `key` is; `None` for a key outside the layout (ignored).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        if rest == "decider" {
            return Some(Key::Decider);
        }
        let (kind, name) = rest.split_once('/')?;
        match kind {
            // Member and service names never hold a `/` (validated).
            "members" if !name.contains('/') => non_empty(name).map(Key::Member),
            "state" if !name.contains('/') => non_empty(name).map(Key::State),
            "maintenance" => {
                let (service, backend) = name.split_once('/')?;
                Some(Key::Maintenance {
                    service: non_empty(service)?,
                    backend: non_empty(backend)?,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_under_the_prefix_and_recognised() {
        let keys = Keys::new("/failoverd/");
        assert_eq!(keys.root(), b"/failoverd/");
        let cases = [
            (keys.member("px1"), Key::Member("px1".into())),
            (keys.decider(), Key::Decider),
            (keys.state("db"), Key::State("db".into())),
            (
                keys.maintenance("db", "primary"),
                Key::Maintenance {
                    service: "db".into(),
                    backend: "primary".into(),
                },
            ),
        ];
        for (key, want) in cases {
            assert_eq!(
                keys.parse(&key),
                Some(want),
                "{}",
                String::from_utf8_lossy(&key)
            );
        }
        assert_eq!(
            String::from_utf8(keys.maintenance("db", "a/b")).unwrap(),
            "/failoverd/maintenance/db/a/b"
        );
        assert_eq!(
            keys.parse(b"/failoverd/maintenance/db/a/b"),
            Some(Key::Maintenance {
                service: "db".into(),
                backend: "a/b".into()
            })
        );
    }

    #[test]
    fn foreign_keys_are_ignored() {
        let keys = Keys::new("/failoverd");
        for key in [
            &b"/failoverd2/decider"[..],
            b"/failoverd/members/",
            b"/failoverd/members/a/b",
            b"/failoverd/state/",
            b"/failoverd/maintenance/db",
            b"/failoverd/maintenance/db/",
            b"/failoverd/other/x",
            b"/failoverd/decider/x",
            b"/failoverd/\xff",
        ] {
            assert_eq!(keys.parse(key), None, "{}", String::from_utf8_lossy(key));
        }
    }
}

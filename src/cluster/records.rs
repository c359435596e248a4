//! The JSON values stored under the cluster's keys (see `keys.rs`): a
//! member's record and a service's agreed state. Readers ignore unknown
//! fields, so a newer failoverd may add some. Encoding and decoding only.
//!
//! ```json
//! P/members/px1  {"name":"px1","services":{"db":{"backends":{"primary":true,"standby":null},"acked":7}}}
//! P/state/db     {"generation":8,"active":"standby","target":null,"from":"primary",
//!                 "reason":"health_check","chosen":true,"decider":"px2"}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::SwitchReason;

/// `P/members/<name>`: what one member sees and has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberRecord {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub services: BTreeMap<String, MemberService>,
}

/// One service in a member record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberService {
    /// Backend name -> up (`true`), down (`false`), no opinion (`null`).
    #[serde(default)]
    pub backends: BTreeMap<String, Option<bool>>,
    /// The generation of this service's agreed state the member has
    /// applied last (0: none yet).
    #[serde(default)]
    pub acked: u64,
}

/// `P/state/<service>`: the agreed state.
///
/// `active: null` with `target` set is the first step of a switch ("no
/// backend" while the members drain `from`); `active: null` without a
/// target means no backend is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StateRecord {
    pub generation: u64,
    #[serde(default)]
    pub active: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    /// The backend the switch in progress (or the last one) left.
    #[serde(default)]
    pub from: Option<String>,
    /// Why that switch began (`health_check`, `disabled`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// A backend has been active at least once: from now on every change
    /// of `active` is a switch (the first choice is not).
    #[serde(default)]
    pub chosen: bool,
    /// The member that wrote this state.
    #[serde(default)]
    pub decider: String,
}

impl StateRecord {
    /// The first step of a switch: no backend while the members drain.
    pub fn is_draining(&self) -> bool {
        self.active.is_none() && self.target.is_some()
    }

    /// The recorded reason; `health_check` when missing or unknown.
    pub fn switch_reason(&self) -> SwitchReason {
        self.reason
            .as_deref()
            .and_then(parse_reason)
            .unwrap_or(SwitchReason::HealthCheck)
    }
}

/// A reason as SPEC.md names it.
pub(super) fn parse_reason(name: &str) -> Option<SwitchReason> {
    [
        SwitchReason::HealthCheck,
        SwitchReason::Passive,
        SwitchReason::Failback,
        SwitchReason::Disabled,
        SwitchReason::Reload,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// JSON bytes of a record (serialising these types cannot fail).
pub(super) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// A record from JSON bytes; `None` when unreadable.
pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_documented_json() {
        let member = MemberRecord {
            name: "px1".into(),
            services: BTreeMap::from([(
                "db".into(),
                MemberService {
                    backends: BTreeMap::from([
                        ("primary".into(), Some(true)),
                        ("standby".into(), None),
                    ]),
                    acked: 7,
                },
            )]),
        };
        assert_eq!(
            String::from_utf8(encode(&member)).unwrap(),
            r#"{"name":"px1","services":{"db":{"backends":{"primary":true,"standby":null},"acked":7}}}"#
        );
        let state = StateRecord {
            generation: 8,
            active: Some("standby".into()),
            target: None,
            from: Some("primary".into()),
            reason: Some("health_check".into()),
            chosen: true,
            decider: "px2".into(),
        };
        assert_eq!(
            String::from_utf8(encode(&state)).unwrap(),
            r#"{"generation":8,"active":"standby","target":null,"from":"primary","reason":"health_check","chosen":true,"decider":"px2"}"#
        );
        assert_eq!(decode::<StateRecord>(&encode(&state)), Some(state));
        assert_eq!(decode::<MemberRecord>(&encode(&member)), Some(member));
    }

    #[test]
    fn readers_accept_unknown_and_missing_fields_but_not_garbage() {
        let state: StateRecord = decode(br#"{"generation":3,"new_field":1}"#).unwrap();
        assert_eq!(
            (state.generation, &state.active, state.chosen),
            (3, &None, false)
        );
        assert_eq!(state.switch_reason(), SwitchReason::HealthCheck);
        assert_eq!(decode::<StateRecord>(b"{}"), None, "generation is required");
        assert_eq!(decode::<StateRecord>(b"not json"), None);
        let member: MemberRecord = decode(br#"{"services":{"db":{}}}"#).unwrap();
        assert_eq!(member.services["db"].acked, 0);
    }

    #[test]
    fn every_reason_parses_back() {
        for name in ["health_check", "passive", "failback", "disabled", "reload"] {
            assert_eq!(parse_reason(name).map(|r| r.as_str()), Some(name));
        }
        assert_eq!(parse_reason("other"), None);
    }
}

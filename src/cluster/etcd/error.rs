//! What can go wrong talking to etcd, worded for the operator: which
//! endpoint, which call, what etcd said, and what to do about it.

use std::fmt;
use std::time::Duration;

/// gRPC status code etcd uses for "try another member" (no leader, too
/// many requests, request timed out, ...).
pub(super) const GRPC_UNAVAILABLE: i32 = 14;

/// gRPC status code etcd returns for a missing lease.
const GRPC_NOT_FOUND: i32 = 5;

/// An error from the etcd client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoints, or one that is not `http://host:port`/`https://host:port`.
    InvalidEndpoint { endpoint: String, reason: String },
    /// TLS could not be set up for `https://` endpoints.
    Tls { reason: String },
    /// Every endpoint was tried and none answered (refused, timed out,
    /// no leader): `attempts` holds each endpoint and why it failed.
    Unreachable {
        op: &'static str,
        attempts: Vec<(String, String)>,
    },
    /// A write went out to `endpoint` but no answer came back (timeout or
    /// a broken connection): it may or may not have been applied, so it is
    /// not sent again elsewhere. Read the state again before retrying.
    Uncertain {
        op: &'static str,
        endpoint: String,
        reason: String,
    },
    /// etcd answered with an error (`code` is the gRPC status code).
    Status {
        op: &'static str,
        endpoint: String,
        http: u16,
        code: i32,
        message: String,
    },
    /// The answer was not what etcd's gateway sends.
    BadResponse {
        op: &'static str,
        endpoint: String,
        reason: String,
    },
    /// A watch asked for history that etcd has compacted away.
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    /// etcd cancelled a watch for another reason than compaction.
    WatchCanceled { endpoint: String, reason: String },
}

impl EtcdError {
    /// etcd does not know the lease (it expired, or was revoked): grant a
    /// new one.
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, EtcdError::Status { code, message, .. }
            if *code == GRPC_NOT_FOUND && message.contains("lease not found"))
    }
}

/// "no answer within 1s", for the reasons in [`EtcdError`].
pub(super) fn no_answer(after: Duration) -> String {
    format!("no answer within {after:?}")
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::InvalidEndpoint { endpoint, reason } => write!(
                f,
                "etcd endpoint {endpoint:?}: {reason}: give URLs like http://10.0.0.21:2379 or https://etcd1:2379"
            ),
            EtcdError::Tls { reason } => write!(
                f,
                "cannot set up TLS for the https etcd endpoints: {reason}: install the CA certificates the etcd servers are signed with into the system store"
            ),
            EtcdError::Unreachable { op, attempts } => {
                write!(f, "etcd {op}: no endpoint answered (")?;
                for (i, (endpoint, reason)) in attempts.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{endpoint}: {reason}")?;
                }
                write!(
                    f,
                    "): check that etcd is running, has a leader, and is reachable at these URLs"
                )
            }
            EtcdError::Uncertain {
                op,
                endpoint,
                reason,
            } => write!(
                f,
                "etcd {op} sent to {endpoint}: {reason}: it may or may not have been applied; read the keys again before retrying"
            ),
            EtcdError::Status {
                op,
                endpoint,
                http,
                code,
                message,
            } => {
                write!(
                    f,
                    "etcd {op} refused by {endpoint}: {message} (HTTP {http}, gRPC code {code})"
                )
            }
            EtcdError::BadResponse {
                op,
                endpoint,
                reason,
            } => write!(
                f,
                "etcd {op} from {endpoint}: unexpected answer: {reason}: is this an etcd v3.4+ client URL?"
            ),
            EtcdError::Compacted {
                requested,
                compact_revision,
            } => write!(
                f,
                "etcd watch from revision {requested}: etcd has compacted its history up to revision {compact_revision}: read the keys again and watch from the revision that read returns"
            ),
            EtcdError::WatchCanceled { endpoint, reason } => {
                write!(f, "etcd watch canceled by {endpoint}: {reason}")
            }
        }
    }
}

impl std::error::Error for EtcdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_lists_every_endpoint_and_the_fix() {
        let e = EtcdError::Unreachable {
            op: "range",
            attempts: vec![
                ("http://127.0.0.1:1".into(), "connection refused".into()),
                (
                    "http://127.0.0.1:2".into(),
                    no_answer(Duration::from_secs(1)),
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "etcd range: no endpoint answered (http://127.0.0.1:1: connection refused; \
             http://127.0.0.1:2: no answer within 1s): check that etcd is running, has a leader, \
             and is reachable at these URLs"
        );
    }

    #[test]
    fn lease_not_found_is_recognised() {
        let e = EtcdError::Status {
            op: "put",
            endpoint: "http://e:2379".into(),
            http: 404,
            code: 5,
            message: "etcdserver: requested lease not found".into(),
        };
        assert!(e.is_lease_not_found());
        assert!(
            e.to_string()
                .contains("refused by http://e:2379: etcdserver: requested lease not found")
        );
    }
}

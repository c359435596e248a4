//! A small etcd v3 client over etcd's JSON gateway (`/v3/...` over HTTP/1.1,
//! as Patroni does), so failoverd needs no protobuf compiler. It offers
//! what the cluster needs: leases, key reads and writes, transactions and
//! prefix watches, with failover over several endpoints and a time bound
//! on every request. It knows nothing of failoverd's keys or decisions.
//!
//! Every request is bounded by the client's request timeout per endpoint
//! tried; a call tries each endpoint at most once, starting with the one
//! that last worked. Reads and lease calls move on after any failure;
//! writes (`put`, `delete`, `txn`) move on only when etcd certainly did not
//! receive them, and otherwise fail with [`EtcdError::Uncertain`]. Requests
//! carry etcd's "require leader" flag, so a member cut off from its
//! cluster refuses them instead of answering from stale data.

mod error;
mod transport;
mod watch;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use error::EtcdError;
pub use watch::Watch;

use transport::{Retry, Transport};

/// How long a watch may stay silent before it is re-created (see [`Watch`]).
pub const DEFAULT_WATCH_IDLE: Duration = Duration::from_secs(3);

/// An etcd lease ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    /// Hexadecimal, as `etcdctl` prints lease IDs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    /// The TTL etcd granted: whole seconds, and never below etcd's minimum
    /// (1.5 election timeouts), so it can exceed the one asked for.
    pub ttl: Duration,
}

/// A key and its value with etcd's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0: it does not exist).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Writes since the key was created (1 after the create).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Whether an event wrote or deleted its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a [`Watch`]. `kv.mod_revision` is the revision of
/// the change; a delete carries only `key` and `mod_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// The comparison of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a [`Compare`] looks at, with the value to compare to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// 0 compares to "the key does not exist".
    CreateRevision(i64),
    ModRevision(i64),
    Version(i64),
    Value(Vec<u8>),
    /// `LeaseId(0)` compares to "no lease".
    Lease(LeaseId),
}

/// One condition of a [`Txn`]: `key`'s `target` compared with `op`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

impl Compare {
    /// `create_revision(key, Equal, 0)`: the key does not exist.
    pub fn create_revision(key: &[u8], op: CompareOp, revision: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::CreateRevision(revision),
            op,
        }
    }

    pub fn mod_revision(key: &[u8], op: CompareOp, revision: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::ModRevision(revision),
            op,
        }
    }

    pub fn version(key: &[u8], op: CompareOp, version: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::Version(version),
            op,
        }
    }

    pub fn value(key: &[u8], op: CompareOp, value: &[u8]) -> Compare {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::Value(value.to_vec()),
            op,
        }
    }

    /// `lease(key, Equal, mine)`: the key exists and is held under `mine`.
    pub fn lease(key: &[u8], op: CompareOp, lease: LeaseId) -> Compare {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::Lease(lease),
            op,
        }
    }
}

/// One operation in a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    GetPrefix {
        prefix: Vec<u8>,
    },
}

impl Op {
    pub fn put(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Op {
        Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        }
    }

    pub fn delete(key: &[u8]) -> Op {
        Op::Delete { key: key.to_vec() }
    }

    pub fn get(key: &[u8]) -> Op {
        Op::Get { key: key.to_vec() }
    }

    pub fn get_prefix(prefix: &[u8]) -> Op {
        Op::GetPrefix {
            prefix: prefix.to_vec(),
        }
    }
}

/// A transaction: if every `when` compare holds, run `and_then`, else
/// `or_else`, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }
}

/// The answer to one [`Op`], in the order of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put,
    Delete {
        deleted: i64,
    },
    /// The keys read, in key order.
    Range(Vec<KeyValue>),
}

/// What a [`Txn`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// The compares held and `and_then` ran (else `or_else` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    pub responses: Vec<OpResponse>,
}

/// An etcd v3 client; cheap to clone (clones share the endpoint state).
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    watch_idle: Duration,
}

impl Client {
    /// A client for `endpoints` (`http://host:port` or `https://host:port`;
    /// https trusts the system's CA store). Connects lazily: this fails
    /// only on a bad URL or when TLS cannot be set up.
    pub fn new(endpoints: &[String], request_timeout: Duration) -> Result<Client, EtcdError> {
        let transport = Arc::new(Transport::new(endpoints, request_timeout)?);
        Ok(Client {
            transport,
            watch_idle: DEFAULT_WATCH_IDLE,
        })
    }

    /// Re-create watches that stayed silent this long (default
    /// [`DEFAULT_WATCH_IDLE`]); bounds how long a watch on a silently dead
    /// server goes unnoticed.
    pub fn with_watch_idle(mut self, idle: Duration) -> Client {
        self.watch_idle = idle;
        self
    }

    /// The endpoints, normalised to `scheme://host:port`.
    pub fn endpoints(&self) -> &[String] {
        self.transport.endpoints()
    }

    /// Grants a lease of `ttl`, rounded up to whole seconds (at least 1).
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
        // Repeating a grant is harmless: an extra lease just expires.
        let body = json!({ "TTL": secs.to_string() });
        let r: wire::LeaseGrantResponse = self
            .transport
            .call("lease grant", "/v3/lease/grant", &body, Retry::Always)
            .await?;
        if !r.error.is_empty() || r.id == 0 {
            let reason = if r.error.is_empty() {
                "no lease ID in the answer".to_string()
            } else {
                r.error
            };
            let endpoint = self.transport.endpoints()[self.transport.current()].clone();
            return Err(EtcdError::BadResponse {
                op: "lease grant",
                endpoint,
                reason,
            });
        }
        Ok(Lease {
            id: LeaseId(r.id),
            ttl: Duration::from_secs(r.ttl.max(0).unsigned_abs()),
        })
    }

    /// Renews `lease`: `Some(ttl)` with its renewed TTL, `None` when etcd
    /// no longer has it (expired or revoked: grant a new one).
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, EtcdError> {
        let body = json!({ "ID": lease.0.to_string() });
        let r: wire::StreamLine<wire::LeaseKeepAliveResponse> = self
            .transport
            .call(
                "lease keepalive",
                "/v3/lease/keepalive",
                &body,
                Retry::Always,
            )
            .await?;
        let ttl = r.result.map(|r| r.ttl).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    /// Revokes `lease`, deleting its keys at once; a lease etcd no longer
    /// has counts as revoked.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let body = json!({ "ID": lease.0.to_string() });
        match self
            .transport
            .call::<wire::HeaderResponse>("lease revoke", "/v3/lease/revoke", &body, Retry::Always)
            .await
        {
            Err(e) if e.is_lease_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Writes `key`, attached to `lease` if given; returns the revision.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<i64, EtcdError> {
        let body = wire::put_request(key, value, lease);
        let r: wire::HeaderResponse = self
            .transport
            .call("put", "/v3/kv/put", &body, Retry::IfUnsent)
            .await?;
        Ok(r.header.revision)
    }

    /// Reads `key`; also returns the store's revision at the read.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let body = wire::range_request(key, None);
        let r: wire::RangeResponse = self
            .transport
            .call("range", "/v3/kv/range", &body, Retry::Always)
            .await?;
        let revision = r.header.revision;
        Ok((r.kvs().into_iter().next(), revision))
    }

    /// Reads every key under `prefix`, in key order; also returns the
    /// store's revision at the read (watch from it + 1 to miss nothing).
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let (key, end) = wire::prefix_range(prefix);
        let body = wire::range_request(&key, Some(&end));
        let r: wire::RangeResponse = self
            .transport
            .call("range", "/v3/kv/range", &body, Retry::Always)
            .await?;
        let revision = r.header.revision;
        Ok((r.kvs(), revision))
    }

    /// Deletes `key`; `true` if it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        let body = wire::delete_request(key, None);
        let r: wire::DeleteRangeResponse = self
            .transport
            .call("delete", "/v3/kv/deleterange", &body, Retry::IfUnsent)
            .await?;
        Ok(r.deleted > 0)
    }

    /// Runs `txn` atomically.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        let body = json!({
            "compare": txn.compare.iter().map(wire::compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(wire::op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(wire::op_json).collect::<Vec<_>>(),
        });
        let r: wire::TxnResponse = self
            .transport
            .call("txn", "/v3/kv/txn", &body, Retry::IfUnsent)
            .await?;
        let (succeeded, revision) = (r.succeeded, r.header.revision);
        let responses = r.responses().map_err(|reason| EtcdError::BadResponse {
            op: "txn",
            endpoint: self.transport.endpoints()[self.transport.current()].clone(),
            reason,
        })?;
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }

    /// Watches every key under `prefix` from `start_revision` (events of
    /// that revision included). On return etcd has confirmed the watch.
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        Watch::start(
            self.transport.clone(),
            wire::prefix_range(prefix),
            start_revision,
            self.watch_idle,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_builder_keeps_the_order_of_its_parts() {
        let txn = Txn::new()
            .when([Compare::create_revision(b"/d", CompareOp::Equal, 0)])
            .and_then([Op::put(b"/d", b"px1", Some(LeaseId(1))), Op::get(b"/d")])
            .or_else([Op::get(b"/d")]);
        assert_eq!(txn.compare.len(), 1);
        assert_eq!(
            txn.success,
            vec![Op::put(b"/d", b"px1", Some(LeaseId(1))), Op::get(b"/d")]
        );
        assert_eq!(txn.failure, vec![Op::get(b"/d")]);
    }

    #[test]
    fn lease_ids_print_in_hex_like_etcdctl() {
        assert_eq!(LeaseId(0x390d7c9e0b9a8206).to_string(), "390d7c9e0b9a8206");
    }
}

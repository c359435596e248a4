//! The JSON shapes of etcd's v3 gateway (grpc-gateway over the gRPC API):
//! request bodies and the responses they bring back, decoded into the
//! public types of [`super`]. It speaks JSON only and must not do I/O.
//!
//! Proto3 JSON omits every default (0, false, "", empty list), writes int64
//! as a string (`"revision":"12"`) and bytes as base64; everything here
//! treats a missing field as its zero and accepts int64 as string or number.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResponse,
};

/// Base64 as etcd wants bytes in JSON.
pub(super) fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The end of the key range that holds exactly the keys starting with
/// `prefix` (etcd's `GetPrefixRangeEnd`); `[0]` means "to the end".
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `key` and `range_end` of a range over every key under `prefix`.
pub(super) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        // An empty key is invalid; "\0" to "\0" is etcd's "every key".
        (vec![0], vec![0])
    } else {
        (prefix.to_vec(), prefix_end(prefix))
    }
}

/// A `RangeRequest` for one key, or for a range when `range_end` is set.
pub(super) fn range_request(key: &[u8], range_end: Option<&[u8]>) -> Value {
    let mut req = json!({ "key": b64(key) });
    if let Some(end) = range_end {
        req["range_end"] = json!(b64(end));
    }
    req
}

pub(super) fn put_request(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut req = json!({ "key": b64(key), "value": b64(value) });
    if let Some(lease) = lease {
        req["lease"] = json!(lease.0.to_string());
    }
    req
}

pub(super) fn delete_request(key: &[u8], range_end: Option<&[u8]>) -> Value {
    range_request(key, range_end)
}

pub(super) fn compare_json(c: &Compare) -> Value {
    let result = match c.op {
        CompareOp::Equal => "EQUAL",
        CompareOp::NotEqual => "NOT_EQUAL",
        CompareOp::Less => "LESS",
        CompareOp::Greater => "GREATER",
    };
    let mut out = json!({ "key": b64(&c.key), "result": result });
    let (target, field, value) = match &c.target {
        CompareTarget::CreateRevision(r) => ("CREATE", "create_revision", json!(r.to_string())),
        CompareTarget::ModRevision(r) => ("MOD", "mod_revision", json!(r.to_string())),
        CompareTarget::Version(v) => ("VERSION", "version", json!(v.to_string())),
        CompareTarget::Value(v) => ("VALUE", "value", json!(b64(v))),
        CompareTarget::Lease(l) => ("LEASE", "lease", json!(l.0.to_string())),
    };
    out["target"] = json!(target);
    out[field] = value;
    out
}

pub(super) fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": put_request(key, value, *lease) }),
        Op::Delete { key } => json!({ "request_delete_range": delete_request(key, None) }),
        Op::Get { key } => json!({ "request_range": range_request(key, None) }),
        Op::GetPrefix { prefix } => {
            let (key, end) = prefix_range(prefix);
            json!({ "request_range": range_request(&key, Some(&end)) })
        }
    }
}

/// Decodes a whole response body; the error names what did not fit.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("{e} in {shown:?}")
    })
}

fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Str(String),
        Num(i64),
    }
    match Int::deserialize(d)? {
        Int::Num(n) => Ok(n),
        Int::Str(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("int64 {s:?}"))),
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    BASE64
        .decode(s.as_bytes())
        .map_err(|e| de::Error::custom(format!("base64: {e}")))
}

/// `mvccpb.Event.EventType`: a name, or its number, or absent for PUT.
fn event_kind<'de, D: Deserializer<'de>>(d: D) -> Result<EventKind, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == "PUT" => Ok(EventKind::Put),
        Value::String(s) if s == "DELETE" => Ok(EventKind::Delete),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(EventKind::Put),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(EventKind::Delete),
        other => Err(de::Error::custom(format!("event type {other}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Header {
    #[serde(deserialize_with = "int64")]
    pub revision: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawKeyValue {
    #[serde(deserialize_with = "base64_bytes")]
    key: Vec<u8>,
    #[serde(deserialize_with = "base64_bytes")]
    value: Vec<u8>,
    #[serde(deserialize_with = "int64")]
    create_revision: i64,
    #[serde(deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(deserialize_with = "int64")]
    version: i64,
    #[serde(deserialize_with = "int64")]
    lease: i64,
}

impl From<RawKeyValue> for KeyValue {
    fn from(kv: RawKeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RangeResponse {
    pub header: Header,
    kvs: Vec<RawKeyValue>,
}

impl RangeResponse {
    pub fn kvs(self) -> Vec<KeyValue> {
        self.kvs.into_iter().map(KeyValue::from).collect()
    }
}

/// Put, and anything else whose answer is only the header.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct HeaderResponse {
    pub header: Header,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DeleteRangeResponse {
    pub header: Header,
    #[serde(deserialize_with = "int64")]
    pub deleted: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct TxnResponse {
    pub header: Header,
    pub succeeded: bool,
    responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResponseOp {
    response_range: Option<RangeResponse>,
    response_put: Option<HeaderResponse>,
    response_delete_range: Option<DeleteRangeResponse>,
}

impl TxnResponse {
    pub fn responses(self) -> Result<Vec<OpResponse>, String> {
        self.responses
            .into_iter()
            .map(|r| match r {
                ResponseOp {
                    response_range: Some(r),
                    ..
                } => Ok(OpResponse::Range(r.kvs())),
                ResponseOp {
                    response_put: Some(_),
                    ..
                } => Ok(OpResponse::Put),
                ResponseOp {
                    response_delete_range: Some(d),
                    ..
                } => Ok(OpResponse::Delete { deleted: d.deleted }),
                _ => Err("txn response op of no known kind".to_string()),
            })
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct LeaseGrantResponse {
    #[serde(rename = "ID", deserialize_with = "int64")]
    pub id: i64,
    #[serde(rename = "TTL", deserialize_with = "int64")]
    pub ttl: i64,
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct LeaseKeepAliveResponse {
    #[serde(rename = "TTL", deserialize_with = "int64")]
    pub ttl: i64,
}

/// A unary call's error body: `{"error":"..","message":"..","code":5}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ErrorBody {
    pub message: String,
    pub error: String,
    pub code: i32,
}

impl ErrorBody {
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

/// An error inside a stream: `{"error":{"grpc_code":14,"message":".."}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct StreamError {
    pub grpc_code: i32,
    pub http_code: u16,
    pub message: String,
}

/// One line of a streaming call (watch, lease keepalive).
#[derive(Debug, Deserialize)]
pub(super) struct StreamLine<T> {
    #[serde(default)]
    pub result: Option<T>,
    #[serde(default)]
    pub error: Option<StreamError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WatchResponse {
    pub header: Header,
    pub created: bool,
    pub canceled: bool,
    #[serde(deserialize_with = "int64")]
    pub compact_revision: i64,
    pub cancel_reason: String,
    events: Vec<RawEvent>,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default = "put_kind", deserialize_with = "event_kind")]
    kind: EventKind,
    #[serde(default)]
    kv: RawKeyValue,
}

fn put_kind() -> EventKind {
    EventKind::Put
}

impl WatchResponse {
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|e| Event {
                kind: e.kind,
                kv: e.kv.into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies below are as etcd 3.4.23 sent them.

    #[test]
    fn range_response_decodes_strings_base64_and_missing_fields() {
        let body = br#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"4","raft_term":"2"},"kvs":[{"key":"L2ZvL2E=","create_revision":"2","mod_revision":"3","version":"2","value":"aGVsbG8="},{"key":"L2ZvL2I=","create_revision":"4","mod_revision":"4","version":"1","value":"aGVsbG8=","lease":"4111120374257084430"}],"count":"2"}"#;
        let r: RangeResponse = parse(body).unwrap();
        assert_eq!(r.header.revision, 4);
        let kvs = r.kvs();
        assert_eq!(kvs[0].key, b"/fo/a");
        assert_eq!(kvs[0].value, b"hello");
        assert_eq!(
            (kvs[0].create_revision, kvs[0].mod_revision, kvs[0].version),
            (2, 3, 2)
        );
        assert_eq!(kvs[0].lease, None);
        assert_eq!(kvs[1].lease, Some(LeaseId(4111120374257084430)));
    }

    #[test]
    fn empty_range_has_no_kvs_field() {
        let body =
            br#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"}}"#;
        let r: RangeResponse = parse(body).unwrap();
        assert_eq!(r.header.revision, 3);
        assert!(r.kvs().is_empty());
    }

    #[test]
    fn an_empty_value_is_omitted_and_decodes_empty() {
        let body = br#"{"header":{"revision":"9"},"kvs":[{"key":"YQ==","create_revision":"9","mod_revision":"9","version":"1"}]}"#;
        let kvs = parse::<RangeResponse>(body).unwrap().kvs();
        assert_eq!(kvs[0].value, b"");
    }

    #[test]
    fn failed_txn_omits_succeeded_and_carries_the_failure_reads() {
        let body = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"4"},"kvs":[{"key":"L2ZvL2I=","create_revision":"4","mod_revision":"4","version":"1","value":"aGVsbG8=","lease":"4111120374257084430"}],"count":"1"}}]}"#;
        let r: TxnResponse = parse(body).unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.header.revision, 4);
        match &r.responses().unwrap()[..] {
            [OpResponse::Range(kvs)] => assert_eq!(kvs[0].key, b"/fo/b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn succeeded_txn_lists_put_and_delete_answers() {
        let body = br#"{"header":{"revision":"5"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"5"}}},{"response_delete_range":{"header":{"revision":"5"},"deleted":"1"}}]}"#;
        let r: TxnResponse = parse(body).unwrap();
        assert!(r.succeeded);
        assert_eq!(
            r.responses().unwrap(),
            vec![OpResponse::Put, OpResponse::Delete { deleted: 1 }]
        );
    }

    #[test]
    fn txn_put_answer_with_an_empty_object_still_counts_as_put() {
        // A put's answer may be `{}` when its header is left out.
        let body = br#"{"succeeded":true,"responses":[{"response_put":{}}]}"#;
        let r: TxnResponse = parse(body).unwrap();
        assert_eq!(r.responses().unwrap(), vec![OpResponse::Put]);
    }

    #[test]
    fn lease_grant_and_keepalive_shapes() {
        let grant = br#"{"header":{"revision":"1"},"ID":"4111120374257084422","TTL":"5"}"#;
        let g: LeaseGrantResponse = parse(grant).unwrap();
        assert_eq!(
            (g.id, g.ttl, g.error.as_str()),
            (4111120374257084422, 5, "")
        );

        let alive = b"{\"result\":{\"header\":{\"revision\":\"3\"},\"ID\":\"4111120374257084430\",\"TTL\":\"5\"}}\n";
        let a: StreamLine<LeaseKeepAliveResponse> = parse(alive).unwrap();
        assert_eq!(a.result.unwrap().ttl, 5);

        // An expired or unknown lease: no TTL at all.
        let gone = br#"{"result":{"header":{"revision":"3"},"ID":"12345"}}"#;
        let g: StreamLine<LeaseKeepAliveResponse> = parse(gone).unwrap();
        assert_eq!(g.result.unwrap().ttl, 0);
    }

    #[test]
    fn error_bodies_unary_and_in_a_stream() {
        let e: ErrorBody = parse(
            br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        )
        .unwrap();
        assert_eq!(
            (e.text(), e.code),
            ("etcdserver: requested lease not found", 5)
        );

        let s: StreamLine<WatchResponse> = parse(
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        )
        .unwrap();
        let err = s.error.unwrap();
        assert_eq!(
            (err.grpc_code, err.http_code, err.message.as_str()),
            (14, 503, "etcdserver: no leader")
        );
        assert!(s.result.is_none());
    }

    #[test]
    fn watch_lines_created_events_and_compaction() {
        let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"6","raft_term":"2"},"created":true}}"#;
        let c = parse::<StreamLine<WatchResponse>>(created)
            .unwrap()
            .result
            .unwrap();
        assert!(c.created && !c.canceled);

        let events = br#"{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"L2ZvL2M=","create_revision":"5","mod_revision":"5","version":"1","value":"aGVsbG8="}},{"type":"DELETE","kv":{"key":"L2ZvL2E=","mod_revision":"5"}},{"type":1,"kv":{"key":"L2ZvL2I=","mod_revision":"6"}}]}}"#;
        let mut w = parse::<StreamLine<WatchResponse>>(events)
            .unwrap()
            .result
            .unwrap();
        let ev = w.take_events();
        assert_eq!(
            ev.iter()
                .map(|e| (e.kind, e.kv.key.as_slice(), e.kv.mod_revision))
                .collect::<Vec<_>>(),
            vec![
                (EventKind::Put, &b"/fo/c"[..], 5),
                (EventKind::Delete, &b"/fo/a"[..], 5),
                (EventKind::Delete, &b"/fo/b"[..], 6),
            ]
        );

        let compacted = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"7"}}"#;
        let w = parse::<StreamLine<WatchResponse>>(compacted)
            .unwrap()
            .result
            .unwrap();
        assert!(w.canceled);
        assert_eq!((w.compact_revision, w.header.revision), (7, 0));
    }

    #[test]
    fn int64_accepts_numbers_and_rejects_garbage() {
        let h: Header = parse(br#"{"revision":12}"#).unwrap();
        assert_eq!(h.revision, 12);
        let err = parse::<Header>(br#"{"revision":"x1"}"#).unwrap_err();
        assert!(err.contains("int64"), "{err}");
    }

    #[test]
    fn bad_base64_is_an_error_not_garbage() {
        let err = parse::<RangeResponse>(br#"{"kvs":[{"key":"%%%"}]}"#).unwrap_err();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn requests_use_etcd_field_names() {
        let c = compare_json(&Compare::create_revision(b"/d", CompareOp::Equal, 0));
        assert_eq!(
            c,
            json!({"key": "L2Q=", "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
        );
        let c = compare_json(&Compare::lease(b"/d", CompareOp::NotEqual, LeaseId(7)));
        assert_eq!(c["target"], "LEASE");
        assert_eq!(c["result"], "NOT_EQUAL");
        assert_eq!(c["lease"], "7");
        let put = op_json(&Op::put(b"/k", b"v", Some(LeaseId(9))));
        assert_eq!(
            put,
            json!({"request_put": {"key": "L2s=", "value": "dg==", "lease": "9"}})
        );
        let get = op_json(&Op::get_prefix(b"/p/"));
        assert_eq!(get["request_range"]["range_end"], b64(b"/p0"));
    }
}

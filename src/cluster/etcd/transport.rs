//! HTTP to etcd's gateway: one POST to one endpoint, bounded in time, and
//! the failover over the endpoint list. It knows HTTP status codes and
//! gRPC error codes, not what the calls mean.
//!
//! Failover: a call starts at the endpoint that last worked and moves on
//! when the request certainly did not reach etcd (connect failed, or etcd
//! said "no leader"). A lost answer (timeout, broken connection) moves on
//! too for calls that are safe to repeat; a write is not repeated, since it
//! may have been applied (a create-if-absent election would then "lose" to
//! its own first attempt), and the caller gets [`EtcdError::Uncertain`].

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::error::{EtcdError, GRPC_UNAVAILABLE, no_answer};
use super::wire::{self, ErrorBody, StreamLine};

/// Largest response body read into memory.
pub(super) const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Forwarded by the gateway as gRPC metadata `hasleader=true`: a member
/// that has lost its leader (the minority side of a partition) then
/// refuses requests and ends watches instead of serving stale data.
const REQUIRE_LEADER_HEADER: &str = "grpc-metadata-hasleader";

/// etcd messages (gRPC Unavailable) for requests it did not take on.
const NEVER_APPLIED: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: not capable",
];

/// gRPC DeadlineExceeded: like Unavailable for failover.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;

/// Whether a call may be sent again to another endpoint after its answer
/// was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads and idempotent calls.
    Always,
    /// Writes: only when the request certainly did not reach etcd.
    IfUnsent,
}

/// Why one attempt at one endpoint failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The request did not reach etcd, or etcd refused to take it on.
    Unsent(String),
    /// The request may have reached etcd; no answer came back.
    Lost(String),
    /// etcd answered with an error that another endpoint would repeat.
    Refused(EtcdError),
}

type Connector = HttpsConnector<HttpConnector>;

/// The endpoint list, the HTTP client and which endpoint worked last.
pub(super) struct Transport {
    endpoints: Vec<String>,
    http: HttpClient<Connector, Full<Bytes>>,
    current: AtomicUsize,
    timeout: Duration,
}

impl Transport {
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Transport, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        let endpoints = endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        // Half the budget for the TCP connect, so that a black-holed
        // endpoint fails as "not sent" and the next one is still tried.
        let connector = connector(&endpoints, timeout / 2)?;
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Transport {
            endpoints,
            http,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The endpoint to try first.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub fn worked(&self, idx: usize) {
        self.current.store(idx, Ordering::Relaxed);
    }

    /// `idx` failed: the next call starts at the one after it, unless
    /// another call has moved on already.
    pub fn failed(&self, idx: usize) {
        let next = (idx + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One unary call, with failover; decodes the answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        retry: Retry,
    ) -> Result<T, EtcdError> {
        let body = Bytes::from(body.to_string());
        let n = self.endpoints.len();
        let start = self.current();
        let mut attempts = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let reason = match self.unary(op, idx, path, body.clone(), retry).await {
                Ok(answer) => {
                    self.worked(idx);
                    return wire::parse(&answer).map_err(|reason| EtcdError::BadResponse {
                        op,
                        endpoint: endpoint.clone(),
                        reason,
                    });
                }
                Err(Failure::Refused(e)) => {
                    self.worked(idx);
                    return Err(e);
                }
                Err(Failure::Lost(reason)) if retry == Retry::IfUnsent => {
                    self.failed(idx);
                    return Err(EtcdError::Uncertain {
                        op,
                        endpoint: endpoint.clone(),
                        reason,
                    });
                }
                Err(Failure::Lost(reason) | Failure::Unsent(reason)) => reason,
            };
            debug!(op, endpoint, error = %reason, "etcd endpoint failed, trying the next");
            attempts.push((endpoint.clone(), reason));
        }
        Err(EtcdError::Unreachable { op, attempts })
    }

    /// One attempt at endpoint `idx`: the whole answer within the timeout.
    async fn unary(
        &self,
        op: &'static str,
        idx: usize,
        path: &str,
        body: Bytes,
        retry: Retry,
    ) -> Result<Bytes, Failure> {
        let deadline = Instant::now() + self.timeout;
        let lost = || Failure::Lost(no_answer(self.timeout));
        let resp = timeout_at(deadline, self.send(idx, path, body))
            .await
            .map_err(|_| lost())??;
        let status = resp.status();
        let answer = timeout_at(deadline, read_body(resp.into_body()))
            .await
            .map_err(|_| lost())??;
        if status.is_success() {
            return match stream_error(&answer) {
                Some((code, http, message)) => {
                    Err(self.classify(op, idx, http, code, message, retry))
                }
                None => Ok(answer),
            };
        }
        Err(self.refusal(op, idx, status, &answer, retry))
    }

    /// A non-2xx answer: etcd's error body (unary or stream shape), or
    /// the start of whatever else came back.
    pub fn refusal(
        &self,
        op: &'static str,
        idx: usize,
        status: StatusCode,
        answer: &[u8],
        retry: Retry,
    ) -> Failure {
        let (code, message) = match (wire::parse::<ErrorBody>(answer), stream_error(answer)) {
            (_, Some((code, _, message))) => (code, message),
            (Ok(err), None) => (err.code, err.text().to_string()),
            (Err(_), None) => {
                let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
                (0, format!("HTTP {status}: {}", text.trim()))
            }
        };
        let code = match (code, status) {
            (0, StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY) => GRPC_UNAVAILABLE,
            (0, StatusCode::GATEWAY_TIMEOUT) => GRPC_DEADLINE_EXCEEDED,
            (code, _) => code,
        };
        self.classify(op, idx, status.as_u16(), code, message, retry)
    }

    /// An error answer: try elsewhere, give up as uncertain, or report it.
    pub fn classify(
        &self,
        op: &'static str,
        idx: usize,
        http: u16,
        code: i32,
        message: String,
        retry: Retry,
    ) -> Failure {
        let unavailable = code == GRPC_UNAVAILABLE || code == GRPC_DEADLINE_EXCEEDED;
        if unavailable
            && (retry == Retry::Always || NEVER_APPLIED.iter().any(|m| message.contains(m)))
        {
            Failure::Unsent(message)
        } else if unavailable {
            Failure::Lost(message)
        } else {
            Failure::Refused(EtcdError::Status {
                op,
                endpoint: self.endpoints[idx].clone(),
                http,
                code,
                message,
            })
        }
    }

    /// POST `body` to `path` at endpoint `idx`; the caller bounds the time
    /// and reads the body (a stream, for watches).
    pub async fn send(
        &self,
        idx: usize,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, Failure> {
        let uri = format!("{}{path}", self.endpoints[idx]);
        let req = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(REQUIRE_LEADER_HEADER, "true")
            .body(Full::new(body))
            .map_err(|e| Failure::Unsent(e.to_string()))?;
        self.http.request(req).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                Failure::Unsent(reason)
            } else {
                Failure::Lost(reason)
            }
        })
    }
}

/// The whole body, at most [`MAX_RESPONSE_BYTES`].
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(Failure::Lost(format!(
            "reading the answer: {}",
            error_chain(&*e)
        ))),
    }
}

/// A streaming call's error line (`{"error":{"grpc_code":..}}`), which the
/// gateway sends with status 200.
fn stream_error(answer: &[u8]) -> Option<(i32, u16, String)> {
    if !answer.starts_with(b"{\"error\":{") {
        return None;
    }
    let line: StreamLine<IgnoredAny> = wire::parse(answer).ok()?;
    line.error.map(|e| (e.grpc_code, e.http_code, e.message))
}

/// "tcp connect error: Connection refused (os error 111)": the causes
/// without hyper's generic "client error (Connect)" wrapper.
pub(super) fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// `http://host:port` (a trailing `/` is allowed) as scheme://authority.
fn parse_endpoint(endpoint: &str) -> Result<String, EtcdError> {
    let bad = |reason: &str| EtcdError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        Some(_) => return Err(bad("the scheme must be http or https")),
        None => return Err(bad("missing http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
    if authority.port().is_none() {
        return Err(bad("missing port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("a path is not allowed"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// HTTP, plus TLS through rustls with the `ring` provider and the system's
/// trusted CAs when any endpoint is `https://`.
fn connector(endpoints: &[String], connect_timeout: Duration) -> Result<Connector, EtcdError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |e: &dyn std::fmt::Display| EtcdError::Tls {
        reason: e.to_string(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if endpoints.iter().any(|e| e.starts_with("https://")) {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| tls(&e))?
    } else {
        // No https endpoint: TLS is never used, so no CA store is read.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(config)
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("https://etcd1:2379").unwrap(),
            "https://etcd1:2379"
        );
        assert_eq!(
            parse_endpoint("http://[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
        for (bad, why) in [
            ("127.0.0.1:2379", "missing http"),
            ("ftp://etcd1:2379", "scheme"),
            ("http://etcd1", "missing port"),
            ("http://etcd1:2379/v3", "path"),
            ("", "not a URL"),
        ] {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empty_endpoint_list_is_refused() {
        let err = Transport::new(&[], Duration::from_secs(1)).err().unwrap();
        assert!(err.to_string().contains("no endpoint given"), "{err}");
    }

    #[test]
    fn a_lost_write_is_uncertain_unless_etcd_says_it_never_took_it() {
        let t = Transport::new(&["http://127.0.0.1:1".into()], Duration::from_secs(1)).unwrap();
        let c = |code, msg: &str, retry| t.classify("put", 0, 503, code, msg.into(), retry);
        assert!(matches!(
            c(14, "etcdserver: no leader", Retry::IfUnsent),
            Failure::Unsent(_)
        ));
        assert!(matches!(
            c(14, "etcdserver: request timed out", Retry::IfUnsent),
            Failure::Lost(_)
        ));
        assert!(matches!(
            c(14, "etcdserver: request timed out", Retry::Always),
            Failure::Unsent(_)
        ));
        assert!(matches!(
            c(5, "etcdserver: requested lease not found", Retry::Always),
            Failure::Refused(_)
        ));
    }

    #[test]
    fn error_answers_of_every_shape_are_classified() {
        let t = Transport::new(&["http://127.0.0.1:1".into()], Duration::from_secs(1)).unwrap();
        let nested =
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#;
        match t.refusal(
            "watch",
            0,
            StatusCode::SERVICE_UNAVAILABLE,
            nested,
            Retry::IfUnsent,
        ) {
            Failure::Unsent(m) => assert_eq!(m, "etcdserver: no leader"),
            other => panic!("{other:?}"),
        }
        let html = b"<html>bad gateway</html>";
        match t.refusal("put", 0, StatusCode::BAD_GATEWAY, html, Retry::IfUnsent) {
            Failure::Lost(m) => assert_eq!(m, "HTTP 502 Bad Gateway: <html>bad gateway</html>"),
            other => panic!("{other:?}"),
        }
        let flat = br#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
        match t.refusal("range", 0, StatusCode::BAD_REQUEST, flat, Retry::Always) {
            Failure::Refused(EtcdError::Status {
                http: 400,
                code: 11,
                message,
                ..
            }) => {
                assert!(message.contains("compacted"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_errors_in_a_200_answer_are_found() {
        let line = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert_eq!(
            stream_error(line),
            Some((14, 503, "etcdserver: no leader".to_string()))
        );
        assert_eq!(stream_error(br#"{"result":{"TTL":"5"}}"#), None);
    }
}

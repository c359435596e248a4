//! A watch over a key prefix through the gateway's `/v3/watch` stream
//! (newline-separated JSON objects), kept alive across endpoints. It only
//! reads; it must not write to etcd.
//!
//! The watch remembers the revision after the last event it delivered and
//! re-creates itself from there, so no event is lost or repeated, when:
//! - the stream breaks or etcd ends it (member killed, member lost its
//!   leader): at the next endpoint;
//! - nothing at all arrived for the idle bound: the server may be gone
//!   without a FIN (host down, partition), and etcd sends progress
//!   notifications only every 10 minutes by default
//!   (`--experimental-watch-progress-notify-interval`), so an idle stream
//!   cannot be told from a dead one: it is re-created at the client's
//!   current endpoint. Progress notifications, when etcd sends them, also
//!   move the resume revision forward.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tracing::debug;

use super::Event;
use super::error::{EtcdError, no_answer};
use super::transport::{Failure, MAX_RESPONSE_BYTES, Retry, Transport, error_chain, read_body};
use super::wire::{self, StreamLine, WatchResponse, b64};

/// A live watch: [`Watch::next`] yields batches of events in revision
/// order. Dropping it closes its stream.
pub struct Watch {
    transport: Arc<Transport>,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Every event before this revision has been delivered.
    next_revision: i64,
    idle: Duration,
    stream: Option<Stream>,
    /// Streams that died since the last message, with the reasons.
    deaths: Vec<(String, String)>,
}

struct Stream {
    endpoint: usize,
    opened: Instant,
    body: Incoming,
    buf: Vec<u8>,
}

/// One decoded line of the stream.
enum Line {
    Created,
    Events(Vec<Event>),
    /// A response without events: everything up to this revision is sent.
    Progress(i64),
    Canceled {
        compact_revision: i64,
        reason: String,
    },
    Error {
        code: i32,
        http: u16,
        message: String,
    },
}

impl Watch {
    /// Creates the watch (tries every endpoint once): on return, etcd has
    /// confirmed it.
    pub(super) async fn start(
        transport: Arc<Transport>,
        (key, range_end): (Vec<u8>, Vec<u8>),
        start_revision: i64,
        idle: Duration,
    ) -> Result<Watch, EtcdError> {
        let mut watch = Watch {
            transport,
            key,
            range_end,
            next_revision: start_revision,
            idle,
            stream: None,
            deaths: Vec::new(),
        };
        watch.open().await?;
        Ok(watch)
    }

    /// The revision up to which every event has been delivered.
    pub fn revision(&self) -> i64 {
        self.next_revision - 1
    }

    /// The next batch of events (never empty), in revision order.
    ///
    /// An error means the watch cannot go on from where it is: every
    /// endpoint failed, or etcd compacted the history it needs
    /// ([`EtcdError::Compacted`]). Read the keys again and start a new
    /// watch from the revision after that read. Calling `next` again after
    /// an error tries to re-create the stream once more.
    ///
    /// Cancel-safe: a `next` dropped while waiting (in a `select!` or under
    /// a timeout) loses no event; the next call carries on.
    pub async fn next(&mut self) -> Result<Vec<Event>, EtcdError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            let endpoint = stream.endpoint;
            let line = match timeout(self.idle, stream.read_line()).await {
                Ok(line) => line,
                Err(_) => {
                    debug!(endpoint = %self.transport.endpoints()[endpoint], idle = ?self.idle, "etcd watch idle, re-creating it");
                    self.stream = None;
                    continue;
                }
            };
            match line {
                Ok(Line::Events(events)) => {
                    self.deaths.clear();
                    if let Some(last) = events.last() {
                        self.next_revision = self.next_revision.max(last.kv.mod_revision + 1);
                    }
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Ok(Line::Progress(revision)) => {
                    self.deaths.clear();
                    self.next_revision = self.next_revision.max(revision + 1);
                }
                Ok(Line::Created) => self.deaths.clear(),
                Ok(Line::Canceled {
                    compact_revision,
                    reason,
                }) => {
                    self.stream = None;
                    return Err(self.canceled(endpoint, compact_revision, reason));
                }
                Ok(Line::Error {
                    code,
                    http,
                    message,
                }) => {
                    match self.transport.classify(
                        "watch",
                        endpoint,
                        http,
                        code,
                        message,
                        Retry::Always,
                    ) {
                        Failure::Refused(e) => {
                            self.stream = None;
                            return Err(e);
                        }
                        Failure::Unsent(reason) | Failure::Lost(reason) => {
                            self.died(endpoint, reason)?
                        }
                    }
                }
                Err(reason) => self.died(endpoint, reason)?,
            }
        }
    }

    fn canceled(&self, endpoint: usize, compact_revision: i64, reason: String) -> EtcdError {
        if compact_revision > 0 {
            EtcdError::Compacted {
                requested: self.next_revision,
                compact_revision,
            }
        } else {
            EtcdError::WatchCanceled {
                endpoint: self.transport.endpoints()[endpoint].clone(),
                reason,
            }
        }
    }

    /// The stream at `endpoint` broke: move on, unless every endpoint has
    /// broken since the last message (etcd keeps ending the stream).
    fn died(&mut self, endpoint: usize, reason: String) -> Result<(), EtcdError> {
        if self
            .stream
            .as_ref()
            .is_some_and(|s| s.opened.elapsed() >= self.idle)
        {
            // It served for a while: not part of a run of instant deaths.
            self.deaths.clear();
        }
        let name = self.transport.endpoints()[endpoint].clone();
        debug!(endpoint = %name, error = %reason, "etcd watch stream broke, re-creating it");
        self.stream = None;
        self.transport.failed(endpoint);
        self.deaths.push((name, reason));
        if self.deaths.len() > self.transport.endpoints().len() {
            return Err(EtcdError::Unreachable {
                op: "watch",
                attempts: std::mem::take(&mut self.deaths),
            });
        }
        Ok(())
    }

    /// Creates the stream from `next_revision`, trying each endpoint once
    /// from the client's current one.
    async fn open(&mut self) -> Result<(), EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(&self.key),
            "range_end": b64(&self.range_end),
            "start_revision": self.next_revision.to_string(),
            "progress_notify": true,
        }});
        let body = Bytes::from(body.to_string());
        let n = self.transport.endpoints().len();
        let start = self.transport.current();
        let mut attempts = self.deaths.clone();
        for i in 0..n {
            let idx = (start + i) % n;
            let limit = self.transport.timeout();
            let reason = match timeout(limit, self.open_at(idx, body.clone())).await {
                Ok(Ok(stream)) => {
                    self.transport.worked(idx);
                    self.stream = Some(stream);
                    return Ok(());
                }
                Ok(Err(Failure::Refused(e))) => return Err(e),
                Ok(Err(Failure::Unsent(reason) | Failure::Lost(reason))) => reason,
                Err(_) => no_answer(limit),
            };
            let endpoint = self.transport.endpoints()[idx].clone();
            debug!(endpoint, error = %reason, "etcd watch could not start, trying the next endpoint");
            attempts.push((endpoint, reason));
        }
        self.deaths.clear();
        Err(EtcdError::Unreachable {
            op: "watch",
            attempts,
        })
    }

    /// Sends the create request to `idx` and reads up to its `created`.
    async fn open_at(&self, idx: usize, body: Bytes) -> Result<Stream, Failure> {
        let resp = self.transport.send(idx, "/v3/watch", body).await?;
        let status = resp.status();
        let mut stream = Stream {
            endpoint: idx,
            opened: Instant::now(),
            body: resp.into_body(),
            buf: Vec::new(),
        };
        if !status.is_success() {
            let answer = read_body(stream.body).await.unwrap_or_default();
            return Err(self
                .transport
                .refusal("watch", idx, status, &answer, Retry::Always));
        }
        match stream.read_line().await.map_err(Failure::Lost)? {
            Line::Created => Ok(stream),
            Line::Canceled {
                compact_revision,
                reason,
            } => Err(Failure::Refused(self.canceled(
                idx,
                compact_revision,
                reason,
            ))),
            Line::Error {
                code,
                http,
                message,
            } => Err(self
                .transport
                .classify("watch", idx, http, code, message, Retry::Always)),
            Line::Events(_) | Line::Progress(_) => {
                Err(Failure::Lost("watch sent data before confirming".into()))
            }
        }
    }
}

impl Stream {
    /// The next non-empty line; `Err` when the stream ended or broke.
    async fn read_line(&mut self) -> Result<Line, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return decode(&line);
            }
            if self.buf.len() > MAX_RESPONSE_BYTES {
                return Err(format!(
                    "watch message longer than {MAX_RESPONSE_BYTES} bytes"
                ));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("watch stream broke: {}", error_chain(&e))),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => {
                    return Err("etcd ended the watch stream".to_string());
                }
                // A last line without its newline.
                None => return decode(&std::mem::take(&mut self.buf)),
            }
        }
    }
}

fn decode(line: &[u8]) -> Result<Line, String> {
    let line: StreamLine<WatchResponse> =
        wire::parse(line).map_err(|e| format!("bad watch message: {e}"))?;
    match (line.result, line.error) {
        (_, Some(e)) => Ok(Line::Error {
            code: e.grpc_code,
            http: e.http_code,
            message: e.message,
        }),
        (Some(w), None) if w.canceled => Ok(Line::Canceled {
            compact_revision: w.compact_revision,
            reason: w.cancel_reason,
        }),
        (Some(w), None) if w.created => Ok(Line::Created),
        (Some(mut w), None) => {
            let events = w.take_events();
            if events.is_empty() {
                Ok(Line::Progress(w.header.revision))
            } else {
                Ok(Line::Events(events))
            }
        }
        (None, None) => Err("watch message with neither result nor error".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::EventKind;

    #[test]
    fn lines_decode_to_what_the_watch_acts_on() {
        let created = br#"{"result":{"header":{"revision":"6"},"created":true}}"#;
        assert!(matches!(decode(created), Ok(Line::Created)));
        let progress = br#"{"result":{"header":{"revision":"42"}}}"#;
        assert!(matches!(decode(progress), Ok(Line::Progress(42))));
        let events = br#"{"result":{"header":{"revision":"8"},"events":[{"type":"DELETE","kv":{"key":"L2ZvL3o=","mod_revision":"8"}}]}}"#;
        match decode(events) {
            Ok(Line::Events(ev)) => {
                assert_eq!((ev[0].kind, ev[0].kv.mod_revision), (EventKind::Delete, 8))
            }
            _ => panic!("events"),
        }
        let compacted =
            br#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"7"}}"#;
        assert!(matches!(
            decode(compacted),
            Ok(Line::Canceled {
                compact_revision: 7,
                ..
            })
        ));
        let no_leader =
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#;
        assert!(matches!(
            decode(no_leader),
            Ok(Line::Error { code: 14, .. })
        ));
        assert!(decode(b"{}").is_err());
        assert!(decode(b"<html>").is_err());
    }
}

//! The publisher task of one service: follows a `watch` of the decided
//! backend and keeps the DNS record at its address. It publishes the value
//! at start and after every change, retries failures with back-off (1 s
//! doubling to 30 s), and a newer decision always wins: it cuts a back-off
//! short and abandons an attempt in flight, and since the abandoned update
//! may still reach the server late, the latest decision is sent once more
//! when the abandoned attempt's timeout has passed. It never decides
//! anything itself, and `None` (no backend up) leaves the record as it is.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::update::{Target, UpdateError, show_duration, update};
use crate::config::TsigKey;
use crate::metrics::{DNS_PUBLISHED, DNS_UPDATES_TOTAL};

/// Wait after the first failed update; doubles after each failure.
pub const RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
/// The back-off stops growing here.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);
/// A sensible bound for one update attempt (UDP and a TCP fallback).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the record should hold: the decided backend and the address
/// published for it (its `publish`, else the IP of its `address`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub backend: String,
    pub address: IpAddr,
}

/// Everything one service's publisher needs.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The service name, for the metric labels and logs.
    pub service: String,
    pub target: Target,
    pub key: TsigKey,
    /// Names of the service's backends, so `failoverd_dns_published` shows
    /// 0 for every backend the record does not hold.
    pub backends: Vec<String>,
    /// Bound of one update attempt ([`UPDATE_TIMEOUT`]).
    pub timeout: Duration,
}

/// The `dns` object of `ctl status --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The record failoverd owns (`db.example.com.`).
    pub name: String,
    /// The address the last successful update wrote; `null` before one.
    pub published: Option<IpAddr>,
    /// The backend of `published` (for the text table; not in the JSON).
    #[serde(skip)]
    pub backend: Option<String>,
    /// Unix time (seconds) of the last successful update.
    pub at: Option<f64>,
    /// The error of the last attempt; `null` once an update succeeded.
    pub error: Option<String>,
}

/// A running publisher. Dropping it stops the task.
pub struct PublisherHandle {
    status: watch::Receiver<DnsStatus>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PublisherHandle {
    /// The state for `ctl status`.
    pub fn status(&self) -> DnsStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`status`](Self::status).
    pub fn watch_status(&self) -> watch::Receiver<DnsStatus> {
        self.status.clone()
    }

    /// Stop the task (an update in flight is abandoned) and wait for it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Start the publisher of one service on the current tokio runtime. It
/// publishes `decisions`' value now and after every change, and ends when
/// the sender is dropped or the handle is stopped.
pub fn spawn_publisher(
    config: PublisherConfig,
    decisions: watch::Receiver<Option<Publish>>,
) -> PublisherHandle {
    let (status_tx, status_rx) = watch::channel(DnsStatus {
        name: config.target.name.clone(),
        published: None,
        backend: None,
        at: None,
        error: None,
    });
    let cancel = CancellationToken::new();
    let publisher = Publisher {
        ok: metrics::counter!(DNS_UPDATES_TOTAL, "service" => config.service.clone(), "result" => "ok"),
        error: metrics::counter!(DNS_UPDATES_TOTAL, "service" => config.service.clone(), "result" => "error"),
        known_backends: config.backends.iter().cloned().collect(),
        config,
        status: status_tx,
    };
    publisher.set_gauges(None);
    let task = tokio::spawn(publisher.run(decisions, cancel.clone()));
    PublisherHandle {
        status: status_rx,
        cancel,
        task: Some(task),
    }
}

struct Publisher {
    config: PublisherConfig,
    status: watch::Sender<DnsStatus>,
    ok: Counter,
    error: Counter,
    known_backends: BTreeSet<String>,
}

/// What the publisher knows between two steps.
struct State {
    /// The latest decision.
    desired: Option<Publish>,
    /// What the record holds by our last confirmed update. Unknown after a
    /// failed or abandoned attempt (a timed-out update may still have been
    /// applied), so the next decision is always sent.
    confirmed: Option<Publish>,
    /// An abandoned attempt may still reach the server until then (its
    /// start plus the timeout): the latest decision is sent once more after
    /// that, so a late old update cannot have the last word.
    stale_until: Option<Instant>,
    /// The next back-off wait.
    delay: Duration,
}

/// The decision sender is gone: the publisher ends.
struct Gone;

impl State {
    /// The decision to send now, if the record may not hold it.
    fn to_send(&self) -> Option<Publish> {
        self.desired
            .clone()
            .filter(|want| self.confirmed.as_ref() != Some(want))
    }

    /// Take the watch's value as the decision to follow.
    fn adopt(&mut self, decisions: &watch::Receiver<Option<Publish>>) {
        let next = decisions.borrow().clone();
        if next != self.desired {
            self.delay = RETRY_FIRST_DELAY;
        }
        if next.is_none() {
            // After "no backend up" the record is not ours to assume (another
            // decider may have changed it): the next decision is sent even
            // if it is the one we sent last.
            self.confirmed = None;
        }
        self.desired = next;
    }

    /// Nothing to send: wait for a new decision, or for the moment to
    /// confirm the record after a superseded update.
    async fn idle(&mut self, decisions: &mut watch::Receiver<Option<Publish>>) -> Result<(), Gone> {
        let resend_at = self.stale_until.filter(|_| self.desired.is_some());
        tokio::select! {
            changed = wait_change(decisions, &self.desired) => changed.map(|()| self.adopt(decisions)),
            () = sleep_until(resend_at) => {
                self.resend();
                Ok(())
            }
        }
    }

    fn resend(&mut self) {
        self.stale_until = None;
        self.confirmed = None;
    }

    /// A newer decision arrived while the attempt started at `started` was
    /// in flight: it is abandoned, and may still land until its timeout.
    fn supersede(
        &mut self,
        started: Instant,
        timeout: Duration,
        decisions: &watch::Receiver<Option<Publish>>,
    ) {
        let until = started + timeout;
        self.stale_until = Some(self.stale_until.map_or(until, |t| t.max(until)));
        self.confirmed = None;
        self.adopt(decisions);
    }

    /// After a failure: wait out the back-off, unless a new decision comes.
    async fn back_off(
        &mut self,
        decisions: &mut watch::Receiver<Option<Publish>>,
    ) -> Result<(), Gone> {
        self.confirmed = None;
        let delay = self.delay;
        tokio::select! {
            changed = wait_change(decisions, &self.desired) => changed.map(|()| self.adopt(decisions)),
            () = tokio::time::sleep(delay) => {
                self.delay = (delay * 2).min(RETRY_MAX_DELAY);
                Ok(())
            }
        }
    }
}

impl Publisher {
    /// Follow the decisions until the handle stops or the sender is gone.
    async fn run(mut self, decisions: watch::Receiver<Option<Publish>>, cancel: CancellationToken) {
        tokio::select! {
            () = cancel.cancelled() => {}
            _ = self.follow(decisions) => {}
        }
    }

    async fn follow(
        &mut self,
        mut decisions: watch::Receiver<Option<Publish>>,
    ) -> Result<(), Gone> {
        let mut state = State {
            desired: decisions.borrow_and_update().clone(),
            confirmed: None,
            stale_until: None,
            delay: RETRY_FIRST_DELAY,
        };
        loop {
            match state.to_send() {
                Some(want) => self.send(want, &mut state, &mut decisions).await?,
                None => state.idle(&mut decisions).await?,
            }
        }
    }

    /// One attempt; a newer, different decision abandons it so that the
    /// newer one goes out at once (after it on the wire).
    async fn send(
        &mut self,
        want: Publish,
        state: &mut State,
        decisions: &mut watch::Receiver<Option<Publish>>,
    ) -> Result<(), Gone> {
        let started = Instant::now();
        let timeout = self.config.timeout;
        let attempt = update(&self.config.target, &self.config.key, want.address, timeout);
        let result = tokio::select! {
            biased;
            changed = wait_change(decisions, &state.desired) => {
                return changed.map(|()| self.superseded(&want, state, started, decisions));
            }
            result = attempt => result,
        };
        match result {
            Ok(()) => {
                self.succeeded(&want, started.elapsed());
                state.confirmed = Some(want);
                state.delay = RETRY_FIRST_DELAY;
                Ok(())
            }
            Err(err) => {
                self.failed(&want, &err, state.delay);
                state.back_off(decisions).await
            }
        }
    }

    fn superseded(
        &self,
        want: &Publish,
        state: &mut State,
        started: Instant,
        decisions: &watch::Receiver<Option<Publish>>,
    ) {
        tracing::debug!(
            service = %self.config.service,
            backend = %want.backend,
            "dns update superseded by a newer decision"
        );
        state.supersede(started, self.config.timeout, decisions);
    }

    fn succeeded(&mut self, want: &Publish, elapsed: Duration) {
        self.ok.increment(1);
        self.known_backends.insert(want.backend.clone());
        self.set_gauges(Some(&want.backend));
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.status.send_modify(|status| {
            status.published = Some(want.address);
            status.backend = Some(want.backend.clone());
            status.at = Some(at);
            status.error = None;
        });
        tracing::info!(
            service = %self.config.service,
            name = %self.config.target.name,
            backend = %want.backend,
            address = %want.address,
            elapsed_ms = elapsed.as_millis() as u64,
            "dns record published"
        );
    }

    fn failed(&mut self, want: &Publish, err: &UpdateError, retry_in: Duration) {
        self.error.increment(1);
        let text = err.to_string();
        tracing::warn!(
            service = %self.config.service,
            name = %self.config.target.name,
            backend = %want.backend,
            address = %want.address,
            error = %text,
            retry_in = %show_duration(retry_in),
            "dns update failed"
        );
        self.status.send_modify(|status| status.error = Some(text));
    }

    fn set_gauges(&self, published: Option<&str>) {
        for backend in &self.known_backends {
            let value = if Some(backend.as_str()) == published {
                1.0
            } else {
                0.0
            };
            metrics::gauge!(DNS_PUBLISHED, "service" => self.config.service.clone(), "backend" => backend.clone())
                .set(value);
        }
    }
}

/// Sleep until `at`; never wakes without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Wait until the decision differs from `current` (a resend of the same
/// value is no change), or the sender is gone.
async fn wait_change(
    decisions: &mut watch::Receiver<Option<Publish>>,
    current: &Option<Publish>,
) -> Result<(), Gone> {
    loop {
        decisions.changed().await.map_err(|_| Gone)?;
        if *decisions.borrow_and_update() != *current {
            return Ok(());
        }
    }
}

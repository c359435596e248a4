//! The member's lease: the timings derived from `ttl`, and the task that
//! renews the lease every ttl/3 and reports the *send* time of the last
//! renewal etcd confirmed. etcd expires a lease ttl after the last renewal
//! it received, which is later than that send time, so a member that
//! counts from it knows it is no longer a member before anyone else can
//! see it gone; it counts a tenth of ttl less than ttl (at most
//! [`LOST_GUARD_MAX`]), so the engine has that long to stop. This task
//! only renews; it never writes keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::etcd::{Client, LeaseId};

/// Bounds of the per-request etcd timeout.
const REQUEST_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// Shortest pause between two attempts of a failed call.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// Upper bound of the head start a member gives itself over etcd's lease
/// expiry (a tenth of ttl below it).
pub(super) const LOST_GUARD_MAX: Duration = Duration::from_millis(500);

/// First pause before joining again after the cluster was lost.
pub(super) const REJOIN_FIRST_DELAY: Duration = Duration::from_millis(100);

/// Every timing of a member, derived from `[cluster] ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// The lease asked for (etcd may grant more, never less).
    pub ttl: Duration,
    /// A member whose renewal has not been confirmed for this long is no
    /// longer one: ttl less a tenth (at most [`LOST_GUARD_MAX`]).
    pub lost_after: Duration,
    /// Renew the lease this often.
    pub renew_every: Duration,
    /// Bound of one etcd request to one endpoint: ttl/6, so a renewal
    /// that hangs on a dead endpoint still leaves time for the next
    /// endpoint and for another try before ttl runs out. A killed etcd
    /// leader costs about this long (requests in flight to it are lost).
    pub request_timeout: Duration,
    /// Pause after a failed call before trying again.
    pub retry_pause: Duration,
    /// Longest pause between attempts to join again.
    pub rejoin_max_delay: Duration,
}

impl Timing {
    pub fn for_ttl(ttl: Duration) -> Timing {
        let ttl = ttl.max(Duration::from_millis(300));
        Timing {
            ttl,
            lost_after: ttl - (ttl / 10).min(LOST_GUARD_MAX),
            renew_every: ttl / 3,
            request_timeout: (ttl / 6).clamp(REQUEST_TIMEOUT_MIN, REQUEST_TIMEOUT_MAX),
            retry_pause: (ttl / 20).max(RETRY_PAUSE_MIN),
            rejoin_max_delay: ttl / 3,
        }
    }
}

/// What the renewal task knows of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseState {
    /// Send time of the last grant or renewal etcd confirmed.
    pub confirmed: Instant,
    /// etcd said it no longer has the lease.
    pub gone: bool,
}

/// Set once the lease can no longer be counted on; never cleared.
pub(super) type Expired = Arc<AtomicBool>;

/// Aborts the task when dropped.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts renewing `lease`, granted by a request sent at `granted`.
/// `on_lost` runs once, from this task, the moment the lease can no longer
/// be counted on (ttl after the last confirmed send, or etcd says it is
/// gone), however busy the member's own task is at that moment; the
/// returned flag is set just before.
pub(super) fn keep_alive(
    client: Client,
    lease: LeaseId,
    timing: Timing,
    granted: Instant,
    on_lost: impl FnOnce() + Send + 'static,
) -> (watch::Receiver<LeaseState>, Expired, AbortOnDrop) {
    let (tx, rx) = watch::channel(LeaseState {
        confirmed: granted,
        gone: false,
    });
    let expired = Expired::default();
    let task = {
        let expired = Arc::clone(&expired);
        tokio::spawn(async move {
            renew(client, lease, timing, granted, &tx).await;
            expired.store(true, Ordering::SeqCst);
            on_lost();
            tx.send_modify(|s| s.gone = true);
        })
    };
    (rx, expired, AbortOnDrop(task))
}

/// Renews until the lease is lost; returns then.
async fn renew(
    client: Client,
    lease: LeaseId,
    timing: Timing,
    granted: Instant,
    tx: &watch::Sender<LeaseState>,
) {
    let mut confirmed = granted;
    let mut next = granted + timing.renew_every;
    let mut failing = false;
    loop {
        let attempt = async {
            sleep_until(next).await;
            let sent = Instant::now();
            (sent, client.keep_alive(lease).await)
        };
        let (sent, answer) = tokio::select! {
            _ = sleep_until(confirmed + timing.lost_after) => {
                warn!(%lease, after = ?timing.lost_after, "no etcd lease renewal confirmed in time; no longer a member");
                return;
            }
            done = attempt => done,
        };
        match answer {
            Ok(Some(_)) => {
                if std::mem::take(&mut failing) {
                    info!(%lease, "etcd lease renewal works again");
                }
                confirmed = sent;
                tx.send_replace(LeaseState {
                    confirmed,
                    gone: false,
                });
                next = sent + timing.renew_every;
            }
            Ok(None) => {
                warn!(%lease, "etcd no longer has the lease");
                return;
            }
            Err(e) => {
                if std::mem::replace(&mut failing, true) {
                    debug!(%lease, error = %e, "etcd lease renewal failed again");
                } else {
                    warn!(%lease, error = %e, "etcd lease renewal failed; retrying");
                }
                next = Instant::now() + timing.retry_pause;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_follow_the_ttl() {
        let t = Timing::for_ttl(Duration::from_secs(3));
        assert_eq!(t.renew_every, Duration::from_secs(1));
        assert_eq!(t.request_timeout, Duration::from_millis(500));
        assert_eq!(t.retry_pause, Duration::from_millis(150));
        assert_eq!(t.lost_after, Duration::from_millis(2700));
        let t = Timing::for_ttl(Duration::from_secs(1));
        assert_eq!(t.request_timeout, Duration::from_nanos(166_666_666));
        let t = Timing::for_ttl(Duration::from_secs(60));
        assert_eq!(t.request_timeout, REQUEST_TIMEOUT_MAX);
        assert_eq!(t.lost_after, Duration::from_millis(59_500));
    }
}

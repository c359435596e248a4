//! The member's lease: the timings derived from `ttl`, and the task that
//! renews the lease every ttl/3 and reports the *send* time of the last
//! renewal etcd confirmed. etcd expires a lease ttl after the last renewal
//! it received, which is later than that send time, so a member that
//! counts ttl from it knows it is no longer a member before anyone else
//! can see it gone. This task only renews; it never writes keys.

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

/// First pause before joining again after the cluster was lost.
pub(super) const REJOIN_FIRST_DELAY: Duration = Duration::from_millis(100);

/// Every timing of a member, derived from `[cluster] ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// A member whose renewal has not been confirmed for this long is no
    /// longer one (the configured ttl; etcd may grant more, never less).
    pub ttl: Duration,
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

/// Aborts the task when dropped.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts renewing `lease`, granted by a request sent at `granted`.
pub(super) fn keep_alive(
    client: Client,
    lease: LeaseId,
    timing: Timing,
    granted: Instant,
) -> (watch::Receiver<LeaseState>, AbortOnDrop) {
    let (tx, rx) = watch::channel(LeaseState {
        confirmed: granted,
        gone: false,
    });
    let task = tokio::spawn(renew(client, lease, timing, granted, tx));
    (rx, AbortOnDrop(task))
}

async fn renew(
    client: Client,
    lease: LeaseId,
    timing: Timing,
    granted: Instant,
    tx: watch::Sender<LeaseState>,
) {
    let mut next = granted + timing.renew_every;
    let mut failing = false;
    loop {
        sleep_until(next).await;
        let sent = Instant::now();
        match client.keep_alive(lease).await {
            Ok(Some(_)) => {
                if std::mem::take(&mut failing) {
                    info!(%lease, "etcd lease renewal works again");
                }
                tx.send_replace(LeaseState {
                    confirmed: sent,
                    gone: false,
                });
                next = sent + timing.renew_every;
            }
            Ok(None) => {
                tx.send_modify(|s| s.gone = true);
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
        let t = Timing::for_ttl(Duration::from_secs(1));
        assert_eq!(t.request_timeout, Duration::from_nanos(166_666_666));
        let t = Timing::for_ttl(Duration::from_secs(60));
        assert_eq!(t.request_timeout, REQUEST_TIMEOUT_MAX);
    }
}

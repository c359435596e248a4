//! Active health checks: one task per backend runs a probe every
//! `check_interval` (with jitter) and reports the result to the service's
//! engine as an [`Event::Check`]. `probe.rs` runs one check (resolve,
//! connect, PROXY header, the `tcp` exchange); `http.rs`, `redis.rs` and
//! `postgres.rs` speak the role-aware kinds' protocols, with the failure
//! reasons of `failure.rs`.
//!
//! This layer measures and reports; it never changes a backend's state or
//! chooses the active backend (the engine and `policy.rs` do). Public only
//! for [`check`], which the probe tests and the check benchmark run.

mod failure;
mod http;
mod postgres;
mod probe;
mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::net;
use crate::ratelimit::LogLimit;
use crate::service::{Backend, Event};

pub use failure::CheckFailure;
use failure::{printable, starts_with_detail};
pub use probe::{ProbeError, ProbeStage, check, probe_and_resolve};

/// One backend's active checks: the first at once, then every
/// `check_interval` with a little jitter, until `stop`.
pub(crate) async fn check_loop(
    backend: Arc<Backend>,
    settings: Arc<Settings>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    seed: u64,
) {
    let mut round: u64 = 0;
    let mut lookup = net::Lookup::default();
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            result = probe(&backend, &mut lookup, &settings) => result,
            _ = stop.cancelled() => return,
        };
        round += 1;
        let interval = jittered(settings.check_interval, seed.wrapping_mul(7919) ^ round);
        if let Some(err) = result.as_ref().err().filter(|e| e.is_local()) {
            // This host's fault: no result, nothing counted or sent.
            if let Some(suppressed) = LOCAL_ERROR_LOG.check() {
                tracing::warn!(service = %backend.service, backend = %backend.name, error = %err, suppressed, "health check skipped");
            }
        } else if report(&backend, &events, started, &result).is_err() {
            return;
        }
        tokio::select! {
            _ = sleep_until_after(started, interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Local faults during checks are logged once a second, process-wide (a
/// shortage of fds hits every backend's checks at once).
static LOCAL_ERROR_LOG: LogLimit = LogLimit::new();

/// Count one check result and send it to the engine; `Err` when the
/// engine is gone.
fn report(
    backend: &Arc<Backend>,
    events: &mpsc::UnboundedSender<Event>,
    started: Instant,
    result: &Result<(), ProbeError>,
) -> Result<(), ()> {
    let ok = result.is_ok();
    let metrics = &backend.metrics;
    metrics
        .check_duration
        .record(started.elapsed().as_secs_f64());
    if ok {
        metrics.checks_ok.increment(1);
    } else {
        metrics.checks_fail.increment(1);
    }
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        metrics.last_check.set(now.as_secs_f64());
    }
    match result {
        Ok(()) => backend.set_last_check_error(None),
        Err(err) => {
            tracing::debug!(service = %backend.service, backend = %backend.name, error = %err, "health check failed");
            backend.set_last_check_error(Some(err.to_string()));
        }
    }
    events
        .send(Event::Check {
            backend: Arc::clone(backend),
            ok,
        })
        .map_err(drop)
}

/// One probe of `backend`; a hostname's good resolution is cached for the
/// data path on the way (a failed lookup keeps the last one, and fails the
/// check).
async fn probe(
    backend: &Backend,
    lookup: &mut net::Lookup,
    settings: &Settings,
) -> Result<(), ProbeError> {
    let cache = |addrs: &[std::net::SocketAddr]| backend.set_addresses(addrs);
    probe_and_resolve(&backend.address, lookup, settings, cache).await
}

/// Sleep until `interval` after `started`; a moment past what an `Instant`
/// can hold never comes (no value may panic the check loop).
async fn sleep_until_after(started: Instant, interval: Duration) {
    match started.checked_add(interval) {
        Some(at) => sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `interval` ± up to 10%, derived from `seed` (xorshift64), so checks of many
/// backends started together spread out instead of firing in lockstep.
/// Feed the previous seed through [`xorshift64`] to get the next one.
pub(crate) fn jittered(interval: Duration, seed: u64) -> Duration {
    let nanos = interval.as_nanos();
    let spread = nanos / 10;
    if spread == 0 {
        return interval;
    }
    let r = u128::from(xorshift64(seed));
    // offset in [0, 2*spread], then shifted to [-spread, +spread].
    let offset = r % (2 * spread + 1);
    let total = nanos + offset - spread;
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9, so it fits.
    let sub = (total % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

/// One step of the xorshift64 generator (Marsaglia); a zero seed is replaced,
/// since zero is a fixed point.
pub(crate) fn xorshift64(seed: u64) -> u64 {
    let mut x = if seed == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        seed
    };
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_millis(500);
        let mut seed = 1;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = jittered(interval, seed);
            assert!(
                d >= Duration::from_millis(450) && d <= Duration::from_millis(550),
                "{d:?}"
            );
            seen.insert(d);
            seed = xorshift64(seed);
        }
        assert!(seen.len() > 100, "jitter should vary with the seed");
        assert_eq!(jittered(interval, 42), jittered(interval, 42));
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
        assert_eq!(
            jittered(Duration::from_nanos(5), 7),
            Duration::from_nanos(5)
        );
        let huge = jittered(Duration::MAX, 3);
        assert!(huge >= Duration::MAX - Duration::MAX / 10);
    }
}

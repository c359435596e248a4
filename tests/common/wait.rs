//! Bounded waiting: [`within`] caps a whole test, [`eventually`] replaces
//! every poll loop. Nothing here sleeps without a deadline.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The shortest pause between two probes of [`eventually`].
const POLL_MIN: Duration = Duration::from_millis(5);

/// The longest pause between two probes of [`eventually`].
const POLL_MAX: Duration = Duration::from_millis(50);

/// Every test bounds its own time with this.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test timed out after {secs} s"))
}

/// What one probe of [`eventually`] saw: done with a value, or not yet,
/// with what it observed instead (named in the panic on timeout).
pub trait Probe<T> {
    fn into_outcome(self) -> Result<T, String>;
}

impl<T> Probe<T> for Option<T> {
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: Debug> Probe<T> for Result<T, E> {
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|observed| format!("{observed:?}"))
    }
}

/// Probe until it yields a value (`Some(v)` or `Ok(v)`) and return it;
/// panic after `timeout`, naming `what` and the last observation (the
/// `Err` of a `Result` probe, so return `Err(what_you_saw)` to have it
/// named). A probe that is itself still running at the deadline is cut
/// off. Between probes it pauses as long as the last probe took, within
/// 5–50 ms, so a cheap probe (an atomic, an in-process status) sees a
/// change within milliseconds and an expensive one (a `ctl` process, a
/// scrape) does not load the machine.
pub async fn eventually<T, P, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    P: Probe<T>,
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last = None;
    loop {
        let began = Instant::now();
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(outcome) => match outcome.into_outcome() {
                Ok(value) => return value,
                Err(observed) => last = Some(observed),
            },
            Err(_) => panic!(
                "{what}: not within {timeout:?}; last observed: {} (a probe was still \
                 running at the deadline)",
                last.as_deref().unwrap_or("nothing")
            ),
        }
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "{what}: not within {timeout:?}; last observed: {}",
                last.as_deref().unwrap_or("nothing")
            );
        }
        let pause = (now - began).clamp(POLL_MIN, POLL_MAX);
        tokio::time::sleep_until((now + pause).min(deadline)).await;
    }
}

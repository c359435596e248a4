//! Rate-limited logging: during an outage the same error can happen
//! thousands of times a second (every client's connect to a dead backend,
//! every accept while fds run out); one line a second with a count of the
//! rest tells the operator as much without flooding the journal.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a rate-limited message may be logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// At most one event per [`LOG_INTERVAL`]; lock-free, shareable.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// Milliseconds since the process epoch of the last logged event, + 1
    /// (0 = never).
    last_ms: AtomicU64,
    /// Events skipped since the last logged one.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were
    /// skipped since the last logged one; `None` when it should be skipped.
    pub fn check(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now_ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_event_then_counts_the_rest_until_the_interval_passes() {
        let limit = LogLimit::new();
        assert_eq!(limit.check(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.check(), None);
        }
        std::thread::sleep(LOG_INTERVAL);
        assert_eq!(limit.check(), Some(5));
        assert_eq!(limit.check(), None);
    }
}

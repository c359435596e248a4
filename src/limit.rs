//! `max_connections` of one service: a count of open connections against a
//! maximum that a reload changes in place.
//!
//! Every accepted connection holds a [`Slot`] for its life, whatever the
//! maximum (0 = unlimited), so a reload from unlimited to a number, or
//! down below the number open, knows how many are open. A resize wakes
//! every waiter, so accept loops already waiting see the new size at once.
//! This module counts and wakes; it does not accept (`listener.rs` takes
//! a slot only when its own socket has a connection waiting).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Open connections of one service and their maximum.
#[derive(Debug)]
pub struct Limit {
    /// 0 = unlimited.
    max: AtomicUsize,
    open: AtomicUsize,
    /// Woken when a slot frees at the limit, and on every resize.
    freed: Notify,
}

/// One open connection under a [`Limit`]; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<Limit>);

impl Limit {
    /// A limit of `max` open connections; 0 = unlimited.
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Change the maximum in place (reload). Connections already open stay
    /// open when it shrinks below their number; new ones wait until fewer
    /// than `max` are open.
    pub fn resize(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A slot if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            let max = self.max.load(Ordering::SeqCst);
            if max != 0 && open >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(Arc::clone(self))),
                Err(now) => open = now,
            }
        }
    }

    /// Wait for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before looking, so a slot freed (or a resize)
            // between the look and the wait still wakes this waiter.
            let freed = self.freed.notified();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            freed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let limit = &self.0;
        let before = limit.open.fetch_sub(1, Ordering::SeqCst);
        let max = limit.max.load(Ordering::SeqCst);
        // Below the limit nobody can be waiting: skip the wake-up (it takes
        // a lock) on the common path.
        if max != 0 && before >= max {
            limit.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn acquired_within(limit: &Arc<Limit>, ms: u64) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(ms), limit.acquire())
            .await
            .ok()
    }

    #[test]
    fn counts_slots_up_to_the_maximum() {
        let limit = Limit::new(2);
        let a = limit.try_acquire().expect("first slot");
        let b = limit.try_acquire().expect("second slot");
        assert!(limit.try_acquire().is_none(), "a third slot at max 2");
        assert_eq!(limit.open(), 2);
        drop(a);
        assert_eq!(limit.open(), 1);
        let _c = limit.try_acquire().expect("a freed slot is free again");
        drop(b);
        assert_eq!(limit.open(), 1);
    }

    #[test]
    fn unlimited_still_counts_open_connections() {
        let limit = Limit::new(0);
        let slots: Vec<Slot> = (0..1000).map(|_| limit.try_acquire().unwrap()).collect();
        assert_eq!(limit.open(), 1000);
        drop(slots);
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_that_frees() {
        let limit = Limit::new(1);
        let held = limit.try_acquire().unwrap();
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "acquired while the only slot is held"
        );
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken when the slot freed")
            .unwrap();
        assert_eq!(limit.open(), 1);
        drop(slot);
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test]
    async fn resize_in_place_wakes_waiters_both_ways() {
        // (max before, open, max after, how many of 4 waiters get in).
        let cases: &[(usize, usize, usize, usize)] = &[
            (2, 2, 5, 3), // grow: three waiters get in
            (1, 1, 0, 4), // to unlimited: every waiter gets in
            (5, 5, 1, 0), // shrink below open: nobody new
            (3, 2, 2, 0), // shrink to open: nobody new
        ];
        for &(before, open, after, fit) in cases {
            let limit = Limit::new(before);
            let _held: Vec<Slot> = (0..open).map(|_| limit.try_acquire().unwrap()).collect();
            if open < before {
                // Fill to the old maximum so all four wait.
                limit.resize(open);
            }
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    let limit = Arc::clone(&limit);
                    tokio::spawn(async move { limit.acquire().await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                waiters.iter().all(|w| !w.is_finished()),
                "case {before}->{after}: all wait"
            );
            limit.resize(after);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let got = waiters.iter().filter(|w| w.is_finished()).count();
            assert_eq!(got, fit, "case {before}->{after} with {open} open");
            assert_eq!(limit.open(), open + fit);
            for w in waiters {
                w.abort();
            }
        }
    }

    #[test]
    fn from_unlimited_to_a_number_counts_what_is_open() {
        let limit = Limit::new(0);
        let held: Vec<Slot> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
        limit.resize(4);
        let fourth = limit.try_acquire().expect("3 open at max 4");
        assert!(limit.try_acquire().is_none(), "4 open at max 4");
        limit.resize(2);
        drop(fourth);
        assert!(limit.try_acquire().is_none(), "3 open at max 2");
        drop(held);
        assert!(limit.try_acquire().is_some());
    }

    #[tokio::test]
    async fn shrinking_below_open_admits_only_when_below_the_new_max() {
        let limit = Limit::new(5);
        let mut held: Vec<Slot> = (0..5).map(|_| limit.try_acquire().unwrap()).collect();
        limit.resize(1);
        for _ in 0..4 {
            held.pop();
            assert!(
                acquired_within(&limit, 20).await.is_none(),
                "{} open at max 1: nothing new",
                limit.open()
            );
        }
        held.pop();
        let slot = acquired_within(&limit, 500).await.expect("0 open at max 1");
        assert!(acquired_within(&limit, 20).await.is_none(), "one only");
        drop(slot);
        assert!(acquired_within(&limit, 500).await.is_some());
    }

    /// Many tasks on several threads take and free slots: never more than
    /// `max` at once, and every one gets through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_than_max_under_contention() {
        let limit = Limit::new(3);
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let limit = Arc::clone(&limit);
                let peak = Arc::clone(&peak);
                tokio::spawn(async move {
                    let _slot = limit.acquire().await;
                    peak.fetch_max(limit.open(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(10), async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await
        .expect("every task got a slot");
        assert!(peak.load(Ordering::SeqCst) <= 3, "peak {peak:?}");
        assert_eq!(limit.open(), 0);
    }
}

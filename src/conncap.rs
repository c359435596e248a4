//! A cap on the open connections of an admin listener (`/metrics`, the
//! control socket): when a new connection would exceed it, the oldest one
//! still open is told to close.
//!
//! Evicting the oldest rather than refusing the newest keeps a flood of
//! idle connections from locking out a real scrape or `ctl status`, which
//! send their request at once. This module does no I/O itself.

use std::collections::VecDeque;

use tokio_util::sync::{CancellationToken, DropGuard};

/// The connections admitted by one listener, oldest first.
pub struct ConnectionCap {
    max: usize,
    open: VecDeque<CancellationToken>,
}

/// One admitted connection: `evicted` fires when a newer one pushed it
/// out; dropping `done` (when the connection ends) frees its place.
pub struct Admitted {
    pub evicted: CancellationToken,
    pub done: DropGuard,
}

impl ConnectionCap {
    /// At most `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        ConnectionCap {
            max: max.max(1),
            open: VecDeque::new(),
        }
    }

    /// Admit a new connection, evicting the oldest if the cap is reached.
    pub fn admit(&mut self) -> Admitted {
        self.open.retain(|token| !token.is_cancelled());
        while self.open.len() >= self.max {
            if let Some(oldest) = self.open.pop_front() {
                oldest.cancel();
            }
        }
        let token = CancellationToken::new();
        self.open.push_back(token.clone());
        Admitted {
            evicted: token.clone(),
            done: token.drop_guard(),
        }
    }

    /// Connections admitted and not yet ended or evicted.
    #[cfg(test)]
    pub fn len(&mut self) -> usize {
        self.open.retain(|token| !token.is_cancelled());
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_evicts_the_oldest_at_the_cap() {
        let mut cap = ConnectionCap::new(2);
        let a = cap.admit();
        let b = cap.admit();
        assert_eq!(cap.len(), 2);
        let c = cap.admit();
        assert!(a.evicted.is_cancelled(), "the oldest goes");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        assert_eq!(cap.len(), 1, "an ended connection frees its place");
        let d = cap.admit();
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
    }
}

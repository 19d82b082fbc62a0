//! A process-wide count of committed work (messages handled, events published, timers
//! fired, SMS sent, receipts recorded). The demo and tests on a simulated clock use it
//! to tell a quiet system from one that is between two steps of work.

use std::sync::atomic::{AtomicU64, Ordering};

static COMMITTED: AtomicU64 = AtomicU64::new(0);

pub fn record() {
    COMMITTED.fetch_add(1, Ordering::SeqCst);
}

pub fn count() -> u64 {
    COMMITTED.load(Ordering::SeqCst)
}

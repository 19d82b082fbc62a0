//! The vendor's rate limit for our account (QPS): requests are paced so that no more
//! than `qps` start in any second, however many senders run at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Throttle {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Throttle {
    pub fn per_second(qps: u32) -> Self {
        Throttle {
            interval: Duration::from_secs(1) / qps.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn twenty_one_requests_at_a_hundred_per_second_take_two_hundred_ms() {
        let throttle = Throttle::per_second(100);
        let started = Instant::now();
        for _ in 0..21 {
            throttle.wait().await;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(195) && took < Duration::from_millis(600),
            "{took:?}"
        );
    }
}

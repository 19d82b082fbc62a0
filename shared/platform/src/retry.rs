//! Exponential backoff with jitter for reconnect loops and redelivery delays.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(7);
        Backoff {
            next: first,
            max,
            seed,
        }
    }

    /// The next delay: doubles each time up to `max`, with up to 20% jitter so that
    /// replicas do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = (self.seed >> 33) % 200; // 0..0.2 in thousandths of the delay
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        current + current * jitter as u32 / 1000
    }
}

/// The delay before the `attempt`-th redelivery (1-based): 1 s, 2 s, 4 s … up to 60 s.
pub fn redelivery_delay(attempt: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(6) as u32;
    Duration::from_secs(2u64.pow(exp)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(121));
        assert!(delays[5] >= Duration::from_secs(1) && delays[5] < Duration::from_millis(1201));
        assert_eq!(redelivery_delay(1), Duration::from_secs(1));
        assert_eq!(redelivery_delay(100), Duration::from_secs(60));
    }
}

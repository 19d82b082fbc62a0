//! Loops woken by other work (the outbox relay after each commit, the scheduler's timer
//! loop after each case or outcome event) see floods: thousands of wake-ups a second,
//! each of which would be a poll of Postgres finding what the last one found. A
//! [`Pace`] lets such a loop look at once after a quiet spell, but at most once per
//! gap while the wake-ups keep coming, so one look serves all that came in the gap.

use std::time::Duration;

use tokio::time::Instant;

pub struct Pace {
    gap: Duration,
    last: Option<Instant>,
}

impl Pace {
    pub fn new(gap: Duration) -> Self {
        Pace { gap, last: None }
    }

    /// Waits until a look is due (at once if the last was a gap ago) and counts it.
    pub async fn look(&mut self) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + self.gap).await;
        }
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_look_is_at_once_and_the_next_waits_for_the_gap() {
        let mut pace = Pace::new(Duration::from_millis(50));
        let started = Instant::now();
        pace.look().await;
        assert!(started.elapsed() < Duration::from_millis(20));
        pace.look().await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        // After a quiet spell longer than the gap, the look is at once again.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let quiet = Instant::now();
        pace.look().await;
        assert!(quiet.elapsed() < Duration::from_millis(20));
    }
}

//! Business time. Production uses the wall clock; the demo and the tests use one
//! simulated clock shared by every service in the process, moved forward explicitly.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub enum Clock {
    Wall,
    Simulated(Arc<watch::Sender<DateTime<Utc>>>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the wall clock cannot be moved")]
    NotSimulated,
    #[error("a simulated clock only moves forward (now {now}, asked {asked})")]
    Backwards {
        now: DateTime<Utc>,
        asked: DateTime<Utc>,
    },
}

impl Clock {
    pub fn wall() -> Self {
        Clock::Wall
    }

    pub fn simulated(start: DateTime<Utc>) -> Self {
        Clock::Simulated(Arc::new(watch::Sender::new(start)))
    }

    pub fn is_simulated(&self) -> bool {
        matches!(self, Clock::Simulated(_))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::Wall => Utc::now(),
            Clock::Simulated(tx) => *tx.borrow(),
        }
    }

    /// Moves a simulated clock forward to `to`; every sleeper due by then wakes.
    pub fn advance_to(&self, to: DateTime<Utc>) -> Result<(), ClockError> {
        match self {
            Clock::Wall => Err(ClockError::NotSimulated),
            Clock::Simulated(tx) => {
                let now = *tx.borrow();
                if to < now {
                    return Err(ClockError::Backwards { now, asked: to });
                }
                tx.send_replace(to);
                Ok(())
            }
        }
    }

    /// Waits until business time reaches `deadline`, but on the wall clock never longer
    /// than `poll` (so a loop re-checks shared state that other replicas may change).
    pub async fn sleep_until(&self, deadline: DateTime<Utc>, poll: Duration) {
        match self {
            Clock::Wall => {
                let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait.min(poll)).await;
            }
            Clock::Simulated(tx) => {
                let mut rx = tx.subscribe();
                // wait_for only errs when the sender is gone, which it is not while we hold it.
                let _ = rx.wait_for(|now| *now >= deadline).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn simulated_sleepers_wake_when_the_clock_passes_their_deadline() {
        let start = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("valid date");
        let clock = Clock::simulated(start);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock
                    .sleep_until(start + chrono::Duration::hours(5), Duration::from_secs(1))
                    .await;
                clock.now()
            })
        };
        clock
            .advance_to(start + chrono::Duration::hours(1))
            .expect("forward");
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock
            .advance_to(start + chrono::Duration::hours(6))
            .expect("forward");
        let woke_at = sleeper.await.expect("sleeper ran");
        assert_eq!(woke_at, start + chrono::Duration::hours(6));
        assert!(clock.advance_to(start).is_err());
    }
}

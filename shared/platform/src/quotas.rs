//! Limits on what one caller can make a service do: a rate per caller on the routes a
//! caller could hammer (leases, policy lookups), answered 429 with `Retry-After`; and a
//! gate on the heavy ones (a CSV import) that lets only so many run at once, answered
//! 503 with `Retry-After` when full. Rates are `governor`'s keyed GCRA.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::StatusCode;
use governor::{DefaultKeyedRateLimiter, Quota as Rate, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::Problem;

/// A rate per key (a caller, or a caller and the agent it names).
#[derive(Clone)]
pub struct Quota {
    what: &'static str,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl Quota {
    /// `per_second` on average, up to `burst` at once.
    pub fn per_second(what: &'static str, per_second: u32, burst: u32) -> Quota {
        let rate = Rate::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Quota {
            what,
            limiter: Arc::new(RateLimiter::keyed(rate)),
        }
    }

    /// Takes one from `key`'s allowance, or says when there will be one.
    pub fn take(&self, key: &str) -> Result<(), Problem> {
        match self.limiter.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                use governor::clock::{Clock, DefaultClock};
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!("http_throttled_total", "what" => self.what).increment(1);
                Err(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many {} requests; slow down", self.what),
                )
                .retry_after(wait.as_secs_f64().ceil() as u32))
            }
        }
    }
}

/// At most so many at once.
#[derive(Clone)]
pub struct Gate {
    what: &'static str,
    permits: Arc<Semaphore>,
}

impl Gate {
    pub fn new(what: &'static str, at_once: usize) -> Gate {
        Gate {
            what,
            permits: Arc::new(Semaphore::new(at_once.max(1))),
        }
    }

    /// A place, held until dropped; 503 when every place is taken.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, Problem> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("http_throttled_total", "what" => self.what).increment(1);
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "as many {} as allowed are running; try again shortly",
                    self.what
                ),
            )
            .retry_after(30)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_rate_waits_and_others_do_not() {
        let quota = Quota::per_second("lease", 1, 2);
        assert!(quota.take("a").is_ok());
        assert!(quota.take("a").is_ok());
        let refused = quota.take("a").expect_err("over the burst");
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        assert!(
            quota.take("b").is_ok(),
            "another caller has its own allowance"
        );
        let gate = Gate::new("imports", 1);
        let held = gate.enter().expect("a place");
        assert_eq!(gate.enter().expect_err("full").status, 503);
        drop(held);
        assert!(gate.enter().is_ok());
    }
}

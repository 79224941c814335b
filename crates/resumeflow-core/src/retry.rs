//! Retry policy: how many attempts a node gets and how long to wait between them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with optional jitter, as in the Python API's `rf.RetryPolicy`.
///
/// Whether a failure is retryable at all is decided by the executor (the Python layer
/// classifies exceptions); this policy only bounds and spaces the attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts allowed in one execution session (1 disables retries).
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub backoff_factor: f64,
    pub max_interval: Duration,
    /// Spread each delay uniformly over `[delay/2, delay]` so that retries do not stampede.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval: Duration::from_millis(500),
            backoff_factor: 2.0,
            max_interval: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    ///
    /// ```
    /// assert_eq!(resumeflow_core::RetryPolicy::no_retry().max_attempts, 1);
    /// ```
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Checks the fields; `node` names the node in the error.
    pub fn validate(&self, node: &str) -> crate::Result<()> {
        let bad = |field: &str, message: &str| {
            Err(crate::Error::InvalidArgument {
                field: format!("retry.{field} of node {node:?}"),
                message: message.to_string(),
            })
        };
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if !self.backoff_factor.is_finite() || self.backoff_factor < 1.0 {
            return bad("backoff_factor", "must be a finite number >= 1");
        }
        if self.max_interval < self.initial_interval {
            return bad("max_interval", "must be >= initial_interval");
        }
        Ok(())
    }

    /// Whether another attempt is allowed after `attempts_used` attempts in this session.
    pub fn allows_another(&self, attempts_used: u32) -> bool {
        attempts_used < self.max_attempts
    }

    /// The delay before retry number `retry` (1 for the first retry).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = resumeflow_core::RetryPolicy { jitter: false, ..Default::default() };
    /// assert_eq!(p.delay(1), Duration::from_millis(500));
    /// assert_eq!(p.delay(2), Duration::from_secs(1));
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .backoff_factor
            .powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_interval.as_secs_f64() * exp).min(self.max_interval.as_secs_f64());
        let secs = if self.jitter {
            secs * (0.5 + 0.5 * fastrand::f64())
        } else {
            secs
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The wait before the next attempt: the backoff [`RetryPolicy::delay`], or longer when
    /// the failed service asked for more (`retry_after`), never beyond `max_interval`
    /// (unless the backoff itself is longer, which `max_interval` already bounds).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = resumeflow_core::RetryPolicy { jitter: false, ..Default::default() };
    /// assert_eq!(p.delay_after(1, Some(Duration::from_secs(20))), Duration::from_secs(20));
    /// assert_eq!(p.delay_after(1, Some(Duration::from_secs(600))), p.max_interval);
    /// assert_eq!(p.delay_after(1, Some(Duration::ZERO)), p.delay(1));
    /// ```
    pub fn delay_after(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.delay(retry);
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.max_interval)),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jitter_stays_in_range() {
        let p = RetryPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
            ..Default::default()
        };
        for retry in 1..20 {
            let d = p.delay(retry).as_secs_f64();
            let full = (2f64.powi(retry as i32 - 1)).min(5.0);
            assert!(
                d >= full / 2.0 - 1e-9 && d <= full + 1e-9,
                "retry {retry}: {d}"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        let p = RetryPolicy {
            max_attempts: 0,
            ..Default::default()
        };
        let e = p.validate("train").unwrap_err().to_string();
        assert!(e.contains("max_attempts") && e.contains("train"), "{e}");
    }
}

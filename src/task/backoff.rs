//! The back-off between restarts of a task's container.

use std::time::Duration;

/// Exponential back-off between restarts: `first`, doubling, capped at
/// `max`; back to `first` once a container has run for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before the restart that follows `step` quick restarts in a row.
    pub fn delay(&self, step: u32) -> Duration {
        let factor = 2u32.saturating_pow(step.min(31));
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The step of the next restart: the run that just ended resets the
    /// count if it lasted `reset_after`.
    pub fn next_step(&self, step: u32, ran_for: Duration) -> u32 {
        if ran_for >= self.reset_after { 0 } else { step }
    }
}

//! Per-object exponential backoff for failed reconciles: each StreamJob has its own count
//! of consecutive failures, so one failing job never slows the retries of another, and a
//! success resets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The first retry delay.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay before retry number `failures` (1 for the first failure): doubling from
/// [`FIRST_DELAY`], at most [`MAX_DELAY`].
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Consecutive failures per object (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Counts a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock poisoned");
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        retry_delay(*count)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .expect("backoff lock poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let cases = [
            (1, 1),
            (2, 2),
            (3, 4),
            (6, 32),
            (9, 256),
            (10, 300),
            (1000, 300),
        ];
        for (failures, seconds) in cases {
            assert_eq!(
                retry_delay(failures),
                Duration::from_secs(seconds),
                "{failures}"
            );
        }
    }

    #[test]
    fn each_object_has_its_own_count_and_success_resets_it() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("a/x"), Duration::from_secs(1));
        assert_eq!(backoff.failed("a/x"), Duration::from_secs(2));
        assert_eq!(backoff.failed("a/y"), Duration::from_secs(1));
        backoff.succeeded("a/x");
        assert_eq!(backoff.failed("a/x"), Duration::from_secs(1));
        assert_eq!(backoff.failed("a/y"), Duration::from_secs(2));
    }
}

//! Per-job exponential backoff for transient errors: a job that keeps failing is retried less
//! and less often (up to a cap), while every other job keeps its own pace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// First retry delay.
const BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const CAP: Duration = Duration::from_secs(120);

/// A job that has not failed for this long starts over; this also forgets jobs deleted while
/// failing.
const FORGET: Duration = Duration::from_secs(600);

/// Consecutive failures per job, and when the last one happened.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<(String, String), (u32, Instant)>>,
}

impl Backoff {
    /// Counts one more failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: (String, String)) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET);
        let (n, last) = failures.entry(key).or_insert((0, now));
        *n = n.saturating_add(1);
        *last = now;
        jittered(delay(*n), &mut rand::thread_rng())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &(String, String)) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

/// `BASE · 2^(failures-1)`, capped.
fn delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE.saturating_mul(1 << exponent).min(CAP)
}

/// Between half and all of `delay`, so jobs that failed together do not retry together.
fn jittered(delay: Duration, rng: &mut impl Rng) -> Duration {
    delay.mul_f64(rng.gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let delays: Vec<u64> = (1..=10).map(|n| delay(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 120000, 120000]
        );
        assert_eq!(delay(u32::MAX), CAP);
    }

    #[test]
    fn each_job_backs_off_on_its_own_and_success_resets_it() {
        let b = Backoff::default();
        let key = |n: &str| ("ns".to_string(), n.to_string());
        for _ in 0..5 {
            b.failed(key("bad"));
        }
        let bad = b.failed(key("bad"));
        assert!(bad >= delay(6) / 2 && bad <= delay(6), "{bad:?}");
        assert!(
            b.failed(key("other")) <= BASE,
            "another job starts from the base delay"
        );
        b.succeeded(&key("bad"));
        assert!(b.failed(key("bad")) <= BASE);
    }
}

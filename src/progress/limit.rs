//! Reports per job: a token bucket per job, so that a training loop that reports on every step
//! (instead of every few seconds, as the SDK does) is slowed down here and never turns into API
//! server load. Each replica keeps its own buckets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::JobRef;
use crate::bucket::Bucket;

/// Reports a job may send at once.
pub const BURST: f64 = 10.0;
/// Reports a job may send per second, sustained (the SDK sends one every 5 s at most).
pub const PER_SECOND: f64 = 1.0;
/// Most jobs tracked; beyond that the full (idle) buckets go.
const MAX_JOBS: usize = 10_000;

/// The buckets.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<JobRef, Bucket>>,
}

impl Limiter {
    /// Takes one report of `job` at `now`; when the bucket is empty, how long until it is not.
    pub fn take(&self, job: &JobRef, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_JOBS && !buckets.contains_key(job) {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(job.clone())
            .or_insert_with(|| Bucket::full(BURST, PER_SECOND, now))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> JobRef {
        JobRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_burst_passes_then_one_report_per_second() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.take(&job("a"), t0).is_ok(), "report {i}");
        }
        let wait = limiter.take(&job("a"), t0).expect_err("throttled");
        assert_eq!(wait, Duration::from_secs(1));
        // Another job has its own bucket.
        assert!(limiter.take(&job("b"), t0).is_ok());
        let half = t0 + Duration::from_millis(500);
        assert_eq!(
            limiter.take(&job("a"), half).expect_err("half a token"),
            Duration::from_millis(500)
        );
        assert!(limiter.take(&job("a"), t0 + Duration::from_secs(1)).is_ok());
        assert!(limiter.take(&job("a"), t0 + Duration::from_secs(1)).is_err());
        // A job reporting every 5 s, as the SDK does, is never held back.
        let sdk = Limiter::default();
        for i in 0..100 {
            assert!(sdk.take(&job("c"), t0 + Duration::from_secs(5 * i)).is_ok());
        }
    }
}

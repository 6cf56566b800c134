//! A token bucket: so many at once, then so many a second. The status server holds each job's
//! reports to one ([`crate::progress`]); the dashboard's live feed paces what it sends each open
//! page with one ([`crate::dashboard`]).

use std::time::{Duration, Instant};

/// Room for `capacity` at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(capacity: f64, per_second: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            per_second,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes one token at `now`; when there is none, how long until there is.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.ready(now)?;
        self.tokens = self.available(now) - 1.0;
        self.at = now;
        Ok(())
    }

    /// Whether a token is there at `now`, without taking it; when there is none, how long
    /// until there is.
    pub fn ready(&self, now: Instant) -> Result<(), Duration> {
        let available = self.available(now);
        if available >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - available) / self.per_second))
        }
    }

    /// Whether it has refilled to its capacity by `now`: it then holds nothing back that a new
    /// one would not.
    pub fn is_full(&self, now: Instant) -> bool {
        self.available(now) >= self.capacity
    }

    fn available(&self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        (self.tokens + refilled).min(self.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_per_refill() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(3.0, 2.0, t0);
        for i in 0..3 {
            assert!(bucket.take(t0).is_ok(), "take {i}");
        }
        assert_eq!(bucket.ready(t0), Err(Duration::from_millis(500)));
        assert_eq!(bucket.take(t0), Err(Duration::from_millis(500)));
        assert!(!bucket.is_full(t0));
        let quarter = t0 + Duration::from_millis(250);
        assert_eq!(bucket.take(quarter), Err(Duration::from_millis(250)));
        let half = t0 + Duration::from_millis(500);
        // Looking takes nothing.
        assert!(bucket.ready(half).is_ok());
        assert!(bucket.ready(half).is_ok());
        assert!(bucket.take(half).is_ok());
        assert!(bucket.take(half).is_err());
        // Never more than its capacity, however long it rested.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.is_full(later));
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }
}

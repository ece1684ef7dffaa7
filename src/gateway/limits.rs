//! Limits that protect the gateway from too many subscribers and from
//! clients that connect too fast. Over a limit the answer is 429 with the
//! reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts subscribers in total and per token subject.
#[derive(Debug)]
pub struct SubscriberLimits {
    max_total: usize,
    max_per_subject: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_subject: HashMap<String, usize>,
}

/// A subscriber's place; given back when dropped.
#[derive(Debug)]
pub struct SubscriberPermit {
    limits: Arc<SubscriberLimits>,
    subject: String,
}

impl SubscriberLimits {
    pub fn new(max_total: usize, max_per_subject: usize) -> Arc<SubscriberLimits> {
        Arc::new(SubscriberLimits {
            max_total,
            max_per_subject,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new subscriber of `subject`, or says which limit
    /// is reached.
    pub fn acquire(self: &Arc<Self>, subject: &str) -> Result<SubscriberPermit, String> {
        let mut counts = self.lock();
        if counts.total >= self.max_total {
            return Err(format!(
                "the gateway serves its maximum of {} subscribers; retry later",
                self.max_total
            ));
        }
        let mine = counts.per_subject.get(subject).copied().unwrap_or(0);
        if mine >= self.max_per_subject {
            return Err(format!(
                "this token already has {mine} subscribers, the maximum per token"
            ));
        }
        counts.total += 1;
        counts.per_subject.insert(subject.to_string(), mine + 1);
        Ok(SubscriberPermit {
            limits: self.clone(),
            subject: subject.to_string(),
        })
    }

    /// Subscribers now.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

impl Drop for SubscriberPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_subject.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                counts.per_subject.remove(&self.subject);
            }
        }
    }
}

/// A token bucket per client address: `rate` requests per second with
/// bursts of `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Addresses remembered before idle ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request from `addr`, or returns how long until it would be.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        self.check_at(addr, Instant::now())
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            // A bucket refilled to its burst is the same as no bucket.
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        let bucket = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_limits_count_total_and_per_subject() {
        let limits = SubscriberLimits::new(3, 2);
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        assert!(limits.acquire("a").unwrap_err().contains("per token"));
        let _b1 = limits.acquire("b").unwrap();
        assert!(limits.acquire("c").unwrap_err().contains("maximum of 3"));
        drop(a1);
        assert_eq!(limits.total(), 2);
        assert!(limits.acquire("a").is_ok());
    }

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(ip, t0).is_ok());
        }
        let wait = limiter.check_at(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO);
        assert!(limiter.check_at(other, t0).is_ok(), "per address");
        assert!(
            limiter
                .check_at(ip, t0 + Duration::from_millis(600))
                .is_ok()
        );
        assert!(
            limiter
                .check_at(ip, t0 + Duration::from_millis(600))
                .is_err()
        );
    }
}

//! Limits that protect the gateway from too many subscribers and from
//! clients that connect too fast. Over a limit the answer is 429 with the
//! reason.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::proxies::IpKey;

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

/// A token bucket per client ([`IpKey`]: an IPv4 address or an IPv6 /64):
/// `rate` requests per second with bursts of `burst`.
///
/// Buckets are forgotten without scanning them: a bucket untouched for
/// `burst / rate` seconds has refilled, and a full bucket is the same as no
/// bucket. Each shard keeps two generations of buckets; once per refill
/// period the older generation is dropped whole and the current one becomes
/// the older. A bucket used in either generation moves to the current one,
/// so only buckets idle for a full period are forgotten. The map is split
/// into shards (by a hash of the key) so that requests from different
/// clients rarely wait on the same lock.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// How long a bucket takes to refill completely.
    refill: Duration,
    hasher: RandomState,
    shards: Box<[Mutex<Generations>]>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Generations {
    current: HashMap<IpKey, Bucket>,
    previous: HashMap<IpKey, Bucket>,
    /// When `current` started.
    since: Instant,
}

/// Lock shards; a power of two well above the number of cores.
const SHARDS: usize = 16;
/// Clients one shard remembers before it starts a new generation early.
/// Bounds memory under a flood of addresses; a client forgotten early
/// merely gets a fresh burst.
const SHARD_CAPACITY: usize = 50_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        RateLimiter {
            rate,
            burst,
            refill: Duration::try_from_secs_f64(burst / rate).unwrap_or(Duration::MAX),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        since: now,
                    })
                })
                .collect(),
        }
    }

    /// Admits a request from `addr`, or returns how long until it would be.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        self.check_at(addr, Instant::now())
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = IpKey::of(addr);
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        let mut gens = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let age = now.saturating_duration_since(gens.since);
        if age >= self.refill.saturating_mul(2) {
            // Quiet for two periods: every bucket here has refilled.
            // O(1): the maps' entries are plain data, freed in one go.
            gens.current = HashMap::new();
            gens.previous = HashMap::new();
            gens.since = now;
        } else if age >= self.refill || gens.current.len() >= SHARD_CAPACITY {
            gens.previous = std::mem::take(&mut gens.current);
            gens.since = now;
        }
        let found = match gens.current.get(&key) {
            Some(b) => Some(*b),
            None => gens.previous.remove(&key),
        };
        let mut bucket = found.unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        let verdict = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        };
        gens.current.insert(key, bucket);
        verdict
    }

    /// Clients remembered now (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock().unwrap_or_else(|p| p.into_inner());
                g.current.len() + g.previous.len()
            })
            .sum()
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

    #[test]
    fn an_ipv6_client_has_one_bucket_per_64() {
        let limiter = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        for host in ["2001:db8:0:1::1", "2001:db8:0:1::2"] {
            assert!(limiter.check_at(host.parse().unwrap(), t0).is_ok());
        }
        let rotated: IpAddr = "2001:db8:0:1:ffff::3".parse().unwrap();
        assert!(limiter.check_at(rotated, t0).is_err(), "same /64");
        let next: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert!(limiter.check_at(next, t0).is_ok(), "another /64");
    }

    #[test]
    fn idle_buckets_are_forgotten_and_busy_ones_kept() {
        // Refills in 2 s: a generation lasts 2 s.
        let limiter = RateLimiter::new(1.0, 2);
        let busy: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
        for i in 0..5000 {
            assert!(limiter.check_at(addr(i), t0).is_ok());
        }
        assert!(limiter.check_at(busy, t0).is_ok());
        assert!(limiter.check_at(busy, t0).is_ok());
        assert_eq!(limiter.remembered(), 5001);
        // Two periods later every idle bucket is gone...
        let t1 = t0 + Duration::from_millis(2100);
        let t2 = t1 + Duration::from_millis(2100);
        assert!(limiter.check_at(busy, t1).is_ok());
        assert!(limiter.check_at(busy, t1).is_ok());
        assert!(
            limiter.check_at(busy, t1).is_err(),
            "the busy bucket kept its state"
        );
        // ...once traffic touches their shards (1000 new clients reach
        // every shard).
        for i in 10_000..11_000 {
            assert!(limiter.check_at(addr(i), t2).is_ok());
        }
        assert!(limiter.remembered() <= 1001, "{}", limiter.remembered());
    }
}

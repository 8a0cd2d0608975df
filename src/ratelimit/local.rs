//! Local limits: a keyed GCRA limiter (governor) per route, with bounded key state.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::Verdict;

/// Keys held at most per limiter; past it, idle keys are evicted at once.
pub const MAX_KEYS: usize = 100_000;
/// How often (in checks) the key count is looked at.
const SWEEP_EVERY: u64 = 4096;

type Keyed =
    RateLimiter<u64, DashMapStateStore<u64, Prehashed>, DefaultClock, StateInformationMiddleware>;

/// The limiter's keys are already keyed SipHash outputs (seeded at random per process,
/// so no client can aim them at one bucket): the store uses them as their own hash
/// rather than SipHash them twice more (shard, then table) on every check.
#[derive(Clone, Copy, Default)]
pub struct Prehashed;

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedKey;
    fn build_hasher(&self) -> PrehashedKey {
        PrehashedKey(0)
    }
}

pub struct PrehashedKey(u64);

impl std::hash::Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for u64 keys; anything else still spreads.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

pub struct LocalLimiter {
    /// Swapped for an empty one when a flood of keys passes the cap.
    limiter: ArcSwap<Keyed>,
    quota: Quota,
    burst: u32,
    /// Time to replenish one request.
    period: Duration,
    checks: AtomicU64,
    max_keys: usize,
}

impl LocalLimiter {
    pub fn new(requests_per_second: f64, burst: u32) -> LocalLimiter {
        Self::with_max_keys(requests_per_second, burst, MAX_KEYS)
    }

    pub fn with_max_keys(requests_per_second: f64, burst: u32, max_keys: usize) -> LocalLimiter {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(1e-6));
        let burst_nz = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(burst_nz))
            .allow_burst(burst_nz);
        LocalLimiter {
            limiter: ArcSwap::from_pointee(fresh(quota)),
            quota,
            burst: burst.max(1),
            period,
            checks: AtomicU64::new(0),
            max_keys,
        }
    }

    /// Takes one request's worth of budget for `key`, or says when to come back.
    pub fn check(&self, key: u64) -> Verdict {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let limiter = self.limiter.load();
        match limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::Allow {
                    limit: self.burst,
                    remaining,
                    reset_s: self.seconds_for(self.burst - remaining.min(self.burst)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Verdict::Deny {
                    limit: self.burst,
                    retry_after_s: ceil_secs(wait).max(1),
                    reset_s: self.seconds_for(self.burst),
                }
            }
        }
    }

    fn seconds_for(&self, requests: u32) -> u64 {
        ceil_secs(self.period * requests)
    }

    /// Evicts keys whose budget is full again (they hold no information); if a flood
    /// of distinct keys still exceeds the cap, the table starts over empty: memory stays
    /// bounded, at the cost of forgetting partly used budgets.
    pub fn sweep(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        if limiter.len() > self.max_keys {
            log::warn!(
                "rate limiter held {} active keys (cap {}): starting over to bound memory; a flood of distinct keys is under way",
                limiter.len(),
                self.max_keys
            );
            self.limiter.store(Arc::new(fresh(self.quota)));
            return;
        }
        limiter.shrink_to_fit();
    }

    pub fn keys(&self) -> usize {
        self.limiter.load().len()
    }
}

fn fresh(quota: Quota) -> Keyed {
    RateLimiter::dashmap_with_hasher(quota, Prehashed)
        .with_middleware::<StateInformationMiddleware>()
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_deny_with_retry_after() {
        let l = LocalLimiter::new(1.0, 3);
        for expected_remaining in [2, 1, 0] {
            match l.check(7) {
                Verdict::Allow {
                    remaining, limit, ..
                } => {
                    assert_eq!(limit, 3);
                    assert_eq!(remaining, expected_remaining);
                }
                v => panic!("{v:?}"),
            }
        }
        match l.check(7) {
            Verdict::Deny { retry_after_s, .. } => assert_eq!(retry_after_s, 1),
            v => panic!("{v:?}"),
        }
        // another key has its own budget
        assert!(matches!(l.check(8), Verdict::Allow { .. }));
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let l = LocalLimiter::with_max_keys(1.0, 5, 10_000);
        for key in 0..100_000u64 {
            l.check(key);
        }
        l.sweep();
        assert!(l.keys() <= 10_000, "{} keys held", l.keys());
        let l = LocalLimiter::new(1.0, 5);
        for key in 0..100_000u64 {
            l.check(key);
        }
        l.sweep();
        assert!(l.keys() <= MAX_KEYS, "{} keys held", l.keys());
    }
}

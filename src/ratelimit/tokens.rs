//! Token budgets (`[routes.token_limit]`): a request reserves its most likely cost at
//! admission (the stated max output tokens, or `default_reservation`, plus an input
//! estimate) and settles to the usage the agent reports at the end: the difference is
//! refunded or charged. Concurrent requests therefore cannot overshoot the budget by
//! more than what they under-reserved, unlike a limit charged after the fact.
//!
//! Local budgets are token buckets per key (continuous refill of tokens_per_minute / 60
//! a second, at most `burst`; a charge past the reservation may leave a bucket in debt,
//! which later requests wait out). Global budgets keep one bucket per key in Redis for
//! every replica: reservations and settlements are atomic scripts on Redis' clock, and
//! reservations use leases as request limits do (a replica takes a little more than it
//! needs and spends the rest locally for up to `LEASE_TTL_MS`; what a lease did not
//! spend goes back with the next trip). While Redis is unavailable, `on_unavailable`
//! applies, as for request limits.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::local::Prehashed;
use super::store::RedisStore;
use crate::clock::now_ms;
use crate::config::{OnUnavailable, RateLimitScope, TokenLimitRule};

/// How long leased tokens may be spent before they go back.
const LEASE_TTL_MS: u64 = 1000;
/// Buckets (local) or leases (global) held at most; past it idle ones are dropped.
const MAX_KEYS: usize = 100_000;

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVerdict {
    Reserved(Reservation),
    Deny {
        /// Tokens in the bucket now (the `r` of `RateLimit`).
        remaining: u64,
        retry_after_s: u64,
        reset_s: u64,
    },
}

/// Tokens held for one request until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    key: u64,
    pub tokens: u64,
    /// Where the tokens came from: settle there.
    global: bool,
    pub remaining: u64,
    pub reset_s: u64,
}

/// How a settlement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The bucket now reflects the reported usage.
    Settled,
    /// No usage was reported: the reservation stands.
    Unreported,
    /// The shared store did not answer: the reservation stands.
    StoreUnavailable,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Settled => "settled",
            Settled::Unreported => "unreported",
            Settled::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A local bucket: tokens (may be negative: debt) as of `at_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Token buckets by key, in this process.
struct LocalBuckets {
    rate_per_ms: f64,
    burst: f64,
    buckets: DashMap<u64, Bucket, Prehashed>,
    ops: AtomicU64,
}

impl LocalBuckets {
    fn new(tokens_per_second: f64, burst: u64) -> LocalBuckets {
        LocalBuckets {
            rate_per_ms: tokens_per_second / 1000.0,
            burst: burst.max(1) as f64,
            buckets: DashMap::with_hasher(Prehashed),
            ops: AtomicU64::new(0),
        }
    }

    fn refill(&self, b: &mut Bucket, now: u64) {
        b.tokens =
            (b.tokens + now.saturating_sub(b.at_ms) as f64 * self.rate_per_ms).min(self.burst);
        b.at_ms = now;
    }

    /// Takes `want` tokens when the bucket holds them; else says when it will.
    fn reserve(&self, key: u64, want: u64) -> Result<(u64, u64), (u64, u64, u64)> {
        self.sweep();
        let now = now_ms();
        let mut b = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now,
        });
        self.refill(&mut b, now);
        let want_f = want as f64;
        if b.tokens >= want_f {
            b.tokens -= want_f;
            let left = b.tokens.max(0.0);
            Ok((left as u64, self.full_in(left)))
        } else {
            let wait_ms = ((want_f - b.tokens) / self.rate_per_ms).ceil() as u64;
            let left = b.tokens.max(0.0);
            Err((
                left as u64,
                wait_ms.div_ceil(1000).max(1),
                self.full_in(left),
            ))
        }
    }

    /// Gives back (`delta` > 0) or charges (`delta` < 0).
    fn adjust(&self, key: u64, delta: f64) {
        let now = now_ms();
        let mut b = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now,
        });
        self.refill(&mut b, now);
        b.tokens = (b.tokens + delta).min(self.burst);
    }

    fn full_in(&self, tokens: f64) -> u64 {
        ((self.burst - tokens).max(0.0) / self.rate_per_ms / 1000.0).ceil() as u64
    }

    /// Drops buckets that are full again (they hold nothing); a flood of keys past
    /// the cap starts over.
    fn sweep(&self) {
        if self.ops.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 && self.buckets.len() <= MAX_KEYS
        {
            return;
        }
        let now = now_ms();
        self.buckets.retain(|_, b| {
            let full = b.tokens + now.saturating_sub(b.at_ms) as f64 * self.rate_per_ms;
            full < self.burst
        });
        if self.buckets.len() > MAX_KEYS {
            self.buckets.clear();
        }
    }
}

struct Lease {
    tokens: u64,
    expires_ms: u64,
}

struct GlobalBudget {
    store: Arc<RedisStore>,
    on_unavailable: OnUnavailable,
    /// Tokens taken beyond a reservation per trip, to lease.
    batch: u64,
    leases: DashMap<u64, Lease, Prehashed>,
    /// Settlements are failing (logged once per transition).
    settle_failing: AtomicBool,
}

/// The token budget of one route.
pub struct TokenLimiter {
    pub rule: TokenLimitRule,
    route: String,
    /// Local budgets; for global ones, the fallback share while Redis is down.
    local: LocalBuckets,
    global: Option<GlobalBudget>,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenLimiter {
    pub fn new(
        route: &str,
        rule: &TokenLimitRule,
        store: Option<(Arc<RedisStore>, OnUnavailable)>,
    ) -> TokenLimiter {
        let replicas = rule.expected_replicas.max(1) as u64;
        let (rate, burst) = match rule.scope {
            RateLimitScope::Local => (rule.tokens_per_second(), rule.burst),
            RateLimitScope::Global => (
                rule.tokens_per_second() / replicas as f64,
                (rule.burst / replicas).max(1),
            ),
        };
        let global = match (rule.scope, store) {
            (RateLimitScope::Global, Some((store, on_unavailable))) => Some(GlobalBudget {
                store,
                on_unavailable,
                // A twentieth of each replica's share of a second, at most a tenth of
                // the burst: what leases hold is a few percent of the budget at most.
                batch: ((rule.tokens_per_second() / (20.0 * replicas as f64)) as u64)
                    .min(rule.burst / 10),
                leases: DashMap::with_hasher(Prehashed),
                settle_failing: AtomicBool::new(false),
            }),
            _ => None,
        };
        TokenLimiter {
            rule: rule.clone(),
            route: route.to_string(),
            local: LocalBuckets::new(rate, burst),
            global,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// What a request reserves: its stated max output (or `default_reservation`) plus
    /// the input estimate, at most `burst` (so one request can always pass a full
    /// bucket).
    pub fn reservation_for(&self, max_output: Option<u64>, input_estimate: u64) -> u64 {
        (max_output.unwrap_or(self.rule.default_reservation) + input_estimate).min(self.rule.burst)
    }

    fn key(&self, material: &[u8]) -> (u64, [u8; 32]) {
        if self.global.is_none() {
            return (self.hasher.hash_one(material), [0; 32]);
        }
        // Every replica must name the bucket alike: a stable digest, never the raw value.
        let digest: [u8; 32] = Sha256::digest(material).into();
        let key = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        (key, digest)
    }

    fn bucket_name(&self, digest: &[u8; 32]) -> String {
        format!("agentgate:tl:{}:{}", self.route, hex::encode(&digest[..12]))
    }

    /// Reserves `want` tokens for a request counted under `material`.
    pub async fn reserve(&self, material: &[u8], want: u64) -> TokenVerdict {
        let (key, digest) = self.key(material);
        let Some(global) = &self.global else {
            return self.reserve_local(key, want);
        };
        if !global.store.is_up() {
            return self.unavailable(global, key, want);
        }
        let now = now_ms();
        let mut give_back = 0;
        if let Some(mut lease) = global.leases.get_mut(&key) {
            if lease.expires_ms > now && lease.tokens >= want {
                lease.tokens -= want;
                return TokenVerdict::Reserved(Reservation {
                    key,
                    tokens: want,
                    global: true,
                    remaining: lease.tokens,
                    reset_s: 0,
                });
            }
            give_back = std::mem::take(&mut lease.tokens);
        }
        let rate = self.rule.tokens_per_second();
        let Some(grant) = global
            .store
            .reserve_tokens(
                &self.bucket_name(&digest),
                rate,
                self.rule.burst,
                want,
                global.batch,
                give_back,
            )
            .await
        else {
            return self.unavailable(global, key, want);
        };
        let reset_s =
            ((self.rule.burst.saturating_sub(grant.tokens_left)) as f64 / rate).ceil() as u64;
        if grant.granted == 0 {
            return TokenVerdict::Deny {
                remaining: grant.tokens_left,
                retry_after_s: grant.wait_ms.div_ceil(1000).max(1),
                reset_s,
            };
        }
        let extra = grant.granted.saturating_sub(want);
        if extra > 0 {
            global.leases.insert(
                key,
                Lease {
                    tokens: extra,
                    expires_ms: now_ms() + LEASE_TTL_MS,
                },
            );
            if global.leases.len() > MAX_KEYS {
                let now = now_ms();
                global.leases.retain(|_, l| l.expires_ms > now);
            }
        }
        TokenVerdict::Reserved(Reservation {
            key,
            tokens: want,
            global: true,
            remaining: grant.tokens_left,
            reset_s,
        })
    }

    fn reserve_local(&self, key: u64, want: u64) -> TokenVerdict {
        match self.local.reserve(key, want) {
            Ok((remaining, reset_s)) => TokenVerdict::Reserved(Reservation {
                key,
                tokens: want,
                global: false,
                remaining,
                reset_s,
            }),
            Err((remaining, retry_after_s, reset_s)) => TokenVerdict::Deny {
                remaining,
                retry_after_s,
                reset_s,
            },
        }
    }

    fn unavailable(&self, global: &GlobalBudget, key: u64, want: u64) -> TokenVerdict {
        match global.on_unavailable {
            OnUnavailable::Local => self.reserve_local(key, want),
            OnUnavailable::Allow => TokenVerdict::Reserved(Reservation {
                key,
                tokens: 0,
                global: false,
                remaining: self.rule.burst,
                reset_s: 0,
            }),
            OnUnavailable::Deny => TokenVerdict::Deny {
                remaining: 0,
                retry_after_s: 1,
                reset_s: 1,
            },
        }
    }

    /// Settles a reservation to `used` tokens (input + output), where it was made; with
    /// no usage reported (`None`) the reservation stands.
    pub async fn settle(&self, material: &[u8], r: &Reservation, used: Option<u64>) -> Settled {
        let Some(used) = used else {
            return Settled::Unreported;
        };
        let delta = r.tokens as f64 - used as f64;
        if r.tokens == 0
            && !r.global
            && matches!(&self.global, Some(g) if g.on_unavailable == OnUnavailable::Allow)
        {
            // Admitted unmetered while the store was down: nothing was taken.
            return Settled::Settled;
        }
        if !r.global {
            self.local.adjust(r.key, delta);
            return Settled::Settled;
        }
        let Some(global) = &self.global else {
            return Settled::Settled;
        };
        if delta == 0.0 {
            return Settled::Settled;
        }
        let (_, digest) = self.key(material);
        let ok = global
            .store
            .settle_tokens(
                &self.bucket_name(&digest),
                self.rule.tokens_per_second(),
                self.rule.burst,
                delta as i64,
            )
            .await;
        let was_failing = global.settle_failing.swap(!ok, Ordering::Relaxed);
        if ok {
            if was_failing {
                tracing::info!(
                    event = "token_settlement",
                    route = %self.route,
                    "token settlements for route {} reach the rate limit store again",
                    self.route
                );
            }
            Settled::Settled
        } else {
            if !was_failing {
                tracing::warn!(
                    event = "token_settlement",
                    route = %self.route,
                    "token settlement for route {} failed: the rate limit store did not answer; reservations stand as charged until it returns (counted in agentgate_token_settlements_total{{result=\"store_unavailable\"}})",
                    self.route
                );
            }
            Settled::StoreUnavailable
        }
    }

    pub fn keys(&self) -> usize {
        self.local.buckets.len() + self.global.as_ref().map_or(0, |g| g.leases.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitKey;

    fn rule(tpm: u64, burst: u64) -> TokenLimitRule {
        TokenLimitRule {
            key: RateLimitKey::Global,
            tokens_per_minute: tpm,
            burst,
            scope: RateLimitScope::Local,
            default_reservation: 100,
            expected_replicas: 1,
        }
    }

    #[tokio::test]
    async fn reserve_then_refund_and_charge() {
        let l = TokenLimiter::new("r", &rule(60, 1000), None);
        let r = match l.reserve(b"k", 600).await {
            TokenVerdict::Reserved(r) => r,
            v => panic!("{v:?}"),
        };
        assert_eq!(r.remaining, 400);
        // 600 held: a second request of 600 does not fit.
        assert!(matches!(
            l.reserve(b"k", 600).await,
            TokenVerdict::Deny { .. }
        ));
        // It used 100: 500 come back.
        assert_eq!(l.settle(b"k", &r, Some(100)).await, Settled::Settled);
        let r2 = match l.reserve(b"k", 600).await {
            TokenVerdict::Reserved(r) => r,
            v => panic!("{v:?}"),
        };
        assert!((299..=301).contains(&r2.remaining), "{}", r2.remaining);
        // It used 900: 300 more are charged, the bucket is empty.
        assert_eq!(l.settle(b"k", &r2, Some(900)).await, Settled::Settled);
        match l.reserve(b"k", 1).await {
            TokenVerdict::Deny { retry_after_s, .. } => assert!(retry_after_s >= 1),
            v => panic!("{v:?}"),
        }
        // Unreported usage leaves the reservation standing.
        assert_eq!(l.settle(b"other", &r2, None).await, Settled::Unreported);
    }

    #[tokio::test]
    async fn deny_says_when_it_fits() {
        // 6000 a minute = 100 a second, burst 500.
        let l = TokenLimiter::new("r", &rule(6000, 500), None);
        assert!(matches!(
            l.reserve(b"k", 500).await,
            TokenVerdict::Reserved(_)
        ));
        match l.reserve(b"k", 300).await {
            TokenVerdict::Deny {
                retry_after_s,
                reset_s,
                ..
            } => {
                assert_eq!(retry_after_s, 3);
                assert_eq!(reset_s, 5);
            }
            v => panic!("{v:?}"),
        }
        // Keys are independent.
        assert!(matches!(
            l.reserve(b"j", 500).await,
            TokenVerdict::Reserved(_)
        ));
    }

    #[test]
    fn reservations_are_capped_at_burst() {
        let l = TokenLimiter::new("r", &rule(6000, 500), None);
        assert_eq!(l.reservation_for(Some(64), 10), 74);
        assert_eq!(l.reservation_for(None, 10), 110);
        assert_eq!(l.reservation_for(Some(10_000), 10), 500);
    }
}

//! Rate limiting per route and key: local limits with governor's GCRA, global limits
//! shared by every replica through Redis, the key a request is counted under, and the
//! `ratelimit-*` headers.
//!
//! Global limits avoid a Redis round trip per request with leases: an instance takes a
//! small batch of tokens from the shared bucket and spends them locally; a lease lives
//! at most `LEASE_TTL`, so tokens never sit unused for long. Batches are sized so that
//! what all replicas hold at once stays a few percent of the rate.

pub mod local;
pub mod store;
pub mod tokens;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::config::{OnUnavailable, RateLimitKey, RateLimitRule, RateLimitScope};
use local::LocalLimiter;
use store::RedisStore;

/// How long leased tokens may be spent before they lapse.
const LEASE_TTL_MS: u64 = 1000;
/// Leases held at most per route limiter (one per active key).
const MAX_LEASES: usize = 100_000;

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        limit: u32,
        remaining: u32,
        reset_s: u64,
    },
    Deny {
        limit: u32,
        retry_after_s: u64,
        reset_s: u64,
    },
}

/// What identifies the caller for a limit's key, before hashing.
pub fn key_material<'a>(
    key: &RateLimitKey,
    client_ip: IpAddr,
    tenant: Option<&'a str>,
    headers: &'a HeaderMap,
    ip_buf: &'a mut [u8; 16],
) -> &'a [u8] {
    match key {
        RateLimitKey::Global => b"",
        RateLimitKey::ClientIp => {
            let bytes = match client_ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            *ip_buf = bytes;
            &ip_buf[..]
        }
        RateLimitKey::ApiKey => match tenant {
            Some(t) => t.as_bytes(),
            None => crate::auth::presented_key(headers).unwrap_or(b""),
        },
        RateLimitKey::Header(name) => headers.get(name).map(|v| v.as_bytes()).unwrap_or(b""),
    }
}

struct Lease {
    tokens: u32,
    expires_ms: u64,
}

/// The limiter of one route.
pub struct RouteLimiter {
    pub rule: RateLimitRule,
    route: String,
    /// Local limits; for global ones, the fallback share while Redis is down.
    local: LocalLimiter,
    global: Option<Global>,
    hasher: std::collections::hash_map::RandomState,
}

struct Global {
    store: Arc<RedisStore>,
    on_unavailable: OnUnavailable,
    batch: u32,
    leases: DashMap<u64, Lease>,
    checks: AtomicU64,
}

impl RouteLimiter {
    pub fn new(
        route: &str,
        rule: &RateLimitRule,
        store: Option<(Arc<RedisStore>, OnUnavailable)>,
    ) -> RouteLimiter {
        let (rate, burst) = match rule.scope {
            RateLimitScope::Local => (rule.requests_per_second, rule.burst),
            RateLimitScope::Global => {
                let n = rule.expected_replicas.max(1);
                (rule.requests_per_second / n as f64, (rule.burst / n).max(1))
            }
        };
        let global = match (rule.scope, store) {
            (RateLimitScope::Global, Some((store, on_unavailable))) => Some(Global {
                store,
                on_unavailable,
                // A twentieth of each replica's share per trip to Redis, at least one.
                batch: ((rule.requests_per_second / (20.0 * rule.expected_replicas.max(1) as f64))
                    as u32)
                    .clamp(1, 100),
                leases: DashMap::new(),
                checks: AtomicU64::new(0),
            }),
            _ => None,
        };
        RouteLimiter {
            rule: rule.clone(),
            route: route.to_string(),
            local: LocalLimiter::new(rate, burst),
            global,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Seconds a full burst takes to refill: the policy window of `RateLimit-Policy`.
    pub fn window_s(&self) -> u64 {
        (self.rule.burst as f64 / self.rule.requests_per_second).ceil() as u64
    }

    pub fn keys(&self) -> usize {
        self.local.keys() + self.global.as_ref().map(|g| g.leases.len()).unwrap_or(0)
    }

    /// Decides one request counted under `material`.
    pub async fn check(&self, material: &[u8]) -> Verdict {
        let Some(global) = &self.global else {
            return self.local.check(self.hasher.hash_one(material));
        };
        // Every replica must name the bucket alike: a stable digest, never the raw value.
        let digest = Sha256::digest(material);
        let key = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        if !global.store.is_up() {
            return self.unavailable(global, key);
        }
        if let Some(v) = self.spend_lease(global, key) {
            return v;
        }
        let bucket = format!("agentgate:rl:{}:{}", self.route, hex::encode(&digest[..12]));
        match global
            .store
            .acquire(
                &bucket,
                self.rule.requests_per_second,
                self.rule.burst,
                global.batch,
            )
            .await
        {
            None => self.unavailable(global, key),
            Some(grant) if grant.granted == 0 => Verdict::Deny {
                limit: self.rule.burst,
                retry_after_s: grant.wait_ms.div_ceil(1000).max(1),
                reset_s: self.full_in(grant.tokens_left),
            },
            Some(grant) => {
                if grant.granted > 1 {
                    global.leases.insert(
                        key,
                        Lease {
                            tokens: grant.granted - 1,
                            expires_ms: now_ms() + LEASE_TTL_MS,
                        },
                    );
                    self.sweep_leases(global);
                }
                Verdict::Allow {
                    limit: self.rule.burst,
                    remaining: grant.tokens_left,
                    reset_s: self.full_in(grant.tokens_left),
                }
            }
        }
    }

    fn spend_lease(&self, global: &Global, key: u64) -> Option<Verdict> {
        let mut lease = global.leases.get_mut(&key)?;
        if lease.tokens == 0 || lease.expires_ms <= now_ms() {
            return None;
        }
        lease.tokens -= 1;
        Some(Verdict::Allow {
            limit: self.rule.burst,
            remaining: lease.tokens,
            reset_s: self.full_in(lease.tokens),
        })
    }

    fn sweep_leases(&self, global: &Global) {
        if global.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023
            || global.leases.len() > MAX_LEASES
        {
            let now = now_ms();
            global
                .leases
                .retain(|_, l| l.expires_ms > now && l.tokens > 0);
            if global.leases.len() > MAX_LEASES {
                global.leases.clear();
            }
        }
    }

    fn unavailable(&self, global: &Global, key: u64) -> Verdict {
        match global.on_unavailable {
            OnUnavailable::Local => self.local.check(key),
            OnUnavailable::Allow => Verdict::Allow {
                limit: self.rule.burst,
                remaining: self.rule.burst,
                reset_s: 0,
            },
            OnUnavailable::Deny => Verdict::Deny {
                limit: self.rule.burst,
                retry_after_s: 1,
                reset_s: 1,
            },
        }
    }

    /// Seconds until a bucket holding `tokens` is full again.
    fn full_in(&self, tokens: u32) -> u64 {
        let missing = self.rule.burst.saturating_sub(tokens) as f64;
        (missing / self.rule.requests_per_second).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: RateLimitKey) -> RateLimitRule {
        RateLimitRule {
            key,
            requests_per_second: 1.0,
            burst: 2,
            scope: RateLimitScope::Local,
            expected_replicas: 1,
        }
    }

    #[test]
    fn key_material_per_kind() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        headers.insert("x-api-key", "secret".parse().unwrap());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            key_material(&RateLimitKey::Global, ip, None, &headers, &mut buf),
            b""
        );
        let h = rule(RateLimitKey::Header("x-tenant".parse().unwrap()));
        assert_eq!(key_material(&h.key, ip, None, &headers, &mut buf), b"acme");
        assert_eq!(
            key_material(
                &RateLimitKey::ApiKey,
                ip,
                Some("tenant-a"),
                &headers,
                &mut buf
            ),
            b"tenant-a"
        );
        assert_eq!(
            key_material(&RateLimitKey::ApiKey, ip, None, &headers, &mut buf),
            b"secret"
        );
        assert_eq!(
            key_material(&RateLimitKey::ClientIp, ip, None, &headers, &mut buf).len(),
            16
        );
    }

    #[tokio::test]
    async fn local_route_limiter_keys_are_independent() {
        let l = RouteLimiter::new("r", &rule(RateLimitKey::ClientIp), None);
        assert!(matches!(l.check(b"a").await, Verdict::Allow { .. }));
        assert!(matches!(l.check(b"a").await, Verdict::Allow { .. }));
        assert!(matches!(l.check(b"a").await, Verdict::Deny { .. }));
        assert!(matches!(l.check(b"b").await, Verdict::Allow { .. }));
    }
}

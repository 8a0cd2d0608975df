//! Sticky-free load balancing: backend selection (round robin, random, least in flight
//! by power of two choices), active health checks and passive ejection.

pub mod backend;
pub mod concurrency;
pub mod health;
pub mod peer;
pub mod retry_budget;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::clock::{now_ms, recent_ms};
use crate::config::{BalanceMode, Upstream};
pub use backend::{BackendRegistry, BackendState, InFlightGuard};

/// Upstreams may list at most this many backends (tried backends are a bit set).
pub const MAX_BACKENDS: usize = 64;

/// One upstream's backends and how to choose among them.
pub struct UpstreamPool {
    pub config: Arc<Upstream>,
    pub backends: Vec<Arc<BackendState>>,
    next: AtomicUsize,
    /// `retry_budget` (counted afresh from a reload).
    pub retry_budget: retry_budget::RetryBudget,
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// No backend of the upstream is healthy.
    NoneHealthy,
}

impl UpstreamPool {
    pub fn new(config: Arc<Upstream>, registry: &BackendRegistry) -> Self {
        let backends = config
            .backends
            .iter()
            .map(|b| registry.state_for(&config.name, b))
            .collect();
        Self {
            retry_budget: retry_budget::RetryBudget::new(config.retry_budget),
            config,
            backends,
            next: AtomicUsize::new(0),
        }
    }

    pub fn healthy_count(&self) -> usize {
        let now = now_ms();
        self.backends.iter().filter(|b| b.is_available(now)).count()
    }

    /// Chooses a backend index. `tried` is a bit set of indexes already tried for this
    /// request: they are avoided while any other healthy backend remains.
    pub fn select(&self, tried: u64) -> Result<usize, NoBackend> {
        let now = recent_ms();
        let n = self.backends.len().min(MAX_BACKENDS);
        let mut available: u64 = 0;
        for (i, b) in self.backends.iter().take(n).enumerate() {
            if b.is_available(now) {
                available |= 1 << i;
            }
        }
        if available == 0 {
            return Err(NoBackend::NoneHealthy);
        }
        let fresh = available & !tried;
        let candidates = if fresh != 0 { fresh } else { available };
        let count = candidates.count_ones() as usize;
        let pick = match self.config.balance {
            BalanceMode::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed) % count;
                nth_set_bit(candidates, k)
            }
            BalanceMode::Random => nth_set_bit(candidates, rand::thread_rng().gen_range(0..count)),
            BalanceMode::LeastInFlight => {
                self.two_choices(candidates, count, |b| b.in_flight() as f64)
            }
            BalanceMode::PeakEwma => self.two_choices(candidates, count, |b| b.peak_ewma_cost(now)),
        };
        Ok(pick)
    }
}

impl UpstreamPool {
    /// Power of two choices: two distinct random candidates, the lower `cost` wins.
    fn two_choices(
        &self,
        candidates: u64,
        count: usize,
        cost: impl Fn(&BackendState) -> f64,
    ) -> usize {
        if count == 1 {
            return nth_set_bit(candidates, 0);
        }
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..count);
        let mut b = rng.gen_range(0..count - 1);
        if b >= a {
            b += 1;
        }
        let (ia, ib) = (nth_set_bit(candidates, a), nth_set_bit(candidates, b));
        if cost(&self.backends[ib]) < cost(&self.backends[ia]) {
            ib
        } else {
            ia
        }
    }
}

/// Index of the k-th (0-based) set bit of `bits`; `bits` has more than k set bits.
fn nth_set_bit(mut bits: u64, k: usize) -> usize {
    for _ in 0..k {
        bits &= bits - 1;
    }
    bits.trailing_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthSettings;
    use std::time::Duration;

    fn pool(mode: BalanceMode, n: u16) -> UpstreamPool {
        let upstream = Upstream {
            name: "u".into(),
            index: 0,
            backends: (0..n)
                .map(|i| crate::config::BackendAddr::literal(([127, 0, 0, 1], 9000 + i).into()))
                .collect(),
            names: Vec::new(),
            resolve_interval: Duration::from_secs(5),
            balance: mode,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            retries: 1,
            retry_budget: Upstream::DEFAULT_RETRY_BUDGET,
            max_in_flight: 0,
            queue_timeout: Duration::ZERO,
            adaptive_concurrency: None,
            protocol: crate::config::UpstreamProtocol::Http1,
            tls: None,
            health: HealthSettings {
                path: "/".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                unhealthy_after: 1,
                healthy_after: 1,
                eject_after: 1,
                eject_for: Duration::from_secs(1),
                max_eject_for: Duration::from_secs(300),
                grpc: false,
            },
        };
        UpstreamPool::new(Arc::new(upstream), &BackendRegistry::default())
    }

    #[test]
    fn nth_bit() {
        assert_eq!(nth_set_bit(0b1011, 0), 0);
        assert_eq!(nth_set_bit(0b1011, 1), 1);
        assert_eq!(nth_set_bit(0b1011, 2), 3);
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let p = pool(BalanceMode::RoundRobin, 3);
        let picks: Vec<usize> = (0..6).map(|_| p.select(0).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        for _ in 0..10 {
            assert_ne!(p.select(0b010).unwrap(), 1);
        }
        // every backend tried: any healthy one is allowed again
        assert!(p.select(0b111).is_ok());
    }

    #[test]
    fn least_in_flight_avoids_busy_backend() {
        let p = pool(BalanceMode::LeastInFlight, 2);
        let _busy: Vec<_> = (0..5).map(|_| p.backends[0].begin_request()).collect();
        for _ in 0..50 {
            assert_eq!(p.select(0).unwrap(), 1);
        }
    }

    #[test]
    fn unhealthy_backends_get_nothing() {
        let p = pool(BalanceMode::Random, 3);
        p.backends[0].record_check(false, 1, 1);
        p.backends[2].eject_for(60_000);
        for _ in 0..50 {
            assert_eq!(p.select(0).unwrap(), 1);
        }
        p.backends[1].record_check(false, 1, 1);
        assert_eq!(p.select(0), Err(NoBackend::NoneHealthy));
    }
}

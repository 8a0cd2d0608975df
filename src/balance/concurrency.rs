//! Per-upstream concurrency caps (`max_in_flight`, `[adaptive_concurrency]`): a request
//! takes a slot before an agent is chosen and gives it back when its answer ends (under
//! an adaptive cap, a stream gives it back at its first byte, so long generations do not
//! hold the cap). Past the cap a request waits in a first-in first-out queue, at most
//! as many waiters as the cap, for up to `queue_timeout`; then it is refused.
//!
//! While nobody waits, taking and giving back a slot is one atomic operation each; the
//! queue's lock is taken only by a request that must wait and by a release that hands
//! its slot to a waiter.
//!
//! The adaptive cap follows the agents' latency in the manner of Envoy's adaptive
//! concurrency filter: it measures the agents' unloaded latency (minRTT) with the cap
//! pinned at `min_limit`, then every 100 ms compares the window's average latency with
//! it: `limit = limit x (1.1 x minRTT / sampled) + sqrt(limit)`, the gradient clamped to
//! 0.5..2. Latency near minRTT lets the limit grow; latency rising means queueing at the
//! agents, and the limit shrinks until it stops. minRTT is measured again every minute,
//! so a slower or faster agent fleet is followed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::config::{AdaptiveConcurrency, Upstream};
use crate::observe::metrics as observe_metrics;

/// Why a slot was not had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overloaded {
    /// The queue was full (or there is none): refused at once.
    QueueFull,
    /// Waited `queue_timeout` without a slot.
    TimedOut,
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

/// The slots of one upstream.
pub struct ConcurrencyLimit {
    in_flight: AtomicU32,
    /// The cap in force (fixed, or the adaptive limit capped by `max_in_flight`).
    limit: AtomicU32,
    waiters: AtomicU32,
    queue: Mutex<VecDeque<Waiter>>,
    next_id: AtomicU64,
    queue_timeout: Duration,
    adaptive: Option<Adaptive>,
    /// `agentgate_upstream_concurrency_limit{upstream}`.
    gauge: Option<metrics::Gauge>,
    /// What it was made from: a reload that keeps these keeps the limiter (and the
    /// slots held in it).
    pub settings: (u32, Duration, Option<AdaptiveConcurrency>),
}

/// A slot; given back when dropped (or earlier, with [`Slot::release`]).
pub struct Slot {
    limit: Option<Arc<ConcurrencyLimit>>,
    started_ms: u64,
}

impl Slot {
    /// Gives the slot back now, with the latency the request saw (for the adaptive cap).
    pub fn release(&mut self, latency: Option<Duration>) {
        self.sample(latency);
        if let Some(limit) = self.limit.take() {
            limit.give_back();
        }
    }

    /// Feeds the adaptive cap the request's latency and keeps the slot.
    pub fn sample(&mut self, latency: Option<Duration>) {
        if let (Some(limit), Some(l)) = (&self.limit, latency) {
            if let Some(a) = &limit.adaptive {
                a.sample(l, limit);
            }
        }
    }

    /// When the slot was taken (`clock::now_ms`).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release(None);
    }
}

impl ConcurrencyLimit {
    /// A cap of `max_in_flight` (0: none but the adaptive one) and/or an adaptive one.
    pub fn new(
        max_in_flight: u32,
        queue_timeout: Duration,
        adaptive: Option<AdaptiveConcurrency>,
    ) -> ConcurrencyLimit {
        let ceiling = if max_in_flight == 0 {
            u32::MAX
        } else {
            max_in_flight
        };
        let start = match adaptive {
            Some(a) => a.min_limit.min(ceiling),
            None => ceiling,
        };
        ConcurrencyLimit {
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(start),
            waiters: AtomicU32::new(0),
            queue: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            queue_timeout,
            adaptive: adaptive.map(|a| Adaptive::new(a, ceiling)),
            gauge: None,
            settings: (max_in_flight, queue_timeout, adaptive),
        }
    }

    /// The limiter of an upstream with a cap (`None` without one), its limit exported
    /// as `agentgate_upstream_concurrency_limit`.
    pub fn for_upstream(u: &Upstream) -> Option<ConcurrencyLimit> {
        if !u.is_capped() {
            return None;
        }
        let mut l = ConcurrencyLimit::new(u.max_in_flight, u.queue_timeout, u.adaptive_concurrency);
        let gauge = observe_metrics::concurrency_limit(&u.name);
        gauge.set(l.limit() as f64);
        l.gauge = Some(gauge);
        Some(l)
    }

    /// The settings this limiter was made from match `u`'s.
    pub fn fits(&self, u: &Upstream) -> bool {
        self.settings == (u.max_in_flight, u.queue_timeout, u.adaptive_concurrency)
    }

    /// The cap in force now.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a stream gives its slot back at its first byte.
    pub fn releases_streams_at_first_byte(&self) -> bool {
        self.adaptive.is_some()
    }

    fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            limit: Some(Arc::clone(self)),
            started_ms: now_ms(),
        }
    }

    /// Takes a slot, waiting for one up to `queue_timeout` behind earlier waiters.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Overloaded> {
        // Nobody waits: take a free slot directly (waiters go first, in order).
        if self.waiters.load(Ordering::SeqCst) == 0 && self.try_take() {
            return Ok(self.slot());
        }
        if self.queue_timeout.is_zero() {
            return Err(Overloaded::QueueFull);
        }
        let (id, rx) = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Counted before the last try: a release that misses this waiter has
            // already freed the slot this try takes.
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if queue.is_empty() && self.try_take() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Ok(self.slot());
            }
            if queue.len() >= self.limit().max(1) as usize {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Err(Overloaded::QueueFull);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            queue.push_back(Waiter { id, wake: tx });
            (id, rx)
        };
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(())) => Ok(self.slot()),
            _ => {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = queue.iter().position(|w| w.id == id) {
                    queue.remove(at);
                    self.waiters.fetch_sub(1, Ordering::SeqCst);
                    Err(Overloaded::TimedOut)
                } else {
                    // Handed a slot as the wait ended: it is ours.
                    Ok(self.slot())
                }
            }
        }
    }

    /// A slot comes back: to the first waiter still waiting, else to the pool.
    fn give_back(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    /// Hands free slots to waiters in arrival order.
    fn wake_waiters(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while !queue.is_empty() && self.try_take() {
            let Some(w) = queue.pop_front() else {
                break;
            };
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            if w.wake.send(()).is_err() {
                // It stopped waiting (its client left): the slot is free again.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn set_limit(&self, limit: u32) {
        let before = self.limit.swap(limit, Ordering::SeqCst);
        if let (Some(g), true) = (&self.gauge, before != limit) {
            g.set(limit as f64);
        }
        if limit > before && self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake_waiters();
        }
    }
}

/// How long one sampling window of the adaptive cap lasts.
const WINDOW_MS: u64 = 100;
/// Samples the minRTT measurement takes (at `min_limit`).
const MIN_RTT_SAMPLES: u64 = 25;
/// How often minRTT is measured again.
const MIN_RTT_EVERY_MS: u64 = 60_000;

/// The adaptive cap's measurements.
struct Adaptive {
    bounds: AdaptiveConcurrency,
    /// `max_in_flight` (or no cap): the adaptive limit never exceeds it.
    ceiling: u32,
    /// Latency sums of the window under way.
    sum_us: AtomicU64,
    count: AtomicU64,
    window_end_ms: AtomicU64,
    state: Mutex<Gradient>,
}

struct Gradient {
    /// The limit as a real number (the integer one is what `ConcurrencyLimit` enforces).
    limit: f64,
    /// The agents' unloaded latency, once measured.
    min_rtt_us: Option<f64>,
    /// Measuring minRTT: the limit is pinned at `min_limit` until enough samples came.
    measuring: bool,
    measure_sum_us: f64,
    measure_count: u64,
    next_measure_ms: u64,
    /// The limit before a re-measurement, restored after it.
    limit_before: f64,
}

impl Adaptive {
    fn new(bounds: AdaptiveConcurrency, ceiling: u32) -> Adaptive {
        Adaptive {
            bounds,
            ceiling,
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
            window_end_ms: AtomicU64::new(0),
            state: Mutex::new(Gradient {
                limit: bounds.min_limit as f64,
                min_rtt_us: None,
                measuring: true,
                measure_sum_us: 0.0,
                measure_count: 0,
                next_measure_ms: 0,
                limit_before: bounds.min_limit as f64,
            }),
        }
    }

    fn max(&self) -> f64 {
        self.bounds.max_limit.min(self.ceiling) as f64
    }

    fn min(&self) -> f64 {
        (self.bounds.min_limit as f64).min(self.max())
    }

    /// One request's latency: added to the window; the request that ends a window
    /// updates the limit (others never wait for it).
    fn sample(&self, latency: Duration, limit: &ConcurrencyLimit) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let end = self.window_end_ms.load(Ordering::Relaxed);
        if now < end {
            return;
        }
        let Ok(mut g) = self.state.try_lock() else {
            return;
        };
        if self
            .window_end_ms
            .compare_exchange(end, now + WINDOW_MS, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let (sum, count) = (
            self.sum_us.swap(0, Ordering::Relaxed),
            self.count.swap(0, Ordering::Relaxed),
        );
        if count == 0 {
            return;
        }
        let sampled = sum as f64 / count as f64;
        let next = self.update(&mut g, sampled, count, now);
        limit.set_limit(next);
    }

    /// The gradient step for one window's average latency; returns the new limit.
    fn update(&self, g: &mut Gradient, sampled_us: f64, count: u64, now: u64) -> u32 {
        if g.measuring {
            g.measure_sum_us += sampled_us * count as f64;
            g.measure_count += count;
            if g.measure_count >= MIN_RTT_SAMPLES {
                g.min_rtt_us = Some((g.measure_sum_us / g.measure_count as f64).max(1.0));
                g.measuring = false;
                g.limit = g.limit_before.max(self.min());
                g.next_measure_ms = now + MIN_RTT_EVERY_MS;
            }
            return if g.measuring {
                self.min() as u32
            } else {
                g.limit.round() as u32
            };
        }
        if now >= g.next_measure_ms {
            // Pin the cap low for a moment to see the agents unloaded again.
            g.measuring = true;
            g.measure_sum_us = 0.0;
            g.measure_count = 0;
            g.limit_before = g.limit;
            return self.min() as u32;
        }
        let min_rtt = g.min_rtt_us.unwrap_or(sampled_us);
        let gradient = ((1.1 * min_rtt) / sampled_us.max(1.0)).clamp(0.5, 2.0);
        let headroom = g.limit.sqrt();
        g.limit = (g.limit * gradient + headroom).clamp(self.min(), self.max());
        g.limit.round() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(cap: u32, queue_ms: u64) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(
            cap,
            Duration::from_millis(queue_ms),
            None,
        ))
    }

    #[tokio::test]
    async fn a_full_cap_refuses_at_once_without_a_queue() {
        let l = fixed(2, 0);
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.acquire().await.err(), Some(Overloaded::QueueFull));
        drop(a);
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_and_time_out() {
        let l = fixed(1, 2000);
        let first = l.acquire().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (l, order) = (Arc::clone(&l), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let slot = l.acquire().await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            }));
            // Arrivals a little apart, so their order is known.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            l.waiters.load(Ordering::SeqCst),
            1,
            "queue holds at most the cap"
        );
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // The cap is 1: one waiter fit the queue; the other two were refused at once
        // and pushed themselves first.
        let got = order.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
        assert_eq!(
            *got.last().unwrap(),
            0,
            "the queued one is served when the slot frees: {got:?}"
        );
        let l = fixed(1, 50);
        let _held = l.acquire().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(l.acquire().await.err(), Some(Overloaded::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert_eq!(l.waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_larger_queue_serves_everyone_in_order() {
        let l = fixed(4, 5000);
        let held: Vec<Slot> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(l.acquire().await.unwrap());
            }
            v
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (l, order) = (Arc::clone(&l), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = l.acquire().await.unwrap();
                order.lock().unwrap().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A fifth waiter finds the queue (as long as the cap) full.
        assert_eq!(l.acquire().await.err(), Some(Overloaded::QueueFull));
        for slot in held {
            drop(slot);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn the_gradient_grows_near_min_rtt_and_shrinks_when_latency_rises() {
        let a = Adaptive::new(
            AdaptiveConcurrency {
                min_limit: 4,
                max_limit: 100,
            },
            u32::MAX,
        );
        let mut g = a.state.lock().unwrap();
        // minRTT: 20 ms over the first samples, at the pinned limit.
        assert_eq!(a.update(&mut g, 20_000.0, 30, 0), 4);
        assert_eq!(g.min_rtt_us, Some(20_000.0));
        // Latency at minRTT: the limit grows.
        let mut limit = 4;
        for t in 1..10 {
            limit = a.update(&mut g, 20_000.0, 10, t * 100);
        }
        assert!(limit > 20, "{limit}");
        // Latency twice minRTT: it shrinks.
        let grown = limit;
        for t in 10..20 {
            limit = a.update(&mut g, 45_000.0, 10, t * 100);
        }
        assert!(limit < grown / 2, "{grown} -> {limit}");
        assert!(limit >= 4);
        // A minute on, minRTT is measured again at the pinned limit.
        assert_eq!(a.update(&mut g, 20_000.0, 10, 61_000), 4);
    }
}

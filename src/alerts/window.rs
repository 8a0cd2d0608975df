//! Sliding windows of request outcomes in fixed-size per-second rings: recording is a
//! handful of relaxed atomic adds (no allocation, no lock), memory is fixed by the
//! longest alert window, and reading sums the slots of the last N seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::observe::metrics::LATENCY_BUCKETS;

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1; // + overflow (+Inf)

struct Slot {
    /// The second this slot holds (seconds since the clock's epoch, plus one so zero
    /// means never used).
    second: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    first_byte: [AtomicU64; BUCKETS],
    first_byte_count: AtomicU64,
    /// Time to first token of AI routes' requests.
    ttft: [AtomicU64; BUCKETS],
    /// Input + output tokens of AI routes' requests.
    tokens: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Slot {
            second: AtomicU64::new(0),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            first_byte: std::array::from_fn(|_| AtomicU64::new(0)),
            first_byte_count: AtomicU64::new(0),
            ttft: std::array::from_fn(|_| AtomicU64::new(0)),
            tokens: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.rate_limited.store(0, Ordering::Relaxed);
        self.first_byte_count.store(0, Ordering::Relaxed);
        self.tokens.store(0, Ordering::Relaxed);
        for b in self
            .latency
            .iter()
            .chain(self.first_byte.iter())
            .chain(self.ttft.iter())
        {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// One request as the windows see it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub error: bool,
    pub rate_limited: bool,
    pub latency_s: f64,
    pub first_byte_s: Option<f64>,
    /// On AI routes: time to first token, when content came.
    pub ttft_s: Option<f64>,
    /// On AI routes: input + output tokens.
    pub tokens: u64,
}

/// An outcome with its buckets found.
struct Placed {
    error: bool,
    rate_limited: bool,
    latency: usize,
    first_byte: Option<usize>,
    ttft: Option<usize>,
    tokens: u64,
}

impl Placed {
    fn of(o: &Outcome) -> Placed {
        Placed {
            error: o.error,
            rate_limited: o.rate_limited,
            latency: bucket_of(o.latency_s),
            first_byte: o.first_byte_s.map(bucket_of),
            ttft: o.ttft_s.map(bucket_of),
            tokens: o.tokens,
        }
    }
}

/// Sums over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowSums {
    pub total: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub latency: [u64; BUCKETS],
    pub first_byte: [u64; BUCKETS],
    pub first_byte_count: u64,
    pub ttft: [u64; BUCKETS],
    pub tokens: u64,
}

pub struct Ring {
    slots: Box<[Slot]>,
}

fn bucket_of(seconds: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|le| seconds <= *le)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// The longest window a ring answers.
const MAX_SECONDS: u64 = 3600;

impl Ring {
    /// A ring that can answer windows up to `seconds` long.
    pub fn new(seconds: u64) -> Ring {
        let n = seconds.clamp(1, MAX_SECONDS) as usize + 1;
        Ring {
            slots: (0..n).map(|_| Slot::new()).collect(),
        }
    }

    /// The longest window it answers.
    pub fn seconds(&self) -> u64 {
        self.slots.len() as u64 - 1
    }

    fn slot_for(&self, now_s: u64) -> &Slot {
        let stamp = now_s + 1;
        let slot = &self.slots[(now_s % self.slots.len() as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != stamp
            && slot
                .second
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // First writer of a new second clears what the slot held a ring ago.
            slot.reset();
        }
        slot
    }

    pub fn record(&self, now_s: u64, o: Outcome) {
        self.record_placed(now_s, &Placed::of(&o));
    }

    /// Records an outcome whose buckets are already found (one search serves every
    /// ring it goes to).
    fn record_placed(&self, now_s: u64, p: &Placed) {
        let slot = self.slot_for(now_s);
        slot.total.fetch_add(1, Ordering::Relaxed);
        if p.error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if p.rate_limited {
            slot.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[p.latency].fetch_add(1, Ordering::Relaxed);
        if let Some(fb) = p.first_byte {
            slot.first_byte[fb].fetch_add(1, Ordering::Relaxed);
            slot.first_byte_count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = p.ttft {
            slot.ttft[t].fetch_add(1, Ordering::Relaxed);
        }
        if p.tokens > 0 {
            slot.tokens.fetch_add(p.tokens, Ordering::Relaxed);
        }
    }

    /// Sums the last `seconds` seconds up to and including `now_s`.
    pub fn sum(&self, now_s: u64, seconds: u64) -> WindowSums {
        let mut out = WindowSums::default();
        let span = seconds.clamp(1, self.slots.len() as u64 - 1);
        for s in (now_s + 1).saturating_sub(span)..=now_s {
            let slot = &self.slots[(s % self.slots.len() as u64) as usize];
            if slot.second.load(Ordering::Acquire) != s + 1 {
                continue;
            }
            out.total += slot.total.load(Ordering::Relaxed);
            out.errors += slot.errors.load(Ordering::Relaxed);
            out.rate_limited += slot.rate_limited.load(Ordering::Relaxed);
            out.first_byte_count += slot.first_byte_count.load(Ordering::Relaxed);
            out.tokens += slot.tokens.load(Ordering::Relaxed);
            for i in 0..BUCKETS {
                out.latency[i] += slot.latency[i].load(Ordering::Relaxed);
                out.first_byte[i] += slot.first_byte[i].load(Ordering::Relaxed);
                out.ttft[i] += slot.ttft[i].load(Ordering::Relaxed);
            }
        }
        out
    }

    /// The sums of each of the last `seconds` seconds up to and including `now_s`,
    /// oldest first (zeros for seconds nothing was recorded in).
    pub fn per_second(&self, now_s: u64, seconds: u64) -> Vec<WindowSums> {
        let n = seconds.min(self.slots.len() as u64 - 1);
        (0..n)
            .rev()
            .map(|back| match now_s.checked_sub(back) {
                Some(second) => self.sum(second, 1),
                // Before the clock's first second: nothing happened then.
                None => WindowSums::default(),
            })
            .collect()
    }
}

/// The q-quantile of a bucketed distribution, interpolated inside the bucket as
/// Prometheus' `histogram_quantile` does. `None` without samples.
pub fn quantile(q: f64, buckets: &[u64; BUCKETS]) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        let before = seen;
        seen += n;
        if (seen as f64) >= rank && *n > 0 {
            if i == LATENCY_BUCKETS.len() {
                // Beyond the last bound: like Prometheus, answer the highest finite bound.
                return Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]);
            }
            let upper = LATENCY_BUCKETS[i];
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = (rank - before as f64) / *n as f64;
            return Some(lower + (upper - lower) * within);
        }
    }
    Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1])
}

/// Seconds every route's window keeps at least: the admin page's one-minute sparklines.
pub const PAGE_SECONDS: u64 = 60;

/// The outcome windows of one config: one per route (as long as the longest alert on it
/// needs, and at least a minute for the admin page), and one over all routes when an
/// alert reads it.
pub struct Windows {
    /// Same order as the config's routes.
    routes: Vec<Arc<Ring>>,
    all: Option<Arc<Ring>>,
}

/// Rings that outlive a config: a reload that keeps a route (by name) and its window
/// length keeps its ring, so alerts and the admin page do not start from nothing.
#[derive(Default)]
pub struct KeptRings {
    /// By route name; `None` is the ring over all routes.
    rings: Mutex<HashMap<Option<String>, Arc<Ring>>>,
}

impl KeptRings {
    fn ring(
        &self,
        kept: &mut HashMap<Option<String>, Arc<Ring>>,
        key: Option<&str>,
        seconds: u64,
    ) -> Arc<Ring> {
        let key = key.map(str::to_string);
        match self
            .rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            Some(r) if r.seconds() == seconds.clamp(1, MAX_SECONDS) => {
                kept.insert(key, Arc::clone(r));
                Arc::clone(r)
            }
            _ => {
                let r = Arc::new(Ring::new(seconds));
                kept.insert(key, Arc::clone(&r));
                r
            }
        }
    }
}

impl Windows {
    /// The windows `config` needs, reusing the rings of `kept` that still fit; `kept`
    /// then holds this config's rings only.
    pub fn for_config(config: &crate::config::Config, kept: &KeptRings) -> Windows {
        let seconds = |route: Option<&str>| {
            config
                .alerts
                .iter()
                .filter(|a| {
                    a.route.as_deref() == route
                        && a.signal != crate::config::Signal::HealthyBackends
                })
                .map(|a| a.window.as_secs().max(1))
                .max()
        };
        let mut now_kept = HashMap::new();
        let windows = Windows {
            routes: config
                .routes
                .iter()
                .map(|r| {
                    let s = seconds(Some(&r.name)).unwrap_or(0).max(PAGE_SECONDS);
                    kept.ring(&mut now_kept, Some(&r.name), s)
                })
                .collect(),
            all: seconds(None).map(|s| kept.ring(&mut now_kept, None, s)),
        };
        *kept.rings.lock().unwrap_or_else(|p| p.into_inner()) = now_kept;
        windows
    }

    /// The window of route `index`.
    pub fn route(&self, index: usize) -> Option<&Ring> {
        self.routes.get(index).map(|r| &**r)
    }

    /// The window over all routes (`None` when no alert reads it).
    pub fn all(&self) -> Option<&Ring> {
        self.all.as_deref()
    }

    /// Records a request of route `route` (unmatched: `None`) in every window it feeds.
    pub fn record(&self, route: Option<usize>, now_s: u64, outcome: Outcome) {
        let placed = Placed::of(&outcome);
        if let Some(w) = route.and_then(|r| self.route(r)) {
            w.record_placed(now_s, &placed);
        }
        if let Some(w) = &self.all {
            w.record_placed(now_s, &placed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(latency: f64) -> Outcome {
        Outcome {
            error: false,
            rate_limited: false,
            latency_s: latency,
            first_byte_s: Some(latency / 2.0),
            ttft_s: None,
            tokens: 0,
        }
    }

    #[test]
    fn window_slides() {
        let ring = Ring::new(10);
        for s in 100..110 {
            ring.record(s, ok(0.01));
        }
        ring.record(
            109,
            Outcome {
                error: true,
                ..ok(0.01)
            },
        );
        assert_eq!(ring.sum(109, 10).total, 11);
        assert_eq!(ring.sum(109, 10).errors, 1);
        assert_eq!(ring.sum(109, 3).total, 4);
        // 20 s later nothing is left in the window
        assert_eq!(ring.sum(129, 10).total, 0);
        // a slot reused a ring later starts from zero
        ring.record(120, ok(0.01));
        assert_eq!(ring.sum(120, 10).total, 1);
    }

    #[test]
    fn p99_interpolates() {
        let ring = Ring::new(60);
        for _ in 0..99 {
            ring.record(5, ok(0.002));
        }
        ring.record(5, ok(3.0));
        let sums = ring.sum(5, 60);
        let p50 = quantile(0.5, &sums.latency).unwrap();
        assert!(p50 > 0.001 && p50 <= 0.0025, "{p50}");
        let p100 = quantile(1.0, &sums.latency).unwrap();
        assert!(p100 > 2.5 && p100 <= 5.0, "{p100}");
        assert_eq!(quantile(0.99, &[0; BUCKETS]), None);
    }

    #[test]
    fn per_second_sums_oldest_first() {
        let ring = Ring::new(60);
        for (second, n) in [(100, 2), (102, 5)] {
            for _ in 0..n {
                ring.record(second, ok(0.01));
            }
        }
        let seconds: Vec<u64> = ring.per_second(102, 4).iter().map(|s| s.total).collect();
        assert_eq!(seconds, vec![0, 2, 0, 5]);
        assert_eq!(
            ring.per_second(102, 1000).len(),
            60,
            "at most the ring's length"
        );
        let early = Ring::new(60);
        early.record(0, ok(0.01));
        early.record(1, ok(0.01));
        let seconds: Vec<u64> = early.per_second(1, 4).iter().map(|s| s.total).collect();
        assert_eq!(
            seconds,
            vec![0, 0, 1, 1],
            "seconds before the clock's start are empty"
        );
    }

    #[test]
    fn tokens_and_time_to_first_token() {
        let ring = Ring::new(60);
        for i in 0..10 {
            ring.record(
                7,
                Outcome {
                    ttft_s: (i < 5).then_some(0.3),
                    tokens: 100,
                    ..ok(1.0)
                },
            );
        }
        let sums = ring.sum(7, 60);
        assert_eq!(sums.tokens, 1000);
        let p99 = quantile(0.99, &sums.ttft).unwrap();
        assert!(p99 > 0.25 && p99 <= 0.5, "{p99}");
    }
}

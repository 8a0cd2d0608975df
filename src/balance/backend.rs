//! Live state of one backend: in-flight requests, active-check verdict, passive ejection.
//!
//! The state outlives config reloads (the registry hands the same `BackendState` to the
//! new config when the upstream and address are unchanged), so a reload neither forgets
//! that a backend is down nor resets in-flight counts of requests still running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::now_ms;
use crate::config::BackendAddr;

#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    /// The backend as a metric label and log field, e.g. `127.0.0.1:9001`.
    pub label: String,
    /// The name this address was resolved from (TLS names it), if any.
    pub host: Option<String>,
    in_flight: AtomicU32,
    /// Requests sent to it since it was first configured (its share of the traffic, on
    /// the admin page).
    requests: AtomicU64,
    active_healthy: AtomicBool,
    active_streak: AtomicU32,
    passive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Set while the backend is kept in service as the last healthy one despite its
    /// failures; the log says so once per such spell, not once per failure.
    kept_as_last: AtomicBool,
    pub(crate) check_running: AtomicBool,
    pub(crate) next_check_ms: AtomicU64,
    /// Peak EWMA of the time to first byte, in microseconds (f64 bits), and when it was
    /// last updated (`clock::now_ms`): `peak_ewma` balancing.
    ewma_us: AtomicU64,
    ewma_at_ms: AtomicU64,
    /// The last ejection asked for by `Retry-After`, and how many came within
    /// `RETRY_AFTER_MEMORY_MS` of each other (each one doubles the next).
    retry_after_at_ms: AtomicU64,
    retry_after_streak: AtomicU32,
}

/// How long the peak EWMA takes to forget: a slow answer weighs e^-1 after this long.
const EWMA_DECAY_MS: f64 = 5_000.0;
/// A backend ejected by `Retry-After` again within this long is ejected twice as long.
const RETRY_AFTER_MEMORY_MS: u64 = 5 * 60 * 1000;

impl BackendState {
    pub fn new(addr: SocketAddr, label: String, host: Option<String>) -> Self {
        Self {
            addr,
            label,
            host,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            // Backends start healthy so traffic flows before the first check completes.
            active_healthy: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            kept_as_last: AtomicBool::new(false),
            check_running: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at_ms: AtomicU64::new(0),
            retry_after_at_ms: AtomicU64::new(0),
            retry_after_streak: AtomicU32::new(0),
        }
    }

    /// Notes one time to first byte: a slower one than the average takes its place at
    /// once (the peak), a faster one moves it by how long it has been since the last.
    /// Concurrent updates may lose one another's sample; the average stays an average.
    pub fn observe_first_byte(&self, latency_us: f64, now: u64) {
        let (cost, at) = self.ewma();
        let next = if latency_us > cost {
            latency_us
        } else {
            let w = (-(now.saturating_sub(at) as f64) / EWMA_DECAY_MS).exp();
            cost * w + latency_us * (1.0 - w)
        };
        self.ewma_us.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at_ms.store(now, Ordering::Relaxed);
    }

    /// The latency average (µs) and when it was last updated.
    fn ewma(&self) -> (f64, u64) {
        (
            f64::from_bits(self.ewma_us.load(Ordering::Relaxed)),
            self.ewma_at_ms.load(Ordering::Relaxed),
        )
    }

    /// The cost `peak_ewma` compares: (in flight + 1) x the latency average, which
    /// decays toward zero while the backend gets no traffic (so a backend that was slow
    /// is tried again after a while).
    pub fn peak_ewma_cost(&self, now: u64) -> f64 {
        let (cost, at) = self.ewma();
        let idle = now.saturating_sub(at) as f64;
        (self.in_flight() as f64 + 1.0) * cost * (-idle / EWMA_DECAY_MS).exp()
    }

    /// Ejects for a `Retry-After` of `asked` ms: doubled for each such ejection within
    /// five minutes of the one before, at most `cap` ms. Returns the length applied.
    pub fn eject_for_retry_after(&self, asked: u64, cap: u64) -> u64 {
        let now = now_ms();
        let last = self.retry_after_at_ms.swap(now, Ordering::Relaxed);
        let streak = if last != 0 && now.saturating_sub(last) <= RETRY_AFTER_MEMORY_MS {
            self.retry_after_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.retry_after_streak.store(0, Ordering::Relaxed);
            0
        };
        let ms = asked.saturating_mul(1u64 << streak.min(20)).min(cap).max(1);
        self.eject_for(ms);
        ms
    }

    /// Active checks are off for this backend: no verdict of theirs stands, so only
    /// passive ejection judges it.
    pub fn forget_active_verdict(&self) {
        self.active_healthy.store(true, Ordering::Relaxed);
        self.active_streak.store(0, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// When the current or last ejection ends, in `clock::now_ms` milliseconds.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub fn is_active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// May this backend receive traffic now?
    pub fn is_available(&self, now: u64) -> bool {
        self.is_active_healthy() && !self.is_ejected(now)
    }

    /// Marks a request as sent to this backend until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            backend: Arc::clone(self),
        }
    }

    /// Records one active check result; returns the new verdict when it changed.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        let healthy = self.is_active_healthy();
        if ok == healthy {
            self.active_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { healthy_after } else { unhealthy_after };
        if streak >= needed {
            self.active_healthy.store(ok, Ordering::Relaxed);
            self.active_streak.store(0, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }

    /// Records a failure seen on real traffic (connect error or 5xx). Returns true when
    /// the backend crossed `eject_after` and should be ejected.
    pub fn record_passive_failure(&self, eject_after: u32) -> bool {
        if eject_after == 0 {
            return false;
        }
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= eject_after
    }

    pub fn record_passive_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
        if self.kept_as_last.load(Ordering::Relaxed) {
            self.kept_as_last.store(false, Ordering::Relaxed);
        }
    }

    /// Notes that the backend crossed `eject_after` but stays in service as the last
    /// healthy one. Returns true when this starts a new spell (the moment to log it).
    pub fn keep_as_last(&self) -> bool {
        !self.kept_as_last.swap(true, Ordering::Relaxed)
    }

    pub fn eject_for(&self, ms: u64) {
        self.passive_failures.store(0, Ordering::Relaxed);
        self.kept_as_last.store(false, Ordering::Relaxed);
        // An ejection under way that ends later stands.
        self.ejected_until_ms
            .fetch_max(now_ms() + ms, Ordering::Relaxed);
    }
}

/// Counts one request against a backend's in-flight number while alive.
#[derive(Debug)]
pub struct InFlightGuard {
    backend: Arc<BackendState>,
}

impl InFlightGuard {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands out one `BackendState` per (upstream, address), kept across reloads.
#[derive(Default)]
pub struct BackendRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Arc<BackendState>>>,
    unproven: AtomicBool,
}

impl BackendRegistry {
    /// The state of `backend` of `upstream`: the one kept from before, or a new one.
    /// A new address of a name waits for its first good active check before it gets
    /// traffic ([`BackendRegistry::expect_new`]); every other backend starts healthy.
    pub fn state_for(&self, upstream: &str, backend: &BackendAddr) -> Arc<BackendState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let unproven = self.unproven.load(Ordering::Relaxed) && backend.name.is_some();
        states
            .entry((upstream.to_string(), backend.addr))
            .or_insert_with(|| {
                let host = backend.name.as_ref().map(|n| n.host.clone());
                let state = BackendState::new(backend.addr, backend.label(), host);
                if unproven {
                    state.active_healthy.store(false, Ordering::Relaxed);
                }
                Arc::new(state)
            })
            .clone()
    }

    /// From now on, addresses a name resolves to start out of service until an active
    /// check passes (at start-up they are trusted like the addresses in the file).
    pub fn expect_new(&self) {
        self.unproven.store(true, Ordering::Relaxed);
    }

    /// Forgets backends no longer named by the live config.
    pub fn retain(&self, keep: &[(String, SocketAddr)]) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|k, _| keep.contains(k));
    }
}

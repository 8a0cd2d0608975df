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
}

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
        }
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
        self.ejected_until_ms
            .store(now_ms() + ms, Ordering::Relaxed);
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

//! Clocks for the hot path. Reading the system clock costs tens of nanoseconds in a VM,
//! so a request reads the monotonic clock only at the phase boundaries it measures and
//! derives everything else from those readings:
//!
//! - `now_ms`: milliseconds since process start, for background work.
//! - `recent_ms`: the same scale, as of the latest request start on any thread (each
//!   request publishes its start): what balancing and lease checks compare against,
//!   never older than the running request.
//! - `unix_nanos_at`: wall-clock time of a monotonic instant (span timestamps, log
//!   lines), from an offset re-read from the system clock every few seconds so a
//!   stepped wall clock is followed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// Milliseconds since the process epoch at `t` (no clock read).
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

static RECENT_MS: AtomicU64 = AtomicU64::new(0);

/// Publishes a request's start as the freshest time the hot path knows; returns it as
/// `ms_at(t)`.
pub fn note_request_start(t: Instant) -> u64 {
    let ms = ms_at(t);
    // Written only when the millisecond moves on: no cache-line traffic per request.
    if ms > RECENT_MS.load(Ordering::Relaxed) {
        RECENT_MS.store(ms, Ordering::Relaxed);
    }
    ms
}

/// `now_ms` as of the latest request start (never older than a running request's start).
pub fn recent_ms() -> u64 {
    RECENT_MS.load(Ordering::Relaxed).max(1)
}

/// Unix time in nanoseconds at the process epoch; 0 until first synced.
static WALL_AT_EPOCH_NS: AtomicU64 = AtomicU64::new(0);

/// Re-reads the wall clock's offset from the monotonic clock (every few seconds).
pub fn sync_wall() {
    let mono = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let since_epoch = mono.saturating_duration_since(epoch()).as_nanos() as u64;
    WALL_AT_EPOCH_NS.store(wall.saturating_sub(since_epoch), Ordering::Relaxed);
}

/// Wall-clock Unix nanoseconds of the monotonic instant `t`.
pub fn unix_nanos_at(t: Instant) -> u64 {
    let mut base = WALL_AT_EPOCH_NS.load(Ordering::Relaxed);
    if base == 0 {
        sync_wall();
        base = WALL_AT_EPOCH_NS.load(Ordering::Relaxed);
    }
    base + t.saturating_duration_since(epoch()).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_wall_time_matches_the_system_clock() {
        sync_wall();
        let now = Instant::now();
        let derived = unix_nanos_at(now) as i128;
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((real - derived).abs() < 50_000_000, "{real} vs {derived}");
    }

    #[test]
    fn recent_ms_follows_request_starts() {
        // Real instants only: the value is process-wide and other tests balance on it.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let start = Instant::now();
        note_request_start(start);
        assert!(recent_ms() >= ms_at(start));
        let earlier = start - std::time::Duration::from_millis(1);
        note_request_start(earlier);
        assert!(recent_ms() >= ms_at(start), "never moves backwards");
        assert!(recent_ms() <= now_ms());
    }
}

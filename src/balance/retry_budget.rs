//! `retry_budget`: retries at most a share of an upstream's requests over a sliding
//! window, plus a floor a second (Linkerd's scheme), so that retries cannot multiply
//! the load on agents that are already failing.
//!
//! The window is ten one-second buckets of (requests, retries), each stamped with its
//! second; a bucket from an older second is cleared by the first request that lands in
//! it. Counting is two relaxed atomic adds; a retry reads the ten buckets. Races at a
//! bucket's turn of the second can lose a count or two, which a budget tolerates.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds in the window.
const WINDOW: u64 = 10;
/// Retries allowed a second whatever the ratio (so a quiet upstream can still retry).
const FLOOR_PER_SECOND: u64 = 3;

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// One upstream's budget.
pub struct RetryBudget {
    /// The share of requests that may be retried (0 turns retries off beyond the floor).
    ratio: f64,
    buckets: [Bucket; WINDOW as usize],
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            buckets: Default::default(),
        }
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW) as usize];
        let stamped = b.second.load(Ordering::Relaxed);
        if stamped != second
            && b.second
                .compare_exchange(stamped, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts a request's first try (`second`: a monotonic second).
    pub fn note_request(&self, second: u64) {
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget when it has room; false when it is spent.
    pub fn try_retry(&self, second: u64) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Relaxed);
            if s + WINDOW > second && s <= second {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.ratio * requests as f64 + (FLOOR_PER_SECOND * WINDOW) as f64;
        if (retries as f64) < allowed {
            self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_plus_the_floor() {
        let b = RetryBudget::new(0.2);
        // 1,000 requests in one second, each wanting a retry.
        let granted = (0..1000)
            .filter(|_| {
                b.note_request(100);
                b.try_retry(100)
            })
            .count();
        // 20% of 1,000 plus 3 a second over the 10-second window.
        assert!((228..=231).contains(&granted), "{granted}");
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::new(0.0);
        let first = (0..100).filter(|_| b.try_retry(5)).count();
        assert_eq!(first, 30, "the floor alone");
        assert!(!b.try_retry(14), "still inside the window");
        assert!(b.try_retry(15), "the first second left the window");
    }

    #[test]
    fn a_ratio_of_one_allows_a_retry_per_request() {
        let b = RetryBudget::new(1.0);
        for _ in 0..500 {
            b.note_request(7);
        }
        let granted = (0..1000).filter(|_| b.try_retry(7)).count();
        assert_eq!(granted, 530);
    }
}

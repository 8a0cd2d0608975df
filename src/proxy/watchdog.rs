//! First-byte and idle timeouts as two separate limits.
//!
//! pingora has one per-read timeout for an upstream. We give it the longer of the two
//! limits and enforce the shorter one here: a small task per request that, when its
//! deadline passes, shuts the upstream socket down so the pending read ends at once.
//! The task holds a `dup` of the socket, so the number can never point at another
//! connection, and it is disarmed before the connection can go back to the pool.
//! Plain short responses never arm it: it starts only for a header wait that is shorter
//! than the read timeout, or for a body that is still streaming after its first chunk.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Which limit the watchdog enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the response header (first byte).
    FirstByte,
    /// Between chunks of a streaming body.
    Idle,
}

struct Inner {
    fd: Mutex<Option<RawFd>>,
    deadline: Mutex<Instant>,
    fired: AtomicBool,
    done: Notify,
}

impl Inner {
    fn release(&self) {
        let mut fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fd.take() {
            // SAFETY: `f` is our own dup of the socket, closed exactly once here.
            unsafe {
                libc::close(f);
            }
        }
    }
}

/// A running watchdog for one upstream connection.
pub struct Watchdog {
    inner: Arc<Inner>,
    pub phase: Phase,
    limit: Duration,
}

impl Watchdog {
    /// Arms a watchdog that fires `limit` after now unless `touch`ed or disarmed.
    pub fn arm(socket: RawFd, phase: Phase, limit: Duration) -> Option<Watchdog> {
        // SAFETY: dup of a descriptor pingora holds open for the duration of this call.
        let own = unsafe { libc::dup(socket) };
        if own < 0 {
            return None;
        }
        let inner = Arc::new(Inner {
            fd: Mutex::new(Some(own)),
            deadline: Mutex::new(Instant::now() + limit),
            fired: AtomicBool::new(false),
            done: Notify::new(),
        });
        let task = Arc::clone(&inner);
        tokio::spawn(async move {
            loop {
                let deadline = *task.deadline.lock().unwrap_or_else(|p| p.into_inner());
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = task.done.notified() => return,
                }
                let deadline = *task.deadline.lock().unwrap_or_else(|p| p.into_inner());
                if Instant::now() < deadline {
                    continue;
                }
                let fd = task.fd.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(f) = *fd {
                    task.fired.store(true, Ordering::SeqCst);
                    // SAFETY: shutting down our own dup ends reads on the shared socket.
                    unsafe {
                        libc::shutdown(f, libc::SHUT_RDWR);
                    }
                }
                drop(fd);
                task.release();
                return;
            }
        });
        Some(Watchdog {
            inner,
            phase,
            limit,
        })
    }

    /// Pushes the deadline out by a full limit (a chunk arrived).
    pub fn touch(&self) {
        *self
            .inner
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now() + self.limit;
    }

    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Stops the watchdog; it will not touch the socket afterwards.
    pub fn disarm(&self) {
        self.inner.release();
        self.inner.done.notify_one();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

//! `server.header_timeout`: a client must deliver its whole request header within this
//! time of the connection (or of the previous response on a kept-alive connection),
//! however it trickles the bytes. pingora only bounds each read, so the proxy app is
//! wrapped: the request races its deadline, and loses only while the header is still
//! unread (the proxy's first phase marks it read).
//!
//! Almost every request waits for its header (a kept-alive connection idles until the
//! next one), so the deadline is kept off the timer wheels: a waiting request leaves its
//! deadline and waker in a slot of a sharded table, and one sweeper thread wakes the
//! expired ones every [`SWEEP`]. Taking and returning a slot is an uncontended lock and a
//! waker clone, a tenth of what a timer registration costs; the price is that the
//! deadline is enforced to within two sweeps (0.2 s).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::clock::now_ms;

/// How often expired header waits are woken (and so how late a deadline can fire).
pub const SWEEP: Duration = Duration::from_millis(100);

/// `now_ms` as of the sweeper's latest round: requests take their deadline from it, so
/// waiting for a header costs no clock read. A deadline is set one sweep further out,
/// so it never fires early; it fires at most two sweeps late.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set by the proxy during a poll of the request once its header is read. A poll runs
    /// on one thread from start to end, so the wrapper clears it before polling the
    /// request and reads it after.
    static HEADER_READ: Cell<bool> = const { Cell::new(true) };
    /// This thread's shard of the slot table.
    static SHARD: usize = next_shard();
}

/// Called by the proxy once a request header has been read.
pub fn mark_header_read() {
    HEADER_READ.with(|flag| flag.set(true));
}

const SHARDS: usize = 16;

fn next_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
}

#[derive(Default)]
struct Slot {
    in_use: bool,
    deadline_ms: u64,
    /// Taken by the sweeper when it wakes the request.
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

/// The table of requests waiting for their header, and its sweeper.
struct Watch {
    shards: Vec<Mutex<Shard>>,
}

impl Watch {
    fn get() -> &'static Watch {
        static WATCH: OnceLock<Arc<Watch>> = OnceLock::new();
        WATCH.get_or_init(|| {
            COARSE_MS.store(now_ms(), Ordering::Relaxed);
            let watch = Arc::new(Watch {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            });
            let sweeper = Arc::clone(&watch);
            let started = std::thread::Builder::new()
                .name("agentgate-header-watch".into())
                .spawn(move || sweeper.sweep_forever());
            if let Err(e) = started {
                // Without the sweeper a silent client is still cut by pingora's read
                // timeout; the trickling one is not.
                log::error!("header_timeout not enforced: sweeper thread failed to start: {e}");
            }
            watch
        })
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep_forever(&self) {
        let mut due = Vec::new();
        loop {
            std::thread::sleep(SWEEP);
            let now = now_ms();
            COARSE_MS.store(now, Ordering::Relaxed);
            for index in 0..SHARDS {
                let mut shard = self.shard(index);
                for slot in shard.slots.iter_mut() {
                    if slot.in_use && slot.deadline_ms <= now {
                        due.extend(slot.waker.take());
                    }
                }
                drop(shard);
                // Woken outside the lock: a wake can run the task right here.
                due.drain(..).for_each(Waker::wake);
            }
        }
    }

    fn take(&self, deadline_ms: u64, waker: &Waker) -> Ticket {
        let shard_index = SHARD.with(|s| *s);
        let mut shard = self.shard(shard_index);
        let slot = match shard.free.pop() {
            Some(i) => i,
            None => {
                shard.slots.push(Slot::default());
                shard.slots.len() - 1
            }
        };
        shard.slots[slot] = Slot {
            in_use: true,
            deadline_ms,
            waker: Some(waker.clone()),
        };
        Ticket {
            shard: shard_index,
            slot,
        }
    }

    /// Whether the sweeper found the deadline passed (it takes the waker when it does);
    /// else keeps the slot's waker current (a task can be polled with another waker).
    fn expired_or_refresh(&self, ticket: &Ticket, waker: &Waker) -> bool {
        let mut shard = self.shard(ticket.shard);
        let slot = &mut shard.slots[ticket.slot];
        match &slot.waker {
            None => true,
            Some(w) if w.will_wake(waker) => false,
            Some(_) => {
                slot.waker = Some(waker.clone());
                false
            }
        }
    }

    fn give_back(&self, ticket: &Ticket) {
        let mut shard = self.shard(ticket.shard);
        let waker = std::mem::take(&mut shard.slots[ticket.slot]).waker;
        shard.free.push(ticket.slot);
        drop(shard);
        drop(waker);
    }
}

/// A slot held while a request waits for its header.
struct Ticket {
    shard: usize,
    slot: usize,
}

/// The request against its header deadline. `None` means the deadline won.
struct HeaderRace<'a, R> {
    request: Pin<&'a mut R>,
    timeout_ms: u64,
    header_read: bool,
    ticket: Option<Ticket>,
}

impl<R> HeaderRace<'_, R> {
    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            Watch::get().give_back(&ticket);
        }
    }
}

impl<R: Future> Future for HeaderRace<'_, R> {
    type Output = Option<R::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.header_read {
            return self.request.as_mut().poll(cx).map(Some);
        }
        HEADER_READ.with(|flag| flag.set(false));
        let polled = self.request.as_mut().poll(cx);
        self.header_read = HEADER_READ.with(Cell::get);
        if let Poll::Ready(done) = polled {
            self.release();
            return Poll::Ready(Some(done));
        }
        if self.header_read {
            self.release();
            return Poll::Pending;
        }
        match &self.ticket {
            Some(ticket) if Watch::get().expired_or_refresh(ticket, cx.waker()) => {
                Poll::Ready(None)
            }
            Some(_) => Poll::Pending,
            None => {
                let watch = Watch::get();
                let deadline_ms =
                    COARSE_MS.load(Ordering::Relaxed) + SWEEP.as_millis() as u64 + self.timeout_ms;
                self.ticket = Some(watch.take(deadline_ms, cx.waker()));
                Poll::Pending
            }
        }
    }
}

impl<R> Drop for HeaderRace<'_, R> {
    fn drop(&mut self) {
        self.release();
    }
}

pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let timeout = self.timeout;
        let request = self.inner.process_new_http(session, shutdown);
        tokio::pin!(request);
        let raced = HeaderRace {
            request,
            timeout_ms: timeout.as_millis() as u64,
            header_read: false,
            ticket: None,
        }
        .await;
        raced.unwrap_or_else(|| {
            // Header incomplete: dropping the request closes the connection.
            log::debug!("no complete request header within {timeout:?}: connection dropped");
            None
        })
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        Arc::clone(&self.inner)
            .process_custom_session(stream, shutdown)
            .await
    }
}

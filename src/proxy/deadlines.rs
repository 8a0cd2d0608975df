//! Request deadlines, kept off pingora's timers: the header deadline
//! (`server.header_timeout`), and the upstream's `first_byte_timeout` and `idle_timeout`.
//!
//! - Header: a client must deliver its whole request header within `header_timeout` of
//!   the connection (or of the previous response on a kept-alive connection), however it
//!   trickles the bytes; pingora only bounds each read.
//! - Upstream: the agent must send its response header within `first_byte_timeout` of
//!   the connection being ready, and no stream may stay silent for `idle_timeout`. When
//!   one passes, the upstream socket is shut down, the pending read fails, and the proxy
//!   answers 504 (or cuts the stream) knowing why ([`upstream_fired`]).
//! - Client: when the upstream deadline passes while the client has not taken what was
//!   already sent to it (its socket's send queue is not empty), the silence is the
//!   client's: it stopped reading, and the proxy stopped reading the agent because of
//!   it. Both sockets are shut down and the request ends as the client's failure
//!   ([`client_stalled`]), never counted against the agent.
//!
//! The proxy app is wrapped ([`Deadlines`]): each request future runs inside a
//! [`Race`], which holds at most one deadline at a time. The proxy phases say what they
//! want through thread-local cells the race reads after each poll (a poll runs on one
//! thread from start to end, and the phases run inside it). A waiting request keeps its
//! deadline and waker in a slot of a sharded table, and one sweeper thread wakes the
//! expired ones every [`SWEEP`]: arming is a lock-free check, or an uncontended lock and
//! a waker clone when the deadline moves; no timer is registered and cancelled per read,
//! as pingora's per-read timeouts do. Deadlines fire at most two sweeps (0.2 s) late,
//! never early.

use std::cell::Cell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::clock::now_ms;

/// How often expired deadlines are woken (and so how late one can fire).
pub const SWEEP: Duration = Duration::from_millis(100);

/// `now_ms` as of the sweeper's latest round: deadlines are taken from it, so arming
/// one costs no clock read. A deadline is set one sweep further out, so it never fires
/// early.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

/// What the proxy phases asked for during the current poll of a request.
#[derive(Clone, Copy)]
enum UpstreamAsk {
    /// Nothing new: keep what the race holds.
    Keep,
    /// (Re)start the upstream deadline: `limit_ms` from now on the connection `fd`
    /// (`local`: its local address, to recognise the socket when the deadline fires).
    Arm {
        fd: RawFd,
        local: Option<std::net::SocketAddr>,
        limit_ms: u64,
    },
    /// The upstream exchange is over (or failed): no upstream deadline.
    Disarm,
}

thread_local! {
    /// Set by the proxy during a poll of the request once its header is read.
    static HEADER_READ: Cell<bool> = const { Cell::new(true) };
    static UPSTREAM_ASK: Cell<UpstreamAsk> = const { Cell::new(UpstreamAsk::Keep) };
    /// What the running request's upstream deadline found when it passed, if it did.
    static FIRED: Cell<Fired> = const { Cell::new(Fired::No) };
    /// This thread's shard of the slot table.
    static SHARD: usize = next_shard();
}

/// Called by the proxy once a request header has been read.
pub fn mark_header_read() {
    HEADER_READ.with(|flag| flag.set(true));
}

/// Starts (or restarts, for the idle limit on each chunk) the upstream deadline of the
/// running request on connection `fd`.
pub fn arm_upstream(fd: RawFd, local: Option<std::net::SocketAddr>, limit: Duration) {
    // A new try starts unjudged; a client that stalled stays the request's verdict.
    FIRED.with(|f| {
        if f.get() == Fired::Upstream {
            f.set(Fired::No)
        }
    });
    UPSTREAM_ASK.with(|a| {
        a.set(UpstreamAsk::Arm {
            fd,
            local,
            limit_ms: limit.as_millis() as u64,
        })
    });
}

/// Ends the upstream deadline of the running request.
pub fn disarm_upstream() {
    UPSTREAM_ASK.with(|a| a.set(UpstreamAsk::Disarm));
}

/// Whether the running request's upstream try was cut by its deadline.
pub fn upstream_fired() -> bool {
    FIRED.with(Cell::get) == Fired::Upstream
}

/// Whether the running request was ended because its client stopped reading.
pub fn client_stalled() -> bool {
    FIRED.with(Cell::get) == Fired::ClientStalled
}

/// What an upstream deadline found when it passed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fired {
    No,
    /// The agent was silent: its try failed for that.
    Upstream,
    /// The client had stopped reading: the request ended as the client's failure.
    ClientStalled,
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
    /// Taken by the sweeper when it wakes the request: `None` in a used slot = expired.
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

/// The table of requests waiting on a deadline, and its sweeper.
struct Table {
    shards: Vec<Mutex<Shard>>,
}

impl Table {
    fn get() -> &'static Table {
        static TABLE: OnceLock<Arc<Table>> = OnceLock::new();
        TABLE.get_or_init(|| {
            COARSE_MS.store(now_ms(), Ordering::Relaxed);
            let table = Arc::new(Table {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            });
            let sweeper = Arc::clone(&table);
            let started = std::thread::Builder::new()
                .name("agentgate-deadlines".into())
                .spawn(move || sweeper.sweep_forever());
            if let Err(e) = started {
                log::error!("request deadlines not enforced: sweeper thread failed to start: {e}");
            }
            table
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
            deadline_ms,
        }
    }

    /// Moves a held slot's deadline (and brings its waker up to date).
    fn move_to(&self, ticket: &mut Ticket, deadline_ms: u64, waker: &Waker) {
        let mut shard = self.shard(ticket.shard);
        let slot = &mut shard.slots[ticket.slot];
        slot.deadline_ms = deadline_ms;
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        ticket.deadline_ms = deadline_ms;
    }

    /// Whether the sweeper found this slot's deadline passed.
    fn expired(&self, ticket: &Ticket) -> bool {
        // The sweeper publishes its clock before it expires anything: while that clock
        // is short of the deadline, nothing can have expired it (no lock needed).
        if COARSE_MS.load(Ordering::Relaxed) < ticket.deadline_ms {
            return false;
        }
        self.shard(ticket.shard).slots[ticket.slot].waker.is_none()
    }

    fn give_back(&self, ticket: &Ticket) {
        let mut shard = self.shard(ticket.shard);
        let waker = std::mem::take(&mut shard.slots[ticket.slot]).waker;
        shard.free.push(ticket.slot);
        drop(shard);
        drop(waker);
    }
}

/// A slot held while a request waits on a deadline.
struct Ticket {
    shard: usize,
    slot: usize,
    deadline_ms: u64,
}

/// The upstream connection an armed deadline would cut.
#[derive(Clone, Copy)]
struct Upstream {
    fd: RawFd,
    local: Option<std::net::SocketAddr>,
}

impl Upstream {
    /// Shuts the connection down so the proxy's pending read on it fails now. The
    /// descriptor is checked to still be the same socket (same local address) first.
    fn cut(self) {
        let Some(local) = self.local else { return };
        let now = PingoraAddr::from_raw_fd(self.fd, false);
        if now.as_ref().and_then(|a| a.as_inet()) != Some(&local) {
            return;
        }
        // The descriptor is open: pingora holds the connection while its read is
        // pending, and it was just checked to be that socket.
        shut_down(self.fd);
    }
}

/// Shuts socket `fd` down both ways: its pending reads and writes fail now, and the
/// descriptor stays open for its owner to close. The caller knows `fd` is open.
fn shut_down(fd: RawFd) {
    // SAFETY: shutdown(2) takes no pointers; on an open socket it only changes the
    // socket's state, and the descriptor itself is left for its owner.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Bytes written to socket `fd` that its peer has not yet acknowledged (`SIOCOUTQ`).
fn unsent_bytes(fd: RawFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is the client socket of the running request, open while the request
    // runs; SIOCOUTQ (TIOCOUTQ on Linux) only writes the int it is given.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0;
    if ok {
        queued.max(0) as usize
    } else {
        0
    }
}

/// A request and its deadlines. `None` means the header deadline won.
struct Race<'a, R> {
    request: Pin<&'a mut R>,
    header_timeout_ms: u64,
    header_read: bool,
    /// The client socket (absent for streams the gateway did not accept itself).
    client_fd: Option<RawFd>,
    /// The upstream connection while an upstream deadline is armed.
    upstream: Option<Upstream>,
    /// What the upstream deadline found (kept for the phases that classify the failure).
    fired: Fired,
    ticket: Option<Ticket>,
}

impl<R> Race<'_, R> {
    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            Table::get().give_back(&ticket);
        }
    }

    /// Holds a slot with this deadline (taking one or moving the held one).
    fn hold(&mut self, deadline_ms: u64, waker: &Waker) {
        let table = Table::get();
        match &mut self.ticket {
            Some(t) if t.deadline_ms == deadline_ms => {}
            Some(t) => table.move_to(t, deadline_ms, waker),
            None => self.ticket = Some(table.take(deadline_ms, waker)),
        }
    }

    fn deadline_after(limit_ms: u64) -> u64 {
        COARSE_MS.load(Ordering::Relaxed) + SWEEP.as_millis() as u64 + limit_ms
    }
}

impl<R: Future> Future for Race<'_, R> {
    type Output = Option<R::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self
            .ticket
            .as_ref()
            .is_some_and(|t| Table::get().expired(t))
        {
            self.release();
            if !self.header_read {
                return Poll::Ready(None);
            }
            if let Some(upstream) = self.upstream.take() {
                match self.client_fd {
                    Some(fd) if unsent_bytes(fd) > 0 => {
                        // The client socket is open while its request runs.
                        shut_down(fd);
                        self.fired = Fired::ClientStalled;
                    }
                    _ => self.fired = Fired::Upstream,
                }
                upstream.cut();
            }
        }
        HEADER_READ.with(|f| f.set(self.header_read));
        FIRED.with(|f| f.set(self.fired));
        UPSTREAM_ASK.with(|a| a.set(UpstreamAsk::Keep));
        let polled = self.request.as_mut().poll(cx);
        if let Poll::Ready(done) = polled {
            self.release();
            return Poll::Ready(Some(done));
        }
        self.fired = FIRED.with(Cell::get);
        let was_waiting_for_header = !self.header_read;
        self.header_read = HEADER_READ.with(Cell::get);
        if !self.header_read {
            if self.ticket.is_none() {
                let deadline = Self::deadline_after(self.header_timeout_ms);
                self.hold(deadline, cx.waker());
            }
            return Poll::Pending;
        }
        match UPSTREAM_ASK.with(Cell::get) {
            UpstreamAsk::Keep => {
                // The header deadline is met; nothing upstream is armed yet.
                if was_waiting_for_header {
                    self.release();
                }
            }
            UpstreamAsk::Arm {
                fd,
                local,
                limit_ms,
            } => {
                self.upstream = Some(Upstream { fd, local });
                let deadline = Self::deadline_after(limit_ms);
                self.hold(deadline, cx.waker());
            }
            UpstreamAsk::Disarm => {
                self.upstream = None;
                self.release();
            }
        }
        Poll::Pending
    }
}

impl<R> Drop for Race<'_, R> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The proxy app with its requests' deadlines.
pub struct Deadlines<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> Deadlines<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for Deadlines<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let timeout = self.timeout;
        let client_fd = session.stream().and_then(super::refusals::client_fd);
        let request = self.inner.process_new_http(session, shutdown);
        tokio::pin!(request);
        let raced = Race {
            request,
            header_timeout_ms: timeout.as_millis() as u64,
            header_read: false,
            client_fd,
            upstream: None,
            fired: Fired::No,
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

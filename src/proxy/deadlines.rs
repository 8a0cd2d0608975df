//! Request deadlines, kept off pingora's timers: the header deadline
//! (`server.header_timeout`), and the upstream's `first_byte_timeout` and `idle_timeout`.
//!
//! - Header: a client must deliver its whole request header within `header_timeout` of
//!   the connection (or of the previous response on a kept-alive connection), however it
//!   trickles the bytes; pingora only bounds each read. The request future runs inside
//!   a [`Race`] ([`Deadlines`] wraps the proxy app) that drops it when the deadline
//!   passes first; the proxy tells the race the header is in through the connection's
//!   [`ClientSocket`], which the stream wrapper of `refusals` carries.
//! - Upstream: the agent must send its response header within `first_byte_timeout` of
//!   the request being sent, and no stream may stay silent for `idle_timeout`. The
//!   request holds an [`UpstreamDeadline`] in its own state; when the deadline passes,
//!   the sweeper shuts the upstream socket down, the proxy's pending read on it fails,
//!   and the proxy answers 504 (or cuts the stream) knowing why from the handle's
//!   [`UpstreamDeadline::upstream_fired`].
//! - Client: when the upstream deadline passes while the client has not taken what was
//!   already sent to it (its socket's send queue is not empty), the silence is the
//!   client's: it stopped reading, and the proxy stopped reading the agent because of
//!   it. Both sockets are shut down and the request ends as the client's failure
//!   ([`UpstreamDeadline::client_stalled`]), never counted against the agent.
//!
//! Every waiting deadline sits in a slot of a sharded table, and one sweeper thread
//! handles the expired ones every [`SWEEP`]: arming is a comparison, or an uncontended
//! lock when the deadline moves; no timer is registered and cancelled per read, as
//! pingora's per-read timeouts do. Deadlines fire at most two sweeps (0.2 s) late,
//! never early. The sockets are shut down through `socket`, under the slot's lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::socket::Socket;
use crate::clock::now_ms;

/// How often expired deadlines are handled (and so how late one can fire).
pub const SWEEP: Duration = Duration::from_millis(100);

/// `now_ms` as of the sweeper's latest round: deadlines are taken from it, so arming
/// one costs no clock read. A deadline is set one sweep further out, so it never fires
/// early.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

fn deadline_after(limit: Duration) -> u64 {
    COARSE_MS.load(Ordering::Relaxed) + SWEEP.as_millis() as u64 + limit.as_millis() as u64
}

/// A client connection as the deadlines see it: its socket, and whether the request
/// being read on it has its whole header yet. Made once per accepted connection by the
/// stream wrapper of `refusals`; the race and the request phases share it.
#[derive(Debug)]
pub struct ClientSocket {
    socket: Socket,
    header_read: AtomicBool,
}

impl ClientSocket {
    pub fn new(socket: Socket) -> ClientSocket {
        ClientSocket {
            socket,
            header_read: AtomicBool::new(false),
        }
    }

    /// Called by the proxy once a request header has been read: the header deadline is
    /// met.
    pub fn mark_header_read(&self) {
        self.header_read.store(true, Ordering::Relaxed);
    }

    pub fn socket(&self) -> Socket {
        self.socket
    }
}

/// The sockets an upstream deadline cuts when it passes: the upstream connection of
/// the try, and the client's, which is looked at (and cut too) when it stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub upstream: Socket,
    pub client: Option<Socket>,
}

impl Cut {
    /// Shuts the sockets down and says whose silence it was.
    fn fire(&self) -> Fired {
        let stalled = self.client.filter(|c| c.unsent_bytes() > 0);
        if let Some(client) = stalled {
            client.shut_down();
        }
        self.upstream.shut_down();
        if stalled.is_some() {
            Fired::ClientStalled
        } else {
            Fired::Upstream
        }
    }
}

/// What an upstream deadline found when it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Fired {
    #[default]
    No,
    /// The agent was silent: its try failed for that.
    Upstream,
    /// The client had stopped reading: the request ended as the client's failure.
    ClientStalled,
}

impl Fired {
    /// The verdict a new try starts from: unjudged, unless the client stalled, which
    /// stays the request's verdict.
    fn for_a_new_try(self) -> Fired {
        match self {
            Fired::ClientStalled => Fired::ClientStalled,
            _ => Fired::No,
        }
    }
}

/// A request's upstream deadline: first byte until the response header, idle after it.
/// It lives in the request's state; dropping it gives its slot back.
#[derive(Debug, Default)]
pub struct UpstreamDeadline {
    held: Option<Held>,
    /// The verdict once no slot is held (a stalled client stays the request's verdict).
    verdict: Fired,
}

#[derive(Debug)]
struct Held {
    ticket: Ticket,
    cut: Cut,
}

impl UpstreamDeadline {
    /// Starts (or restarts, for the idle limit on each chunk) the deadline: `limit` from
    /// now, on the sockets of `cut`. A new try starts unjudged; a client that stalled
    /// stays the request's verdict.
    pub fn arm(&mut self, cut: Cut, limit: Duration) {
        let deadline_ms = deadline_after(limit);
        if let Some(held) = &self.held {
            // A fired deadline has passed, so a new one always differs from it.
            if held.ticket.deadline_ms == deadline_ms && held.cut == cut {
                return;
            }
        }
        let table = Table::get();
        match &mut self.held {
            Some(held) => {
                table.rearm(&mut held.ticket, deadline_ms, cut);
                held.cut = cut;
            }
            None => {
                let watch = Watch::Upstream {
                    cut,
                    fired: self.verdict.for_a_new_try(),
                };
                let ticket = table.take(cut.upstream.fd as usize, deadline_ms, watch);
                self.held = Some(Held { ticket, cut });
            }
        }
    }

    /// Ends the deadline (the upstream exchange is over, or failed); the verdict stays.
    pub fn disarm(&mut self) {
        if let Some(held) = self.held.take() {
            if let Watch::Upstream { fired, .. } = Table::get().give_back(&held.ticket) {
                self.verdict = fired;
            }
        }
    }

    fn verdict(&self) -> Fired {
        match &self.held {
            Some(held) => match Table::get().watch_of(&held.ticket) {
                Watch::Upstream { fired, .. } => fired,
                _ => Fired::No,
            },
            None => self.verdict,
        }
    }

    /// Whether the latest upstream try was cut by its deadline.
    pub fn upstream_fired(&self) -> bool {
        self.verdict() == Fired::Upstream
    }

    /// Whether the request was ended because its client stopped reading.
    pub fn client_stalled(&self) -> bool {
        self.verdict() == Fired::ClientStalled
    }
}

impl Drop for UpstreamDeadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

const SHARDS: usize = 16;

/// What a slot waits for.
#[derive(Debug, Clone, Default)]
enum Watch {
    #[default]
    Free,
    /// A request waiting for its header; the sweeper takes the waker when it expires.
    Header { waker: Option<Waker> },
    /// An upstream try; the sweeper cuts its sockets when it expires.
    Upstream { cut: Cut, fired: Fired },
}

#[derive(Debug)]
struct Slot {
    /// `u64::MAX` when nothing is due (free, or already fired).
    deadline_ms: u64,
    watch: Watch,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            deadline_ms: u64::MAX,
            watch: Watch::Free,
        }
    }
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

/// The table of waiting deadlines, and its sweeper.
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
                    if slot.deadline_ms > now {
                        continue;
                    }
                    match &mut slot.watch {
                        Watch::Free => {}
                        Watch::Header { waker } => due.extend(waker.take()),
                        // Cut under the lock: the request disarms under it too, so the
                        // sockets are still the ones it was armed on.
                        Watch::Upstream { cut, fired } => *fired = cut.fire(),
                    }
                    slot.deadline_ms = u64::MAX;
                }
                drop(shard);
                // Woken outside the lock: a wake can run the task right here.
                due.drain(..).for_each(Waker::wake);
            }
        }
    }

    /// A slot in the shard `key` picks, holding `watch` until `deadline_ms`.
    fn take(&self, key: usize, deadline_ms: u64, watch: Watch) -> Ticket {
        let shard_index = key % SHARDS;
        let mut shard = self.shard(shard_index);
        let slot = match shard.free.pop() {
            Some(i) => i,
            None => {
                shard.slots.push(Slot::default());
                shard.slots.len() - 1
            }
        };
        shard.slots[slot] = Slot { deadline_ms, watch };
        Ticket {
            shard: shard_index,
            slot,
            deadline_ms,
        }
    }

    /// Moves an upstream slot's deadline, on (possibly) new sockets.
    fn rearm(&self, ticket: &mut Ticket, deadline_ms: u64, cut: Cut) {
        let mut shard = self.shard(ticket.shard);
        let slot = &mut shard.slots[ticket.slot];
        let fired = match slot.watch {
            Watch::Upstream { fired, .. } => fired.for_a_new_try(),
            _ => Fired::No,
        };
        *slot = Slot {
            deadline_ms,
            watch: Watch::Upstream { cut, fired },
        };
        ticket.deadline_ms = deadline_ms;
    }

    fn watch_of(&self, ticket: &Ticket) -> Watch {
        self.shard(ticket.shard).slots[ticket.slot].watch.clone()
    }

    /// Whether the sweeper found this header slot's deadline passed.
    fn header_expired(&self, ticket: &Ticket) -> bool {
        // The sweeper publishes its clock before it expires anything: while that clock
        // is short of the deadline, nothing can have expired it (no lock needed).
        if COARSE_MS.load(Ordering::Relaxed) < ticket.deadline_ms {
            return false;
        }
        matches!(
            self.shard(ticket.shard).slots[ticket.slot].watch,
            Watch::Header { waker: None }
        )
    }

    /// Frees the slot; returns what it held.
    fn give_back(&self, ticket: &Ticket) -> Watch {
        let mut shard = self.shard(ticket.shard);
        let slot = std::mem::take(&mut shard.slots[ticket.slot]);
        shard.free.push(ticket.slot);
        drop(shard);
        slot.watch
    }
}

/// A slot held while a deadline waits.
#[derive(Debug)]
struct Ticket {
    shard: usize,
    slot: usize,
    deadline_ms: u64,
}

/// A request and its header deadline. `None` means the deadline won.
struct Race<'a, R> {
    request: Pin<&'a mut R>,
    header_timeout: Duration,
    client: Arc<ClientSocket>,
    header_read: bool,
    ticket: Option<Ticket>,
}

impl<R> Race<'_, R> {
    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            Table::get().give_back(&ticket);
        }
    }
}

impl<R: Future> Future for Race<'_, R> {
    type Output = Option<R::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.header_read
            && self
                .ticket
                .as_ref()
                .is_some_and(|t| Table::get().header_expired(t))
        {
            self.release();
            return Poll::Ready(None);
        }
        let polled = self.request.as_mut().poll(cx);
        if let Poll::Ready(done) = polled {
            self.release();
            return Poll::Ready(Some(done));
        }
        if !self.header_read {
            if self.client.header_read.load(Ordering::Relaxed) {
                self.header_read = true;
                self.release();
            } else if self.ticket.is_none() {
                let watch = Watch::Header {
                    waker: Some(cx.waker().clone()),
                };
                let deadline = deadline_after(self.header_timeout);
                let key = self.client.socket.fd as usize;
                self.ticket = Some(Table::get().take(key, deadline, watch));
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
    // Written out rather than `async fn`: an async method keeps its by-value arguments
    // in its future for the whole call, and a `ServerSession` is over a kilobyte, kept
    // twice (the argument and its rebinding), for every open connection (heaptrack:
    // 4 KB of the 55 KB an open SSE stream held). Here the session is handed to the
    // proxy before the future is made, which holds only the proxy's (boxed) future and
    // the socket.
    fn process_new_http<'s, 'w, 'f>(
        self: &'s Arc<Self>,
        session: ServerSession,
        shutdown: &'w ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'f>>
    where
        's: 'f,
        'w: 'f,
        Self: 'f,
    {
        let timeout = self.timeout;
        let client = session
            .stream()
            .and_then(super::refusals::client_socket)
            .cloned();
        let request = self.inner.process_new_http(session, shutdown);
        let Some(client) = client else {
            // Not a stream the gateway accepted itself: no header deadline to keep.
            return request;
        };
        Box::pin(async move {
            client.header_read.store(false, Ordering::Relaxed);
            tokio::pin!(request);
            let raced = Race {
                request,
                header_timeout: timeout,
                client,
                header_read: false,
                ticket: None,
            }
            .await;
            raced.unwrap_or_else(|| {
                // Header incomplete: dropping the request closes the connection.
                log::debug!("no complete request header within {timeout:?}: connection dropped");
                None
            })
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

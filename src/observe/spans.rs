//! Span export over OTLP/HTTP (protobuf).
//!
//! Spans are encoded on the proxy thread straight into that thread's buffer (see
//! `otlp` and `shards`): nothing at all for unsampled requests, no tracer, no span
//! objects, no channel send. A dedicated thread collects the buffers every few
//! milliseconds and posts them in batches over one kept-alive connection (see
//! `collector`). A full buffer drops and counts; a dead or slow collector costs the
//! proxy nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::collector::{Collector, Endpoint};
use super::metrics;
use super::otlp;
use super::shards::{lock, Shards};

/// Encoded spans one proxy thread may have waiting (about 20,000 spans).
const THREAD_BUFFER: usize = 8 << 20;
/// Largest request body sent to the collector (small batches keep each send short).
const BATCH_BYTES: usize = 256 << 10;
/// Longest a span waits before it is sent while traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Sweep interval while spans flow: long enough that the sweeps' context switches on
/// the workers' cores stay rare, short enough that a buffer never nears its cap.
const BUSY_NAP: Duration = Duration::from_millis(10);
const IDLE_NAP: Duration = Duration::from_millis(50);

thread_local! {
    /// Scratch space for one span body, reused by every span this thread encodes.
    static SPAN_BODY: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

struct Shared {
    shards: Shards,
    flush_waiters: Mutex<Vec<SyncSender<()>>>,
    stop: AtomicBool,
}

pub struct SpanSink {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Writes the spans of one request: each `span` call appends one entry.
pub struct SpanBatch<'a> {
    out: &'a mut Vec<u8>,
    body: &'a mut Vec<u8>,
}

impl SpanBatch<'_> {
    pub fn span(&mut self, head: &otlp::SpanHead<'_>, attrs: impl FnOnce(&mut Vec<u8>)) {
        otlp::span_entry(self.out, self.body, head, attrs);
    }
}

impl SpanSink {
    /// Starts the exporter thread for `endpoint` (an OTLP/HTTP traces URL).
    pub fn start(endpoint: &str, service_name: &str) -> std::io::Result<SpanSink> {
        let shared = Arc::new(Shared {
            shards: Shards::new(THREAD_BUFFER),
            flush_waiters: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let endpoint = endpoint.to_string();
        let service = service_name.to_string();
        let thread = std::thread::Builder::new()
            .name("agentgate-spans".into())
            .spawn(move || export_loop(&for_thread, &endpoint, &service))?;
        Ok(SpanSink {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Encodes the `spans` spans `write` produces into this thread's buffer; when the
    /// buffer is full they are dropped and counted.
    pub fn record(&self, spans: u64, write: impl FnOnce(&mut SpanBatch<'_>)) {
        SPAN_BODY.with(|body| {
            let mut body = body.borrow_mut();
            let appended = self.shared.shards.append(|out| {
                write(&mut SpanBatch {
                    out,
                    body: &mut body,
                });
            });
            if !appended {
                metrics::spans_dropped(spans);
            }
        });
    }

    /// Exports everything recorded so far (at shutdown), waiting at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        lock(&self.shared.flush_waiters).push(done_tx);
        let _ = done_rx.recv_timeout(timeout);
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// Posts batches to the collector; counts and (rate-limited) logs failures.
struct Exporter<'a> {
    collector: Result<Collector, String>,
    endpoint: &'a str,
    service: &'a str,
    head: Vec<u8>,
    last_error_log: Option<Instant>,
}

impl Exporter<'_> {
    /// Sends `entries` in requests of at most `BATCH_BYTES`.
    fn export(&mut self, mut entries: &[u8]) {
        while !entries.is_empty() {
            // Walking the entries is only needed to split an oversized batch, or to count
            // what a failed post dropped.
            let (count, bytes) = if entries.len() <= BATCH_BYTES {
                (None, entries.len())
            } else {
                let (count, bytes) = otlp::split_entries(entries, BATCH_BYTES);
                (Some(count), bytes)
            };
            let (batch, rest) = entries.split_at(bytes);
            entries = rest;
            otlp::export_request_head(
                &mut self.head,
                self.service,
                env!("CARGO_PKG_VERSION"),
                batch.len(),
            );
            let result = match &mut self.collector {
                Ok(c) => c.post(&[&self.head, batch]),
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = result {
                let count = count.unwrap_or_else(|| otlp::split_entries(batch, usize::MAX).0);
                metrics::spans_dropped(count as u64);
                // One line per 30 s at most: a dead collector must not flood the log.
                if self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
                {
                    log::warn!(
                        "span export to {} failed, {count} spans dropped: {e}",
                        self.endpoint
                    );
                    self.last_error_log = Some(Instant::now());
                }
            }
        }
    }
}

fn export_loop(shared: &Shared, endpoint: &str, service: &str) {
    super::shards::yield_to_workers();
    // Blocking I/O on this thread only: no runtime of pingora's is involved.
    let collector = Endpoint::parse(endpoint).map(|e| Collector::new(e, Duration::from_secs(5)));
    if let Err(e) = &collector {
        log::error!("span export disabled: {e}");
    }
    let mut exporter = Exporter {
        collector,
        endpoint,
        service,
        head: Vec::with_capacity(128),
        last_error_log: None,
    };
    let mut pending: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut oldest: Option<Instant> = None;
    let mut nap = BUSY_NAP;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let waiters = std::mem::take(&mut *lock(&shared.flush_waiters));
        let got = shared
            .shards
            .drain(&mut spare, |entries| pending.extend_from_slice(entries));
        if got && oldest.is_none() {
            oldest = Some(Instant::now());
        }
        let due = pending.len() >= BATCH_BYTES / 2
            || oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
            || !waiters.is_empty()
            || stopping;
        if due && !pending.is_empty() {
            exporter.export(&pending);
            pending.clear();
            oldest = None;
        }
        for w in waiters {
            let _ = w.send(());
        }
        if stopping {
            return;
        }
        nap = if got {
            BUSY_NAP
        } else {
            (nap * 2).min(IDLE_NAP)
        };
        std::thread::sleep(nap);
    }
}

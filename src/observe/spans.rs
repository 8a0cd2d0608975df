//! Span export over OTLP/HTTP (protobuf).
//!
//! Spans are encoded on the proxy thread straight into that thread's buffer (see
//! `otlp` and `shards`): nothing at all for unsampled requests, no tracer, no span
//! objects, no channel send. A dedicated thread collects the buffers every few
//! milliseconds and posts them in batches over one kept-alive connection (see
//! `collector`). A full buffer drops and counts; a dead or slow collector costs the
//! proxy nothing.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::collector::Collector;
use super::metrics;
use super::otlp;
use super::shards::{Drain, DrainThread};
use crate::config::Endpoint;

/// Encoded spans one proxy thread may have waiting (about 20,000 spans).
const THREAD_BUFFER: usize = 8 << 20;
/// Largest request body sent to the collector (small batches keep each send short).
const BATCH_BYTES: usize = 256 << 10;
/// Longest a span waits before it is sent while traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

thread_local! {
    /// Scratch space for one span body, reused by every span this thread encodes.
    static SPAN_BODY: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

pub struct SpanSink {
    thread: DrainThread,
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
        // The collector connection is made on the export thread: blocking I/O there
        // only, no runtime of pingora's involved.
        let collector =
            Endpoint::parse(endpoint).map(|e| Collector::new(e, Duration::from_secs(5)));
        if let Err(e) = &collector {
            log::error!("span export disabled: {e}");
        }
        let exporter = Exporter {
            poster: Poster {
                collector,
                endpoint: endpoint.to_string(),
                service: service_name.to_string(),
                head: Vec::with_capacity(128),
                last_error_log: None,
            },
            pending: Vec::with_capacity(BATCH_BYTES),
            oldest: None,
        };
        Ok(SpanSink {
            thread: DrainThread::start("agentgate-spans", THREAD_BUFFER, exporter)?,
        })
    }

    /// Encodes the `spans` spans `write` produces into this thread's buffer; when the
    /// buffer is full they are dropped and counted.
    pub fn record(&self, spans: u64, write: impl FnOnce(&mut SpanBatch<'_>)) {
        SPAN_BODY.with(|body| {
            let mut body = body.borrow_mut();
            let appended = self.thread.append(|out| {
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
        self.thread.flush(timeout);
    }
}

/// Collects span entries from the workers' buffers and sends them in batches.
struct Exporter {
    poster: Poster,
    /// Entries taken, not yet sent.
    pending: Vec<u8>,
    /// When the oldest pending entry was taken.
    oldest: Option<Instant>,
}

impl Drain for Exporter {
    fn take(&mut self, entries: &[u8]) {
        self.pending.extend_from_slice(entries);
        self.oldest.get_or_insert_with(Instant::now);
    }

    fn end_sweep(&mut self, _took_any: bool, urgent: bool) {
        let due = urgent
            || self.pending.len() >= BATCH_BYTES / 2
            || self.oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        if due && !self.pending.is_empty() {
            self.poster.export(&self.pending);
            self.pending.clear();
            self.oldest = None;
        }
    }
}

/// Posts batches to the collector; counts and (rate-limited) logs failures.
struct Poster {
    collector: Result<Collector, String>,
    endpoint: String,
    service: String,
    head: Vec<u8>,
    last_error_log: Option<Instant>,
}

impl Poster {
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
                &self.service,
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

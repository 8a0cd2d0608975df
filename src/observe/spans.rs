//! Span export over OTLP (http/protobuf or gRPC).
//!
//! Spans are encoded on the proxy thread straight into that thread's buffer (see
//! `otlp` and `shards`): nothing at all for unsampled requests, no tracer, no span
//! objects, no channel send. A dedicated thread collects the buffers every few
//! milliseconds and sends them in batches through `collector`. A batch the collector
//! refuses for a while (429, 503, UNAVAILABLE, a timeout) is tried again with
//! exponential backoff and jitter, or after the wait the collector asked for, while
//! new spans queue behind it up to a bound; past the bound, and for a batch refused for
//! good, spans are dropped and counted. A dead, slow or refusing collector costs the
//! proxy nothing.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Value};

use super::collector::{Collector, SendError};
use super::metrics::{self, ExportResult};
use super::otlp;
use super::shards::{lock, Drain, DrainThread};
use crate::config::TraceSettings;

/// Encoded spans one proxy thread may have waiting (about 20,000 spans).
const THREAD_BUFFER: usize = 8 << 20;
/// Largest request body sent to the collector (small batches keep each send short).
const BATCH_BYTES: usize = 256 << 10;
/// Longest a span waits before it is sent while traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Spans taken from the workers that may wait behind a batch being retried.
const QUEUE_BYTES: usize = 16 << 20;
/// Backoff before the first retry; doubled for each further one, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest wait a collector's `Retry-After` is honoured for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A batch is given up after this many attempts, or once retrying it has taken this long.
const MAX_ATTEMPTS: u32 = 6;
const MAX_RETRYING: Duration = Duration::from_secs(60);

thread_local! {
    /// Scratch space for one span body, reused by every span this thread encodes.
    static SPAN_BODY: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

pub struct SpanSink {
    thread: DrainThread,
    status: Arc<ExportStatus>,
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
    /// Starts the exporter thread for `settings` (export on), whose resource is
    /// `resource` (see [`resource_attributes`]).
    pub fn start(
        settings: &TraceSettings,
        resource: &[(String, String)],
    ) -> std::io::Result<SpanSink> {
        let endpoint = settings.otlp_endpoint.clone().unwrap_or_default();
        // The exporter's own single-threaded runtime: its I/O never runs on pingora's
        // threads, and no second thread is started for it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let collector = {
            let _inside = rt.enter();
            Collector::new(settings)
        };
        let status = Arc::new(ExportStatus {
            endpoint: crate::config::redacted::redact_url(&endpoint),
            protocol: settings.protocol.as_str(),
            state: Mutex::new(StatusState::default()),
        });
        if let Err(e) = &collector {
            log::error!("span export disabled: {e}");
            lock(&status.state).last_error = Some(e.clone());
        }
        metrics::touch_export_series();
        let attrs: Vec<(&str, &str)> = resource
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let exporter = Exporter {
            rt,
            collector,
            resource: otlp::resource(&attrs),
            head: Vec::with_capacity(256),
            pending: Vec::with_capacity(BATCH_BYTES),
            oldest: None,
            retry: None,
            status: Arc::clone(&status),
            failing: false,
        };
        Ok(SpanSink {
            thread: DrainThread::start("agentgate-spans", THREAD_BUFFER, exporter)?,
            status,
        })
    }

    /// What the exporter is doing, for /readyz.
    pub fn status(&self) -> &ExportStatus {
        &self.status
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

/// The exporter's state as /readyz shows it.
pub struct ExportStatus {
    endpoint: String,
    protocol: &'static str,
    state: Mutex<StatusState>,
}

#[derive(Default)]
struct StatusState {
    last_success: Option<SystemTime>,
    /// Since when exports fail (unset while they succeed).
    failing_since: Option<SystemTime>,
    last_error: Option<String>,
    /// A batch waits to be tried again.
    retrying: bool,
}

impl ExportStatus {
    pub fn to_json(&self) -> Value {
        let s = lock(&self.state);
        let unix = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let state = match (&s.failing_since, s.retrying, &s.last_success) {
            (None, _, Some(_)) => "ok",
            (None, _, None) if s.last_error.is_none() => "idle",
            (_, true, _) => "retrying",
            _ => "failing",
        };
        json!({
            "state": state,
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "last_success_unix": unix(s.last_success),
            "failing_since_unix": unix(s.failing_since),
            "last_error": s.last_error,
        })
    }
}

/// A batch refused for now, waiting for its next attempt.
struct Retry {
    body: Bytes,
    spans: usize,
    attempts: u32,
    not_before: Instant,
    first_failed: Instant,
}

/// Collects span entries from the workers' buffers and sends them in batches.
struct Exporter {
    rt: tokio::runtime::Runtime,
    collector: Result<Collector, String>,
    /// The encoded `Resource` every request carries.
    resource: Vec<u8>,
    head: Vec<u8>,
    /// Entries taken, not yet sent (at most `QUEUE_BYTES`).
    pending: Vec<u8>,
    /// When the oldest pending entry was taken.
    oldest: Option<Instant>,
    retry: Option<Retry>,
    status: Arc<ExportStatus>,
    /// Exports are failing (one log line per change).
    failing: bool,
}

impl Drain for Exporter {
    fn take(&mut self, entries: &[u8]) {
        if self.pending.len() + entries.len() > QUEUE_BYTES {
            metrics::spans_dropped(otlp::split_entries(entries, usize::MAX).0 as u64);
            return;
        }
        self.pending.extend_from_slice(entries);
        self.oldest.get_or_insert_with(Instant::now);
    }

    fn end_sweep(&mut self, _took_any: bool, urgent: bool) {
        if let Some(retry) = self.retry.take() {
            // At a flush or stop the batch gets its last chance now.
            if urgent || Instant::now() >= retry.not_before {
                self.attempt(
                    retry.body,
                    retry.spans,
                    retry.attempts,
                    Some(retry.first_failed),
                    urgent,
                );
            } else {
                self.retry = Some(retry);
            }
            if self.retry.is_some() {
                return;
            }
        }
        let due = urgent
            || self.pending.len() >= BATCH_BYTES / 2
            || self.oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        if due && !self.pending.is_empty() {
            self.export_pending(urgent);
        }
    }
}

impl Exporter {
    /// Sends what is pending in requests of at most `BATCH_BYTES`, stopping at a batch
    /// that is to be tried again (what follows it waits).
    fn export_pending(&mut self, urgent: bool) {
        let pending = std::mem::take(&mut self.pending);
        let mut at = 0;
        while at < pending.len() && self.retry.is_none() {
            let rest = &pending[at..];
            let (count, bytes) = otlp::split_entries(rest, BATCH_BYTES);
            let batch = &rest[..bytes];
            at += bytes;
            otlp::export_request_head(
                &mut self.head,
                &self.resource,
                env!("CARGO_PKG_VERSION"),
                batch.len(),
            );
            let mut body = Vec::with_capacity(self.head.len() + batch.len());
            body.extend_from_slice(&self.head);
            body.extend_from_slice(batch);
            self.attempt(Bytes::from(body), count, 0, None, urgent);
        }
        self.pending = pending;
        self.pending.drain(..at);
        self.oldest = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    /// One attempt at a batch: success, a retry scheduled, or the batch given up.
    fn attempt(
        &mut self,
        body: Bytes,
        spans: usize,
        attempts_before: u32,
        first_failed: Option<Instant>,
        last_chance: bool,
    ) {
        let result = match &mut self.collector {
            Ok(c) => self.rt.block_on(c.send(body.clone())),
            Err(e) => Err(SendError {
                message: e.clone(),
                retryable: false,
                retry_after: None,
            }),
        };
        let now = SystemTime::now();
        let unix_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let error = match result {
            Ok(()) => {
                metrics::otlp_export(ExportResult::Success, unix_s);
                self.succeeded(now);
                return;
            }
            Err(e) => e,
        };
        let attempts = attempts_before + 1;
        let first_failed = first_failed.unwrap_or_else(Instant::now);
        let wait = error
            .retry_after
            .map(|w| w.min(MAX_RETRY_AFTER))
            .unwrap_or_else(|| backoff(attempts));
        let retry = error.retryable
            && !last_chance
            && attempts < MAX_ATTEMPTS
            && first_failed.elapsed() + wait <= MAX_RETRYING;
        if retry {
            metrics::otlp_export(ExportResult::Retried, unix_s);
            self.retry = Some(Retry {
                body,
                spans,
                attempts,
                not_before: Instant::now() + wait,
                first_failed,
            });
        } else {
            // Dropped first: a reader that sees the failure sees its spans counted.
            metrics::spans_dropped(spans as u64);
            metrics::otlp_export(ExportResult::Failed, unix_s);
        }
        self.failed(now, &error, retry, wait, spans);
    }

    fn succeeded(&mut self, now: SystemTime) {
        {
            let mut s = lock(&self.status.state);
            s.last_success = Some(now);
            s.failing_since = None;
            s.retrying = false;
        }
        if self.failing {
            self.failing = false;
            let span = tracing::info_span!(
                "otlp.export.recovered",
                event = "otlp_export_recovered",
                endpoint = %self.status.endpoint,
            );
            let _in = span.enter();
            tracing::info!("span export recovered");
        }
    }

    fn failed(
        &mut self,
        now: SystemTime,
        error: &SendError,
        retry: bool,
        wait: Duration,
        spans: usize,
    ) {
        {
            let mut s = lock(&self.status.state);
            s.failing_since.get_or_insert(now);
            s.last_error = Some(error.message.clone());
            s.retrying = retry;
        }
        if self.failing {
            return;
        }
        self.failing = true;
        let action = if retry {
            format!(
                "retrying in {}",
                crate::config::duration::format_duration(wait)
            )
        } else {
            format!("{spans} spans dropped")
        };
        let span = tracing::warn_span!(
            "otlp.export.failing",
            event = "otlp_export_failing",
            endpoint = %self.status.endpoint,
            protocol = self.status.protocol,
            error = %error.message,
            retryable = error.retryable,
        );
        let _in = span.enter();
        tracing::warn!(
            "span export to {} failing ({action}): {}",
            self.status.endpoint,
            error.message
        );
    }
}

/// Exponential backoff with jitter: `FIRST_BACKOFF` doubled per attempt, capped, then
/// a random half to whole of it (so gateways that failed together retry apart).
fn backoff(attempts: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// The resource every export carries: `service.name`, `service.version`,
/// `service.instance.id` (random, stable for the process), `host.name` and
/// `telemetry.sdk.*`, then `resource_attributes` (which may replace any but
/// `service.name`).
pub fn resource_attributes(settings: &TraceSettings) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), settings.service_name.clone()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("service.instance.id".into(), instance_id().to_string()),
        (
            "host.name".into(),
            super::process::host_name()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown".into()),
        ),
        ("telemetry.sdk.name".into(), "agentgate".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        (
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ];
    for (k, v) in &settings.resource_attributes {
        match attrs.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.clone(),
            None => attrs.push((k.clone(), v.clone())),
        }
    }
    attrs
}

/// A random UUID (version 4) made once per process.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_growing() {
        for attempt in 1..10u32 {
            let full = (FIRST_BACKOFF * 2u32.pow(attempt - 1)).min(MAX_BACKOFF);
            let b = backoff(attempt);
            assert!(
                b >= full / 2 && b <= full,
                "attempt {attempt}: {b:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn the_instance_id_is_a_stable_v4_uuid() {
        let id = instance_id();
        assert_eq!(id, instance_id());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}

//! Span export over OTLP/HTTP (protobuf) with the opentelemetry crates' data model.
//!
//! Spans are built directly as `SpanData` with the ids the gateway already propagates
//! (no tracer on the hot path, nothing at all for unsampled requests), handed to a
//! bounded queue, and exported in batches from a dedicated thread that owns the
//! blocking HTTP client. A full queue drops and counts; a dead or slow collector costs
//! the proxy nothing.

use std::borrow::Cow;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::metrics;
use super::otlp::Encoder;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

pub struct SpanSink {
    tx: SyncSender<Msg>,
    scope: InstrumentationScope,
}

impl SpanSink {
    /// Starts the exporter thread for `endpoint` (an OTLP/HTTP traces URL).
    pub fn start(endpoint: &str, service_name: &str) -> std::io::Result<SpanSink> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let endpoint = endpoint.to_string();
        let service = service_name.to_string();
        std::thread::Builder::new()
            .name("agentgate-spans".into())
            .spawn(move || export_loop(rx, &endpoint, &service))?;
        Ok(SpanSink {
            tx,
            scope: InstrumentationScope::builder("agentgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Queues a finished span; drops and counts it when the queue is full.
    pub fn submit(&self, span: SpanData) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::spans_dropped(1)
            }
        }
    }

    /// Exports everything queued so far (at shutdown), waiting at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

fn export_loop(rx: Receiver<Msg>, endpoint: &str, service: &str) {
    // The blocking client lives on this thread only: no runtime of pingora's is involved.
    let client = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            log::error!("span export disabled: cannot build the HTTP client for {endpoint}: {e}");
            while let Ok(msg) = rx.recv() {
                match msg {
                    Msg::Span(_) => metrics::spans_dropped(1),
                    Msg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
            return;
        }
    };
    let mut encoder = Encoder::default();
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut last_export = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    let mut export = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body = encoder
            .encode(service, env!("CARGO_PKG_VERSION"), batch)
            .to_vec();
        batch.clear();
        let result = client
            .post(endpoint)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("collector answered {}", r.status()))
                }
            });
        if let Err(e) = result {
            metrics::spans_dropped(n);
            // One line per 30 s at most: a dead collector must not flood the log.
            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                log::warn!("span export to {endpoint} failed, {n} spans dropped: {e}");
                last_error_log = Some(Instant::now());
            }
        }
    };
    let mut poll = super::line_writer::Poller::default();
    loop {
        // While spans flow, nap between drains (no wake-up syscall per span for the
        // proxy threads); export at least every FLUSH_EVERY.
        let msg = if batch.is_empty() {
            poll.next(&rx).ok_or(RecvTimeoutError::Disconnected)
        } else {
            rx.try_recv().map_err(|e| match e {
                std::sync::mpsc::TryRecvError::Empty => {
                    std::thread::sleep(Duration::from_millis(2));
                    RecvTimeoutError::Timeout
                }
                std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        };
        match msg {
            Ok(Msg::Span(span)) => {
                batch.push(*span);
                if batch.len() >= BATCH {
                    export(&mut batch);
                    last_export = Instant::now();
                }
            }
            Ok(Msg::Flush(done)) => {
                while let Ok(Msg::Span(span)) = rx.try_recv() {
                    batch.push(*span);
                }
                export(&mut batch);
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
        if last_export.elapsed() >= FLUSH_EVERY {
            export(&mut batch);
            last_export = Instant::now();
        }
    }
}

/// What a span needs besides its attributes.
pub struct SpanParts<'a> {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<([u8; 8], bool)>,
    pub sampled: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub error: Option<&'a str>,
    pub attributes: Vec<KeyValue>,
}

pub fn span_data(parts: SpanParts<'_>, scope: &InstrumentationScope) -> SpanData {
    let flags = if parts.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let (parent_id, parent_remote) = match parts.parent {
        Some((id, remote)) => (SpanId::from_bytes(id), remote),
        None => (SpanId::INVALID, false),
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(parts.trace_id),
            SpanId::from_bytes(parts.span_id),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent_id,
        parent_span_is_remote: parent_remote,
        span_kind: parts.kind,
        name: parts.name,
        start_time: parts.start,
        end_time: parts.end,
        attributes: parts.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match parts.error {
            Some(e) => Status::error(e.to_string()),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

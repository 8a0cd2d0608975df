//! The process's own log and traces, through `tracing`.
//!
//! The gateway's own work (start-up, reloads, health and alert transitions, the limit
//! store, the span exporter) is written as `tracing` spans and structured events with
//! fields. One subscriber takes them: [`ProcessLog`], a tracing-subscriber layer, writes
//! each event as a JSON line (`ts`, `level`, `msg`, then the event's fields and those of
//! the spans it is in; or a pretty line) to stderr through the non-blocking line
//! writer; with span export on, tracing-opentelemetry makes the spans OpenTelemetry
//! spans (events become their span events) that leave through the same exporter as the
//! request spans (`process_trace`). pingora's `log` records, and the gateway's own
//! `log` lines, come in through the tracing-log bridge. The per-request access log and
//! request spans keep their own writers: this path is for the process's events only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::json;
use super::line_writer::{LineWriter, Sink};
use super::redact::Redactor;
use super::spans::SpanSink;
use crate::config::{Config, LogFormat};

/// What the layer writes with; changed by reloads.
struct Output {
    writer: ArcSwapOption<LineWriter>,
    json: AtomicBool,
    /// What no line may carry (pingora's debug output prints headers and queries).
    redactor: ArcSwap<Redactor>,
}

static OUTPUT: OnceLock<Arc<Output>> = OnceLock::new();

fn dropped() {
    metrics::counter!("agentgate_process_log_dropped_total").increment(1);
}

fn output() -> &'static Arc<Output> {
    OUTPUT.get_or_init(|| {
        let writer = LineWriter::start(Sink::Stderr, 1 << 20, dropped)
            .ok()
            .map(Arc::new);
        Arc::new(Output {
            writer: ArcSwapOption::new(writer),
            json: AtomicBool::new(true),
            redactor: ArcSwap::from_pointee(Redactor::default()),
        })
    })
}

/// Installs the subscriber once (the first call); every call applies the config's
/// level, format and redaction. `spans`: the exporter the process's own spans go out
/// through (given at start when export is on).
pub fn init(config: &Config, spans: Option<Arc<SpanSink>>) {
    apply(config);
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let process_log = ProcessLog {
            out: Arc::clone(output()),
        };
        let otel = spans.map(|sink| {
            use opentelemetry::trace::TracerProvider as _;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_simple_exporter(super::process_trace::SinkExporter::new(sink))
                .build();
            let tracer = provider.tracer("agentgate");
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    *m.level() <= Level::INFO && m.target().starts_with("agentgate")
                }))
        });
        let subscriber = tracing_subscriber::registry().with(process_log).with(otel);
        let _ = tracing::subscriber::set_global_default(subscriber);
        // `log` records (pingora's, and the gateway's own `log::` lines) become events.
        let _ = tracing_log::LogTracer::init();
    });
    log::set_max_level(config.log.level);
    tracing::callsite::rebuild_interest_cache();
}

/// Applies level, format and redaction (at start and on every reload).
pub fn apply(config: &Config) {
    let out = output();
    out.redactor.store(Arc::new(Redactor::new(
        &config.log.redact_headers,
        &config.log.redact_query_params,
        &[config.server.admin_token.as_deref().unwrap_or("")],
    )));
    out.json
        .store(config.log.format == LogFormat::Json, Ordering::Relaxed);
    if log::max_level() != config.log.level {
        log::set_max_level(config.log.level);
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Writes out what is queued (before the process exits).
pub fn flush() {
    if let Some(w) = OUTPUT.get().and_then(|o| o.writer.load_full()) {
        w.flush();
    }
}

/// The JSON (or pretty) process log, as a tracing-subscriber layer.
struct ProcessLog {
    out: Arc<Output>,
}

/// A span's fields, rendered once as `,"key":"value"` (JSON) pairs.
struct SpanFields(String);

fn level_enabled(level: &Level) -> bool {
    let max = match log::max_level() {
        log::LevelFilter::Off => return false,
        log::LevelFilter::Error => Level::ERROR,
        log::LevelFilter::Warn => Level::WARN,
        log::LevelFilter::Info => Level::INFO,
        log::LevelFilter::Debug => Level::DEBUG,
        log::LevelFilter::Trace => Level::TRACE,
    };
    *level <= max
}

impl<S> Layer<S> for ProcessLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Callsites below `[log] level` are switched off where they are, so the debug and
    // trace events of the libraries under the proxy (h2, hyper) cost one relaxed load
    // each, as without a subscriber. A reload rebuilds the cache (`apply`).
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if level_enabled(meta.level()) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        level_enabled(meta.level())
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let redactor = self.out.redactor.load();
        let mut fields = Fields::new(&redactor);
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.pairs));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let redactor = self.out.redactor.load();
        let mut fields = Fields::new(&redactor);
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        if let Some(existing) = extensions.get_mut::<SpanFields>() {
            existing.0.push_str(&fields.pairs);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !level_enabled(meta.level()) {
            return;
        }
        let Some(writer) = self.out.writer.load_full() else {
            return;
        };
        let redactor = self.out.redactor.load();
        let mut fields = Fields::new(&redactor);
        event.record(&mut fields);
        // Fields of the spans the event is in (outermost first): a reload's trigger,
        // a transition's upstream and backend.
        let mut scope = String::new();
        if let Some(spans) = ctx.event_scope(event) {
            for span in spans.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    scope.push_str(&f.0);
                }
            }
        }
        let level = match *meta.level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let target = fields.log_target.as_deref().unwrap_or(meta.target());
        let json_lines = self.out.json.load(Ordering::Relaxed);
        writer.write_with(|line| {
            if json_lines {
                line.push(b'{');
                json::push_key(line, "ts");
                line.push(b'"');
                json::push_timestamp(line, SystemTime::now());
                line.push(b'"');
                json::field_str(line, "level", level);
                json::field_str(line, "msg", &fields.message);
                line.extend_from_slice(fields.pairs.as_bytes());
                line.extend_from_slice(scope.as_bytes());
                if !target.starts_with("agentgate") {
                    json::field_str(line, "target", target);
                }
                line.push(b'}');
            } else {
                json::push_timestamp(line, SystemTime::now());
                line.push(b' ');
                line.extend_from_slice(level.to_ascii_uppercase().as_bytes());
                line.push(b' ');
                line.extend_from_slice(fields.message.as_bytes());
                for (k, v) in &fields.plain {
                    let _ = write!(Bytes(line), " {k}={v}");
                }
            }
        });
    }
}

/// `write!` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Collects an event's or a span's fields: the message, and the rest as JSON string
/// pairs (values redacted like the message).
struct Fields<'r> {
    redactor: &'r Redactor,
    message: String,
    pairs: String,
    /// The same pairs for the pretty format.
    plain: Vec<(&'static str, String)>,
    /// The `log` record's target, for records from the log bridge.
    log_target: Option<String>,
}

impl<'r> Fields<'r> {
    fn new(redactor: &'r Redactor) -> Fields<'r> {
        Fields {
            redactor,
            message: String::new(),
            pairs: String::new(),
            plain: Vec::new(),
            log_target: None,
        }
    }

    fn put(&mut self, field: &Field, value: &str) {
        let name = field.name();
        let value = self.redactor.redact(value);
        match name {
            "message" => self.message = value.into_owned(),
            "log.target" => self.log_target = Some(value.into_owned()),
            // The bridge's other metadata says nothing a reader needs.
            n if n.starts_with("log.") => {}
            // OpenTelemetry's naming fields stay with the span exporter.
            n if n.starts_with("otel.") => {}
            _ => {
                let mut buf = Vec::new();
                json::field_str(&mut buf, name, &value);
                self.pairs.push_str(&String::from_utf8_lossy(&buf));
                self.plain.push((name, value.into_owned()));
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.put(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, if value { "true" } else { "false" });
    }
}

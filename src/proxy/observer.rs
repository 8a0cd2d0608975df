//! Records a finished request: metrics, its access log line, its spans, the alert
//! windows. `Observer::finish_request` is the one place that happens; it stands above
//! the telemetry primitives of `observe`, which know nothing of a request's state.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use pingora::proxy::Session;

use super::ctx::Request;
use crate::config::{AccessLogTarget, Config};
use crate::observe::access_log::{self, AccessRecord};
use crate::observe::line_writer::{LineWriter, Sink};
use crate::observe::otlp::{self, Kind, PrebuiltValue, SpanHead};
use crate::observe::spans::{self, SpanSink};
use crate::observe::{json, metrics};
use crate::state::Shared;

/// Records finished requests: metrics, access log line, spans.
pub struct Observer {
    access_log: ArcSwapOption<LineWriter>,
    access_target: Mutex<Option<AccessLogTarget>>,
    /// Span export, when `[trace].otlp_endpoint` is set (fixed at start).
    spans: Option<Arc<SpanSink>>,
    /// `server.address` and `server.port` of this gateway, encoded once.
    server_attrs: Vec<u8>,
}

/// Bytes of access log one worker thread may have waiting for the writer.
const ACCESS_LOG_BUFFER: usize = 8 << 20;

fn access_log_dropped() {
    metrics::access_log_dropped();
}

impl Observer {
    /// `spans`: the exporter, when `[trace]` export is on (see [`Observer::span_sink`]).
    pub fn new(config: &Config, spans: Option<Arc<SpanSink>>) -> std::io::Result<Arc<Observer>> {
        let observer = Arc::new(Observer {
            access_log: ArcSwapOption::empty(),
            access_target: Mutex::new(None),
            spans,
            server_attrs: otlp::prebuilt(&[
                (
                    "server.address",
                    PrebuiltValue::Str(&config.server.listen.ip().to_string()),
                ),
                (
                    "server.port",
                    PrebuiltValue::Int(config.server.listen.port() as i64),
                ),
            ]),
        });
        observer.apply(config)?;
        Ok(observer)
    }

    /// Applies the log settings of a (re)loaded config.
    pub fn apply(&self, config: &Config) -> std::io::Result<()> {
        let mut current = self.access_target.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&config.log.access_log) {
            return Ok(());
        }
        let writer = match &config.log.access_log {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => Some(LineWriter::start(
                Sink::Stdout,
                ACCESS_LOG_BUFFER,
                access_log_dropped,
            )?),
            AccessLogTarget::File(p) => Some(LineWriter::start(
                Sink::File(p.clone()),
                ACCESS_LOG_BUFFER,
                access_log_dropped,
            )?),
        };
        self.access_log.store(writer.map(Arc::new));
        *current = Some(config.log.access_log.clone());
        Ok(())
    }

    /// Starts the span exporter when the config turns export on (once, at start: the
    /// process's own spans go out through it too).
    pub fn span_sink(config: &Config) -> std::io::Result<Option<Arc<SpanSink>>> {
        match &config.trace.otlp_endpoint {
            Some(_) => Ok(Some(Arc::new(SpanSink::start(
                &config.trace,
                &spans::resource_attributes(&config.trace),
            )?))),
            None => Ok(None),
        }
    }

    /// The span exporter's state for /readyz (`{"state": "off"}` without export).
    pub fn export_status(&self) -> serde_json::Value {
        match &self.spans {
            Some(s) => s.status().to_json(),
            None => serde_json::json!({"state": "off"}),
        }
    }

    /// Writes out queued log lines (at shutdown).
    pub fn flush(&self) {
        if let Some(w) = self.access_log.load_full() {
            w.flush();
        }
        if let Some(s) = &self.spans {
            s.flush(std::time::Duration::from_secs(5));
        }
    }

    /// Records one finished request. Runs in pingora's logging phase, for every request.
    pub fn finish_request(&self, session: &Session, ctx: &Request) {
        let runtime = &*ctx.runtime;
        let start = ctx.start;
        let elapsed = start.elapsed();
        let first_byte = ctx.timing.first_byte_wait();
        let req = session.req_header();
        let route_rt = ctx.route_runtime();
        let outcome = &ctx.outcome;
        let telemetry = ctx.route_telemetry();
        let route_metrics = &telemetry.metrics;

        route_metrics.in_flight.decrement(1.0);
        route_metrics.record_request(
            &req.method,
            outcome
                .status
                .max(if outcome.cancelled() { 499 } else { 0 }),
            elapsed,
            ctx.id.trace.sampled.then(|| {
                let unix_ms = crate::clock::unix_nanos_at(start + elapsed) / 1_000_000;
                (&ctx.id.trace.trace_id, unix_ms)
            }),
        );
        let upstream_wait = ctx.timing.upstream_elapsed();
        route_metrics
            .overhead
            .record(elapsed.saturating_sub(upstream_wait));
        if outcome.streaming {
            route_metrics.streams_active.decrement(1.0);
            if outcome.cancelled() {
                route_metrics.streams_cancelled.increment(1);
                let ran = format!("{:.3}", elapsed.as_secs_f64());
                tracing::info!(
                    stream_seconds = %ran,
                    route = route_rt.map(|r| r.route.name.as_str()).unwrap_or("unmatched"),
                    request_id = ctx.request_id_str(),
                    trace_id = %ctx.trace_id_string(),
                    "client closed a stream after {ran}s: upstream request cancelled"
                );
            }
        }
        if let Some(p) = ctx.policy.pagination {
            route_metrics.record_pagination(p);
        }
        if ctx.policy.rate_limited() {
            route_metrics.rate_limited.increment(1);
        }
        self.record_alert_windows(ctx, elapsed, first_byte);

        let writer = self.access_log.load();
        let span_sink = self.spans.as_ref().filter(|_| ctx.id.trace.sampled);
        if writer.is_none() && span_sink.is_none() {
            return;
        }
        let query = redacted_query(req, runtime);
        let times = Times {
            start_unix_ns: crate::clock::unix_nanos_at(start),
            elapsed,
        };
        if let Some(sink) = span_sink {
            self.export_spans(sink, req, query.as_deref(), ctx, times);
        }
        let Some(writer) = writer.as_ref() else {
            return;
        };
        let backend = ctx.backend_telemetry().map(|b| &b.log_name);
        let record = AccessRecord {
            finished: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(times.end_unix_ns()),
            request_id: ctx.request_id_str(),
            trace: Some((
                ctx.id.trace.trace_id,
                ctx.id.trace.span_id,
                ctx.id.trace.sampled,
            )),
            route: &telemetry.log_name,
            method: req.method.as_str(),
            path: req.uri.path(),
            protocol: protocol_names(req.version).0,
            query: query.as_deref(),
            status: outcome.status,
            upstream: ctx.upstream_telemetry().map(|u| &u.log_name),
            backend,
            duration: elapsed,
            upstream_first_byte: first_byte,
            bytes_in: outcome.bytes_in,
            bytes_out: outcome.bytes_out,
            client_ip: Some(ctx.client.ip),
            retries: ctx.tries.retries(),
            rate_limited: ctx.policy.rate_limited(),
            pagination: ctx.policy.pagination.map(|p| p.as_str()),
            error: outcome.error_code(),
            key_id: ctx.client.key_id.as_deref(),
            ai: ctx.ai.as_deref().map(|ai| {
                let (usage, source) = ai.usage();
                access_log::AiFields {
                    model: ai.facts.model.as_deref(),
                    input_tokens: usage.input,
                    output_tokens: usage.output,
                    usage_source: source.as_str(),
                    ttft: ai
                        .meter
                        .as_ref()
                        .and_then(|m| super::ai::time_to_first_token(ctx, m)),
                    conversation_id: ai.conversation_id.as_ref().and_then(|c| c.to_str().ok()),
                }
            }),
        };
        writer.write_with(|line| access_log::format_into(line, &record, &runtime.config.log));
    }
}

/// A request pingora refused before any proxy phase ran (see `proxy::refusals`).
pub struct Refusal<'a> {
    pub status: u16,
    pub code: &'a str,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub duration: std::time::Duration,
}

impl Observer {
    /// Records a refused request as an unmatched one: its metrics and an access log
    /// line whose method and path are `-` (the request could not be read as one).
    pub fn record_refusal(&self, shared: &Shared, refusal: &Refusal<'_>) {
        // CONNECT is the one refusal with a known method; the rest are `-` (OTHER in
        // the metrics).
        let method = if refusal.status == 405 {
            http::Method::CONNECT
        } else {
            http::Method::from_bytes(b"-").unwrap_or_default()
        };
        let runtime = shared.runtime.load();
        let unmatched = &runtime.telemetry.unmatched;
        unmatched
            .metrics
            .record_request(&method, refusal.status, refusal.duration, None);
        let Some(writer) = self.access_log.load_full() else {
            return;
        };
        let record = AccessRecord {
            finished: std::time::SystemTime::now(),
            request_id: refusal.request_id,
            trace: None,
            route: &unmatched.log_name,
            method: method.as_str(),
            path: "-",
            protocol: "-",
            query: None,
            status: refusal.status,
            upstream: None,
            backend: None,
            duration: refusal.duration,
            upstream_first_byte: None,
            bytes_in: 0,
            bytes_out: 0,
            client_ip: refusal.client_ip,
            retries: 0,
            rate_limited: false,
            pagination: None,
            ai: None,
            error: Some(refusal.code),
            key_id: None,
        };
        writer.write_with(|line| access_log::format_into(line, &record, &runtime.config.log));
    }
}

impl Observer {
    /// Feeds the per-second windows the in-process alert rules read.
    fn record_alert_windows(
        &self,
        ctx: &Request,
        elapsed: std::time::Duration,
        first_byte: Option<std::time::Duration>,
    ) {
        let windows = &ctx.runtime.windows;
        let route = ctx.route.map(|r| r.route);
        if route.and_then(|r| windows.route(r)).is_none() && windows.all().is_none() {
            return;
        }
        let first_byte_s = first_byte.map(|d| d.as_secs_f64());
        let meter = ctx.ai.as_deref().and_then(|a| a.meter.as_ref());
        let outcome = crate::alerts::window::Outcome {
            error: ctx.outcome.is_server_error(),
            rate_limited: ctx.policy.rate_limited() || ctx.policy.token_limited(),
            latency_s: elapsed.as_secs_f64(),
            first_byte_s,
            ttft_s: meter
                .and_then(|m| super::ai::time_to_first_token(ctx, m))
                .map(|d| d.as_secs_f64()),
            tokens: ctx.ai.as_deref().map_or(0, |ai| {
                let (u, _) = ai.usage();
                u.input + u.output
            }),
        };
        let now_s = (ctx.start_ms + elapsed.as_millis() as u64) / 1000;
        windows.record(route, now_s, outcome);
    }

    /// The server span of the request and one client span per try, with the stable
    /// HTTP semantic conventions.
    fn export_spans(
        &self,
        sink: &SpanSink,
        req: &pingora::http::RequestHeader,
        query: Option<&str>,
        ctx: &Request,
        times: Times,
    ) {
        let (start, trace) = (ctx.start, ctx.id.trace);
        let start_ns = times.start_unix_ns;
        let at =
            |t: std::time::Instant| start_ns + t.saturating_duration_since(start).as_nanos() as u64;
        let route_rt = ctx.route_runtime();
        // Known methods by name; anything else is _OTHER with the original beside it,
        // and the span is named `HTTP`.
        let method = metrics::method_label(&req.method);
        let known = method != metrics::OTHER_METHOD;
        let name_method = if known { method } else { "HTTP" };
        let error = ctx.outcome.error_code();
        let server_end = times.end_unix_ns();
        let server_name: [&str; 3] = match route_rt {
            Some(r) => [name_method, " ", r.route.path_prefix.as_str()],
            None => [name_method, "", ""],
        };
        let server = SpanHead {
            name: &server_name,
            kind: Kind::Server,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent: trace.parent_span_id.map(|p| (p, true)),
            start_unix_nanos: start_ns,
            end_unix_nanos: server_end,
            // Server spans are errors on 5xx only; the status code says which.
            error: (ctx.outcome.status >= 500).then_some(""),
        };
        let scheme = if ctx.client.tls { "https" } else { "http" };
        let (host, port) = request_authority(req);
        let user_agent = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let last_try = match (ctx.timing.upstream_sent_at, ctx.backend_telemetry()) {
            (Some(sent), Some(b)) => Some((sent, b)),
            _ => None,
        };
        let upstream = ctx.upstream_telemetry();
        let spans = 1 + ctx.tries.earlier.len() as u64 + last_try.is_some() as u64;
        sink.record(spans, |spans| {
            spans.span(&server, |b| {
                otlp::str_attr(b, "http.request.method", method);
                if !known {
                    otlp::str_attr(b, "http.request.method_original", req.method.as_str());
                }
                otlp::str_attr(b, "url.scheme", scheme);
                otlp::str_attr(b, "url.path", req.uri.path());
                otlp::str_attr(b, "network.protocol.version", protocol_names(req.version).1);
                otlp::int_attr(b, "http.response.status_code", ctx.outcome.status as i64);
                match host {
                    Some(h) => {
                        otlp::str_attr(b, "server.address", h);
                        if let Some(p) = port {
                            otlp::int_attr(b, "server.port", p as i64);
                        }
                    }
                    None => b.extend_from_slice(&self.server_attrs),
                }
                if let Some(ua) = user_agent {
                    otlp::str_attr(b, "user_agent.original", ua);
                }
                otlp::str_attr(b, "agentgate.request_id", ctx.request_id_str());
                otlp::int_attr(b, "agentgate.retries", ctx.tries.retries() as i64);
                otlp::bool_attr(b, "agentgate.rate_limited", ctx.policy.rate_limited());
                if let Some(q) = query {
                    otlp::str_attr(b, "url.query", q);
                }
                otlp::text_attr(
                    b,
                    "client.address",
                    json::IpText::new(ctx.client.ip).as_bytes(),
                );
                b.extend_from_slice(&ctx.route_telemetry().span_attrs);
                if let Some(backend) = ctx.backend_telemetry() {
                    b.extend_from_slice(&backend.span_backend);
                }
                if let Some(p) = ctx.policy.pagination {
                    otlp::str_attr(b, "agentgate.pagination", p.as_str());
                }
                if let Some(k) = &ctx.client.key_id {
                    otlp::str_attr(b, "agentgate.key_id", k);
                }
                if let (Some(ai), Some(r)) = (&ctx.ai, route_rt.and_then(|r| r.route.ai.as_ref())) {
                    gen_ai_attrs(b, req.uri.path(), r.api, ai);
                }
                if let Some(e) = error {
                    otlp::str_attr(b, "error.type", e);
                }
            });
            let client = ClientSpan {
                trace: &trace,
                method,
                known,
                original_method: req.method.as_str(),
                name: [name_method],
                path: req.uri.path(),
                query,
            };
            for (resend, t) in ctx.tries.earlier.iter().enumerate() {
                let Some(backend) = upstream.and_then(|u| u.backends.get(t.backend)) else {
                    continue;
                };
                client.write(
                    spans,
                    backend,
                    TrySpan {
                        span_id: t.span_id,
                        start_ns: at(t.started),
                        end_ns: at(t.ended),
                        resend_count: resend,
                        status: t.status,
                        error: t.error,
                    },
                );
            }
            if let Some((sent, backend)) = last_try {
                client.write(
                    spans,
                    backend,
                    TrySpan {
                        span_id: ctx.id.upstream_span_id,
                        start_ns: at(sent),
                        end_ns: ctx.timing.response_done_at.map(at).unwrap_or(server_end),
                        resend_count: ctx.tries.earlier.len(),
                        status: ctx.outcome.upstream_status,
                        error: if ctx.outcome.upstream_status.is_none() {
                            error.or(Some("no_response"))
                        } else {
                            None
                        },
                    },
                );
            }
        });
    }
}

/// The `gen_ai.*` attributes of an AI route's server span.
fn gen_ai_attrs(
    b: &mut Vec<u8>,
    path: &str,
    api: crate::config::AiApi,
    ai: &super::ctx::AiExchange,
) {
    otlp::str_attr(b, "gen_ai.operation.name", gen_ai_operation(path));
    otlp::str_attr(b, "gen_ai.provider.name", api.into());
    if let Some(m) = &ai.facts.model {
        otlp::str_attr(b, "gen_ai.request.model", m);
    }
    if let Some(n) = ai.facts.max_output_tokens {
        otlp::int_attr(
            b,
            "gen_ai.request.max_tokens",
            n.min(i64::MAX as u64) as i64,
        );
    }
    if let Some(meter) = &ai.meter {
        if let Some(m) = &meter.response_model {
            otlp::str_attr(b, "gen_ai.response.model", m);
        }
        let (usage, source) = ai.usage();
        otlp::int_attr(
            b,
            "gen_ai.usage.input_tokens",
            usage.input.min(i64::MAX as u64) as i64,
        );
        otlp::int_attr(
            b,
            "gen_ai.usage.output_tokens",
            usage.output.min(i64::MAX as u64) as i64,
        );
        otlp::str_attr(b, "agentgate.usage_source", source.as_str());
    }
    if let Some(c) = ai.conversation_id.as_ref().and_then(|c| c.to_str().ok()) {
        otlp::str_attr(b, "gen_ai.conversation.id", c);
    }
}

/// `gen_ai.operation.name` from the API path: `chat` for chat completions, messages and
/// responses; `text_completion` and `embeddings` for those endpoints.
pub fn gen_ai_operation(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        "text_completion"
    } else {
        "chat"
    }
}

/// What every client span of a request shares.
struct ClientSpan<'a> {
    trace: &'a crate::observe::trace_context::TraceContext,
    method: &'static str,
    known: bool,
    original_method: &'a str,
    name: [&'static str; 1],
    path: &'a str,
    query: Option<&'a str>,
}

/// One try's client span.
struct TrySpan {
    span_id: [u8; 8],
    start_ns: u64,
    end_ns: u64,
    /// Tries before this one (`http.request.resend_count`, set from the second on).
    resend_count: usize,
    status: Option<u16>,
    error: Option<&'static str>,
}

impl ClientSpan<'_> {
    fn write(
        &self,
        spans: &mut crate::observe::spans::SpanBatch<'_>,
        backend: &crate::observe::per_config::BackendTelemetry,
        t: TrySpan,
    ) {
        let head = SpanHead {
            name: &self.name,
            kind: Kind::Client,
            trace_id: self.trace.trace_id,
            span_id: t.span_id,
            parent: Some((self.trace.span_id, false)),
            start_unix_nanos: t.start_ns,
            end_unix_nanos: t.end_ns,
            // Client spans are errors on 4xx and 5xx, and when no answer came; the
            // status code or error.type says why.
            error: match t.status {
                Some(s) if s >= 400 => Some(""),
                Some(_) => None,
                None => Some(""),
            },
        };
        spans.span(&head, |b| {
            otlp::str_attr(b, "http.request.method", self.method);
            if !self.known {
                otlp::str_attr(b, "http.request.method_original", self.original_method);
            }
            b.extend_from_slice(&backend.span_address_port);
            match self.query {
                Some(q) => {
                    otlp::str_parts_attr(b, "url.full", &[&backend.origin, self.path, "?", q])
                }
                None => otlp::str_parts_attr(b, "url.full", &[&backend.origin, self.path]),
            }
            if t.resend_count > 0 {
                otlp::int_attr(b, "http.request.resend_count", t.resend_count as i64);
            }
            match t.status {
                Some(s) => {
                    otlp::int_attr(b, "http.response.status_code", s as i64);
                    if s >= 400 {
                        let mut code = itoa::Buffer::new();
                        otlp::str_attr(b, "error.type", code.format(s));
                    }
                }
                None => otlp::str_attr(b, "error.type", t.error.unwrap_or("no_response")),
            }
        });
    }
}

/// `server.address` and `server.port` from the request's authority (`:authority` on
/// HTTP/2, else the Host header).
fn request_authority(req: &pingora::http::RequestHeader) -> (Option<&str>, Option<u16>) {
    let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    });
    let Some(a) = authority.filter(|a| !a.is_empty()) else {
        return (None, None);
    };
    // `[v6]:port`, `host:port`, or a bare host.
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (Some(h), tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (Some(a), None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) => (Some(h), Some(port)),
            Err(_) => (Some(a), None),
        },
        None => (Some(a), None),
    }
}

/// The request's HTTP version as the access log (`HTTP/1.1`) and the span's
/// `network.protocol.version` (`1.1`) write it.
fn protocol_names(version: http::Version) -> (&'static str, &'static str) {
    match version {
        http::Version::HTTP_09 => ("HTTP/0.9", "0.9"),
        http::Version::HTTP_10 => ("HTTP/1.0", "1.0"),
        http::Version::HTTP_2 => ("HTTP/2", "2"),
        http::Version::HTTP_3 => ("HTTP/3", "3"),
        _ => ("HTTP/1.1", "1.1"),
    }
}

/// When a finished request ran, on the wall clock (its instants converted once).
#[derive(Clone, Copy)]
struct Times {
    start_unix_ns: u64,
    elapsed: std::time::Duration,
}

impl Times {
    fn end_unix_ns(&self) -> u64 {
        self.start_unix_ns + self.elapsed.as_nanos() as u64
    }
}

/// The request's query with redacted parameter values replaced (borrowed when none is).
fn redacted_query<'a>(
    req: &'a pingora::http::RequestHeader,
    runtime: &crate::state::Runtime,
) -> Option<std::borrow::Cow<'a, str>> {
    req.uri
        .query()
        .map(|q| access_log::redact_query_string(q, &runtime.config.log.redact_query_params))
}

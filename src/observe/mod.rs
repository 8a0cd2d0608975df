//! Observability: metrics, the access log, the process log, trace context and span
//! export. `Observer::finish_request` is the one place a finished request is recorded.

pub mod access_log;
pub mod json;
pub mod line_writer;
pub mod logger;
pub mod metrics;
pub mod trace_context;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use pingora::proxy::Session;
use pingora::Error;

use crate::config::{AccessLogTarget, Config};
use crate::proxy::RequestCtx;
use crate::state::Shared;
use access_log::AccessRecord;
use line_writer::{LineWriter, Sink};
use trace_context::hex_string;

/// Records finished requests: metrics, access log line, spans.
pub struct Observer {
    access_log: ArcSwapOption<LineWriter>,
    access_target: Mutex<Option<AccessLogTarget>>,
}

fn access_log_dropped() {
    metrics::access_log_dropped();
}

impl Observer {
    pub fn new(config: &Config) -> std::io::Result<Arc<Observer>> {
        let observer = Arc::new(Observer {
            access_log: ArcSwapOption::empty(),
            access_target: Mutex::new(None),
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
            AccessLogTarget::Stdout => {
                Some(LineWriter::start(Sink::Stdout, 65_536, access_log_dropped)?)
            }
            AccessLogTarget::File(p) => Some(LineWriter::start(
                Sink::File(p.clone()),
                65_536,
                access_log_dropped,
            )?),
        };
        self.access_log.store(writer.map(Arc::new));
        *current = Some(config.log.access_log.clone());
        Ok(())
    }

    /// Writes out queued log lines (at shutdown).
    pub fn flush(&self) {
        if let Some(w) = self.access_log.load_full() {
            w.flush();
        }
    }

    /// Records one finished request. Runs in pingora's logging phase, for every request.
    pub fn finish_request(
        &self,
        shared: &Shared,
        session: &Session,
        _e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        let Some(runtime) = ctx.runtime.clone() else {
            return;
        };
        let Some(start) = ctx.start else { return };
        let elapsed = start.elapsed();
        let req = session.req_header();
        let route_rt = ctx.route.map(|r| &runtime.routes[r]);
        let route_metrics = route_rt
            .map(|r| &r.metrics)
            .unwrap_or(&shared.unmatched_metrics);

        route_metrics.in_flight.decrement(1.0);
        route_metrics.record_request(
            &req.method,
            ctx.status.max(if ctx.cancelled { 499 } else { 0 }),
            elapsed.as_secs_f64(),
        );
        let upstream_wait = ctx.upstream_elapsed();
        route_metrics
            .overhead
            .record(elapsed.saturating_sub(upstream_wait).as_secs_f64());
        if ctx.stream_counted {
            route_metrics.streams_active.decrement(1.0);
            if ctx.cancelled {
                route_metrics.streams_cancelled.increment(1);
                log::info!(
                    "client closed a stream after {:.1}s on route {}; upstream request cancelled (request_id {})",
                    elapsed.as_secs_f64(),
                    route_rt.map(|r| r.route.name.as_str()).unwrap_or("unmatched"),
                    ctx.request_id_str()
                );
            }
        }
        if let Some(p) = ctx.pagination {
            route_metrics.record_pagination(p);
        }
        if ctx.rate_limited {
            route_metrics.rate_limited.increment(1);
        }

        let Some(writer) = self.access_log.load_full() else {
            return;
        };
        let trace = ctx.trace;
        let trace_id = trace.map(|t| hex_string(&t.trace_id)).unwrap_or_default();
        let span_id = trace.map(|t| hex_string(&t.span_id)).unwrap_or_default();
        let upstream = route_rt.map(|r| runtime.config.upstreams[r.route.upstream].name.as_str());
        let backend = match (route_rt, ctx.backend) {
            (Some(r), Some(b)) => runtime.upstreams[r.route.upstream]
                .pool
                .backends
                .get(b)
                .map(|b| b.label.as_str()),
            _ => None,
        };
        let first_byte_ms = match (ctx.upstream_sent_at, ctx.first_byte_at) {
            (Some(s), Some(f)) => Some(f.saturating_duration_since(s).as_secs_f64() * 1000.0),
            _ => None,
        };
        let client_ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let error = match (&ctx.error, ctx.cancelled) {
            (Some(e), _) => Some(e.kind.code()),
            (None, true) => Some("client_disconnected"),
            _ => None,
        };
        let path = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| req.uri.path());
        let record = AccessRecord {
            request_id: ctx.request_id_str(),
            trace_id: &trace_id,
            span_id: &span_id,
            route: route_rt
                .map(|r| r.route.name.as_str())
                .unwrap_or("unmatched"),
            method: req.method.as_str(),
            path_and_query: path,
            status: ctx.status,
            upstream,
            backend,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_first_byte_ms: first_byte_ms,
            bytes_in: ctx.bytes_in,
            bytes_out: ctx.bytes_out,
            client_ip: &client_ip,
            retries: ctx.tries.saturating_sub(1),
            rate_limited: ctx.rate_limited,
            pagination: ctx.pagination.map(|p| p.as_str()),
            error,
            key_id: ctx.key_id.as_deref(),
        };
        writer.write(access_log::format(&record, &runtime.config.log));
    }
}

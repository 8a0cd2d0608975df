//! The proxy: pingora's `ProxyHttp` phases for agentgate. Each phase stays short and
//! hands the real work to the module that owns the concern (routing, balancing,
//! admission, observation).

pub mod admission;
pub mod ctx;
pub mod deadlines;
pub mod headers;
pub mod observer;
pub mod path;
pub mod refusals;
pub mod respond;
pub mod routing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora::{Error, ErrorSource, ErrorType};

use crate::clock::now_ms;
use crate::errors::{ErrorKind, GatewayError};
use crate::observe::metrics::{self, TryOutcome};
use crate::observe::trace_context::TraceContext;
use crate::state::Shared;
use ctx::ClientGone;
pub use ctx::RequestCtx;
use headers::RequestScan;
pub use observer::Observer;

/// The agentgate proxy service.
pub struct Gateway {
    shared: Arc<Shared>,
    observer: Arc<Observer>,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>, observer: Arc<Observer>) -> Self {
        Self { shared, observer }
    }

    /// Request id and trace context, set before anything can answer the request.
    fn identify(&self, ctx: &mut RequestCtx, scan: &mut RequestScan) {
        let Some(runtime) = &ctx.runtime else { return };
        let trace =
            TraceContext::from_incoming(scan.traceparent, runtime.config.trace.sample_ratio);
        ctx.upstream_span_id = crate::observe::trace_context::random_span_id();
        let traceparent = Bytes::copy_from_slice(&trace.traceparent_for(&ctx.upstream_span_id));
        // Without a usable client id the request id is the trace id, as the traceparent
        // spells it (bytes 3..35): a view of the same bytes, not a second copy.
        ctx.request_id = scan
            .request_id
            .take()
            .or_else(|| HeaderValue::from_maybe_shared(traceparent.slice(3..35)).ok());
        ctx.traceparent = HeaderValue::from_maybe_shared(traceparent).ok();
        ctx.trace = Some(trace);
        ctx.request_hop_by_hop = scan.hop_by_hop;
        ctx.incoming_tracestate = scan.tracestate;
    }

    /// Notes the result of one try against the chosen backend (metrics, passive health).
    fn record_try(&self, ctx: &mut RequestCtx, outcome: TryOutcome) {
        ctx.last_outcome = Some(outcome);
        let (Some(runtime), Some(route), Some(b)) = (&ctx.runtime, ctx.route, ctx.backend) else {
            return;
        };
        let upstream = &runtime.upstreams[runtime.routes[route].route.upstream];
        if let Some(m) = upstream.backend_metrics.get(b) {
            m.record(outcome);
        }
        let Some(backend) = upstream.pool.backends.get(b) else {
            return;
        };
        let cfg = &upstream.pool.config;
        match outcome {
            TryOutcome::Success => backend.record_passive_success(),
            TryOutcome::ServerError | TryOutcome::ConnectError | TryOutcome::Timeout => {
                if backend.record_passive_failure(cfg.health.eject_after) {
                    let now = now_ms();
                    let others = upstream
                        .pool
                        .backends
                        .iter()
                        .enumerate()
                        .filter(|(i, o)| *i != b && o.is_available(now))
                        .count();
                    if others == 0 {
                        metrics::kept_as_last(&cfg.name, &backend.label);
                        if !backend.keep_as_last() {
                            return;
                        }
                        log::warn!(
                            "backend {} of upstream {} failed {} requests in a row but is the last healthy backend: kept in service rather than answering every request 503 (further failures count in agentgate_upstream_last_backend_kept_total)",
                            backend.label, cfg.name, cfg.health.eject_after
                        );
                    } else {
                        backend.eject_for(cfg.health.eject_for.as_millis() as u64);
                        metrics::ejection(&cfg.name, &backend.label);
                        log::warn!(
                            "backend {} of upstream {} ejected for {:?} after {} consecutive failures ({})",
                            backend.label, cfg.name, cfg.health.eject_for, cfg.health.eject_after, outcome.as_str()
                        );
                    }
                }
            }
            TryOutcome::Error => {}
        }
    }

    /// Classifies a pingora error into the error the client sees.
    fn classify(&self, e: &Error, ctx: &RequestCtx) -> Option<GatewayError> {
        if let Some(err) = &ctx.error {
            return Some(err.clone());
        }
        if deadlines::client_stalled() {
            // The client stopped reading: nothing to answer, nothing against the agent.
            return None;
        }
        if deadlines::upstream_fired() {
            return Some(timeout_error(ctx));
        }
        if matches!(e.esource(), ErrorSource::Downstream) {
            // The client's doing: never the agent's, never a retry.
            return match e.etype() {
                ErrorType::ReadTimedout => Some(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    "the request body stalled for longer than body_timeout",
                )),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
                ErrorType::WriteTimedout => None,
                ErrorType::HTTPStatus(413) => Some(GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    "the request body is larger than max_request_body_bytes",
                )),
                _ => Some(GatewayError::new(
                    ErrorKind::BadRequest,
                    "the request could not be read as valid HTTP",
                )),
            };
        }
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => {
                return Some(GatewayError::new(
                    ErrorKind::UpstreamTimeout,
                    "the agent did not accept the connection within connect_timeout",
                ))
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => return Some(timeout_error(ctx)),
            ErrorType::HTTPStatus(413) => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::UpstreamUnavailable,
        };
        let message = match kind {
            ErrorKind::PayloadTooLarge => "the request body is larger than max_request_body_bytes",
            _ => "the agent could not be reached or broke the connection; every try failed",
        };
        Some(GatewayError::new(kind, message))
    }

    /// Starts the upstream deadline for the current phase: first byte until the
    /// response header, idle after it (see `deadlines`).
    fn arm_upstream_deadline(ctx: &RequestCtx, header_seen: bool) {
        let (Some(fd), Some(u)) = (ctx.connect_fd, ctx.upstream_settings()) else {
            return;
        };
        let limit = if header_seen {
            u.idle_timeout
        } else {
            u.first_byte_timeout
        };
        deadlines::arm_upstream(fd, ctx.connect_local, limit);
    }
}

fn timeout_error(ctx: &RequestCtx) -> GatewayError {
    let streaming = ctx.first_byte_at.is_some();
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        if streaming {
            "the agent's response went silent for longer than idle_timeout"
        } else {
            "the agent sent no response within first_byte_timeout"
        },
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: pingora keeps the context inside each request's state machine, which it
    /// copies whole into a box per request, and holds it there in more than one place;
    /// by value it added 1.6 KB to that copy (callgrind: 1.7 k instructions a request).
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::default()
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module that
    /// is still built and consulted on every request, and agent responses, streams above
    /// all, are never compressed by the gateway.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        deadlines::mark_header_read();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let start = Instant::now();
        ctx.start_ms = crate::clock::note_request_start(start);
        ctx.start = Some(start);
        let runtime = self.shared.runtime.load_full();
        // Every read of the request body must deliver within body_timeout (pingora's
        // per-read timer on the downstream, which it arms for body reads anyway).
        let downstream = session.as_downstream_mut();
        downstream.set_read_timeout(Some(runtime.config.server.body_timeout));
        // A pipelined request behind this one is served after it, in order (RFC 9112
        // §9.3.2), rather than dropped with the connection.
        downstream.set_pipelining_enabled(true);
        ctx.runtime = Some(runtime);
        let mut scan = RequestScan::of(&session.req_header().headers);
        self.identify(ctx, &mut scan);
        match admission::admit(&self.shared, session, ctx, &scan).await {
            Ok(()) => Ok(false),
            Err(err) => {
                respond::send_error(session, ctx, err).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = body {
            // A retry replays the body from the start: count what this try has seen,
            // and the request's size as the most any try saw.
            ctx.body_this_try += b.len() as u64;
            ctx.bytes_in = ctx.bytes_in.max(ctx.body_this_try);
            let limit = ctx
                .runtime
                .as_ref()
                .map(|r| r.config.server.max_request_body_bytes)
                .unwrap_or(u64::MAX);
            if ctx.bytes_in > limit {
                ctx.error = Some(GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("the request body is larger than the limit of {limit} bytes"),
                ));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        if end_of_stream && ctx.first_byte_at.is_none() {
            // The whole request is on its way to the agent: its time to first byte
            // starts now, not while the client is still uploading.
            Self::arm_upstream_deadline(ctx, false);
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(runtime), Some(route)) = (ctx.runtime.clone(), ctx.route) else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
        };
        let upstream = &runtime.upstreams[runtime.routes[route].route.upstream];
        let cfg = &upstream.pool.config;
        ctx.in_flight = None;
        let index = match upstream.pool.select(ctx.tried) {
            Ok(i) => i,
            Err(_) => {
                // A retry that finds no backend left reports why the last try failed.
                ctx.error = Some(ctx.last_try_error.take().unwrap_or_else(|| {
                    GatewayError::new(
                        ErrorKind::NoHealthyBackend,
                        format!("upstream {:?} has no healthy backend", cfg.name),
                    )
                }));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no healthy backend",
                ));
            }
        };
        if ctx.tries > 0 {
            metrics::retry(&cfg.name);
        }
        ctx.last_try_error = None;
        ctx.body_this_try = 0;
        let backend = &upstream.pool.backends[index];
        ctx.backend = Some(index);
        ctx.tried |= 1 << index;
        ctx.tries += 1;
        ctx.in_flight = Some(backend.begin_request());
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        // No per-read timeout: first_byte_timeout and idle_timeout are request deadlines
        // (`deadlines`), which cost no timer per read.
        peer.options.read_timeout = None;
        // An agent that stops taking a request body for first_byte_timeout fails the
        // try; the first-byte deadline itself starts once the body is complete.
        if !session.as_mut().is_body_empty() {
            peer.options.write_timeout = Some(cfg.first_byte_timeout);
        }
        // A client must take each write of the response within idle_timeout: one that
        // stops reading is cut then, rather than holding the connection and its buffers
        // for ever. pingora makes the timer only for a write that has to wait.
        session
            .as_downstream_mut()
            .set_write_timeout(Some(cfg.idle_timeout));
        // No idle timer on pooled connections: pingora already watches every idle one
        // and drops it when the agent closes it, and a timer here would be armed and
        // cancelled on every request. A connection the network dropped silently costs
        // one of the request's `retries` (never an extra try: see `error_while_proxy`).
        peer.options.idle_timeout = None;
        // The gateway strips hop-by-hop and Connection-nominated headers itself, from
        // the one scan of the request's headers made on arrival (`RequestScan`), and
        // refuses the nominations pingora refuses. pingora's own pass would repeat that
        // work with about a dozen header removals per request.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.connect_fd = Some(fd);
        // Cached per connection by pingora: a syscall only on a new connection.
        ctx.connect_local = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            TryOutcome::Timeout
        } else {
            TryOutcome::ConnectError
        };
        self.record_try(ctx, outcome);
        ctx.last_try_error = self.classify(&e, ctx);
        ctx.in_flight = None;
        deadlines::disarm_upstream();
        let retries = Self::retries(ctx);
        // A connect failure never reached the agent: always safe to try another backend.
        e.set_retry(ctx.tries <= retries);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {peer}"));
        deadlines::disarm_upstream();
        if !matches!(e.esource(), ErrorSource::Upstream) || deadlines::client_stalled() {
            // The client went away, stalled or sent something unreadable: the request
            // ends here. A retry would be another paid generation nobody reads.
            e.set_retry(false);
            return e;
        }
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) || deadlines::upstream_fired();
        self.record_try(
            ctx,
            if timed_out {
                TryOutcome::Timeout
            } else {
                TryOutcome::Error
            },
        );
        ctx.last_try_error = self.classify(&e, ctx);
        let idempotent = session.req_header().method.is_idempotent();
        let safe = idempotent
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && ctx.first_byte_at.is_none();
        // Never more than `retries + 1` tries in all, a reused connection's included.
        e.set_retry(safe && ctx.tries <= Self::retries(ctx));
        if e.retry() {
            ctx.in_flight = None;
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        admission::prepare_upstream_request(upstream_request, ctx)?;
        ctx.upstream_sent_at = Some(Instant::now());
        ctx.first_byte_at = None;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let now = Instant::now();
        ctx.first_byte_at = Some(now);
        Self::arm_upstream_deadline(ctx, true);
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        self.record_try(
            ctx,
            if status >= 500 {
                TryOutcome::ServerError
            } else {
                TryOutcome::Success
            },
        );
        if let (Some(runtime), Some(route), Some(sent)) =
            (&ctx.runtime, ctx.route, ctx.upstream_sent_at)
        {
            if let Some(h) = &runtime.routes[route].metrics.first_byte {
                h.record(now.saturating_duration_since(sent));
            }
        }
        let scan = respond::ResponseScan::of(&upstream_response.headers);
        ctx.response_scan = Some(scan);
        admission::check_upstream_response(&scan, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let streaming = headers::edit_response(upstream_response, |map| {
            // Scanned on arrival (`upstream_response_filter`); a header that did not
            // come from there is scanned now.
            let scan = ctx
                .response_scan
                .take()
                .unwrap_or_else(|| respond::ResponseScan::of(map));
            scan.hop_by_hop.strip(map);
            respond::decorate_response(map, ctx);
            scan.is_streaming()
        });
        ctx.status = upstream_response.status.as_u16();
        if streaming {
            ctx.streaming = true;
            if let (Some(runtime), Some(route)) = (&ctx.runtime, ctx.route) {
                runtime.routes[route].metrics.streams_active.increment(1.0);
                ctx.stream_counted = true;
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            deadlines::disarm_upstream();
            ctx.response_done_at = Some(Instant::now());
        } else {
            // A chunk arrived: the silence starts again.
            Self::arm_upstream_deadline(ctx, true);
        }
        admission::check_upstream_body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.bytes_out += b.len() as u64;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let err = self.classify(e, ctx);
        deadlines::disarm_upstream();
        ctx.in_flight = None;
        let Some(err) = err else {
            // The client went away: nothing to answer.
            ctx.client_gone.get_or_insert(ClientGone::Left);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_some() {
            // Too late for an error response: the stream is cut; the log says why.
            ctx.error = Some(err);
            return FailToProxy {
                error_code: ctx.status,
                can_reuse_downstream: false,
            };
        }
        let status = err.kind.status();
        if respond::send_error(session, ctx, err).await.is_err() {
            ctx.client_gone.get_or_insert(ClientGone::Left);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        deadlines::disarm_upstream();
        ctx.in_flight = None;
        if ctx.response_done_at.is_none() {
            ctx.response_done_at = Some(Instant::now());
        }
        if let Some(h) = session.response_written() {
            ctx.status = h.status.as_u16();
        }
        if let Some(e) = e {
            let downstream = matches!(e.esource(), ErrorSource::Downstream);
            if deadlines::client_stalled()
                || (downstream && matches!(e.etype(), ErrorType::WriteTimedout))
            {
                // Stopped reading the response for idle_timeout: the client's failure.
                ctx.client_gone = Some(ClientGone::StoppedReading);
            } else if downstream
                && matches!(
                    e.etype(),
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                )
            {
                ctx.client_gone.get_or_insert(ClientGone::Left);
            }
            if ctx.error.is_none() && ctx.first_byte_at.is_some() && !ctx.cancelled() {
                ctx.error = self.classify(e, ctx);
            }
        }
        if ctx.cancelled() {
            // The client left before the response was complete: 499, as nginx logs it,
            // in the access log and the metrics alike.
            ctx.status = 499;
        }
        self.observer.finish_request(&self.shared, session, e, ctx);
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // Every request gets one access log line with its error code; pingora's own
        // error line would repeat it without the request id.
        ctx.start.is_some()
    }
}

impl Gateway {
    fn retries(ctx: &RequestCtx) -> u32 {
        ctx.upstream_settings().map(|u| u.retries).unwrap_or(0)
    }
}

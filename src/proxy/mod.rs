//! The proxy: pingora's `ProxyHttp` phases for agentgate. Each phase stays short and
//! hands the real work to the module that owns the concern (routing, balancing,
//! admission, observation).

pub mod admission;
pub mod ai;
pub mod ctx;
pub mod deadlines;
pub mod headers;
pub mod load;
pub mod observer;
pub mod path;
pub mod refusals;
pub mod respond;
pub mod routing;
pub mod socket;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpUpstreamRequestPolicy, Peer};
use pingora::{Error, ErrorSource, ErrorType};

use crate::clock::now_ms;
use crate::errors::{ErrorKind, GatewayError};
use crate::observe::metrics::{self, TryOutcome};
use crate::observe::trace_context::TraceContext;
use crate::state::{Runtime, Shared};
use ctx::{Client, ClientGone, Ctx, Identity, Request, Routed, Try};
use deadlines::Cut;
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

    /// The request's state as its header arrives: request id and trace context (set
    /// before anything can answer the request) and who sent it.
    fn begin(
        session: &Session,
        runtime: Arc<Runtime>,
        start: Instant,
        scan: &mut RequestScan,
    ) -> Request {
        let config = &runtime.config;
        let trace = TraceContext::from_incoming(
            scan.traceparent,
            config.trace.sampler,
            config.trace.sample_ratio,
        );
        let upstream_span_id = crate::observe::trace_context::random_span_id();
        let traceparent = Bytes::copy_from_slice(&trace.traceparent_for(&upstream_span_id));
        // Without a usable client id the request id is the trace id, as the traceparent
        // spells it (bytes 3..35): a view of the same bytes, not a second copy.
        let request_id = scan
            .request_id
            .take()
            .or_else(|| HeaderValue::from_maybe_shared(traceparent.slice(3..35)).ok())
            .unwrap_or(HeaderValue::from_static(""));
        let traceparent =
            HeaderValue::from_maybe_shared(traceparent).unwrap_or(HeaderValue::from_static(""));
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let peer_ip = peer
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let client = Client {
            peer_ip,
            ip: headers::client_ip(
                peer_ip,
                &session.req_header().headers,
                &config.server.trusted_proxies,
            ),
            socket: session
                .as_downstream()
                .stream()
                .and_then(refusals::client_socket)
                .map(|c| c.socket()),
            key_id: None,
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        };
        Request {
            start_ms: crate::clock::note_request_start(start),
            start,
            id: Identity {
                request_id,
                trace,
                traceparent,
                upstream_span_id,
                incoming_tracestate: scan.tracestate,
            },
            client,
            hop_by_hop: scan.hop_by_hop,
            websocket: scan.hop_by_hop.websocket()
                && session.req_header().method == http::Method::GET
                && session.req_header().version == http::Version::HTTP_11,
            route: None,
            policy: Default::default(),
            tries: Default::default(),
            timing: Default::default(),
            outcome: Default::default(),
            response_scan: None,
            ai: None,
            slot: None,
            runtime,
        }
    }

    /// Notes the result of one try against the chosen backend (metrics, passive health).
    fn record_try(&self, req: &Request, outcome: TryOutcome) {
        let (Some(upstream), Some(b)) = (req.upstream(), req.backend()) else {
            return;
        };
        if let Some(t) = req.backend_telemetry() {
            t.metrics.record(outcome);
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
                        let span = tracing::warn_span!(
                            "backend.ejection",
                            event = "ejection",
                            upstream = %cfg.name,
                            backend = %backend.label,
                            eject_for = ?cfg.health.eject_for,
                            outcome = outcome.as_str(),
                        );
                        let _in = span.enter();
                        tracing::warn!(
                            "backend {} of upstream {} ejected for {:?} after {} consecutive failures ({})",
                            backend.label, cfg.name, cfg.health.eject_for, cfg.health.eject_after, outcome.as_str()
                        );
                    }
                }
            }
            TryOutcome::Error => {}
        }
    }

    /// What a pingora error means for the client: the failure already recorded, what
    /// the upstream deadline found, or else the error's own type and source. `None`
    /// when the client is the one gone (nothing to answer).
    fn classify(e: &Error, req: &Request) -> Option<GatewayError> {
        if let Some(err) = req.outcome.error() {
            return Some(err.clone());
        }
        if req.tries.deadline.client_stalled() {
            // The client stopped reading: nothing to answer, nothing against the agent.
            return None;
        }
        if req.tries.deadline.upstream_fired() {
            return Some(timeout_error(req));
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
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => return Some(timeout_error(req)),
            t if is_tls_failure(t) => {
                return Some(GatewayError::new(
                    ErrorKind::UpstreamUnavailable,
                    "the TLS handshake with the agent failed (its certificate is not trusted or does not name it, or no TLS version is shared); the gateway log says which",
                ))
            }
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
    fn arm_upstream_deadline(req: &mut Request, header_seen: bool) {
        let Some(upstream) = req.tries.current.as_ref().and_then(|t| t.connection) else {
            return;
        };
        let Some(u) = req.upstream_settings() else {
            return;
        };
        let limit = if header_seen {
            u.idle_timeout
        } else {
            u.first_byte_timeout
        };
        let cut = Cut {
            upstream,
            client: req.client.socket,
        };
        req.tries.deadline.arm(cut, limit);
    }

    /// Retries the request's upstream allows (`Tries::retries` counts those made).
    fn allowed_retries(req: &Request) -> u32 {
        req.upstream_settings().map(|u| u.retries).unwrap_or(0)
    }

    /// A retry the request may make (`retries` not used up) also needs room in the
    /// upstream's `retry_budget`; one refused for budget is counted.
    fn retry_allowed(req: &Request) -> bool {
        if req.tries.count > Self::allowed_retries(req) {
            return false;
        }
        let Some(upstream) = req.upstream() else {
            return false;
        };
        let pool = &upstream.pool;
        if pool
            .retry_budget
            .try_retry(crate::clock::recent_ms() / 1000)
        {
            true
        } else {
            metrics::retry_budget_exhausted(&pool.config.name);
            false
        }
    }
}

/// Fails the request with `err` and gives pingora the error that stops the phase. The
/// pingora error only carries the status: what the client, the log, the span and the
/// metrics say comes from the request's outcome.
fn stop(req: &mut Request, err: GatewayError) -> Box<Error> {
    let status = err.kind.status();
    req.outcome.fail(err);
    Error::explain(
        ErrorType::HTTPStatus(status),
        "the request's outcome says why",
    )
}

/// The connect errors of a TLS handshake with an agent.
fn is_tls_failure(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

fn timeout_error(req: &Request) -> GatewayError {
    let streaming = req.timing.first_byte_at.is_some();
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        if streaming {
            "the agent's response went silent for longer than idle_timeout"
        } else {
            "the agent sent no response within first_byte_timeout"
        },
    )
}

fn no_request() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "no request state")
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed, and made only once the header is in: pingora keeps the context inside
    /// each request's state machine, which it copies whole into a box per request, and
    /// by value the request's state added 1.6 KB to that copy (callgrind: 1.7 k
    /// instructions a request).
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        None
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module that
    /// is still built and consulted on every request, and agent responses, streams above
    /// all, are never compressed by the gateway.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        if let Some(client) = session
            .as_downstream()
            .stream()
            .and_then(refusals::client_socket)
        {
            client.mark_header_read();
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let start = Instant::now();
        let runtime = self.shared.runtime.load_full();
        let mut scan = RequestScan::of(&session.req_header().headers);
        let req = ctx.insert(Box::new(Self::begin(session, runtime, start, &mut scan)));
        let downstream = session.as_downstream_mut();
        // Every read of the request body must deliver within body_timeout (pingora's
        // per-read timer on the downstream, which it arms for body reads anyway). A
        // WebSocket's client may stay silent while its agent talks: the stream's idle
        // deadline (either direction) bounds it instead.
        let body_timeout = (!req.websocket).then_some(req.runtime.config.server.body_timeout);
        downstream.set_read_timeout(body_timeout);
        // A pipelined request behind this one is served after it, in order (RFC 9112
        // §9.3.2), rather than dropped with the connection.
        downstream.set_pipelining_enabled(true);
        match admission::admit(session, req, &scan).await {
            Ok(()) => Ok(false),
            Err(err) => {
                respond::send_error(session, req, err).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(req) = ctx.as_deref_mut() else {
            return Ok(());
        };
        if let Some(b) = body {
            // A retry replays the body from the start: count what this try has seen,
            // and the request's size as the most any try saw.
            let this_try = match &mut req.tries.current {
                Some(t) => {
                    t.body_bytes += b.len() as u64;
                    t.body_bytes
                }
                None => req.outcome.bytes_in + b.len() as u64,
            };
            req.outcome.bytes_in = req.outcome.bytes_in.max(this_try);
            let limit = req.runtime.config.server.max_request_body_bytes;
            if req.outcome.bytes_in > limit {
                let err = GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("the request body is larger than the limit of {limit} bytes"),
                );
                return Err(stop(req, err));
            }
        }
        ai::on_request_body(session, req, body.as_deref(), end_of_stream).await;
        if req.timing.first_byte_at.is_some() {
            if req.websocket && body.is_some() {
                // A WebSocket's client sent a frame: the stream is not idle.
                Self::arm_upstream_deadline(req, true);
            }
        } else if end_of_stream {
            // The whole request is on its way to the agent: its time to first byte
            // starts now, not while the client is still uploading.
            Self::arm_upstream_deadline(req, false);
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(req) = ctx.as_deref_mut() else {
            return Err(no_request());
        };
        let Some(Routed { upstream, .. }) = req.route else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
        };
        let runtime = Arc::clone(&req.runtime);
        let upstream = &runtime.upstreams[upstream];
        let cfg = &upstream.pool.config;
        if let Some(t) = &mut req.tries.current {
            t.end();
        }
        let index = match upstream.pool.select(req.tries.tried) {
            Ok(i) => i,
            Err(_) => {
                // A retry that finds no backend left reports why the last try failed.
                let err = req.tries.last_error.take().unwrap_or_else(|| {
                    GatewayError::new(
                        ErrorKind::NoHealthyBackend,
                        format!("upstream {:?} has no healthy backend", cfg.name),
                    )
                });
                return Err(stop(req, err));
            }
        };
        if req.tries.count > 0 {
            metrics::retry(&cfg.name);
            req.begin_retry();
        } else {
            upstream
                .pool
                .retry_budget
                .note_request(crate::clock::recent_ms() / 1000);
        }
        let backend = &upstream.pool.backends[index];
        req.tries.last_error = None;
        req.tries.current = Some(Try::new(index, backend.begin_request()));
        req.tries.tried |= 1 << index;
        req.tries.count += 1;
        let mut peer = crate::balance::peer::http_peer(cfg, backend.addr, backend.host.as_deref());
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
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(req) = ctx.as_deref_mut() else {
            return Ok(());
        };
        if let Some(ip) = crate::balance::peer::ip_to_verify(peer) {
            if let Err(why) = crate::balance::peer::check_ip_san(digest, ip) {
                log::warn!("TLS to backend {}: {why}", peer.address());
                return Err(Error::create(
                    ErrorType::InvalidCert,
                    ErrorSource::Upstream,
                    Some(why.into()),
                    None,
                ));
            }
        }
        let Some(t) = req.tries.current.as_mut() else {
            return Ok(());
        };
        t.connection = Some(socket::Socket {
            fd,
            // Cached per connection by pingora: a syscall only on a new connection.
            local: digest
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|s| s.local_addr())
                .and_then(|a| a.as_inet())
                .copied(),
            peer: peer.address().as_inet().copied(),
        });
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(req) = ctx.as_deref_mut() else {
            return e;
        };
        if is_tls_failure(e.etype()) {
            // The log says why (untrusted chain, wrong name, no shared version); the
            // client's error only that the agent's TLS was refused.
            log::warn!("TLS to backend {}: {e}", _peer.address());
        }
        let outcome = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            TryOutcome::Timeout
        } else {
            TryOutcome::ConnectError
        };
        self.record_try(req, outcome);
        req.tries.last_error = Self::classify(&e, req);
        req.tries.end_current();
        // A connect failure never reached the agent: always safe to try another backend.
        e.set_retry(Self::retry_allowed(req));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {peer}"));
        let Some(req) = ctx.as_deref_mut() else {
            e.set_retry(false);
            return e;
        };
        req.tries.deadline.disarm();
        if !matches!(e.esource(), ErrorSource::Upstream) || req.tries.deadline.client_stalled() {
            // The client went away, stalled or sent something unreadable: the request
            // ends here. A retry would be another paid generation nobody reads.
            e.set_retry(false);
            return e;
        }
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) || req.tries.deadline.upstream_fired();
        self.record_try(
            req,
            if timed_out {
                TryOutcome::Timeout
            } else {
                TryOutcome::Error
            },
        );
        req.tries.last_error = Self::classify(&e, req);
        let idempotent = session.req_header().method.is_idempotent();
        let safe = idempotent
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && req.timing.first_byte_at.is_none();
        // Never more than `retries + 1` tries in all, a reused connection's included.
        e.set_retry(safe && Self::retry_allowed(req));
        if e.retry() {
            req.tries.end_current();
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(req) = ctx.as_deref_mut() else {
            return Err(no_request());
        };
        admission::prepare_upstream_request(upstream_request, req);
        req.timing.upstream_sent_at = Some(Instant::now());
        req.timing.first_byte_at = None;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(req) = ctx.as_deref_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        req.timing.first_byte_at = Some(now);
        Self::arm_upstream_deadline(req, true);
        let status = upstream_response.status.as_u16();
        req.outcome.upstream_status = Some(status);
        self.record_try(
            req,
            if status >= 500 {
                TryOutcome::ServerError
            } else {
                TryOutcome::Success
            },
        );
        if let (Some(h), Some(wait)) = (
            &req.route_telemetry().metrics.first_byte,
            req.timing.first_byte_wait(),
        ) {
            if req.id.trace.sampled {
                let unix_ms = crate::clock::unix_nanos_at(now) / 1_000_000;
                h.record_sampled(wait, &req.id.trace.trace_id, unix_ms);
            } else {
                h.record(wait);
            }
        }
        load::on_first_byte(req, upstream_response, req.timing.first_byte_wait());
        let scan = respond::ResponseScan::of(&upstream_response.headers);
        req.response_scan = Some(scan);
        if req.ai.is_some() {
            let content_type = upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes());
            ai::on_response_header(req, content_type);
        }
        admission::check_upstream_response(&scan, req).map_err(|err| stop(req, err))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(req) = ctx.as_deref_mut() else {
            return Ok(());
        };
        if self.shared.is_draining() {
            // Draining (SIGTERM, or an upgrade's hand-over): each connection closes
            // after its response, so clients reconnect to a process that stays rather
            // than send on a kept-alive connection just as this one closes it.
            session.set_keepalive(None);
        }
        let streaming = headers::edit_response(upstream_response, |map| {
            // Scanned on arrival (`upstream_response_filter`); a header that did not
            // come from there is scanned now.
            let scan = req
                .response_scan
                .take()
                .unwrap_or_else(|| respond::ResponseScan::of(map));
            scan.hop_by_hop.strip(map);
            if req.websocket && scan.hop_by_hop.websocket() {
                // The agent accepted the handshake: the client needs the same answer.
                headers::put_websocket_upgrade(map);
            }
            respond::decorate_response(map, req);
            scan.is_streaming()
        });
        req.outcome.status = upstream_response.status.as_u16();
        if streaming {
            req.route_telemetry().metrics.streams_active.increment(1.0);
            req.outcome.streaming = true;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(req) = ctx.as_deref_mut() else {
            return Ok(None);
        };
        if end_of_stream {
            req.tries.deadline.disarm();
            req.timing.response_done_at = Some(Instant::now());
        } else {
            // A chunk arrived: the silence starts again.
            Self::arm_upstream_deadline(req, true);
        }
        admission::check_upstream_body(body, end_of_stream, req).map_err(|err| stop(req, err))?;
        ai::on_response_body(req, body.as_deref(), end_of_stream);
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(req), Some(b)) = (ctx.as_deref_mut(), body) {
            req.outcome.bytes_out += b.len() as u64;
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let Some(req) = ctx.as_deref_mut() else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let err = Self::classify(e, req);
        req.tries.end_current();
        let Some(err) = err else {
            // The client went away: nothing to answer.
            req.outcome.client_gone(ClientGone::Left);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_some() {
            // Too late for an error response: the stream is cut; the log says why.
            req.outcome.fail(err);
            return FailToProxy {
                error_code: req.outcome.status,
                can_reuse_downstream: false,
            };
        }
        let status = err.kind.status();
        if respond::send_error(session, req, err).await.is_err() {
            req.outcome.client_gone(ClientGone::Left);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(req) = ctx.as_deref_mut() else {
            return;
        };
        req.tries.end_current();
        if req.timing.response_done_at.is_none() {
            req.timing.response_done_at = Some(Instant::now());
        }
        if let Some(h) = session.response_written() {
            req.outcome.status = h.status.as_u16();
        }
        if req.outcome.error().is_none() && req.tries.deadline.upstream_fired() {
            // An upgraded stream whose agent went silent ends without a pingora error:
            // the deadline is the cause all the same.
            req.outcome.fail(timeout_error(req));
        }
        if let Some(e) = e {
            let downstream = matches!(e.esource(), ErrorSource::Downstream);
            if req.tries.deadline.client_stalled()
                || (downstream && matches!(e.etype(), ErrorType::WriteTimedout))
            {
                // Stopped reading the response for idle_timeout: the client's failure.
                req.outcome.client_gone(ClientGone::StoppedReading);
            } else if downstream
                && matches!(
                    e.etype(),
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                )
            {
                req.outcome.client_gone(ClientGone::Left);
            }
            if req.outcome.error().is_none()
                && req.timing.first_byte_at.is_some()
                && !req.outcome.cancelled()
            {
                if let Some(err) = Self::classify(e, req) {
                    req.outcome.fail(err);
                }
            }
        }
        if req.outcome.cancelled() {
            // The client left before the response was complete: 499, as nginx logs it,
            // in the access log and the metrics alike.
            req.outcome.status = 499;
        }
        ai::finish(session, req).await;
        self.observer.finish_request(session, req);
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        // Every request gets one access log line with its error code; pingora's own
        // error line would repeat it without the request id.
        ctx.is_some()
    }
}

//! Per-request state carried through the proxy phases.
//!
//! pingora makes a context before it has read anything, so the phases' context is an
//! `Option<Box<Request>>` ([`Ctx`]): `None` until the request header is in, then a
//! [`Request`] made whole at once (runtime, clock, identity, client). What becomes
//! known later has a record of its own, made when it is known: the route decision
//! ([`Routed`]), the tries ([`Tries`], with the try under way as a [`Try`]), the
//! timing of the upstream exchange ([`Timing`]), the policies' notes for the response
//! ([`PolicyNotes`]), and how the request ended ([`Outcome`], the one place its failure
//! is written and read).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::deadlines::UpstreamDeadline;
use super::headers::HopByHop;
use super::respond::ResponseScan;
use super::socket::Socket;
use crate::ai::{Meter, RequestFacts, Usage, UsageSource};
use crate::balance::concurrency::Slot;
use crate::balance::InFlightGuard;
use crate::config::RateLimitKey;
use crate::errors::GatewayError;
use crate::observe::metrics::PaginationAction;
use crate::observe::per_config::{BackendTelemetry, RouteTelemetry, UpstreamTelemetry};
use crate::observe::trace_context::TraceContext;
use crate::pagination::ResponseCap;
use crate::ratelimit::tokens::Reservation;
use crate::state::{RouteRuntime, Runtime, UpstreamRuntime};

/// The proxy phases' context: the request once its header has been read.
pub type Ctx = Option<Box<Request>>;

/// A request from the moment its header is read to its log line.
pub struct Request {
    /// The runtime this request started on; it finishes on it even across a reload.
    pub runtime: Arc<Runtime>,
    pub start: Instant,
    /// `start` on the `clock::ms_at` scale.
    pub start_ms: u64,
    pub id: Identity,
    pub client: Client,
    /// Hop-by-hop headers the request arrived with.
    pub hop_by_hop: HopByHop,
    /// A WebSocket handshake (HTTP/1.1 GET with `Upgrade: websocket`): its upgrade
    /// headers are forwarded, and after the agent's `101` bytes flow both ways.
    pub websocket: bool,
    /// The route chosen, once routing found one.
    pub route: Option<Routed>,
    pub policy: PolicyNotes,
    pub tries: Tries,
    pub timing: Timing,
    pub outcome: Outcome,
    /// The agent's response header as scanned on arrival (taken by `response_filter`).
    pub response_scan: Option<ResponseScan>,
    /// What an LLM-style exchange says of itself, on routes with `[routes.ai]`.
    pub ai: Option<Box<AiExchange>>,
    /// The slot under the upstream's concurrency cap, held until the answer ends (a
    /// stream under an adaptive cap gives it back at its first byte).
    pub slot: Option<Slot>,
}

/// An exchange on a `[routes.ai]` route: the request's facts, its token reservation and
/// the meter reading the response.
pub struct AiExchange {
    pub facts: RequestFacts,
    /// The `conversation_header` value the request arrived with (or none).
    pub conversation_id: Option<HeaderValue>,
    /// The model's label index in `[routes.ai].models` (`None`: `other`).
    pub model_label: Option<usize>,
    /// A copy of a body read as it passes (bodies past pingora's 64 KiB replay buffer),
    /// until its end is read; `None` once read or when read before admission.
    pub body_copy: Option<Vec<u8>>,
    /// Tokens reserved for this request (until it settles).
    pub reservation: Option<Reservation>,
    /// The response's reader, made when its header arrives.
    pub meter: Option<Meter>,
}

impl AiExchange {
    /// The exchange's tokens: as the agent reported them, or estimated (output from
    /// the content events, input from the request body); nothing without a response.
    pub fn usage(&self) -> (Usage, UsageSource) {
        match &self.meter {
            Some(m) => m.usage(self.facts.input_estimate()),
            None => (Usage::default(), UsageSource::Estimated),
        }
    }

    /// Input + output tokens when the agent reported its usage (what a token budget
    /// settles to).
    pub fn reported_tokens(&self) -> Option<u64> {
        let meter = self.meter.as_ref().filter(|m| m.reported())?;
        let (u, _) = meter.usage(self.facts.input_estimate());
        Some(u.input + u.output)
    }
}

/// How the request and its trace are named.
pub struct Identity {
    /// The client's `x-request-id`, or the trace id.
    pub request_id: HeaderValue,
    pub trace: TraceContext,
    /// The `traceparent` every try sends upstream (the client span as the parent).
    pub traceparent: HeaderValue,
    /// Span id of the client span for the upstream call (the upstream's parent).
    pub upstream_span_id: [u8; 8],
    /// The request arrived with a `tracestate`.
    pub incoming_tracestate: bool,
}

/// Who sent the request.
pub struct Client {
    /// The TCP peer (a proxy, when behind `trusted_proxies`).
    pub peer_ip: IpAddr,
    /// The client address: the peer, or the one trusted proxies forwarded.
    pub ip: IpAddr,
    /// The client socket, for the deadline that tells a stalled client from a silent
    /// agent (absent on a stream the gateway did not accept itself).
    pub socket: Option<Socket>,
    /// The tenant of the API key presented, if one was recognised.
    pub key_id: Option<Arc<str>>,
    /// The connection is TLS (`https` for `url.scheme` and `X-Forwarded-Proto`).
    pub tls: bool,
}

impl Client {
    /// What identifies this client for a limit keyed by `key` (rate limits, token
    /// budgets), before hashing; `ip_buf` holds an address's bytes.
    pub fn limit_key<'a>(
        &'a self,
        key: &RateLimitKey,
        headers: &'a http::HeaderMap,
        ip_buf: &'a mut [u8; 16],
    ) -> &'a [u8] {
        crate::ratelimit::key_material(key, self.ip, self.key_id.as_deref(), headers, ip_buf)
    }
}

/// The route decision: the route and the upstream it sends to.
#[derive(Debug, Clone, Copy)]
pub struct Routed {
    /// Index into `runtime.routes`.
    pub route: usize,
    /// Index into `runtime.upstreams`.
    pub upstream: usize,
}

/// What the request's policies add to its response and its log line.
#[derive(Default)]
pub struct PolicyNotes {
    /// The rate limit's verdict, when the route has one.
    pub rate_limit: Option<RateNote>,
    pub pagination: Option<PaginationAction>,
    /// `x-pagination-clamped: <asked>-><max>`
    pub pagination_clamped: Option<(u64, u64)>,
    /// The list response's size cap, on pagination routes.
    pub response_cap: Option<ResponseCap>,
    /// The token budget's verdict, when the route has one.
    pub tokens: Option<TokenNote>,
}

/// The token budget for the `RateLimit` headers, and a denial's wait.
#[derive(Debug, Clone, Copy)]
pub struct TokenNote {
    pub burst: u64,
    /// Seconds a full budget takes to refill (the policy's window).
    pub window_s: u64,
    pub remaining: u64,
    pub reset_s: u64,
    pub denied_retry_after_s: Option<u64>,
}

impl PolicyNotes {
    /// Whether the token budget denied the request (429 token_limit_exceeded).
    pub fn token_limited(&self) -> bool {
        self.tokens
            .is_some_and(|t| t.denied_retry_after_s.is_some())
    }

    /// Whether the rate limit denied the request (429).
    pub fn rate_limited(&self) -> bool {
        self.rate_limit
            .is_some_and(|r| r.denied_retry_after_s.is_some())
    }
}

/// `ratelimit-limit`, `ratelimit-remaining`, `ratelimit-reset`, and a denial's wait.
#[derive(Debug, Clone, Copy)]
pub struct RateNote {
    pub limit: u32,
    /// Seconds a full burst takes to refill (the `w` of `RateLimit-Policy`).
    pub window_s: u64,
    pub remaining: u32,
    pub reset_s: u64,
    /// Set when the request was denied (429): seconds until a retry can pass.
    pub denied_retry_after_s: Option<u64>,
}

/// The tries against the upstream's backends.
#[derive(Default)]
pub struct Tries {
    pub count: u32,
    /// Bit set of backends tried so far.
    pub tried: u64,
    /// The latest try (kept after it ends: the log names its backend).
    pub current: Option<Try>,
    /// Why the latest try failed, for a retry that finds no backend to try.
    pub last_error: Option<GatewayError>,
    /// The upstream deadline (first byte, then idle), across the tries.
    pub deadline: UpstreamDeadline,
    /// The tries before the latest, for their client spans (empty, and unallocated,
    /// unless a request was retried).
    pub earlier: Vec<EarlierTry>,
}

/// A try that was followed by another: what its client span says.
#[derive(Debug, Clone, Copy)]
pub struct EarlierTry {
    pub backend: usize,
    /// The client span's id (the parent the agent saw in `traceparent`).
    pub span_id: [u8; 8],
    pub started: Instant,
    pub ended: Instant,
    /// The agent's status, when it answered.
    pub status: Option<u16>,
    /// Why the try failed.
    pub error: Option<&'static str>,
}

/// One try: the backend it went to, and what it holds while it runs.
pub struct Try {
    /// Index into the upstream's backends.
    pub backend: usize,
    /// The backend was chosen (the client span starts here when the request is never
    /// sent, as on a connect failure).
    pub started: Instant,
    /// Counts the try in the backend's in-flight requests until it ends.
    in_flight: Option<InFlightGuard>,
    /// Request body bytes this try has forwarded (a retry replays the body).
    pub body_bytes: u64,
    /// The upstream connection, once pingora has one.
    pub connection: Option<Socket>,
}

impl Try {
    pub fn new(backend: usize, in_flight: InFlightGuard) -> Try {
        Try {
            backend,
            started: Instant::now(),
            in_flight: Some(in_flight),
            body_bytes: 0,
            connection: None,
        }
    }

    /// The try is over: the backend no longer counts it in flight.
    pub fn end(&mut self) {
        self.in_flight = None;
    }
}

impl Tries {
    /// Ends the try under way, if any: out of its backend's in-flight count, and no
    /// upstream deadline.
    pub fn end_current(&mut self) {
        if let Some(t) = &mut self.current {
            t.end();
        }
        self.deadline.disarm();
    }

    /// Retries made: every try after the first.
    pub fn retries(&self) -> u32 {
        self.count.saturating_sub(1)
    }
}

/// When the upstream exchange happened.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// The latest try's request went upstream.
    pub upstream_sent_at: Option<Instant>,
    /// Its response header arrived.
    pub first_byte_at: Option<Instant>,
    pub response_done_at: Option<Instant>,
}

impl Timing {
    /// Request sent upstream -> response header: the agent's time to first byte.
    pub fn first_byte_wait(&self) -> Option<Duration> {
        match (self.upstream_sent_at, self.first_byte_at) {
            (Some(sent), Some(first)) => Some(first.saturating_duration_since(sent)),
            _ => None,
        }
    }

    /// Time the agent spent on this request (sent -> last byte), zero when never sent.
    pub fn upstream_elapsed(&self) -> Duration {
        match self.upstream_sent_at {
            Some(sent) => self
                .response_done_at
                .or(self.first_byte_at)
                .map(|end| end.saturating_duration_since(sent))
                .unwrap_or_default(),
            None => Duration::ZERO,
        }
    }
}

/// How the request ended. Its failure is written once ([`Outcome::fail`]: the first
/// cause stands) and read by everything that reports it: the client's answer, the log's
/// `error`, the span status, the metrics' status.
#[derive(Default)]
pub struct Outcome {
    /// The status the client got (499 once the client left).
    pub status: u16,
    /// Status the agent answered with, when it answered.
    pub upstream_status: Option<u16>,
    error: Option<GatewayError>,
    client_gone: Option<ClientGone>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The response streams (counted in `agentgate_streams_active` while it runs).
    pub streaming: bool,
}

/// How a client ended its request early: both are logged 499 and neither is retried
/// or counted against a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientGone {
    /// It closed the connection (or broke it) before the response was complete.
    Left,
    /// It stopped reading the response for idle_timeout.
    StoppedReading,
}

impl Outcome {
    /// Records why the gateway failed the request; a cause already recorded stands.
    pub fn fail(&mut self, error: GatewayError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// The gateway's failure of the request, if it failed it.
    pub fn error(&self) -> Option<&GatewayError> {
        self.error.as_ref()
    }

    /// Records that the client ended the request early. Having stopped reading is the
    /// more precise verdict and replaces having left.
    pub fn client_gone(&mut self, how: ClientGone) {
        match (self.client_gone, how) {
            (None, _) | (Some(ClientGone::Left), ClientGone::StoppedReading) => {
                self.client_gone = Some(how)
            }
            _ => {}
        }
    }

    /// Whether the client ended the request before its response was complete.
    pub fn cancelled(&self) -> bool {
        self.client_gone.is_some()
    }

    /// The error code logs and spans report: the gateway's error, or the client leaving.
    pub fn error_code(&self) -> Option<&'static str> {
        match (&self.error, self.client_gone) {
            (Some(e), _) => Some(e.kind.code()),
            (None, Some(ClientGone::StoppedReading)) => Some("client_timeout"),
            (None, Some(ClientGone::Left)) => Some("client_disconnected"),
            _ => None,
        }
    }

    /// Whether the request counts as a server-side failure (for the alert windows).
    pub fn is_server_error(&self) -> bool {
        self.status >= 500 || self.error.as_ref().is_some_and(|e| e.kind.status() >= 500)
    }
}

impl Request {
    pub fn request_id_str(&self) -> &str {
        self.id.request_id.to_str().unwrap_or("")
    }

    /// The trace id as hex, for log lines.
    pub fn trace_id_string(&self) -> String {
        crate::observe::trace_context::hex_string(&self.id.trace.trace_id)
    }

    /// The chosen route's runtime.
    pub fn route_runtime(&self) -> Option<&RouteRuntime> {
        self.route.map(|r| &self.runtime.routes[r.route])
    }

    /// This request's upstream: the pool, its backends and their handles.
    pub fn upstream(&self) -> Option<&UpstreamRuntime> {
        self.route.map(|r| &self.runtime.upstreams[r.upstream])
    }

    /// The settings of this request's upstream.
    pub fn upstream_settings(&self) -> Option<&crate::config::Upstream> {
        self.route
            .map(|r| &*self.runtime.config.upstreams[r.upstream])
    }

    /// The chosen route's telemetry entries, or the unmatched ones.
    pub fn route_telemetry(&self) -> &RouteTelemetry {
        match self.route {
            Some(r) => &self.runtime.telemetry.routes[r.route],
            None => &self.runtime.telemetry.unmatched,
        }
    }

    /// The telemetry entries of this request's upstream.
    pub fn upstream_telemetry(&self) -> Option<&UpstreamTelemetry> {
        self.route
            .map(|r| &self.runtime.telemetry.upstreams[r.upstream])
    }

    /// The telemetry entries of the latest try's backend.
    pub fn backend_telemetry(&self) -> Option<&BackendTelemetry> {
        self.upstream_telemetry()?.backends.get(self.backend()?)
    }

    /// A retry is about to choose its backend: the try before it becomes an earlier
    /// try (its own client span), and the new try gets a span id and `traceparent`
    /// of its own.
    pub fn begin_retry(&mut self) {
        let Some(t) = &self.tries.current else {
            return;
        };
        let now = Instant::now();
        self.tries.earlier.push(EarlierTry {
            backend: t.backend,
            span_id: self.id.upstream_span_id,
            started: self.timing.upstream_sent_at.unwrap_or(t.started),
            ended: self.timing.first_byte_at.map_or(now, |f| f.max(now)),
            status: self.outcome.upstream_status.take(),
            error: self.tries.last_error.as_ref().map(|e| e.kind.code()),
        });
        self.timing.upstream_sent_at = None;
        self.id.upstream_span_id = crate::observe::trace_context::random_span_id();
        let traceparent = self.id.trace.traceparent_for(&self.id.upstream_span_id);
        if let Ok(v) = HeaderValue::from_bytes(&traceparent) {
            self.id.traceparent = v;
        }
    }

    /// The backend index of the latest try, if one was made.
    pub fn backend(&self) -> Option<usize> {
        self.tries.current.as_ref().map(|t| t.backend)
    }
}

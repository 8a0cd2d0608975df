//! Per-request state carried through the proxy phases.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::balance::InFlightGuard;
use crate::errors::GatewayError;
use crate::observe::metrics::{PaginationAction, TryOutcome};
use crate::observe::trace_context::TraceContext;
use crate::state::Runtime;

#[derive(Default)]
pub struct RequestCtx {
    pub start: Option<Instant>,
    /// `start` on the `clock::ms_at` scale.
    pub start_ms: u64,
    /// The runtime this request started on; it finishes on it even across a reload.
    pub runtime: Option<Arc<Runtime>>,
    /// Index into `runtime.routes`.
    pub route: Option<usize>,
    pub request_id: Option<HeaderValue>,
    pub trace: Option<TraceContext>,
    /// The `traceparent` every try sends upstream (the client span as the parent).
    pub traceparent: Option<HeaderValue>,
    /// Span id of the client span for the upstream call (the upstream's parent).
    pub upstream_span_id: [u8; 8],
    /// The TCP peer (a proxy, when behind `trusted_proxies`).
    pub peer_ip: Option<std::net::IpAddr>,
    /// The client address: the peer, or the one trusted proxies forwarded.
    pub client_ip: Option<std::net::IpAddr>,
    pub key_id: Option<Arc<str>>,
    /// Hop-by-hop headers the request arrived with.
    pub request_hop_by_hop: super::headers::HopByHop,
    /// The agent's response header as scanned on arrival (taken by `response_filter`).
    pub response_scan: Option<super::respond::ResponseScan>,
    /// The request arrived with a `tracestate`.
    pub incoming_tracestate: bool,

    /// Backend index chosen for the current try.
    pub backend: Option<usize>,
    /// Bit set of backends tried so far.
    pub tried: u64,
    pub tries: u32,
    pub in_flight: Option<InFlightGuard>,
    pub last_outcome: Option<TryOutcome>,
    /// Why the latest try failed, for a retry that finds no backend to try.
    pub last_try_error: Option<GatewayError>,
    /// Request body bytes the current try has forwarded (a retry replays the body).
    pub body_this_try: u64,

    pub upstream_sent_at: Option<Instant>,
    pub first_byte_at: Option<Instant>,
    pub response_done_at: Option<Instant>,
    /// The upstream connection of the current try, for its deadlines.
    pub connect_fd: Option<std::os::fd::RawFd>,
    pub connect_local: Option<std::net::SocketAddr>,

    pub status: u16,
    /// Status the agent answered with, when it answered.
    pub upstream_status: Option<u16>,
    pub error: Option<GatewayError>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub streaming: bool,
    pub stream_counted: bool,
    /// How the client ended the request before its response was complete, if it did.
    pub client_gone: Option<ClientGone>,

    pub rate_limited: bool,
    /// `ratelimit-limit`, `ratelimit-remaining`, `ratelimit-reset` for the response.
    pub rate_limit_headers: Option<(u32, u32, u64)>,
    pub pagination: Option<PaginationAction>,
    /// `x-pagination-clamped: <asked>-><max>`
    pub pagination_clamped: Option<(u64, u64)>,
    pub response_cap: Option<crate::pagination::ResponseCap>,
    pub retry_after_s: u64,
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

impl RequestCtx {
    /// Whether the client ended the request before its response was complete.
    pub fn cancelled(&self) -> bool {
        self.client_gone.is_some()
    }

    pub fn request_id_str(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The upstream of the chosen route.
    pub fn upstream_settings(&self) -> Option<&crate::config::Upstream> {
        let runtime = self.runtime.as_ref()?;
        let route = &runtime.routes[self.route?].route;
        Some(&runtime.config.upstreams[route.upstream])
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

    /// Request sent upstream -> response header: the agent's time to first byte.
    pub fn first_byte_wait(&self) -> Option<std::time::Duration> {
        match (self.upstream_sent_at, self.first_byte_at) {
            (Some(sent), Some(first)) => Some(first.saturating_duration_since(sent)),
            _ => None,
        }
    }

    /// The trace id as hex, for log lines (empty before one is assigned).
    pub fn trace_id_string(&self) -> String {
        self.trace
            .map(|t| crate::observe::trace_context::hex_string(&t.trace_id))
            .unwrap_or_default()
    }

    /// Time the agent spent on this request (sent -> last byte), zero when never sent.
    pub fn upstream_elapsed(&self) -> std::time::Duration {
        match self.upstream_sent_at {
            Some(sent) => self
                .response_done_at
                .or(self.first_byte_at)
                .map(|end| end.saturating_duration_since(sent))
                .unwrap_or_default(),
            None => Default::default(),
        }
    }
}

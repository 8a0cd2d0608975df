//! Prometheus metrics (SPEC §5) through the `metrics` crate.
//!
//! Labels come only from config (route, upstream and backend names) and from a closed
//! set of values (methods, status codes, outcomes), never from client input. Handles for
//! the hot path are resolved once per route and backend when a config is loaded, so a
//! request touches atomics only.

use std::sync::OnceLock;

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
pub use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::histogram::{self, Histogram};

/// Latency buckets in seconds: 1 ms to 120 s, for agent turns that are slow.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0,
];

/// Gateway overhead buckets in seconds: what the gateway itself adds is sub-millisecond.
pub const OVERHEAD_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its render handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Counters and gauges; the latency histograms are the gateway's own (`histogram`).
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is already set (tests in one process).
        let _ = metrics::set_global_recorder(recorder);
        describe();
        gauge!("agentgate_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("AGENTGATE_COMMIT")).set(1.0);
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "agentgate_http_requests_total",
        "Requests answered, by route, method and status"
    );
    describe_gauge!(
        "agentgate_http_requests_in_flight",
        "Requests being served now"
    );
    describe_counter!(
        "agentgate_upstream_requests_total",
        "Tries sent to backends, by outcome"
    );
    describe_counter!(
        "agentgate_upstream_retries_total",
        "Tries after the first for one request"
    );
    describe_gauge!(
        "agentgate_upstream_backend_healthy",
        "1 when the backend receives traffic (active and passive health)"
    );
    describe_gauge!("agentgate_streams_active", "Streaming responses open now");
    describe_counter!(
        "agentgate_streams_cancelled_total",
        "Streams ended because the client went away"
    );
    describe_counter!("agentgate_rate_limited_total", "Requests answered 429");
    describe_counter!(
        "agentgate_pagination_enforced_total",
        "Pagination decisions, by action"
    );
    describe_gauge!(
        "agentgate_alert_firing",
        "1 while the in-process alert fires"
    );
    describe_counter!(
        "agentgate_config_reloads_total",
        "Config reloads, by result"
    );
    describe_gauge!("agentgate_build_info", "Build version");
    describe_counter!(
        "agentgate_upstream_ejections_total",
        "Backends ejected by passive health"
    );
    describe_counter!(
        "agentgate_upstream_last_backend_kept_total",
        "Failures past eject_after on a backend kept in service as the last healthy one"
    );
    describe_counter!(
        "agentgate_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind"
    );
    describe_counter!(
        "agentgate_spans_dropped_total",
        "Spans dropped because the exporter fell behind"
    );
    describe_gauge!(
        "agentgate_connections_open",
        "Downstream connections held open by the proxy listener"
    );
    describe_counter!(
        "agentgate_upstream_resolve_failures_total",
        "Lookups of a backend name that failed, timed out or found nothing"
    );
    describe_counter!(
        "agentgate_tls_handshake_failures_total",
        "TLS handshakes on the listener that failed (reason: timeout, protocol)"
    );
    describe_counter!(
        "agentgate_connections_refused_total",
        "Downstream connections closed at once because max_connections were open"
    );
    describe_gauge!(
        "agentgate_rate_limit_store_up",
        "1 while the global rate limit store answers"
    );
}

/// Renders the text exposition for GET /metrics.
pub fn render() -> String {
    let mut text = install().render();
    histogram::render_into(&mut text);
    super::process::render_into(&mut text);
    text
}

/// The latency histograms (the gateway's own, see `histogram`).
static DURATION: histogram::Metric = histogram::Metric {
    name: "agentgate_http_request_duration_seconds",
    help: "Time from request received to response finished",
    bounds: &LATENCY_BUCKETS,
};
static OVERHEAD: histogram::Metric = histogram::Metric {
    name: "agentgate_gateway_overhead_seconds",
    help: "Time spent in the gateway itself, excluding the wait for the agent",
    bounds: &OVERHEAD_BUCKETS,
};
static FIRST_BYTE: histogram::Metric = histogram::Metric {
    name: "agentgate_upstream_first_byte_seconds",
    help: "Time from sending the request upstream to the response header",
    bounds: &LATENCY_BUCKETS,
};

/// The exporter's periodic housekeeping (its own histograms are not used; this keeps
/// any it may hold from growing).
pub fn upkeep() {
    install().run_upkeep();
}

/// Status class index 0..5 for 1xx..5xx (anything else counts as 5xx).
fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The methods a label may name; anything else counts as OTHER.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

pub fn method_index(method: &http::Method) -> usize {
    METHODS[..9]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(9)
}

pub fn method_label(method: &http::Method) -> &'static str {
    METHODS[method_index(method)]
}

/// Pagination actions, the `action` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaginationAction {
    Defaulted,
    Clamped,
    Rejected,
    Oversize,
}

impl PaginationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PaginationAction::Defaulted => "defaulted",
            PaginationAction::Clamped => "clamped",
            PaginationAction::Rejected => "rejected",
            PaginationAction::Oversize => "oversize",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

const STATUS_SLOTS: usize = 500; // 100..=599

/// Hot-path handles for one route (or for "unmatched").
pub struct RouteMetrics {
    route: String,
    requests: Box<[OnceLock<Counter>]>,
    duration: [Arc<Histogram>; 5],
    pub in_flight: Gauge,
    pub overhead: Arc<Histogram>,
    pub first_byte: Option<Arc<Histogram>>,
    pub streams_active: Gauge,
    pub streams_cancelled: Counter,
    pub rate_limited: Counter,
    pagination: [Counter; 4],
}

impl RouteMetrics {
    pub fn new(route: &str, upstream: Option<&str>) -> Self {
        let r = route.to_string();
        let requests = (0..METHODS.len() * STATUS_SLOTS)
            .map(|_| OnceLock::new())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            requests,
            duration: STATUS_CLASSES
                .map(|c| histogram::series(&DURATION, &[("route", route), ("status_class", c)])),
            in_flight: gauge!("agentgate_http_requests_in_flight", "route" => r.clone()),
            overhead: histogram::series(&OVERHEAD, &[("route", route)]),
            first_byte: upstream
                .map(|u| histogram::series(&FIRST_BYTE, &[("route", route), ("upstream", u)])),
            streams_active: gauge!("agentgate_streams_active", "route" => r.clone()),
            streams_cancelled: counter!("agentgate_streams_cancelled_total", "route" => r.clone()),
            rate_limited: counter!("agentgate_rate_limited_total", "route" => r.clone()),
            pagination: [
                PaginationAction::Defaulted,
                PaginationAction::Clamped,
                PaginationAction::Rejected,
                PaginationAction::Oversize,
            ]
            .map(|a| counter!("agentgate_pagination_enforced_total", "route" => r.clone(), "action" => a.as_str())),
            route: r,
        }
    }

    /// Counts one finished request.
    pub fn record_request(&self, method: &http::Method, status: u16, took: Duration) {
        let status = status.clamp(100, 599);
        let m = method_index(method);
        let slot = m * STATUS_SLOTS + (status as usize - 100);
        self.requests[slot]
            .get_or_init(|| {
                counter!(
                    "agentgate_http_requests_total",
                    "route" => self.route.clone(),
                    "method" => METHODS[m],
                    "status" => status.to_string()
                )
            })
            .increment(1);
        self.duration[status_class(status)].record(took);
    }

    pub fn record_pagination(&self, action: PaginationAction) {
        self.pagination[action.index()].increment(1);
    }
}

/// Outcome of one try against a backend, the `outcome` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    Success,
    ServerError,
    ConnectError,
    Timeout,
    Error,
}

impl TryOutcome {
    const ALL: [TryOutcome; 5] = [
        TryOutcome::Success,
        TryOutcome::ServerError,
        TryOutcome::ConnectError,
        TryOutcome::Timeout,
        TryOutcome::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TryOutcome::Success => "success",
            TryOutcome::ServerError => "server_error",
            TryOutcome::ConnectError => "connect_error",
            TryOutcome::Timeout => "timeout",
            TryOutcome::Error => "error",
        }
    }
}

/// Hot-path handles for one backend.
pub struct BackendMetrics {
    outcomes: [Counter; 5],
}

impl BackendMetrics {
    pub fn new(upstream: &str, backend: &str) -> Self {
        Self {
            outcomes: TryOutcome::ALL.map(|o| {
                counter!("agentgate_upstream_requests_total", "upstream" => upstream.to_string(), "backend" => backend.to_string(), "outcome" => o.as_str())
            }),
        }
    }

    pub fn record(&self, outcome: TryOutcome) {
        self.outcomes[outcome as usize].increment(1);
    }
}

/// Process-wide metrics that are not per route or backend.
pub fn retry(upstream: &str) {
    counter!("agentgate_upstream_retries_total", "upstream" => upstream.to_string()).increment(1);
}

pub fn set_backend_healthy(upstream: &str, backend: &str, healthy: bool) {
    gauge!("agentgate_upstream_backend_healthy", "upstream" => upstream.to_string(), "backend" => backend.to_string())
        .set(if healthy { 1.0 } else { 0.0 });
}

pub fn ejection(upstream: &str, backend: &str) {
    counter!("agentgate_upstream_ejections_total", "upstream" => upstream.to_string(), "backend" => backend.to_string()).increment(1);
}

/// One failure past `eject_after` on a backend kept in service as the last healthy one.
pub fn kept_as_last(upstream: &str, backend: &str) {
    counter!("agentgate_upstream_last_backend_kept_total", "upstream" => upstream.to_string(), "backend" => backend.to_string()).increment(1);
}

pub fn config_reload(success: bool) {
    counter!("agentgate_config_reloads_total", "result" => if success { "success" } else { "failure" }).increment(1);
}

pub fn alert_firing(alert: &str, severity: &str, firing: bool) {
    gauge!("agentgate_alert_firing", "alert" => alert.to_string(), "severity" => severity.to_string())
        .set(if firing { 1.0 } else { 0.0 });
}

pub fn access_log_dropped() {
    counter!("agentgate_access_log_dropped_total").increment(1);
}

pub fn spans_dropped(n: u64) {
    counter!("agentgate_spans_dropped_total").increment(n);
}

/// The open-connections gauge and the refused-connections counter, looked up once by
/// their owner rather than by name on every connection.
pub fn connection_handles() -> (Gauge, Counter) {
    (
        gauge!("agentgate_connections_open"),
        counter!("agentgate_connections_refused_total"),
    )
}

/// The TLS handshake failure counters, by reason: the client sent no complete
/// handshake within header_timeout, or the handshake failed (no shared version or
/// cipher, not TLS at all, a client that closed).
pub struct HandshakeFailures {
    pub timeout: Counter,
    pub protocol: Counter,
}

pub fn handshake_failure_handles() -> HandshakeFailures {
    HandshakeFailures {
        timeout: counter!("agentgate_tls_handshake_failures_total", "reason" => "timeout"),
        protocol: counter!("agentgate_tls_handshake_failures_total", "reason" => "protocol"),
    }
}

/// A lookup of a backend name failed (the upstream keeps its last addresses).
pub fn resolve_failure(upstream: &str) {
    counter!("agentgate_upstream_resolve_failures_total", "upstream" => upstream.to_string())
        .increment(1);
}

pub fn rate_limit_store_up(up: bool) {
    gauge!("agentgate_rate_limit_store_up").set(if up { 1.0 } else { 0.0 });
}

/// Makes sure zero-valued series exist from the start, so dashboards and `rate()` see
/// them before the first event.
pub fn touch_process_series() {
    counter!("agentgate_config_reloads_total", "result" => "success").absolute(0);
    counter!("agentgate_config_reloads_total", "result" => "failure").absolute(0);
    counter!("agentgate_access_log_dropped_total").absolute(0);
    counter!("agentgate_spans_dropped_total").absolute(0);
    counter!("agentgate_connections_refused_total").absolute(0);
    counter!("agentgate_tls_handshake_failures_total", "reason" => "timeout").absolute(0);
    counter!("agentgate_tls_handshake_failures_total", "reason" => "protocol").absolute(0);
    gauge!("agentgate_connections_open").set(0.0);
}

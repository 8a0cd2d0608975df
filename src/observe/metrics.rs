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
    describe_counter!(
        "agentgate_upstream_retry_budget_exhausted_total",
        "Retries not made because the upstream's retry_budget was spent"
    );
    describe_counter!(
        "agentgate_otlp_exports_total",
        "Span export requests (result: success; retried, an attempt that will be tried again; failed, a batch given up)"
    );
    describe_counter!(
        "agentgate_overloaded_total",
        "Requests answered 503 overloaded: their upstream's concurrency cap was full (and the queue, or queue_timeout passed)"
    );
    describe_gauge!(
        "agentgate_upstream_concurrency_limit",
        "The concurrency cap in force for an upstream (max_in_flight, or the adaptive limit); absent for an upstream without a cap"
    );
    describe_counter!(
        "agentgate_gen_ai_tokens_total",
        "Tokens of AI routes, by route, model (listed in [routes.ai].models, else other) and type (input, output)"
    );
    describe_counter!(
        "agentgate_token_limited_total",
        "Requests answered 429 token_limit_exceeded"
    );
    describe_counter!(
        "agentgate_streams_cancelled_tokens_total",
        "Output tokens the agent had produced for streams the client abandoned"
    );
    describe_counter!(
        "agentgate_gen_ai_requests_unparsed_total",
        "Requests of AI routes whose body was not a JSON object (passed on unread)"
    );
    describe_counter!(
        "agentgate_token_settlements_total",
        "Token reservations settled at the end of a request (result: settled; unreported, no usage so the reservation stands; store_unavailable)"
    );
    describe_gauge!(
        "agentgate_otlp_last_success_timestamp_seconds",
        "Unix time of the last span export the collector accepted"
    );
}

/// Renders the exposition for GET /metrics: the Prometheus text format, or
/// OpenMetrics 1.0 (with exemplars on the latency histograms) when `openmetrics`.
pub fn render(openmetrics: bool) -> String {
    let mut text = install().render();
    super::process::render_into(&mut text);
    if !openmetrics {
        histogram::render_into(&mut text, false);
        return text;
    }
    let mut out = String::with_capacity(text.len() + 4096);
    to_openmetrics(&text, &mut out);
    histogram::render_into(&mut out, true);
    out.push_str("# EOF\n");
    out
}

/// The OpenMetrics media type `render(true)` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Rewrites text-format families as OpenMetrics wants them: a counter's family is named
/// without its `_total` (its samples keep it), `untyped` is `unknown`, and there are no
/// blank lines.
fn to_openmetrics(text: &str, out: &mut String) {
    // The counters' names, from their TYPE lines, to rename their HELP lines as well.
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let family = |name: &str| -> String {
        match name.strip_suffix("_total") {
            Some(base) if counters.contains(&name) => base.to_string(),
            _ => name.to_string(),
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = if kind == "untyped" { "unknown" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", family(name)));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", family(name)));
        } else if line.starts_with('#') {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// The latency histograms (the gateway's own, see `histogram`).
static DURATION: histogram::Metric = histogram::Metric {
    name: "agentgate_http_request_duration_seconds",
    help: "Time from request received to response finished",
    bounds: &LATENCY_BUCKETS,
    exemplars: true,
};
static OVERHEAD: histogram::Metric = histogram::Metric {
    name: "agentgate_gateway_overhead_seconds",
    help: "Time spent in the gateway itself, excluding the wait for the agent",
    bounds: &OVERHEAD_BUCKETS,
    exemplars: false,
};
static FIRST_BYTE: histogram::Metric = histogram::Metric {
    name: "agentgate_upstream_first_byte_seconds",
    help: "Time from sending the request upstream to the response header",
    bounds: &LATENCY_BUCKETS,
    exemplars: true,
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

/// The label of a method that is not one of the known ones (the semantic conventions'
/// name, as on spans).
pub const OTHER_METHOD: &str = "_OTHER";

/// The methods a label may name; anything else counts as `_OTHER`.
const METHODS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "CONNECT",
    "TRACE",
    OTHER_METHOD,
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
    /// Requests refused `503 overloaded` by their upstream's concurrency cap.
    pub overloaded: Counter,
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
            overloaded: counter!("agentgate_overloaded_total", "route" => r.clone()),
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

    /// Counts one finished request; a sampled one (`trace`: its trace id and the Unix
    /// milliseconds it finished at) becomes its latency bucket's exemplar.
    pub fn record_request(
        &self,
        method: &http::Method,
        status: u16,
        took: Duration,
        trace: Option<(&[u8; 16], u64)>,
    ) {
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
        let histogram = &self.duration[status_class(status)];
        match trace {
            Some((id, at_ms)) => histogram.record_sampled(took, id, at_ms),
            None => histogram.record(took),
        }
    }

    pub fn record_pagination(&self, action: PaginationAction) {
        self.pagination[action.index()].increment(1);
    }
}

static TTFT: histogram::Metric = histogram::Metric {
    name: "agentgate_gen_ai_time_to_first_token_seconds",
    help: "Time from sending the request upstream to the first event that carries content",
    bounds: &LATENCY_BUCKETS,
    exemplars: true,
};

/// Time per output token buckets in seconds: 1 ms to 1 s.
pub const TPOT_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
];

static TPOT: histogram::Metric = histogram::Metric {
    name: "agentgate_gen_ai_time_per_output_token_seconds",
    help: "Time between the first and the last content event, per output token after the first",
    bounds: &TPOT_BUCKETS,
    exemplars: false,
};

/// Handles of one route and model label (a listed model, or `other`).
pub struct ModelMetrics {
    pub input_tokens: Counter,
    pub output_tokens: Counter,
    pub ttft: Arc<Histogram>,
    pub tpot: Arc<Histogram>,
}

/// Token settlement results, the `result` label values (see `ratelimit::tokens`).
pub const SETTLEMENT_RESULTS: [&str; 3] = ["settled", "unreported", "store_unavailable"];

/// Hot-path handles for a route with `[routes.ai]`.
pub struct AiMetrics {
    /// One per listed model, in the config's order, then `other` last.
    pub models: Vec<ModelMetrics>,
    pub token_limited: Counter,
    pub cancelled_tokens: Counter,
    /// Request bodies that were not a JSON object (passed on as they were).
    pub unparsed: Counter,
    pub settlements: [Counter; 3],
}

impl AiMetrics {
    pub fn new(route: &str, models: &[Arc<str>]) -> AiMetrics {
        let r = route.to_string();
        AiMetrics {
            models: models
                .iter()
                .map(|m| &**m)
                .chain(["other"])
                .map(|m| ModelMetrics {
                    input_tokens: counter!("agentgate_gen_ai_tokens_total", "route" => r.clone(), "model" => m.to_string(), "type" => "input"),
                    output_tokens: counter!("agentgate_gen_ai_tokens_total", "route" => r.clone(), "model" => m.to_string(), "type" => "output"),
                    ttft: histogram::series(&TTFT, &[("route", route), ("model", m)]),
                    tpot: histogram::series(&TPOT, &[("route", route), ("model", m)]),
                })
                .collect(),
            token_limited: counter!("agentgate_token_limited_total", "route" => r.clone()),
            cancelled_tokens: counter!("agentgate_streams_cancelled_tokens_total", "route" => r.clone()),
            unparsed: counter!("agentgate_gen_ai_requests_unparsed_total", "route" => r.clone()),
            settlements: SETTLEMENT_RESULTS
                .map(|res| counter!("agentgate_token_settlements_total", "route" => r.clone(), "result" => res)),
        }
    }

    /// The handles of a model label: its position in `models`, or `other`.
    pub fn model(&self, index: Option<usize>) -> &ModelMetrics {
        let other = self.models.len() - 1;
        &self.models[index.unwrap_or(other).min(other)]
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

/// A retry `retries` allowed but the upstream's `retry_budget` had no room for.
pub fn retry_budget_exhausted(upstream: &str) {
    counter!("agentgate_upstream_retry_budget_exhausted_total", "upstream" => upstream.to_string())
        .increment(1);
}

pub fn set_backend_healthy(upstream: &str, backend: &str, healthy: bool) {
    gauge!("agentgate_upstream_backend_healthy", "upstream" => upstream.to_string(), "backend" => backend.to_string())
        .set(if healthy { 1.0 } else { 0.0 });
}

pub fn ejection(upstream: &str, backend: &str) {
    counter!("agentgate_upstream_ejections_total", "upstream" => upstream.to_string(), "backend" => backend.to_string()).increment(1);
}

/// The gauge of an upstream's concurrency cap.
pub fn concurrency_limit(upstream: &str) -> Gauge {
    gauge!("agentgate_upstream_concurrency_limit", "upstream" => upstream.to_string())
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

/// Outcomes of one span export request, the `result` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportResult {
    Success,
    Retried,
    Failed,
}

impl ExportResult {
    pub const ALL: [ExportResult; 3] = [
        ExportResult::Success,
        ExportResult::Retried,
        ExportResult::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ExportResult::Success => "success",
            ExportResult::Retried => "retried",
            ExportResult::Failed => "failed",
        }
    }
}

pub fn otlp_export(result: ExportResult, at_unix_s: f64) {
    counter!("agentgate_otlp_exports_total", "result" => result.as_str()).increment(1);
    if result == ExportResult::Success {
        gauge!("agentgate_otlp_last_success_timestamp_seconds").set(at_unix_s);
    }
}

/// The export counters at zero from the exporter's start (the shipped rule compares
/// successes with attempts).
pub fn touch_export_series() {
    for r in ExportResult::ALL {
        counter!("agentgate_otlp_exports_total", "result" => r.as_str()).absolute(0);
    }
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

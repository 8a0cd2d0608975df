//! The validated runtime model: what the gateway runs on after a file passed every check.
//!
//! Nothing here is optional in the way the file is: defaults are filled in, names are
//! resolved to indexes, durations and addresses are parsed. A `Config` is immutable; a
//! reload builds a new one and swaps it in whole.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; reloads read it again.
    pub path: PathBuf,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub trace: TraceSettings,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Longest `path_prefix` first, so the first match is the longest.
    pub routes: Vec<Arc<Route>>,
    pub rate_limit_store: Option<RateLimitStore>,
    pub auth: Option<AuthSettings>,
    pub alerting: AlertingSettings,
    pub alerts: Vec<AlertRule>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    pub max_request_body_bytes: u64,
    pub admin_token: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body (then 408).
    pub body_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: log::LevelFilter,
    pub access_log: AccessLogTarget,
    /// Lower-case header names whose values never reach a log or span.
    pub redact_headers: Vec<String>,
    /// Query parameter names whose values are replaced by `REDACTED` in logged paths.
    pub redact_query_params: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMode {
    RoundRobin,
    Random,
    LeastInFlight,
}

impl BalanceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceMode::RoundRobin => "round_robin",
            BalanceMode::Random => "random",
            BalanceMode::LeastInFlight => "least_in_flight",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Position in `Config::upstreams`.
    pub index: usize,
    pub backends: Vec<SocketAddr>,
    pub balance: BalanceMode,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub health: HealthSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub eject_after: u32,
    pub eject_for: Duration,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Position in the file's `[[routes]]`, stable for the life of this config.
    pub index: usize,
    pub path_prefix: String,
    /// Empty means every method.
    pub methods: Vec<Method>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub auth: bool,
    pub rate_limit: Option<RateLimitRule>,
    pub pagination: Option<PaginationRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    ClientIp,
    ApiKey,
    Header(HeaderName),
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    Local,
    Global,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitRule {
    pub key: RateLimitKey,
    pub requests_per_second: f64,
    pub burst: u32,
    pub scope: RateLimitScope,
    /// Replicas sharing a global limit; the local fallback admits rate / replicas.
    pub expected_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExceed {
    Clamp,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaginationRule {
    pub methods: Vec<Method>,
    pub limit_param: String,
    pub default_limit: u64,
    pub max_limit: u64,
    pub on_exceed: OnExceed,
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct RateLimitStore {
    pub redis_url: String,
    pub on_unavailable: OnUnavailable,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub id: Arc<str>,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub keys_file: PathBuf,
    pub keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Clone)]
pub struct AlertingSettings {
    pub evaluation_interval: Duration,
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    ErrorRatio,
    LatencyP99,
    FirstByteP99,
    RateLimitedRatio,
    HealthyBackends,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ErrorRatio => "error_ratio",
            Signal::LatencyP99 => "latency_p99",
            Signal::FirstByteP99 => "first_byte_p99",
            Signal::RateLimitedRatio => "rate_limited_ratio",
            Signal::HealthyBackends => "healthy_backends",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

impl Threshold {
    pub fn holds(self, value: f64) -> bool {
        match self {
            Threshold::Above(t) => value > t,
            Threshold::Below(t) => value < t,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    /// Route name; `None` covers every route.
    pub route: Option<String>,
    pub signal: Signal,
    pub threshold: Threshold,
    pub window: Duration,
    pub for_: Duration,
    pub severity: String,
    pub summary: String,
}

impl Config {
    pub fn upstream_of(&self, route: &Route) -> &Arc<Upstream> {
        &self.upstreams[route.upstream]
    }
}

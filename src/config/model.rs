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
use pingora::tls::ssl::SslAcceptor;
use pingora::tls::x509::X509;
use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr};

use super::redacted as show;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this was loaded from; reloads read it again.
    pub path: PathBuf,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub trace: TraceSettings,
    #[serde(serialize_with = "show::upstreams_by_name")]
    pub upstreams: Vec<Arc<Upstream>>,
    /// Longest `path_prefix` first, so the first match is the longest.
    pub routes: Vec<Arc<Route>>,
    pub rate_limit_store: Option<RateLimitStore>,
    pub auth: Option<AuthSettings>,
    pub alerting: AlertingSettings,
    pub alerts: Vec<AlertRule>,
    /// Values that came from `${NAME}`s: `/config` shows the reference instead.
    #[serde(skip)]
    pub secrets: super::env::Secrets,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    #[serde(serialize_with = "show::duration")]
    pub grace_period: Duration,
    pub max_request_body_bytes: u64,
    #[serde(serialize_with = "show::secret")]
    pub admin_token: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    #[serde(serialize_with = "show::duration")]
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body (then 408).
    #[serde(serialize_with = "show::duration")]
    pub body_timeout: Duration,
    /// Downstream connections held at once; past it new ones are closed at once.
    /// 0: no cap.
    pub max_connections: usize,
    /// Cleartext HTTP/2 by prior knowledge on `listen`, beside HTTP/1.1.
    pub h2c: bool,
    /// Reload by itself when the config file or a file it names changes.
    pub watch_config: bool,
    /// `/readyz` answers 503 while an upstream has no healthy backend (off: it only
    /// lists them, so the agents being down never pulls every gateway out at once).
    pub ready_requires_backends: bool,
    /// The socket the listeners are handed over on (`agentgate run --upgrade`).
    pub upgrade_sock: Option<PathBuf>,
    /// Present: `listen` speaks TLS (HTTP/1.1, and HTTP/2 by ALPN).
    pub tls: Option<ServerTls>,
}

/// `[server.tls]`: the certificate the listener presents, read when the config is
/// loaded (so every reload reads it again).
#[derive(Debug, Clone, Serialize)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
    /// The acceptor made from the files as read (chain and key checked to belong
    /// together): new handshakes use the one of the config in force.
    #[serde(skip)]
    pub acceptor: TlsAcceptor,
}

/// An OpenSSL acceptor for the listener, shared by every handshake of one config.
#[derive(Clone)]
pub struct TlsAcceptor(pub Arc<SslAcceptor>);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// How the gateway speaks to an upstream's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2,
    /// Cleartext HTTP/2 by prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }
}

/// One backend address, and the name it was resolved from, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    pub addr: SocketAddr,
    pub name: Option<Arc<BackendName>>,
}

impl BackendAddr {
    pub fn literal(addr: SocketAddr) -> BackendAddr {
        BackendAddr { addr, name: None }
    }

    /// The backend as a metric label and log field: `127.0.0.1:9001`, or
    /// `agents.internal:9001/10.0.0.7` for an address a name resolved to.
    pub fn label(&self) -> String {
        match &self.name {
            None => self.addr.to_string(),
            Some(n) => format!("{}:{}/{}", n.host, n.port, self.addr.ip()),
        }
    }

    /// The host to name in TLS: the name it was resolved from, or its address.
    pub fn host(&self) -> String {
        match &self.name {
            None => self.addr.ip().to_string(),
            Some(n) => n.host.clone(),
        }
    }
}

/// A backend written as `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendName {
    pub host: String,
    pub port: u16,
}

/// TLS to an upstream's agents.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked in the agent's certificate; `None`: each
    /// backend's own name, or for one written as an address, that address (its IP SAN
    /// is checked).
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The CA certificates of `ca_file`; `None`: the system roots.
    #[serde(skip)]
    pub ca: Option<Arc<Box<[X509]>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    #[serde(serialize_with = "show::level")]
    pub level: log::LevelFilter,
    pub access_log: AccessLogTarget,
    /// Lower-case header names whose values never reach a log or span.
    pub redact_headers: Vec<String>,
    /// Query parameter names whose values are replaced by `REDACTED` in logged paths.
    pub redact_query_params: Vec<String>,
}

/// `[trace]` with the `OTEL_*` environment applied where the file is silent: what the
/// exporter and the sampler actually use.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSettings {
    /// The URL batches go to, as used (for http/protobuf the traces path is included);
    /// `None`: export is off.
    #[serde(serialize_with = "show::url")]
    pub otlp_endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Sent with every export request; values are shown as `REDACTED`.
    #[serde(serialize_with = "show::header_values")]
    pub headers: Vec<(String, String)>,
    pub compression: OtlpCompression,
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
    /// PEM bundle trusted for an https collector; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    pub service_name: String,
    /// Added to the resource after `service.name`, `service.version`,
    /// `service.instance.id` and `host.name` (file entries win over
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    /// The ratio of the `*traceidratio` samplers.
    pub sample_ratio: f64,
    /// Which settings came from the environment (`key = VARIABLE`), for `check`.
    #[serde(skip)]
    pub from_env: Vec<(&'static str, &'static str)>,
    /// Environment values that could not be used (each was ignored), for `check` and the
    /// start-up log.
    #[serde(skip)]
    pub env_warnings: Vec<String>,
}

/// OTLP transport (`protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr, EnumString)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    #[strum(serialize = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    #[strum(serialize = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr, EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OtlpCompression {
    Gzip,
    None,
}

impl OtlpCompression {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The head sampler (`sampler`, `OTEL_TRACES_SAMPLER`), with the OpenTelemetry
/// specification's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr, EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    #[strum(serialize = "traceidratio")]
    TraceIdRatio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    #[strum(serialize = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

impl Sampler {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BalanceMode {
    RoundRobin,
    Random,
    LeastInFlight,
    /// Power of two choices on (in flight + 1) x a peak-sensitive EWMA of each
    /// backend's time to first byte.
    PeakEwma,
}

impl BalanceMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// The key of `Config::upstreams` when shown.
    #[serde(skip)]
    pub name: String,
    /// Position in `Config::upstreams`.
    #[serde(skip)]
    pub index: usize,
    /// The backends by address: those written as addresses, and (in a runtime) every
    /// address a name in `names` resolved to.
    #[serde(serialize_with = "show::backends")]
    pub backends: Vec<BackendAddr>,
    /// The backends written as `host:port`, resolved every `resolve_interval`.
    #[serde(serialize_with = "show::names")]
    pub names: Vec<BackendName>,
    #[serde(serialize_with = "show::duration")]
    pub resolve_interval: Duration,
    pub balance: BalanceMode,
    #[serde(serialize_with = "show::duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "show::duration")]
    pub first_byte_timeout: Duration,
    #[serde(serialize_with = "show::duration")]
    pub idle_timeout: Duration,
    pub retries: u32,
    /// The share of requests that may be retried over 10 s, plus 3 a second.
    pub retry_budget: f64,
    /// Requests in flight to this upstream at once; 0: no fixed cap.
    pub max_in_flight: u32,
    /// How long a request past the cap waits for a slot (0: refused at once).
    #[serde(serialize_with = "show::duration")]
    pub queue_timeout: Duration,
    /// Present: the cap follows the agents' latency, within these bounds.
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    pub health: HealthSettings,
    pub protocol: UpstreamProtocol,
    /// Present: the agents are reached over TLS (always with `protocol = "h2"`).
    pub tls: Option<UpstreamTls>,
}

/// `[upstreams.NAME.adaptive_concurrency]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AdaptiveConcurrency {
    pub min_limit: u32,
    pub max_limit: u32,
}

impl Upstream {
    /// Whether requests to it are capped (a fixed or an adaptive limit).
    pub fn is_capped(&self) -> bool {
        self.max_in_flight > 0 || self.adaptive_concurrency.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSettings {
    /// The active check's path; empty: no active checks (passive ejection still runs).
    pub path: String,
    #[serde(serialize_with = "show::duration")]
    pub interval: Duration,
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub eject_after: u32,
    #[serde(serialize_with = "show::duration")]
    pub eject_for: Duration,
    /// The longest ejection a `Retry-After` (and its doubling) asks for.
    #[serde(serialize_with = "show::duration")]
    pub max_eject_for: Duration,
    /// Check with the gRPC health protocol (`grpc.health.v1.Health/Check`) instead of
    /// `GET path`.
    pub grpc: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: String,
    /// Position in the file's `[[routes]]`, stable for the life of this config.
    #[serde(skip)]
    pub index: usize,
    pub path_prefix: String,
    /// Empty means every method.
    #[serde(serialize_with = "show::methods")]
    pub methods: Vec<Method>,
    /// Index into `Config::upstreams`.
    #[serde(skip)]
    pub upstream: usize,
    /// The upstream's name, as the file wrote it.
    #[serde(rename = "upstream")]
    pub upstream_name: String,
    pub auth: bool,
    pub rate_limit: Option<RateLimitRule>,
    pub pagination: Option<PaginationRule>,
    pub ai: Option<AiRoute>,
    pub token_limit: Option<TokenLimitRule>,
}

/// Where an LLM API puts model, limits and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AiApi {
    /// Chat completions and responses.
    Openai,
    /// Messages.
    Anthropic,
}

/// `[routes.ai]`.
#[derive(Debug, Clone, Serialize)]
pub struct AiRoute {
    pub api: AiApi,
    /// Model names allowed as label values; any other is `other`.
    pub models: Vec<Arc<str>>,
    #[serde(serialize_with = "show::display")]
    pub conversation_header: HeaderName,
}

impl AiRoute {
    /// The label value for a request's model: itself when listed, else `other`.
    pub fn model_label(&self, model: Option<&str>) -> &str {
        model
            .and_then(|m| self.models.iter().find(|l| &***l == m))
            .map_or("other", |l| &**l)
    }
}

/// `[routes.token_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLimitRule {
    #[serde(serialize_with = "show::display")]
    pub key: RateLimitKey,
    pub tokens_per_minute: u64,
    pub burst: u64,
    pub scope: RateLimitScope,
    pub default_reservation: u64,
    pub expected_replicas: u32,
}

impl TokenLimitRule {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_per_minute as f64 / 60.0
    }
}

/// Written `client_ip`, `api_key`, `header:<Name>` or `global` (see its `Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    ClientIp,
    ApiKey,
    Header(HeaderName),
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RateLimitScope {
    Local,
    Global,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitRule {
    #[serde(serialize_with = "show::display")]
    pub key: RateLimitKey,
    pub requests_per_second: f64,
    pub burst: u32,
    pub scope: RateLimitScope,
    /// Replicas sharing a global limit; the local fallback admits rate / replicas.
    pub expected_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OnExceed {
    Clamp,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaginationRule {
    #[serde(serialize_with = "show::methods")]
    pub methods: Vec<Method>,
    pub limit_param: String,
    pub default_limit: u64,
    pub max_limit: u64,
    pub on_exceed: OnExceed,
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OnUnavailable {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitStore {
    #[serde(serialize_with = "show::url")]
    pub redis_url: String,
    /// CAs trusted for a `rediss://` store (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// `ca_file` as read.
    #[serde(skip)]
    pub ca_pem: Option<Arc<Vec<u8>>>,
    pub on_unavailable: OnUnavailable,
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub id: Arc<str>,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthSettings {
    pub keys_file: PathBuf,
    /// Shown as the key ids alone: a hash never leaves the process.
    #[serde(rename = "key_ids", serialize_with = "show::key_ids")]
    pub keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertingSettings {
    #[serde(serialize_with = "show::duration")]
    pub evaluation_interval: Duration,
    #[serde(serialize_with = "show::url")]
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Signal {
    ErrorRatio,
    LatencyP99,
    FirstByteP99,
    RateLimitedRatio,
    HealthyBackends,
    /// p99 time to first token of AI routes (seconds).
    TimeToFirstTokenP99,
    /// Input + output tokens per second of AI routes.
    TokensPerSecond,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        self.into()
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

#[derive(Debug, Clone, Serialize)]
pub struct AlertRule {
    pub name: String,
    /// Route name; `None` covers every route.
    pub route: Option<String>,
    pub signal: Signal,
    #[serde(flatten, serialize_with = "show::threshold")]
    pub threshold: Threshold,
    #[serde(serialize_with = "show::duration")]
    pub window: Duration,
    #[serde(rename = "for", serialize_with = "show::duration")]
    pub for_: Duration,
    pub severity: String,
    pub summary: String,
}

// The defaults of every setting the file may leave out, in one place; validation
// starts from them.
impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            grace_period: Duration::from_secs(10),
            max_request_body_bytes: 1_048_576,
            admin_token: None,
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: 0,
            h2c: false,
            watch_config: true,
            ready_requires_backends: false,
            upgrade_sock: None,
            tls: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Json,
            level: log::LevelFilter::Info,
            access_log: AccessLogTarget::Stdout,
            redact_headers: ["authorization", "cookie", "x-api-key"]
                .map(String::from)
                .to_vec(),
            redact_query_params: ["token", "api_key", "key"].map(String::from).to_vec(),
        }
    }
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            otlp_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            headers: Vec::new(),
            compression: OtlpCompression::Gzip,
            timeout: Duration::from_secs(10),
            ca_file: None,
            service_name: "agentgate".into(),
            resource_attributes: Vec::new(),
            sampler: Sampler::ParentbasedTraceIdRatio,
            sample_ratio: 1.0,
            from_env: Vec::new(),
            env_warnings: Vec::new(),
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 1,
            eject_after: 5,
            eject_for: Duration::from_secs(30),
            max_eject_for: Duration::from_secs(300),
            grpc: false,
        }
    }
}

impl Default for AlertingSettings {
    fn default() -> Self {
        AlertingSettings {
            evaluation_interval: Duration::from_secs(1),
            webhook_url: None,
        }
    }
}

impl Config {
    /// The files this config was read from: the file itself and every file it names
    /// (keys, certificates, CA bundles), which a change to any of them reloads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        if let Some(a) = &self.auth {
            files.push(a.keys_file.clone());
        }
        if let Some(t) = &self.server.tls {
            files.push(t.cert_file.clone());
            files.push(t.key_file.clone());
        }
        for u in &self.upstreams {
            if let Some(ca) = u.tls.as_ref().and_then(|t| t.ca_file.clone()) {
                files.push(ca);
            }
        }
        if let Some(ca) = self
            .rate_limit_store
            .as_ref()
            .and_then(|s| s.ca_file.clone())
        {
            files.push(ca);
        }
        files.sort();
        files.dedup();
        files
    }
}

impl Upstream {
    pub const DEFAULT_BALANCE: BalanceMode = BalanceMode::LeastInFlight;
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_RETRIES: u32 = 1;
    /// SPEC 7.6 and Linkerd's default: a fifth of requests, plus 3 a second.
    pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
    pub const DEFAULT_PROTOCOL: UpstreamProtocol = UpstreamProtocol::Http1;
    pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
}

impl RateLimitStore {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
}

impl From<AccessLogTarget> for String {
    fn from(t: AccessLogTarget) -> String {
        match t {
            AccessLogTarget::Stdout => "stdout".into(),
            AccessLogTarget::Off => "off".into(),
            AccessLogTarget::File(p) => p.display().to_string(),
        }
    }
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::ApiKey => f.write_str("api_key"),
            RateLimitKey::Global => f.write_str("global"),
            RateLimitKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl Config {
    pub fn upstream_of(&self, route: &Route) -> &Arc<Upstream> {
        &self.upstreams[route.upstream]
    }
}

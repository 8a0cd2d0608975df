//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Every table denies unknown keys so that a typo is an error, never a silently ignored
//! setting. Values that need checking beyond their TOML type (durations, addresses, names
//! of other sections) are kept `Spanned` so validation can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::model::{
    BalanceMode, LogFormat, LogLevel, OnExceed, OnUnavailable, OtlpCompression, OtlpProtocol,
    RateLimitScope, Sampler, Signal, TlsVersion, UpstreamProtocol,
};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub trace: TraceSection,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamSection>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSection>>,
    pub rate_limit_store: Option<Spanned<RateLimitStoreSection>>,
    pub auth: Option<Spanned<AuthSection>>,
    pub alerting: Option<Spanned<AlertingSection>>,
    #[serde(default)]
    pub alerts: Vec<Spanned<AlertSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub threads: Option<Spanned<i64>>,
    pub grace_period: Option<Spanned<String>>,
    pub max_request_body_bytes: Option<Spanned<i64>>,
    pub admin_token: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub header_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub h2c: Option<Spanned<bool>>,
    pub watch_config: Option<Spanned<bool>>,
    pub ready_requires_backends: Option<Spanned<bool>>,
    pub upgrade_sock: Option<Spanned<String>>,
    pub tls: Option<Spanned<ServerTlsSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSection {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub min_version: Option<Spanned<TlsVersion>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<Spanned<LogFormat>>,
    pub level: Option<Spanned<LogLevel>>,
    pub access_log: Option<Spanned<String>>,
    pub redact_headers: Option<Vec<Spanned<String>>>,
    pub redact_query_params: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    pub otlp_endpoint: Option<Spanned<String>>,
    pub protocol: Option<Spanned<OtlpProtocol>>,
    pub headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub compression: Option<Spanned<OtlpCompression>>,
    pub timeout: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    pub resource_attributes: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub sampler: Option<Spanned<Sampler>>,
    pub sample_ratio: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub backends: Spanned<Vec<Spanned<String>>>,
    pub resolve_interval: Option<Spanned<String>>,
    pub balance: Option<Spanned<BalanceMode>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub first_byte_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub retry_budget: Option<Spanned<f64>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub adaptive_concurrency: Option<Spanned<AdaptiveSection>>,
    pub health: Option<HealthSection>,
    pub protocol: Option<Spanned<UpstreamProtocol>>,
    pub tls: Option<Spanned<bool>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

/// `[upstreams.NAME.adaptive_concurrency]`: a concurrency cap that follows the agents'
/// latency.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSection {
    pub min_limit: Option<Spanned<i64>>,
    pub max_limit: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
    pub eject_after: Option<Spanned<i64>>,
    pub eject_for: Option<Spanned<String>>,
    pub max_eject_for: Option<Spanned<String>>,
    pub grpc: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: Spanned<String>,
    pub path_prefix: Spanned<String>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub auth: Option<Spanned<bool>>,
    pub rate_limit: Option<Spanned<RateLimitSection>>,
    pub pagination: Option<Spanned<PaginationSection>>,
    pub ai: Option<Spanned<AiSection>>,
    pub token_limit: Option<Spanned<TokenLimitSection>>,
}

/// `[routes.ai]`: the route carries LLM-style traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSection {
    pub api: Option<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    pub conversation_header: Option<Spanned<String>>,
}

/// `[routes.token_limit]`: a token budget reserved at admission, settled from usage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitSection {
    pub key: Option<Spanned<String>>,
    pub tokens_per_minute: Spanned<i64>,
    pub burst: Option<Spanned<i64>>,
    pub scope: Option<Spanned<RateLimitScope>>,
    pub default_reservation: Option<Spanned<i64>>,
    /// How many gateway replicas share a global budget; sizes the local fallback share.
    pub expected_replicas: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub key: Option<Spanned<String>>,
    pub requests_per_second: Spanned<f64>,
    pub burst: Option<Spanned<i64>>,
    pub scope: Option<Spanned<RateLimitScope>>,
    /// How many gateway replicas share a global limit; sizes the local fallback share.
    pub expected_replicas: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaginationSection {
    pub methods: Option<Vec<Spanned<String>>>,
    pub limit_param: Option<Spanned<String>>,
    pub default_limit: Option<Spanned<i64>>,
    pub max_limit: Option<Spanned<i64>>,
    pub on_exceed: Option<Spanned<OnExceed>>,
    pub max_response_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStoreSection {
    pub redis_url: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub on_unavailable: Option<Spanned<OnUnavailable>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub keys_file: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingSection {
    pub evaluation_interval: Option<Spanned<String>>,
    pub webhook_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSection {
    pub name: Spanned<String>,
    pub route: Option<Spanned<String>>,
    pub signal: Spanned<Signal>,
    pub above: Option<Spanned<f64>>,
    pub below: Option<Spanned<f64>>,
    pub window: Option<Spanned<String>>,
    #[serde(rename = "for")]
    pub for_: Option<Spanned<String>>,
    pub severity: Option<Spanned<String>>,
    pub summary: Option<Spanned<String>>,
}

/// The keys file named by `[auth].keys_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: Spanned<String>,
    pub sha256: Spanned<String>,
}

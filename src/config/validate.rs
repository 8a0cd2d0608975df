//! Checks a parsed file and builds the runtime model, collecting every problem with its
//! location instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use ipnet::IpNet;
use toml::Spanned;

use super::duration::parse_duration;
use super::error::{ConfigErrors, Locator};
use super::file::*;
use super::model::*;

/// Everything a validation needs besides the parsed file.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

pub fn validate(source: &Source<'_>, file: FileConfig) -> Result<Config, ConfigErrors> {
    let mut loc = Locator::new(source.path, source.text);
    let server = server_settings(&mut loc, &file.server);
    let log = log_settings(&mut loc, &file.log, source.path);
    let trace = trace_settings(&mut loc, &file.trace);
    let upstreams = upstreams(&mut loc, &file.upstreams);
    let rate_limit_store = file
        .rate_limit_store
        .as_ref()
        .map(|s| rate_limit_store(&mut loc, s.get_ref()));
    let auth = file
        .auth
        .as_ref()
        .and_then(|a| auth_settings(&mut loc, a, source.path));
    let routes = routes(
        &mut loc,
        &file.routes,
        &upstreams,
        rate_limit_store.is_some(),
        auth.is_some(),
    );
    let alerting = alerting_settings(&mut loc, file.alerting.as_ref());
    let alerts = alerts(&mut loc, &file.alerts, &routes);

    let config = Config {
        path: source.path.to_path_buf(),
        server,
        log,
        trace,
        upstreams,
        routes,
        rate_limit_store,
        auth,
        alerting,
        alerts,
    };
    loc.into_result(config)
}

fn span<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

fn duration_or(loc: &mut Locator, v: &Option<Spanned<String>>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                loc.push(span(s), e);
                default
            }
        },
    }
}

/// A duration that must be above zero (a zero timeout or interval means nothing sensible).
fn positive_duration_or(
    loc: &mut Locator,
    v: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
) -> Duration {
    let d = duration_or(loc, v, default);
    if let Some(s) = v {
        if d.is_zero() && parse_duration(s.get_ref()).is_ok() {
            loc.push(span(s), format!("{what} must be greater than zero"));
            return default;
        }
    }
    d
}

fn int_in(
    loc: &mut Locator,
    v: &Option<Spanned<i64>>,
    default: i64,
    min: i64,
    max: i64,
    what: &str,
) -> i64 {
    match v {
        None => default,
        Some(s) => {
            let n = *s.get_ref();
            if n < min || n > max {
                loc.push(
                    span(s),
                    format!("{what} must be between {min} and {max}, got {n}"),
                );
                default
            } else {
                n
            }
        }
    }
}

fn socket_addr(loc: &mut Locator, v: &Option<Spanned<String>>, default: &str) -> SocketAddr {
    let fallback: SocketAddr = default
        .parse()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    match v {
        None => fallback,
        Some(s) => parse_socket_addr(s.get_ref()).unwrap_or_else(|e| {
            loc.push(span(s), e);
            fallback
        }),
    }
}

pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        format!("invalid address {text:?}: write an IP address and a port, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\" (host names are not resolved)")
    })
}

fn one_of<T: Copy>(
    loc: &mut Locator,
    v: &Option<Spanned<String>>,
    default: T,
    choices: &[(&str, T)],
    what: &str,
) -> T {
    let Some(s) = v else { return default };
    for (name, value) in choices {
        if s.get_ref() == name {
            return *value;
        }
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    loc.push(
        span(s),
        format!(
            "unknown {what} {:?}: use one of {}",
            s.get_ref(),
            names.join(", ")
        ),
    );
    default
}

fn server_settings(loc: &mut Locator, s: &ServerSection) -> ServerSettings {
    let listen = socket_addr(loc, &s.listen, "0.0.0.0:8080");
    let admin_listen = socket_addr(loc, &s.admin_listen, "127.0.0.1:9090");
    if let (Some(a), Some(_)) = (&s.admin_listen, &s.listen) {
        if listen == admin_listen {
            loc.push(span(a), "admin_listen must differ from listen");
        }
    }
    let threads = int_in(loc, &s.threads, 2, 1, 256, "threads") as usize;
    let grace_period = duration_or(loc, &s.grace_period, Duration::from_secs(10));
    let max_request_body_bytes = int_in(
        loc,
        &s.max_request_body_bytes,
        1_048_576,
        1,
        i64::MAX,
        "max_request_body_bytes",
    ) as u64;
    let admin_token = s
        .admin_token
        .as_ref()
        .map(|t| t.get_ref().clone())
        .filter(|t| !t.is_empty());
    let mut trusted_proxies = Vec::new();
    for cidr in s.trusted_proxies.iter().flatten() {
        match parse_cidr(cidr.get_ref()) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => loc.push(span(cidr), e),
        }
    }
    let header_timeout = positive_duration_or(
        loc,
        &s.header_timeout,
        Duration::from_secs(10),
        "header_timeout",
    );
    let body_timeout = positive_duration_or(
        loc,
        &s.body_timeout,
        Duration::from_secs(60),
        "body_timeout",
    );
    ServerSettings {
        listen,
        admin_listen,
        threads,
        grace_period,
        max_request_body_bytes,
        admin_token,
        trusted_proxies,
        header_timeout,
        body_timeout,
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        return Ok(net);
    }
    if let Ok(ip) = std::net::IpAddr::from_str(text) {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid CIDR {text:?}: write an address block such as \"10.0.0.0/8\" or a single address"
    ))
}

fn log_settings(loc: &mut Locator, s: &LogSection, config_path: &Path) -> LogSettings {
    let format = one_of(
        loc,
        &s.format,
        LogFormat::Json,
        &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        "log format",
    );
    let level = one_of(
        loc,
        &s.level,
        log::LevelFilter::Info,
        &[
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
        ],
        "log level",
    );
    let access_log = match &s.access_log {
        None => AccessLogTarget::Stdout,
        Some(v) => match v.get_ref().as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                loc.push(
                    span(v),
                    "access_log is empty: use stdout, off or a file path",
                );
                AccessLogTarget::Off
            }
            path => AccessLogTarget::File(relative_to(config_path, path)),
        },
    };
    let redact_headers = match &s.redact_headers {
        None => vec!["authorization".into(), "cookie".into(), "x-api-key".into()],
        Some(list) => list
            .iter()
            .filter_map(|h| match HeaderName::from_str(h.get_ref()) {
                Ok(name) => Some(name.as_str().to_string()),
                Err(_) => {
                    loc.push(
                        span(h),
                        format!("{:?} is not a valid header name", h.get_ref()),
                    );
                    None
                }
            })
            .collect(),
    };
    let redact_query_params = match &s.redact_query_params {
        None => vec!["token".into(), "api_key".into(), "key".into()],
        Some(list) => list.iter().map(|p| p.get_ref().clone()).collect(),
    };
    LogSettings {
        format,
        level,
        access_log,
        redact_headers,
        redact_query_params,
    }
}

/// Paths in the config are relative to the config file's folder, so a config and the
/// files it names move together.
fn relative_to(config_path: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        config_path.parent().map(|dir| dir.join(&p)).unwrap_or(p)
    }
}

fn trace_settings(loc: &mut Locator, s: &TraceSection) -> TraceSettings {
    let otlp_endpoint = match &s.otlp_endpoint {
        Some(e) if !e.get_ref().is_empty() => {
            let text = e.get_ref();
            if let Err(problem) = super::Endpoint::parse(text) {
                loc.push(
                    span(e),
                    format!("otlp_endpoint: {problem}; it must be an http:// URL of an OTLP/HTTP traces endpoint, e.g. \"http://127.0.0.1:4318/v1/traces\""),
                );
                None
            } else {
                Some(text.clone())
            }
        }
        _ => None,
    };
    let service_name = s
        .service_name
        .as_ref()
        .map(|n| n.get_ref().clone())
        .unwrap_or_else(|| "agentgate".into());
    let sample_ratio = match &s.sample_ratio {
        None => 1.0,
        Some(r) => {
            let v = *r.get_ref();
            if !(0.0..=1.0).contains(&v) {
                loc.push(
                    span(r),
                    format!("sample_ratio must be between 0.0 and 1.0, got {v}"),
                );
                1.0
            } else {
                v
            }
        }
    };
    TraceSettings {
        otlp_endpoint,
        service_name,
        sample_ratio,
    }
}

fn upstreams(
    loc: &mut Locator,
    sections: &std::collections::BTreeMap<String, Spanned<UpstreamSection>>,
) -> Vec<Arc<Upstream>> {
    let mut out = Vec::new();
    for (name, section) in sections {
        let table_span = span(section);
        let s = section.get_ref();
        let mut backends = Vec::new();
        if s.backends.get_ref().is_empty() {
            loc.push(
                span(&s.backends),
                format!("upstream {name:?} has no backends: list at least one \"IP:PORT\""),
            );
        }
        let mut seen = HashSet::new();
        for b in s.backends.get_ref() {
            match parse_socket_addr(b.get_ref()) {
                Ok(addr) => {
                    if !seen.insert(addr) {
                        loc.push(span(b), format!("backend {addr} is listed twice"));
                    } else {
                        backends.push(addr);
                    }
                }
                Err(e) => loc.push(span(b), e),
            }
        }
        let balance = one_of(
            loc,
            &s.balance,
            BalanceMode::LeastInFlight,
            &[
                ("round_robin", BalanceMode::RoundRobin),
                ("random", BalanceMode::Random),
                ("least_in_flight", BalanceMode::LeastInFlight),
            ],
            "balance mode",
        );
        let connect_timeout = positive_duration_or(
            loc,
            &s.connect_timeout,
            Duration::from_secs(1),
            "connect_timeout",
        );
        let first_byte_timeout = positive_duration_or(
            loc,
            &s.first_byte_timeout,
            Duration::from_secs(120),
            "first_byte_timeout",
        );
        let idle_timeout = positive_duration_or(
            loc,
            &s.idle_timeout,
            Duration::from_secs(60),
            "idle_timeout",
        );
        let retries = int_in(loc, &s.retries, 1, 0, 10, "retries") as u32;
        let h = s.health.as_ref();
        let health = health_settings(loc, h.unwrap_or(&HealthSection::default()));
        let _ = table_span;
        out.push(Arc::new(Upstream {
            name: name.clone(),
            index: out.len(),
            backends,
            balance,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            retries,
            health,
        }));
    }
    out
}

fn health_settings(loc: &mut Locator, h: &HealthSection) -> HealthSettings {
    let path = match &h.path {
        None => "/healthz".to_string(),
        Some(p) => {
            if !p.get_ref().starts_with('/') {
                loc.push(span(p), "health path must start with '/'");
            }
            p.get_ref().clone()
        }
    };
    let interval = positive_duration_or(loc, &h.interval, Duration::from_secs(2), "interval");
    let timeout = positive_duration_or(loc, &h.timeout, Duration::from_secs(1), "timeout");
    if let Some(t) = &h.timeout {
        if timeout > interval {
            loc.push(
                span(t),
                "health timeout must not be longer than the interval",
            );
        }
    }
    HealthSettings {
        path,
        interval,
        timeout,
        unhealthy_after: int_in(loc, &h.unhealthy_after, 2, 1, 1000, "unhealthy_after") as u32,
        healthy_after: int_in(loc, &h.healthy_after, 1, 1, 1000, "healthy_after") as u32,
        eject_after: int_in(loc, &h.eject_after, 5, 0, 1000, "eject_after") as u32,
        eject_for: positive_duration_or(loc, &h.eject_for, Duration::from_secs(30), "eject_for"),
    }
}

fn methods(loc: &mut Locator, list: &[Spanned<String>]) -> Vec<Method> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    let mut out = Vec::new();
    for m in list {
        let text = m.get_ref();
        if !KNOWN.contains(&text.as_str()) {
            loc.push(
                span(m),
                format!(
                    "unknown method {text:?}: use upper-case names such as \"GET\" or \"POST\""
                ),
            );
            continue;
        }
        if let Ok(method) = Method::from_bytes(text.as_bytes()) {
            out.push(method);
        }
    }
    out
}

fn routes(
    loc: &mut Locator,
    sections: &[Spanned<RouteSection>],
    upstreams: &[Arc<Upstream>],
    have_store: bool,
    have_auth: bool,
) -> Vec<Arc<Route>> {
    let by_name: HashMap<&str, usize> = upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.index))
        .collect();
    let mut names = HashSet::new();
    let mut prefixes = HashMap::new();
    let mut out = Vec::new();
    for (index, section) in sections.iter().enumerate() {
        let r = section.get_ref();
        let name = r.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            loc.push(
                span(&r.name),
                format!("route name {name:?} must be non-empty and use only letters, digits, '_' and '-' (it becomes a metric label)"),
            );
        }
        if name == "unmatched" {
            loc.push(
                span(&r.name),
                "route name \"unmatched\" is reserved for requests that match no route",
            );
        }
        if !names.insert(name.clone()) {
            loc.push(
                span(&r.name),
                format!("duplicate route name {name:?}: route names must be unique"),
            );
        }
        let prefix = r.path_prefix.get_ref().clone();
        if !prefix.starts_with('/') {
            loc.push(
                span(&r.path_prefix),
                format!("path_prefix {prefix:?} must start with '/'"),
            );
        }
        let route_methods = methods(loc, &r.methods);
        let method_key: Vec<String> = {
            let mut m: Vec<String> = route_methods.iter().map(|m| m.to_string()).collect();
            m.sort();
            m
        };
        if let Some(other) = prefixes.insert((prefix.clone(), method_key), name.clone()) {
            loc.push(
                span(&r.path_prefix),
                format!("path_prefix {prefix:?} is already used by route {other:?} for the same methods"),
            );
        }
        let upstream = match by_name.get(r.upstream.get_ref().as_str()) {
            Some(i) => *i,
            None => {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                loc.push(
                    span(&r.upstream),
                    format!(
                        "route {name:?} names upstream {:?}, which is not defined: define [upstreams.{}] or use one of: {}",
                        r.upstream.get_ref(),
                        r.upstream.get_ref(),
                        if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                    ),
                );
                0
            }
        };
        let auth = r.auth.as_ref().map(|a| *a.get_ref()).unwrap_or(false);
        if auth && !have_auth {
            if let Some(a) = &r.auth {
                loc.push(
                    span(a),
                    "auth = true needs an [auth] section with a keys_file",
                );
            }
        }
        let rate_limit = r
            .rate_limit
            .as_ref()
            .map(|rl| rate_limit_rule(loc, rl, have_store));
        let pagination = r
            .pagination
            .as_ref()
            .map(|p| pagination_rule(loc, p.get_ref()));
        out.push(Arc::new(Route {
            name,
            index,
            path_prefix: prefix,
            methods: route_methods,
            upstream,
            auth,
            rate_limit,
            pagination,
        }));
    }
    // Longest prefix first; among equal prefixes, routes restricted to methods first so a
    // method-specific route wins over a catch-all one.
    out.sort_by(|a, b| {
        b.path_prefix
            .len()
            .cmp(&a.path_prefix.len())
            .then_with(|| a.methods.is_empty().cmp(&b.methods.is_empty()))
            .then_with(|| a.index.cmp(&b.index))
    });
    out
}

fn rate_limit_rule(
    loc: &mut Locator,
    rl: &Spanned<RateLimitSection>,
    have_store: bool,
) -> RateLimitRule {
    let s = rl.get_ref();
    let key = match &s.key {
        None => RateLimitKey::ClientIp,
        Some(k) => match k.get_ref().as_str() {
            "client_ip" => RateLimitKey::ClientIp,
            "api_key" => RateLimitKey::ApiKey,
            "global" => RateLimitKey::Global,
            other => match other.strip_prefix("header:") {
                Some(h) => match HeaderName::from_str(h) {
                    Ok(name) => RateLimitKey::Header(name),
                    Err(_) => {
                        loc.push(span(k), format!("{h:?} is not a valid header name"));
                        RateLimitKey::Global
                    }
                },
                None => {
                    loc.push(
                        span(k),
                        format!("unknown rate limit key {other:?}: use client_ip, api_key, header:<Name> or global"),
                    );
                    RateLimitKey::Global
                }
            },
        },
    };
    let rps = *s.requests_per_second.get_ref();
    if !(rps > 0.0 && rps.is_finite() && rps <= 1_000_000.0) {
        loc.push(
            span(&s.requests_per_second),
            format!("requests_per_second must be greater than 0 and at most 1000000, got {rps}"),
        );
    }
    let default_burst = rps.ceil().clamp(1.0, 1_000_000.0) as i64;
    let burst = int_in(loc, &s.burst, default_burst, 1, 1_000_000, "burst") as u32;
    let scope = one_of(
        loc,
        &s.scope,
        RateLimitScope::Local,
        &[
            ("local", RateLimitScope::Local),
            ("global", RateLimitScope::Global),
        ],
        "rate limit scope",
    );
    if scope == RateLimitScope::Global && !have_store {
        if let Some(sc) = &s.scope {
            loc.push(
                span(sc),
                "scope = \"global\" needs a [rate_limit_store] section with a redis_url",
            );
        }
    }
    let expected_replicas =
        int_in(loc, &s.expected_replicas, 1, 1, 10_000, "expected_replicas") as u32;
    RateLimitRule {
        key,
        requests_per_second: if rps > 0.0 && rps.is_finite() {
            rps
        } else {
            1.0
        },
        burst,
        scope,
        expected_replicas,
    }
}

fn pagination_rule(loc: &mut Locator, p: &PaginationSection) -> PaginationRule {
    let methods = match &p.methods {
        None => vec![Method::GET],
        Some(list) => methods(loc, list),
    };
    let limit_param = match &p.limit_param {
        None => "limit".to_string(),
        Some(l) => {
            let v = l.get_ref();
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                loc.push(span(l), format!("limit_param {v:?} must be a plain query parameter name (letters, digits, '_', '-', '.')"));
            }
            v.clone()
        }
    };
    let default_limit = int_in(loc, &p.default_limit, 20, 1, 1_000_000_000, "default_limit") as u64;
    let max_limit = int_in(
        loc,
        &p.max_limit,
        100.max(default_limit as i64),
        1,
        1_000_000_000,
        "max_limit",
    ) as u64;
    if max_limit < default_limit {
        let at = p
            .max_limit
            .as_ref()
            .map(span)
            .or_else(|| p.default_limit.as_ref().map(span))
            .unwrap_or(0..0);
        loc.push(
            at,
            format!("max_limit ({max_limit}) must be at least default_limit ({default_limit})"),
        );
    }
    let on_exceed = one_of(
        loc,
        &p.on_exceed,
        OnExceed::Clamp,
        &[("clamp", OnExceed::Clamp), ("reject", OnExceed::Reject)],
        "on_exceed",
    );
    let max_response_bytes = int_in(
        loc,
        &p.max_response_bytes,
        1_048_576,
        1,
        i64::MAX,
        "max_response_bytes",
    ) as u64;
    PaginationRule {
        methods,
        limit_param,
        default_limit,
        max_limit,
        on_exceed,
        max_response_bytes,
    }
}

fn rate_limit_store(loc: &mut Locator, s: &RateLimitStoreSection) -> RateLimitStore {
    // The Redis client's own parser is the authority on what it can connect to: a URL it
    // refuses at startup would otherwise leave the store down for the process's life.
    let url = s.redis_url.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        loc.push(
            span(&s.redis_url),
            format!(
                "redis_url must start with redis:// (got {:?})",
                redact_url(url)
            ),
        );
    } else if let Err(e) = redis::Client::open(url.as_str()) {
        loc.push(
            span(&s.redis_url),
            format!(
                "redis_url {:?} is not a Redis URL the client can use ({e}): write redis://[user:password@]host:port[/db]",
                redact_url(url)
            ),
        );
    }
    let on_unavailable = one_of(
        loc,
        &s.on_unavailable,
        OnUnavailable::Local,
        &[
            ("local", OnUnavailable::Local),
            ("allow", OnUnavailable::Allow),
            ("deny", OnUnavailable::Deny),
        ],
        "on_unavailable",
    );
    let timeout = positive_duration_or(loc, &s.timeout, Duration::from_millis(50), "timeout");
    RateLimitStore {
        redis_url: url.clone(),
        on_unavailable,
        timeout,
    }
}

/// Hides a password in a URL (`redis://user:secret@host` -> `redis://user:***@host`).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.rsplit_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

fn auth_settings(
    loc: &mut Locator,
    a: &Spanned<AuthSection>,
    config_path: &Path,
) -> Option<AuthSettings> {
    let s = a.get_ref();
    let path = relative_to(config_path, s.keys_file.get_ref());
    match super::keys::load_keys_file(&path) {
        Ok(keys) => Some(AuthSettings {
            keys_file: path,
            keys,
        }),
        Err(errors) => {
            loc.push(
                span(&s.keys_file),
                format!(
                    "keys_file {:?} is not usable (see the errors that follow)",
                    s.keys_file.get_ref()
                ),
            );
            loc.errors.extend(errors.0);
            None
        }
    }
}

fn alerting_settings(loc: &mut Locator, s: Option<&Spanned<AlertingSection>>) -> AlertingSettings {
    let default = AlertingSection::default();
    let s = s.map(|s| s.get_ref()).unwrap_or(&default);
    let evaluation_interval = positive_duration_or(
        loc,
        &s.evaluation_interval,
        Duration::from_secs(1),
        "evaluation_interval",
    );
    let webhook_url = match &s.webhook_url {
        Some(u) if !u.get_ref().is_empty() => {
            if !u.get_ref().starts_with("http://") {
                loc.push(span(u), "webhook_url must be an http:// URL (for example Alertmanager's http://127.0.0.1:9093/api/v2/alerts)");
                None
            } else {
                Some(u.get_ref().clone())
            }
        }
        _ => None,
    };
    AlertingSettings {
        evaluation_interval,
        webhook_url,
    }
}

fn alerts(
    loc: &mut Locator,
    sections: &[Spanned<AlertSection>],
    routes: &[Arc<Route>],
) -> Vec<AlertRule> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for section in sections {
        let a = section.get_ref();
        let name = a.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            loc.push(
                span(&a.name),
                format!("alert name {name:?} must use only letters, digits and '_'"),
            );
        }
        if !names.insert(name.clone()) {
            loc.push(span(&a.name), format!("duplicate alert name {name:?}"));
        }
        let route = a.route.as_ref().map(|r| {
            if !routes.iter().any(|x| &x.name == r.get_ref()) {
                loc.push(
                    span(r),
                    format!("alert names route {:?}, which is not defined", r.get_ref()),
                );
            }
            r.get_ref().clone()
        });
        let signal = one_of(
            loc,
            &Some(a.signal.clone()),
            Signal::ErrorRatio,
            &[
                ("error_ratio", Signal::ErrorRatio),
                ("latency_p99", Signal::LatencyP99),
                ("first_byte_p99", Signal::FirstByteP99),
                ("rate_limited_ratio", Signal::RateLimitedRatio),
                ("healthy_backends", Signal::HealthyBackends),
            ],
            "signal",
        );
        let threshold = match (&a.above, &a.below) {
            (Some(v), None) => Threshold::Above(*v.get_ref()),
            (None, Some(v)) => Threshold::Below(*v.get_ref()),
            (Some(v), Some(_)) => {
                loc.push(span(v), "set either `above` or `below`, not both");
                Threshold::Above(0.0)
            }
            (None, None) => {
                loc.push(
                    span(&a.name),
                    format!("alert {name:?} needs a threshold: `above = N` or `below = N`"),
                );
                Threshold::Above(0.0)
            }
        };
        let window = positive_duration_or(loc, &a.window, Duration::from_secs(60), "window");
        if window > Duration::from_secs(3600) {
            if let Some(w) = &a.window {
                loc.push(
                    span(w),
                    "window must be at most 1h (the in-process rings keep one hour)",
                );
            }
        }
        let for_ = duration_or(loc, &a.for_, Duration::ZERO);
        out.push(AlertRule {
            name,
            route,
            signal,
            threshold,
            window,
            for_,
            severity: a
                .severity
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "warning".into()),
            summary: a
                .summary
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
        });
    }
    out
}

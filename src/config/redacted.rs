//! The effective config as JSON for GET /config, with every secret hidden: the admin
//! token, key hashes, and passwords inside URLs.

use serde_json::{json, Value};

use super::duration::format_duration as d;
use super::model::*;
use super::validate::redact_url;

pub fn redacted_config(c: &Config) -> Value {
    let s = &c.server;
    json!({
        "path": c.path.display().to_string(),
        "server": {
            "listen": s.listen.to_string(),
            "admin_listen": s.admin_listen.to_string(),
            "threads": s.threads,
            "grace_period": d(s.grace_period),
            "max_request_body_bytes": s.max_request_body_bytes,
            "admin_token": s.admin_token.as_ref().map(|_| "REDACTED").unwrap_or(""),
            "trusted_proxies": s.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "header_timeout": d(s.header_timeout),
            "body_timeout": d(s.body_timeout),
        },
        "log": {
            "format": match c.log.format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
            "level": c.log.level.to_string().to_lowercase(),
            "access_log": match &c.log.access_log {
                AccessLogTarget::Stdout => "stdout".to_string(),
                AccessLogTarget::Off => "off".to_string(),
                AccessLogTarget::File(p) => p.display().to_string(),
            },
            "redact_headers": c.log.redact_headers,
            "redact_query_params": c.log.redact_query_params,
        },
        "trace": {
            "otlp_endpoint": c.trace.otlp_endpoint.as_deref().map(redact_url).unwrap_or_default(),
            "service_name": c.trace.service_name,
            "sample_ratio": c.trace.sample_ratio,
        },
        "upstreams": c.upstreams.iter().map(|u| (u.name.clone(), json!({
            "backends": u.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "balance": u.balance.as_str(),
            "connect_timeout": d(u.connect_timeout),
            "first_byte_timeout": d(u.first_byte_timeout),
            "idle_timeout": d(u.idle_timeout),
            "retries": u.retries,
            "health": {
                "path": u.health.path,
                "interval": d(u.health.interval),
                "timeout": d(u.health.timeout),
                "unhealthy_after": u.health.unhealthy_after,
                "healthy_after": u.health.healthy_after,
                "eject_after": u.health.eject_after,
                "eject_for": d(u.health.eject_for),
            }
        }))).collect::<serde_json::Map<_, _>>(),
        "routes": c.routes.iter().map(|r| json!({
            "name": r.name,
            "path_prefix": r.path_prefix,
            "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            "upstream": c.upstreams[r.upstream].name,
            "auth": r.auth,
            "rate_limit": r.rate_limit.as_ref().map(|rl| json!({
                "key": match &rl.key {
                    RateLimitKey::ClientIp => "client_ip".to_string(),
                    RateLimitKey::ApiKey => "api_key".to_string(),
                    RateLimitKey::Global => "global".to_string(),
                    RateLimitKey::Header(h) => format!("header:{h}"),
                },
                "requests_per_second": rl.requests_per_second,
                "burst": rl.burst,
                "scope": match rl.scope { RateLimitScope::Local => "local", RateLimitScope::Global => "global" },
                "expected_replicas": rl.expected_replicas,
            })),
            "pagination": r.pagination.as_ref().map(|p| json!({
                "methods": p.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "limit_param": p.limit_param,
                "default_limit": p.default_limit,
                "max_limit": p.max_limit,
                "on_exceed": match p.on_exceed { OnExceed::Clamp => "clamp", OnExceed::Reject => "reject" },
                "max_response_bytes": p.max_response_bytes,
            })),
        })).collect::<Vec<_>>(),
        "rate_limit_store": c.rate_limit_store.as_ref().map(|st| json!({
            "redis_url": redact_url(&st.redis_url),
            "on_unavailable": match st.on_unavailable { OnUnavailable::Local => "local", OnUnavailable::Allow => "allow", OnUnavailable::Deny => "deny" },
            "timeout": d(st.timeout),
        })),
        "auth": c.auth.as_ref().map(|a| json!({
            "keys_file": a.keys_file.display().to_string(),
            "key_ids": a.keys.iter().map(|k| k.id.as_ref()).collect::<Vec<_>>(),
        })),
        "alerting": {
            "evaluation_interval": d(c.alerting.evaluation_interval),
            "webhook_url": c.alerting.webhook_url.as_deref().map(redact_url).unwrap_or_default(),
        },
        "alerts": c.alerts.iter().map(|a| json!({
            "name": a.name,
            "route": a.route,
            "signal": a.signal.as_str(),
            "above": match a.threshold { Threshold::Above(v) => Some(v), _ => None },
            "below": match a.threshold { Threshold::Below(v) => Some(v), _ => None },
            "window": d(a.window),
            "for": d(a.for_),
            "severity": a.severity,
            "summary": a.summary,
        })).collect::<Vec<_>>(),
    })
}

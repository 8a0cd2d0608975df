//! The effective config as JSON for GET /config, derived from the model itself
//! (`#[derive(Serialize)]` on every settings type) with every secret hidden: the admin
//! token, key hashes, and passwords inside URLs. This module holds the few ways a value
//! is shown that serde cannot derive; a new setting shows up in /config by itself.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serializer;
use serde_json::Value;

use super::duration::format_duration;
use super::model::{ApiKeyEntry, Config, Threshold, Upstream};

/// The config as /config shows it.
pub fn redacted_config(c: &Config) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_else(
        |e| serde_json::json!({ "error": format!("the config could not be shown: {e}") }),
    );
    if !c.secrets.is_empty() {
        hide_secrets(&mut v, &c.secrets);
    }
    v
}

/// Every string that holds a value from the environment shows its `${NAME}` instead.
fn hide_secrets(v: &mut Value, secrets: &super::env::Secrets) {
    match v {
        Value::String(s) => *s = secrets.hide(s),
        Value::Array(items) => items.iter_mut().for_each(|i| hide_secrets(i, secrets)),
        Value::Object(map) => map.values_mut().for_each(|i| hide_secrets(i, secrets)),
        _ => {}
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

/// Backends as their labels (`127.0.0.1:9001`, `agents.internal:9001/10.0.0.7`).
pub(super) fn backends<S: Serializer>(
    v: &[super::model::BackendAddr],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for b in v {
        seq.serialize_element(&b.label())?;
    }
    seq.end()
}

/// Names as written (`agents.internal:9001`).
pub(super) fn names<S: Serializer>(
    v: &[super::model::BackendName],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for n in v {
        seq.serialize_element(&format!("{}:{}", n.host, n.port))?;
    }
    seq.end()
}

pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// A secret is shown as whether it is set: `REDACTED`, or empty.
pub(super) fn secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_some() { "REDACTED" } else { "" })
}

/// A URL with any password hidden (empty when unset).
pub(super) fn url<S: Serializer, U: AsUrl>(v: &U, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.as_url().map(redact_url).unwrap_or_default())
}

pub(super) trait AsUrl {
    fn as_url(&self) -> Option<&str>;
}

impl AsUrl for String {
    fn as_url(&self) -> Option<&str> {
        Some(self)
    }
}

impl AsUrl for Option<String> {
    fn as_url(&self) -> Option<&str> {
        self.as_deref()
    }
}

/// Header names with their values hidden (an exporter's headers carry API keys).
pub(super) fn header_values<S: Serializer>(
    v: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for (name, _) in v {
        map.serialize_entry(name, "REDACTED")?;
    }
    map.end()
}

pub(super) fn level<S: Serializer>(l: &log::LevelFilter, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&l.to_string().to_lowercase())
}

pub(super) fn display<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(super) fn methods<S: Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(m.len()))?;
    for method in m {
        seq.serialize_element(method.as_str())?;
    }
    seq.end()
}

/// Upstreams as a table by name, as the file writes them.
pub(super) fn upstreams_by_name<S: Serializer>(
    upstreams: &[Arc<Upstream>],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(upstreams.len()))?;
    for u in upstreams {
        map.serialize_entry(&u.name, &**u)?;
    }
    map.end()
}

pub(super) fn key_ids<S: Serializer>(keys: &[ApiKeyEntry], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(keys.len()))?;
    for k in keys {
        seq.serialize_element(&*k.id)?;
    }
    seq.end()
}

/// `above` and `below`, one of them null.
pub(super) fn threshold<S: Serializer>(t: &Threshold, s: S) -> Result<S::Ok, S::Error> {
    let (above, below) = match *t {
        Threshold::Above(v) => (Some(v), None),
        Threshold::Below(v) => (None, Some(v)),
    };
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("above", &above)?;
    map.serialize_entry("below", &below)?;
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FULL: &str = r#"
[server]
listen = "127.0.0.1:18080"
admin_token = "admin-secret"
trusted_proxies = ["10.0.0.0/8"]
header_timeout = "1.5s"

[log]
level = "debug"
access_log = "off"

[trace]
otlp_endpoint = "http://127.0.0.1:4318/v1/traces"

[upstreams.agents]
backends = ["127.0.0.1:9001"]
balance = "round_robin"

[[routes]]
name = "chat"
path_prefix = "/v1"
methods = ["POST"]
upstream = "agents"
rate_limit = { requests_per_second = 5, key = "header:x-tenant", scope = "global" }
pagination = { max_limit = 50 }

[rate_limit_store]
redis_url = "redis://:hunter2@127.0.0.1:6379"

[alerting]
webhook_url = "http://am:pw@127.0.0.1:9093/api/v2/alerts"

[[alerts]]
name = "slow"
signal = "latency_p99"
above = 2.0
window = "1m30s"
"#;

    #[test]
    fn the_shown_config_follows_the_model_and_hides_secrets() {
        let config = crate::config::parse(Path::new("/etc/agentgate.toml"), FULL)
            .unwrap_or_else(|e| panic!("{e}"));
        let shown = redacted_config(&config);
        let text = shown.to_string();
        for secret in ["admin-secret", "hunter2", ":pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(shown["server"]["admin_token"], "REDACTED");
        assert_eq!(shown["server"]["header_timeout"], "1500ms");
        assert_eq!(shown["server"]["trusted_proxies"][0], "10.0.0.0/8");
        assert_eq!(shown["log"]["level"], "debug");
        assert_eq!(shown["log"]["access_log"], "off");
        assert_eq!(shown["upstreams"]["agents"]["balance"], "round_robin");
        assert_eq!(
            shown["upstreams"]["agents"]["backends"][0],
            "127.0.0.1:9001"
        );
        assert_eq!(shown["routes"][0]["upstream"], "agents");
        assert_eq!(shown["routes"][0]["methods"][0], "POST");
        assert_eq!(shown["routes"][0]["rate_limit"]["key"], "header:x-tenant");
        assert_eq!(shown["routes"][0]["rate_limit"]["scope"], "global");
        assert_eq!(shown["routes"][0]["pagination"]["on_exceed"], "clamp");
        assert_eq!(
            shown["rate_limit_store"]["redis_url"],
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(shown["alerts"][0]["signal"], "latency_p99");
        assert_eq!(shown["alerts"][0]["above"], 2.0);
        assert!(shown["alerts"][0]["below"].is_null());
        assert_eq!(shown["alerts"][0]["window"], "90s");
        assert_eq!(
            shown["alerting"]["webhook_url"],
            "http://am:***@127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            shown["trace"]["otlp_endpoint"],
            "http://127.0.0.1:4318/v1/traces"
        );
        assert!(shown["upstreams"]["agents"].get("index").is_none());
    }
}

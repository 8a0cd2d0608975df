//! The access log: one JSON object per request with the fields of SPEC §6, in that
//! order, formatted straight into the log writer's buffer.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::json::{self, field_bool, field_opt_str, field_str, field_u64, push_key};
use crate::config::{LogFormat, LogSettings};

/// Everything one access log line says.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    /// Trace and span id; absent before the request was identified.
    pub trace: Option<([u8; 16], [u8; 8])>,
    pub route: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub duration: Duration,
    pub upstream_first_byte: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: Option<IpAddr>,
    pub retries: u32,
    pub rate_limited: bool,
    pub pagination: Option<&'a str>,
    pub error: Option<&'a str>,
    pub key_id: Option<&'a str>,
}

/// Formats one line (without its newline) in the configured format into `out`.
pub fn format_into(out: &mut Vec<u8>, record: &AccessRecord<'_>, settings: &LogSettings) {
    let path = redact_query(record.path_and_query, &settings.redact_query_params);
    if settings.format == LogFormat::Pretty {
        format_pretty(out, record, &path);
        return;
    }
    out.push(b'{');
    push_key(out, "ts");
    out.push(b'"');
    json::push_timestamp(out, SystemTime::now());
    out.push(b'"');
    field_str(out, "level", "info");
    field_str(out, "msg", "request");
    field_str(out, "request_id", record.request_id);
    push_key(out, "trace_id");
    out.push(b'"');
    if let Some((trace_id, _)) = &record.trace {
        json::push_hex(out, trace_id);
    }
    out.push(b'"');
    push_key(out, "span_id");
    out.push(b'"');
    if let Some((_, span_id)) = &record.trace {
        json::push_hex(out, span_id);
    }
    out.push(b'"');
    field_str(out, "route", record.route);
    field_str(out, "method", record.method);
    field_str(out, "path", &path);
    field_u64(out, "status", record.status as u64);
    field_opt_str(out, "upstream", record.upstream);
    field_opt_str(out, "backend", record.backend);
    push_key(out, "duration_ms");
    json::push_millis(out, record.duration);
    push_key(out, "upstream_first_byte_ms");
    match record.upstream_first_byte {
        Some(d) => json::push_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    field_u64(out, "bytes_in", record.bytes_in);
    field_u64(out, "bytes_out", record.bytes_out);
    push_key(out, "client_ip");
    out.push(b'"');
    if let Some(ip) = record.client_ip {
        json::push_ip(out, ip);
    }
    out.push(b'"');
    field_u64(out, "retries", record.retries as u64);
    field_bool(out, "rate_limited", record.rate_limited);
    field_opt_str(out, "pagination", record.pagination);
    field_opt_str(out, "error", record.error);
    field_opt_str(out, "key_id", record.key_id);
    out.push(b'}');
}

/// `<ts> INFO request GET /path 200 1.2ms route=.. backend=.. request_id=.. trace_id=..`
fn format_pretty(out: &mut Vec<u8>, record: &AccessRecord<'_>, path: &str) {
    use std::io::Write;
    json::push_timestamp(out, SystemTime::now());
    let _ = write!(
        out,
        " INFO request {} {} {} {:.1}ms route={} backend={} request_id={} trace_id=",
        record.method,
        path,
        record.status,
        record.duration.as_secs_f64() * 1000.0,
        record.route,
        record.backend.unwrap_or("-"),
        record.request_id,
    );
    if let Some((trace_id, _)) = &record.trace {
        json::push_hex(out, trace_id);
    }
    if let Some(e) = record.error {
        let _ = write!(out, " error={e}");
    }
}

/// Replaces the values of redacted query parameters with `REDACTED`; everything else is
/// kept byte for byte.
pub fn redact_query<'a>(path_and_query: &'a str, redact: &[String]) -> std::borrow::Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.into();
    };
    match redact_query_string(query, redact) {
        std::borrow::Cow::Borrowed(_) => path_and_query.into(),
        std::borrow::Cow::Owned(q) => format!("{path}?{q}").into(),
    }
}

/// Like `redact_query`, for a bare query string (no path, no `?`).
pub fn redact_query_string<'a>(query: &'a str, redact: &[String]) -> std::borrow::Cow<'a, str> {
    let needs = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        redact.iter().any(|r| param_name_matches(name, r))
    });
    if !needs {
        return query.into();
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or("");
        if redact.iter().any(|r| param_name_matches(name, r)) {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
    out.into()
}

/// Compares a raw (possibly percent-encoded) parameter name with a configured one.
fn param_name_matches(raw: &str, wanted: &str) -> bool {
    if raw.eq_ignore_ascii_case(wanted) {
        return true;
    }
    if !raw.contains('%') && !raw.contains('+') {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned();
    decoded.eq_ignore_ascii_case(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_only_named_params() {
        let r = vec!["token".to_string(), "api_key".to_string()];
        assert_eq!(
            redact_query("/a?x=1&token=s3cret&y=2", &r),
            "/a?x=1&token=REDACTED&y=2"
        );
        assert_eq!(redact_query("/a?%74oken=s3cret", &r), "/a?%74oken=REDACTED");
        assert_eq!(redact_query("/a?TOKEN=s3cret", &r), "/a?TOKEN=REDACTED");
        assert_eq!(redact_query("/a?x=1", &r), "/a?x=1");
        assert_eq!(redact_query("/a", &r), "/a");
    }
}

//! The access log: one JSON object per request with the fields of SPEC §6, in that
//! order, built into one String and handed to the non-blocking line writer.

use std::fmt::Write;
use std::time::SystemTime;

use super::json::{self, field_bool, field_num, field_opt_str, field_str, push_key};
use crate::config::{LogFormat, LogSettings};

/// Everything one access log line says.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub duration_ms: f64,
    pub upstream_first_byte_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: &'a str,
    pub retries: u32,
    pub rate_limited: bool,
    pub pagination: Option<&'a str>,
    pub error: Option<&'a str>,
    pub key_id: Option<&'a str>,
}

/// Formats one line in the configured format into `out` (a reused buffer).
pub fn format_into(out: &mut String, record: &AccessRecord<'_>, settings: &LogSettings) {
    let path = redact_query(record.path_and_query, &settings.redact_query_params);
    if settings.format == LogFormat::Pretty {
        json::push_timestamp(out, SystemTime::now());
        let _ = write!(
            out,
            " INFO request {} {} {} {:.1}ms route={} backend={} request_id={} trace_id={}{}",
            record.method,
            path,
            record.status,
            record.duration_ms,
            record.route,
            record.backend.unwrap_or("-"),
            record.request_id,
            record.trace_id,
            record
                .error
                .map(|e| format!(" error={e}"))
                .unwrap_or_default()
        );
        return;
    }
    out.push('{');
    push_key(out, "ts");
    out.push('"');
    json::push_timestamp(out, SystemTime::now());
    out.push('"');
    field_str(out, "level", "info");
    field_str(out, "msg", "request");
    field_str(out, "request_id", record.request_id);
    field_str(out, "trace_id", record.trace_id);
    field_str(out, "span_id", record.span_id);
    field_str(out, "route", record.route);
    field_str(out, "method", record.method);
    field_str(out, "path", &path);
    field_num(out, "status", record.status);
    field_opt_str(out, "upstream", record.upstream);
    field_opt_str(out, "backend", record.backend);
    field_num(out, "duration_ms", Ms(record.duration_ms));
    push_key(out, "upstream_first_byte_ms");
    match record.upstream_first_byte_ms {
        Some(ms) => {
            let _ = write!(out, "{}", Ms(ms));
        }
        None => out.push_str("null"),
    }
    field_num(out, "bytes_in", record.bytes_in);
    field_num(out, "bytes_out", record.bytes_out);
    field_str(out, "client_ip", record.client_ip);
    field_num(out, "retries", record.retries);
    field_bool(out, "rate_limited", record.rate_limited);
    field_opt_str(out, "pagination", record.pagination);
    field_opt_str(out, "error", record.error);
    field_opt_str(out, "key_id", record.key_id);
    out.push('}');
}

/// Milliseconds with microsecond precision.
struct Ms(f64);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.0)
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

//! The access log: one JSON object per request with the fields of SPEC §6, in that
//! order, formatted straight into the log writer's buffer.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::json::{self, LogName};
use crate::config::{LogFormat, LogSettings};

/// Everything one access log line says.
pub struct AccessRecord<'a> {
    /// When the request finished (the line's `ts`).
    pub finished: SystemTime,
    pub request_id: &'a str,
    /// Trace id, span id and whether the trace is sampled; absent before the request
    /// was identified.
    pub trace: Option<([u8; 16], [u8; 8], bool)>,
    pub route: &'a LogName,
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2` (`-` when the request could not be read).
    pub protocol: &'a str,
    /// The query string with redacted values already replaced.
    pub query: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a LogName>,
    pub backend: Option<&'a LogName>,
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
    /// The fields of an AI route's request (absent elsewhere: those lines keep §6's).
    pub ai: Option<AiFields<'a>>,
}

/// `model`, `input_tokens`, `output_tokens`, `usage_source`, `ttft_ms`,
/// `conversation_id`.
pub struct AiFields<'a> {
    pub model: Option<&'a str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub usage_source: &'a str,
    pub ttft: Option<Duration>,
    pub conversation_id: Option<&'a str>,
}

/// Formats one line (without its newline) in the configured format into `out`.
pub fn format_into(out: &mut Vec<u8>, record: &AccessRecord<'_>, settings: &LogSettings) {
    if settings.format == LogFormat::Pretty {
        format_pretty(out, record);
        return;
    }
    // Keys and punctuation between values are written as whole constant fragments.
    out.extend_from_slice(b"{\"ts\":\"");
    json::push_timestamp(out, record.finished);
    out.extend_from_slice(b"\",\"level\":\"info\",\"msg\":\"request\",\"request_id\":");
    json::push_plain_str(out, record.request_id);
    out.extend_from_slice(b",\"trace_id\":\"");
    if let Some((trace_id, _, _)) = &record.trace {
        json::push_hex(out, trace_id);
    }
    out.extend_from_slice(b"\",\"span_id\":\"");
    if let Some((_, span_id, _)) = &record.trace {
        json::push_hex(out, span_id);
    }
    // As in `traceparent`: "01" sampled, "00" not (and for a request never identified).
    out.extend_from_slice(match record.trace {
        Some((_, _, true)) => b"\",\"trace_flags\":\"01\",\"route\":",
        _ => b"\",\"trace_flags\":\"00\",\"route\":",
    });
    out.extend_from_slice(&record.route.json);
    out.extend_from_slice(b",\"method\":");
    json::push_plain_str(out, record.method);
    out.extend_from_slice(b",\"path\":");
    match record.query {
        Some(q) => json::push_str_parts(out, &[record.path, "?", q]),
        None => json::push_str(out, record.path),
    }
    out.extend_from_slice(b",\"protocol\":");
    json::push_plain_str(out, record.protocol);
    out.extend_from_slice(b",\"status\":");
    json::push_u64(out, record.status as u64);
    out.extend_from_slice(b",\"upstream\":");
    push_opt_name(out, record.upstream);
    out.extend_from_slice(b",\"backend\":");
    push_opt_name(out, record.backend);
    out.extend_from_slice(b",\"duration_ms\":");
    json::push_millis(out, record.duration);
    out.extend_from_slice(b",\"upstream_first_byte_ms\":");
    match record.upstream_first_byte {
        Some(d) => json::push_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    json::push_u64(out, record.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    json::push_u64(out, record.bytes_out);
    out.extend_from_slice(b",\"client_ip\":\"");
    if let Some(ip) = record.client_ip {
        json::push_ip(out, ip);
    }
    out.extend_from_slice(b"\",\"retries\":");
    json::push_u64(out, record.retries as u64);
    out.extend_from_slice(b",\"rate_limited\":");
    out.extend_from_slice(if record.rate_limited {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(b",\"pagination\":");
    push_opt_plain(out, record.pagination);
    out.extend_from_slice(b",\"error\":");
    push_opt_plain(out, record.error);
    out.extend_from_slice(b",\"key_id\":");
    push_opt_str(out, record.key_id);
    if let Some(ai) = &record.ai {
        out.extend_from_slice(b",\"model\":");
        push_opt_str(out, ai.model);
        out.extend_from_slice(b",\"input_tokens\":");
        json::push_u64(out, ai.input_tokens);
        out.extend_from_slice(b",\"output_tokens\":");
        json::push_u64(out, ai.output_tokens);
        out.extend_from_slice(b",\"usage_source\":");
        json::push_plain_str(out, ai.usage_source);
        out.extend_from_slice(b",\"ttft_ms\":");
        match ai.ttft {
            Some(d) => json::push_millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"conversation_id\":");
        push_opt_str(out, ai.conversation_id);
    }
    out.push(b'}');
}

/// Optional text that needs no escaping (the gateway's own codes).
fn push_opt_plain(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => json::push_plain_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_name(out: &mut Vec<u8>, value: Option<&LogName>) {
    match value {
        Some(v) => out.extend_from_slice(&v.json),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => json::push_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `<ts> INFO request GET /path 200 1.2ms route=.. backend=.. request_id=.. trace_id=..`
fn format_pretty(out: &mut Vec<u8>, record: &AccessRecord<'_>) {
    use std::io::Write;
    json::push_timestamp(out, record.finished);
    let _ = write!(
        out,
        " INFO request {} {}{}{} {} {} {:.1}ms route={} backend={} request_id={} trace_id=",
        record.method,
        record.path,
        if record.query.is_some() { "?" } else { "" },
        record.query.unwrap_or(""),
        record.protocol,
        record.status,
        record.duration.as_secs_f64() * 1000.0,
        record.route.text,
        record.backend.map_or("-", |b| b.text.as_str()),
        record.request_id,
    );
    if let Some((trace_id, _, _)) = &record.trace {
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
    if redact.is_empty() || query.is_empty() {
        return query.into();
    }
    // Byte-wise: the usual query names nothing to redact, and this check runs for
    // every logged or traced request.
    let names = || {
        query
            .as_bytes()
            .split(|b| *b == b'&')
            .map(|pair| pair.split(|b| *b == b'=').next().unwrap_or(b""))
    };
    if !names().any(|name| is_redacted(name, redact)) {
        return query.into();
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or("");
        if is_redacted(name.as_bytes(), redact) {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
    out.into()
}

/// Does a raw (possibly percent-encoded) parameter name match a configured one?
pub fn is_redacted(raw: &[u8], redact: &[String]) -> bool {
    if redact
        .iter()
        .any(|r| raw.eq_ignore_ascii_case(r.as_bytes()))
    {
        return true;
    }
    // Only an encoded name can differ from its decoded form.
    if !raw.iter().any(|b| *b == b'%' || *b == b'+') {
        return false;
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let decoded = percent_encoding::percent_decode(&spaced).decode_utf8_lossy();
    redact.iter().any(|r| decoded.eq_ignore_ascii_case(r))
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

//! OTLP trace protobuf, written by hand straight from the gateway's own request data.
//!
//! A finished request encodes its spans on the proxy thread directly into bytes (one
//! `ScopeSpans.spans` entry each): no span objects, no attribute vectors, no strings
//! built only to be copied again. Attributes that depend only on the config (route,
//! backend, this gateway's address) are encoded once per config and appended as bytes.
//! The export thread wraps the collected entries into an `ExportTraceServiceRequest`.
//!
//! Wire format: opentelemetry-proto's trace/v1. The tests decode what this writes with
//! opentelemetry-proto itself.

/// Span kinds of the OTLP enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

const LEN: u64 = 2;
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const FIXED32: u64 = 5;

/// `ScopeSpans.spans` (field 2, length-delimited): the tag every span entry starts with.
const SPAN_ENTRY_TAG: u8 = (2 << 3) | LEN as u8;

#[inline(always)]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline(always)]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[inline(always)]
fn tag(buf: &mut Vec<u8>, field: u64, wire: u64) {
    varint(buf, (field << 3) | wire);
}

#[inline(always)]
fn bytes_field(buf: &mut Vec<u8>, field: u64, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A `KeyValue` (as `field`) whose `AnyValue` body is `value_len` bytes written by `value`.
#[inline(always)]
fn key_value(
    buf: &mut Vec<u8>,
    field: u64,
    key: &str,
    value_len: usize,
    value: impl FnOnce(&mut Vec<u8>),
) {
    let body =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(value_len as u64) + value_len;
    tag(buf, field, LEN);
    varint(buf, body as u64);
    bytes_field(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, value_len as u64);
    value(buf);
}

/// A string attribute of a span (`Span.attributes`, field 9).
#[inline(always)]
pub fn str_attr(buf: &mut Vec<u8>, key: &str, value: &str) {
    text_attr(buf, key, value.as_bytes());
}

/// A string attribute from bytes that are UTF-8 text (an address formatted on the stack).
#[inline(always)]
pub fn text_attr(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    let n = value.len();
    key_value(buf, 9, key, 1 + varint_len(n as u64) + n, |b| {
        bytes_field(b, 1, value)
    });
}

/// A string attribute whose value is the concatenation of `parts` (no joined copy).
#[inline(always)]
pub fn str_parts_attr(buf: &mut Vec<u8>, key: &str, parts: &[&str]) {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    key_value(buf, 9, key, 1 + varint_len(n as u64) + n, |b| {
        tag(b, 1, LEN);
        varint(b, n as u64);
        for p in parts {
            b.extend_from_slice(p.as_bytes());
        }
    });
}

/// An integer attribute of a span.
#[inline(always)]
pub fn int_attr(buf: &mut Vec<u8>, key: &str, value: i64) {
    key_value(buf, 9, key, 1 + varint_len(value as u64), |b| {
        tag(b, 3, VARINT);
        varint(b, value as u64);
    });
}

/// A boolean attribute of a span.
#[inline(always)]
pub fn bool_attr(buf: &mut Vec<u8>, key: &str, value: bool) {
    key_value(buf, 9, key, 2, |b| {
        tag(b, 2, VARINT);
        varint(b, value as u64);
    });
}

/// A value of an attribute the gateway did not encode ahead (the process's own spans).
pub enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// An attribute as field `field` of its message (`Span.attributes` is 9,
/// `Span.Event.attributes` is 3).
pub fn attr_in(buf: &mut Vec<u8>, field: u64, key: &str, value: AttrValue<'_>) {
    match value {
        AttrValue::Str(v) => {
            let n = v.len();
            key_value(buf, field, key, 1 + varint_len(n as u64) + n, |b| {
                bytes_field(b, 1, v.as_bytes())
            })
        }
        AttrValue::Bool(v) => key_value(buf, field, key, 2, |b| {
            tag(b, 2, VARINT);
            varint(b, v as u64);
        }),
        AttrValue::Int(v) => key_value(buf, field, key, 1 + varint_len(v as u64), |b| {
            tag(b, 3, VARINT);
            varint(b, v as u64);
        }),
        AttrValue::Double(v) => key_value(buf, field, key, 9, |b| {
            tag(b, 4, FIXED64);
            b.extend_from_slice(&v.to_le_bytes());
        }),
    }
}

/// A `Span.Event` (field 11) at `time_unix_nanos`, whose attributes `attrs` encodes
/// (with [`attr_in`] at field 3).
pub fn event(buf: &mut Vec<u8>, time_unix_nanos: u64, name: &str, attrs: &[u8]) {
    let name_len = if name.is_empty() {
        0
    } else {
        1 + varint_len(name.len() as u64) + name.len()
    };
    let body = 9 + name_len + attrs.len();
    tag(buf, 11, LEN);
    varint(buf, body as u64);
    tag(buf, 1, FIXED64);
    buf.extend_from_slice(&time_unix_nanos.to_le_bytes());
    if !name.is_empty() {
        bytes_field(buf, 2, name.as_bytes());
    }
    buf.extend_from_slice(attrs);
}

/// Everything a span says besides its attributes.
pub struct SpanHead<'a> {
    /// The name, as parts written one after the other (`GET` `" "` `/v1/chat`).
    pub name: &'a [&'a str],
    pub kind: Kind,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Parent span id, and whether the parent came from another process.
    pub parent: Option<([u8; 8], bool)>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Status error with this description; `None` leaves the status unset.
    pub error: Option<&'a str>,
}

/// Appends one sampled span as a `ScopeSpans.spans` entry to `out`. `body` is scratch
/// space (reused across calls); `attrs` writes the attributes.
pub fn span_entry(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    head: &SpanHead<'_>,
    attrs: impl FnOnce(&mut Vec<u8>),
) {
    body.clear();
    bytes_field(body, 1, &head.trace_id);
    bytes_field(body, 2, &head.span_id);
    if let Some((parent, _)) = head.parent {
        bytes_field(body, 4, &parent);
    }
    let name_len: usize = head.name.iter().map(|p| p.len()).sum();
    tag(body, 5, LEN);
    varint(body, name_len as u64);
    for p in head.name {
        body.extend_from_slice(p.as_bytes());
    }
    tag(body, 6, VARINT);
    varint(body, head.kind as u64);
    tag(body, 7, FIXED64);
    body.extend_from_slice(&head.start_unix_nanos.to_le_bytes());
    tag(body, 8, FIXED64);
    body.extend_from_slice(&head.end_unix_nanos.to_le_bytes());
    attrs(body);
    if let Some(message) = head.error {
        // Status { message = 2 (left out when empty), code = 3 (ERROR = 2) }
        let message_len = if message.is_empty() {
            0
        } else {
            1 + varint_len(message.len() as u64) + message.len()
        };
        tag(body, 15, LEN);
        varint(body, (message_len + 2) as u64);
        if !message.is_empty() {
            bytes_field(body, 2, message.as_bytes());
        }
        tag(body, 3, VARINT);
        varint(body, 2);
    }
    // flags: sampled (W3C bit 0), plus "parent is remote is known" (bit 8) and its value (bit 9)
    let mut flags: u32 = 0x01 | 0x100;
    if head.parent.is_some_and(|(_, remote)| remote) {
        flags |= 0x200;
    }
    tag(body, 16, FIXED32);
    body.extend_from_slice(&flags.to_le_bytes());

    out.push(SPAN_ENTRY_TAG);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Splits a run of span entries after at most `max_bytes` (never inside an entry; an
/// entry larger than `max_bytes` goes alone). Returns (entries, bytes) of the first part.
pub fn split_entries(entries: &[u8], max_bytes: usize) -> (usize, usize) {
    let mut at = 0;
    let mut count = 0;
    while at < entries.len() {
        let Some((len, header)) = read_entry_header(&entries[at..]) else {
            // Not an entry we wrote: take the rest as is rather than loop.
            return (count.max(1), entries.len());
        };
        let next = at + header + len;
        if count > 0 && next > max_bytes {
            break;
        }
        at = next.min(entries.len());
        count += 1;
    }
    (count, at)
}

/// (body length, header length) of the entry at the start of `bytes`.
fn read_entry_header(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.first() != Some(&SPAN_ENTRY_TAG) {
        return None;
    }
    let mut len: u64 = 0;
    for (i, b) in bytes[1..].iter().enumerate().take(10) {
        len |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some((len as usize, i + 2));
        }
    }
    None
}

/// A `Resource` message with these string attributes, in order.
pub fn resource(attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for (key, value) in attrs {
        let value_len = 1 + varint_len(value.len() as u64) + value.len();
        key_value(&mut out, 1, key, value_len, |b| {
            bytes_field(b, 1, value.as_bytes())
        });
    }
    out
}

/// Writes an `ExportTraceServiceRequest` with one resource (`resource`, from
/// [`resource`]) and one scope (`agentgate` at `scope_version`) holding `entries`
/// (from `span_entry`).
pub fn export_request(out: &mut Vec<u8>, resource: &[u8], scope_version: &str, entries: &[u8]) {
    export_request_head(out, resource, scope_version, entries.len());
    out.extend_from_slice(entries);
}

/// Writes everything of `export_request` that comes before the entries, for
/// `entries_len` bytes of them: the body is this head followed by the entries as they
/// are (no copy of the entries into a new buffer).
pub fn export_request_head(
    out: &mut Vec<u8>,
    resource: &[u8],
    scope_version: &str,
    entries_len: usize,
) {
    // InstrumentationScope { name = 1, version = 2 }
    let mut scope = Vec::with_capacity(16 + scope_version.len());
    bytes_field(&mut scope, 1, b"agentgate");
    bytes_field(&mut scope, 2, scope_version.as_bytes());
    // ScopeSpans { scope = 1, spans = 2 (the entries, already framed) }
    let scope_spans_len = 1 + varint_len(scope.len() as u64) + scope.len() + entries_len;
    // ResourceSpans { resource = 1, scope_spans = 2 }
    let resource_spans_len = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_spans_len as u64)
        + scope_spans_len;
    out.clear();
    tag(out, 1, LEN);
    varint(out, resource_spans_len as u64);
    bytes_field(out, 1, resource);
    tag(out, 2, LEN);
    varint(out, scope_spans_len as u64);
    bytes_field(out, 1, &scope);
}

/// Encodes config-only attributes once, to be appended as bytes per span.
pub fn prebuilt(attrs: &[(&str, PrebuiltValue<'_>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in attrs {
        match value {
            PrebuiltValue::Str(s) => str_attr(&mut out, key, s),
            PrebuiltValue::Int(i) => int_attr(&mut out, key, *i),
        }
    }
    out
}

pub enum PrebuiltValue<'a> {
    Str(&'a str),
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Pv;
    use prost::Message;

    fn entry(name: &[&str], parent: Option<([u8; 8], bool)>, error: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let head = SpanHead {
            name,
            kind: Kind::Server,
            trace_id: [7; 16],
            span_id: [8; 8],
            parent,
            start_unix_nanos: 1_700_000_000_123_456_789,
            end_unix_nanos: 1_700_000_000_128_456_789,
            error,
        };
        span_entry(&mut out, &mut scratch, &head, |b| {
            str_attr(b, "s", "text");
            str_parts_attr(b, "joined", &["http://", "10.0.0.1:80", "/p"]);
            int_attr(b, "i", -42);
            bool_attr(b, "b", true);
            b.extend_from_slice(&prebuilt(&[
                ("pre", PrebuiltValue::Str("built")),
                ("port", PrebuiltValue::Int(8080)),
            ]));
        });
        out
    }

    #[test]
    fn decodes_as_otlp_with_every_field() {
        let mut entries = entry(
            &["GET", " ", "/v1"],
            Some(([9; 8], true)),
            Some("upstream_timeout"),
        );
        entries.extend(entry(&["GET"], None, None));
        let mut bytes = Vec::new();
        let resource = resource(&[("service.name", "svc"), ("host.name", "h1")]);
        export_request(&mut bytes, &resource, "1.2.3", &entries);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let attrs: Vec<_> = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone()))
            .collect();
        assert_eq!(
            attrs,
            vec![
                ("service.name", Some(Pv::StringValue("svc".into()))),
                ("host.name", Some(Pv::StringValue("h1".into())))
            ]
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "agentgate");
        assert_eq!(ss.scope.as_ref().unwrap().version, "1.2.3");
        assert_eq!(ss.spans.len(), 2);
        let p = &ss.spans[0];
        assert_eq!(p.trace_id, vec![7; 16]);
        assert_eq!(p.span_id, vec![8; 8]);
        assert_eq!(p.parent_span_id, vec![9; 8]);
        assert_eq!(p.name, "GET /v1");
        assert_eq!(p.kind, 2);
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(p.end_time_unix_nano, 1_700_000_000_128_456_789);
        assert_eq!(p.flags, 0x301);
        let status = p.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream_timeout")
        );
        let values: Vec<_> = p
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("s", Some(Pv::StringValue("text".into()))),
                (
                    "joined",
                    Some(Pv::StringValue("http://10.0.0.1:80/p".into()))
                ),
                ("i", Some(Pv::IntValue(-42))),
                ("b", Some(Pv::BoolValue(true))),
                ("pre", Some(Pv::StringValue("built".into()))),
                ("port", Some(Pv::IntValue(8080))),
            ]
        );
        let root = &ss.spans[1];
        assert!(root.parent_span_id.is_empty());
        assert!(root.status.is_none());
        assert_eq!(root.flags, 0x101);
    }

    #[test]
    fn splits_between_entries() {
        let one = entry(&["a"], None, None);
        let mut three = one.clone();
        three.extend(&one);
        three.extend(&one);
        assert_eq!(split_entries(&three, one.len() * 2), (2, one.len() * 2));
        assert_eq!(split_entries(&three, 1), (1, one.len()));
        assert_eq!(split_entries(&three, usize::MAX), (3, three.len()));
        assert_eq!(split_entries(&[], 10), (0, 0));
    }
}

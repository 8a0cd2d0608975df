//! OTLP/HTTP protobuf encoding of finished spans, written straight from `SpanData` into
//! one reused buffer (the generic path through the SDK's transform builds an owned copy
//! of every span and attribute first, which profiling showed as the largest single cost
//! of exporting every request).
//!
//! Wire format: opentelemetry-proto's `ExportTraceServiceRequest` (trace/v1). The tests
//! decode what this writes with opentelemetry-proto itself.

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

const LEN: u64 = 2;
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const FIXED32: u64 = 5;

fn tag(buf: &mut Vec<u8>, field: u64, wire: u64) {
    varint(buf, (field << 3) | wire);
}

fn bytes_field(buf: &mut Vec<u8>, field: u64, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// Writes a length-delimited field whose body `f` writes into `scratch` first.
fn nested(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, field: u64, f: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    f(scratch);
    bytes_field(buf, field, scratch);
}

/// AnyValue body for a value we export (strings, bools, ints, doubles).
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => bytes_field(buf, 1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            varint(buf, *b as u64);
        }
        Value::I64(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            tag(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        other => bytes_field(buf, 1, other.as_str().as_bytes()),
    }
}

fn any_value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => 1 + varint_len(s.as_str().len() as u64) + s.as_str().len(),
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        other => {
            let n = other.as_str().len();
            1 + varint_len(n as u64) + n
        }
    }
}

fn key_value(buf: &mut Vec<u8>, field: u64, kv: &KeyValue) {
    let key = kv.key.as_str().as_bytes();
    let value_len = any_value_len(&kv.value);
    let body =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(value_len as u64) + value_len;
    tag(buf, field, LEN);
    varint(buf, body as u64);
    bytes_field(buf, 1, key);
    tag(buf, 2, LEN);
    varint(buf, value_len as u64);
    any_value(buf, &kv.value);
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn span(buf: &mut Vec<u8>, s: &SpanData, status_scratch: &mut Vec<u8>) {
    bytes_field(buf, 1, &s.span_context.trace_id().to_bytes());
    bytes_field(buf, 2, &s.span_context.span_id().to_bytes());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &s.parent_span_id.to_bytes());
    }
    bytes_field(buf, 5, s.name.as_bytes());
    let kind = match s.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    tag(buf, 6, VARINT);
    varint(buf, kind);
    tag(buf, 7, FIXED64);
    buf.extend_from_slice(&nanos(s.start_time).to_le_bytes());
    tag(buf, 8, FIXED64);
    buf.extend_from_slice(&nanos(s.end_time).to_le_bytes());
    for kv in &s.attributes {
        key_value(buf, 9, kv);
    }
    match &s.status {
        Status::Unset => {}
        Status::Ok => nested(buf, status_scratch, 15, |b| {
            tag(b, 3, VARINT);
            varint(b, 1);
        }),
        Status::Error { description } => nested(buf, status_scratch, 15, |b| {
            bytes_field(b, 2, description.as_bytes());
            tag(b, 3, VARINT);
            varint(b, 2);
        }),
    }
    // flags: the W3C trace flags, plus "parent is remote is known" (bit 8) and its value (bit 9)
    let mut flags = s.span_context.trace_flags().to_u8() as u32 | 0x100;
    if s.parent_span_is_remote {
        flags |= 0x200;
    }
    tag(buf, 16, FIXED32);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// Reusable buffers for encoding batches.
#[derive(Default)]
pub struct Encoder {
    out: Vec<u8>,
    resource_spans: Vec<u8>,
    scope_spans: Vec<u8>,
    one_span: Vec<u8>,
    small: Vec<u8>,
}

impl Encoder {
    /// Encodes one batch as an `ExportTraceServiceRequest` for `service_name`.
    pub fn encode(&mut self, service_name: &str, scope_version: &str, spans: &[SpanData]) -> &[u8] {
        let Encoder {
            out,
            resource_spans,
            scope_spans,
            one_span,
            small,
        } = self;
        // ScopeSpans: scope, then each span
        scope_spans.clear();
        nested(scope_spans, small, 1, |b| {
            bytes_field(b, 1, b"agentgate");
            bytes_field(b, 2, scope_version.as_bytes());
        });
        let mut status = Vec::new();
        for s in spans {
            one_span.clear();
            span(one_span, s, &mut status);
            bytes_field(scope_spans, 2, one_span);
        }
        // ResourceSpans: resource (service.name), then the scope spans
        resource_spans.clear();
        nested(resource_spans, small, 1, |b| {
            key_value(
                b,
                1,
                &KeyValue::new("service.name", service_name.to_string()),
            );
        });
        bytes_field(resource_spans, 2, scope_spans);
        out.clear();
        bytes_field(out, 1, resource_spans);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::spans::{span_data, SpanParts};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Pv;
    use prost::Message;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn decodes_as_otlp_with_every_field() {
        let scope = InstrumentationScope::builder("agentgate").build();
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let s = span_data(
            SpanParts {
                name: "GET /v1".into(),
                kind: SpanKind::Server,
                trace_id: [7; 16],
                span_id: [8; 8],
                parent: Some(([9; 8], true)),
                sampled: true,
                start,
                end: start + Duration::from_millis(5),
                error: Some("upstream_timeout"),
                attributes: vec![
                    KeyValue::new("s", "text"),
                    KeyValue::new("i", -42i64),
                    KeyValue::new("b", true),
                    KeyValue::new("f", 0.5f64),
                ],
            },
            &scope,
        );
        let mut enc = Encoder::default();
        let bytes = enc.encode("svc", "1.2.3", &[s]).to_vec();
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        assert_eq!(
            service.value.as_ref().unwrap().value,
            Some(Pv::StringValue("svc".into()))
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "agentgate");
        assert_eq!(ss.scope.as_ref().unwrap().version, "1.2.3");
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
                ("i", Some(Pv::IntValue(-42))),
                ("b", Some(Pv::BoolValue(true))),
                ("f", Some(Pv::DoubleValue(0.5))),
            ]
        );
    }
}

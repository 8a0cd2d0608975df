//! The process's own spans (tracing-opentelemetry's, see `logger`) encoded as OTLP and
//! handed to the request spans' exporter, so they reach the same collector with the
//! same transport, retries and resource. They are few (a reload, a health transition),
//! so this path converts the SDK's span objects; the request path never does.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp::{self, AttrValue, Kind, SpanHead};
use super::spans::SpanSink;

/// An OpenTelemetry SDK exporter that appends to a [`SpanSink`].
#[derive(Clone)]
pub struct SinkExporter {
    sink: Arc<SpanSink>,
}

impl std::fmt::Debug for SinkExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkExporter")
    }
}

impl SinkExporter {
    pub fn new(sink: Arc<SpanSink>) -> SinkExporter {
        SinkExporter { sink }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn value_of(v: &Value) -> AttrValue<'_> {
    match v {
        Value::Bool(b) => AttrValue::Bool(*b),
        Value::I64(i) => AttrValue::Int(*i),
        Value::F64(f) => AttrValue::Double(*f),
        Value::String(s) => AttrValue::Str(s.as_str()),
        // Arrays are not used by the gateway's own spans; shown as text if one appears.
        other => AttrValue::Str(match other {
            Value::Array(_) => "[array]",
            _ => "",
        }),
    }
}

fn attrs_into(buf: &mut Vec<u8>, field: u64, attrs: &[KeyValue]) {
    for kv in attrs {
        otlp::attr_in(buf, field, kv.key.as_str(), value_of(&kv.value));
    }
}

impl SinkExporter {
    fn record(&self, span: &SpanData) {
        let kind = match span.span_kind {
            SpanKind::Internal => Kind::Internal,
            SpanKind::Server => Kind::Server,
            SpanKind::Client => Kind::Client,
            SpanKind::Producer => Kind::Producer,
            SpanKind::Consumer => Kind::Consumer,
        };
        let parent = (span.parent_span_id != opentelemetry::trace::SpanId::INVALID)
            .then(|| (span.parent_span_id.to_bytes(), span.parent_span_is_remote));
        let error = match &span.status {
            Status::Error { description } => Some(description.as_ref()),
            _ => None,
        };
        let name: [&str; 1] = [span.name.as_ref()];
        let head = SpanHead {
            name: &name,
            kind,
            trace_id: span.span_context.trace_id().to_bytes(),
            span_id: span.span_context.span_id().to_bytes(),
            parent,
            start_unix_nanos: unix_nanos(span.start_time),
            end_unix_nanos: unix_nanos(span.end_time),
            error,
        };
        self.sink.record(1, |spans| {
            spans.span(&head, |b| {
                attrs_into(b, 9, &span.attributes);
                let mut event_attrs = Vec::new();
                for e in span.events.iter() {
                    event_attrs.clear();
                    attrs_into(&mut event_attrs, 3, &e.attributes);
                    otlp::event(b, unix_nanos(e.timestamp), e.name.as_ref(), &event_attrs);
                }
            });
        });
    }
}

impl SpanExporter for SinkExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &batch {
            self.record(span);
        }
        Ok(())
    }
}

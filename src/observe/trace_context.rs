//! W3C Trace Context: parsing `traceparent`, making new ids, and writing the header the
//! upstream receives. Parsing follows the spec's rules: version `00` must have exactly
//! four fields; a higher version is read by its first four fields; version `ff`, all-zero
//! ids, upper-case hex and wrong lengths are invalid and start a new trace.

use crate::config::Sampler;
use rand::RngCore;

/// Trace and span ids of the gateway's server span for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span id (server span).
    pub span_id: [u8; 8],
    /// The incoming parent span id when the trace was continued.
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn lower_hex(bytes: &[u8], out: &mut [u8]) -> Option<()> {
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0])?;
        let lo = hex_digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Parses a `traceparent` header value; `None` when it is invalid in any way.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55
    if value.len() < 55 {
        return None;
    }
    let mut version = [0u8; 1];
    lower_hex(&value[0..2], &mut version)?;
    if version[0] == 0xff {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if version[0] == 0 {
        if value.len() != 55 {
            return None;
        }
    } else if value.len() > 55 && value[55] != b'-' {
        // Future versions may append fields, always after a dash.
        return None;
    }
    let mut trace_id = [0u8; 16];
    lower_hex(&value[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    lower_hex(&value[36..52], &mut parent_id)?;
    let mut flags = [0u8; 1];
    lower_hex(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut rng = rand::thread_rng();
    loop {
        rng.fill_bytes(&mut out);
        if out != [0u8; N] {
            return out;
        }
    }
}

impl TraceContext {
    /// Continues an incoming trace, or starts a new one; `sampler` (at `ratio` for the
    /// ratio samplers) decides whether this gateway records it, with the OpenTelemetry
    /// specification's meanings: the parent-based ones follow the incoming sampled
    /// flag, the others decide alone.
    pub fn from_incoming(incoming: Option<TraceParent>, sampler: Sampler, ratio: f64) -> Self {
        let (trace_id, parent_span_id, parent_sampled) = match incoming {
            Some(p) => (p.trace_id, Some(p.parent_id), Some(p.flags & 1 == 1)),
            None => (nonzero_random(), None, None),
        };
        let sampled = match (sampler, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio, _) => sample_by_trace_id(&trace_id, ratio),
            (
                Sampler::ParentbasedAlwaysOn
                | Sampler::ParentbasedAlwaysOff
                | Sampler::ParentbasedTraceIdRatio,
                Some(parent),
            ) => parent,
            (Sampler::ParentbasedAlwaysOn, None) => true,
            (Sampler::ParentbasedAlwaysOff, None) => false,
            (Sampler::ParentbasedTraceIdRatio, None) => sample_by_trace_id(&trace_id, ratio),
        };
        TraceContext {
            trace_id,
            span_id: nonzero_random(),
            parent_span_id,
            sampled,
        }
    }

    /// `traceparent` for a call whose parent is `span_id`.
    pub fn traceparent_for(&self, span_id: &[u8; 8]) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&self.trace_id, &mut out[3..35]);
        write_hex(span_id, &mut out[36..52]);
        let flags = [if self.sampled { 1u8 } else { 0u8 }];
        write_hex(&flags, &mut out[53..55]);
        out
    }
}

/// Same decision on every node for the same trace: the low 8 bytes of the trace id
/// compared with the ratio (as OpenTelemetry's TraceIdRatioBased does).
fn sample_by_trace_id(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    x < bound
}

pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A fresh non-zero trace id.
pub fn random_trace_id() -> [u8; 16] {
    nonzero_random()
}

/// A fresh non-zero span id.
pub fn random_span_id() -> [u8; 8] {
    nonzero_random()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(hex_string(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex_string(&p.parent_id), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn future_version_with_more_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(v.as_bytes()).is_some());
    }

    #[test]
    fn rejects_invalid() {
        let bad = [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert!(
                parse_traceparent(b.as_bytes()).is_none(),
                "{b:?} should be invalid"
            );
        }
    }

    #[test]
    fn continues_and_writes() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        let ctx = TraceContext::from_incoming(Some(p), Sampler::ParentbasedTraceIdRatio, 0.0);
        assert!(ctx.sampled);
        let out = ctx.traceparent_for(&ctx.span_id);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(parse_traceparent(&out).is_some());
        assert_ne!(&text[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn sampling_ratio_extremes() {
        let root =
            |ratio| TraceContext::from_incoming(None, Sampler::ParentbasedTraceIdRatio, ratio);
        assert!(!root(0.0).sampled);
        assert!(root(1.0).sampled);
        let n = (0..2000).filter(|_| root(0.25).sampled).count();
        assert!((300..700).contains(&n), "{n}");
    }

    #[test]
    fn samplers_follow_the_specification() {
        let sampled = parse_traceparent(VALID.as_bytes()).unwrap();
        let unsampled = parse_traceparent(VALID.replace("-01", "-00").as_bytes()).unwrap();
        use Sampler::*;
        // (sampler, ratio, parent) -> sampled
        let cases = [
            (AlwaysOn, 0.0, Some(unsampled), true),
            (AlwaysOff, 1.0, Some(sampled), false),
            (TraceIdRatio, 0.0, Some(sampled), false),
            (TraceIdRatio, 1.0, Some(unsampled), true),
            (ParentbasedAlwaysOn, 0.0, None, true),
            (ParentbasedAlwaysOn, 0.0, Some(unsampled), false),
            (ParentbasedAlwaysOff, 1.0, None, false),
            (ParentbasedAlwaysOff, 0.0, Some(sampled), true),
            (ParentbasedTraceIdRatio, 0.0, Some(sampled), true),
            (ParentbasedTraceIdRatio, 1.0, Some(unsampled), false),
        ];
        for (sampler, ratio, parent, want) in cases {
            let ctx = TraceContext::from_incoming(parent, sampler, ratio);
            assert_eq!(ctx.sampled, want, "{sampler:?} {ratio} {parent:?}");
            // the agent's traceparent carries the decision
            let tp = ctx.traceparent_for(&ctx.span_id);
            assert_eq!(&tp[53..55], if want { b"01" } else { b"00" });
        }
    }
}

//! Properties the fuzz targets check; `tests/fuzz_regressions.rs` runs the same checks
//! on every saved crash input, so a crash once found stays a test.

use std::path::Path;

use agentgate::config::{OnExceed, PaginationRule, Sampler};
use agentgate::observe::access_log::redact_query;
use agentgate::observe::trace_context::{parse_traceparent, TraceContext};
use agentgate::pagination::enforce;
use agentgate::proxy::path::normalize;

/// Any text: a located error or a config, never a panic; errors point inside the text.
pub fn config_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = agentgate::config::parse(Path::new("fuzz.toml"), &text) {
        let lines = text.lines().count().max(1) + 1;
        for e in &errors.0 {
            assert!(
                e.line >= 1 && e.line <= lines,
                "error line {} outside the text",
                e.line
            );
            assert!(e.column >= 1);
        }
    }
}

/// Any header value: accepted values round-trip, and what we send upstream is valid.
pub fn traceparent(data: &[u8]) {
    let parsed = parse_traceparent(data);
    let ctx = TraceContext::from_incoming(parsed, Sampler::ParentbasedTraceIdRatio, 0.5);
    let sent = ctx.traceparent_for(&ctx.span_id);
    let back = parse_traceparent(&sent).expect("the traceparent we send must parse");
    assert_eq!(back.trace_id, ctx.trace_id);
    if let Some(p) = parsed {
        assert_eq!(
            ctx.trace_id, p.trace_id,
            "a valid incoming trace is continued"
        );
    }
}

/// Any query: enforcement either refuses or yields a query that enforcement leaves alone,
/// and every other parameter survives byte for byte.
pub fn query_rewrite(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let rule = PaginationRule {
        methods: vec![http::Method::GET],
        limit_param: "limit".into(),
        default_limit: 20,
        max_limit: 100,
        on_exceed: if data.len().is_multiple_of(2) {
            OnExceed::Clamp
        } else {
            OnExceed::Reject
        },
        max_response_bytes: 1000,
    };
    if let Ok(enforced) = enforce(&rule, Some(query)) {
        let effective = enforced.query.clone().unwrap_or_else(|| query.to_string());
        let again = enforce(&rule, Some(&effective)).expect("an enforced query is valid");
        assert_eq!(again.query, None, "enforcement is idempotent");
        let others = |q: &str| -> Vec<String> {
            q.split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("limit=") && *p != "limit")
                .map(str::to_string)
                .collect()
        };
        if !query.contains('%') && !query.contains('+') {
            assert_eq!(
                others(query),
                others(&effective),
                "other parameters changed"
            );
        }
    }
    let target = format!("/p?{query}");
    let redacted = redact_query(&target, &["token".to_string()]);
    assert!(redacted.starts_with("/p?"));
}

/// Any path bytes: a refusal, or a path that is already normal (normalising it again
/// changes nothing), starts with `/`, has no `//`, no dot segment, no backslash, no
/// encoded slash or NUL, and is no longer than the input.
pub fn path_normalize(data: &[u8]) {
    for input in [data.to_vec(), [b"/".as_slice(), data].concat()] {
        let Ok(out) = normalize(&input) else {
            continue;
        };
        let out = out.into_owned();
        assert!(out.starts_with(b"/"), "normal paths are absolute");
        assert!(out.len() <= input.len(), "normalising never grows a path");
        assert!(!out.windows(2).any(|w| w == b"//"), "slashes are merged");
        assert!(!out.contains(&b'\\'), "no backslash passes");
        for segment in out.split(|b| *b == b'/') {
            assert!(
                segment != b"." && segment != b"..",
                "dot segment left in {out:?}"
            );
        }
        let lower = out.to_ascii_lowercase();
        for escape in [&b"%2f"[..], b"%5c", b"%00", b"%2e"] {
            assert!(!lower.windows(3).any(|w| w == escape), "{escape:?} left");
        }
        match normalize(&out) {
            Ok(std::borrow::Cow::Borrowed(again)) => assert_eq!(again, &out[..]),
            other => panic!("a normal path is not normal again: {other:?}"),
        }
    }
}

/// Any bytes as an event stream: the events do not depend on where the chunks end
/// (split at points the input's first bytes choose), and the meters of both APIs read
/// them without a panic, seeing no more content events than there are events.
pub fn sse_stream(data: &[u8]) {
    use agentgate::ai::{sse::Event, Meter, SseParser};
    use agentgate::config::AiApi;
    let (cuts, stream) = data.split_at(data.len().min(3));
    let collect = |chunks: &[&[u8]]| {
        let mut p = SseParser::new();
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e: Event| {
                out.push((e.name.to_vec(), e.data.to_vec()))
            });
        }
        out
    };
    let whole = collect(&[stream]);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| *c as usize % (stream.len() + 1))
        .collect();
    at.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in at.into_iter().chain([stream.len()]) {
        chunks.push(&stream[from..cut]);
        from = cut;
    }
    assert_eq!(collect(&chunks), whole, "events depend on chunk boundaries");
    let now = std::time::Instant::now();
    for api in [AiApi::Openai, AiApi::Anthropic] {
        let mut m = Meter::new(api, b"text/event-stream");
        for c in &chunks {
            m.feed(c, now);
        }
        m.finish();
        assert!(m.content_events <= whole.len() as u64);
        let _ = m.usage(0);
        let _ = m.time_per_output_token();
        let mut m = Meter::new(api, b"application/json");
        m.feed(stream, now);
        m.finish();
        let _ = m.usage(0);
    }
}

/// Any request body: the facts are read or the body counts as unparsed, never a
/// panic; a body read as parsed is a JSON object.
pub fn ai_request(data: &[u8]) {
    use agentgate::ai::RequestFacts;
    use agentgate::config::AiApi;
    for api in [AiApi::Openai, AiApi::Anthropic] {
        let f = RequestFacts::read(api, data);
        assert_eq!(f.body_bytes, data.len() as u64);
        if f.parsed {
            let v: serde_json::Value = serde_json::from_slice(data).expect("parsed means JSON");
            assert!(v.is_object());
        }
    }
}

//! The response side: usage, the answering model and when content arrived, from a JSON
//! body (read whole once it has passed) or from each event of a stream as it passes.
//!
//! OpenAI: chat completion chunks (`choices[].delta.content` / `tool_calls` / `refusal`
//! carry content; the final chunk of `stream_options.include_usage` carries `usage`
//! with `prompt_tokens` / `completion_tokens`) and responses events
//! (`response.output_text.delta` and the other `*.delta` events carry content;
//! `response.completed` carries `response.usage` with `input_tokens` /
//! `output_tokens`). Anthropic: `message_start` (`message.model`, `message.usage`),
//! `content_block_delta` (content), `message_delta` (`usage.output_tokens`, cumulative).
//! Input counts Anthropic's cache reads and writes with `input_tokens`.

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::quick;
use super::sse::{Event, SseParser};
use crate::config::AiApi;

/// The largest JSON response body read for its usage.
pub const MAX_JSON_BYTES: usize = 4 << 20;

/// Token counts, as reported or (output only) as estimated from content events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// Where the output count came from (`usage_source` in the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    Reported,
    /// No usage was reported: output = content events seen.
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// Reads one response as it passes.
#[derive(Debug)]
pub struct Meter {
    api: AiApi,
    body: Body,
    /// The answering model (the first seen), for the span.
    pub response_model: Option<Box<str>>,
    input: Option<u64>,
    output: Option<u64>,
    /// Events that carried content.
    pub content_events: u64,
    pub first_content_at: Option<Instant>,
    pub last_content_at: Option<Instant>,
}

#[derive(Debug)]
enum Body {
    Stream(SseParser),
    /// A JSON body gathered up to `MAX_JSON_BYTES`.
    Json(Vec<u8>),
    /// Too large, or neither JSON nor an event stream.
    Ignored,
}

impl Meter {
    /// A meter for a response with this content type.
    pub fn new(api: AiApi, content_type: &[u8]) -> Meter {
        let essence = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        let body = if essence.eq_ignore_ascii_case(b"text/event-stream") {
            Body::Stream(SseParser::new())
        } else if essence.eq_ignore_ascii_case(b"application/json") {
            Body::Json(Vec::new())
        } else {
            Body::Ignored
        };
        Meter {
            api,
            body,
            response_model: None,
            input: None,
            output: None,
            content_events: 0,
            first_content_at: None,
            last_content_at: None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.body, Body::Stream(_))
    }

    /// Reads one chunk of the body, which arrived at `now`.
    pub fn feed(&mut self, chunk: &[u8], now: Instant) {
        match &mut self.body {
            Body::Stream(parser) => {
                let mut parser = std::mem::take(parser);
                parser.feed(chunk, &mut |e: Event| self.event(e, now));
                self.body = Body::Stream(parser);
            }
            Body::Json(buf) => {
                if buf.len() + chunk.len() > MAX_JSON_BYTES {
                    self.body = Body::Ignored;
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            Body::Ignored => {}
        }
    }

    /// The body is complete: a JSON body is read now.
    pub fn finish(&mut self) {
        if let Body::Json(buf) = &mut self.body {
            let buf = std::mem::take(buf);
            self.body = Body::Ignored;
            if let Ok(doc) = serde_json::from_slice::<Doc>(&buf) {
                self.note(&doc);
            }
        }
    }

    fn event(&mut self, e: Event<'_>, now: Instant) {
        if e.data == b"[DONE]" {
            return;
        }
        // OpenAI names the model in its chunks: the first one is read whole for it.
        let judged = match self.api {
            AiApi::Openai if self.response_model.is_none() => None,
            api => quick::content(api, e.name, e.data),
        };
        let content = match judged {
            Some(content) => content,
            None => match self.read_whole(e.data) {
                Some(content) => content,
                None => return,
            },
        };
        if content {
            self.content_events += 1;
            self.first_content_at.get_or_insert(now);
            self.last_content_at = Some(now);
        }
    }

    /// Parses an event whole: notes its model and usage; says whether it carries content
    /// (`None`: not JSON).
    fn read_whole(&mut self, data: &[u8]) -> Option<bool> {
        let doc = serde_json::from_slice::<Doc>(data).ok()?;
        self.note(&doc);
        Some(content_of(self.api, &doc))
    }

    fn note(&mut self, doc: &Doc) {
        let inner = doc.message.as_ref().or(doc.response.as_ref());
        let model = doc
            .model
            .as_deref()
            .or(inner.and_then(|m| m.model.as_deref()));
        if self.response_model.is_none() {
            if let Some(m) = model.filter(|m| !m.is_empty()) {
                self.response_model = Some(m.into());
            }
        }
        for usage in [doc.usage.as_ref(), inner.and_then(|m| m.usage.as_ref())]
            .into_iter()
            .flatten()
        {
            if let Some(i) = usage.input() {
                self.input = Some(i);
            }
            if let Some(o) = usage.output() {
                self.output = Some(o);
            }
        }
    }

    /// Usage as reported, or estimated: output as the content events seen, input as
    /// `input_estimate` (the request body's bytes / 4) when the agent reported none.
    pub fn usage(&self, input_estimate: u64) -> (Usage, UsageSource) {
        let input = self.input.unwrap_or(input_estimate);
        match self.output {
            Some(output) => (Usage { input, output }, UsageSource::Reported),
            None => (
                Usage {
                    input,
                    output: self.content_events,
                },
                UsageSource::Estimated,
            ),
        }
    }

    /// Whether the agent reported its usage.
    pub fn reported(&self) -> bool {
        self.output.is_some()
    }

    /// Output tokens produced so far (reported, else content events).
    pub fn output_so_far(&self) -> u64 {
        self.output.unwrap_or(self.content_events)
    }

    /// Time per output token: (last content - first) / (output tokens - 1).
    pub fn time_per_output_token(&self) -> Option<Duration> {
        let (first, last) = (self.first_content_at?, self.last_content_at?);
        let output = self.output.unwrap_or(self.content_events);
        (output > 1).then(|| last.saturating_duration_since(first) / (output - 1) as u32)
    }
}

/// Whether a parsed event carries content.
fn content_of(api: AiApi, doc: &Doc) -> bool {
    let kind = doc.kind.as_deref().unwrap_or("");
    match api {
        AiApi::Openai => doc.choices_content || (kind.ends_with(".delta") && doc.delta.text),
        AiApi::Anthropic => kind == "content_block_delta" && doc.delta.text,
    }
}

/// The fields read from a response body or an event, borrowed where the JSON allows.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Doc<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    usage: Option<UsageFields>,
    #[serde(borrow)]
    message: Option<Inner<'a>>,
    #[serde(borrow)]
    response: Option<Inner<'a>>,
    #[serde(rename = "choices", deserialize_with = "any_choice_content")]
    choices_content: bool,
    delta: DeltaContent,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Inner<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    usage: Option<UsageFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl UsageFields {
    fn input(&self) -> Option<u64> {
        let base = self.prompt_tokens.or(self.input_tokens)?;
        Some(
            base + self.cache_creation_input_tokens.unwrap_or(0)
                + self.cache_read_input_tokens.unwrap_or(0),
        )
    }

    fn output(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }
}

/// Whether a `delta` carries content: a non-empty `content`, `text`, `refusal`,
/// `partial_json` or `thinking`, or a non-empty `tool_calls`; a string delta (OpenAI
/// responses' `*.delta` events) when non-empty. Read without building the values.
#[derive(Default)]
struct DeltaContent {
    text: bool,
}

impl<'de> Deserialize<'de> for DeltaContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DeltaContent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a delta")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeltaContent, E> {
                Ok(DeltaContent {
                    text: !v.is_empty(),
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<DeltaContent, E> {
                Ok(DeltaContent::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DeltaContent, A::Error> {
                let mut text = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "content" | "text" | "refusal" | "partial_json" | "thinking" => {
                            text |= map.next_value::<NonEmpty>()?.0
                        }
                        "tool_calls" => text |= map.next_value::<NonEmpty>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(DeltaContent { text })
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or array that is not empty (null and other values: false).
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!v.is_empty()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NonEmpty, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// `choices`: whether any choice's `delta` carries content, without collecting them.
fn any_choice_content<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Choice {
        delta: DeltaContent,
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of choices")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut any = false;
            while let Some(c) = seq.next_element::<Choice>()? {
                any |= c.delta.text;
            }
            Ok(any)
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Chat chunks as an agent may write them (any text, compact or pretty, usage
        /// null or absent, tool calls or not): the quick read judges them all, as the
        /// whole parse does.
        #[test]
        fn quick_and_whole_agree_on_chat_chunks(
            text in ".{0,40}",
            usage_null in any::<bool>(),
            pretty in any::<bool>(),
            tool_calls in 0usize..3,
            role in any::<bool>(),
        ) {
            let mut delta = serde_json::json!({"content": text});
            if role {
                delta["role"] = serde_json::json!("assistant");
            }
            if tool_calls > 0 {
                delta["tool_calls"] = serde_json::Value::Array(
                    (0..tool_calls - 1).map(|i| serde_json::json!({"index": i})).collect(),
                );
            }
            let mut chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
            if usage_null {
                chunk["usage"] = serde_json::Value::Null;
            }
            let data = if pretty { serde_json::to_string_pretty(&chunk) } else { serde_json::to_string(&chunk) }.unwrap();
            let quick = quick::content(AiApi::Openai, b"", data.as_bytes());
            let whole = content_of(AiApi::Openai, &serde_json::from_str::<Doc>(&data).unwrap());
            prop_assert_eq!(quick, Some(whole), "{}", data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(api: AiApi, ct: &[u8], chunks: &[&str]) -> Meter {
        let mut m = Meter::new(api, ct);
        let t0 = Instant::now();
        for (i, c) in chunks.iter().enumerate() {
            m.feed(c.as_bytes(), t0 + Duration::from_millis(100 * i as u64));
        }
        m.finish();
        m
    }

    #[test]
    fn openai_stream_with_usage_chunk() {
        let m = run(
            AiApi::Openai,
            b"text/event-stream; charset=utf-8",
            &[
                ": ping\n\n",
                "data: {\"model\":\"gpt-4o-mini-2024\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\\n\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(m.response_model.as_deref(), Some("gpt-4o-mini-2024"));
        assert_eq!(m.content_events, 3);
        assert_eq!(
            m.usage(0),
            (
                Usage {
                    input: 12,
                    output: 5
                },
                UsageSource::Reported
            )
        );
        let first = m.first_content_at.unwrap();
        let last = m.last_content_at.unwrap();
        assert_eq!(last - first, Duration::from_millis(100));
        assert_eq!(m.time_per_output_token(), Some(Duration::from_millis(25)));
    }

    fn whole(api: AiApi, data: &str) -> bool {
        content_of(api, &serde_json::from_str::<Doc>(data).unwrap())
    }

    #[test]
    fn the_quick_read_agrees_with_the_whole_parse() {
        let cases: &[(AiApi, &str, &str, Option<bool>)] = &[
            (
                AiApi::Openai,
                "",
                r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi \"x\""},"finish_reason":null}],"usage":null}"#,
                Some(true),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
                Some(false),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta": {"content" : "x"}}]}"#,
                Some(true),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
                Some(true),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
                Some(false),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#,
                Some(false),
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{"content":"a"},"logprobs":{"content":[{"token":"a"}]}}]}"#,
                Some(true),
            ),
            // Shapes left to the whole parse.
            (
                AiApi::Openai,
                "",
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"type":"function","function":{"arguments":"{"}}]}}]}"#,
                None,
            ),
            (
                AiApi::Openai,
                "",
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                None,
            ),
            (
                AiApi::Openai,
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
                Some(true),
            ),
            (
                AiApi::Openai,
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":""}"#,
                Some(false),
            ),
            (
                AiApi::Openai,
                "response.in_progress",
                r#"{"type":"response.in_progress","response":{"usage":null}}"#,
                Some(false),
            ),
            (
                AiApi::Openai,
                "response.completed",
                r#"{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":1}}}"#,
                None,
            ),
            (
                AiApi::Anthropic,
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
                Some(true),
            ),
            (
                AiApi::Anthropic,
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#,
                Some(true),
            ),
            (
                AiApi::Anthropic,
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
                Some(false),
            ),
            (AiApi::Anthropic, "ping", r#"{"type":"ping"}"#, Some(false)),
            (
                AiApi::Anthropic,
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":3}}"#,
                None,
            ),
        ];
        for (api, name, data, want) in cases {
            let quick = quick::content(*api, name.as_bytes(), data.as_bytes());
            assert_eq!(quick, *want, "{name} {data}");
            if let Some(q) = quick {
                assert_eq!(q, whole(*api, data), "{name} {data}");
            }
        }
    }

    #[test]
    fn a_stream_stays_a_stream_once_finished() {
        let m = run(AiApi::Openai, b"text/event-stream", &["data: {}\n\n"]);
        assert!(m.is_stream());
        let m = run(AiApi::Openai, b"application/json", &["{}"]);
        assert!(!m.is_stream());
    }

    #[test]
    fn stream_without_usage_is_estimated() {
        let m = run(
            AiApi::Openai,
            b"text/event-stream",
            &["data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"],
        );
        assert_eq!(
            m.usage(0),
            (
                Usage {
                    input: 0,
                    output: 2
                },
                UsageSource::Estimated
            )
        );
    }

    #[test]
    fn openai_responses_events() {
        let m = run(
            AiApi::Openai,
            b"text/event-stream",
            &[
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\"}}\n\n",
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            ],
        );
        assert_eq!(m.response_model.as_deref(), Some("gpt-4.1"));
        assert_eq!(m.content_events, 1);
        assert_eq!(
            m.usage(0).0,
            Usage {
                input: 3,
                output: 1
            }
        );
    }

    #[test]
    fn anthropic_messages_stream() {
        let m = run(
            AiApi::Anthropic,
            b"text/event-stream",
            &[
                "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
                "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\nevent: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n",
                "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n",
                "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
            ],
        );
        assert_eq!(m.response_model.as_deref(), Some("claude-x"));
        assert_eq!(m.content_events, 1);
        assert_eq!(
            m.usage(0).0,
            Usage {
                input: 30,
                output: 15
            }
        );
    }

    #[test]
    fn json_bodies() {
        let m = run(
            AiApi::Openai,
            b"application/json",
            &[
                "{\"model\":\"gpt-4o\",\"choices\":[{\"message\":{\"content\":\"x\"}}],",
                "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}",
            ],
        );
        assert_eq!(
            m.usage(0),
            (
                Usage {
                    input: 7,
                    output: 2
                },
                UsageSource::Reported
            )
        );
        assert_eq!(m.response_model.as_deref(), Some("gpt-4o"));
        let m = run(
            AiApi::Anthropic,
            b"application/json",
            &["{\"type\":\"message\",\"model\":\"claude\",\"usage\":{\"input_tokens\":4,\"output_tokens\":9}}"],
        );
        assert_eq!(
            m.usage(0).0,
            Usage {
                input: 4,
                output: 9
            }
        );
        let m = run(
            AiApi::Openai,
            b"text/plain",
            &["{\"usage\":{\"completion_tokens\":2}}"],
        );
        assert!(!m.reported());
        let m = run(AiApi::Openai, b"application/json", &["not json"]);
        assert!(!m.reported());
    }
}

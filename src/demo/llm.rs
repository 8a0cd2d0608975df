//! The demo agent's LLM-style endpoints: the OpenAI chat completions API and the
//! Anthropic messages API, streamed and whole, with usage, in the shapes the official
//! clients read. The "model" writes words from a fixed list; how many is the request's
//! `?tokens=N` (default 16), never more than its `max_tokens` /
//! `max_completion_tokens`. Input tokens are counted as a quarter of the messages'
//! text, plus three per message, as a tokenizer would roughly say.
//!
//! OpenAI streams report usage only when asked (`stream_options.include_usage`), as
//! the real API does; Anthropic streams always do (`message_start`, `message_delta`).

use serde::Deserialize;
use serde_json::{json, Value};

/// The largest request body the demo agent reads.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Output tokens when the request names no `?tokens=`.
const DEFAULT_OUTPUT_TOKENS: u64 = 16;
const WORDS: [&str; 12] = [
    "Sure", "here", "is", "what", "I", "found", "about", "your", "question", "so", "far", ".",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

/// One request, read.
#[derive(Debug, Clone)]
pub struct Completion {
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// OpenAI streams: the final usage chunk was asked for.
    pub include_usage: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The output stopped at the request's max tokens.
    pub hit_max: bool,
}

#[derive(Deserialize)]
struct RequestBody {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    messages: Vec<Message>,
    system: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Value,
}

/// The characters of a message's text: a string, or the `text` of content parts.
fn text_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| text_len(p.get("text").unwrap_or(p)))
            .sum(),
        _ => 0,
    }
}

impl Completion {
    /// Reads a request body; the message says what is wrong with an unusable one.
    pub fn read(api: Api, body: &[u8], tokens: Option<u64>) -> Result<Completion, String> {
        let r: RequestBody =
            serde_json::from_slice(body).map_err(|e| format!("the body is not a request: {e}"))?;
        let model = r
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| "model: a model name is required".to_string())?;
        let max = match api {
            Api::OpenAi => r.max_completion_tokens.or(r.max_tokens),
            Api::Anthropic => Some(
                r.max_tokens
                    .ok_or_else(|| "max_tokens: Field required".to_string())?,
            ),
        };
        if max == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        if r.messages.is_empty() {
            return Err("messages: at least one message is required".into());
        }
        let chars: usize = r
            .messages
            .iter()
            .map(|m| text_len(&m.content))
            .sum::<usize>()
            + r.system.as_ref().map_or(0, text_len);
        let wanted = tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS).clamp(1, 100_000);
        let output_tokens = wanted.min(max.unwrap_or(u64::MAX));
        Ok(Completion {
            api,
            model,
            stream: r.stream,
            include_usage: r.stream_options.is_some_and(|o| o.include_usage),
            input_tokens: (chars as u64).div_ceil(4) + 3 * r.messages.len() as u64,
            output_tokens,
            hit_max: output_tokens < wanted,
        })
    }

    fn word(i: u64) -> String {
        let w = WORDS[i as usize % WORDS.len()];
        if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        }
    }

    fn text(&self) -> String {
        (0..self.output_tokens).map(Self::word).collect()
    }

    fn stop_reason(&self) -> &'static str {
        match (self.api, self.hit_max) {
            (Api::OpenAi, false) => "stop",
            (Api::OpenAi, true) => "length",
            (Api::Anthropic, false) => "end_turn",
            (Api::Anthropic, true) => "max_tokens",
        }
    }

    fn id(&self, agent: &str) -> String {
        let n: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
        match self.api {
            Api::OpenAi => format!("chatcmpl-{agent}-{n:012x}"),
            Api::Anthropic => format!("msg_{agent}_{n:012x}"),
        }
    }

    /// The whole (non-streamed) answer.
    pub fn whole_body(&self, agent: &str) -> Vec<u8> {
        let value = match self.api {
            Api::OpenAi => json!({
                "id": self.id(agent),
                "object": "chat.completion",
                "created": unix_now(),
                "model": self.model,
                "system_fingerprint": agent,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": self.stop_reason(),
                }],
                "usage": {
                    "prompt_tokens": self.input_tokens,
                    "completion_tokens": self.output_tokens,
                    "total_tokens": self.input_tokens + self.output_tokens,
                },
            }),
            Api::Anthropic => json!({
                "id": self.id(agent),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": self.text()}],
                "stop_reason": self.stop_reason(),
                "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The events of a streamed answer.
    pub fn events(&self, agent: &str) -> Events<'_> {
        Events {
            c: self,
            id: self.id(agent),
            created: unix_now(),
        }
    }
}

/// Writes a stream's events, each as the bytes of one chunk.
pub struct Events<'a> {
    c: &'a Completion,
    id: String,
    created: u64,
}

fn event(out: &mut Vec<u8>, name: Option<&str>, data: &Value) {
    if let Some(n) = name {
        out.extend_from_slice(format!("event: {n}\n").as_bytes());
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

impl Events<'_> {
    fn openai_chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.c.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// What precedes the content: the role chunk, or `message_start` and the block start.
    pub fn opening(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.c.api {
            Api::OpenAi => event(
                &mut out,
                None,
                &self.openai_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            ),
            Api::Anthropic => {
                event(
                    &mut out,
                    Some("message_start"),
                    &json!({"type": "message_start", "message": {
                        "id": self.id, "type": "message", "role": "assistant", "content": [],
                        "model": self.c.model, "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": self.c.input_tokens, "output_tokens": 1},
                    }}),
                );
                event(
                    &mut out,
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                );
                event(&mut out, Some("ping"), &json!({"type": "ping"}));
            }
        }
        out
    }

    /// The content event of token `i`.
    pub fn token(&mut self, i: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let word = Completion::word(i);
        match self.c.api {
            Api::OpenAi => event(
                &mut out,
                None,
                &self.openai_chunk(json!({"content": word}), Value::Null),
            ),
            Api::Anthropic => event(
                &mut out,
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
            ),
        }
        out
    }

    /// What follows the content: the finish chunk, usage when asked and `[DONE]`; or
    /// the block stop, `message_delta` with the output count and `message_stop`.
    pub fn closing(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let c = self.c;
        match c.api {
            Api::OpenAi => {
                event(
                    &mut out,
                    None,
                    &self.openai_chunk(json!({}), json!(c.stop_reason())),
                );
                if c.include_usage {
                    let mut chunk = self.openai_chunk(json!({}), Value::Null);
                    chunk["choices"] = json!([]);
                    chunk["usage"] = json!({
                        "prompt_tokens": c.input_tokens,
                        "completion_tokens": c.output_tokens,
                        "total_tokens": c.input_tokens + c.output_tokens,
                    });
                    event(&mut out, None, &chunk);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Api::Anthropic => {
                event(
                    &mut out,
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": 0}),
                );
                event(
                    &mut out,
                    Some("message_delta"),
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": c.stop_reason(), "stop_sequence": null},
                            "usage": {"output_tokens": c.output_tokens}}),
                );
                event(
                    &mut out,
                    Some("message_stop"),
                    &json!({"type": "message_stop"}),
                );
            }
        }
        out
    }
}

/// The error body of the API.
pub fn error_body(api: Api, message: &str) -> Value {
    match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
        }
        Api::Anthropic => {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_follows_tokens_and_max() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"twelve chars"}],"max_tokens":5}"#;
        let c = Completion::read(Api::OpenAi, body, Some(9)).unwrap();
        assert_eq!(
            (c.output_tokens, c.hit_max, c.input_tokens),
            (5, true, 3 + 3)
        );
        let c = Completion::read(Api::OpenAi, body, Some(2)).unwrap();
        assert_eq!((c.output_tokens, c.hit_max), (2, false));
        assert!(Completion::read(
            Api::Anthropic,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            None
        )
        .is_err());
        assert!(Completion::read(Api::OpenAi, b"nope", None).is_err());
    }
}

//! The request side: `model`, `stream` and the stated maximum of output tokens, from a
//! JSON body. A body that is not a JSON object (or whose fields have other types) is
//! passed on as it is and counted as unparsed; it is never refused for it.

use std::borrow::Cow;

use serde::Deserialize;

use crate::config::AiApi;

/// What the request says of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// The body was a JSON object with fields of the expected types.
    pub parsed: bool,
    pub model: Option<Box<str>>,
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens` or `max_output_tokens` (OpenAI chat
    /// completions, the older chat name, responses); `max_tokens` for Anthropic.
    pub max_output_tokens: Option<u64>,
    /// The body's length, for the input estimate (bytes / 4).
    pub body_bytes: u64,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
}

impl RequestFacts {
    /// Reads the facts of a whole body.
    pub fn read(api: AiApi, body: &[u8]) -> RequestFacts {
        let body_bytes = body.len() as u64;
        // serde reads a struct from a JSON array too (fields in order): only an object
        // is a request.
        let is_object = body.trim_ascii_start().first() == Some(&b'{');
        let Some(f) = is_object
            .then(|| serde_json::from_slice::<Fields>(body).ok())
            .flatten()
        else {
            return RequestFacts {
                body_bytes,
                ..Default::default()
            };
        };
        let max_output_tokens = match api {
            AiApi::Openai => f
                .max_completion_tokens
                .or(f.max_tokens)
                .or(f.max_output_tokens),
            AiApi::Anthropic => f.max_tokens,
        };
        RequestFacts {
            parsed: true,
            model: f.model.map(|m| m.into()),
            stream: f.stream.unwrap_or(false),
            max_output_tokens,
            body_bytes,
        }
    }

    /// The input estimate: body bytes / 4.
    pub fn input_estimate(&self) -> u64 {
        self.body_bytes / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chat_and_responses() {
        let f = RequestFacts::read(
            AiApi::Openai,
            br#"{"messages":[{"role":"user","content":"hi \"there\""}],"model":"gpt-4o-mini","stream":true,"max_completion_tokens":64}"#,
        );
        assert!(f.parsed);
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
        assert!(f.stream);
        assert_eq!(f.max_output_tokens, Some(64));
        let f = RequestFacts::read(AiApi::Openai, br#"{"model":"m","max_tokens":9}"#);
        assert_eq!(f.max_output_tokens, Some(9));
        assert!(!f.stream);
        let f = RequestFacts::read(
            AiApi::Openai,
            br#"{"model":"m","input":"x","max_output_tokens":7}"#,
        );
        assert_eq!(f.max_output_tokens, Some(7));
    }

    #[test]
    fn anthropic_reads_max_tokens_only() {
        let f = RequestFacts::read(
            AiApi::Anthropic,
            br#"{"model":"claude","max_tokens":100,"max_output_tokens":5,"stream":true}"#,
        );
        assert_eq!(f.max_output_tokens, Some(100));
        assert!(f.stream);
    }

    #[test]
    fn not_json_or_not_an_object_is_unparsed() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            br#"["gpt-4o", true, 64]"#,
            b"",
            br#"{"model": 5}"#,
            br#"{"max_tokens": -1}"#,
            b"{\"model\":\"a\"",
        ] {
            let f = RequestFacts::read(AiApi::Openai, body);
            assert!(!f.parsed, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(f.body_bytes, body.len() as u64);
        }
    }
}

//! The demo agent: a small stateless agent service used by `agentgate demo`, the tests
//! and the benchmarks. Conversation state is generated from the id, as a real agent
//! reads it from a shared data layer, so any instance answers any request.
//!
//! - `GET /healthz`
//! - `GET /v1/conversations?limit=&cursor=`: cursor pagination over a generated list
//! - `POST /v1/conversations/{id}/messages`: a JSON reply naming the instance
//! - `POST /v1/conversations/{id}/stream`: `text/event-stream`, one token every
//!   `token_delay`, then `[DONE]` (`?tokens=N` sets how many, default 20)
//! - `POST /v1/chat/completions`: the OpenAI chat completions API, streaming and not
//!   (see [`llm`])
//! - `POST /v1/messages`: the Anthropic messages API, streaming and not
//!
//! Every response carries `x-agent-instance`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::json;

use super::llm::{self, Api, Completion};

/// How many conversations the generated list holds.
const CONVERSATIONS: u64 = 1000;
/// The agent's own cap on `limit` (an agent written without pagination limits).
const AGENT_MAX_LIMIT: u64 = 1000;
const WORDS: [&str; 12] = [
    "Sure", "—", "here", "is", "what", "I", "found", "about", "your", "question", "so", "far",
];

pub struct DemoAgent {
    pub name: String,
    pub token_delay: Duration,
    /// The LLM endpoints' wait before their first content token (after the role chunk
    /// or `message_start`, which go out at once, as real providers do).
    pub first_token_delay: Duration,
}

/// What `handle` decided.
enum Answer {
    Reply(Reply),
    /// The conversation token stream.
    Stream,
    /// An LLM-style completion, streamed or whole.
    Completion(Completion),
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn json_reply(status: u16, value: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(&value).unwrap_or_default(),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl DemoAgent {
    fn list(&self, query: Option<&str>) -> Reply {
        let limit = match query_param(query, "limit") {
            None => 20,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => n.min(AGENT_MAX_LIMIT),
                _ => return json_reply(400, json!({"error": "limit must be a positive integer"})),
            },
        };
        let start = match query_param(query, "cursor") {
            None | Some("") => 0,
            Some(c) => match c.parse::<u64>() {
                Ok(n) => n,
                Err(_) => return json_reply(400, json!({"error": "bad cursor"})),
            },
        };
        let end = (start + limit).min(CONVERSATIONS);
        let items: Vec<_> = (start..end)
            .map(|i| json!({"id": format!("conv-{i:04}"), "title": format!("Conversation {i}"), "messages": i % 17}))
            .collect();
        let next = (end < CONVERSATIONS).then(|| end.to_string());
        json_reply(
            200,
            json!({"items": items, "next_cursor": next, "instance": self.name}),
        )
    }

    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["healthz"]) => Answer::Reply(json_reply(
                200,
                json!({"status": "ok", "instance": self.name}),
            )),
            ("GET", ["v1", "conversations"]) => Answer::Reply(self.list(query.as_deref())),
            ("POST", ["v1", "conversations", id, "messages"]) => {
                let id = id.to_string();
                let mut received = 0usize;
                while let Ok(Some(chunk)) = session.read_request_body().await {
                    received += chunk.len();
                }
                Answer::Reply(json_reply(
                    200,
                    json!({"conversation_id": id, "instance": self.name, "received_bytes": received,
                           "reply": format!("{} answered conversation {id}", self.name)}),
                ))
            }
            ("POST", ["v1", "conversations", _, "stream"]) => Answer::Stream,
            ("POST", ["v1", "chat", "completions"]) => self.completion(session, Api::OpenAi).await,
            ("POST", ["v1", "messages"]) => self.completion(session, Api::Anthropic).await,
            _ => Answer::Reply(json_reply(404, json!({"error": "not found", "path": path}))),
        }
    }

    /// Reads an LLM request; a body that is not a usable request is a 400 in the API's
    /// own error shape.
    async fn completion(&self, session: &mut ServerSession, api: Api) -> Answer {
        let tokens = query_param(session.req_header().uri.query(), "tokens")
            .and_then(|t| t.parse::<u64>().ok());
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > llm::MAX_REQUEST_BYTES {
                return Answer::Reply(json_reply(413, llm::error_body(api, "request too large")));
            }
            body.extend_from_slice(&chunk);
        }
        match Completion::read(api, &body, tokens) {
            Ok(c) => Answer::Completion(c),
            Err(message) => Answer::Reply(json_reply(400, llm::error_body(api, &message))),
        }
    }

    /// Answers a completion: whole after the generation time, or as an event stream.
    async fn complete(&self, session: &mut ServerSession, c: &Completion) -> bool {
        if !c.stream {
            tokio::time::sleep(
                self.first_token_delay
                    + self.token_delay * c.output_tokens.saturating_sub(1) as u32,
            )
            .await;
            let body = c.whole_body(&self.name);
            let Ok(mut header) = ResponseHeader::build(200, Some(4)) else {
                return false;
            };
            let _ = header.insert_header("content-type", "application/json");
            let _ = header.insert_header("content-length", body.len().to_string());
            let _ = header.insert_header("x-agent-instance", self.name.as_str());
            return session
                .write_response_header(Box::new(header))
                .await
                .is_ok()
                && session
                    .write_response_body(Bytes::from(body), true)
                    .await
                    .is_ok();
        }
        if !self.event_stream_header(session).await {
            return false;
        }
        let mut events = c.events(&self.name);
        // The opening events (role chunk, message_start) go at once; content waits.
        if !self.send(session, events.opening()).await {
            return false;
        }
        for i in 0..c.output_tokens {
            let delay = if i == 0 {
                self.first_token_delay
            } else {
                self.token_delay
            };
            tokio::time::sleep(delay).await;
            if !self.send(session, events.token(i)).await {
                return false;
            }
        }
        if !self.send(session, events.closing()).await {
            return false;
        }
        session
            .write_response_body(Bytes::new(), true)
            .await
            .is_ok()
    }

    async fn send(&self, session: &mut ServerSession, bytes: Vec<u8>) -> bool {
        bytes.is_empty()
            || session
                .write_response_body(Bytes::from(bytes), false)
                .await
                .is_ok()
    }

    async fn event_stream_header(&self, session: &mut ServerSession) -> bool {
        let Ok(mut header) = ResponseHeader::build(200, Some(4)) else {
            return false;
        };
        let _ = header.insert_header("content-type", "text/event-stream");
        let _ = header.insert_header("cache-control", "no-cache");
        let _ = header.insert_header("transfer-encoding", "chunked");
        let _ = header.insert_header("x-agent-instance", self.name.as_str());
        session
            .write_response_header(Box::new(header))
            .await
            .is_ok()
    }

    async fn stream(&self, session: &mut ServerSession) -> bool {
        let tokens = query_param(session.req_header().uri.query(), "tokens")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(20)
            .min(100_000);
        while let Ok(Some(_)) = session.read_request_body().await {}
        if !self.event_stream_header(session).await {
            return false;
        }
        for i in 0..tokens {
            tokio::time::sleep(self.token_delay).await;
            let word = WORDS[i % WORDS.len()];
            // sent_us lets a client measure what lies between the agent and itself.
            let sent_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let event = format!(
                "data: {{\"index\":{i},\"token\":\"{word}\",\"instance\":\"{}\",\"sent_us\":{sent_us}}}\n\n",
                self.name
            );
            if session
                .write_response_body(Bytes::from(event), false)
                .await
                .is_err()
            {
                // The client (the gateway) went away: stop generating.
                return false;
            }
        }
        session
            .write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), true)
            .await
            .is_ok()
    }
}

#[async_trait]
impl HttpServerApp for DemoAgent {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let ok = match self.handle(&mut session).await {
            Answer::Reply(reply) => {
                let mut header = ResponseHeader::build(reply.status, Some(4)).ok()?;
                header
                    .insert_header("content-type", reply.content_type)
                    .ok()?;
                header
                    .insert_header("content-length", reply.body.len().to_string())
                    .ok()?;
                header
                    .insert_header("x-agent-instance", self.name.as_str())
                    .ok()?;
                session
                    .write_response_header(Box::new(header))
                    .await
                    .is_ok()
                    && session
                        .write_response_body(Bytes::from(reply.body), true)
                        .await
                        .is_ok()
            }
            Answer::Stream => self.stream(&mut session).await,
            Answer::Completion(c) => self.complete(&mut session, &c).await,
        };
        if !ok {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, settings)),
            _ => None,
        }
    }
}

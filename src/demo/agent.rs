//! The demo agent: a small stateless agent service used by `agentgate demo`, the tests
//! and the benchmarks. Conversation state is generated from the id, as a real agent
//! reads it from a shared data layer, so any instance answers any request.
//!
//! - `GET /healthz`
//! - `GET /v1/conversations?limit=&cursor=`: cursor pagination over a generated list
//! - `POST /v1/conversations/{id}/messages`: a JSON reply naming the instance
//! - `POST /v1/conversations/{id}/stream`: `text/event-stream`, one token every
//!   `token_delay`, then `[DONE]` (`?tokens=N` sets how many, default 20)
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

    async fn handle(&self, session: &mut ServerSession) -> Option<Reply> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["healthz"]) => Some(json_reply(
                200,
                json!({"status": "ok", "instance": self.name}),
            )),
            ("GET", ["v1", "conversations"]) => Some(self.list(query.as_deref())),
            ("POST", ["v1", "conversations", id, "messages"]) => {
                let id = id.to_string();
                let mut received = 0usize;
                while let Ok(Some(chunk)) = session.read_request_body().await {
                    received += chunk.len();
                }
                Some(json_reply(
                    200,
                    json!({"conversation_id": id, "instance": self.name, "received_bytes": received,
                           "reply": format!("{} answered conversation {id}", self.name)}),
                ))
            }
            ("POST", ["v1", "conversations", _, "stream"]) => None,
            _ => Some(json_reply(404, json!({"error": "not found", "path": path}))),
        }
    }

    async fn stream(&self, session: &mut ServerSession) -> bool {
        let tokens = query_param(session.req_header().uri.query(), "tokens")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(20)
            .min(100_000);
        while let Ok(Some(_)) = session.read_request_body().await {}
        let Ok(mut header) = ResponseHeader::build(200, Some(4)) else {
            return false;
        };
        let _ = header.insert_header("content-type", "text/event-stream");
        let _ = header.insert_header("cache-control", "no-cache");
        let _ = header.insert_header("transfer-encoding", "chunked");
        let _ = header.insert_header("x-agent-instance", self.name.as_str());
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
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
            Some(reply) => {
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
            None => self.stream(&mut session).await,
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

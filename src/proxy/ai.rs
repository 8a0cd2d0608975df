//! `[routes.ai]` in the phases: the request's facts read at admission (or as its body
//! passes), the token reservation, the response read chunk by chunk, and at the end the
//! settlement and the token and time-to-first-token metrics.
//!
//! A body whose declared length fits pingora's replay buffer (64 KiB) is read whole
//! before the agent is chosen: pingora then sends it from that buffer (and replays it on
//! a retry), so the reservation uses the stated max output tokens and a refusal reaches
//! no agent. A larger or chunked body cannot be read ahead without losing the part past
//! the buffer (pingora 0.9 sends a consumed body only from it), so it is read as it
//! passes: admission reserves `default_reservation` plus its declared length / 4, and
//! once the body has passed the reservation is brought to what it states.

use std::time::Instant;

use pingora::proxy::Session;

use super::ctx::{AiExchange, Request, TokenNote};
use crate::ai::{Meter, RequestFacts};
use crate::config::AiRoute;
use crate::errors::{ErrorKind, GatewayError};
use crate::observe::per_config::RouteTelemetry;
use crate::ratelimit::tokens::{Settled, TokenLimiter, TokenVerdict};
use crate::state::RouteRuntime;

/// pingora's replay buffer: a body up to this size is read before admission.
pub const READ_AHEAD_LIMIT: u64 = 64 * 1024;

/// Reads what the request says of itself and reserves its tokens.
pub async fn admit(
    session: &mut Session,
    req: &mut Request,
    route_rt: &RouteRuntime,
) -> Result<(), GatewayError> {
    let Some(ai) = &route_rt.route.ai else {
        return Ok(());
    };
    let headers = &session.req_header().headers;
    let conversation_id = headers.get(&ai.conversation_header).cloned();
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut exchange = Box::new(AiExchange {
        facts: RequestFacts::default(),
        conversation_id,
        model_label: None,
        body_copy: None,
        reservation: None,
        meter: None,
    });
    match declared {
        Some(0) => {}
        Some(n) if n <= READ_AHEAD_LIMIT => {
            let body = read_ahead(session, n, req).await?;
            exchange.facts = RequestFacts::read(ai.api, &body);
            note_facts(ai, req.route_telemetry(), &mut exchange);
        }
        _ if session.as_mut().is_body_empty() => {}
        _ => {
            exchange.body_copy = Some(Vec::new());
            exchange.facts.body_bytes = declared.unwrap_or(0);
        }
    }
    let limiter = route_rt.tokens.as_deref();
    req.ai = Some(exchange);
    if let Some(limiter) = limiter {
        reserve(session, req, limiter).await?;
    }
    Ok(())
}

/// Reads a body of `declared` bytes whole; pingora keeps it in its replay buffer and
/// sends it on from there.
async fn read_ahead(
    session: &mut Session,
    declared: u64,
    req: &Request,
) -> Result<Vec<u8>, GatewayError> {
    session.as_mut().enable_retry_buffering();
    let mut body = Vec::with_capacity(declared as usize);
    let limit = req.runtime.config.server.max_request_body_bytes;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > limit.min(READ_AHEAD_LIMIT) {
                    return Err(GatewayError::new(
                        ErrorKind::BadRequest,
                        "the request body is longer than its Content-Length",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(match e.etype() {
                    pingora::ErrorType::ReadTimedout => GatewayError::new(
                        ErrorKind::RequestTimeout,
                        "the request body stalled for longer than body_timeout",
                    ),
                    _ => GatewayError::new(
                        ErrorKind::BadRequest,
                        "the request body could not be read",
                    ),
                })
            }
        }
    }
}

/// The model label and the unparsed count, once the facts are known.
fn note_facts(ai: &AiRoute, telemetry: &RouteTelemetry, exchange: &mut AiExchange) {
    exchange.model_label = exchange
        .facts
        .model
        .as_deref()
        .and_then(|m| ai.models.iter().position(|l| &**l == m));
    if !exchange.facts.parsed {
        if let Some(m) = &telemetry.ai {
            m.unparsed.increment(1);
        }
    }
}

async fn reserve(
    session: &Session,
    req: &mut Request,
    limiter: &TokenLimiter,
) -> Result<(), GatewayError> {
    let Some(exchange) = req.ai.as_deref_mut() else {
        return Ok(());
    };
    let want = limiter.reservation_for(
        exchange.facts.max_output_tokens,
        exchange.facts.input_estimate(),
    );
    let mut ip_buf = [0u8; 16];
    let material = req.client.limit_key(
        &limiter.rule.key,
        &session.req_header().headers,
        &mut ip_buf,
    );
    let rule = &limiter.rule;
    let window_s = (rule.burst as f64 / rule.tokens_per_second()).ceil() as u64;
    match limiter.reserve(material, want).await {
        TokenVerdict::Reserved(r) => {
            req.policy.tokens = Some(TokenNote {
                burst: rule.burst,
                window_s,
                remaining: r.remaining,
                reset_s: r.reset_s,
                denied_retry_after_s: None,
            });
            exchange.reservation = Some(r);
            Ok(())
        }
        TokenVerdict::Deny {
            remaining,
            retry_after_s,
            reset_s,
        } => {
            req.policy.tokens = Some(TokenNote {
                burst: rule.burst,
                window_s,
                remaining,
                reset_s: reset_s.max(retry_after_s),
                denied_retry_after_s: Some(retry_after_s),
            });
            if let Some(m) = &req.route_telemetry().ai {
                m.token_limited.increment(1);
            }
            Err(GatewayError::new(
                ErrorKind::TokenLimited,
                format!(
                    "token budget of {} tokens per minute (burst {}) cannot hold this request's {want} tokens now; retry after {retry_after_s} s",
                    rule.tokens_per_minute, rule.burst
                ),
            ))
        }
    }
}

/// A chunk of a body read as it passes; at its end the facts are read and the
/// reservation brought to what the body states.
pub async fn on_request_body(
    session: &Session,
    req: &mut Request,
    chunk: Option<&[u8]>,
    end_of_stream: bool,
) {
    let Some(routed) = req.route else {
        return;
    };
    // Fields borrowed apart: the route's parts from the runtime, the exchange from the
    // request's own state.
    let route_rt = &req.runtime.routes[routed.route];
    let telemetry = &req.runtime.telemetry.routes[routed.route];
    let (Some(ai), Some(exchange)) = (&route_rt.route.ai, req.ai.as_deref_mut()) else {
        return;
    };
    let Some(copy) = exchange.body_copy.as_mut() else {
        return;
    };
    if let Some(c) = chunk {
        copy.extend_from_slice(c);
    }
    if !end_of_stream {
        return;
    }
    let body = exchange.body_copy.take().unwrap_or_default();
    exchange.facts = RequestFacts::read(ai.api, &body);
    note_facts(ai, telemetry, exchange);
    let (Some(limiter), Some(r)) = (route_rt.tokens.as_deref(), exchange.reservation.as_mut())
    else {
        return;
    };
    let want = limiter.reservation_for(
        exchange.facts.max_output_tokens,
        exchange.facts.input_estimate(),
    );
    if want == r.tokens || r.tokens == 0 {
        return;
    }
    let mut ip_buf = [0u8; 16];
    let material = req.client.limit_key(
        &limiter.rule.key,
        &session.req_header().headers,
        &mut ip_buf,
    );
    // Settling to `want` charges (or gives back) the difference: the reservation is
    // then what the body states.
    if limiter.settle(material, r, Some(want)).await == Settled::Settled {
        r.tokens = want;
    }
}

/// The agent's response header arrived: a meter for its body.
pub fn on_response_header(req: &mut Request, content_type: Option<&[u8]>) {
    let Some(api) = req
        .route_runtime()
        .and_then(|r| r.route.ai.as_ref())
        .map(|a| a.api)
    else {
        return;
    };
    if let Some(exchange) = req.ai.as_deref_mut() {
        exchange.meter = Some(Meter::new(api, content_type.unwrap_or(b"")));
    }
}

/// A chunk of the agent's response passes.
pub fn on_response_body(req: &mut Request, chunk: Option<&[u8]>, end_of_stream: bool) {
    let Some(meter) = req.ai.as_deref_mut().and_then(|e| e.meter.as_mut()) else {
        return;
    };
    if let Some(c) = chunk {
        if !c.is_empty() {
            meter.feed(c, Instant::now());
        }
    }
    if end_of_stream {
        meter.finish();
    }
}

/// The request is over: settle the reservation to the reported usage, count tokens
/// and time to first token.
pub async fn finish(session: &Session, req: &mut Request) {
    let Some(mut exchange) = req.ai.take() else {
        return;
    };
    if let Some(meter) = exchange.meter.as_mut() {
        meter.finish();
    }
    record(req, &exchange);
    if let (Some(r), Some(limiter)) = (
        exchange.reservation.take(),
        req.route_runtime().and_then(|r| r.tokens.clone()),
    ) {
        let used = exchange.reported_tokens();
        let mut ip_buf = [0u8; 16];
        let material = req.client.limit_key(
            &limiter.rule.key,
            &session.req_header().headers,
            &mut ip_buf,
        );
        let settled = limiter.settle(material, &r, used).await;
        if let Some(m) = &req.route_telemetry().ai {
            m.settlements[settled as usize].increment(1);
        }
    }
    req.ai = Some(exchange);
}

fn record(req: &Request, exchange: &AiExchange) {
    let (Some(metrics), Some(meter)) = (&req.route_telemetry().ai, exchange.meter.as_ref()) else {
        return;
    };
    let model = metrics.model(exchange.model_label);
    let (usage, _) = exchange.usage();
    model.input_tokens.increment(usage.input);
    model.output_tokens.increment(usage.output);
    if let Some(ttft) = time_to_first_token(req, meter) {
        if req.id.trace.sampled {
            let unix_ms = crate::clock::unix_nanos_at(Instant::now()) / 1_000_000;
            model
                .ttft
                .record_sampled(ttft, &req.id.trace.trace_id, unix_ms);
        } else {
            model.ttft.record(ttft);
        }
    }
    if let Some(tpot) = meter.time_per_output_token() {
        model.tpot.record(tpot);
    }
    if req.outcome.cancelled() && meter.is_stream() {
        metrics.cancelled_tokens.increment(meter.output_so_far());
    }
}

/// Request sent upstream -> the first event that carried content.
pub fn time_to_first_token(req: &Request, meter: &Meter) -> Option<std::time::Duration> {
    let first = meter.first_content_at?;
    let sent = req.timing.upstream_sent_at?;
    Some(first.saturating_duration_since(sent))
}

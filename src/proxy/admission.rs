//! What a request must pass before it reaches an agent (routing, request hygiene, body
//! size, and the route's auth, rate limit and pagination), and the checks on what the
//! agent sends back.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::errors::{ErrorKind, GatewayError};
use super::headers;
use super::routing::find_route;
use crate::state::Shared;

/// Runs every admission check in order; the first failure is the answer.
pub async fn admit(_shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let Some(runtime) = ctx.runtime.clone() else {
        return Err(GatewayError::new(ErrorKind::BadRequest, "no config loaded"));
    };
    let config = &runtime.config;
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    ctx.client_ip = Some(headers::client_ip(
        peer,
        session.req_header().headers.get("x-forwarded-for"),
        &config.server.trusted_proxies,
    ));

    let req = session.req_header();
    let route = find_route(&config.routes, req.uri.path(), &req.method).map(|(i, _)| i);
    let Some(route_index) = route else {
        _shared.unmatched_metrics.in_flight.increment(1.0);
        return Err(GatewayError::new(
            ErrorKind::RouteNotFound,
            format!("no route matches {} {}", req.method, truncate(req.uri.path(), 200)),
        ));
    };
    ctx.route = Some(route_index);
    runtime.routes[route_index].metrics.in_flight.increment(1.0);

    check_framing(req)?;
    check_declared_length(req, config.server.max_request_body_bytes)?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Rejects request framing that two parsers could read differently (smuggling).
fn check_framing(req: &RequestHeader) -> Result<(), GatewayError> {
    let lengths: Vec<&[u8]> = req.headers.get_all(CONTENT_LENGTH).iter().map(|v| v.as_bytes()).collect();
    let has_te = req.headers.contains_key(TRANSFER_ENCODING);
    if has_te && !lengths.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(GatewayError::new(ErrorKind::BadRequest, "the request has differing Content-Length headers"));
    }
    if let Some(te) = req.headers.get(TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::new(ErrorKind::BadRequest, "only Transfer-Encoding: chunked is accepted"));
        }
    }
    Ok(())
}

fn check_declared_length(req: &RequestHeader, limit: u64) -> Result<(), GatewayError> {
    let Some(v) = req.headers.get(CONTENT_LENGTH) else { return Ok(()) };
    let declared = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| GatewayError::new(ErrorKind::BadRequest, "Content-Length is not a number"))?;
    if declared > limit {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(())
}

/// Edits the request the agent receives: forwarding and trace headers, hop-by-hop
/// headers removed.
pub fn prepare_upstream_request(session: &Session, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    headers::strip_hop_by_hop(req);
    let Some(runtime) = &ctx.runtime else { return Ok(()) };
    let trusted = &runtime.config.server.trusted_proxies;
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let xff = headers::forwarded_for(&req.headers, peer, trusted);
    req.insert_header("x-forwarded-for", xff)?;
    if !(headers::is_trusted(peer, trusted) && req.headers.contains_key("x-forwarded-proto")) {
        req.insert_header("x-forwarded-proto", "http")?;
    }
    if let Some(id) = &ctx.request_id {
        req.insert_header("x-request-id", id.clone())?;
    }
    if let Some(trace) = &ctx.trace {
        if trace.parent_span_id.is_none() {
            // A new trace: an incoming tracestate belonged to a context we did not accept.
            req.remove_header("tracestate");
        }
        req.insert_header("traceparent", trace.traceparent_for(&ctx.upstream_span_id).to_vec())?;
    }
    Ok(())
}

/// Checks the agent's response header before it reaches the client.
pub fn check_upstream_response(_resp: &mut ResponseHeader, _ctx: &mut RequestCtx) -> Result<()> {
    Ok(())
}

/// Checks each chunk of the agent's response body as it streams.
pub fn check_upstream_body(_body: &mut Option<Bytes>, _end: bool, _ctx: &mut RequestCtx) -> Result<()> {
    Ok(())
}

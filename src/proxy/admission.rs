//! What a request must pass before it reaches an agent (routing, request hygiene, body
//! size, and the route's auth, rate limit and pagination), and the checks on what the
//! agent sends back.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderMap;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::ctx::{RateNote, Request, Routed};
use super::headers::{self, RequestScan};
use super::respond::ResponseScan;
use super::routing::find_route;
use crate::config::{Config, PaginationRule, Route};
use crate::errors::{ErrorKind, GatewayError};
use crate::observe::metrics::PaginationAction;
use crate::pagination::ResponseCap;

use crate::balance::concurrency::{ConcurrencyLimit, Overloaded};
use crate::ratelimit::{RouteLimiter, Verdict};

/// Runs every admission check in order; the first failure is the answer.
pub async fn admit(
    session: &mut Session,
    ctx: &mut Request,
    scan: &RequestScan,
) -> Result<(), GatewayError> {
    let runtime = std::sync::Arc::clone(&ctx.runtime);
    let config = &runtime.config;
    if let Err(e) = normalize_target(session.req_header_mut()) {
        runtime.telemetry.unmatched.metrics.in_flight.increment(1.0);
        return Err(e);
    }
    let req = session.req_header();
    let route = find_route(&config.routes, req.uri.path(), &req.method).map(|(i, _)| i);
    let Some(route_index) = route else {
        runtime.telemetry.unmatched.metrics.in_flight.increment(1.0);
        return Err(GatewayError::new(
            ErrorKind::RouteNotFound,
            format!(
                "no route matches {} {}",
                req.method,
                truncate(req.uri.path(), 200)
            ),
        ));
    };
    ctx.route = Some(Routed {
        route: route_index,
        upstream: config.routes[route_index].upstream,
    });
    runtime.telemetry.routes[route_index]
        .metrics
        .in_flight
        .increment(1.0);

    check_framing(req, scan, session.get_keepalive().is_none())?;
    check_declared_length(scan, config.server.max_request_body_bytes)?;

    let route_rt = &runtime.routes[route_index];
    let route = &route_rt.route;
    authenticate(config, route, session.req_header(), ctx)?;
    if let Some(limiter) = &route_rt.limiter {
        rate_limit(limiter, session.req_header(), ctx).await?;
    }
    if let Some(rule) = &route.pagination {
        if rule.methods.contains(&session.req_header().method) {
            paginate(rule, session, ctx)?;
        }
    }
    // Before the token reservation: a request refused for load reserves nothing.
    if let Some(limit) = &runtime.upstreams[route.upstream].limit {
        take_slot(limit, ctx).await?;
    }
    super::ai::admit(session, ctx, route_rt).await
}

/// Takes a slot under the upstream's concurrency cap, waiting in its queue up to
/// `queue_timeout`; past that, `503 overloaded`.
async fn take_slot(limit: &Arc<ConcurrencyLimit>, ctx: &mut Request) -> Result<(), GatewayError> {
    match limit.acquire().await {
        Ok(slot) => {
            ctx.slot = Some(slot);
            Ok(())
        }
        Err(why) => {
            ctx.route_telemetry().metrics.overloaded.increment(1);
            let upstream = ctx.upstream().map_or("", |u| u.pool.config.name.as_str());
            Err(GatewayError::new(
                ErrorKind::Overloaded,
                match why {
                    Overloaded::QueueFull => format!(
                        "upstream {upstream:?} has {} requests in flight, its cap, and no room to wait: retry later",
                        limit.limit()
                    ),
                    Overloaded::TimedOut => format!(
                        "upstream {upstream:?} stayed at its cap of {} requests in flight for the whole queue_timeout: retry later",
                        limit.limit()
                    ),
                },
            ))
        }
    }
}

/// Finds the tenant of a presented key; on auth routes a missing or unknown key is 401.
fn authenticate(
    config: &Config,
    route: &Route,
    req: &RequestHeader,
    ctx: &mut Request,
) -> Result<(), GatewayError> {
    let Some(auth) = &config.auth else {
        return Ok(());
    };
    let presented = crate::auth::presented_key(&req.headers);
    ctx.client.key_id = presented.and_then(|k| crate::auth::tenant_for(&auth.keys, k));
    if route.auth && ctx.client.key_id.is_none() {
        let message = if presented.is_some() {
            "the API key is not recognised"
        } else {
            "this route needs an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
        };
        return Err(GatewayError::new(ErrorKind::Unauthorized, message));
    }
    Ok(())
}

async fn rate_limit(
    limiter: &RouteLimiter,
    req: &RequestHeader,
    ctx: &mut Request,
) -> Result<(), GatewayError> {
    let mut ip_buf = [0u8; 16];
    let material = ctx
        .client
        .limit_key(&limiter.rule.key, &req.headers, &mut ip_buf);
    match limiter.check(material).await {
        Verdict::Allow {
            limit,
            remaining,
            reset_s,
        } => {
            ctx.policy.rate_limit = Some(RateNote {
                limit,
                window_s: limiter.window_s(),
                remaining,
                reset_s,
                denied_retry_after_s: None,
            });
            Ok(())
        }
        Verdict::Deny {
            limit,
            retry_after_s,
            reset_s,
        } => {
            ctx.policy.rate_limit = Some(RateNote {
                limit,
                window_s: limiter.window_s(),
                remaining: 0,
                reset_s: reset_s.max(retry_after_s),
                denied_retry_after_s: Some(retry_after_s),
            });
            Err(GatewayError::new(
                ErrorKind::RateLimited,
                format!(
                    "rate limit of {} requests per second (burst {}) exceeded; retry after {retry_after_s} s",
                    limiter.rule.requests_per_second, limiter.rule.burst
                ),
            ))
        }
    }
}

fn paginate(
    rule: &PaginationRule,
    session: &mut Session,
    ctx: &mut Request,
) -> Result<(), GatewayError> {
    let uri = &session.req_header().uri;
    let path = uri.path();
    let enforced = match crate::pagination::enforce_after(rule, &[path, "?"], uri.query()) {
        Ok(e) => e,
        Err(e) => {
            ctx.policy.pagination = Some(PaginationAction::Rejected);
            return Err(e);
        }
    };
    ctx.policy.response_cap = Some(ResponseCap::new(rule.max_response_bytes));
    ctx.policy.pagination = enforced.action;
    ctx.policy.pagination_clamped = enforced.clamped;
    if let Some(target) = enforced.query {
        // `target` is the path and the rewritten query.
        let new_uri = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(target))
            .map(http::Uri::from)
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::BadRequest,
                    "the request target could not be rewritten",
                )
            })?;
        session.req_header_mut().set_uri(new_uri);
    }
    Ok(())
}

/// Puts the normalised path (`super::path`) in place of the client's, so routing, auth,
/// limits, pagination and the agent all see one path; the query keeps its bytes.
fn normalize_target(req: &mut RequestHeader) -> Result<(), GatewayError> {
    let raw = req.raw_path();
    let query_at = raw.iter().position(|b| *b == b'?').unwrap_or(raw.len());
    let origin_form = raw.first() == Some(&b'/');
    let path = if origin_form {
        &raw[..query_at]
    } else {
        // Absolute-form (`http://host/p?q`): the URI holds the path alone.
        req.uri.path().as_bytes()
    };
    let normal = match super::path::normalize(path) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(normal)) => normal,
        Err(e) => return Err(GatewayError::new(ErrorKind::BadRequest, e.message())),
    };
    let mut target = normal;
    target.extend_from_slice(&raw[query_at..]);
    req.set_raw_path(&target).map_err(|_| {
        GatewayError::new(
            ErrorKind::BadRequest,
            "the request target could not be rewritten",
        )
    })
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
///
/// pingora's parser drops Content-Length when Transfer-Encoding is also present and turns
/// keep-alive off for that request (RFC 9112 §6.1). A chunked HTTP/1.1 request whose
/// keep-alive is off without a `Connection: close` from the client therefore carried both.
fn check_framing(
    req: &RequestHeader,
    scan: &RequestScan,
    keepalive_off: bool,
) -> Result<(), GatewayError> {
    let has_te = scan.transfer_encoding;
    let length_was_dropped = has_te
        && keepalive_off
        && req.version == http::Version::HTTP_11
        && !scan.hop_by_hop.connection_close();
    if has_te && (scan.content_length.is_some() || length_was_dropped) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if let Some(problem) = scan.hop_by_hop.connection_problem() {
        return Err(GatewayError::new(ErrorKind::BadRequest, problem));
    }
    if scan.content_length_repeated {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "the request has more than one Content-Length header",
        ));
    }
    if has_te && (scan.transfer_encoding_repeated || !scan.only_chunked) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "only one Transfer-Encoding header, of exactly `chunked`, is accepted",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; HTTP/1.0 may have none.
    if scan.hosts > 1 || (scan.hosts == 0 && req.version == http::Version::HTTP_11) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    Ok(())
}

fn check_declared_length(scan: &RequestScan, limit: u64) -> Result<(), GatewayError> {
    let Some(parsed) = scan.content_length else {
        return Ok(());
    };
    let declared = parsed.ok_or_else(|| {
        GatewayError::new(ErrorKind::BadRequest, "Content-Length is not a number")
    })?;
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
pub fn prepare_upstream_request(req: &mut RequestHeader, ctx: &Request) {
    headers::edit_request(req, |map| prepare_upstream_headers(map, ctx));
}

fn prepare_upstream_headers(map: &mut HeaderMap, ctx: &Request) {
    // What the scan on arrival found: every try's request is a copy of the client's, so
    // it holds the same hop-by-hop headers.
    ctx.hop_by_hop.strip(map);
    if ctx.websocket {
        headers::put_websocket_upgrade(map);
    }
    if ctx.hop_by_hop.te_trailers() {
        map.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    // Room for the four headers below: the map grows once, not on every insert.
    map.reserve(4);
    let trusted = &ctx.runtime.config.server.trusted_proxies;
    let peer = ctx.client.peer_ip;
    let xff = headers::forwarded_for(map, peer, trusted);
    map.insert(headers::X_FORWARDED_FOR, xff);
    if !(headers::is_trusted(peer, trusted) && map.contains_key(headers::X_FORWARDED_PROTO)) {
        map.insert(
            headers::X_FORWARDED_PROTO,
            http::HeaderValue::from_static(if ctx.client.tls { "https" } else { "http" }),
        );
    }
    map.insert(headers::X_REQUEST_ID, ctx.id.request_id.clone());
    if ctx.id.trace.parent_span_id.is_none() && ctx.id.incoming_tracestate {
        // A new trace: an incoming tracestate belonged to a context we did not accept.
        map.remove(headers::TRACESTATE);
    }
    map.insert(headers::TRACEPARENT, ctx.id.traceparent.clone());
}

/// Checks the agent's response header before it reaches the client: a list response
/// that declares more than the cap is refused whole (502) and its connection dropped.
pub fn check_upstream_response(scan: &ResponseScan, ctx: &mut Request) -> Result<(), GatewayError> {
    let Some(cap) = ctx.policy.response_cap else {
        return Ok(());
    };
    let declared = scan.content_length.flatten();
    if let Some(len) = declared {
        if len > cap.limit {
            ctx.policy.pagination = Some(PaginationAction::Oversize);
            return Err(GatewayError::new(
                ErrorKind::UpstreamResponseTooLarge,
                format!("the agent's list response ({len} bytes) is over the limit of {} bytes; ask for fewer items", cap.limit),
            ));
        }
    }
    Ok(())
}

/// Counts each chunk of a capped response as it streams; past the cap the stream is cut
/// (the client sees an incomplete response, never a silently truncated complete one).
pub fn check_upstream_body(
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut Request,
) -> Result<(), GatewayError> {
    let Some(cap) = ctx.policy.response_cap.as_mut() else {
        return Ok(());
    };
    let limit = cap.limit;
    let cut = || {
        GatewayError::new(
            ErrorKind::UpstreamResponseTooLarge,
            format!(
                "the agent's streamed list response passed the limit of {limit} bytes and was cut"
            ),
        )
    };
    if cap.exhausted {
        *body = None;
        return Err(cut());
    }
    let len = body.as_ref().map(|b| b.len()).unwrap_or(0);
    if let Some(allowed) = cap.admit(len) {
        if let Some(b) = body.as_mut() {
            *b = b.slice(..allowed);
        }
        ctx.policy.pagination = Some(PaginationAction::Oversize);
        tracing::warn!(
            max_response_bytes = limit,
            request_id = ctx.request_id_str(),
            trace_id = %ctx.trace_id_string(),
            "list response cut at max_response_bytes"
        );
        if end {
            return Err(cut());
        }
        // The allowed part goes out; the next chunk (or the end) cuts the stream.
        ctx.outcome.fail(cut());
    }
    Ok(())
}

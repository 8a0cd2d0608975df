//! Responses the gateway writes or decorates: JSON errors, the headers every response
//! carries (`x-request-id`, `server-timing`, rate-limit and pagination notes), and
//! `ResponseScan`, the one pass over an agent's response header.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{HeaderMap, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::Request;
use super::headers;
use crate::errors::{json_body, ErrorKind, GatewayError};

/// Writes a JSON error response and records it in the context.
pub async fn send_error(session: &mut Session, ctx: &mut Request, err: GatewayError) -> Result<()> {
    let status = err.kind.status();
    let err_kind = err.kind;
    let body = json_body(&err, ctx.request_id_str());
    let mut header = ResponseHeader::build_no_case(status, Some(10))?;
    headers::edit_response(&mut header, |map| {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        map.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        map.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let wait = match err.kind {
            ErrorKind::RateLimited => ctx.policy.rate_limit.and_then(|r| r.denied_retry_after_s),
            ErrorKind::TokenLimited => ctx.policy.tokens.and_then(|t| t.denied_retry_after_s),
            _ => None,
        };
        // An overloaded upstream: a second is the shortest wait a client can be told.
        if matches!(
            err.kind,
            ErrorKind::RateLimited | ErrorKind::TokenLimited | ErrorKind::Overloaded
        ) {
            map.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(wait.unwrap_or(1).max(1)),
            );
        }
        decorate_response(map, ctx);
    });
    ctx.outcome.status = status;
    ctx.outcome.fail(err);
    // Written directly, so the body filters that count bytes never see it.
    ctx.outcome.bytes_out += body.len() as u64;
    // A refusal under load keeps a client's connection when nothing of its request is
    // left unread: closing it would add a reconnect (a handshake, with TLS two round
    // trips) to every request shed exactly when the gateway is busiest. Any other
    // error, or a body still on the wire, closes rather than resync the stream.
    let shed = matches!(
        err_kind,
        ErrorKind::RateLimited | ErrorKind::TokenLimited | ErrorKind::Overloaded
    );
    if !(shed && (session.is_body_empty() || session.is_body_done())) {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// Adds the headers every response carries.
pub fn decorate_response(map: &mut HeaderMap, ctx: &Request) {
    // Room for everything below: the map grows once, not on every insert.
    map.reserve(8);
    map.insert(headers::X_REQUEST_ID, ctx.id.request_id.clone());
    map.insert(headers::SERVER_TIMING, server_timing(ctx));
    if let Some(note) = ctx.policy.rate_limit {
        map.insert(headers::RATELIMIT_LIMIT, count_value(0, note.limit.into()));
        map.insert(
            headers::RATELIMIT_REMAINING,
            HeaderValue::from(note.remaining),
        );
        map.insert(headers::RATELIMIT_RESET, count_value(1, note.reset_s));
    }
    if ctx.policy.rate_limit.is_some() || ctx.policy.tokens.is_some() {
        put_structured_ratelimit(map, ctx);
    }
    if let Some((asked, max)) = ctx.policy.pagination_clamped {
        if let Ok(value) = HeaderValue::from_str(&format!("{asked}->{max}")) {
            map.insert(headers::X_PAGINATION_CLAMPED, value);
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` (the IETF draft's structured fields), one named
/// policy per limit: `"requests"` for the rate limit, `"tokens"` for the token budget.
fn put_structured_ratelimit(map: &mut HeaderMap, ctx: &Request) {
    let mut policy = [0u8; 128];
    let mut policy = Cursor(&mut policy, 0);
    let mut state = [0u8; 128];
    let mut state = Cursor(&mut state, 0);
    let limits = [
        ctx.policy.rate_limit.map(|r| {
            (
                "\"requests\"",
                r.limit as u64,
                r.window_s,
                r.remaining as u64,
                r.reset_s,
            )
        }),
        ctx.policy
            .tokens
            .map(|t| ("\"tokens\"", t.burst, t.window_s, t.remaining, t.reset_s)),
    ];
    for (name, quota, window, remaining, reset) in limits.into_iter().flatten() {
        if policy.1 > 0 {
            policy.put(b", ");
            state.put(b", ");
        }
        policy.put(name.as_bytes());
        policy.put(b";q=");
        policy.number(quota);
        policy.put(b";w=");
        policy.number(window.max(1));
        state.put(name.as_bytes());
        state.put(b";r=");
        state.number(remaining);
        state.put(b";t=");
        state.number(reset);
    }
    let (p, s) = (policy.1, state.1);
    if let Some(v) = policy_value(&policy.0[..p]) {
        map.insert(headers::RATELIMIT_POLICY_SF, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&state.0[..s]) {
        map.insert(headers::RATELIMIT_SF, v);
    }
}

thread_local! {
    /// The last `RateLimit-Policy` value: a route's policies never change, so most
    /// responses clone it instead of allocating a new value.
    static LAST_POLICY: RefCell<(Vec<u8>, Option<HeaderValue>)> = const { RefCell::new((Vec::new(), None)) };
}

fn policy_value(text: &[u8]) -> Option<HeaderValue> {
    LAST_POLICY.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != text || last.1.is_none() {
            last.1 = Some(HeaderValue::from_bytes(text).ok()?);
            last.0.clear();
            last.0.extend_from_slice(text);
        }
        last.1.clone()
    })
}

thread_local! {
    /// The last value of each slowly changing count header, formatted: a route's limit
    /// never changes and its reset seconds rarely do, so most responses clone a shared
    /// value instead of formatting and allocating a new one.
    static LAST_COUNTS: RefCell<[(u64, HeaderValue); 2]> = const {
        RefCell::new([(0, HeaderValue::from_static("0")), (0, HeaderValue::from_static("0"))])
    };
}

fn count_value(slot: usize, n: u64) -> HeaderValue {
    LAST_COUNTS.with(|last| {
        let mut last = last.borrow_mut();
        if last[slot].0 != n {
            last[slot] = (n, HeaderValue::from(n));
        }
        last[slot].1.clone()
    })
}

/// `gateway;dur=<ms>, upstream;dur=<ms>`: upstream is the wait for the response header,
/// gateway is the rest of the time so far.
fn server_timing(ctx: &Request) -> HeaderValue {
    // Right after the agent's response header (first_byte_at) when there is one: no
    // second clock read.
    let now = ctx
        .timing
        .first_byte_at
        .unwrap_or_else(std::time::Instant::now);
    let total = now.saturating_duration_since(ctx.start);
    let upstream = ctx.timing.first_byte_wait().unwrap_or_default();
    let gateway = total.saturating_sub(upstream);
    let mut out = [0u8; 80];
    let mut text = Cursor(&mut out, 0);
    text.put(b"gateway;dur=");
    text.millis(gateway);
    text.put(b", upstream;dur=");
    text.millis(upstream);
    let len = text.1;
    HeaderValue::from_bytes(&out[..len]).unwrap_or(HeaderValue::from_static("gateway;dur=0"))
}

/// Writes header text on the stack (no allocation besides the header value itself).
struct Cursor<'a>(&'a mut [u8], usize);

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = (self.1 + bytes.len()).min(self.0.len());
        self.0[self.1..end].copy_from_slice(&bytes[..end - self.1]);
        self.1 = end;
    }

    fn number(&mut self, n: u64) {
        let mut digits = itoa::Buffer::new();
        self.put(digits.format(n).as_bytes());
    }

    /// Milliseconds with three decimals, without float formatting.
    fn millis(&mut self, d: std::time::Duration) {
        crate::observe::json::millis_text(d, |text| self.put(text));
    }
}

/// What the gateway reads from an agent's response header, found in one pass.
#[derive(Debug, Clone, Copy)]
pub struct ResponseScan {
    pub hop_by_hop: headers::HopByHop,
    event_stream: bool,
    /// The first `Content-Length`, parsed (`Some(None)` when it is not a number).
    pub content_length: Option<Option<u64>>,
}

impl ResponseScan {
    pub fn of(map: &HeaderMap) -> ResponseScan {
        let mut scan = ResponseScan {
            hop_by_hop: headers::HopByHop::default(),
            event_stream: false,
            content_length: None,
        };
        for (name, value) in map {
            if scan.hop_by_hop.note(name, value) {
                continue;
            }
            if name == CONTENT_LENGTH {
                if scan.content_length.is_none() {
                    scan.content_length = Some(headers::parse_length(value));
                }
            } else if name == CONTENT_TYPE && !scan.event_stream {
                scan.event_stream = value.as_bytes().starts_with(b"text/event-stream");
            }
        }
        scan
    }

    /// Passed through as it arrives: an event stream, or a body of unknown length.
    pub fn is_streaming(&self) -> bool {
        self.event_stream || self.content_length.is_none()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn millis_have_three_decimals() {
        for (micros, text) in [
            (12_345, &b"12.345"[..]),
            (7, b"0.007"),
            (999_999, b"999.999"),
        ] {
            let mut out = [0u8; 32];
            let mut cursor = super::Cursor(&mut out, 0);
            cursor.millis(std::time::Duration::from_micros(micros));
            let len = cursor.1;
            assert_eq!(&out[..len], text);
        }
    }
}

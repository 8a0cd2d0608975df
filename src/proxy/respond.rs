//! Responses the gateway writes or decorates: JSON errors and the headers every
//! response carries (`x-request-id`, `server-timing`, rate-limit and pagination notes).

use std::io::Write;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::errors::{json_body, ErrorKind, GatewayError};

/// Writes a JSON error response and records it in the context.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: GatewayError,
) -> Result<()> {
    let status = err.kind.status();
    let body = json_body(&err, ctx.request_id_str());
    let mut header = ResponseHeader::build(status, Some(8))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    if err.kind == ErrorKind::RateLimited {
        header.insert_header("retry-after", ctx.retry_after_s.max(1).to_string())?;
    }
    decorate_response(&mut header, ctx)?;
    ctx.status = status;
    ctx.error = Some(err);
    // Written directly, so the body filters that count bytes never see it.
    ctx.bytes_out += body.len() as u64;
    // Whatever the client still sends is not read: close rather than resync the stream.
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// Adds the headers every response carries.
pub fn decorate_response(header: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(id) = &ctx.request_id {
        header.insert_header("x-request-id", id.clone())?;
    }
    header.insert_header("server-timing", server_timing(ctx))?;
    if let Some((limit, remaining, reset)) = ctx.rate_limit_headers {
        header.insert_header("ratelimit-limit", limit.to_string())?;
        header.insert_header("ratelimit-remaining", remaining.to_string())?;
        header.insert_header("ratelimit-reset", reset.to_string())?;
    }
    if let Some((asked, max)) = ctx.pagination_clamped {
        header.insert_header("x-pagination-clamped", format!("{asked}->{max}"))?;
    }
    Ok(())
}

/// `gateway;dur=<ms>, upstream;dur=<ms>`: upstream is the wait for the response header,
/// gateway is the rest of the time so far.
fn server_timing(ctx: &RequestCtx) -> Vec<u8> {
    let total = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
    let upstream = ctx.first_byte_wait().unwrap_or_default();
    let gateway = total.saturating_sub(upstream);
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"gateway;dur=");
    push_millis(&mut out, gateway);
    out.extend_from_slice(b", upstream;dur=");
    push_millis(&mut out, upstream);
    out
}

/// Milliseconds with three decimals, without going through float formatting (hot path).
fn push_millis(out: &mut Vec<u8>, d: std::time::Duration) {
    let micros = d.as_micros() as u64;
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

/// Is this a response that streams (SSE, or chunked without a length)?
pub fn is_streaming(header: &ResponseHeader) -> bool {
    let sse = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    sse || !header.headers.contains_key("content-length")
}

#[cfg(test)]
mod tests {
    #[test]
    fn millis_have_three_decimals() {
        let mut out = Vec::new();
        super::push_millis(&mut out, std::time::Duration::from_micros(12_345));
        assert_eq!(out, b"12.345");
        out.clear();
        super::push_millis(&mut out, std::time::Duration::from_micros(7));
        assert_eq!(out, b"0.007");
    }
}

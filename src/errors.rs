//! Errors the gateway answers itself, with the JSON body of SPEC §3.

use std::borrow::Cow;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    MethodNotAllowed,
    RequestTimeout,
    InvalidPagination,
    Unauthorized,
    RouteNotFound,
    PayloadTooLarge,
    RateLimited,
    TokenLimited,
    UpstreamUnavailable,
    UpstreamResponseTooLarge,
    NoHealthyBackend,
    /// The upstream's concurrency cap (and its queue) is full.
    Overloaded,
    UpstreamTimeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::InvalidPagination => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::RouteNotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited | ErrorKind::TokenLimited => 429,
            ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamResponseTooLarge => 502,
            ErrorKind::NoHealthyBackend | ErrorKind::Overloaded => 503,
            ErrorKind::UpstreamTimeout => 504,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::InvalidPagination => "invalid_pagination",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TokenLimited => "token_limit_exceeded",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamResponseTooLarge => "upstream_response_too_large",
            ErrorKind::NoHealthyBackend => "no_healthy_backend",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// An error with the sentence the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// `{"error":{"code":..,"message":..,"request_id":..}}`
pub fn json_body(err: &GatewayError, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&Body {
        error: Inner {
            code: err.kind.code(),
            message: &err.message,
            request_id,
        },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_escaped_json() {
        let e = GatewayError::new(ErrorKind::RouteNotFound, "no route for \"/x\"");
        let v: serde_json::Value = serde_json::from_slice(&json_body(&e, "abc")).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["message"], "no route for \"/x\"");
        assert_eq!(v["error"]["request_id"], "abc");
    }
}

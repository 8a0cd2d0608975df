//! Pagination enforcement on list endpoints: the limit parameter is injected when
//! missing, clamped or rejected when too large, refused when malformed; and list
//! responses are held to a byte cap as they stream.
//!
//! The query string is edited as text: only the limit pair changes (or is appended);
//! every other parameter keeps its position, spelling and encoding byte for byte.

use std::borrow::Cow;

use crate::config::{OnExceed, PaginationRule};
use crate::errors::{ErrorKind, GatewayError};
use crate::observe::metrics::PaginationAction;

/// What enforcement did to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// The query the agent receives, after the prefix given to `enforce_after`
    /// (`None`: unchanged).
    pub query: Option<String>,
    pub action: Option<PaginationAction>,
    /// `(asked, max)` when clamped.
    pub clamped: Option<(u64, u64)>,
}

fn name_of(pair: &str) -> &str {
    pair.split_once('=').map(|(k, _)| k).unwrap_or(pair)
}

fn decoded(raw: &str) -> Cow<'_, str> {
    if raw.contains('%') || raw.contains('+') {
        let spaced = raw.replace('+', " ");
        Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        Cow::Borrowed(raw)
    }
}

fn invalid(rule: &PaginationRule, detail: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidPagination,
        format!(
            "{detail}: `{}` must be a whole number from 1 to {} (default {} when omitted)",
            rule.limit_param, rule.max_limit, rule.default_limit
        ),
    )
}

/// Applies the rule to a request's query string.
pub fn enforce(rule: &PaginationRule, query: Option<&str>) -> Result<Enforced, GatewayError> {
    enforce_after(rule, &[], query)
}

/// `enforce`, with a rewritten query written after `prefix` (the request path and `?`),
/// so that the new request target is built in one allocation.
pub fn enforce_after(
    rule: &PaginationRule,
    prefix: &[&str],
    query: Option<&str>,
) -> Result<Enforced, GatewayError> {
    let query = query.unwrap_or("");
    let prefix_len: usize = prefix.iter().map(|p| p.len()).sum();
    let start = |capacity: usize| {
        let mut out = String::with_capacity(prefix_len + capacity);
        prefix.iter().for_each(|p| out.push_str(p));
        out
    };
    let mut found: Option<(usize, &str)> = None;
    for (i, pair) in query.split('&').enumerate() {
        if !pair.is_empty() && decoded(name_of(pair)) == rule.limit_param.as_str() {
            if found.is_some() {
                return Err(invalid(
                    rule,
                    &format!("`{}` is given more than once", rule.limit_param),
                ));
            }
            found = Some((i, pair.split_once('=').map(|(_, v)| v).unwrap_or("")));
        }
    }
    let Some((index, raw_value)) = found else {
        // One allocation: this runs on every list request that leaves the limit out.
        let mut digits = itoa::Buffer::new();
        let default = digits.format(rule.default_limit);
        let mut with_default = start(query.len() + 2 + rule.limit_param.len() + default.len());
        if !query.is_empty() {
            with_default.push_str(query);
            with_default.push('&');
        }
        with_default.push_str(&rule.limit_param);
        with_default.push('=');
        with_default.push_str(default);
        return Ok(Enforced {
            query: Some(with_default),
            action: Some(PaginationAction::Defaulted),
            clamped: None,
        });
    };
    let value = decoded(raw_value);
    if value.is_empty() {
        return Err(invalid(rule, &format!("`{}` is empty", rule.limit_param)));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            rule,
            &format!("`{}` is not a whole number", rule.limit_param),
        ));
    }
    let asked: u64 = value.parse().map_err(|_| {
        invalid(
            rule,
            &format!("`{}` is too large a number", rule.limit_param),
        )
    })?;
    if asked == 0 {
        return Err(invalid(rule, &format!("`{}` is zero", rule.limit_param)));
    }
    if asked <= rule.max_limit {
        return Ok(Enforced {
            query: None,
            action: None,
            clamped: None,
        });
    }
    match rule.on_exceed {
        OnExceed::Reject => Err(invalid(
            rule,
            &format!("`{}={asked}` is over the maximum", rule.limit_param),
        )),
        OnExceed::Clamp => {
            let pairs: Vec<&str> = query.split('&').collect();
            let name = name_of(pairs[index]);
            let replaced = format!("{name}={}", rule.max_limit);
            let mut query = start(query.len() + replaced.len());
            for (i, pair) in pairs.iter().enumerate() {
                if i > 0 {
                    query.push('&');
                }
                query.push_str(if i == index { &replaced } else { pair });
            }
            Ok(Enforced {
                query: Some(query),
                action: Some(PaginationAction::Clamped),
                clamped: Some((asked, rule.max_limit)),
            })
        }
    }
}

/// The byte cap on one list response, counted as it streams.
#[derive(Debug, Clone, Copy)]
pub struct ResponseCap {
    pub limit: u64,
    pub seen: u64,
    /// The cap was reached: the next chunk (or the end) cuts the stream.
    pub exhausted: bool,
}

impl ResponseCap {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            seen: 0,
            exhausted: false,
        }
    }

    /// Counts a chunk; returns how many of its bytes may still pass (`None`: all of them).
    pub fn admit(&mut self, len: usize) -> Option<usize> {
        let allowed = self.limit.saturating_sub(self.seen);
        self.seen += len as u64;
        if len as u64 > allowed {
            self.exhausted = true;
            Some(allowed as usize)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(on_exceed: OnExceed) -> PaginationRule {
        PaginationRule {
            methods: vec![http::Method::GET],
            limit_param: "limit".into(),
            default_limit: 20,
            max_limit: 100,
            on_exceed,
            max_response_bytes: 1000,
        }
    }

    #[test]
    fn injects_default_keeping_the_rest() {
        let e = enforce(&rule(OnExceed::Clamp), Some("b=%2F&a=1")).unwrap();
        assert_eq!(e.query.as_deref(), Some("b=%2F&a=1&limit=20"));
        assert_eq!(e.action, Some(PaginationAction::Defaulted));
        let e = enforce(&rule(OnExceed::Clamp), None).unwrap();
        assert_eq!(e.query.as_deref(), Some("limit=20"));
    }

    #[test]
    fn clamps_in_place() {
        let e = enforce(&rule(OnExceed::Clamp), Some("x=1&limit=500&y=2")).unwrap();
        assert_eq!(e.query.as_deref(), Some("x=1&limit=100&y=2"));
        assert_eq!(e.clamped, Some((500, 100)));
    }

    #[test]
    fn within_range_is_untouched() {
        let e = enforce(&rule(OnExceed::Reject), Some("limit=100&cursor=abc")).unwrap();
        assert_eq!(e.query, None);
        assert_eq!(e.action, None);
    }

    #[test]
    fn rejects_bad_values() {
        for q in [
            "limit=0",
            "limit=-1",
            "limit=1e3",
            "limit=abc",
            "limit=",
            "limit",
            "limit=5&limit=6",
            "limit=99999999999999999999999",
            "limit=+5",
            "limit=%35%30%30x",
            "limit= 5",
        ] {
            let e = enforce(&rule(OnExceed::Clamp), Some(q)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidPagination, "{q}");
            assert!(
                e.message.contains("whole number from 1 to 100"),
                "{q}: {}",
                e.message
            );
        }
        assert!(enforce(&rule(OnExceed::Reject), Some("limit=101")).is_err());
    }

    #[test]
    fn cap_counts_across_chunks() {
        let mut cap = ResponseCap::new(10);
        assert_eq!(cap.admit(6), None);
        assert_eq!(cap.admit(6), Some(4));
        assert!(cap.exhausted);
    }
}

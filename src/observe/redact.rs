//! Redaction of free text on its way into the process log.
//!
//! The gateway itself never logs a header value or a query, but at `debug` and `trace`
//! pingora prints whole request headers (`"authorization": "Bearer …"`), the raw bytes
//! of requests it could not parse (`…\r\nAuthorization: Bearer …\r\n…`) and request
//! targets with their query. Every `log` record passes through [`Redactor::redact`]
//! before it is written: the values of `redact_headers` (and `proxy-authorization`) in
//! any of those spellings, every `Bearer` credential, the values of
//! `redact_query_params` in anything that looks like a query, and the admin token
//! wherever it appears, become `REDACTED`.

use std::borrow::Cow;

const MASK: &str = "REDACTED";

/// What to take out of log text; built from the config, swapped on reload.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Lower-case header names whose values go.
    headers: Vec<String>,
    /// Lower-case query parameter names whose values go.
    params: Vec<String>,
    /// Exact strings that go wherever they appear (the admin token).
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(headers: &[String], params: &[String], secrets: &[&str]) -> Redactor {
        let mut headers: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        for always in ["authorization", "proxy-authorization"] {
            if !headers.iter().any(|h| h == always) {
                headers.push(always.to_string());
            }
        }
        Redactor {
            headers,
            params: params.iter().map(|p| p.to_ascii_lowercase()).collect(),
            secrets: secrets
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// `text` with every secret it can recognise replaced by `REDACTED`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let lower = text.to_ascii_lowercase();
        let bytes = text.as_bytes();
        for name in &self.headers {
            header_values(bytes, &lower, name, &mut ranges);
        }
        bearer_tokens(bytes, &lower, &mut ranges);
        if !self.params.is_empty() {
            query_values(bytes, &self.params, &mut ranges);
        }
        for secret in &self.secrets {
            let mut from = 0;
            while let Some(i) = text[from..].find(secret.as_str()) {
                ranges.push((from + i, from + i + secret.len()));
                from += i + secret.len();
            }
        }
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in ranges {
            if end <= at {
                continue;
            }
            let start = start.max(at);
            out.push_str(&text[at..start]);
            out.push_str(MASK);
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where a value ends: a line end (raw, or escaped as `\r` / `\n`), or the closing quote
/// of the string it sits in. `quoted`: it sits in `"…"`, where `\"` is an inner quote.
fn value_end(bytes: &[u8], start: usize, quoted: bool) -> usize {
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' => return i,
            b'"' => return i,
            b'\\' => match bytes.get(i + 1) {
                Some(b'r') | Some(b'n') | Some(b'0') if !quoted => return i,
                Some(b'"') if !quoted => return i,
                Some(_) => i += 1,
                None => return i,
            },
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Values of header `name` in `name: v`, `"name": "v"` and `\"name\": \"v\"` forms.
fn header_values(bytes: &[u8], lower: &str, name: &str, out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    while let Some(found) = lower[from..].find(name) {
        let at = from + found;
        from = at + name.len();
        // The name starts a word: after a non-name byte, or after an escaped line end.
        let after_escape =
            at >= 2 && bytes[at - 2] == b'\\' && matches!(bytes[at - 1], b'n' | b'r');
        if at > 0 && is_tchar(bytes[at - 1]) && !after_escape {
            continue;
        }
        let mut i = at + name.len();
        // A closing quote of the name, escaped or not.
        if bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'"') {
            i += 2;
        } else if bytes.get(i) == Some(&b'"') {
            i += 1;
        }
        if bytes.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        let mut quoted = false;
        if bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'"') {
            i += 2;
        } else if bytes.get(i) == Some(&b'"') {
            i += 1;
            quoted = true;
        }
        let end = value_end(bytes, i, quoted);
        if end > i {
            out.push((i, end));
        }
        from = end.max(from);
    }
}

/// Credentials after `Bearer ` anywhere (token68 characters).
fn bearer_tokens(bytes: &[u8], lower: &str, out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    while let Some(found) = lower[from..].find("bearer ") {
        let start = from + found + "bearer ".len();
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || b"-._~+/=".contains(&bytes[end]))
        {
            end += 1;
        }
        if end > start {
            out.push((start, end));
        }
        from = end.max(start);
    }
}

/// Values of the named parameters after `?` or `&` (names matched case-insensitively
/// and percent-decoded, as the access log matches them).
fn query_values(bytes: &[u8], params: &[String], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'?' && bytes[i] != b'&' {
            i += 1;
            continue;
        }
        let name_start = i + 1;
        let mut j = name_start;
        while j < bytes.len() && !b"=&? \"\\#\r\n".contains(&bytes[j]) {
            j += 1;
        }
        if bytes.get(j) != Some(&b'=') || j == name_start {
            i = j.max(i + 1);
            continue;
        }
        let raw_name = &bytes[name_start..j];
        let value_start = j + 1;
        let mut k = value_start;
        while k < bytes.len() && !b"& \"\\#\r\n,".contains(&bytes[k]) {
            k += 1;
        }
        if k > value_start && super::access_log::is_redacted(raw_name, params) {
            out.push((value_start, k));
        }
        i = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(
            &["authorization".into(), "cookie".into(), "x-api-key".into()],
            &["token".into(), "api_key".into()],
            &["adm1n-t0ken"],
        )
    }

    #[test]
    fn what_pingora_prints() {
        let cases = [
            (
                r#"headers: {"host": "x", "authorization": "Bearer s3cret", "x-api-key": "k3y \"q\" z", "cookie": "a=b; c=d"} }"#,
                r#"headers: {"host": "x", "authorization": "REDACTED", "x-api-key": "REDACTED", "cookie": "REDACTED"} }"#,
            ),
            (
                r#"buf: "GET /x?token=abc&y=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcg==\r\nX-Api-Key: k\r\n\r\n""#,
                r#"buf: "GET /x?token=REDACTED&y=1 HTTP/1.1\r\nHost: x\r\nAuthorization: REDACTED\r\nX-Api-Key: REDACTED\r\n\r\n""#,
            ),
            (
                "uri: /a?%74oken=abc&API_KEY=def#f, version",
                "uri: /a?%74oken=REDACTED&API_KEY=REDACTED#f, version",
            ),
            ("admin adm1n-t0ken seen", "admin REDACTED seen"),
            ("sent bearer abc.def-1 to", "sent bearer REDACTED to"),
            (
                "Proxy-Authorization: Basic xyz\r\n",
                "Proxy-Authorization: REDACTED\r\n",
            ),
            ("x-authorization-hint: fine", "x-authorization-hint: fine"),
            ("no secrets here: token=1", "no secrets here: token=1"),
        ];
        for (input, want) in cases {
            assert_eq!(r().redact(input), want, "{input}");
        }
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            r().redact("backend 127.0.0.1:9001 is healthy again"),
            Cow::Borrowed(_)
        ));
    }
}

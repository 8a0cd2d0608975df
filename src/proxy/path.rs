//! The request path the gateway decides on: routing, auth, limits and pagination all
//! see the normalised path, and the agent receives that same path, so no spelling of a
//! path can be routed as one route and served as another.
//!
//! Normalisation (RFC 3986 §6.2.2 and §5.2.4, in the spirit of Envoy's
//! `normalize_path` + `merge_slashes` with escaped slashes rejected):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, so
//!   `%2e%2E` is `..` and `%61` is `a`; other escapes keep their bytes, hex upper-cased;
//! - runs of `/` are merged into one;
//! - `.` and `..` segments are removed (`..` at the root stays at the root).
//!
//! Refused (the caller answers `400 bad_request`), because agents disagree on what they
//! mean: an encoded slash or backslash (`%2F`, `%5C`), a backslash, an encoded NUL
//! (`%00`), a malformed escape (`%zz`, a lone `%`), a segment that is `.` or `..`
//! before a `;` parameter (`..;/`, which Java servers read as `..`), and a target that
//! is not a path (`*`, empty). The query string is never touched.

use std::borrow::Cow;

/// Why a path cannot be normalised safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    EncodedSlash,
    Backslash,
    Nul,
    BadEscape,
    DotParameter,
    NotAPath,
}

impl PathError {
    /// The sentence the client reads.
    pub fn message(self) -> &'static str {
        match self {
            PathError::EncodedSlash => {
                "the request path contains an encoded slash or backslash (%2F, %5C)"
            }
            PathError::Backslash => "the request path contains a backslash",
            PathError::Nul => "the request path contains an encoded NUL (%00)",
            PathError::BadEscape => "the request path contains a malformed percent-escape",
            PathError::DotParameter => {
                "the request path has a dot segment with a ';' parameter (such as '..;')"
            }
            PathError::NotAPath => "the request target is not an absolute path",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `path` needs no work: no escape, no backslash, no `//`, no dot segment.
/// One pass over the bytes; almost every real request takes this way out.
fn already_normal(path: &[u8]) -> bool {
    let mut prev_slash = false;
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' | b'\\' => return false,
            b'/' => {
                if prev_slash {
                    return false;
                }
                prev_slash = true;
            }
            b'.' if prev_slash => {
                // `/.` starts a dot segment when followed by the end, `/`, `;`, or `./`,
                // `.;`, `.` + end.
                let rest = &path[i + 1..];
                let dot_segment = matches!(rest.first(), None | Some(b'/') | Some(b';'))
                    || (rest.first() == Some(&b'.')
                        && matches!(rest.get(1), None | Some(b'/') | Some(b';')));
                if dot_segment {
                    return false;
                }
                prev_slash = false;
            }
            _ => prev_slash = false,
        }
        i += 1;
    }
    true
}

/// The normalised form of an origin-form path (the part before `?`), borrowed when it
/// already is normal.
pub fn normalize(path: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    if already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// Decodes unreserved escapes, upper-cases the hex of the others, refuses the unsafe.
fn decode(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex_value),
                    path.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0 => return Err(PathError::Nul),
                    _ if is_unreserved(byte) => out.push(byte),
                    _ => {
                        out.push(b'%');
                        out.push(path[i + 1].to_ascii_uppercase());
                        out.push(path[i + 2].to_ascii_uppercase());
                    }
                }
                i += 3;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over segments, with repeated slashes merged first.
fn remove_dot_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut segments: Vec<&[u8]> = Vec::new();
    // The path starts with '/': the first split part is empty.
    let parts: Vec<&[u8]> = path[1..].split(|b| *b == b'/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in parts.iter().enumerate() {
        let before_param = seg.split(|b| *b == b';').next().unwrap_or(seg);
        let has_param = before_param.len() != seg.len();
        match before_param {
            b"." | b".." if has_param => return Err(PathError::DotParameter),
            b"." => trailing_slash = n == last,
            b".." => {
                segments.pop();
                trailing_slash = n == last;
            }
            b"" if !has_param => {
                // An empty segment: a merged slash, or the trailing one.
                if n == last {
                    trailing_slash = true;
                }
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for seg in &segments {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/v1/items", Ok("/v1/items")),
            ("/v1/items/", Ok("/v1/items/")),
            ("/open/../private", Ok("/private")),
            ("/open/%2e%2e/private", Ok("/private")),
            ("/open/%2E%2e/private", Ok("/private")),
            ("/open/.%2e/private", Ok("/private")),
            ("/open/%2e./private", Ok("/private")),
            ("/open/./x", Ok("/open/x")),
            ("/open/%2e/x", Ok("/open/x")),
            ("//private", Ok("/private")),
            ("/open//..//private", Ok("/private")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/..", Ok("/")),
            ("/../../x", Ok("/x")),
            ("/a/...", Ok("/a/...")),
            ("/a/.hidden", Ok("/a/.hidden")),
            ("/a/..b", Ok("/a/..b")),
            ("/%61%62c", Ok("/abc")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/a;v=1/b", Ok("/a;v=1/b")),
            ("/a/%2F/b", Err(PathError::EncodedSlash)),
            ("/a%2fb", Err(PathError::EncodedSlash)),
            ("/a%5Cb", Err(PathError::EncodedSlash)),
            ("/a\\..\\b", Err(PathError::Backslash)),
            ("/a%00", Err(PathError::Nul)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("/a%", Err(PathError::BadEscape)),
            ("/a%4", Err(PathError::BadEscape)),
            ("/open/..;/private", Err(PathError::DotParameter)),
            ("/open/.;x/private", Err(PathError::DotParameter)),
            ("*", Err(PathError::NotAPath)),
            ("", Err(PathError::NotAPath)),
        ];
        for (input, want) in cases {
            assert_eq!(
                norm(input),
                want.map(str::to_string),
                "normalising {input:?}"
            );
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/conversations/42/messages",
            "/a.b/c.d",
            "/a/..b/.c",
        ] {
            assert!(
                matches!(normalize(p.as_bytes()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }
}

//! Longest-prefix routing on the path alone; the Host header never chooses an upstream.

use std::sync::Arc;

use http::Method;

use crate::config::Route;

/// Does `prefix` cover `path` on a segment boundary? `/v1/conversations` covers
/// `/v1/conversations` and `/v1/conversations/42`, not `/v1/conversationsX`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// The route for a request: the longest matching prefix whose methods allow `method`.
/// `routes` is sorted longest prefix first (see config validation).
pub fn find_route<'a>(
    routes: &'a [Arc<Route>],
    path: &str,
    method: &Method,
) -> Option<(usize, &'a Arc<Route>)> {
    routes.iter().enumerate().find(|(_, r)| {
        prefix_matches(&r.path_prefix, path) && (r.methods.is_empty() || r.methods.contains(method))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(prefix_matches("/v1/conversations", "/v1/conversations"));
        assert!(prefix_matches(
            "/v1/conversations",
            "/v1/conversations/1/messages"
        ));
        assert!(!prefix_matches("/v1/conversations", "/v1/conversationsX"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/v1/", "/v1/x"));
        assert!(!prefix_matches("/v1/x", "/v1"));
    }
}

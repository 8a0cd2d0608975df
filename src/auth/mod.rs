//! API keys per tenant: `Authorization: Bearer <key>` or `x-api-key: <key>`, checked
//! against the SHA-256 hashes of the keys file in constant time. Only the tenant id
//! leaves this module; the key itself is never stored, logged or labelled.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyEntry;

/// The key a request presents, if any (bearer token first, then x-api-key).
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("authorization") {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            let key = b[7..].trim_ascii();
            if !key.is_empty() {
                return Some(key);
            }
        }
    }
    headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
}

/// The tenant id for a presented key, or `None` when the key is unknown.
///
/// Every entry is compared, whatever matches, so the time taken does not depend on
/// which entry (if any) holds the key.
pub fn tenant_for(keys: &[ApiKeyEntry], key: &[u8]) -> Option<Arc<str>> {
    let digest: [u8; 32] = Sha256::digest(key).into();
    let mut found: Option<&ApiKeyEntry> = None;
    for entry in keys {
        let equal: bool = entry.sha256.ct_eq(&digest).into();
        if equal && found.is_none() {
            found = Some(entry);
        }
    }
    found.map(|e| Arc::clone(&e.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> Vec<ApiKeyEntry> {
        vec![
            ApiKeyEntry {
                id: "a".into(),
                sha256: Sha256::digest(b"key-a").into(),
            },
            ApiKeyEntry {
                id: "b".into(),
                sha256: Sha256::digest(b"key-b").into(),
            },
        ]
    }

    #[test]
    fn finds_tenant_by_either_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer key-b"));
        assert_eq!(
            tenant_for(&keys(), presented_key(&h).unwrap()).as_deref(),
            Some("b")
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("key-a"));
        assert_eq!(
            tenant_for(&keys(), presented_key(&h).unwrap()).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        assert_eq!(tenant_for(&keys(), b"key-c"), None);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic a2V5LWE="));
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(presented_key(&h), None);
    }
}

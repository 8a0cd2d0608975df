//! The API keys file: tenant ids with the SHA-256 of their key, never a key in clear.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::{file_error, ConfigErrors, Locator};
use super::file::KeysFile;
use super::model::ApiKeyEntry;

/// Loads and checks a keys file; every problem is located in that file.
pub fn load_keys_file(path: &Path) -> Result<Vec<ApiKeyEntry>, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(path, format!("cannot read keys file: {e}")))?;
    let (parsed, problems) = super::read::deserialize_all::<KeysFile>(&text);
    let mut loc = Locator::new(path, &text);
    for (span, message) in problems {
        loc.push(span, message);
    }
    let parsed = parsed.unwrap_or_default();
    let mut keys = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for entry in &parsed.keys {
        let id = entry.id.get_ref();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            loc.push(entry.id.span(), format!("key id {id:?} must be non-empty and use only letters, digits, '_', '-' and '.'"));
        }
        if !ids.insert(id.clone()) {
            loc.push(entry.id.span(), format!("duplicate key id {id:?}"));
        }
        let mut digest = [0u8; 32];
        match hex::decode_to_slice(entry.sha256.get_ref(), &mut digest) {
            Ok(()) => keys.push(ApiKeyEntry {
                id: id.as_str().into(),
                sha256: digest,
            }),
            Err(_) => loc.push(
                entry.sha256.span(),
                "sha256 must be 64 hex characters: the SHA-256 of the key, as printed by `agentgate keys hash`",
            ),
        }
    }
    loc.into_result(keys)
}

/// The SHA-256 of a key, as stored in the keys file.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

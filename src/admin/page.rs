//! `GET /` on the admin listener: one self-contained HTML page (`page.html`: no external
//! assets, no fonts, works offline) that polls `/api/overview` every second. The page
//! itself carries no data, so it needs no token; the JSON it reads does, like every
//! admin endpoint, and without one the page shows a form that keeps the token in the
//! tab's sessionStorage and sends it as a bearer header (never in the URL).
//!
//! It is served gzip-compressed to clients that take it, with a content security policy
//! that allows its one inline script by hash and nothing from elsewhere.

use std::io::Write;
use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha256};

const HTML: &str = include_str!("page.html");

pub struct Page {
    pub plain: &'static [u8],
    pub gzip: Vec<u8>,
    /// `content-security-policy`: the inline script by its hash, styles inline,
    /// requests to this origin only.
    pub csp: String,
}

/// The page, compressed and hashed once.
pub fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // An empty gzip (never expected: the encoder writes to memory) serves it plain.
        let gzip: Vec<u8> = gz
            .write_all(HTML.as_bytes())
            .and_then(|_| gz.finish())
            .unwrap_or_default();
        let script = HTML
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        Page {
            plain: HTML.as_bytes(),
            gzip,
            csp: format!(
                "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_self_contained_and_compressed() {
        let p = page();
        assert!(p.plain.len() < 100 * 1024);
        assert!(!p.gzip.is_empty() && p.gzip.len() < p.plain.len() / 2);
        // No asset from elsewhere: nothing the page loads names a scheme or host.
        for needle in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "<link",
            "src=\"//",
        ] {
            assert!(!HTML.contains(needle), "{needle}");
        }
        assert!(p.csp.contains("script-src 'sha256-"));
    }
}

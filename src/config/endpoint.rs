//! The OTLP/HTTP endpoint of `[trace].otlp_endpoint`: parsed once, by validation (which
//! reports a bad one at its line) and by the span exporter (which connects to it).

/// Where batches go: parsed once from `[trace].otlp_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written (for the Host header and name resolution).
    pub authority: String,
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]` (port 80 and path `/` when absent).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} is not a plain http:// URL (run an OpenTelemetry Collector beside the gateway and point at its OTLP/HTTP receiver)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no usable host"));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority.ends_with(']') && authority[i + 1..].parse::<u16>().is_ok(),
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint {
            authority,
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!(e.authority, "127.0.0.1:4318");
        assert_eq!(e.path, "/v1/traces");
        let e = Endpoint::parse("http://collector").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("collector:80", "/")
        );
        assert_eq!(
            Endpoint::parse("http://[::1]/x").unwrap().authority,
            "[::1]:80"
        );
        assert!(Endpoint::parse("https://collector/v1/traces").is_err());
        assert!(Endpoint::parse("http:///v1").is_err());
    }
}

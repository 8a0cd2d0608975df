//! The OTLP endpoint of `[trace].otlp_endpoint` (or the `OTEL_EXPORTER_OTLP_*`
//! variables): parsed once, by validation (which reports a bad one at its line) and by
//! the span exporter (which connects to it).

/// Where batches go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://`: the collector is reached over TLS.
    pub tls: bool,
    /// `host:port` (the default port of the scheme filled in).
    pub authority: String,
    /// The host alone (no brackets around an IPv6 address), for TLS verification.
    pub host: String,
    pub path: String,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/path]` (port 80 or 443 and path `/` when absent).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
            Some(_) => return Err(format!("{url:?} has a query; write the URL without one")),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no usable host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.ends_with(']') => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("{url:?} has a bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if bare_host.is_empty() {
            return Err(format!("{url:?} has no usable host"));
        }
        Ok(Endpoint {
            tls,
            authority: format!("{host}:{port}"),
            host: bare_host.to_string(),
            path: path.to_string(),
        })
    }

    /// The URL with the defaults filled in (`http://host:port/path`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path)
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
        assert!(!e.tls);
        let e = Endpoint::parse("http://collector").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("collector:80", "/")
        );
        let e = Endpoint::parse("http://[::1]/x").unwrap();
        assert_eq!((e.authority.as_str(), e.host.as_str()), ("[::1]:80", "::1"));
        let e = Endpoint::parse("https://collector.example/v1/traces").unwrap();
        assert!(e.tls);
        assert_eq!(e.authority, "collector.example:443");
        assert_eq!(e.url(), "https://collector.example:443/v1/traces");
        assert!(Endpoint::parse("http:///v1").is_err());
        assert!(Endpoint::parse("grpc://collector:4317").is_err());
        assert!(Endpoint::parse("http://c:99999").is_err());
        assert!(Endpoint::parse("http://c:4318?x=1").is_err());
    }
}

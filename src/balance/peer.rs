//! How the gateway reaches a backend: the pingora peer for one try or one health
//! check, cleartext or TLS, HTTP/1.1 or HTTP/2.
//!
//! TLS: pingora's connector verifies the chain (against `ca_file` or the system roots)
//! and, with a `tls_server_name`, that name. For a backend known only by its IP address
//! the certificate must carry that address as an IP SAN, which pingora's connector does
//! not check: a hook reads the certificate's IP SANs at the handshake, and
//! [`check_ip_san`] compares them with the backend's address once connected.
//!
//! HTTP/2: one stream per connection. The request deadlines cut a try's socket, which
//! must never end other requests' streams; connections are still pooled and reused.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use pingora::protocols::tls::HandshakeCompleteHook;
use pingora::protocols::Digest;
use pingora::upstreams::peer::{HttpPeer, Peer};

use crate::config::Upstream;

/// The peer for `addr` of `upstream` (resolved from the name `host`, if it was), with
/// the upstream's protocol and TLS settings; timeouts are the caller's.
pub fn http_peer(upstream: &Upstream, addr: SocketAddr, host: Option<&str>) -> HttpPeer {
    let mut peer = match &upstream.tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(t) => {
            // The name checked: tls_server_name, else the backend's own name; a backend
            // written as an address has its IP SAN checked instead.
            let name = t.server_name.as_deref().or(host);
            let sni = name.map_or_else(|| addr.ip().to_string(), str::to_string);
            let mut peer = HttpPeer::new(addr, true, sni);
            peer.options.verify_cert = true;
            peer.options.verify_hostname = name.is_some();
            peer.options.ca = t.ca.clone();
            if name.is_none() {
                peer.options.upstream_tls_handshake_complete_hook = Some(ip_san_hook());
            }
            peer
        }
    };
    if upstream.protocol.is_h2() {
        peer.options.set_http_version(2, 2);
    }
    peer
}

/// Whether a connection to `peer` still has its certificate's IP SAN to check (TLS to
/// a backend by address, with no `tls_server_name`), and the address to check.
pub fn ip_to_verify(peer: &HttpPeer) -> Option<IpAddr> {
    if peer.is_tls() && !peer.options.verify_hostname {
        peer.address().as_inet().map(|a| a.ip())
    } else {
        None
    }
}

/// The IP addresses an agent's certificate names (its IP SANs), as read at the
/// handshake.
#[derive(Debug)]
pub struct CertificateIps(pub Vec<IpAddr>);

/// The hook that records an agent certificate's IP SANs in the connection's digest.
fn ip_san_hook() -> HandshakeCompleteHook {
    static HOOK: OnceLock<HandshakeCompleteHook> = OnceLock::new();
    Arc::clone(HOOK.get_or_init(|| {
        Arc::new(|ssl: &pingora::protocols::tls::TlsRef| {
            let ips = ssl
                .peer_certificate()
                .and_then(|cert| cert.subject_alt_names())
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.ipaddress())
                        .filter_map(ip_from_bytes)
                        .collect()
                })
                .unwrap_or_default();
            Some(Arc::new(CertificateIps(ips)) as Arc<dyn std::any::Any + Send + Sync>)
        })
    }))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether the agent's certificate on this connection names `ip`; the error says what
/// it names instead.
pub fn check_ip_san(digest: Option<&Digest>, ip: IpAddr) -> Result<(), String> {
    let ips = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<CertificateIps>());
    match ips {
        Some(found) if found.0.contains(&ip) => Ok(()),
        Some(found) => Err(format!(
            "the agent's certificate does not name {ip} (its IP SANs: {}); add the address to the certificate or set tls_server_name to a name it carries",
            if found.0.is_empty() {
                "none".to_string()
            } else {
                found.0.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            }
        )),
        None => Err("the agent's certificate could not be read after the handshake".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_sans_are_read_as_addresses() {
        assert_eq!(
            ip_from_bytes(&[127, 0, 0, 1]),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_from_bytes(&v6), Some("::1".parse().unwrap()));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn a_connection_without_a_certificate_read_fails_the_check() {
        assert!(check_ip_san(None, IpAddr::from([127, 0, 0, 1])).is_err());
    }
}

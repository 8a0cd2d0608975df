//! One active health check, over the same kind of connection as the traffic (TLS and
//! HTTP/2 as the upstream says, through pingora's connector): `GET <path>` with a
//! short timeout, 2xx = healthy; or, with `grpc = true`, the standard gRPC health
//! protocol (`grpc.health.v1.Health/Check` for the whole server), SERVING = healthy. A
//! check never calls a costly agent endpoint. The service that runs them every
//! `interval` is `services::health`; a backend's verdict is
//! `BackendState::record_check`.

use std::net::SocketAddr;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;

use super::peer::{check_ip_san, http_peer, ip_to_verify};
use crate::config::Upstream;

/// The gRPC health method, and its request for the whole server: a frame header (not
/// compressed, length 0) around an empty `HealthCheckRequest` (service "").
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
const GRPC_EMPTY_REQUEST: &[u8] = &[0, 0, 0, 0, 0];

/// One health check: true when the backend passes it within the check's timeout.
pub async fn probe(
    connector: &Connector,
    upstream: &Upstream,
    addr: SocketAddr,
    host: Option<&str>,
) -> bool {
    let h = &upstream.health;
    let mut peer = http_peer(upstream, addr, host);
    peer.options.connection_timeout = Some(h.timeout);
    let attempt = async {
        let (mut session, _) = connector.get_http_session(&peer).await.ok()?;
        if let Some(ip) = ip_to_verify(&peer) {
            check_ip_san(session.digest(), ip).ok()?;
        }
        let healthy = if h.grpc {
            grpc_check(&mut session, addr).await
        } else {
            http_check(&mut session, &h.path, addr).await
        };
        // A check's connection is never reused: each check sees a fresh connect.
        session.shutdown().await;
        healthy
    };
    matches!(
        tokio::time::timeout(h.timeout, attempt).await,
        Ok(Some(true))
    )
}

fn request(method: &str, path: &str, addr: SocketAddr) -> Option<Box<RequestHeader>> {
    let mut req = RequestHeader::build(method, path.as_bytes(), None).ok()?;
    req.insert_header("host", addr.to_string()).ok()?;
    req.insert_header("user-agent", "agentgate-health-check")
        .ok()?;
    Some(Box::new(req))
}

async fn http_check(session: &mut HttpSession, path: &str, addr: SocketAddr) -> Option<bool> {
    let mut req = request("GET", path, addr)?;
    if session.as_http1().is_some() {
        req.insert_header("connection", "close").ok()?;
    }
    session.write_request_header(req).await.ok()?;
    session.finish_request_body().await.ok()?;
    session.read_response_header().await.ok()?;
    let status = session.response_header()?.status.as_u16();
    Some((200..300).contains(&status))
}

async fn grpc_check(session: &mut HttpSession, addr: SocketAddr) -> Option<bool> {
    let mut req = request("POST", GRPC_HEALTH_PATH, addr)?;
    req.insert_header("content-type", "application/grpc").ok()?;
    req.insert_header("te", "trailers").ok()?;
    session.write_request_header(req).await.ok()?;
    session
        .write_request_body(Bytes::from_static(GRPC_EMPTY_REQUEST), true)
        .await
        .ok()?;
    session.read_response_header().await.ok()?;
    let header = session.response_header()?;
    if header.status.as_u16() != 200 {
        return Some(false);
    }
    // A trailers-only answer carries grpc-status in the header block.
    let mut grpc_status = header
        .headers
        .get("grpc-status")
        .map(|v| v.as_bytes().to_vec());
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > 1024 {
            return Some(false);
        }
    }
    if grpc_status.is_none() {
        if let HttpSession::H2(h2) = session {
            grpc_status = h2
                .read_trailers()
                .await
                .ok()?
                .and_then(|t| t.get("grpc-status").map(|v| v.as_bytes().to_vec()));
        }
    }
    Some(grpc_status.as_deref() == Some(b"0") && serving(&body))
}

/// Whether a `HealthCheckResponse` frame says SERVING. The message has one field,
/// `status` (field 1, varint), and SERVING is 1: the whole frame is the uncompressed
/// flag, a length of 2 and the bytes `08 01`.
fn serving(frame: &[u8]) -> bool {
    frame == [0, 0, 0, 0, 2, 0x08, 0x01]
}

#[cfg(test)]
mod tests {
    use super::serving;

    #[test]
    fn the_serving_answer_is_recognised() {
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        // NOT_SERVING (2), UNKNOWN (empty message), a short frame.
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!serving(&[0, 0, 0, 0, 0]));
        assert!(!serving(&[0, 0]));
    }
}

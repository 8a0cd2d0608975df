//! pingora's own refusals, answered as the gateway's §3 errors.
//!
//! pingora answers a request it cannot parse (400) and a `CONNECT` (405) itself, before
//! any proxy phase runs: an empty body, no `x-request-id`, nothing in the access log.
//! Every accepted connection's stream is wrapped ([`Refusals`] wraps the app,
//! [`Guarded`] the stream) so that such a canned response is recognised as it is
//! written and the gateway's JSON error, with a fresh request id, goes out in its place;
//! the refusal is then recorded like any unmatched request (access log, metrics).
//!
//! A canned refusal is known by its status line followed by pingora's `Server: Pingora`
//! header, and by carrying no `x-request-id`, which every response of the proxy phases
//! has: a response an agent sent is never touched. Everything else passes through the
//! wrapper untouched; its cost on the hot path is one comparison of a write's first
//! bytes. The wrapper also carries the client socket for the request deadlines
//! ([`client_socket`]), which they consult to tell a stalled client from a silent agent.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::deadlines::ClientSocket;
use super::observer::{Observer, Refusal};
use super::socket::Socket;
use crate::errors::{json_body, ErrorKind, GatewayError};
use crate::observe::metrics::{self, Counter, Gauge, HandshakeFailures};
use crate::observe::trace_context::{hex_string, random_trace_id};
use crate::state::Shared;

/// The refusals pingora writes itself, by the status line it starts with.
const CANNED: [(&[u8], ErrorKind, &str); 2] = [
    (
        b" 400 Bad Request\r\nServer: Pingora\r\n",
        ErrorKind::BadRequest,
        "the request is not valid HTTP/1.1 (request line, header syntax, size or framing)",
    ),
    (
        b" 405 Method Not Allowed\r\nServer: Pingora\r\n",
        ErrorKind::MethodNotAllowed,
        "CONNECT is not proxied",
    ),
];

/// Which canned refusal `buf` is, if it is one.
fn canned_refusal(buf: &[u8]) -> Option<(ErrorKind, &'static str)> {
    // "HTTP/1.x" and then the rest of the status line: the first check is all that
    // ordinary writes (headers with an x-request-id, body bytes) pay.
    if buf.len() < 12 || &buf[..7] != b"HTTP/1." {
        return None;
    }
    let (_, kind, message) = CANNED
        .iter()
        .find(|(line, _, _)| buf[8..].starts_with(line))?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = &buf[..head_end];
    if head
        .windows(b"\nx-request-id:".len())
        .any(|w| w.eq_ignore_ascii_case(b"\nx-request-id:"))
    {
        return None;
    }
    Some((*kind, message))
}

/// The gateway's response in place of a canned refusal: §3's JSON body, the request id
/// in a header and the body, `server-timing` as on every response (zero: pingora
/// refused before the gateway's clock started), and `connection: close` (pingora
/// closes after it).
fn replacement(kind: ErrorKind, message: &'static str, request_id: &str) -> Vec<u8> {
    let body = json_body(&GatewayError::new(kind, message), request_id);
    let status = kind.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\nserver-timing: gateway;dur=0, upstream;dur=0\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The proxy app behind a stream wrapper that answers pingora's refusals as §3 errors.
pub struct Refusals<A> {
    inner: Arc<A>,
    recorder: Arc<Recorder>,
}

/// Where a replaced refusal is recorded, and the count of open connections that
/// `max_connections` caps.
pub struct Recorder {
    shared: Arc<Shared>,
    observer: Arc<Observer>,
    open: AtomicUsize,
    open_gauge: Gauge,
    refused: Counter,
    handshake_failures: HandshakeFailures,
}

impl<A> Refusals<A> {
    pub fn new(inner: A, shared: Arc<Shared>, observer: Arc<Observer>) -> Self {
        Self {
            inner: Arc::new(inner),
            recorder: {
                let (open_gauge, refused) = metrics::connection_handles();
                Arc::new(Recorder {
                    shared,
                    observer,
                    open: AtomicUsize::new(0),
                    open_gauge,
                    refused,
                    handshake_failures: metrics::handshake_failure_handles(),
                })
            },
        }
    }

    /// Counts a new connection, refuses it past `max_connections`, and runs its TLS
    /// handshake. The config in force is read here and let go before the connection is
    /// served: a keep-alive connection lives for hours, and holding the config it
    /// opened under would keep every config since then alive across reloads
    /// (measured: a reload a minute grew a gateway's memory by 16 MB an hour while
    /// clients kept their connections).
    async fn admit(&self, stream: Stream) -> Option<Guarded> {
        // Past max_connections a new connection is closed at once, before anything is
        // read from it; the ones already open are served as before.
        let runtime = self.recorder.shared.runtime.load_full();
        let server = &runtime.config.server;
        let cap = server.max_connections;
        let open = self.recorder.open.fetch_add(1, Ordering::Relaxed);
        if cap != 0 && open >= cap {
            self.recorder.open.fetch_sub(1, Ordering::Relaxed);
            self.recorder.refused.increment(1);
            return None;
        }
        self.recorder.open_gauge.increment(1.0);
        // The peer address comes from the socket digest, which caches it for the
        // proxy's own `client_addr` too: no extra syscall.
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let client = stream.as_any().downcast_ref::<L4Stream>().map(|l4| {
            Arc::new(ClientSocket::new(Socket {
                fd: l4.as_raw_fd(),
                local: None,
                peer,
            }))
        });
        // A connection that fails its TLS handshake never reaches the proxy.
        let stream = match &server.tls {
            None => stream,
            Some(tls) => {
                let limit = server.header_timeout;
                match super::tls::accept(
                    &tls.acceptor,
                    stream,
                    limit,
                    &self.recorder.handshake_failures,
                )
                .await
                {
                    Some(s) => s,
                    None => {
                        self.recorder.open.fetch_sub(1, Ordering::Relaxed);
                        self.recorder.open_gauge.decrement(1.0);
                        return None;
                    }
                }
            }
        };
        Some(Guarded {
            inner: stream,
            client,
            recorder: Arc::clone(&self.recorder),
            pending: None,
        })
    }
}

#[async_trait]
impl<A> ServerApp for Refusals<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let guarded = self.admit(stream).await?;
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A downstream stream that writes the gateway's error in place of pingora's refusals.
#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    /// The client socket as the request deadlines see it.
    client: Option<Arc<ClientSocket>>,
    recorder: Arc<Recorder>,
    /// The replacement still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.recorder.open.fetch_sub(1, Ordering::Relaxed);
        self.recorder.open_gauge.decrement(1.0);
    }
}

/// The client socket under a stream the gateway accepted (see [`Guarded`]).
pub fn client_socket(stream: &Stream) -> Option<&Arc<ClientSocket>> {
    stream.as_any().downcast_ref::<Guarded>()?.client.as_ref()
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Guarded {
    /// Writes what is left of a replacement; `Ready(Ok)` once none is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    fn replace(&mut self, kind: ErrorKind, message: &'static str) {
        let request_id = hex_string(&random_trace_id());
        let client_ip: Option<IpAddr> = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        self.recorder.observer.record_refusal(
            &self.recorder.shared,
            &Refusal {
                status: kind.status(),
                code: kind.code(),
                request_id: &request_id,
                client_ip,
                duration: Duration::ZERO,
            },
        );
        self.pending = Some((replacement(kind, message, &request_id), 0));
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some((kind, message)) = canned_refusal(buf) {
            this.replace(kind, message);
            // The canned bytes count as written; pingora's flush and shutdown that follow
            // drain the replacement first.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if canned_refusal(first).is_some() {
                return Pin::new(this).poll_write(cx, first);
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        // A replacement not yet out goes first; a client gone by then loses nothing.
        let _ = std::future::poll_fn(|cx| self.poll_pending(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingoras_canned_refusals_are_recognised() {
        let canned = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: Wed, 02 Dec 2026 13:56:03 GMT\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n";
        assert_eq!(
            canned_refusal(canned).map(|r| r.0),
            Some(ErrorKind::BadRequest)
        );
        let connect =
            b"HTTP/1.1 405 Method Not Allowed\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            canned_refusal(connect).map(|r| r.0),
            Some(ErrorKind::MethodNotAllowed)
        );
    }

    #[test]
    fn responses_of_the_proxy_phases_pass() {
        // An agent's own 400 from a pingora-based server, forwarded with our request id.
        let forwarded = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\ncontent-length: 0\r\nX-Request-Id: abc\r\n\r\n";
        assert!(canned_refusal(forwarded).is_none());
        assert!(canned_refusal(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(canned_refusal(b"data: HTTP/1.1 400").is_none());
        assert!(canned_refusal(b"").is_none());
    }

    #[test]
    fn the_replacement_is_a_section_3_error() {
        let out = replacement(ErrorKind::BadRequest, "bad", "0123");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains("\r\nx-request-id: 0123\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["request_id"], "0123");
    }
}

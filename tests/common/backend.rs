//! A programmable HTTP/1.1 backend running in the test process on a loopback port: real
//! sockets, behaviour chosen by the request path, so tests can inject every fault.
//!
//! Paths:
//! - `/echo...`                       200 JSON: method, target (path and query as received), headers
//! - `/status/{code}`                 that status, small JSON body
//! - `/sleep/{ms}`                    waits, then 200
//! - `/hang`                          never answers (holds the connection)
//! - `/drop`                          closes the connection without answering
//! - `/bytes/{n}`                     n bytes with Content-Length
//! - `/chunked/{n}/{chunks}/{ms}`     n bytes, chunked, in `chunks` pieces `ms` apart
//! - `/sse/{count}/{ms}`              text/event-stream, `count` events `ms` apart
//! - `/think/{ms}`                    header after `ms`, then a small body
//! - `/silent/{ms}`                   header and one chunk, then silence for `ms`, then the end
//! - `/list...`, `/pages...`         like echo (list endpoints that report their query)
//! - `/ws`                            a WebSocket (RFC 6455) echoing every message; `count N`
//!   is answered with N messages
//! - anything else                    200 JSON naming the backend

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A connection the backend serves: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    /// Connections accepted (a request whose body never completes is not in `requests`).
    pub accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub open_connections: AtomicU64,
    /// Request targets received, in order.
    pub targets: Mutex<Vec<String>>,
    /// Headers of the last request (lower-case names).
    pub last_headers: Mutex<HashMap<String, String>>,
    /// Added before every response (a slow backend).
    pub delay_ms: AtomicU64,
    /// Requests being answered right now, and the most there ever were at once
    /// (health checks not counted).
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// When non-zero, every path but /healthz answers this status (a sick backend).
    pub fail_status: AtomicU64,
    /// When non-zero, /healthz answers this status (active checks fail).
    pub health_status: AtomicU64,
    /// When non-zero, a `fail_status` answer carries `Retry-After: <this>`.
    pub retry_after_s: AtomicU64,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<BackendStats>,
    stop: Option<watch::Sender<bool>>,
}

impl Backend {
    /// Starts on a free port (must be called inside a tokio runtime).
    pub async fn start(name: &str) -> Backend {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            name,
            Arc::new(BackendStats::default()),
        )
        .await
    }

    pub async fn start_on(addr: SocketAddr, name: &str, stats: Arc<BackendStats>) -> Backend {
        Self::start_with(addr, name, stats, None).await
    }

    /// Starts on a free port speaking HTTP/1.1 over TLS with `acceptor`.
    pub async fn start_tls(name: &str, acceptor: openssl::ssl::SslAcceptor) -> Backend {
        Self::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            name,
            Arc::new(BackendStats::default()),
            Some(Arc::new(acceptor)),
        )
        .await
    }

    async fn start_with(
        addr: SocketAddr,
        name: &str,
        stats: Arc<BackendStats>,
        tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    ) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        let name_owned = name.to_string();
        let st = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut rx_accept = rx.clone();
            loop {
                tokio::select! {
                    _ = rx_accept.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        let st = Arc::clone(&st);
                        let name = name_owned.clone();
                        let mut stop = rx.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            st.accepted.fetch_add(1, Ordering::SeqCst);
                            st.open_connections.fetch_add(1, Ordering::SeqCst);
                            let served = async {
                                match tls {
                                    None => serve(sock, &name, &st).await,
                                    Some(acceptor) => {
                                        if let Some(tls) = tls_accept(&acceptor, sock).await {
                                            serve(tls, &name, &st).await
                                        }
                                    }
                                }
                            };
                            tokio::select! {
                                _ = served => {}
                                _ = stop.changed() => {}
                            }
                            st.open_connections.fetch_sub(1, Ordering::SeqCst);
                            st.connections_closed.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                }
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            stats,
            stop: Some(tx),
        }
    }

    /// Stops listening and drops every open connection.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }

    /// Starts again on the same port with the same counters.
    pub async fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    drop(l);
                    break;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        }
        let fresh = Backend::start_on(addr, &self.name, Arc::clone(&self.stats)).await;
        self.stop = fresh.stop_handle();
    }

    fn stop_handle(mut self) -> Option<watch::Sender<bool>> {
        self.stop.take()
    }

    pub fn set_delay(&self, d: Duration) {
        self.stats
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_fail_status(&self, status: u16) {
        self.stats
            .fail_status
            .store(status as u64, Ordering::SeqCst);
    }

    /// Makes active health checks fail (`0` to pass again).
    /// Answers every path but /healthz with `status` and `Retry-After: seconds` (an
    /// agent asking for a pause); status 0 ends it.
    pub fn set_retry_after(&self, status: u16, seconds: u64) {
        self.stats.retry_after_s.store(seconds, Ordering::SeqCst);
        self.set_fail_status(status);
    }

    pub fn set_health_status(&self, status: u16) {
        self.stats
            .health_status
            .store(status as u64, Ordering::SeqCst);
    }

    /// Requests other than health checks.
    pub fn traffic(&self) -> usize {
        self.targets()
            .iter()
            .filter(|t| !t.starts_with("/healthz"))
            .count()
    }

    /// The most requests it was answering at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.stats.peak_in_flight.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn targets(&self) -> Vec<String> {
        self.stats.targets.lock().unwrap().clone()
    }

    pub fn last_headers(&self) -> HashMap<String, String> {
        self.stats.last_headers.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

async fn read_request<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let first = lines.next()?;
            let mut parts = first.split(' ');
            let method = parts.next()?.to_string();
            let target = parts.next()?.to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let mut rest = buf.split_off(end + 4);
            // Read (and discard) a body: Content-Length or chunked.
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            let chunked = headers
                .iter()
                .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
            if let Some(len) = len {
                while rest.len() < len {
                    let mut tmp = [0u8; 8192];
                    let n = sock.read(&mut tmp).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    rest.extend_from_slice(&tmp[..n]);
                }
                rest.drain(..len);
            } else if chunked {
                loop {
                    if find(&rest, b"0\r\n\r\n").is_some() {
                        let end = find(&rest, b"0\r\n\r\n")? + 5;
                        rest.drain(..end);
                        break;
                    }
                    let mut tmp = [0u8; 8192];
                    let n = sock.read(&mut tmp).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    rest.extend_from_slice(&tmp[..n]);
                }
            }
            *buf = rest;
            return Some(Request {
                method,
                target,
                headers,
            });
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The agent's side of a TLS handshake; `None` when the client gave up (for instance
/// on a certificate it refused).
pub async fn tls_accept(
    acceptor: &openssl::ssl::SslAcceptor,
    sock: TcpStream,
) -> Option<tokio_openssl::SslStream<TcpStream>> {
    let ssl = openssl::ssl::Ssl::new(acceptor.context()).ok()?;
    let mut stream = tokio_openssl::SslStream::new(ssl, sock).ok()?;
    std::pin::Pin::new(&mut stream).accept().await.ok()?;
    Some(stream)
}

async fn serve<S: Io>(mut sock: S, name: &str, stats: &BackendStats) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.targets.lock().unwrap().push(req.target.clone());
        *stats.last_headers.lock().unwrap() = req.headers.iter().cloned().collect();
        let now_in = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if !req.target.starts_with("/healthz") {
            stats.peak_in_flight.fetch_max(now_in, Ordering::SeqCst);
        }
        let delay = stats.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = stats.fail_status.load(Ordering::SeqCst) as u16;
        let health = stats.health_status.load(Ordering::SeqCst) as u16;
        let keep = if health != 0 && req.target.starts_with("/healthz") {
            write_fixed(&mut sock, health, "application/json", b"{}", name).await
        } else if fail != 0 && !req.target.starts_with("/healthz") {
            let retry_after = stats.retry_after_s.load(Ordering::SeqCst);
            if retry_after > 0 {
                let head = format!(
                    "HTTP/1.1 {fail} X\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: 2\r\nx-backend: {name}\r\n\r\n{{}}"
                );
                sock.write_all(head.as_bytes()).await.is_ok()
            } else {
                write_fixed(
                    &mut sock,
                    fail,
                    "application/json",
                    b"{\"sick\":true}",
                    name,
                )
                .await
            }
        } else {
            respond(&mut sock, name, &req, stats).await
        };
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            return;
        }
    }
}

async fn write_fixed<S: Io>(
    sock: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
    name: &str,
) -> bool {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(body).await.is_ok()
}

async fn write_chunk<S: Io>(sock: &mut S, data: &[u8]) -> bool {
    let frame = format!("{:x}\r\n", data.len());
    sock.write_all(frame.as_bytes()).await.is_ok()
        && sock.write_all(data).await.is_ok()
        && sock.write_all(b"\r\n").await.is_ok()
        && sock.flush().await.is_ok()
}

fn num(s: Option<&&str>) -> u64 {
    s.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Returns false when the connection must close.
async fn respond<S: Io>(sock: &mut S, name: &str, req: &Request, stats: &BackendStats) -> bool {
    let path = req.target.split('?').next().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.first().copied().unwrap_or("") {
        "ws" => {
            websocket_echo(sock, req).await;
            false
        }
        "echo" | "list" | "pages" => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let body = serde_json::json!({"backend": name, "method": req.method, "target": req.target, "headers": headers});
            write_fixed(
                sock,
                200,
                "application/json",
                body.to_string().as_bytes(),
                name,
            )
            .await
        }
        "status" => {
            let code = num(parts.get(1)) as u16;
            write_fixed(
                sock,
                code,
                "application/json",
                format!("{{\"status\":{code}}}").as_bytes(),
                name,
            )
            .await
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(num(parts.get(1)))).await;
            write_fixed(sock, 200, "application/json", b"{\"slept\":true}", name).await
        }
        "hang" => {
            std::future::pending::<()>().await;
            false
        }
        // Reads the request, then closes without a response (an agent that crashed).
        "drop" => false,
        "bytes" => {
            let body = vec![b'x'; num(parts.get(1)) as usize];
            write_fixed(sock, 200, "application/json", &body, name).await
        }
        "chunked" => {
            let total = num(parts.get(1)) as usize;
            let chunks = num(parts.get(2)).max(1) as usize;
            let delay = Duration::from_millis(num(parts.get(3)));
            let head = format!("HTTP/1.1 200 X\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nx-backend: {name}\r\n\r\n");
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let per = total.div_ceil(chunks).max(1);
            let mut sent = 0;
            for i in 0..chunks {
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                let n = per.min(total - sent);
                if n == 0 {
                    break;
                }
                if !write_chunk(sock, &vec![b'y'; n]).await {
                    return false;
                }
                sent += n;
            }
            sock.write_all(b"0\r\n\r\n").await.is_ok()
        }
        "sse" => {
            let count = num(parts.get(1));
            let delay = Duration::from_millis(num(parts.get(2)));
            let head = format!("HTTP/1.1 200 X\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nx-backend: {name}\r\n\r\n");
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                if !write_chunk(sock, format!("data: {{\"i\":{i}}}\n\n").as_bytes()).await {
                    return false;
                }
            }
            sock.write_all(b"0\r\n\r\n").await.is_ok()
        }
        // An agent whose latency grows with its own load: base_ms while at most
        // `capacity` requests are in, proportionally longer past that (a GPU batch).
        "load" => {
            let base = num(parts.get(1));
            let capacity = num(parts.get(2)).max(1);
            let busy = stats.in_flight.load(Ordering::SeqCst);
            let ms = base * busy.max(capacity) / capacity;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            write_fixed(
                sock,
                200,
                "application/json",
                format!("{{\"ms\":{ms}}}").as_bytes(),
                name,
            )
            .await
        }
        "think" => {
            tokio::time::sleep(Duration::from_millis(num(parts.get(1)))).await;
            write_fixed(sock, 200, "application/json", b"{\"thought\":true}", name).await
        }
        "silent" => {
            let head = format!("HTTP/1.1 200 X\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-backend: {name}\r\n\r\n");
            if sock.write_all(head.as_bytes()).await.is_err()
                || !write_chunk(sock, b"data: first\n\n").await
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(num(parts.get(1)))).await;
            write_chunk(sock, b"data: late\n\n").await && sock.write_all(b"0\r\n\r\n").await.is_ok()
        }
        _ => {
            write_fixed(
                sock,
                200,
                "application/json",
                format!("{{\"backend\":\"{name}\"}}").as_bytes(),
                name,
            )
            .await
        }
    }
}

/// Accepts a WebSocket handshake and echoes messages until the peer closes.
async fn websocket_echo<S: Io>(sock: &mut S, req: &Request) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(key), Some(upgrade)) = (header("sec-websocket-key"), header("upgrade")) else {
        let _ = write_fixed(sock, 400, "text/plain", b"not a websocket handshake", "ws").await;
        return;
    };
    if !upgrade.eq_ignore_ascii_case("websocket") {
        let _ = write_fixed(sock, 400, "text/plain", b"not a websocket handshake", "ws").await;
        return;
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(sock, Role::Server, None).await;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(text) => {
                let count = text
                    .strip_prefix("count ")
                    .and_then(|n| n.parse::<u32>().ok());
                if let Some(n) = count {
                    for i in 0..n {
                        if ws.send(Message::text(format!("{i}"))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Message::Text(text)
            }
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => return,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

//! OTLP receivers in the test process, built on the official protobuf definitions
//! (opentelemetry-proto): OTLP/HTTP (`POST /v1/traces`, gzip or not) on a small HTTP/1.1
//! server, and OTLP/gRPC on tonic with the generated TraceService server; each plain
//! or TLS. A receiver keeps every span and request it received and answers from a
//! script the test sets (a status, a Retry-After, a gRPC code with RetryInfo, a hang),
//! then 200 / OK.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::tls::Leaf;

/// A received span with the resource it came with.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub resource: Vec<(String, String)>,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(value_text(kv.value.as_ref()?.value.as_ref()?))
    }
    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the receiver answers one export request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// HTTP status with an optional Retry-After value.
    Http(u16, Option<&'static str>),
    /// gRPC code with an optional RetryInfo delay.
    Grpc(tonic::Code, Option<Duration>),
    /// Never answers (the request is still recorded).
    Hang,
    /// Answers 200 with a body that is not protobuf.
    Garbage,
}

/// One export request as received.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Lower-case header names (gRPC: the metadata) with their values.
    pub headers: Vec<(String, String)>,
    /// The body could be decoded as an `ExportTraceServiceRequest`.
    pub decoded: bool,
    /// Request spans (server and client kinds) it carried; the gateway's own spans
    /// are not counted.
    pub spans: usize,
    pub at: std::time::Instant,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<VecDeque<Answer>>,
}

impl Store {
    /// Records a request (spans kept only when it is answered with success).
    /// The script answers requests that carry request spans; one carrying only the
    /// gateway's own spans is accepted, so a test's answers meet the batches it made.
    fn record(&self, headers: Vec<(String, String)>, body: &[u8]) -> Answer {
        let decoded = ExportTraceServiceRequest::decode(body).ok();
        let spans: Vec<ReceivedSpan> = decoded.as_ref().map(spans_of).unwrap_or_default();
        let request_spans = spans.iter().any(|s| s.span.kind == 2 || s.span.kind == 3);
        let answer = if request_spans || decoded.is_none() {
            self.script.lock().unwrap().pop_front()
        } else {
            None
        };
        self.requests.lock().unwrap().push(ReceivedRequest {
            headers,
            decoded: decoded.is_some(),
            spans: spans
                .iter()
                .filter(|s| s.span.kind == 2 || s.span.kind == 3)
                .count(),
            at: std::time::Instant::now(),
        });
        let accepted = matches!(
            answer,
            None | Some(Answer::Http(200..=299, _)) | Some(Answer::Garbage)
        );
        if accepted {
            self.spans.lock().unwrap().extend(spans);
        }
        answer.unwrap_or(Answer::Http(200, None))
    }
}

fn spans_of(req: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource: Vec<(String, String)> = rs
            .resource
            .as_ref()
            .map(|r| {
                r.attributes
                    .iter()
                    .filter_map(|a| {
                        Some((a.key.clone(), value_text(a.value.as_ref()?.value.as_ref()?)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    span: span.clone(),
                });
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub tls: bool,
    store: Arc<Store>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// OTLP/HTTP, plain.
    pub async fn start() -> OtlpReceiver {
        OtlpReceiver::start_with(Protocol::Http, None).await
    }

    /// A receiver of `protocol`, over TLS presenting `leaf` when given.
    pub async fn start_with(protocol: Protocol, leaf: Option<&Leaf>) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let addr = listener.local_addr().expect("addr");
        let store = Arc::new(Store::default());
        let tls = leaf.is_some();
        let task = match protocol {
            Protocol::Http => {
                let acceptor = leaf.map(|l| Arc::new(super::tls::acceptor(l, b"\x08http/1.1")));
                tokio::spawn(serve_http(listener, Arc::clone(&store), acceptor))
            }
            Protocol::Grpc => {
                let identity = leaf.map(|l| {
                    tonic::transport::Identity::from_pem(
                        std::fs::read(&l.cert_file).unwrap(),
                        std::fs::read(&l.key_file).unwrap(),
                    )
                });
                tokio::spawn(serve_grpc(listener, Arc::clone(&store), identity))
            }
        };
        OtlpReceiver {
            addr,
            protocol,
            tls,
            store,
            task,
        }
    }

    /// The next requests are answered with `answers`, in order (then success).
    pub fn script(&self, answers: &[Answer]) {
        self.store
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().cloned());
    }

    /// The URL for `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.protocol {
            Protocol::Http => format!("{scheme}://{}/v1/traces", self.addr),
            Protocol::Grpc => format!("{scheme}://{}", self.addr),
        }
    }

    /// The same, naming the host `localhost` (for a certificate issued to that name).
    pub fn endpoint_by_name(&self) -> String {
        self.endpoint().replace("127.0.0.1", "localhost")
    }

    /// The request spans received (server and client kinds).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let all = self.store.spans.lock().unwrap();
        all.iter()
            .filter(|s| s.span.kind == 2 || s.span.kind == 3)
            .cloned()
            .collect()
    }

    /// Every span received, the gateway's own (internal kind) included.
    pub fn all_spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Waits until the gateway's start-up span arrived: what it sends next is request
    /// spans (a test scripting answers for them starts after this).
    pub async fn wait_started(&self) {
        super::wait_for(Duration::from_secs(15), "the gateway's start span", || {
            let started = self
                .store
                .spans
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.span.name == "agentgate.start");
            async move { started.then_some(()) }
        })
        .await
    }

    /// Waits (at most 15 s) until at least `n` spans arrived; returns them all.
    pub async fn wait_spans(&self, n: usize) -> Vec<ReceivedSpan> {
        super::wait_for(Duration::from_secs(15), "spans at the receiver", || {
            let spans = self.spans();
            async move { (spans.len() >= n).then_some(spans) }
        })
        .await
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.store.requests.lock().unwrap().clone()
    }

    /// The requests that carried request spans (not only the gateway's own).
    pub fn request_exports(&self) -> Vec<ReceivedRequest> {
        let all = self.store.requests.lock().unwrap();
        all.iter().filter(|r| r.spans > 0).cloned().collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http(
    listener: TcpListener,
    store: Arc<Store>,
    acceptor: Option<Arc<openssl::ssl::SslAcceptor>>,
) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let store = Arc::clone(&store);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => http_connection(sock, store).await,
                Some(a) => {
                    let Ok(ssl) = openssl::ssl::Ssl::new(a.context()) else {
                        return;
                    };
                    let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, sock) else {
                        return;
                    };
                    if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                        return;
                    }
                    http_connection(stream, store).await
                }
            }
        });
    }
}

/// Reads requests (head, then Content-Length bytes) and answers each from the script.
async fn http_connection<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, store: Arc<Store>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut tmp = [0u8; 16384];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let len: usize = find("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut tmp = [0u8; 16384];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let raw = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let body = if find("content-encoding").as_deref() == Some("gzip") {
            let mut out = Vec::new();
            match flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out) {
                Ok(_) => out,
                Err(_) => Vec::new(),
            }
        } else {
            raw
        };
        let reply = match store.record(headers, &body) {
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Answer::Garbage => "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 7\r\n\r\nnot-otl".to_string(),
            Answer::Http(status, retry_after) => {
                let extra = retry_after
                    .map(|v| format!("retry-after: {v}\r\n"))
                    .unwrap_or_default();
                format!("HTTP/1.1 {status} X\r\ncontent-type: application/x-protobuf\r\n{extra}content-length: 0\r\n\r\n")
            }
            Answer::Grpc(..) => "HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n".to_string(),
        };
        if sock.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

struct GrpcReceiver {
    store: Arc<Store>,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers: Vec<(String, String)> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                }
                _ => None,
            })
            .collect();
        let body = request.into_inner().encode_to_vec();
        match self.store.record(headers, &body) {
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(tonic::Status::unavailable("hung"))
            }
            Answer::Grpc(code, retry) => {
                use tonic_types::{ErrorDetails, StatusExt};
                let details = match retry {
                    Some(d) => ErrorDetails::with_retry_info(Some(d)),
                    None => ErrorDetails::new(),
                };
                Err(tonic::Status::with_error_details(code, "scripted", details))
            }
            Answer::Http(..) | Answer::Garbage => {
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
        }
    }
}

async fn serve_grpc(
    listener: TcpListener,
    store: Arc<Store>,
    identity: Option<tonic::transport::Identity>,
) {
    let service = TraceServiceServer::new(GrpcReceiver { store })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = identity {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("grpc tls");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let _ = builder
        .add_service(service)
        .serve_with_incoming(incoming)
        .await;
}

//! The span exporter's transport to the collector: OTLP/HTTP (protobuf) through
//! reqwest, or OTLP/gRPC through a tonic channel, plain or TLS (a configured CA bundle
//! or the system roots), with the configured headers, gzip and timeout.
//!
//! The body is the `ExportTraceServiceRequest` the exporter already encoded (see
//! `otlp`): gRPC sends it through a codec that writes the bytes as they are, so no
//! message type is built or converted. Each send says whether the OTLP specification
//! lets it be tried again (HTTP 429, 502, 503, 504; gRPC UNAVAILABLE,
//! RESOURCE_EXHAUSTED and the other transient codes; a connection failure or a
//! timeout) and how long the collector asked to wait (`Retry-After`, gRPC
//! `RetryInfo`). Everything runs on the export thread's own single-threaded runtime.

use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::config::{Endpoint, OtlpCompression, OtlpProtocol, TraceSettings};

/// The gRPC method of the OTLP trace service.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why a send failed, and whether it may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub message: String,
    /// The specification allows another try.
    pub retryable: bool,
    /// The collector asked to wait this long first.
    pub retry_after: Option<Duration>,
}

impl SendError {
    fn transient(message: String) -> SendError {
        SendError {
            message,
            retryable: true,
            retry_after: None,
        }
    }
    fn permanent(message: String) -> SendError {
        SendError {
            message,
            retryable: false,
            retry_after: None,
        }
    }
}

/// A client for one collector.
pub enum Collector {
    Http {
        client: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
        gzip: bool,
    },
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
}

impl Collector {
    /// Builds the client for `settings` (export must be on). Must run inside the export
    /// thread's runtime: the gRPC channel starts its worker there. Nothing connects yet.
    pub fn new(settings: &TraceSettings) -> Result<Collector, String> {
        let url = settings
            .otlp_endpoint
            .as_deref()
            .ok_or_else(|| "no otlp_endpoint".to_string())?;
        let endpoint = Endpoint::parse(url)?;
        let ca = match &settings.ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?)
            }
            None => None,
        };
        match settings.protocol {
            OtlpProtocol::HttpProtobuf => http_collector(settings, &endpoint, ca),
            OtlpProtocol::Grpc => grpc_collector(settings, &endpoint, ca),
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest`.
    pub async fn send(&mut self, body: Bytes) -> Result<(), SendError> {
        match self {
            Collector::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let body = if *gzip { gzip_body(&body)? } else { body };
                let mut request = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                if *gzip {
                    request = request.header(http::header::CONTENT_ENCODING, "gzip");
                }
                let response = request.body(body).send().await.map_err(|e| {
                    SendError::transient(format!("sending to the collector: {}", error_chain(&e)))
                })?;
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    // The body (a partial-success report at most) is read so the
                    // connection can be kept.
                    let _ = response.bytes().await;
                    return Ok(());
                }
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let _ = response.bytes().await;
                Err(SendError {
                    message: format!("collector answered {status}"),
                    retryable: matches!(status, 429 | 502 | 503 | 504),
                    retry_after,
                })
            }
            Collector::Grpc {
                grpc,
                metadata,
                timeout,
            } => {
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let call = async {
                    grpc.ready().await.map_err(|e| {
                        SendError::transient(format!(
                            "connecting to the collector: {}",
                            error_chain(&e)
                        ))
                    })?;
                    grpc.unary(request, PathAndQuery::from_static(EXPORT_PATH), RawCodec)
                        .await
                        .map_err(grpc_error)
                };
                // The channel's own timeout covers the call; this one also covers the
                // connection.
                match tokio::time::timeout(*timeout, call).await {
                    Ok(result) => result.map(|_| ()),
                    Err(_) => Err(SendError::transient(format!(
                        "the collector did not answer within {}",
                        crate::config::duration::format_duration(*timeout)
                    ))),
                }
            }
        }
    }
}

fn http_collector(
    settings: &TraceSettings,
    endpoint: &Endpoint,
    ca: Option<Vec<u8>>,
) -> Result<Collector, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true);
    if let Some(pem) = ca {
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_file: {e}"))?;
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder
        .build()
        .map_err(|e| format!("building the OTLP/HTTP client: {}", error_chain(&e)))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &settings.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?}"))?;
        let value =
            http::HeaderValue::from_str(value).map_err(|_| format!("value of header {name}"))?;
        headers.append(name, value);
    }
    Ok(Collector::Http {
        client,
        url: endpoint.url(),
        headers,
        gzip: settings.compression == OtlpCompression::Gzip,
    })
}

fn grpc_collector(
    settings: &TraceSettings,
    endpoint: &Endpoint,
    ca: Option<Vec<u8>>,
) -> Result<Collector, String> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let scheme = if endpoint.tls { "https" } else { "http" };
    let mut channel =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", endpoint.authority))
            .map_err(|e| format!("endpoint: {e}"))?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .tcp_nodelay(true);
    if endpoint.tls {
        let tls = ClientTlsConfig::new().domain_name(endpoint.host.clone());
        let tls = match ca {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        channel = channel
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {}", error_chain(&e)))?;
    }
    let mut grpc = tonic::client::Grpc::new(channel.connect_lazy());
    if settings.compression == OtlpCompression::Gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (name, value) in &settings.headers {
        let key = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?}"))?;
        let value: MetadataValue<_> = value
            .parse()
            .map_err(|_| format!("value of header {name}"))?;
        metadata.append(key, value);
    }
    Ok(Collector::Grpc {
        grpc,
        metadata,
        timeout: settings.timeout,
    })
}

/// The OTLP specification's retryable gRPC codes; RESOURCE_EXHAUSTED too (the
/// collector's memory limiter answers it and recovers).
fn grpc_error(status: tonic::Status) -> SendError {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retryable = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    );
    let retry_after = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let message = if status.message().is_empty() {
        format!("collector answered gRPC {:?}", status.code())
    } else {
        format!(
            "collector answered gRPC {:?}: {}",
            status.code(),
            status.message()
        )
    };
    SendError {
        message,
        retryable,
        retry_after,
    }
}

fn gzip_body(body: &[u8]) -> Result<Bytes, SendError> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map(Bytes::from)
        .map_err(|e| SendError::permanent(format!("gzip: {e}")))
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110), relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The error and its sources, for a log line that says what actually failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Sends the encoded request as it is and ignores the response message (an
/// `ExportTraceServiceResponse` carries only a partial-success report).
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

//! A real gRPC agent for the tests: tonic's implementation of the standard health
//! service (`grpc.health.v1.Health`: unary Check, server-streaming Watch), served on a
//! free loopback port over cleartext HTTP/2 (h2c) or over TLS with ALPN `h2`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The gRPC agent; dropping it stops the server.
pub struct GrpcAgent {
    pub addr: SocketAddr,
    pub reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for GrpcAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl GrpcAgent {
    /// Serves the health service with the whole server ("") SERVING; `tls` with an
    /// acceptor offering `h2`, or cleartext HTTP/2 without.
    pub async fn start(tls: Option<openssl::ssl::SslAcceptor>) -> GrpcAgent {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder().add_service(service);
        match tls {
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }));
            }
            Some(acceptor) => {
                let acceptor = Arc::new(acceptor);
                let (conns_tx, conns_rx) =
                    tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(16);
                tokio::spawn(async move {
                    while let Ok((sock, _)) = listener.accept().await {
                        let (acceptor, conns_tx) = (Arc::clone(&acceptor), conns_tx.clone());
                        tokio::spawn(async move {
                            if let Some(tls) = super::backend::tls_accept(&acceptor, sock).await {
                                let _ = conns_tx.send(Ok(TlsConn(tls))).await;
                            }
                        });
                    }
                });
                let incoming = tokio_stream::wrappers::ReceiverStream::new(conns_rx);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }));
            }
        }
        GrpcAgent {
            addr,
            reporter,
            stop: Some(tx),
        }
    }
}

/// A TLS connection tonic can serve.
pub struct TlsConn(pub tokio_openssl::SslStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A gRPC health client through the gateway at `addr` (cleartext HTTP/2).
pub async fn health_client(
    addr: SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway over h2c");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

//! `server.header_timeout`: a client must deliver its whole request header within this
//! time of the connection (or of the previous response on a kept-alive connection),
//! however it trickles the bytes. pingora only bounds each read, so the proxy app is
//! wrapped: the request future races a timer, and loses only while the header is still
//! unread (the proxy's first phase marks it read through a task-local flag).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

tokio::task_local! {
    static HEADER_READ: Arc<AtomicBool>;
}

/// Called by the proxy once a request header has been read.
pub fn mark_header_read() {
    let _ = HEADER_READ.try_with(|flag| flag.store(true, Ordering::Relaxed));
}

pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let flag = Arc::new(AtomicBool::new(false));
        let request = HEADER_READ.scope(
            Arc::clone(&flag),
            self.inner.process_new_http(session, shutdown),
        );
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => done,
            _ = tokio::time::sleep(self.timeout) => {
                if flag.load(Ordering::Relaxed) {
                    request.await
                } else {
                    // Header incomplete: drop the connection (the dropped future closes it).
                    log::debug!("client did not send a complete request header within {:?}: connection dropped", self.timeout);
                    None
                }
            }
        }
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        Arc::clone(&self.inner)
            .process_custom_session(stream, shutdown)
            .await
    }
}

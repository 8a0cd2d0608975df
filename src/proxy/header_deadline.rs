//! `server.header_timeout`: a client must deliver its whole request header within this
//! time of the connection (or of the previous response on a kept-alive connection),
//! however it trickles the bytes. pingora only bounds each read, so the proxy app is
//! wrapped: the request future races a timer, and loses only while the header is still
//! unread (the proxy's first phase marks it read through a task-local flag).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

tokio::task_local! {
    static HEADER_READ: Cell<bool>;
}

/// Called by the proxy once a request header has been read.
pub fn mark_header_read() {
    let _ = HEADER_READ.try_with(|flag| flag.set(true));
}

/// The request against the header timer. The timer is polled only while the header is
/// still unread; after that the request runs alone (no timer work on every wake-up of
/// a request that is already being proxied). `None` means the timer won.
struct HeaderRace<'a, R, T> {
    request: Pin<&'a mut R>,
    timer: Option<Pin<&'a mut T>>,
}

impl<R: Future, T: Future> Future for HeaderRace<'_, R, T> {
    type Output = Option<R::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(done) = self.request.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if HEADER_READ.try_with(Cell::get).unwrap_or(true) {
            self.timer = None;
            return Poll::Pending;
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(_)) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
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
        let timeout = self.timeout;
        let inner = &self.inner;
        HEADER_READ
            .scope(Cell::new(false), async move {
                let request = inner.process_new_http(session, shutdown);
                // pingora's timer: coalesced per deadline, far cheaper than a tokio timer
                // per request.
                let timer = pingora::prelude::fast_timeout::fast_sleep(timeout);
                tokio::pin!(request);
                tokio::pin!(timer);
                let raced = HeaderRace {
                    request,
                    timer: Some(timer),
                }
                .await;
                raced.unwrap_or_else(|| {
                    // Header incomplete: dropping the request closes the connection.
                    log::debug!(
                        "no complete request header within {timeout:?}: connection dropped"
                    );
                    None
                })
            })
            .await
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

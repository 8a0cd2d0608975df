//! Active health checks: a background service that sends `GET <path>` to every backend
//! every `interval` and flips its verdict after `unhealthy_after` / `healthy_after`
//! consecutive results. A check never calls a costly agent endpoint: only the configured
//! path, with a short timeout.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::observe::metrics;
use crate::state::Shared;

/// How often the service looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthService {
    shared: Arc<Shared>,
}

impl HealthService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn run_due_checks(&self) {
        let runtime = self.shared.runtime.load_full();
        let now = now_ms();
        for upstream_rt in &runtime.upstreams {
            let pool = &upstream_rt.pool;
            let upstream = Arc::clone(&pool.config);
            for backend in &pool.backends {
                metrics::set_backend_healthy(
                    &upstream.name,
                    &backend.label,
                    backend.is_available(now),
                );
                if backend.next_check_ms.load(Ordering::Relaxed) > now
                    || backend.check_running.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                let interval = upstream.health.interval.as_millis() as u64;
                backend
                    .next_check_ms
                    .store(now + interval, Ordering::Relaxed);
                let backend = Arc::clone(backend);
                let upstream = Arc::clone(&upstream);
                tokio::spawn(async move {
                    let h = &upstream.health;
                    let ok = probe(backend.addr, &h.path, h.timeout).await;
                    if let Some(now_healthy) =
                        backend.record_check(ok, h.healthy_after, h.unhealthy_after)
                    {
                        if now_healthy {
                            log::info!(
                                "backend {} of upstream {} is healthy again (active check {})",
                                backend.label,
                                upstream.name,
                                h.path
                            );
                        } else {
                            log::warn!(
                                "backend {} of upstream {} failed {} active checks of {}: no traffic until it recovers",
                                backend.label,
                                upstream.name,
                                h.unhealthy_after,
                                h.path
                            );
                        }
                    }
                    backend.check_running.store(false, Ordering::Release);
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.run_due_checks(),
            }
        }
    }
}

/// One health check: true when the backend answers `GET path` with a 2xx in time.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: agentgate-health-check\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut len = 0;
        // The status line is all we need: "HTTP/1.1 200".
        while len < 12 {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        parse_status(&buf[..len])
    };
    matches!(
        tokio::time::timeout(timeout, attempt).await,
        Ok(Some(200..=299))
    )
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
    }
}

//! Active health checks over the live upstreams: every `TICK` the service starts the
//! checks that are due (each backend every `interval`), publishes each backend's
//! verdict as a metric, and logs when a verdict flips.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balance::health::probe;
use crate::clock::now_ms;
use crate::observe::metrics;
use crate::state::Shared;

/// How often the service looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthService {
    shared: Arc<Shared>,
    /// The checks' own connector (TLS, HTTP/2), apart from the proxy's pool.
    connector: Arc<Connector>,
}

impl HealthService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            connector: Arc::new(Connector::new(None)),
        }
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
                if upstream.health.path.is_empty() && !upstream.health.grpc {
                    // Active checks are off (`path = ""`): a verdict from before a
                    // reload that turned them off must not keep the backend out.
                    backend.forget_active_verdict();
                    continue;
                }
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
                let connector = Arc::clone(&self.connector);
                tokio::spawn(async move {
                    let h = &upstream.health;
                    let ok =
                        probe(&connector, &upstream, backend.addr, backend.host.as_deref()).await;
                    let check = if h.grpc {
                        "grpc.health.v1.Health/Check"
                    } else {
                        h.path.as_str()
                    };
                    if let Some(now_healthy) =
                        backend.record_check(ok, h.healthy_after, h.unhealthy_after)
                    {
                        let span = tracing::info_span!(
                            "backend.health",
                            event = "health_transition",
                            upstream = %upstream.name,
                            backend = %backend.label,
                            healthy = now_healthy,
                            check = %check,
                        );
                        let _in = span.enter();
                        if now_healthy {
                            tracing::info!(
                                "backend {} of upstream {} is healthy again (active check {})",
                                backend.label,
                                upstream.name,
                                check
                            );
                        } else {
                            tracing::warn!(
                                "backend {} of upstream {} failed {} active checks of {}: no traffic until it recovers",
                                backend.label,
                                upstream.name,
                                h.unhealthy_after,
                                check
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

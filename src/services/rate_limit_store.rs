//! Keeps the rate-limit store's reachability current, whichever store the live config
//! names (a reload may change it).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::Shared;

/// Keeps the store's reachability current: probes every 500 ms while down, every 2 s
/// while up.
pub struct StoreProbe {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for StoreProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let store = self.shared.rate_limit_store();
            let pause = match &store {
                Some(s) => {
                    s.probe().await;
                    if s.is_up() {
                        Duration::from_secs(2)
                    } else {
                        Duration::from_millis(500)
                    }
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

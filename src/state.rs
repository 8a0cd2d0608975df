//! Shared gateway state: the live runtime (config plus everything compiled from it),
//! swapped whole on reload, and the process-wide parts that outlive a reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::{BackendRegistry, UpstreamPool};
use crate::alerts::window::Ring;
use crate::alerts::AlertBoard;
use crate::config::{Config, Route, Signal};
use crate::observe::metrics::{BackendMetrics, RouteMetrics};

/// A route with the handles the hot path needs.
pub struct RouteRuntime {
    pub route: Arc<Route>,
    pub metrics: RouteMetrics,
    /// Outcome window for alerts naming this route (none when no alert does).
    pub window: Option<Ring>,
}

/// An upstream pool with its per-backend metric handles (same order as `pool.backends`).
pub struct UpstreamRuntime {
    pub pool: Arc<UpstreamPool>,
    pub backend_metrics: Vec<BackendMetrics>,
}

/// Everything built from one config. Requests hold an `Arc<Runtime>` from start to end,
/// so a reload never changes the config under a request already running.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Same order as `config.routes`.
    pub routes: Vec<RouteRuntime>,
    /// Same order as `config.upstreams`.
    pub upstreams: Vec<UpstreamRuntime>,
    /// Outcome window for alerts over all routes.
    pub all_window: Option<Ring>,
}

/// Seconds of window a ring needs for the alerts that read it.
fn window_seconds(config: &Config, route: Option<&str>) -> Option<u64> {
    config
        .alerts
        .iter()
        .filter(|a| a.route.as_deref() == route && a.signal != Signal::HealthyBackends)
        .map(|a| a.window.as_secs().max(1))
        .max()
}

impl Runtime {
    pub fn build(config: Config, registry: &BackendRegistry) -> Runtime {
        let config = Arc::new(config);
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                route: Arc::clone(r),
                metrics: RouteMetrics::new(&r.name, Some(&config.upstreams[r.upstream].name)),
                window: window_seconds(&config, Some(&r.name)).map(Ring::new),
            })
            .collect();
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let pool = Arc::new(UpstreamPool::new(Arc::clone(u), registry));
            let backend_metrics = pool
                .backends
                .iter()
                .map(|b| BackendMetrics::new(&u.name, &b.label))
                .collect();
            upstreams.push(UpstreamRuntime {
                pool,
                backend_metrics,
            });
        }
        let keep: Vec<_> = config
            .upstreams
            .iter()
            .flat_map(|u| u.backends.iter().map(|a| (u.name.clone(), *a)))
            .collect();
        registry.retain(&keep);
        Runtime {
            all_window: window_seconds(&config, None).map(Ring::new),
            config,
            routes,
            upstreams,
        }
    }
}

/// State shared by the proxy, the admin listener and the background services.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub registry: BackendRegistry,
    /// Unmatched requests count here (route="unmatched").
    pub unmatched_metrics: RouteMetrics,
    pub alerts: AlertBoard,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let registry = BackendRegistry::default();
        let alerts = AlertBoard::default();
        alerts.sync_rules(&config.alerts);
        let runtime = Runtime::build(config, &registry);
        Arc::new(Shared {
            alerts,
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            unmatched_metrics: RouteMetrics::new("unmatched", None),
            draining: AtomicBool::new(false),
        })
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Swaps in a new runtime built from `config` (requests already running keep theirs).
    pub fn install(&self, config: Config) {
        self.alerts.sync_rules(&config.alerts);
        self.runtime.store(Arc::new(Runtime::build(config, &self.registry)));
    }

    pub fn alerts_json(&self) -> serde_json::Value {
        self.alerts.to_json()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

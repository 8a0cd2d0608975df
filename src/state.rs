//! Shared gateway state: the live runtime (config plus everything compiled from it),
//! swapped whole on reload, and the process-wide parts that outlive a reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::alerts::window::Ring;
use crate::alerts::AlertBoard;
use crate::balance::{BackendRegistry, UpstreamPool};
use crate::config::{Config, OnUnavailable, RateLimitScope, Route, Signal};
use crate::observe::json::LogName;
use crate::observe::metrics::{BackendMetrics, RouteMetrics};
use crate::observe::otlp::{self, PrebuiltValue};
use crate::ratelimit::store::RedisStore;
use crate::ratelimit::RouteLimiter;

/// A route with the handles the hot path needs.
pub struct RouteRuntime {
    pub route: Arc<Route>,
    pub metrics: RouteMetrics,
    pub limiter: Option<Arc<RouteLimiter>>,
    /// Outcome window for alerts naming this route (none when no alert does).
    pub window: Option<Ring>,
    /// Span attributes that only depend on the route, encoded once (OTLP protobuf).
    pub span_attrs: Vec<u8>,
    /// The route's name for the access log, escaped once.
    pub log_route: LogName,
}

/// An upstream pool with its per-backend metric handles (same order as `pool.backends`).
pub struct UpstreamRuntime {
    pub pool: Arc<UpstreamPool>,
    pub backend_metrics: Vec<BackendMetrics>,
    /// Span attributes of each backend (same order as `pool.backends`).
    pub backend_span_attrs: Vec<BackendSpanAttrs>,
    /// The upstream's name and each backend's label (same order as `pool.backends`)
    /// for the access log, escaped once.
    pub log_name: LogName,
    pub backend_log_names: Vec<LogName>,
}

/// What a span says about a backend, encoded once per config (OTLP protobuf).
pub struct BackendSpanAttrs {
    /// `agentgate.backend` for the server span.
    pub backend: Vec<u8>,
    /// `server.address` and `server.port` for the client span.
    pub address_port: Vec<u8>,
    /// `http://IP:PORT`, the start of `url.full`.
    pub origin: Arc<str>,
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

/// State that outlives one runtime: backend health and load, rate-limit budgets, the
/// Redis connection. A reload hands the same pieces to the new runtime when the config
/// that shapes them did not change.
#[derive(Default)]
pub struct Carryover {
    pub backends: BackendRegistry,
    limiters: Mutex<HashMap<String, Arc<RouteLimiter>>>,
    store: ArcSwapOption<RedisStore>,
}

impl Carryover {
    fn store_for(&self, config: &Config) -> Option<(Arc<RedisStore>, OnUnavailable)> {
        let Some(settings) = &config.rate_limit_store else {
            self.store.store(None);
            return None;
        };
        let current = self.store.load_full();
        let store = match current {
            Some(s) if s.url() == settings.redis_url => s,
            _ => {
                let s = RedisStore::new(&settings.redis_url, settings.timeout);
                self.store.store(Some(Arc::clone(&s)));
                s
            }
        };
        Some((store, settings.on_unavailable))
    }

    fn limiter_for(
        &self,
        route: &Route,
        store: &Option<(Arc<RedisStore>, OnUnavailable)>,
    ) -> Option<Arc<RouteLimiter>> {
        let rule = route.rate_limit.as_ref()?;
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = limiters.get(&route.name) {
            if &existing.rule == rule && (rule.scope == RateLimitScope::Local) {
                return Some(Arc::clone(existing));
            }
        }
        let fresh = Arc::new(RouteLimiter::new(&route.name, rule, store.clone()));
        limiters.insert(route.name.clone(), Arc::clone(&fresh));
        Some(fresh)
    }

    pub fn rate_limit_store(&self) -> Option<Arc<RedisStore>> {
        self.store.load_full()
    }
}

impl Runtime {
    pub fn build(config: Config, carry: &Carryover) -> Runtime {
        let config = Arc::new(config);
        let store = carry.store_for(&config);
        let registry = &carry.backends;
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                limiter: carry.limiter_for(r, &store),
                route: Arc::clone(r),
                metrics: RouteMetrics::new(&r.name, Some(&config.upstreams[r.upstream].name)),
                window: window_seconds(&config, Some(&r.name)).map(Ring::new),
                span_attrs: otlp::prebuilt(&[
                    ("http.route", PrebuiltValue::Str(&r.path_prefix)),
                    ("agentgate.route", PrebuiltValue::Str(&r.name)),
                    (
                        "agentgate.upstream",
                        PrebuiltValue::Str(&config.upstreams[r.upstream].name),
                    ),
                ]),
                log_route: LogName::new(&r.name),
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
            let backend_span_attrs = pool
                .backends
                .iter()
                .map(|b| BackendSpanAttrs {
                    backend: otlp::prebuilt(&[("agentgate.backend", PrebuiltValue::Str(&b.label))]),
                    address_port: otlp::prebuilt(&[
                        (
                            "server.address",
                            PrebuiltValue::Str(&b.addr.ip().to_string()),
                        ),
                        ("server.port", PrebuiltValue::Int(b.addr.port() as i64)),
                    ]),
                    origin: Arc::from(format!("http://{}", b.addr)),
                })
                .collect();
            let backend_log_names = pool
                .backends
                .iter()
                .map(|b| LogName::new(&b.label))
                .collect();
            upstreams.push(UpstreamRuntime {
                log_name: LogName::new(&u.name),
                pool,
                backend_metrics,
                backend_span_attrs,
                backend_log_names,
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
    pub carry: Carryover,
    /// Unmatched requests count here (route="unmatched").
    pub unmatched_metrics: RouteMetrics,
    /// `unmatched` as the access log's route name.
    pub unmatched_log_name: LogName,
    pub alerts: AlertBoard,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let carry = Carryover::default();
        let alerts = AlertBoard::default();
        alerts.sync_rules(&config.alerts);
        let runtime = Runtime::build(config, &carry);
        Arc::new(Shared {
            alerts,
            runtime: ArcSwap::from_pointee(runtime),
            carry,
            unmatched_metrics: RouteMetrics::new("unmatched", None),
            unmatched_log_name: LogName::new("unmatched"),
            draining: AtomicBool::new(false),
        })
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Swaps in a new runtime built from `config` (requests already running keep theirs).
    pub fn install(&self, config: Config) {
        self.alerts.sync_rules(&config.alerts);
        self.runtime
            .store(Arc::new(Runtime::build(config, &self.carry)));
    }

    pub fn rate_limit_store(&self) -> Option<Arc<RedisStore>> {
        self.carry.rate_limit_store()
    }

    pub fn alerts_json(&self) -> serde_json::Value {
        self.alerts.to_json()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

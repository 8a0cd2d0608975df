//! Shared gateway state: the live runtime (config plus everything compiled from it),
//! swapped whole on reload, and the process-wide parts that outlive a reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::alerts::window::{KeptRings, Windows};
use crate::alerts::AlertBoard;
use crate::balance::{BackendRegistry, UpstreamPool};
use std::net::SocketAddr;

use crate::balance::concurrency::ConcurrencyLimit;
use crate::config::{
    BackendAddr, BackendName, Config, OnUnavailable, RateLimitScope, Route, Upstream,
};
use crate::observe::per_config::Telemetry;
use crate::ratelimit::store::RedisStore;
use crate::ratelimit::tokens::TokenLimiter;
use crate::ratelimit::RouteLimiter;

/// A route with its limiters.
pub struct RouteRuntime {
    pub route: Arc<Route>,
    pub limiter: Option<Arc<RouteLimiter>>,
    /// The token budget, on routes with `[routes.token_limit]`.
    pub tokens: Option<Arc<TokenLimiter>>,
}

/// An upstream's pool of backends.
pub struct UpstreamRuntime {
    pub pool: Arc<UpstreamPool>,
    /// Its concurrency cap (`max_in_flight`, `[adaptive_concurrency]`), if any.
    pub limit: Option<Arc<ConcurrencyLimit>>,
}

/// Everything built from one config. Requests hold an `Arc<Runtime>` from start to end,
/// so a reload never changes the config under a request already running. Each layer
/// builds its own part from the config: the balancer its pools, the limiters theirs,
/// the telemetry its per-config entries, the alerts their windows.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Same order as `config.routes`.
    pub routes: Vec<RouteRuntime>,
    /// Same order as `config.upstreams`.
    pub upstreams: Vec<UpstreamRuntime>,
    pub telemetry: Telemetry,
    pub windows: Windows,
}

/// State that outlives one runtime: backend health and load, rate-limit budgets, the
/// Redis connection. A reload hands the same pieces to the new runtime when the config
/// that shapes them did not change.
#[derive(Default)]
pub struct Carryover {
    pub backends: BackendRegistry,
    /// What each backend name last resolved to, per upstream (`services::resolve`
    /// keeps it; a failed lookup leaves the last answer).
    pub resolved: Mutex<HashMap<(String, BackendName), Vec<SocketAddr>>>,
    limiters: Mutex<HashMap<String, Arc<RouteLimiter>>>,
    token_limiters: Mutex<HashMap<String, Arc<TokenLimiter>>>,
    /// The routes' outcome windows (alerts, the admin page).
    rings: KeptRings,
    /// Upstreams' concurrency caps: kept by a reload that keeps their settings, so the
    /// slots requests hold stay counted.
    concurrency: Mutex<HashMap<String, Arc<ConcurrencyLimit>>>,
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
            Some(s) if s.is_for(&settings.redis_url, &settings.ca_pem) => s,
            _ => {
                let s = RedisStore::new(
                    &settings.redis_url,
                    settings.ca_pem.clone(),
                    settings.timeout,
                );
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

    /// The route's token budget: a local one carries over a reload that keeps its rule
    /// (the tokens reserved stay reserved); a global one lives in Redis anyway.
    fn token_limiter_for(
        &self,
        route: &Route,
        store: &Option<(Arc<RedisStore>, OnUnavailable)>,
    ) -> Option<Arc<TokenLimiter>> {
        let rule = route.token_limit.as_ref()?;
        let mut limiters = self
            .token_limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = limiters.get(&route.name) {
            if &existing.rule == rule && (rule.scope == RateLimitScope::Local) {
                return Some(Arc::clone(existing));
            }
        }
        let fresh = Arc::new(TokenLimiter::new(&route.name, rule, store.clone()));
        limiters.insert(route.name.clone(), Arc::clone(&fresh));
        Some(fresh)
    }

    pub fn rate_limit_store(&self) -> Option<Arc<RedisStore>> {
        self.store.load_full()
    }

    /// The upstream's concurrency cap, kept from the config before when it fits.
    fn concurrency_for(&self, u: &Upstream) -> Option<Arc<ConcurrencyLimit>> {
        let mut limits = self.concurrency.lock().unwrap_or_else(|p| p.into_inner());
        match limits.get(&u.name) {
            Some(l) if l.fits(u) => Some(Arc::clone(l)),
            _ => match ConcurrencyLimit::for_upstream(u) {
                Some(fresh) => {
                    let fresh = Arc::new(fresh);
                    limits.insert(u.name.clone(), Arc::clone(&fresh));
                    Some(fresh)
                }
                None => {
                    limits.remove(&u.name);
                    None
                }
            },
        }
    }

    /// `upstream` with the addresses its names last resolved to added to its backends
    /// (an address also written as such is listed once).
    fn with_resolved(&self, upstream: &Arc<Upstream>) -> Arc<Upstream> {
        if upstream.names.is_empty() {
            return Arc::clone(upstream);
        }
        let resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        let mut full = Upstream::clone(upstream);
        // From the addresses written as such: a refresh drops what a name no longer has.
        full.backends.retain(|b| b.name.is_none());
        for name in &upstream.names {
            let Some(addrs) = resolved.get(&(upstream.name.clone(), name.clone())) else {
                continue;
            };
            let shared = Arc::new(name.clone());
            for addr in addrs {
                if !full.backends.iter().any(|b| b.addr == *addr) {
                    full.backends.push(BackendAddr {
                        addr: *addr,
                        name: Some(Arc::clone(&shared)),
                    });
                }
            }
        }
        Arc::new(full)
    }
}

impl Runtime {
    pub fn build(mut config: Config, carry: &Carryover) -> Runtime {
        // Every part below sees the backends the names resolved to as backends.
        config.upstreams = config
            .upstreams
            .iter()
            .map(|u| carry.with_resolved(u))
            .collect();
        let config = Arc::new(config);
        let store = carry.store_for(&config);
        let registry = &carry.backends;
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                limiter: carry.limiter_for(r, &store),
                tokens: carry.token_limiter_for(r, &store),
                route: Arc::clone(r),
            })
            .collect();
        let upstreams: Vec<UpstreamRuntime> = config
            .upstreams
            .iter()
            .map(|u| UpstreamRuntime {
                pool: Arc::new(UpstreamPool::new(Arc::clone(u), registry)),
                limit: carry.concurrency_for(u),
            })
            .collect();
        let keep: Vec<_> = upstreams
            .iter()
            .flat_map(|u| {
                let cfg = &u.pool.config;
                cfg.backends.iter().map(|b| (cfg.name.clone(), b.addr))
            })
            .collect();
        registry.retain(&keep);
        Runtime {
            telemetry: Telemetry::build(&config),
            windows: Windows::for_config(&config, &carry.rings),
            config,
            routes,
            upstreams,
        }
    }
}

/// How many reloads the admin page lists.
const RELOADS_KEPT: usize = 20;

/// One reload, for the admin page: when, whether it took, and what it changed or why
/// it was refused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEvent {
    pub at_unix_ms: u64,
    /// `success` or `failure`.
    pub result: &'static str,
    /// The sections that changed (success), or nothing.
    pub changed: String,
    /// The located config errors (failure).
    pub errors: Vec<String>,
    /// Settings the new config changes that only a restart applies.
    pub needs_restart: Vec<String>,
}

/// State shared by the proxy, the admin listener and the background services.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub carry: Carryover,
    pub alerts: AlertBoard,
    /// The latest reloads, newest last.
    reloads: Mutex<std::collections::VecDeque<ReloadEvent>>,
    draining: AtomicBool,
    /// Held while a runtime is built and swapped in (reload, or a refresh after
    /// names resolved anew).
    installing: Mutex<()>,
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
            reloads: Mutex::new(std::collections::VecDeque::with_capacity(RELOADS_KEPT)),
            draining: AtomicBool::new(false),
            installing: Mutex::new(()),
        })
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Swaps in a new runtime built from `config` (requests already running keep theirs).
    pub fn install(&self, config: Config) {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        self.alerts.sync_rules(&config.alerts);
        self.runtime
            .store(Arc::new(Runtime::build(config, &self.carry)));
    }

    /// Rebuilds the runtime of the config in force, after the backends its names
    /// resolve to changed. Requests running keep the runtime they started on, so a
    /// backend that left finishes what it holds.
    pub fn refresh(&self) {
        // Under the same lock as `install`, so a reload is never undone by a refresh
        // of the config it replaced.
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let config = Config::clone(&self.runtime.load().config);
        self.runtime
            .store(Arc::new(Runtime::build(config, &self.carry)));
    }

    pub fn rate_limit_store(&self) -> Option<Arc<RedisStore>> {
        self.carry.rate_limit_store()
    }

    pub fn alerts_json(&self) -> serde_json::Value {
        self.alerts.to_json()
    }

    /// Remembers a reload (the oldest of `RELOADS_KEPT` goes).
    pub fn note_reload(&self, event: ReloadEvent) {
        let mut reloads = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        if reloads.len() == RELOADS_KEPT {
            reloads.pop_front();
        }
        reloads.push_back(event);
    }

    /// The latest reloads, newest first.
    pub fn reloads(&self) -> Vec<ReloadEvent> {
        let reloads = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        reloads.iter().rev().cloned().collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

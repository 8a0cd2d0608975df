//! Backends by name (SPEC 7.2): every `host:port` backend is resolved at start and then
//! every `resolve_interval` of its upstream, and each address it resolves to is a
//! backend of its own.
//!
//! The system resolver (getaddrinfo, through tokio's blocking pool, so a lookup never
//! holds a proxy thread) answers, not a DNS client of the gateway's own: it gives the
//! same answer as every other process on the host, `/etc/hosts`, nsswitch, and the
//! search domains and `ndots` of a Kubernetes pod's resolv.conf included. It reports no
//! TTLs, so the interval sets the pace. A lookup that fails, times out or finds nothing
//! keeps the last addresses; it is counted, and logged once when a name starts failing
//! and once when it resolves again. When the set changes the runtime is rebuilt:
//! addresses that left drain (requests on them finish), new ones wait for a good
//! active check (or take traffic at once with checks off).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::clock::now_ms;
use crate::config::BackendName;
use crate::observe::metrics;
use crate::state::Shared;

/// How often the service looks for lookups that are due.
const TICK: Duration = Duration::from_millis(250);
/// The longest one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (String, BackendName);

/// One name's lookup state.
struct Lookup {
    next_ms: u64,
    failing: bool,
}

pub struct ResolveBackends {
    pub shared: Arc<Shared>,
}

/// Resolves every name once, blocking, before the gateway serves: the first requests
/// find the named backends there. A name that resolves to nothing waits for the service.
pub fn resolve_at_start(shared: &Shared) {
    use std::net::ToSocketAddrs;
    let runtime = shared.runtime.load_full();
    let mut found = false;
    for u in &runtime.config.upstreams {
        for n in &u.names {
            match (n.host.as_str(), n.port).to_socket_addrs() {
                Ok(addrs) => {
                    let addrs = sorted(addrs.collect());
                    if addrs.is_empty() {
                        log::warn!("backend {}:{} of upstream {} resolves to no address yet; trying every {:?}", n.host, n.port, u.name, u.resolve_interval);
                        continue;
                    }
                    found = true;
                    shared
                        .carry
                        .resolved
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((u.name.clone(), n.clone()), addrs);
                }
                Err(e) => log::warn!(
                    "backend {}:{} of upstream {} does not resolve yet ({e}); trying every {:?}",
                    n.host,
                    n.port,
                    u.name,
                    u.resolve_interval
                ),
            }
        }
    }
    if found {
        shared.refresh();
    }
    // Addresses found from now on are new: they wait for their first good check.
    shared.carry.backends.expect_new();
}

fn sorted(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

impl ResolveBackends {
    async fn lookup(name: &BackendName) -> Result<Vec<SocketAddr>, String> {
        let host = format!("{}:{}", name.host, name.port);
        match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(host)).await {
            Ok(Ok(addrs)) => {
                let addrs = sorted(addrs.collect());
                if addrs.is_empty() {
                    Err("no address".into())
                } else {
                    Ok(addrs)
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
        }
    }

    /// Runs the lookups that are due; true when an answer changed the backends.
    async fn run_due(&self, lookups: &mut HashMap<Key, Lookup>) -> bool {
        let runtime = self.shared.runtime.load_full();
        let now = now_ms();
        let mut due = Vec::new();
        let mut live = Vec::new();
        for u in &runtime.config.upstreams {
            for n in &u.names {
                let key = (u.name.clone(), n.clone());
                let l = lookups.entry(key.clone()).or_insert(Lookup {
                    next_ms: 0,
                    failing: false,
                });
                if l.next_ms <= now {
                    l.next_ms = now + u.resolve_interval.as_millis() as u64;
                    due.push(key.clone());
                }
                live.push(key);
            }
        }
        // Names a reload removed are forgotten.
        lookups.retain(|k, _| live.contains(k));
        self.shared
            .carry
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k));
        let mut changed = false;
        for key in due {
            let answer = Self::lookup(&key.1).await;
            let Some(l) = lookups.get_mut(&key) else {
                continue;
            };
            let (upstream, name) = (&key.0, &key.1);
            match answer {
                Ok(addrs) => {
                    if l.failing {
                        l.failing = false;
                        log::info!(
                            "backend {}:{} of upstream {upstream} resolves again: {addrs:?}",
                            name.host,
                            name.port
                        );
                    }
                    let mut resolved = self
                        .shared
                        .carry
                        .resolved
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if resolved.get(&key) != Some(&addrs) {
                        log::info!(
                            "backend {}:{} of upstream {upstream} now resolves to {addrs:?}",
                            name.host,
                            name.port
                        );
                        resolved.insert(key.clone(), addrs);
                        changed = true;
                    }
                }
                Err(why) => {
                    metrics::resolve_failure(upstream);
                    if !l.failing {
                        l.failing = true;
                        log::warn!(
                            "backend {}:{} of upstream {upstream} does not resolve ({why}): keeping its last addresses, retrying every resolve_interval",
                            name.host,
                            name.port
                        );
                    }
                }
            }
        }
        changed
    }
}

#[async_trait]
impl BackgroundService for ResolveBackends {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut lookups = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    if self.run_due(&mut lookups).await {
                        self.shared.refresh();
                    }
                }
            }
        }
    }
}

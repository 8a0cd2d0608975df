//! Hot reload: re-read the config file, and swap the runtime atomically when it is valid.
//! Requests already running keep the runtime they started with (they hold an `Arc`).
//! Three triggers share [`reload`]: SIGHUP ([`ReloadOnHangup`]), `POST /reload` (the
//! admin listener) and a change to the files ([`watch::WatchConfig`]).

pub mod watch;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, ConfigErrors};
use crate::observe::{logger, metrics};
use crate::proxy::Observer;
use crate::state::{ReloadEvent, Shared};

/// What a reload did.
#[derive(Debug)]
pub struct ReloadReport {
    pub summary: String,
    /// Settings that only a restart applies (listener addresses, threads).
    pub needs_restart: Vec<String>,
}

/// Loads the config file again and swaps it in when valid; keeps the old one otherwise.
pub fn reload(shared: &Shared, observer: &Observer) -> Result<ReloadReport, ConfigErrors> {
    let old = shared.runtime.load_full();
    let path = old.config.path.clone();
    let new = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            metrics::config_reload(false);
            let listed: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            shared.note_reload(ReloadEvent {
                at_unix_ms: unix_ms(),
                result: "failure",
                changed: String::new(),
                errors: listed.clone(),
                needs_restart: Vec::new(),
            });
            let span = tracing::error_span!(
                "config.reload",
                event = "config_reload_failed",
                config = %path.display(),
                errors = %listed.join("; "),
            );
            let _in = span.enter();
            for e in &listed {
                tracing::error!("config reload rejected, still serving the previous config: {e}");
            }
            return Err(errors);
        }
    };
    let mut needs_restart = Vec::new();
    let (o, n) = (&old.config.server, &new.server);
    let mut restart_only = |key: &str, before: String, after: String| {
        if before != after {
            needs_restart.push(format!(
                "server.{key} ({before} -> {after}) applies after a restart"
            ));
        }
    };
    restart_only("listen", o.listen.to_string(), n.listen.to_string());
    restart_only(
        "admin_listen",
        o.admin_listen.to_string(),
        n.admin_listen.to_string(),
    );
    restart_only("threads", o.threads.to_string(), n.threads.to_string());
    restart_only("h2c", o.h2c.to_string(), n.h2c.to_string());
    let sock = |s: &Option<std::path::PathBuf>| {
        s.as_ref()
            .map_or_else(|| "unset".into(), |p| p.display().to_string())
    };
    restart_only("upgrade_sock", sock(&o.upgrade_sock), sock(&n.upgrade_sock));
    // The exporter is built once; the sampler is read per request and reloads.
    let (ot, nt) = (&old.config.trace, &new.trace);
    if ot.otlp_endpoint != nt.otlp_endpoint
        || ot.protocol != nt.protocol
        || ot.headers != nt.headers
        || ot.compression != nt.compression
        || ot.timeout != nt.timeout
        || ot.ca_file != nt.ca_file
        || ot.service_name != nt.service_name
        || ot.resource_attributes != nt.resource_attributes
    {
        needs_restart.push(
            "the span exporter's settings (trace.otlp_endpoint, protocol, headers, compression, timeout, ca_file, service_name, resource_attributes) apply after a restart".into(),
        );
    }
    for msg in &needs_restart {
        log::warn!("config reload: {msg}");
    }
    if let Err(e) = observer.apply(&new) {
        log::error!(
            "config reload: cannot open the new access log target ({e}); keeping the previous one"
        );
    }
    logger::apply(&new);
    let summary = config::summary(&new);
    let changed = what_changed(&old.config, &new);
    shared.install(new);
    metrics::config_reload(true);
    shared.note_reload(ReloadEvent {
        at_unix_ms: unix_ms(),
        result: "success",
        changed: changed.clone(),
        errors: Vec::new(),
        needs_restart: needs_restart.clone(),
    });
    let span = tracing::info_span!(
        "config.reload",
        event = "config_reloaded",
        config = %path.display(),
        summary = %summary,
        changed = %changed,
    );
    let _in = span.enter();
    tracing::info!("config reloaded from {}: {summary}", path.display());
    Ok(ReloadReport {
        summary,
        needs_restart,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sections a reload changed, by name (`routes, upstreams.agents`), or `nothing`.
fn what_changed(old: &config::Config, new: &config::Config) -> String {
    let (Ok(serde_json::Value::Object(o)), Ok(serde_json::Value::Object(n))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return "unknown".into();
    };
    let mut changed = Vec::new();
    for (key, value) in &n {
        match (o.get(key), value) {
            (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b))
                if key == "upstreams" =>
            {
                for (name, u) in b {
                    if a.get(name) != Some(u) {
                        changed.push(format!("upstreams.{name}"));
                    }
                }
                for name in a.keys().filter(|k| !b.contains_key(*k)) {
                    changed.push(format!("upstreams.{name} (removed)"));
                }
            }
            (before, after) if before != Some(after) => changed.push(key.clone()),
            _ => {}
        }
    }
    if changed.is_empty() {
        "nothing".into()
    } else {
        changed.join(", ")
    }
}

/// Reloads on SIGHUP.
pub struct ReloadOnHangup {
    pub shared: Arc<Shared>,
    pub observer: Arc<Observer>,
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only through POST /reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = hangup.recv() => {
                    let _ = reload(&self.shared, &self.observer);
                }
            }
        }
    }
}

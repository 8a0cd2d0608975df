//! Builds the pingora server from a validated config and runs it until a signal stops it.
//!
//! Shutdown: SIGTERM drains (readiness turns 503 at once, traffic is still served for
//! `grace_period`; then the listeners close, idle connections are closed and requests
//! still in flight get up to `grace_period` more to finish; exit 0); SIGINT stops at
//! once. SIGQUIT with `upgrade_sock` hands the listening sockets to a new process
//! started with `run --upgrade` (pingora's fd transfer), then drains the same way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::AdminApp;
use crate::config::Config;
use crate::observe::{logger, metrics};
use crate::proxy::deadlines::Deadlines;
use crate::proxy::refusals::Refusals;
use crate::proxy::Gateway;
use crate::proxy::Observer;
use crate::reload::watch::WatchConfig;
use crate::reload::ReloadOnHangup;
use crate::services::alerts::{instance_name, AlertEvaluator};
use crate::services::health::HealthService;
use crate::services::rate_limit_store::StoreProbe;
use crate::services::resolve::{resolve_at_start, ResolveBackends};
use crate::state::Shared;

/// Checks that the listen addresses are free before pingora binds them: pingora would
/// otherwise retry for 30 s and then fail with little context (and, with SO_REUSEPORT,
/// silently share a port another agentgate already serves).
/// The read buffer in front of each client connection. pingora's default is 64 KiB,
/// zeroed when it is allocated: a page a connection touches on a fresh heap, but all
/// sixteen once the memory is reused, for as long as the connection stays open, idle or
/// streaming. Plain HTTP/1.1 and h2c need none: pingora reads a request header into a
/// buffer of its own and bodies into another, one read each either way. TLS reads a
/// record header and then the record, so a listener with TLS at start keeps a buffer of
/// one record; a reload that turns TLS on later reads unbuffered (a read per record
/// header).
fn read_buffer(tls: bool) -> usize {
    if tls {
        TLS_RECORD_BYTES
    } else {
        0
    }
}

/// The largest TLS record: 16 KiB of plaintext, plus the overhead of its header,
/// padding and tag.
const TLS_RECORD_BYTES: usize = 16 * 1024 + 256;

/// What runs beside the listeners: checks, reloads, lookups, upkeep and alerts.
fn background_services(
    shared: &Arc<Shared>,
    observer: &Arc<Observer>,
    listen_port: u16,
) -> Vec<Box<dyn ServiceWithDependents>> {
    vec![
        Box::new(background_service(
            "health checks",
            HealthService::new(Arc::clone(shared)),
        )),
        Box::new(background_service(
            "reload on SIGHUP",
            ReloadOnHangup {
                shared: Arc::clone(shared),
                observer: Arc::clone(observer),
            },
        )),
        Box::new(background_service(
            "backends by name",
            ResolveBackends {
                shared: Arc::clone(shared),
            },
        )),
        Box::new(background_service(
            "config file watch",
            WatchConfig {
                shared: Arc::clone(shared),
                observer: Arc::clone(observer),
            },
        )),
        Box::new(background_service("metrics upkeep", MetricsUpkeep)),
        Box::new(background_service(
            "rate limit store probe",
            StoreProbe {
                shared: Arc::clone(shared),
            },
        )),
        Box::new(background_service(
            "alert evaluator",
            AlertEvaluator {
                shared: Arc::clone(shared),
                instance: instance_name(listen_port),
            },
        )),
    ]
}

fn check_addresses_free(config: &Config) -> Result<(), String> {
    for (key, addr) in [
        ("server.listen", config.server.listen),
        ("server.admin_listen", config.server.admin_listen),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process listens there: stop it or choose another address"
            } else {
                "check the address and the permissions to bind it"
            };
            return Err(format!(
                "{}: {key} {addr} cannot be bound ({e}); {hint}",
                config.path.display()
            ));
        }
    }
    Ok(())
}

/// How the process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Binds them itself.
    Fresh,
    /// Takes them from the running agentgate over `server.upgrade_sock`.
    Upgrade,
}

/// Runs the gateway (plus any `extra` services, e.g. the demo agents). Returns the exit code.
pub fn run(config: Config, start: Start, extra: Vec<Box<dyn ServiceWithDependents>>) -> i32 {
    let upgrade_sock = config
        .server
        .upgrade_sock
        .as_ref()
        .map(|p| p.display().to_string());
    match (start, &upgrade_sock) {
        (Start::Upgrade, None) => {
            eprintln!(
                "{}: run --upgrade takes the listeners over server.upgrade_sock, which is not set: set it to the path the running agentgate has",
                config.path.display()
            );
            return 2;
        }
        // The running process holds the addresses; they arrive over the socket.
        (Start::Upgrade, Some(_)) => {}
        (Start::Fresh, _) => {
            if let Err(message) = check_addresses_free(&config) {
                eprintln!("{message}");
                return 2;
            }
        }
    }
    let span_sink = match Observer::span_sink(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the span exporter: {e}");
            return 2;
        }
    };
    logger::init(&config, span_sink.clone());
    for w in &config.trace.env_warnings {
        tracing::warn!(event = "otel_env_ignored", warning = %w, "an OTEL_* environment value was ignored");
    }
    metrics::install();
    metrics::touch_process_series();
    let observer = match Observer::new(&config, span_sink) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{}: cannot open the access log: {e}", config.path.display());
            return 2;
        }
    };
    let threads = config.server.threads;
    let listen = config.server.listen;
    let admin_listen = config.server.admin_listen;
    let grace = config.server.grace_period;
    let header_timeout = config.server.header_timeout;
    let h2c = config.server.h2c;
    let tls_at_start = config.server.tls.is_some();
    let shared = Shared::new(config);
    resolve_at_start(&shared);

    let conf = ServerConf {
        threads,
        // Our shutdown watch waits out the grace period itself while still serving;
        // pingora's own grace sleep would stop accepting first.
        grace_period_seconds: Some(0),
        // Once the listeners close (after the SIGTERM drain, or after an upgrade's
        // hand-over) requests still in flight get the grace period to finish; idle
        // connections close at once.
        graceful_shutdown_timeout_seconds: Some(grace.as_secs_f64().ceil().max(1.0) as u64),
        upgrade_sock: upgrade_sock.clone().unwrap_or_default(),
        // `run --upgrade` waits this many seconds for the old process's SIGQUIT
        // hand-over (pingora's default is 5), long enough for a person or a unit file
        // to send it once the new process is up.
        upgrade_sock_connect_accept_max_retries: Some(30),
        // Tries per request are bounded by each upstream's `retries`; this is only a cap.
        max_retries: 16,
        // Every pingora timeout of a second or more (connect, the read of a new
        // connection's first request) goes on tokio's timer wheel. pingora's "fast"
        // timers need a clock thread that wakes every millisecond for the life of the
        // process, a standing tax on the cores that serve requests; the gateway's own
        // deadlines use neither (see `proxy::deadlines`).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        // Idle upstream connections kept for reuse. pingora's default of 128 is below
        // the concurrency one worker sees with a few hundred clients: every release past
        // it closes a connection the next request has to open again.
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    crate::alloc::start_purger();
    let opt = pingora::server::configuration::Opt {
        upgrade: start == Start::Upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let mut proxy_app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(Arc::clone(&shared), Arc::clone(&observer)),
    );
    // HTTP/2 over TLS is chosen by ALPN on each connection; cleartext HTTP/2 (prior
    // knowledge) is recognised by its preface when h2c is on.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = h2c;
    proxy_app.server_options = Some(options);
    let mut proxy = Service::new(
        "agentgate proxy".to_string(),
        Refusals::new(
            Deadlines::new(proxy_app, header_timeout),
            Arc::clone(&shared),
            Arc::clone(&observer),
        ),
    );
    proxy.add_listener(
        ListenerConfig::tcp(listen.to_string()).l4_buffer(L4BufferSettings::new(
            read_buffer(tls_at_start),
            pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE,
        )),
    );
    server.add_service(proxy);

    let mut admin = Service::new(
        "agentgate admin".to_string(),
        AdminApp {
            shared: Arc::clone(&shared),
            observer: Arc::clone(&observer),
            started_unix_ms: crate::admin::overview::unix_ms(),
        },
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    let beside = background_services(&shared, &observer, listen.port());
    for service in beside.into_iter().chain(extra) {
        server.add_boxed_service(service);
    }

    {
        let span = tracing::info_span!(
            "agentgate.start",
            event = "started",
            version = crate::VERSION,
            listen = %listen,
            admin = %admin_listen,
            config = %shared.runtime.load().config.path.display(),
        );
        let _in = span.enter();
        tracing::info!(
            "agentgate {} serving on {listen}, admin on {admin_listen}",
            crate::VERSION
        );
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainThenStop {
            shared: Arc::clone(&shared),
            grace,
            can_upgrade: upgrade_sock.is_some(),
        }),
    });
    log::info!("agentgate stopped");
    observer.flush();
    logger::flush();
    0
}

/// SIGTERM: drain for the grace period, then stop. SIGINT: stop now. SIGQUIT: hand the
/// listeners over to a new process (when `upgrade_sock` is set).
struct DrainThenStop {
    shared: Arc<Shared>,
    grace: Duration,
    can_upgrade: bool,
}

#[async_trait]
impl ShutdownSignalWatch for DrainThenStop {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot listen for SIGTERM/SIGINT/SIGQUIT; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if !self.can_upgrade {
                        log::warn!("SIGQUIT ignored: it hands the listeners to a new process started with `run --upgrade`, and server.upgrade_sock is not set");
                        continue;
                    }
                    self.shared.start_drain();
                    log::info!("SIGQUIT: handing the listeners to the new process; this one stops accepting and drains for up to {:?}", self.grace);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    log::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = term.recv() => {
                    self.shared.start_drain();
                    log::info!("SIGTERM: draining for {:?} (readyz now answers 503; requests are still served)", self.grace);
                    tokio::select! {
                        _ = tokio::time::sleep(self.grace) => {}
                        _ = int.recv() => log::info!("SIGINT during drain: stopping now"),
                    }
                    log::info!("drain over: stopping");
                    return ShutdownSignal::GracefulTerminate;
                }
            }
        }
    }
}

/// Drains histogram samples into buckets every few seconds so memory stays flat between
/// scrapes.
struct MetricsUpkeep;

#[async_trait]
impl BackgroundService for MetricsUpkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    metrics::upkeep();
                    // Follow wall-clock steps in span and log timestamps.
                    crate::clock::sync_wall();
                }
            }
        }
    }
}

//! What the telemetry writes about each route and backend of one config, made once per
//! config so the hot path only copies it: metric handles, OTLP attributes encoded as
//! protobuf, and names escaped for the access log. The runtime built from a config
//! holds one [`Telemetry`], so a request reads the entries of the config it started on
//! even across a reload; a new span attribute or log field is a change here alone.

use std::sync::Arc;

use crate::config::Config;
use crate::observe::json::LogName;
use crate::observe::metrics::{AiMetrics, BackendMetrics, RouteMetrics};
use crate::observe::otlp::{self, PrebuiltValue};

/// The telemetry entries of one config (same order as its routes and upstreams).
pub struct Telemetry {
    pub routes: Vec<RouteTelemetry>,
    pub upstreams: Vec<UpstreamTelemetry>,
    /// Requests no route matched (route="unmatched").
    pub unmatched: RouteTelemetry,
}

/// A route's metric handles, span attributes and log name.
pub struct RouteTelemetry {
    pub metrics: RouteMetrics,
    /// `http.route`, `agentgate.route`, `agentgate.upstream` (empty when unmatched).
    pub span_attrs: Vec<u8>,
    /// The route's name for the access log, escaped once.
    pub log_name: LogName,
    /// Token and time-to-first-token handles, on routes with `[routes.ai]`.
    pub ai: Option<AiMetrics>,
}

/// An upstream's log name and its backends' entries (same order as its backends).
pub struct UpstreamTelemetry {
    pub log_name: LogName,
    pub backends: Vec<BackendTelemetry>,
}

/// What metrics, spans and the access log say about one backend.
pub struct BackendTelemetry {
    pub metrics: BackendMetrics,
    /// `agentgate.backend` for the server span.
    pub span_backend: Vec<u8>,
    /// `server.address` and `server.port` for the client span.
    pub span_address_port: Vec<u8>,
    /// `http://IP:PORT`, the start of the client span's `url.full`.
    pub origin: Arc<str>,
    /// The backend's label for the access log, escaped once.
    pub log_name: LogName,
}

impl Telemetry {
    pub fn build(config: &Config) -> Telemetry {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let upstream = &config.upstreams[r.upstream].name;
                RouteTelemetry {
                    metrics: RouteMetrics::new(&r.name, Some(upstream)),
                    span_attrs: otlp::prebuilt(&[
                        ("http.route", PrebuiltValue::Str(&r.path_prefix)),
                        ("agentgate.route", PrebuiltValue::Str(&r.name)),
                        ("agentgate.upstream", PrebuiltValue::Str(upstream)),
                    ]),
                    log_name: LogName::new(&r.name),
                    ai: r.ai.as_ref().map(|a| AiMetrics::new(&r.name, &a.models)),
                }
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| UpstreamTelemetry {
                log_name: LogName::new(&u.name),
                backends: u
                    .backends
                    .iter()
                    .map(|addr| {
                        // The balancer labels a backend by its address the same way.
                        let label = addr.label();
                        let addr = addr.addr;
                        BackendTelemetry {
                            metrics: BackendMetrics::new(&u.name, &label),
                            span_backend: otlp::prebuilt(&[(
                                "agentgate.backend",
                                PrebuiltValue::Str(&label),
                            )]),
                            span_address_port: otlp::prebuilt(&[
                                ("server.address", PrebuiltValue::Str(&addr.ip().to_string())),
                                ("server.port", PrebuiltValue::Int(addr.port() as i64)),
                            ]),
                            origin: Arc::from(format!(
                                "{}://{addr}",
                                if u.tls.is_some() { "https" } else { "http" }
                            )),
                            log_name: LogName::new(&label),
                        }
                    })
                    .collect(),
            })
            .collect();
        Telemetry {
            routes,
            upstreams,
            unmatched: RouteTelemetry {
                metrics: RouteMetrics::new("unmatched", None),
                span_attrs: Vec::new(),
                log_name: LogName::new("unmatched"),
                ai: None,
            },
        }
    }
}

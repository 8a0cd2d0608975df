//! The admin listener (SPEC §4): /healthz, /readyz, /metrics, /alerts, /config and
//! /reload on a separate port, loopback by default, and the live admin page (`/`, with
//! the JSON it polls at `/api/overview`).

pub mod overview;
pub mod page;

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::redacted::redacted_config;
use crate::observe::metrics;
use crate::proxy::Observer;
use crate::reload;
use crate::state::Shared;

pub struct AdminApp {
    pub shared: Arc<Shared>,
    pub observer: Arc<Observer>,
    /// When the process started serving (unix ms), for the page's uptime.
    pub started_unix_ms: u64,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

fn admin_error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        json!({"error": {"code": code, "message": message, "request_id": ""}}),
    )
}

/// The admin page, gzip-compressed when the client takes it.
fn admin_page(session: &ServerSession) -> Response<Vec<u8>> {
    let page = page::page();
    let gzip = !page.gzip.is_empty()
        && session
            .req_header()
            .headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|c| c.trim().starts_with("gzip")));
    let body = if gzip {
        page.gzip.clone()
    } else {
        page.plain.to_vec()
    };
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", body.len())
        .header("cache-control", "no-cache")
        .header("vary", "accept-encoding")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("content-security-policy", page.csp.as_str());
    if gzip {
        builder = builder.header("content-encoding", "gzip");
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> bool {
        let runtime = self.shared.runtime.load();
        let Some(token) = &runtime.config.server.admin_token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time: the comparison does not reveal how much of the token matched.
        presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
    }

    fn readiness(&self) -> Response<Vec<u8>> {
        let runtime = self.shared.runtime.load_full();
        let mut problems = Vec::new();
        if self.shared.is_draining() {
            problems.push(json!({"reason": "draining", "message": "shutdown under way: finishing open requests"}));
        }
        // Upstreams without a healthy backend are listed; they make the gateway unready
        // only when the config asks for it: otherwise every replica would leave service
        // at once when the agents are down, and clients would get connection errors
        // instead of the JSON 503 each replica answers.
        let requires_backends = runtime.config.server.ready_requires_backends;
        let mut upstreams = serde_json::Map::new();
        let mut without_backends = Vec::new();
        for u in &runtime.upstreams {
            let healthy = u.pool.healthy_count();
            upstreams.insert(
                u.pool.config.name.clone(),
                json!({"healthy_backends": healthy, "backends": u.pool.backends.len()}),
            );
            if healthy == 0 {
                without_backends.push(u.pool.config.name.clone());
                if requires_backends {
                    problems.push(
                        json!({"reason": "no_healthy_backend", "upstream": u.pool.config.name}),
                    );
                }
            }
        }
        let ready = problems.is_empty();
        json_response(
            if ready { 200 } else { 503 },
            json!({"ready": ready, "draining": self.shared.is_draining(), "upstreams": upstreams,
                   "upstreams_without_healthy_backend": without_backends, "problems": problems,
                   // Span export never makes the gateway unready: a collector outage must
                   // not take traffic away.
                   "span_export": self.observer.export_status()}),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // The orchestrator's probes carry no secrets (SPEC 7.3).
        if path == "/healthz" {
            return json_response(200, json!({"status": "ok"}));
        }
        if path == "/readyz" && method == http::Method::GET {
            return self.readiness();
        }
        // The page carries no data: the JSON it reads asks for the token.
        if path == "/" && method == http::Method::GET {
            return admin_page(session);
        }
        if !self.authorized(session) {
            return admin_error(
                401,
                "unauthorized",
                "this admin endpoint needs `Authorization: Bearer <admin_token>`",
            );
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                // Prometheus asks for OpenMetrics (which carries exemplars) first when
                // its exemplar storage is on; everyone else gets the text format.
                let openmetrics = session
                    .req_header()
                    .headers
                    .get_all(http::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let (content_type, body) = if openmetrics {
                    (metrics::OPENMETRICS_CONTENT_TYPE, metrics::render(true))
                } else {
                    (
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics::render(false),
                    )
                };
                respond(200, content_type, body.into_bytes())
            }
            ("GET", "/config") => {
                let runtime = self.shared.runtime.load_full();
                json_response(200, redacted_config(&runtime.config))
            }
            ("GET", "/alerts") => json_response(200, self.shared.alerts_json()),
            ("GET", "/api/overview") => json_response(
                200,
                overview::overview(&self.shared, self.started_unix_ms),
            ),
            ("POST", "/reload") => match reload::reload(&self.shared, &self.observer) {
                Ok(report) => json_response(
                    200,
                    json!({"result": "success", "summary": report.summary, "needs_restart": report.needs_restart}),
                ),
                Err(errors) => json_response(
                    422,
                    json!({"result": "failure", "message": "the new config is invalid; the previous config is still serving",
                           "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
                ),
            },
            (_, "/" | "/readyz" | "/metrics" | "/config" | "/alerts" | "/reload" | "/api/overview") => admin_error(
                405,
                "method_not_allowed",
                "wrong method for this admin endpoint",
            ),
            _ => admin_error(
                404,
                "not_found",
                "admin endpoints: / (the admin page) /healthz /readyz /metrics /alerts /config /reload /api/overview",
            ),
        }
    }
}

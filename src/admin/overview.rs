//! The admin page's data: one JSON document (`GET /api/overview`) that the page polls
//! each second, read from the live state: each route's one-minute window (the rings the
//! alerts keep), each backend's health, ejection, in-flight and request count, the
//! alerts, the latest reloads and a summary of the config in force. Reading it costs
//! the requests nothing: the rings and counters are only loaded.

use serde_json::{json, Value};

use crate::alerts::window::{quantile, Ring, WindowSums, PAGE_SECONDS};
use crate::clock::now_ms;
use crate::config::redacted::redact_url;
use crate::state::{Runtime, Shared};

/// Seconds the current rate is averaged over.
const RATE_SECONDS: u64 = 10;

/// Seconds to milliseconds, rounded to microseconds (a readable JSON number).
fn ms(seconds: Option<f64>) -> Value {
    seconds.map_or(Value::Null, |s| json!((s * 1e6).round() / 1e3))
}

fn ratio(part: u64, total: u64) -> Value {
    if total == 0 {
        Value::Null
    } else {
        json!(((part as f64 / total as f64) * 1e6).round() / 1e6)
    }
}

/// One route: rates and percentiles over the last minute, and a value a second for the
/// sparklines (oldest first; the last one is the second under way).
fn route_json(runtime: &Runtime, index: usize, ring: &Ring, now_s: u64) -> Value {
    let route = &runtime.routes[index].route;
    let ai = route.ai.is_some();
    let minute = ring.sum(now_s, PAGE_SECONDS);
    // The second under way is still filling: the rate reads the whole seconds before it.
    let recent = ring.sum(now_s.saturating_sub(1), RATE_SECONDS);
    let seconds = ring.per_second(now_s, PAGE_SECONDS);
    let spark = |f: &dyn Fn(&WindowSums) -> Value| seconds.iter().map(f).collect::<Vec<_>>();
    let mut out = json!({
        "name": route.name,
        "path_prefix": route.path_prefix,
        "upstream": runtime.upstreams[route.upstream].pool.config.name,
        "ai": ai,
        "requests_per_second": (recent.total as f64 / RATE_SECONDS as f64 * 1e3).round() / 1e3,
        "requests_last_minute": minute.total,
        "errors_last_minute": minute.errors,
        "error_ratio": ratio(minute.errors, minute.total),
        "latency_p50_ms": ms(quantile(0.5, &minute.latency)),
        "latency_p99_ms": ms(quantile(0.99, &minute.latency)),
        "spark": {
            "requests": spark(&|s| json!(s.total)),
            "errors": spark(&|s| json!(s.errors)),
            "latency_p99_ms": spark(&|s| ms(quantile(0.99, &s.latency))),
        },
    });
    if ai {
        out["ttft_p50_ms"] = ms(quantile(0.5, &minute.ttft));
        out["ttft_p99_ms"] = ms(quantile(0.99, &minute.ttft));
        out["tokens_per_second"] =
            json!((minute.tokens as f64 / PAGE_SECONDS as f64 * 1e3).round() / 1e3);
        out["tokens_last_minute"] = json!(minute.tokens);
        out["spark"]["tokens"] = json!(spark(&|s| json!(s.tokens)));
        out["spark"]["ttft_p99_ms"] = json!(spark(&|s| ms(quantile(0.99, &s.ttft))));
    }
    out
}

fn upstreams_json(runtime: &Runtime) -> Vec<Value> {
    let now = now_ms();
    runtime
        .upstreams
        .iter()
        .map(|u| {
            let backends: Vec<Value> = u
                .pool
                .backends
                .iter()
                .map(|b| {
                    let ejected = b.is_ejected(now);
                    let health = if !b.is_active_healthy() {
                        "unhealthy"
                    } else if ejected {
                        "ejected"
                    } else {
                        "healthy"
                    };
                    json!({
                        "name": b.label,
                        "health": health,
                        "active_check_healthy": b.is_active_healthy(),
                        "ejected_for_ms": if ejected { b.ejected_until_ms().saturating_sub(now) } else { 0 },
                        "in_flight": b.in_flight(),
                        "requests": b.requests(),
                    })
                })
                .collect();
            json!({
                "name": u.pool.config.name,
                "balance": <&'static str>::from(u.pool.config.balance),
                "healthy_backends": u.pool.healthy_count(),
                // The concurrency cap in force and the slots taken, when there is one.
                "concurrency_limit": u.limit.as_ref().map(|l| l.limit()),
                "concurrency_in_flight": u.limit.as_ref().map(|l| l.in_flight()),
                "backends": backends,
            })
        })
        .collect()
}

/// The whole document.
pub fn overview(shared: &Shared, started_unix_ms: u64) -> Value {
    let runtime = shared.runtime.load_full();
    let now_s = now_ms() / 1000;
    // In the file's order (the runtime keeps them longest prefix first, for matching).
    let mut order: Vec<usize> = (0..runtime.routes.len()).collect();
    order.sort_by_key(|&i| runtime.routes[i].route.index);
    let routes: Vec<Value> = order
        .into_iter()
        .filter_map(|i| Some(route_json(&runtime, i, runtime.windows.route(i)?, now_s)))
        .collect();
    let config = &runtime.config;
    json!({
        "version": crate::VERSION,
        "started_unix_ms": started_unix_ms,
        "now_unix_ms": unix_ms(),
        "draining": shared.is_draining(),
        "refresh_ms": 1000,
        "routes": routes,
        "upstreams": upstreams_json(&runtime),
        "alerts": shared.alerts_json()["alerts"],
        "reloads": shared.reloads(),
        "config": {
            "path": config.path.display().to_string(),
            "summary": crate::config::summary(config),
            "listen": config.server.listen.to_string(),
            "tls": config.server.tls.is_some(),
            "admin_token": config.server.admin_token.is_some(),
            "otlp_endpoint": config.trace.otlp_endpoint.as_deref().map(redact_url),
            "sample_ratio": config.trace.sample_ratio,
            "rate_limit_store": config.rate_limit_store.is_some(),
        },
    })
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

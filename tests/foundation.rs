//! Foundation: routing, forwarding headers, balancing modes, health checks, retries,
//! gateway errors, streaming pass-through.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

fn upstream(name: &str, backends: &[String], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[upstreams.{name}]\nbackends = [{list}]\n{extra}\n")
}

fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n"
    )
}

/// Upstream `u` over `backends` (with `extra` settings) and one route sending `/` to it.
fn one_route(backends: &[String], extra: &str) -> String {
    format!("{}{}", upstream("u", backends, extra), route("r", "/", "u"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_answers_404_as_json() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let body = format!(
        "{}{}{}{}",
        upstream("ua", &[a.addr.to_string()], ""),
        upstream("ub", &[b.addr.to_string()], ""),
        route("short", "/v1", "ua"),
        route("long", "/v1/conversations", "ub"),
    );
    let gw = Gateway::start("", &body);
    let c = client();

    let r = c.get(gw.url("/v1/conversations/7")).send().await.unwrap();
    assert_eq!(r.headers()["x-backend"], "b");
    let r = c.get(gw.url("/v1/other")).send().await.unwrap();
    assert_eq!(r.headers()["x-backend"], "a");
    // segment boundary: /v1/conversationsX is not under /v1/conversations
    let r = c.get(gw.url("/v1/conversationsX")).send().await.unwrap();
    assert_eq!(r.headers()["x-backend"], "a");
    // the Host header never picks an upstream
    let r = c
        .get(gw.url("/v1/conversations"))
        .header("host", "ua")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "b");

    let r = c.get(gw.url("/nothing/here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("server-timing"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "route_not_found");
    assert_eq!(v["error"]["request_id"], id);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nothing/here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_headers_and_strips_hop_by_hop() {
    let a = Backend::start("a").await;
    let body = one_route(&[a.addr.to_string()], "");
    let gw = Gateway::start("", &body);
    let r = client()
        .get(gw.url("/echo?q=1"))
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .header("trailer", "x-checksum")
        .header("proxy-connection", "keep-alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let v: serde_json::Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], "client-id-123");
    // not a trusted proxy: its x-forwarded-for is replaced, never believed
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("x-private-hop").is_none(),
        "connection-nominated header leaked: {h}"
    );
    // (`TE: trailers` alone is forwarded: tests/upstream_protocols.rs.)
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "proxy-authorization",
        "http2-settings",
        "trailer",
        "proxy-connection",
    ] {
        assert!(
            h.get(hop).is_none(),
            "hop-by-hop {hop} reached the agent: {h}"
        );
    }
    let tp = h["traceparent"].as_str().unwrap();
    assert_eq!(tp.len(), 55);
    assert_eq!(v["target"], "/echo?q=1");
}

async fn spread(gw: &Gateway, n: usize) -> std::collections::HashMap<String, usize> {
    let c = client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        *counts
            .entry(r.headers()["x-backend"].to_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_random_spread_over_three_backends() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<String> = bs.iter().map(|b| b.addr.to_string()).collect();
    let gw = Gateway::start("", &one_route(&addrs, "balance = \"round_robin\""));
    let counts = spread(&gw, 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 10),
        "round robin is exact: {counts:?}"
    );
    drop(gw);

    let gw = Gateway::start("", &one_route(&addrs, "balance = \"random\""));
    let counts = spread(&gw, 90).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| *n >= 10),
        "random reaches every backend: {counts:?}"
    );
}

/// One slow backend: least_in_flight steers new requests away from it, where round
/// robin keeps sending it a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_avoids_a_backend_holding_slow_requests() {
    let slow = Backend::start("slow").await;
    slow.set_delay(Duration::from_millis(400));
    let fast1 = Backend::start("fast1").await;
    let fast2 = Backend::start("fast2").await;
    let addrs = vec![
        slow.addr.to_string(),
        fast1.addr.to_string(),
        fast2.addr.to_string(),
    ];
    let gw = Gateway::start("", &one_route(&addrs, "balance = \"least_in_flight\""));
    let c = client();
    let total = 120;
    let started = Instant::now();
    let results = futures_util::stream::iter(0..total)
        .map(|_| {
            let c = c.clone();
            let url = gw.url("/x");
            async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
        })
        .buffer_unordered(12)
        .collect::<Vec<_>>()
        .await;
    assert!(results.iter().all(|r| matches!(r, Ok(200))), "{results:?}");
    let to_slow = slow.targets().iter().filter(|t| *t == "/x").count();
    assert!(
        to_slow * 100 / total < 20,
        "slow backend got {to_slow} of {total} (round robin would give a third)"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_remove_a_dead_backend_and_bring_it_back() {
    let mut agents = [
        DemoAgent::start("agent-1", "10ms"),
        DemoAgent::start("agent-2", "10ms"),
        DemoAgent::start("agent-3", "10ms"),
    ];
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.to_string()).collect();
    let health = "balance = \"round_robin\"\n[upstreams.agents.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nunhealthy_after = 2\nhealthy_after = 1\neject_after = 0\n";
    let gw = Gateway::start(
        "",
        &format!(
            "{}{}",
            upstream("agents", &addrs, health),
            route("r", "/", "agents")
        ),
    );
    let c = client();
    let healthy = |c: reqwest::Client, url: String| async move {
        let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
        v["upstreams"]["agents"]["healthy_backends"].as_u64()
    };
    assert_eq!(healthy(c.clone(), gw.admin_url("/readyz")).await, Some(3));

    agents[1].kill();
    let killed_at = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the dead agent to be marked unhealthy",
        || {
            let (c, url) = (c.clone(), gw.admin_url("/readyz"));
            async move { (healthy(c, url).await == Some(2)).then_some(()) }
        },
    )
    .await;
    // interval x unhealthy_after = 400ms, plus one interval of phase and check time
    assert!(
        killed_at.elapsed() < Duration::from_millis(400 + 1100),
        "took {:?}",
        killed_at.elapsed()
    );
    for _ in 0..20 {
        let r = c
            .get(gw.url("/v1/conversations?limit=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_ne!(r.headers()["x-agent-instance"], "agent-2");
    }

    agents[1].restart();
    wait_for(Duration::from_secs(5), "the agent to come back", || {
        let (c, url) = (c.clone(), gw.admin_url("/readyz"));
        async move { (healthy(c, url).await == Some(3)).then_some(()) }
    })
    .await;
    let mut seen = false;
    for _ in 0..12 {
        let r = c
            .get(gw.url("/v1/conversations?limit=1"))
            .send()
            .await
            .unwrap();
        seen |= r.headers()["x-agent-instance"] == "agent-2";
    }
    assert!(seen, "the recovered agent gets traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend() {
    let live = Backend::start("live").await;
    let dead = free_addr();
    let extra = "balance = \"round_robin\"\nretries = 1\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0\n";
    let gw = Gateway::start(
        "",
        &one_route(&[dead.to_string(), live.addr.to_string()], extra),
    );
    let c = client();
    for _ in 0..10 {
        let r = c
            .post(gw.url("/x"))
            .body("not idempotent, still safe: never reached the agent")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(live.targets().iter().filter(|t| *t == "/x").count(), 10);
    let m = gw.metrics().await;
    assert!(metric_value(&m, "agentgate_upstream_retries_total", &[("upstream", "u")]) >= 5.0);
    assert!(
        metric_value(
            &m,
            "agentgate_upstream_requests_total",
            &[("outcome", "connect_error")]
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_try_failing_is_502_and_no_healthy_backend_is_503() {
    let dead = [free_addr().to_string(), free_addr().to_string()];
    // health checks too slow to notice: the tries themselves fail
    let slow_checks = "retries = 1\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0\n";
    let gw = Gateway::start("", &one_route(&dead, slow_checks));
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    drop(gw);

    let fast_checks =
        "[upstreams.u.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1\n";
    let gw = Gateway::start("", &one_route(&dead, fast_checks));
    let c = client();
    // The upstream is listed, but the gateway stays ready: it answers the JSON 503.
    let v = wait_for(
        Duration::from_secs(5),
        "readyz to list the upstream without a healthy backend",
        || {
            let (c, url) = (c.clone(), gw.admin_url("/readyz"));
            async move {
                let r = c.get(url).send().await.ok()?;
                let status = r.status();
                let v: serde_json::Value = r.json().await.ok()?;
                (v["upstreams_without_healthy_backend"][0] == "u").then_some((status, v))
            }
        },
    )
    .await;
    assert_eq!(v.0, 200, "{}", v.1);
    assert_eq!(v.1["ready"], true);
    let r = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_healthy_backend");
    drop(gw);

    // ready_requires_backends = true: the old meaning, 503 while an upstream has none.
    let gw = Gateway::start(
        "ready_requires_backends = true",
        &one_route(&dead, fast_checks),
    );
    wait_for(Duration::from_secs(5), "readyz to turn 503", || {
        let (c, url) = (c.clone(), gw.admin_url("/readyz"));
        async move { (c.get(url).send().await.ok()?.status() == 503).then_some(()) }
    })
    .await;
    let v = get_json(&c, gw.admin_url("/readyz")).await;
    assert_eq!(v["problems"][0]["reason"], "no_healthy_backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_504() {
    let b = Backend::start("b").await;
    let extra = "first_byte_timeout = \"500ms\"\nidle_timeout = \"500ms\"\nretries = 0\n";
    let gw = Gateway::start("", &one_route(&[b.addr.to_string()], extra));
    let started = Instant::now();
    let r = client().get(gw.url("/hang")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_streams_chunk_by_chunk() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &one_route(&[b.addr.to_string()], ""));
    let r = client()
        .get(gw.url("/chunked/50/5/200"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut total = 0;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
        arrivals.push(Instant::now());
    }
    assert_eq!(total, 50);
    assert!(
        arrivals.len() >= 5,
        "chunks were merged: {} arrivals",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(700),
        "first to last chunk {spread:?}: buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_millisecond_clock_thread_runs_beside_the_workers() {
    // pingora's fast timers start a thread that wakes every millisecond for good; the
    // gateway keeps its timeouts off them, so serving traffic must not start it.
    let a = Backend::start("a").await;
    let body = one_route(&[a.addr.to_string()], "");
    let gw = Gateway::start("", &body);
    for _ in 0..5 {
        // a fresh client each time: new downstream and upstream connections
        let r = client().get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let pid = gw.child.as_ref().unwrap().id();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("agentgate-dead")),
        "the deadline sweeper runs: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "Timer thread"),
        "pingora's clock thread started: {names:?}"
    );
}

//! Streaming and resilience: SSE pass-through timing, cancellation on client disconnect,
//! first-byte and idle timeouts, passive ejection, hot reload and graceful drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

fn one_upstream(backends: &[String], upstream_extra: &str, routes_extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[upstreams.u]\nbackends = [{list}]\n{upstream_extra}\n\n[[routes]]\nname = \"agents\"\npath_prefix = \"/\"\nupstream = \"u\"\n{routes_extra}\n"
    )
}

const QUIET_HEALTH: &str = "[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0\n";

/// Reads an SSE body, returning each event's arrival time.
async fn read_events(resp: reqwest::Response) -> (Vec<Instant>, String, bool) {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut arrivals = Vec::new();
    let mut broken = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                buf.push_str(&String::from_utf8_lossy(&bytes));
                let now = Instant::now();
                let events = buf.matches("\n\n").count();
                while arrivals.len() < events {
                    arrivals.push(now);
                }
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    (arrivals, buf, broken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_with_their_spacing() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], QUIET_HEALTH, ""));
    let r = client().get(gw.url("/sse/20/100")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(
        r.headers().get("content-encoding").is_none(),
        "never compressed"
    );
    let (arrivals, body, broken) = read_events(r).await;
    assert!(!broken);
    assert_eq!(arrivals.len(), 20, "{body}");
    let gaps: Vec<u128> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // no batching: every gap is close to the 100 ms the agent waited
    assert!(
        gaps.iter().all(|g| (60..=250).contains(g)),
        "gaps between events: {gaps:?}"
    );
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["status"], 200);
    assert!(log[0]["duration_ms"].as_f64().unwrap() >= 1800.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_request() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], QUIET_HEALTH, ""));
    let c = client();
    let r = c.get(gw.url("/sse/1000/50")).send().await.unwrap();
    let mut stream = r.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        seen += String::from_utf8_lossy(&stream.next().await.unwrap().unwrap())
            .matches("\n\n")
            .count();
    }
    wait_for(
        Duration::from_secs(2),
        "the upstream stream to be open",
        || {
            let open = b
                .stats
                .open_connections
                .load(std::sync::atomic::Ordering::SeqCst);
            async move { (open >= 1).then_some(()) }
        },
    )
    .await;
    let closed_before = b
        .stats
        .connections_closed
        .load(std::sync::atomic::Ordering::SeqCst);
    drop(stream);
    drop(c);
    let left = Instant::now();
    wait_for(
        Duration::from_secs(1),
        "the agent's connection to close after the client left",
        || {
            let closed = b
                .stats
                .connections_closed
                .load(std::sync::atomic::Ordering::SeqCst);
            async move { (closed > closed_before).then_some(()) }
        },
    )
    .await;
    assert!(left.elapsed() < Duration::from_secs(1));
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["error"], "client_disconnected");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_streams_cancelled_total",
            &[("route", "agents")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, "agentgate_streams_active", &[("route", "agents")]),
        0.0
    );
    assert!(
        !gw.wait_stderr("client closed a stream after").is_empty(),
        "cancellation is logged with how long the stream ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_fires_at_its_time_and_not_before() {
    let b = Backend::start("b").await;
    let extra =
        format!("first_byte_timeout = \"1s\"\nidle_timeout = \"5s\"\nretries = 0\n{QUIET_HEALTH}");
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], &extra, ""));
    let c = client();
    let r = c.get(gw.url("/think/600")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a think shorter than first_byte_timeout is fine"
    );
    let started = Instant::now();
    let r = c.get(gw.url("/think/3000")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("first_byte_timeout"));
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_a_silent_stream_and_not_before() {
    let b = Backend::start("b").await;
    let extra = format!(
        "first_byte_timeout = \"5s\"\nidle_timeout = \"600ms\"\nretries = 0\n{QUIET_HEALTH}"
    );
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], &extra, ""));
    let c = client();
    // a long think before the first byte is governed by first_byte_timeout, not idle
    assert_eq!(
        c.get(gw.url("/think/1200")).send().await.unwrap().status(),
        200
    );
    // silence shorter than idle_timeout: the stream completes
    let (_, body, broken) = read_events(c.get(gw.url("/silent/300")).send().await.unwrap()).await;
    assert!(!broken && body.contains("late"), "{body}");
    // silence longer than idle_timeout: cut after about idle_timeout
    let started = Instant::now();
    let (arrivals, body, broken) =
        read_events(c.get(gw.url("/silent/3000")).send().await.unwrap()).await;
    let took = started.elapsed();
    assert!(
        broken,
        "the stream must end as broken, not complete: {body}"
    );
    assert_eq!(arrivals.len(), 1);
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let log = gw.wait_access_log(3);
    assert_eq!(log[2]["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_returns() {
    let good = Backend::start("good").await;
    let sick = Backend::start("sick").await;
    sick.set_fail_status(503);
    let extra = "balance = \"round_robin\"\nretries = 0\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 3\neject_for = \"1500ms\"\n";
    let gw = Gateway::start(
        "",
        &one_upstream(&[good.addr.to_string(), sick.addr.to_string()], extra, ""),
    );
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(c.get(gw.url("/x")).send().await.unwrap().status().as_u16());
    }
    let sick_hits = sick.targets().iter().filter(|t| *t == "/x").count();
    assert_eq!(
        sick_hits, 3,
        "ejected after eject_after failures: {statuses:?}"
    );
    let ejected_at = Instant::now();
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_ejections_total",
            &[("backend", &sick.addr.to_string())]
        ),
        1.0
    );
    wait_for(
        Duration::from_secs(2),
        "the ejection to show in metrics",
        || {
            let (c, url, label) = (c.clone(), gw.admin_url("/metrics"), sick.addr.to_string());
            async move {
                let m = parse_metrics(&c.get(url).send().await.ok()?.text().await.ok()?);
                (metric_value(
                    &m,
                    "agentgate_upstream_backend_healthy",
                    &[("backend", &label)],
                ) == 0.0)
                    .then_some(())
            }
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert!(
        ejected_at.elapsed() < Duration::from_millis(1500),
        "the check above ran inside eject_for"
    );
    // after eject_for the backend gets traffic again
    sick.set_fail_status(0);
    wait_for(
        Duration::from_secs(4),
        "the ejected backend to get traffic again",
        || {
            let (c, url) = (c.clone(), gw.url("/x"));
            let before = sick.targets().len();
            let sick_stats = std::sync::Arc::clone(&sick.stats);
            async move {
                c.get(url).send().await.ok()?;
                (sick_stats.targets.lock().unwrap().len() > before).then_some(())
            }
        },
    )
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(1400));
    assert!(!gw.wait_stderr("ejected for").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_healthy_backend_is_never_ejected() {
    let sick = Backend::start("sick").await;
    sick.set_fail_status(500);
    let extra = "retries = 0\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 2\neject_for = \"30s\"\n";
    let gw = Gateway::start("", &one_upstream(&[sick.addr.to_string()], extra, ""));
    let c = client();
    for _ in 0..10 {
        // the agent's own 500 reaches the client; no 503 storm from an empty pool
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 500);
    }
    const KEPT: &str = "is the last healthy backend";
    gw.wait_stderr(KEPT);
    // Logged once per spell; every failure past eject_after (the 2nd to the 10th) counted.
    const METRIC: &str = "agentgate_upstream_last_backend_kept_total";
    let text = gw
        .metrics_text_when(METRIC, &[("upstream", "u")], 9.0)
        .await;
    assert_eq!(
        metric_value(&parse_metrics(&text), METRIC, &[("upstream", "u")]),
        9.0
    );
    assert_eq!(gw.stderr().matches(KEPT).count(), 1, "{}", gw.stderr());
    // A success ends the spell; the next one is logged again.
    sick.set_fail_status(0);
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    sick.set_fail_status(500);
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 500);
    }
    wait_until(
        Duration::from_secs(5),
        "the second spell in the log",
        || (gw.stderr().matches(KEPT).count() == 2).then_some(()),
    );
}

async fn steady_load(
    gw_url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u32, Vec<u16>) {
    let c = client();
    let mut ok = 0;
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        match c.get(&gw_url).send().await {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failures.push(r.status().as_u16()),
            Err(_) => failures.push(0),
        }
    }
    (ok, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_nothing_and_keeps_open_streams() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], QUIET_HEALTH, ""));
    let c = client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(gw.url("/echo"), stop.clone()));
    let stream = tokio::spawn({
        let r = c.get(gw.url("/sse/20/100")).send().await.unwrap();
        async move { read_events(r).await }
    });
    // The reload lands with the stream open and the load well under way.
    wait_until(
        Duration::from_secs(5),
        "the stream and the load to reach the agent",
        || {
            let targets = b.targets();
            let load = targets.iter().filter(|t| *t == "/echo").count();
            (targets.iter().any(|t| t == "/sse/20/100") && load >= 20).then_some(())
        },
    );

    // a new route and a rate limit on the old one
    let new = gw.config_text().replace(
        "upstream = \"u\"\n",
        "upstream = \"u\"\n[routes.rate_limit]\nrequests_per_second = 10000.0\nburst = 10000\n\n[[routes]]\nname = \"fresh\"\npath_prefix = \"/fresh\"\nupstream = \"u\"\n",
    );
    gw.rewrite_config(&new);
    let (status, v) = gw.reload_as(None).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"], "success");
    let r = c.get(gw.url("/fresh/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !r.headers().contains_key("ratelimit-limit"),
        "the new route has no limit"
    );
    let r = c.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(
        r.headers()["ratelimit-limit"],
        "10000",
        "the old route got its limit"
    );

    // SIGHUP reloads too
    gw.rewrite_config(
        &gw.config_text()
            .replace("name = \"fresh\"", "name = \"fresh2\""),
    );
    gw.send_signal(libc::SIGHUP);
    wait_for(Duration::from_secs(5), "the SIGHUP reload", || {
        let (c, url) = (c.clone(), gw.admin_url("/metrics"));
        async move {
            let m = parse_metrics(&c.get(url).send().await.ok()?.text().await.ok()?);
            (metric_value(
                &m,
                "agentgate_config_reloads_total",
                &[("result", "success")],
            ) == 2.0)
                .then_some(())
        }
    })
    .await;

    let (arrivals, body, broken) = stream.await.unwrap();
    assert!(
        !broken && arrivals.len() == 20,
        "the open stream survived both reloads: {body}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = load.await.unwrap();
    assert!(ok > 20, "the load ran: {ok}");
    assert!(
        failures.is_empty(),
        "failed requests during reload: {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_old_config() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &one_upstream(&[b.addr.to_string()], QUIET_HEALTH, ""));
    let c = client();
    let good = gw.config_text();
    gw.rewrite_config(&good.replace("upstream = \"u\"", "upstream = \"missing\""));
    let (status, v) = gw.reload_as(None).await;
    assert_eq!(status, 422);
    assert_eq!(v["result"], "failure");
    let err = v["errors"][0].as_str().unwrap();
    assert!(
        err.contains("agentgate.toml:") && err.contains("not defined"),
        "{err}"
    );
    assert_eq!(
        c.get(gw.url("/echo")).send().await.unwrap().status(),
        200,
        "still serving the old config"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_config_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
    assert!(!gw.wait_stderr("config reload rejected").is_empty());

    // listener changes are reported as needing a restart
    gw.rewrite_config(&good.replace("threads = 1", "threads = 2"));
    let v = gw.reload().await;
    assert_eq!(v["result"], "success");
    assert!(v["needs_restart"][0]
        .as_str()
        .unwrap()
        .contains("server.threads"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_then_exits() {
    let b = Backend::start("b").await;
    let mut gw = Gateway::start(
        "grace_period = \"3s\"",
        &one_upstream(&[b.addr.to_string()], QUIET_HEALTH, ""),
    );
    let c = client();
    let r = c.get(gw.url("/sse/15/100")).send().await.unwrap();
    let stream = tokio::spawn(read_events(r));
    wait_until(
        Duration::from_secs(5),
        "the stream to reach the agent",
        || b.targets().iter().any(|t| t == "/sse/15/100").then_some(()),
    );
    let signalled = Instant::now();
    gw.send_signal(libc::SIGTERM);
    wait_for(Duration::from_millis(500), "readyz to turn 503", || {
        let (c, url) = (c.clone(), gw.admin_url("/readyz"));
        async move { (c.get(url).send().await.ok()?.status() == 503).then_some(()) }
    })
    .await;
    let v = get_json(&c, gw.admin_url("/readyz")).await;
    assert_eq!(v["draining"], true);
    // new connections are still served during the grace period
    let fresh = client();
    let r = fresh.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // ...and closed after their response, so clients move to a replica that stays.
    assert_eq!(r.headers()["connection"], "close");
    let (arrivals, body, broken) = stream.await.unwrap();
    assert!(
        !broken && arrivals.len() == 15,
        "the open stream finished: {body}"
    );
    let code = gw.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(7),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_health_path_turns_active_checks_off() {
    // The agent fails its health check; with checks on it is taken out of service.
    let b = Backend::start("b").await;
    b.set_health_status(503);
    let health = |path: &str| {
        format!(
            "[upstreams.u.health]\npath = \"{path}\"\ninterval = \"100ms\"\nunhealthy_after = 1\n"
        )
    };
    let gw = Gateway::start(
        "",
        &one_upstream(&[b.addr.to_string()], &health("/healthz"), ""),
    );
    let c = client();
    wait_for(
        Duration::from_secs(5),
        "the failing check to take it out",
        || {
            let (c, url) = (c.clone(), gw.url("/echo"));
            async move { (c.get(url).send().await.ok()?.status() == 503).then_some(()) }
        },
    )
    .await;

    // Turned off by a reload: the old verdict goes, and no check is made any more.
    gw.rewrite_config(
        &gw.config_text()
            .replace("path = \"/healthz\"", "path = \"\""),
    );
    assert_eq!(gw.reload_as(None).await.0, 200);
    wait_for(
        Duration::from_secs(5),
        "the backend back in service",
        || {
            let (c, url) = (c.clone(), gw.url("/echo"));
            async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    let checks_before = b
        .targets()
        .iter()
        .filter(|t| t.starts_with("/healthz"))
        .count();
    // Ten check intervals without a check, while requests keep flowing.
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let checks_after = b
        .targets()
        .iter()
        .filter(|t| t.starts_with("/healthz"))
        .count();
    assert_eq!(
        checks_before, checks_after,
        "no active check once they are off"
    );
}

/// `retry_budget`: with a share of 0 only the floor (3 a second over the 10-second
/// window) is retried; every retry past it is refused and counted, and that request
/// gets the failure of its one try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_retry_budget() {
    let live = Backend::start("live").await;
    let dead = free_addr();
    let (dead, live_addr) = (dead.to_string(), live.addr.to_string());
    let body = agents_config(
        &[&dead, &live_addr],
        "balance = \"round_robin\"\nretries = 1\nretry_budget = 0.0",
        "",
    );
    let gw = Gateway::start("", &body);
    let c = client();
    let mut failed = 0;
    for i in 0..100 {
        let r = c.get(gw.url(&format!("/echo/{i}"))).send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let m = gw.metrics().await;
    let retries = metric_value(
        &m,
        "agentgate_upstream_retries_total",
        &[("upstream", "agents")],
    );
    let refused = metric_value(
        &m,
        "agentgate_upstream_retry_budget_exhausted_total",
        &[("upstream", "agents")],
    );
    assert_eq!(retries, 30.0, "the floor: 3 a second over the window");
    assert!(
        failed >= 1,
        "past the budget a dead backend's request fails"
    );
    assert_eq!(refused, failed as f64, "each refused retry is counted");
}
